package datapath_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// nameServer serves p's name on TCP and UDP port 8080 of its address
// (datapathtest's ServeName).
func nameServer(t *testing.T, p *datapathtest.Pod) netip.AddrPort { return p.ServeName(t, 8080) }

// askName connects from the namespace at nsPath to dst over proto ("tcp4"
// or "udp4") and returns the name the backend answered with.
func askName(nsPath, proto string, dst netip.AddrPort) (string, error) {
	a, err := datapathtest.AskName(nsPath, proto, dst)
	return a.Name, err
}

// TestClusterIP: a pod reaches a ClusterIP over TCP and UDP, spread over a
// backend on its node and one on another; UDP replies come from the
// ClusterIP; nf_conntrack sees none of it (with kube-proxy's INVALID-drop
// rule in place); a removed backend takes no new flows; a deleted service
// is gone.
func TestClusterIP(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, n1 := cn.cluster.Nodes[0], cn.cluster.Nodes[1]
	client := cn.a
	local := n0.AddPod(t, "local", n0.PodIP(20))
	local.AddEndpoint(t, cn.dps[0])
	remote := cn.b
	for _, n := range []*datapathtest.Node{n0, n1} {
		n.Exec(t, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	backends := []datapath.Backend{{Addr: nameServer(t, local)}, {Addr: nameServer(t, remote)}}
	var ids [2]uint16
	for i, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		for j, dp := range cn.dps {
			id, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: proto, Backends: backends})
			if err != nil {
				t.Fatal(err)
			}
			if j == 0 {
				ids[i] = id
			}
		}
	}

	for _, proto := range []string{"tcp4", "udp4"} {
		seen := map[string]int{}
		for range 30 {
			name, err := askName(client.Netns, proto, vip)
			if err != nil {
				t.Fatalf("%s to %s: %v", proto, vip, err)
			}
			seen[name]++
		}
		if seen["local"] == 0 || seen["b"] == 0 || len(seen) != 2 {
			t.Errorf("%s: 30 connections to %s answered by %v: want both backends", proto, vip, seen)
		}
	}
	for _, n := range []*datapathtest.Node{n0, n1} {
		if out := n.Exec(t, "conntrack", "-L", "-d", vip.Addr().String()); strings.Contains(out, vip.Addr().String()) {
			t.Errorf("%s: nf_conntrack tracks the service flows:\n%s", n.Name, out)
		}
	}

	// The remote backend goes: new flows take the local one.
	if _, err := cn.dps[0].UpsertService(datapath.Service{ID: ids[0], Frontend: vip, Protocol: datapath.TCP, Backends: backends[:1]}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if name, err := askName(client.Netns, "tcp4", vip); err != nil || name != "local" {
			t.Fatalf("after the remote backend left: %q, %v; want local", name, err)
		}
	}
	svcs, err := cn.dps[0].Services()
	if err != nil || len(svcs) != 2 || len(svcs[0].Backends) != 1 {
		t.Errorf("services: %v, %v", svcs, err)
	}
	if err := cn.dps[0].DeleteService(ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := askName(client.Netns, "tcp4", vip); err == nil {
		t.Error("TCP to a deleted service's frontend was answered")
	}
	if err := cn.dps[0].DeleteService(ids[0]); !errors.Is(err, datapath.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

// TestServiceBadInput refuses services the datapath cannot express, and
// leaves nothing of them.
func TestServiceBadInput(t *testing.T) {
	_, _, b, dp := twoPods(t, datapath.Config{})
	be := []datapath.Backend{{Addr: netip.AddrPortFrom(b.IP, 80)}}
	vip := netip.MustParseAddrPort("10.96.0.1:443")
	for _, c := range []struct {
		name string
		svc  datapath.Service
		want string
	}{
		{"port 0", datapath.Service{Frontend: netip.MustParseAddrPort("10.96.0.1:0"), Protocol: datapath.TCP, Backends: be}, "port 0"},
		{"IPv6 frontend", datapath.Service{Frontend: netip.MustParseAddrPort("[fd00::1]:80"), Protocol: datapath.TCP, Backends: be}, "IPv4"},
		{"unknown protocol", datapath.Service{Frontend: vip, Protocol: 132, Backends: be}, "TCP or UDP"},
		{"unknown type", datapath.Service{Frontend: vip, Protocol: datapath.TCP, Type: "LoadBalancer2", Backends: be}, "unknown service type"},
		{"backend port 0", datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(b.IP, 0)}}}, "port"},
		{"backend twice", datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: append(be, be...)}, "twice"},
	} {
		if _, err := dp.UpsertService(c.svc); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
	id, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: be})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dp.UpsertService(datapath.Service{ID: id + 1, Frontend: vip, Protocol: datapath.TCP}); !errors.Is(err, datapath.ErrServiceExists) {
		t.Errorf("a second service on the same frontend: %v, want ErrServiceExists", err)
	}
	svcs, err := dp.Services()
	if err != nil || len(svcs) != 1 || svcs[0].ID != id {
		t.Errorf("services after the refusals: %v, %v; want the one", svcs, err)
	}
	if got, want := svcs[0].String(), fmt.Sprintf("%-4d 10.96.0.1:443/TCP          ClusterIP    1 => %s:80/TCP (active)", id, b.IP); got != want {
		t.Errorf("String() = %q\nwant       %q", got, want)
	}
}

