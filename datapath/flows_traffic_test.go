package datapath_test

// Real-traffic tests of flow integrity (issue 15): floods of new flows
// and forged segments, sent with raw sockets between namespaces the tests
// make, must leave established connections as they are. Every test opens
// real connections first, checks they work, attacks, and checks each one
// again: a message each way, the server's first on every other one, over
// the very sockets the connection was accepted on (a connection the
// datapath moved to another backend, or whose reply the datapath no
// longer translates, breaks). Each comment says what the design before
// commit e775b46 (one LRU table of MaxFlows for all flows; any RST or FIN
// closing a flow; any packet from outside making an inbound entry; a GC
// that deleted what it had read) did with the same traffic: the figures
// are from runs of these tests against that datapath.

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
	"github.com/hostrouting/hostrouting/routing"
)

const (
	// floodMaxFlows is the flood tests' Config.MaxFlows: established TCP
	// flows 4096 entries, new flows and other established ones 2048
	// (the design before: one LRU of 4096 for everything).
	floodMaxFlows = 4096
	// floodCount is how many new flows a flood makes: 3× the largest
	// table.
	floodCount = 3 * floodMaxFlows
)

// floodSrc is the source of a flood's packet i: 198.51.100.0/24
// (TEST-NET-2), which nothing routes back to, a distinct port for each.
func floodSrc(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i/50000)}), uint16(10000+i%50000))
}

// ---------------------------------------------------------------------------
// Connections whose both ends the test holds.

// msgLen is the length of every message on a pairServer's connections.
const msgLen = 16

// pairServer accepts TCP connections on backends' addresses and files
// each under the ID its client sends first ("hello NNNNNNNNN\n"), so that
// a test holds both sockets of every connection it opens.
type pairServer struct {
	mu   sync.Mutex
	byID map[uint32]accepted
}

// accepted is a connection's server side and the backend that took it.
type accepted struct {
	conn    net.Conn
	backend string
}

func newPairServer(t *testing.T) *pairServer {
	s := &pairServer{byID: map[uint32]accepted{}}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, a := range s.byID {
			a.conn.Close()
		}
	})
	return s
}

// listen accepts connections on addr in the namespace at nsPath as the
// backend named name, until t ends.
func (s *pairServer) listen(t *testing.T, nsPath string, addr netip.AddrPort, name string) {
	t.Helper()
	var ln net.Listener
	if err := routing.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp4", addr.String()); return err }); err != nil {
		t.Fatalf("listen on %s (%s): %v", addr, name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.hello(c, name)
		}
	}()
}

func (s *pairServer) hello(c net.Conn, name string) {
	var b [msgLen]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:6]) != "hello " {
		c.Close()
		return
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b[6:])), 10, 32)
	if err != nil {
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	s.mu.Lock()
	s.byID[uint32(id)] = accepted{conn: c, backend: name}
	s.mu.Unlock()
}

// pair is one connection: the client's socket and the server's.
type pair struct {
	id      uint32
	client  net.Conn
	server  net.Conn
	backend string // the backend that accepted it
}

// dial opens n connections from the namespace at nsPath to dst, with IDs
// from first, and returns them once a backend has accepted each.
func (s *pairServer) dial(t *testing.T, nsPath string, dst netip.AddrPort, n int, first uint32) []*pair {
	t.Helper()
	var pairs []*pair
	for i := range n {
		pairs = append(pairs, s.dialFrom(t, nsPath, netip.AddrPort{}, dst, first+uint32(i)))
	}
	return pairs
}

// dialFrom opens connection id from local (any address and port if
// zero; SO_REUSEADDR) in the namespace at nsPath to dst, and returns it
// once a backend has accepted it.
func (s *pairServer) dialFrom(t *testing.T, nsPath string, local, dst netip.AddrPort, id uint32) *pair {
	t.Helper()
	d := net.Dialer{Timeout: 2 * time.Second, Control: reuseAddr}
	if local.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(local)
	}
	var c net.Conn
	err := routing.Do(nsPath, func() (err error) { c, err = d.Dial("tcp4", dst.String()); return err })
	if err != nil {
		t.Fatalf("connection %d to %s: %v", id, dst, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "hello %09d\n", id); err != nil {
		t.Fatalf("connection %d to %s: hello: %v", id, dst, err)
	}
	var a accepted
	if !waitUntil(2*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		var ok bool
		a, ok = s.byID[id]
		return ok
	}) {
		t.Fatalf("connection %d from %s to %s: no backend accepted it", id, c.LocalAddr(), dst)
	}
	return &pair{id: id, client: c, server: a.conn, backend: a.backend}
}

// reuseAddr sets SO_REUSEADDR on a socket (net.Dialer.Control).
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); err != nil {
		return err
	}
	return serr
}

// close ends the connection as a server that closes first does: the
// server's FIN, the client's once it has read the end. The server's side
// then waits in TIME_WAIT, the client's does not: its port may be used
// again at once.
func (p *pair) close() error {
	p.server.Close()
	p.client.SetDeadline(time.Now().Add(2 * time.Second))
	_, err := io.Copy(io.Discard, p.client)
	p.client.Close()
	return err
}

// exchange sends a message each way over the connection, the server's
// first if serverFirst, each to arrive intact within 2s. An error means
// the connection is broken.
func (p *pair) exchange(round int, serverFirst bool) error {
	deadline := time.Now().Add(2 * time.Second)
	p.client.SetDeadline(deadline)
	p.server.SetDeadline(deadline)
	send := func(from, to net.Conn, dir byte) error {
		msg := fmt.Sprintf("%c%05d/%08d\n", dir, round, p.id)
		if _, err := from.Write([]byte(msg)); err != nil {
			return fmt.Errorf("%c write: %w", dir, err)
		}
		got := make([]byte, msgLen)
		if _, err := io.ReadFull(to, got); err != nil {
			return fmt.Errorf("%c read: %w", dir, err)
		}
		if string(got) != msg {
			return fmt.Errorf("%c: got %q, sent %q", dir, got, msg)
		}
		return nil
	}
	order := []func() error{
		func() error { return send(p.client, p.server, 'c') },
		func() error { return send(p.server, p.client, 's') },
	}
	if serverFirst {
		order[0], order[1] = order[1], order[0]
	}
	for _, f := range order {
		if err := f(); err != nil {
			return fmt.Errorf("connection %d (%s → %s, backend %s): %w", p.id, p.client.LocalAddr(), p.client.RemoteAddr(), p.backend, err)
		}
	}
	return nil
}