// outsideHost serves, on TCP and UDP addr in the namespace at nsPath, the
// address each client came from (datapathtest.ServeName), until t ends.
func outsideHost(t *testing.T, nsPath string, addr netip.AddrPort) {
	datapathtest.ServeName(t, nsPath, addr, "outside")
}

// seenAs connects from the namespace at nsPath to dst over proto and
// returns the address the ServeName server there saw the client come from.
func seenAs(nsPath, proto string, dst netip.AddrPort) (string, error) {
	a, err := datapathtest.AskName(nsPath, proto, dst)
	return a.Client, err
}

// TestMasquerade: pods reach a host outside the native routing CIDR (on
// the wire) with their node's address, over TCP and UDP, by BPF both ways
// (netfilter's FORWARD chain sees nothing); pod-to-pod inside the CIDR
// keeps pod addresses.
func TestMasquerade(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	outside := netip.AddrPortFrom(cn.cluster.Gateway, 9000)
	outsideHost(t, cn.cluster.Wire, outside)
	fwd := n0.CountForward(t)
	for _, proto := range []string{"tcp4", "udp4"} {
		for range 3 {
			peer, err := seenAs(cn.a.Netns, proto, outside)
			if err != nil {
				t.Fatalf("%s from pod a to %s: %v", proto, outside, err)
			}
			ap, err := netip.ParseAddrPort(peer)
			if err != nil || ap.Addr() != n0.IP {
				t.Errorf("%s: the outside host saw %s, want node %s's address", proto, peer, n0.IP)
			}
		}
	}
	// ICMP echo, translated by identifier.
	cn.a.MustPing(t, cn.cluster.Gateway)
	if f := fwd(); f != 0 {
		t.Errorf("FORWARD counted %d packets: masqueraded flows went by the stack", f)
	}
	// Inside the native routing CIDR: no translation.
	outsideHost(t, cn.b.Netns, netip.AddrPortFrom(cn.b.IP, 9000))
	if peer, err := seenAs(cn.a.Netns, "tcp4", netip.AddrPortFrom(cn.b.IP, 9000)); err != nil || !strings.HasPrefix(peer, cn.a.IP.String()+":") {
		t.Errorf("pod to pod across nodes: seen as %q (err %v), want pod a's address %s", peer, err, cn.a.IP)
	}
}

// TestNodePort: a client on the wire reaches a NodePort of each node,
// answered from the address it dialled, by a backend on the node or on the
// other one; with externalTrafficPolicy Local only the local backend
// answers and sees the client's own address.
func TestNodePort(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, n1 := cn.cluster.Nodes[0], cn.cluster.Nodes[1]
	local, remote := cn.a, cn.b // backends on node 0 and node 1
	backends := []datapath.Backend{{Addr: nameServer(t, local)}, {Addr: nameServer(t, remote)}}
	for i, n := range []*datapathtest.Node{n0, n1} {
		front := netip.AddrPortFrom(n.IP, 30080)
		if _, err := cn.dps[i].UpsertService(datapath.Service{Frontend: front, Protocol: datapath.TCP, Type: datapath.NodePort, Backends: backends}); err != nil {
			t.Fatal(err)
		}
		if _, err := cn.dps[i].UpsertService(datapath.Service{Frontend: front, Protocol: datapath.UDP, Type: datapath.NodePort, Backends: backends}); err != nil {
			t.Fatal(err)
		}
		for _, proto := range []string{"tcp4", "udp4"} {
			seen := map[string]int{}
			for range 20 {
				name, err := askName(cn.cluster.Wire, proto, front)
				if err != nil {
					t.Fatalf("%s from the wire to %s: %v", proto, front, err)
				}
				seen[name]++
			}
			if len(seen) != 2 {
				t.Errorf("%s to %s answered by %v: want both backends", proto, front, seen)
			}
		}
	}

	// A NodePort of every node address (0.0.0.0), answered from the
	// address dialled.
	every := netip.AddrPortFrom(netip.IPv4Unspecified(), 30100)
	for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		if _, err := cn.dps[1].UpsertService(datapath.Service{Frontend: every, Protocol: proto, Type: datapath.NodePort, Backends: backends}); err != nil {
			t.Fatal(err)
		}
	}
	for _, proto := range []string{"tcp4", "udp4"} {
		if _, err := askName(cn.cluster.Wire, proto, netip.AddrPortFrom(n1.IP, 30100)); err != nil {
			t.Errorf("%s to the NodePort of every address at %s: %v", proto, n1.IP, err)
		}
	}
	// A pod reaches the NodePort of every address on its own node's
	// address, by the tc load balancer, answered from the address dialled
	// (the pod is a backend itself: some of its flows are hairpins).
	for _, proto := range []string{"tcp4", "udp4"} {
		seen := map[string]int{}
		for range 12 {
			a, err := datapathtest.AskName(remote.Netns, proto, netip.AddrPortFrom(n1.IP, 30100))
			if err != nil || a.Peer != netip.AddrPortFrom(n1.IP, 30100).String() {
				t.Fatalf("%s from pod %s to its node's NodePort %s:30100: %q from %s, %v", proto, remote.Name, n1.IP, a.Name, a.Peer, err)
			}
			seen[a.Name]++
		}
		if len(seen) != 2 {
			t.Errorf("%s from a pod to its node's NodePort answered by %v: want both backends", proto, seen)
		}
	}
	if _, err := cn.dps[1].UpsertService(datapath.Service{Frontend: netip.AddrPortFrom(netip.IPv4Unspecified(), 80), Protocol: datapath.TCP}); err == nil {
		t.Error("a ClusterIP of 0.0.0.0 was taken")
	}

	// externalTrafficPolicy Local on node 0: its own backend only, which
	// sees the client's address.
	outsideHost(t, local.Netns, netip.AddrPortFrom(local.IP, 9000))
	front := netip.AddrPortFrom(n0.IP, 30090)
	_, err := cn.dps[0].UpsertService(datapath.Service{Frontend: front, Protocol: datapath.TCP, Type: datapath.NodePort, ExternalTrafficPolicyLocal: true,
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(local.IP, 9000)}, {Addr: netip.AddrPortFrom(remote.IP, 9000)}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		peer, err := seenAs(cn.cluster.Wire, "tcp4", front)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(peer, cn.cluster.Gateway.String()+":") {
			t.Fatalf("externalTrafficPolicy Local: backend saw %q, want the client %s", peer, cn.cluster.Gateway)
		}
	}
}

// TestMaglev: on a node that chooses backends by Maglev, a service's
// table gives each backend its share of the slots, flows are spread by
// it, and the table follows the backends.
func TestMaglev(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{MaglevTableSize: 251})
	n0 := cn.cluster.Nodes[0]
	dp := cn.dps[0]
	if _, err := datapath.New(datapath.Config{PinPath: datapathtest.PinPath(t), Netns: n0.Netns, MaglevTableSize: 250}); err == nil {
		t.Error("a Maglev table size of 250 (not a prime) was taken")
	}
	third := n0.AddPod(t, "third", n0.PodIP(50))
	third.AddEndpoint(t, dp)
	backends := []datapath.Backend{{Addr: nameServer(t, cn.a)}, {Addr: nameServer(t, cn.b)}, {Addr: nameServer(t, third)}}
	vip := netip.MustParseAddrPort("10.96.0.40:80")
	id, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: backends})
	if err != nil {
		t.Fatal(err)
	}
	share := func() map[uint32]int {
		t.Helper()
		node, err := instance.Open(pinPathOf(t, cn.dps[0]))
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		var inner *ebpf.Map
		if err := node.Maps.Maglev.Lookup(uint32(id), &inner); err != nil {
			t.Fatalf("Maglev table of service %d: %v", id, err)
		}
		defer inner.Close()
		table := make([]uint32, 251)
		if err := inner.Lookup(uint32(0), &table); err != nil {
			t.Fatal(err)
		}
		got := map[uint32]int{}
		for _, b := range table {
			got[b]++
		}
		return got
	}
	if got := share(); len(got) != 3 || got[0] != 0 {
		t.Errorf("Maglev table slots by backend ID: %v, want 3 backends of about 84 each", got)
	} else {
		for b, n := range got {
			if n < 83 || n > 84 {
				t.Errorf("backend %d has %d of 251 slots, want 83 or 84", b, n)
			}
		}
	}
	client := n0.AddPod(t, "client", n0.PodIP(60))
	client.AddEndpoint(t, dp)
	seen := map[string]int{}
	for range 30 {
		name, err := askName(client.Netns, "tcp4", vip)
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
	}
	if len(seen) < 2 {
		t.Errorf("30 flows to a Maglev service answered by %v: want them spread", seen)
	}
	if _, err := dp.UpsertService(datapath.Service{ID: id, Frontend: vip, Protocol: datapath.TCP, Backends: backends[:2]}); err != nil {
		t.Fatal(err)
	}
	if got := share(); len(got) != 2 {
		t.Errorf("after a backend left, the table holds %v: want the 2 left", got)
	}
}