// exchangeAll runs exchange on every connection at once, the server
// first on every other one, and returns the errors of those that broke.
func exchangeAll(pairs []*pair, round int) []error {
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Go(func() { errs[i] = p.exchange(round, i%2 == 0) })
	}
	wg.Wait()
	return slices.DeleteFunc(errs, func(err error) bool { return err == nil })
}

// mustExchange fails the test unless every connection exchanges both
// ways; what names the moment.
func mustExchange(t *testing.T, pairs []*pair, round int, what string) {
	t.Helper()
	broken := exchangeAll(pairs, round)
	for i, err := range broken {
		if i == 5 {
			t.Errorf("... and %d more", len(broken)-5)
			break
		}
		t.Error(err)
	}
	if len(broken) > 0 {
		t.Fatalf("%s: %d of %d connections broken, want 0", what, len(broken), len(pairs))
	}
}

// backendsOf counts the connections each backend took.
func backendsOf(pairs []*pair) map[string]int {
	m := map[string]int{}
	for _, p := range pairs {
		m[p.backend]++
	}
	return m
}

// addrPortOf is a socket address as an AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	return a.(*net.TCPAddr).AddrPort()
}

// ---------------------------------------------------------------------------
// The datapath's figures.

// flowStats reads the node's flow statistics (hr_ct_stats).
func flowStats(t *testing.T, dp *datapath.Datapath) [maps.FlowClassCount]maps.FlowStats {
	t.Helper()
	node, err := instance.Open(pinPathOf(t, dp))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	s, err := tables.ReadFlowStats(node.Maps.FlowStats)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// statsDelta is what each field of s moved by since before.
func statsDelta(s, before maps.FlowStats) maps.FlowStats {
	return maps.FlowStats{Created: s.Created - before.Created, Promoted: s.Promoted - before.Promoted,
		Refused: s.Refused - before.Refused, Failed: s.Failed - before.Failed}
}

// conntrackEntries lists the node's conntrack entries.
func conntrackEntries(t *testing.T, dp *datapath.Datapath) []maps.CTEntry {
	t.Helper()
	node, err := instance.Open(pinPathOf(t, dp))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	all, err := tables.NewConntrack(node.Maps.ConntrackTables()...).List()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// flowTables describes how full the node's flow tables are.
func flowTables(t *testing.T, dp *datapath.Datapath) string {
	t.Helper()
	sizes, err := dp.MapUsage()
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, s := range sizes {
		if strings.HasPrefix(s.Name, "hr_ct4") || strings.HasPrefix(s.Name, "hr_snat4") {
			parts = append(parts, fmt.Sprintf("%s %d/%d", s.Name, s.Entries, s.MaxEntries))
		}
	}
	return strings.Join(parts, ", ")
}

// settled polls count until it has not moved for 300ms (at most 10s)
// and returns it: how many of a flood's packets got somewhere.
func settled(count func() uint64) uint64 {
	last, since := count(), time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if n := count(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= 300*time.Millisecond {
			break
		}
	}
	return last
}

// sendFlood sends n packets, pkt(i), from the namespace at nsPath (bounded:
// 20000 a second, 30s at most) and fails the test unless all went.
func sendFlood(t *testing.T, nsPath string, n int, pkt func(i int) []byte) {
	t.Helper()
	start := time.Now()
	sent, err := netcheck.Flood(context.Background(), nsPath, netcheck.FloodOptions{Count: n}, pkt)
	if err != nil || sent != n {
		t.Fatalf("flood: %d of %d packets sent: %v", sent, n, err)
	}
	t.Logf("flood: %d packets sent in %s", n, time.Since(start).Round(time.Millisecond))
}

// tcpInSegs reads the TCP segments the stack of the namespace at nsPath
// received (Tcp InSegs of /proc/net/snmp).
func tcpInSegs(t *testing.T, nsPath string) uint64 {
	t.Helper()
	var b []byte
	if err := routing.Do(nsPath, func() (err error) { b, err = os.ReadFile("/proc/thread-self/net/snmp"); return err }); err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "InSegs" && i < len(f) {
				n, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
	}
	t.Fatalf("no Tcp InSegs in %s's /proc/net/snmp", nsPath)
	return 0
}

// ---------------------------------------------------------------------------
// Topology.

// routeOnWire routes dst via gw in the cluster's wire namespace (the
// Gateway host).
func routeOnWire(t *testing.T, cn *crossNode, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", cn.cluster.WireName, "route", "add", dst.String(), "via", gw.String()).CombinedOutput(); err != nil {
		t.Fatalf("route %s via %s on the wire: %v\n%s", dst, gw, err, out)
	}
}

// pingFrom pings dst from the namespace at nsPath until it answers: the
// neighbours on the way are resolved before a flood.
func pingFrom(t *testing.T, nsPath string, dst netip.Addr) {
	t.Helper()
	if err := netcheck.PingAll(context.Background(), nsPath, dst, netcheck.PingOptions{Count: 2, Timeout: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
}

// clusterIPService puts three backends behind a TCP ClusterIP on node 0:
// be0 on node 0, b and b2 on node 1, each a pairServer on port 8080.
func clusterIPService(t *testing.T, cn *crossNode) (*pairServer, netip.AddrPort) {
	t.Helper()
	n0, n1 := cn.cluster.Nodes[0], cn.cluster.Nodes[1]
	be0 := n0.AddPod(t, "be0", n0.PodIP(30))
	be0.AddEndpoint(t, cn.dps[0])
	b2 := n1.AddPod(t, "b2", n1.PodIP(20))
	b2.AddEndpoint(t, cn.dps[1])
	srv := newPairServer(t)
	var backends []datapath.Backend
	for _, p := range []*datapathtest.Pod{be0, cn.b, b2} {
		addr := netip.AddrPortFrom(p.IP, 8080)
		srv.listen(t, p.Netns, addr, p.Name)
		backends = append(backends, datapath.Backend{Addr: addr})
	}
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	return srv, vip
}

// nodePortService puts two backends on node 1 (b and b2, pairServers on
// 8080) behind NodePort port of node 0: each flow from outside gets
// conntrack entries and source NAT entries on node 0.
func nodePortService(t *testing.T, cn *crossNode, port uint16) (*pairServer, netip.AddrPort) {
	t.Helper()
	n0, n1 := cn.cluster.Nodes[0], cn.cluster.Nodes[1]
	b2 := n1.AddPod(t, "b2", n1.PodIP(20))
	b2.AddEndpoint(t, cn.dps[1])
	srv := newPairServer(t)
	var backends []datapath.Backend
	for _, p := range []*datapathtest.Pod{cn.b, b2} {
		addr := netip.AddrPortFrom(p.IP, 8080)
		srv.listen(t, p.Netns, addr, p.Name)
		backends = append(backends, datapath.Backend{Addr: addr})
	}
	front := netip.AddrPortFrom(n0.IP, port)
	if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: front, Protocol: datapath.TCP, Type: datapath.NodePort, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	return srv, front
}

// eachMasquerade runs a NodePort test on nodes with BPF masquerade off
// and on. Masquerade should change nothing for NodePort flows, but with
// it to-netdev sees the packets from-netdev source-translated and sent
// out of the same device, and node 1 keeps an inbound entry per flow.
// (From e775b46 to 1d06c0b to-netdev translated those packets a second
// time: no NodePort flow to another node's backend worked with
// masquerade on.)
func eachMasquerade(t *testing.T, test func(t *testing.T, cn *crossNode)) {
	for _, masquerade := range []bool{false, true} {
		t.Run(fmt.Sprintf("masquerade=%t", masquerade), func(t *testing.T) {
			test(t, newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{MaxFlows: floodMaxFlows, DisableMasquerade: !masquerade}))
		})
	}
}

// ---------------------------------------------------------------------------
// 1. SYNs from outside.

// TestFloodOutsideSYNs: pod x holds 40 idle connections to a ClusterIP
// (tc load balancer, three backends on two nodes); a host outside the
// native routing CIDR sends 3 × MaxFlows SYNs from distinct (spoofed)
// source ports to an open port of pod y on the same node, each of which
// makes an inbound conntrack entry. Afterwards all 40 connections
// exchange data both ways, a new one of x works, and the flow statistics
// counted the flood.
//
// Before: the inbound entries evicted the service flows' entries from the
// one LRU table; a client's next segment was balanced afresh (to another
// backend, which reset it) and a backend's reply was no longer
// translated (x reset it): 36 of 40 connections broken.
func TestFloodOutsideSYNs(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{MaxFlows: floodMaxFlows})
	n0, dp := cn.cluster.Nodes[0], cn.dps[0]
	x := cn.a
	y := n0.AddPod(t, "y", n0.PodIP(20))
	y.AddEndpoint(t, dp)
	var ln net.Listener
	target := netip.AddrPortFrom(y.IP, 7000)
	if err := y.Do(func() (err error) { ln, err = net.Listen("tcp4", target.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	srv, vip := clusterIPService(t, cn)
	routeOnWire(t, cn, n0.PodCIDR, n0.IP)
	pingFrom(t, cn.cluster.Wire, n0.IP)

	s0 := flowStats(t, dp)
	pairs := srv.dial(t, x.Netns, vip, 40, 0)
	mustExchange(t, pairs, 0, "before the flood")
	t.Logf("40 connections to %s, by backend: %v", vip, backendsOf(pairs))
	if d := statsDelta(flowStats(t, dp)[maps.FlowConntrackTCP], s0[maps.FlowConntrackTCP]); d.Promoted < 40 {
		t.Fatalf("conntrack-tcp moved by %+v for 40 connections: want 40 established (promoted)", d)
	}

	before, y0 := flowStats(t, dp), tcpInSegs(t, y.Netns)
	sendFlood(t, cn.cluster.Wire, floodCount, func(i int) []byte {
		return netcheck.TCPSegment{Src: floodSrc(i), Dst: target, Flags: netcheck.TCPSyn, Seq: uint32(i) * 2654435761}.Marshal()
	})
	reached := settled(func() uint64 { return tcpInSegs(t, y.Netns) - y0 })
	d := statsDelta(flowStats(t, dp)[maps.FlowConntrackTCP], before[maps.FlowConntrackTCP])
	t.Logf("%d SYNs reached pod y; conntrack-tcp moved by %+v; tables: %s", reached, d, flowTables(t, dp))
	if reached < 2*floodMaxFlows {
		t.Fatalf("only %d of %d SYNs reached pod y: too few to fill the tables", reached, floodCount)
	}
	if d.Created < reached {
		t.Errorf("conntrack-tcp created %d flows for %d SYNs from distinct ports that reached the pod", d.Created, reached)
	}

	mustExchange(t, pairs, 1, "after the flood")
	fresh := srv.dial(t, x.Netns, vip, 1, 100)
	mustExchange(t, fresh, 0, "a new connection after the flood")
}

// ---------------------------------------------------------------------------
// 2. A pod's datagrams.

// udpEchoCount answers every datagram to addr in the namespace at nsPath
// with itself and counts them, until t ends.
func udpEchoCount(t *testing.T, nsPath string, addr netip.AddrPort) *atomic.Uint64 {
	t.Helper()
	var c net.PacketConn
	if err := routing.Do(nsPath, func() (err error) { c, err = net.ListenPacket("udp4", addr.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var n atomic.Uint64
	go func() {
		buf := make([]byte, 2048)
		for {
			m, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			n.Add(1)
			c.WriteTo(buf[:m], from)
		}
	}()
	return &n
}

// podUDPFlood sets up pod z and a UDP ClusterIP on node 0 whose backend
// (pod echo) answers every datagram, and returns a flood: 3 × MaxFlows
// datagrams from z's distinct ports to it, each a new flow that sees a
// reply, checked to have reached the backend and been counted.
func podUDPFlood(t *testing.T, cn *crossNode) (flood func()) {
	t.Helper()
	n0, dp := cn.cluster.Nodes[0], cn.dps[0]
	z := n0.AddPod(t, "z", n0.PodIP(40))
	z.AddEndpoint(t, dp)
	echoPod := n0.AddPod(t, "echo", n0.PodIP(50))
	echoPod.AddEndpoint(t, dp)
	backend := netip.AddrPortFrom(echoPod.IP, 5353)
	echoed := udpEchoCount(t, echoPod.Netns, backend)
	udpVIP := netip.MustParseAddrPort("10.96.0.53:53")
	if _, err := dp.UpsertService(datapath.Service{Frontend: udpVIP, Protocol: datapath.UDP,
		Backends: []datapath.Backend{{Addr: backend}}}); err != nil {
		t.Fatal(err)
	}
	z.MustPing(t, cn.a.IP) // z's gateway resolved
	return func() {
		t.Helper()
		before, got0 := flowStats(t, dp), echoed.Load()
		sendFlood(t, z.Netns, floodCount, func(i int) []byte {
			return netcheck.UDPDatagram{Src: netip.AddrPortFrom(z.IP, uint16(10000+i)), Dst: udpVIP, Payload: []byte("flood")}.Marshal()
		})
		reached := settled(func() uint64 { return echoed.Load() - got0 })
		d := statsDelta(flowStats(t, dp)[maps.FlowConntrackAny], before[maps.FlowConntrackAny])
		t.Logf("%d datagrams reached the backend; conntrack-any moved by %+v; tables: %s", reached, d, flowTables(t, dp))
		if reached < 2*floodMaxFlows {
			t.Fatalf("only %d of %d datagrams reached the backend: too few to fill the tables", reached, floodCount)
		}
		if d.Created < reached {
			t.Errorf("conntrack-any created %d flows for %d datagrams from distinct ports that reached the backend", d.Created, reached)
		}
	}
}

// TestFloodPodUDP: pod x holds 40 idle connections to a TCP ClusterIP;
// pod z on the same node sends 3 × MaxFlows datagrams from distinct
// ports to a UDP ClusterIP whose backend echoes them, each a new flow
// (answered, never established: z sends no second datagram). Afterwards all 40 connections exchange data both ways and 10 new
// ones work.
//
// Before: z's flows (two entries each, looked up again by the echo)
// evicted x's from the one LRU table: 35 of 40 connections broken (33 in
// another run). (With a backend that does not answer, that LRU kept x's
// entries, which the exchange before the flood had marked referenced.)
func TestFloodPodUDP(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{MaxFlows: floodMaxFlows})
	flood := podUDPFlood(t, cn)
	srv, vip := clusterIPService(t, cn)
	pairs := srv.dial(t, cn.a.Netns, vip, 40, 0)
	mustExchange(t, pairs, 0, "before the flood")
	t.Logf("40 connections to %s, by backend: %v", vip, backendsOf(pairs))
	flood()
	mustExchange(t, pairs, 1, "after the flood")
	fresh := srv.dial(t, cn.a.Netns, vip, 10, 100)
	mustExchange(t, fresh, 0, "new connections after the flood")
}

// TestFloodReusedTuples: pod x opens 20 connections to a ClusterIP from
// source ports it binds, closes them (the backend first), and after 11s,
// once their entries expired, opens 20 new ones from the same ports:
// each a new flow, balanced afresh (to another of the three backends for
// about two in three). Then pod z floods a UDP ClusterIP as in
// TestFloodPodUDP. All 20 connections must exchange data both ways: an
// established connection on a reused tuple is as safe from floods as
// any other.
//
// Before: the flood evicted them from the one LRU table: 13 of 20 broken
// (18 in another run). Since e775b46 as well, those that went to another
// backend: the new flow keeps its service entry's established mark, its
// reply entry is made among the new flows, and ct_established_ready
// never moves it (the service entry is established already), so the
// flood evicts it: 13 of 20 broken, the 13 that moved.
func TestFloodReusedTuples(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{MaxFlows: floodMaxFlows})
	dp, x := cn.dps[0], cn.a
	flood := podUDPFlood(t, cn)
	srv, vip := clusterIPService(t, cn)
	var first, pairs []*pair
	for i := range 20 {
		first = append(first, srv.dialFrom(t, x.Netns, netip.AddrPortFrom(x.IP, uint16(41000+i)), vip, uint32(i)))
	}
	mustExchange(t, first, 0, "the first connections")
	for _, p := range first {
		if err := p.close(); err != nil {
			t.Fatalf("closing connection %d: %v", p.id, err)
		}
	}
	time.Sleep(11 * time.Second) // past the closing timeout (10s)
	moved := 0
	for i, p := range first {
		pairs = append(pairs, srv.dialFrom(t, x.Netns, addrPortOf(p.client.LocalAddr()), vip, uint32(100+i)))
		if pairs[i].backend != p.backend {
			moved++
		}
	}
	mustExchange(t, pairs, 0, "the connections on the reused tuples")
	t.Logf("20 connections again from the same ports: %d to another backend than before (by backend: %v)", moved, backendsOf(pairs))
	for _, e := range conntrackEntries(t, dp) {
		if (e.Src.Addr() == x.IP || e.Dst.Addr() == x.IP) && e.Flags&maps.CTEstablished == 0 {
			t.Logf("not in an established table: %s", e)
		}
	}
	flood()
	mustExchange(t, pairs, 1, "after the flood")
}

// ---------------------------------------------------------------------------
// 3. SYNs from the wire to a NodePort.

// TestFloodNodePortSYNs: a client outside holds 50 connections to a
// NodePort of node 0 whose backends are on node 1 (so node 0 keeps
// conntrack and source NAT entries for each, node 1 an inbound entry);
// another host sends 3 × MaxFlows SYNs from distinct (spoofed) source
// ports to the same NodePort. Afterwards all 50 connections exchange data
// both ways with the backend sockets that accepted them (a connection
// balanced afresh, or translated to another port, reaches none of them).
// With masquerade on, node 1 also keeps an inbound entry per flow (the
// flood's too).
//
// Before: the flood's entries evicted theirs: 40 of 50 connections broken
// (37 of 50 with masquerade).
func TestFloodNodePortSYNs(t *testing.T) {
	eachMasquerade(t, floodNodePort)
}

func floodNodePort(t *testing.T, cn *crossNode) {
	dp0, dp1 := cn.dps[0], cn.dps[1]
	srv, front := nodePortService(t, cn, 30080)
	client := cn.cluster.AddHost(t, "client", netip.MustParseAddr("172.18.1.1"))
	pingFrom(t, cn.cluster.Wire, front.Addr())

	pairs := srv.dial(t, client.Netns, front, 50, 0)
	mustExchange(t, pairs, 0, "before the flood")
	t.Logf("50 connections to %s, by backend: %v", front, backendsOf(pairs))

	backendIPs := []netip.Addr{cn.b.IP, cn.cluster.Nodes[1].PodIP(20)}
	delivered := func() (n uint64) {
		for _, ip := range backendIPs {
			n += statsNow(t, dp1, ip).ToPackets
		}
		return n
	}
	before, be0 := flowStats(t, dp0), delivered()
	sendFlood(t, cn.cluster.Wire, floodCount, func(i int) []byte {
		return netcheck.TCPSegment{Src: floodSrc(i), Dst: front, Flags: netcheck.TCPSyn, Seq: uint32(i) * 2654435761}.Marshal()
	})
	reached := settled(func() uint64 { return delivered() - be0 })
	after := flowStats(t, dp0)
	ct := statsDelta(after[maps.FlowConntrackTCP], before[maps.FlowConntrackTCP])
	snat := statsDelta(after[maps.FlowSNATTCP], before[maps.FlowSNATTCP])
	t.Logf("%d SYNs reached the backends; node 0 conntrack-tcp moved by %+v, snat-tcp by %+v", reached, ct, snat)
	t.Logf("node 0 tables: %s", flowTables(t, dp0))
	t.Logf("node 1 tables: %s", flowTables(t, dp1))
	if reached < 2*floodMaxFlows {
		t.Fatalf("only %d of %d SYNs reached the backends: too few to fill the tables", reached, floodCount)
	}
	// What reached the backends counts the ICMP errors about their
	// SYN-ACKs to the spoofed sources too (translated back to them):
	// at most floodCount of it were SYNs.
	if syns := min(reached, floodCount); ct.Created < syns || snat.Created < syns {
		t.Errorf("node 0 created %d conntrack and %d source NAT flows for %d SYNs it balanced to the backends", ct.Created, snat.Created, syns)
	}

	mustExchange(t, pairs, 1, "after the flood")
}

// ---------------------------------------------------------------------------
// 4. A forged ACK to a masqueraded pod.

// TestForgedACKMasquerade: pod a holds 20 connections to a server outside
// the native routing CIDR (the wire's gateway), masqueraded to node 0's
// address. A host on the node network sends, for 10 of them, one ACK
// "from" the server to the pod's own address and port, routed to node 0,
// which delivers it to the pod. The datapath makes no inbound entry of it
// and all 20 connections go on, masqueraded.
//
// Before: the ACK made an inbound entry on the pod's tuple and the pod's
// next segments left untranslated, from its own address: 10 of the 10
// attacked connections broken (the 10 others went on).
func TestForgedACKMasquerade(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, dp, a := cn.cluster.Nodes[0], cn.dps[0], cn.a
	srv := newPairServer(t)
	server := netip.AddrPortFrom(cn.cluster.Gateway, 9000)
	srv.listen(t, cn.cluster.Wire, server, "outside")
	forger := cn.cluster.AddHost(t, "forger", netip.MustParseAddr("172.18.1.2"))
	forger.AddRoute(t, n0.PodCIDR, n0.IP)
	pingFrom(t, forger.Netns, n0.IP)

	pairs := srv.dial(t, a.Netns, server, 20, 0)
	mustExchange(t, pairs, 0, "before the forged ACKs")
	for _, p := range pairs {
		if seen := addrPortOf(p.server.RemoteAddr()).Addr(); seen != n0.IP {
			t.Fatalf("connection %d reached the server from %s, want node 0's %s (masqueraded)", p.id, seen, n0.IP)
		}
	}
	attacked := pairs[:10]
	var forged [][]byte
	for _, p := range attacked {
		forged = append(forged, netcheck.TCPSegment{Src: server, Dst: addrPortOf(p.client.LocalAddr()), Flags: netcheck.TCPAck,
			Seq: rand.Uint32(), Ack: rand.Uint32()}.Marshal())
	}
	a0 := statsNow(t, dp, a.IP)
	sendFlood(t, forger.Netns, len(forged), func(i int) []byte { return forged[i] })
	if !waitUntil(2*time.Second, func() bool { return statsNow(t, dp, a.IP).ToPackets-a0.ToPackets >= uint64(len(forged)) }) {
		t.Fatalf("pod a received %d packets after %d forged ACKs: they did not reach it", statsNow(t, dp, a.IP).ToPackets-a0.ToPackets, len(forged))
	}
	for _, e := range conntrackEntries(t, dp) {
		if e.Dir == maps.CTInbound && (e.Src.Addr() == a.IP || e.Dst.Addr() == a.IP) {
			t.Errorf("an inbound entry on pod a's tuple after the forged ACKs: %s", e)
		}
	}
	mustExchange(t, pairs, 1, "after the forged ACKs (10 attacked, 10 control)")
	for _, p := range pairs {
		if seen := addrPortOf(p.server.RemoteAddr()).Addr(); seen != n0.IP {
			t.Errorf("connection %d: the server's socket is connected to %s", p.id, seen)
		}
	}
}

// ---------------------------------------------------------------------------
// 5. Forged RSTs and SYNs to a NodePort.

// nextSeq returns the sequence number after the last segment from src
// that the capture saw: the one src's next segment carries.
func nextSeq(c *capture, src netip.AddrPort) (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var next uint32
	found := false
	for _, f := range c.frames {
		ip, ok := ipv4Of(f.data)
		if !ok || ip[9] != unix.IPPROTO_TCP || !f.outgoing {
			continue
		}
		ihl := int(ip[0]&0x0f) * 4
		if len(ip) < ihl+20 {
			continue
		}
		s, _ := ipv4Addrs(ip)
		tcp := ip[ihl:]
		if netip.AddrPortFrom(s, binary.BigEndian.Uint16(tcp[0:])) != src {
			continue
		}
		flags := tcp[13]
		end := binary.BigEndian.Uint32(tcp[4:]) + uint32(int(binary.BigEndian.Uint16(ip[2:]))-ihl-int(tcp[12]>>4)*4)
		if flags&netcheck.TCPSyn != 0 {
			end++
		}
		if flags&netcheck.TCPFin != 0 {
			end++
		}
		if !found || int32(end-next) > 0 {
			next, found = end, true
		}
	}
	return next, found
}

// farSeq returns a random sequence number at least 2^24 away from seq
// either way: out of the datapath's RST window and of any TCP window.
func farSeq(seq uint32) uint32 {
	for {
		r := rand.Uint32()
		if d := int32(r - seq); d > 1<<24 || d < -(1<<24) {
			return r
		}
	}
}

// forgedNodePort opens 20 connections from a client outside to a
// NodePort of node 0 with both backends on node 1, has a third host (the
// wire's gateway), spoofing the client, send forge(next) for each (next:
// the sequence number the client's next segment carries), and checks
// that every connection goes on: at once, and after 12s of idleness and
// a GC pass on both nodes.
func forgedNodePort(t *testing.T, forge func(next uint32) []netcheck.TCPSegment) {
	eachMasquerade(t, func(t *testing.T, cn *crossNode) { forgedNodePortOn(t, cn, forge) })
}

func forgedNodePortOn(t *testing.T, cn *crossNode, forge func(next uint32) []netcheck.TCPSegment) {
	dp := cn.dps[0]
	srv, front := nodePortService(t, cn, 30081)
	client := cn.cluster.AddHost(t, "client", netip.MustParseAddr("172.18.1.1"))
	capClient := startCapture(t, client.Netns, "eth0", "client eth0")
	pingFrom(t, cn.cluster.Wire, front.Addr())

	pairs := srv.dial(t, client.Netns, front, 20, 0)
	mustExchange(t, pairs, 0, "before the forged segments")
	t.Logf("20 connections to %s, by backend: %v", front, backendsOf(pairs))
	time.Sleep(100 * time.Millisecond) // the capture catches up
	var forged []netcheck.TCPSegment
	nexts := map[netip.AddrPort]uint32{}
	for _, p := range pairs {
		src := addrPortOf(p.client.LocalAddr())
		next, ok := nextSeq(capClient, src)
		if !ok {
			t.Fatalf("the capture saw no segment from %s", src)
		}
		nexts[src] = next
		for _, s := range forge(next) {
			s.Src, s.Dst = src, front
			forged = append(forged, s)
		}
	}
	x0 := metric(t, dp, maps.MetricXlateDNAT)
	sendFlood(t, cn.cluster.Wire, len(forged), func(i int) []byte { return forged[i].Marshal() })
	if !waitUntil(2*time.Second, func() bool { return metric(t, dp, maps.MetricXlateDNAT)-x0 >= uint64(len(forged)) }) {
		t.Fatalf("node 0 translated %d packets after %d forged segments: they did not reach it", metric(t, dp, maps.MetricXlateDNAT)-x0, len(forged))
	}
	mustExchange(t, pairs, 1, "right after the forged segments")
	closing := 0
	for _, e := range conntrackEntries(t, dp) {
		if e.Flags&maps.CTClosing == 0 || (e.Src.Addr() != client.IP && e.Dst.Addr() != client.IP) {
			continue
		}
		if closing++; e.Dir == maps.CTService {
			t.Logf("closing: %s (SeqEnd %d: the client's next sequence number is %d)", e, e.SeqEnd, nexts[e.Src])
		}
	}
	if closing > 0 {
		t.Errorf("after the forged segments %d conntrack entries of the 20 connections are closing: they go 10s after their last packet", closing)
	}

	time.Sleep(12 * time.Second) // past the closing timeout (10s)
	for i, d := range cn.dps {
		gc, err := d.GC(nat.Options{})
		if err != nil {
			t.Fatal(err)
		}
		pass, err := gc.Collect()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("node %d GC pass: conntrack %+v, SNAT %+v", i, pass.Conntrack, pass.SNAT)
	}
	mustExchange(t, pairs, 2, "after 12s idle and a GC pass")
}

// TestForgedRSTNodePort: for each of 20 NodePort connections, a third
// host spoofing the client sends an RST with a random sequence number far
// from the client's, then a SYN. Neither changes the flow: no backend
// switch, no closing state, and all 20 connections work, at once and
// after 12s idle and a GC pass.
//
// Before: the RST closed the flow and the SYN then started a new one,
// balanced afresh: 11 of 20 broken at once (moved to the other backend),
// 15 of 20 after 12s idle and a GC pass (their entries, closing, went);
// 8 and 15 of 20 with masquerade.
func TestForgedRSTNodePort(t *testing.T) {
	forgedNodePort(t, func(next uint32) []netcheck.TCPSegment {
		return []netcheck.TCPSegment{
			{Flags: netcheck.TCPRst, Seq: farSeq(next)},
			{Flags: netcheck.TCPSyn, Seq: farSeq(next)},
		}
	})
}

// TestForgedSYNThenRSTNodePort: for each of 20 NodePort connections, a
// third host spoofing the client sends a SYN whose sequence number is
// 2^30 ahead of the client's, then an RST with the sequence number right
// after that SYN's. The RST is as far from the client's sequence as the
// SYN: it must change nothing, and all 20 connections must work, at once
// and after 12s idle and a GC pass.
//
// Before: the RST closed the flow: 15 of 20 broken after 12s idle and a
// GC pass (14 of 20 with masquerade). From e775b46 to 1d06c0b as well: a
// SYN on a live flow moved the sequence number the datapath tracks for
// the client (tcp_track took any segment's end that was ahead), so the
// RST right after it was in the window and closed the flow: 14 of 20
// broken.
func TestForgedSYNThenRSTNodePort(t *testing.T) {
	forgedNodePort(t, func(next uint32) []netcheck.TCPSegment {
		return []netcheck.TCPSegment{
			{Flags: netcheck.TCPSyn, Seq: next + 1<<30},
			{Flags: netcheck.TCPRst, Seq: next + 1<<30 + 1},
		}
	})
}

// ---------------------------------------------------------------------------
// 6. Connect, request, response, close.

// crrServe answers, on addr in the namespace at nsPath, each connection's
// 32-byte request with 32 bytes and closes it first (its side then waits
// in TIME_WAIT, the client's does not: the client may reuse its port at
// once). It counts the connections it served.
func crrServe(t *testing.T, nsPath string, addr netip.AddrPort, served *atomic.Int64) {
	t.Helper()
	var ln net.Listener
	if err := routing.Do(nsPath, func() (err error) { ln, err = net.Listen("tcp4", addr.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 32)
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				copy(buf, "response")
				if _, err := c.Write(buf); err == nil {
					served.Add(1)
				}
			}()
		}
	}()
}

// crrOnce connects from local in the namespace at nsPath to dst, sends a
// request, reads the response and the server's close, and closes: all
// within 2s.
func crrOnce(nsPath string, local, dst netip.AddrPort) error {
	start := time.Now()
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(local),
		Deadline:  start.Add(2 * time.Second),
		Control:   reuseAddr,
	}
	var c net.Conn
	if err := routing.Do(nsPath, func() (err error) { c, err = d.Dial("tcp4", dst.String()); return err }); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	c.SetDeadline(start.Add(2 * time.Second))
	req := make([]byte, 32)
	copy(req, "request")
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("request: %w", err)
	}
	if _, err := io.ReadFull(c, req); err != nil || !strings.HasPrefix(string(req), "response") {
		return fmt.Errorf("response %q: %w", req, err)
	}
	if n, err := c.Read(req); n != 0 || err != io.EOF {
		return fmt.Errorf("after the response: %d bytes, %v; want the server's close", n, err)
	}
	return nil
}

// The CRR test's source ports: 100 used again 0.3s after their last
// connection (its entries closing: a SYN reopens them), and the others
// after 9.5s (about to expire), 10 to 11s (expired 10s after the last
// packet, the GC in its one-second period may be at them or not) or 12s
// (collected).
const (
	crrFirstPort = 20000
	crrLastPort  = 40000
	crrQuick     = 100 // ports from crrFirstPort used again after 0.3s
)

// crrClasses name the gaps after which a port is used again.
var crrClasses = []string{"again after 0.3s", "again after 9.5s", "again after 10-11s", "again after 12s"}

// crrGap is the class of port and the gap after which it is used again.
func crrGap(port uint16) (class int, gap time.Duration) {
	switch {
	case port < crrFirstPort+crrQuick:
		return 0, 300 * time.Millisecond
	case port%10 == 0:
		return 1, 9500 * time.Millisecond
	case port%10 == 1:
		return 3, 12 * time.Second
	}
	return 2, 10*time.Second + time.Duration(uint32(port)*37%1000)*time.Millisecond
}

// portSchedule hands out the CRR test's source ports: the one due first
// to be used again (crrGap), else a new one.
type portSchedule struct {
	mu    sync.Mutex
	fresh uint16    // the next port never used
	due   []duePort // a heap by due time
}

type duePort struct {
	port uint16
	at   time.Time
}

// take returns a port and its class (-1 for a new port); false if none
// is free now.
func (s *portSchedule) take() (port uint16, class int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.due) > 0 && !time.Now().Before(s.due[0].at) {
		port = s.due[0].port
		last := len(s.due) - 1
		s.due[0] = s.due[last]
		s.due = s.due[:last]
		for i := 0; ; { // sift down
			m := i
			for _, c := range []int{2*i + 1, 2*i + 2} {
				if c < len(s.due) && s.due[c].at.Before(s.due[m].at) {
					m = c
				}
			}
			if m == i {
				break
			}
			s.due[i], s.due[m] = s.due[m], s.due[i]
			i = m
		}
		class, _ := crrGap(port)
		return port, class, true
	}
	if s.fresh > crrLastPort {
		return 0, 0, false
	}
	s.fresh++
	return s.fresh - 1, -1, true
}

// done puts port back, to be used again after its gap; a port whose
// connection failed is not.
func (s *portSchedule) done(port uint16, ok bool) {
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, gap := crrGap(port)
	s.due = append(s.due, duePort{port, time.Now().Add(gap)})
	for i := len(s.due) - 1; i > 0; { // sift up
		p := (i - 1) / 2
		if !s.due[i].at.Before(s.due[p].at) {
			break
		}
		s.due[i], s.due[p] = s.due[p], s.due[i]
		i = p
	}
}

// entriesOf lists the conntrack entries of the node pinned at pin whose
// source or destination is addr, for failure messages.
func entriesOf(pin string, addr netip.AddrPort) string {
	node, err := instance.Open(pin)
	if err != nil {
		return err.Error()
	}
	defer node.Close()
	all, err := tables.NewConntrack(node.Maps.ConntrackTables()...).List()
	if err != nil {
		return err.Error()
	}
	var found []string
	for _, e := range all {
		if e.Src == addr || e.Dst == addr {
			found = append(found, fmt.Sprintf("%s (%s left)", e, e.Remaining.Round(time.Second)))
		}
	}
	if len(found) == 0 {
		return "none"
	}
	return strings.Join(found, "; ")
}

// TestCRRClusterIP: a pod connects to a ClusterIP (tc load balancer, a
// backend on each node), sends a request, reads the response and the
// backend's close, and closes: 1500 times a second for 22s, from source
// ports it binds, each used again after 0.3s (the flow's entries
// closing), 9.5s (about to expire), 10 to 11s (expired, the GC may be at
// them) or 12s (collected), while a GC makes a pass every second. Every
// connection completes within 1s (a lost packet would cost a
// retransmission, 1s): none stalls on entries the GC removed under a
// reused tuple, or on a closing or expired flow a SYN did not start
// afresh.
//
// Before: the GC removed entries that a connection on a reused tuple had
// just renewed (it deleted what it had read a moment earlier): 1 of about
// 33000 connections stalled, its response never translated back, in 2 of
// 3 runs. The race is narrow; the test runs 22s to give it chances.
// Since e775b46 1 or 2 stall in 5 runs of 6 (none without the GC), among
// those reusing a tuple after 10 to 11s: the GC reads each garbage entry
// again but deletes a batch's only after the last re-read (a packet in
// between renews one in vain), and a flow whose reply entry went is
// never given it back (its service entry stays, established, for 6h).
func TestCRRClusterIP(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, dp := cn.cluster.Nodes[0], cn.dps[0]
	client := cn.a
	be0 := n0.AddPod(t, "be0", n0.PodIP(30))
	be0.AddEndpoint(t, dp)
	var served atomic.Int64
	var backends []datapath.Backend
	for _, p := range []*datapathtest.Pod{be0, cn.b} {
		addr := netip.AddrPortFrom(p.IP, 8080)
		crrServe(t, p.Netns, addr, &served)
		backends = append(backends, datapath.Backend{Addr: addr})
	}
	vip := netip.MustParseAddrPort("10.96.0.80:80")
	if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	if err := crrOnce(client.Netns, netip.AddrPortFrom(client.IP, 19999), vip); err != nil {
		t.Fatalf("first connection: %v", err)
	}

	before, pin := flowStats(t, dp), pinPathOf(t, dp)
	const duration = 22 * time.Second
	const stall = time.Second
	type result struct {
		n, failed, slow int
		worst           time.Duration
		errs            []error
	}
	results := make([]result, len(crrClasses)+1) // by class, the last for new ports
	var mu sync.Mutex
	sched := &portSchedule{fresh: crrFirstPort}
	run := func(port uint16, class int) {
		start := time.Now()
		err := crrOnce(client.Netns, netip.AddrPortFrom(client.IP, port), vip)
		took := time.Since(start)
		sched.done(port, err == nil)
		mu.Lock()
		defer mu.Unlock()
		r := &results[len(crrClasses)]
		if class >= 0 {
			r = &results[class]
		}
		r.n++
		r.worst = max(r.worst, took)
		if took >= stall {
			r.slow++
		}
		if err != nil {
			r.failed++
			if len(r.errs) < 3 {
				r.errs = append(r.errs, fmt.Errorf("port %d: %w (after %s); its conntrack entries now: %s",
					port, err, took.Round(time.Millisecond), entriesOf(pin, netip.AddrPortFrom(client.IP, port))))
			}
		}
	}
	end := time.Now().Add(duration)
	var wg sync.WaitGroup

	gc, err := dp.GC(nat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	stop := gc.Start(time.Second)
	defer stop()
	const workers, rate = 2, 1500 // connections a second, at most: the CPUs are shared
	for range workers {
		wg.Go(func() {
			started := time.Now()
			for n := 0; time.Now().Before(end); n++ {
				time.Sleep(time.Until(started.Add(time.Duration(n) * time.Second * workers / rate)))
				port, class, ok := sched.take()
				if !ok {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				run(port, class)
			}
		})
	}
	wg.Wait()
	stop()
	g := gc.Stats()
	d := statsDelta(flowStats(t, dp)[maps.FlowConntrackTCP], before[maps.FlowConntrackTCP])

	total, failed, slow := 0, 0, 0
	for i, r := range results {
		what := "new ports"
		if i < len(crrClasses) {
			what = "ports " + crrClasses[i]
		}
		t.Logf("%s: %d connections, %d failed, %d took %s or more, the slowest %s", what, r.n, r.failed, r.slow, stall, r.worst.Round(time.Millisecond))
		for _, err := range r.errs {
			t.Errorf("%s: %v", what, err)
		}
		total, failed, slow = total+r.n, failed+r.failed, slow+r.slow
		if r.n == 0 {
			t.Errorf("no connection of %s: the schedule did not run long enough", what)
		}
	}
	t.Logf("%d connections in %s (%.0f/s), %d served; GC: %d passes, conntrack %+v; conntrack-tcp moved by %+v",
		total, duration, float64(total)/duration.Seconds(), served.Load(), g.Runs, g.Conntrack, d)
	if failed > 0 || slow > 0 {
		t.Errorf("%d of %d connections failed, %d took %s or more: want none", failed, total, slow, stall)
	}
	if g.Runs < uint64(duration/time.Second)-2 || g.Conntrack.Removed == 0 {
		t.Errorf("GC: %d passes removing %d conntrack entries: want one a second, removing closed flows' entries while their tuples were used again", g.Runs, g.Conntrack.Removed)
	}
	if d.Refused != 0 || d.Failed != 0 {
		t.Errorf("conntrack-tcp refused %d and failed %d flows: the tables were too small for the test", d.Refused, d.Failed)
	}
}