// TestMasqueradePMTU: a router between the node and the outside host has
// a smaller MTU; its fragmentation-needed about a masqueraded packet
// reaches the pod with the quoted packet translated back (the pod's own
// address and port), so the pod's path MTU drops and its flow gets through.
func TestMasqueradePMTU(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	wire := cn.cluster.WireName
	outsideName, outsidePath := datapathtest.NewNetns(t, "outside")
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	// wire (router) ──veth, MTU 1280── outside 192.0.2.10
	ip("-n", wire, "link", "add", "to-out", "mtu", "1280", "type", "veth", "peer", "name", "eth0", "netns", outsideName, "mtu", "1280")
	ip("-n", wire, "addr", "add", "192.0.2.1/24", "dev", "to-out")
	ip("-n", wire, "link", "set", "to-out", "up")
	ip("-n", outsideName, "addr", "add", "192.0.2.10/24", "dev", "eth0")
	ip("-n", outsideName, "link", "set", "eth0", "up")
	ip("-n", outsideName, "link", "set", "lo", "up")
	ip("-n", outsideName, "route", "add", "default", "via", "192.0.2.1")
	if out, err := exec.Command("ip", "netns", "exec", wire, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("forwarding on the wire: %v\n%s", err, out)
	}
	outside := netip.MustParseAddrPort("192.0.2.10:9000")
	outsideHost(t, outsidePath, outside)
	// A small request first: the path works at all.
	if peer, err := seenAs(cn.a.Netns, "tcp4", outside); err != nil || !strings.HasPrefix(peer, cn.cluster.Nodes[0].IP.String()+":") {
		t.Fatalf("pod a to %s: seen as %q, %v: want node 0's address", outside, peer, err)
	}
	// A 1400-byte DF datagram does not fit the router's link: the pod
	// learns the path MTU from the translated fragmentation-needed.
	err := routing.Do(cn.a.Netns, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(outside))
		if err != nil {
			return err
		}
		defer c.Close()
		raw, _ := c.SyscallConn()
		raw.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO)
		})
		c.Write(make([]byte, 1400-28))
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			mtu, err := syscall.GetsockoptInt(int(fdOf(c)), syscall.IPPROTO_IP, syscall.IP_MTU)
			if err == nil && mtu == 1280 {
				return nil
			}
			c.Write(make([]byte, 1400-28))
			time.Sleep(50 * time.Millisecond)
		}
		mtu, err := syscall.GetsockoptInt(int(fdOf(c)), syscall.IPPROTO_IP, syscall.IP_MTU)
		return fmt.Errorf("the pod's path MTU to %s is %d (%v), want 1280", outside, mtu, err)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fdOf returns c's file descriptor.
func fdOf(c *net.UDPConn) uintptr {
	var fd uintptr
	raw, _ := c.SyscallConn()
	raw.Control(func(f uintptr) { fd = f })
	return fd
}

// TestInboundFromOutside: a host on the wire, outside the native routing
// CIDR, reaches a pod with kube-proxy's `FORWARD -m conntrack --ctstate
// INVALID -j DROP` in the node: with masquerade (BPF both ways) and
// without (the stack both ways; it used to see only the replies and drop
// them as INVALID).
func TestInboundFromOutside(t *testing.T) {
	for _, masquerade := range []bool{true, false} {
		t.Run(fmt.Sprintf("masquerade=%v", masquerade), func(t *testing.T) {
			cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{DisableMasquerade: !masquerade})
			n1 := cn.cluster.Nodes[1]
			n1.Exec(t, "iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
			if out, err := exec.Command("ip", "-n", cn.cluster.WireName, "route", "add", n1.PodCIDR.String(), "via", n1.IP.String()).CombinedOutput(); err != nil {
				t.Fatalf("route to the pods: %v\n%s", err, out)
			}
			target := nameServer(t, cn.b)
			for range 5 {
				if name, err := askName(cn.cluster.Wire, "tcp4", target); err != nil || name != "b" {
					t.Fatalf("from the wire to pod b %s: %q, %v", target, name, err)
				}
			}
			st, err := cn.dps[1].Status()
			if err != nil || st.Masquerading != masquerade {
				t.Errorf("status: masquerading %v (err %v), want %v", st.Masquerading, err, masquerade)
			}
		})
	}
}

// TestTerminatingBackend: a backend set terminating keeps the flows it has
// and takes no new ones.
func TestTerminatingBackend(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	client := n0.AddPod(t, "client", n0.PodIP(70))
	client.AddEndpoint(t, cn.dps[0])
	a := netip.AddrPortFrom(cn.a.IP, 9100)
	b := netip.AddrPortFrom(cn.b.IP, 9100)
	// Echo servers that count the connections they accept.
	var accepted [2]atomic.Int32
	echo := func(p *datapathtest.Pod, addr netip.AddrPort, n *atomic.Int32) {
		var ln net.Listener
		if err := routing.Do(p.Netns, func() (err error) { ln, err = net.Listen("tcp4", addr.String()); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				n.Add(1)
				go func() { io.Copy(c, c); c.Close() }()
			}
		}()
	}
	echo(cn.a, a, &accepted[0])
	echo(cn.b, b, &accepted[1])
	vip := netip.MustParseAddrPort("10.96.0.50:80")
	id, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: []datapath.Backend{{Addr: a}}})
	if err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	if err := routing.Do(client.Netns, func() (err error) { c, err = net.DialTimeout("tcp4", vip.String(), 2*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip := func(msg string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q over the established flow: %q, %v", msg, buf, err)
		}
	}
	roundTrip("before")
	if _, err := cn.dps[0].UpsertService(datapath.Service{ID: id, Frontend: vip, Protocol: datapath.TCP,
		Backends: []datapath.Backend{{Addr: a, State: datapath.BackendTerminating}, {Addr: b}}}); err != nil {
		t.Fatal(err)
	}
	roundTrip("after a went terminating")
	svcs, err := cn.dps[0].Services()
	if err != nil || len(svcs) != 1 || len(svcs[0].Backends) != 2 {
		t.Fatalf("services: %v, %v", svcs, err)
	}
	// New flows go to b only.
	for range 10 {
		var nc net.Conn
		if err := routing.Do(client.Netns, func() (err error) { nc, err = net.DialTimeout("tcp4", vip.String(), 2*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(2 * time.Second))
		nc.Write([]byte("x"))
		buf := make([]byte, 1)
		_, err := io.ReadFull(nc, buf)
		local := nc.RemoteAddr()
		nc.Close()
		if err != nil {
			t.Fatalf("a new flow to %s (%s): %v", vip, local, err)
		}
	}
	if a, b := accepted[0].Load(), accepted[1].Load(); a != 1 || b != 10 {
		t.Errorf("connections accepted: a %d, b %d; want 1 (the established flow) and 10", a, b)
	}
	roundTrip("still")
}

// TestNATPortExhaustion: with a translation range of two ports, a third
// flow to the same remote address and port finds none: a counted drop,
// never a wrong translation.
func TestNATPortExhaustion(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{NATPorts: [2]uint16{40000, 40001}})
	outside := netip.AddrPortFrom(cn.cluster.Gateway, 9000)
	outsideHost(t, cn.cluster.Wire, outside)
	before := metric(t, cn.dps[0], maps.MetricDropNATNoPort)
	seen := map[string]bool{}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	answered := 0
	for i := range 3 {
		var c net.Conn
		if err := routing.Do(cn.a.Netns, func() (err error) { c, err = net.Dial("udp4", outside.String()); return err }); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(time.Second))
		c.Write([]byte("who"))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			t.Logf("flow %d: no answer (%v)", i, err)
			continue
		}
		answered++
		_, peer, _ := strings.Cut(string(buf[:n]), " ") // "outside CLIENT"
		seen[peer] = true
	}
	if answered != 2 || len(seen) != 2 {
		t.Errorf("%d flows answered, seen as %v: want 2, from two ports of the range", answered, seen)
	}
	for peer := range seen {
		if ap, err := netip.ParseAddrPort(peer); err != nil || ap.Port() < 40000 || ap.Port() > 40001 {
			t.Errorf("a flow left as %s: want a port of 40000-40001", peer)
		}
	}
	if d := metric(t, cn.dps[0], maps.MetricDropNATNoPort) - before; d < 1 {
		t.Errorf("drop-nat-no-port moved by %d: want the third flow's datagram counted", d)
	}
}

// TestTrafficPolicies: externalTrafficPolicy Local limits traffic from
// outside to local backends while pods keep every backend;
// internalTrafficPolicy Local limits the node's pods to local backends.
func TestTrafficPolicies(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	client := n0.AddPod(t, "client", n0.PodIP(80))
	client.AddEndpoint(t, cn.dps[0])
	backends := []datapath.Backend{{Addr: nameServer(t, cn.a)}, {Addr: nameServer(t, cn.b)}}
	spread := func(from func() (string, error)) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for range 16 {
			name, err := from()
			if err != nil {
				t.Fatal(err)
			}
			seen[name]++
		}
		return seen
	}
	node := netip.AddrPortFrom(n0.IP, 30200)
	if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: node, Protocol: datapath.TCP, Type: datapath.NodePort,
		ExternalTrafficPolicyLocal: true, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	if seen := spread(func() (string, error) { return askName(cn.cluster.Wire, "tcp4", node) }); len(seen) != 1 || seen["a"] == 0 {
		t.Errorf("externalTrafficPolicy Local from the wire: answered by %v, want the local backend a only", seen)
	}
	if seen := spread(func() (string, error) { return askName(client.Netns, "tcp4", node) }); len(seen) != 2 {
		t.Errorf("externalTrafficPolicy Local from a pod of the node: answered by %v, want both backends", seen)
	}
	vip := netip.MustParseAddrPort("10.96.0.60:80")
	if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, InternalTrafficPolicyLocal: true, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	if seen := spread(func() (string, error) { return askName(client.Netns, "tcp4", vip) }); len(seen) != 1 || seen["a"] == 0 {
		t.Errorf("internalTrafficPolicy Local from a pod: answered by %v, want the local backend a only", seen)
	}
	svcs, err := cn.dps[0].Services()
	if err != nil || len(svcs) != 2 {
		t.Fatalf("services: %v, %v", svcs, err)
	}
	for _, s := range svcs {
		if s.ExternalTrafficPolicyLocal != (s.Frontend == node) || s.InternalTrafficPolicyLocal != (s.Frontend == vip) {
			t.Errorf("service %s lists externalTrafficPolicy Local %v, internalTrafficPolicy Local %v", s.Frontend,
				s.ExternalTrafficPolicyLocal, s.InternalTrafficPolicyLocal)
		}
	}
}

// TestHairpin: a pod reaches a service whose only backend is itself, over
// TCP and UDP (the tc load balancer gives the flow the source 169.254.42.1,
// which the pod's stack accepts, and translates the replies back).
func TestHairpin(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", ipA)
	dp := node.NewDatapath(t, datapath.Config{})
	a.AddEndpoint(t, dp)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	backend := nameServer(t, a)
	for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: proto, Backends: []datapath.Backend{{Addr: backend}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, proto := range []string{"tcp4", "udp4"} {
		got, err := datapathtest.AskName(a.Netns, proto, vip)
		if err != nil || got.Name != "a" || got.Peer != vip.String() {
			t.Errorf("%s from a to its own service %s: %q from %s, %v; want a from the service", proto, vip, got.Name, got.Peer, err)
		}
	}
}

// TestServiceICMPError: a UDP datagram to a ClusterIP whose backend has
// no listener fails with ECONNREFUSED at the client, as without a
// service: the backend's port unreachable reaches the client's socket
// from the ClusterIP, quoting the datagram as the client sent it.
func TestServiceICMPError(t *testing.T) {
	_, a, b, dp := twoPods(t, datapath.Config{})
	vip := netip.MustParseAddrPort("10.96.0.53:53")
	if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.UDP,
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(b.IP, 9999)}}}); err != nil {
		t.Fatal(err)
	}
	err := routing.Do(a.Netns, func() error {
		c, err := net.Dial("udp4", vip.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("who")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 16))
		return err
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("UDP to %s with no listener behind it: %v, want ECONNREFUSED", vip, err)
	}
}
