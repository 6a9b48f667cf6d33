package datapath_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

var (
	ipA = netip.MustParseAddr("10.0.0.10")
	ipB = netip.MustParseAddr("10.0.0.11")
	ipC = netip.MustParseAddr("10.0.0.12")
)

// twoPods builds a node with pods a and b on a datapath made with cfg.
func twoPods(t *testing.T, cfg datapath.Config) (*datapathtest.Node, *datapathtest.Pod, *datapathtest.Pod, *datapath.Datapath) {
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", ipA)
	b := node.AddPod(t, "b", ipB)
	dp := node.NewDatapath(t, cfg)
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	return node, a, b, dp
}

func txPackets(t *testing.T, node *datapathtest.Node, ifname string) uint64 {
	t.Helper()
	s, err := node.LinkStats(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return s.TxPackets
}

// exchange pings and runs TCP and UDP echoes both ways between a and b.
func exchange(t *testing.T, a, b *datapathtest.Pod, pings int) {
	t.Helper()
	for _, p := range [][2]*datapathtest.Pod{{a, b}, {b, a}} {
		if got, err := p[0].Ping(p[1].IP, pings, 5*time.Second); err != nil || got != pings {
			t.Fatalf("ping %s → %s: %d of %d replies, err %v", p[0].Name, p[1].Name, got, pings, err)
		}
		p[0].MustTCPEcho(t, p[1].IP, p[1].ServeTCPEcho(t))
		p[0].MustUDPEcho(t, p[1].IP, p[1].ServeUDPEcho(t))
	}
}

func TestSameNodeBPFHostRouting(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{})
	forwarded := node.CountForward(t)

	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.HostRouting != datapath.HostRoutingBPF || st.Endpoints != 2 {
		t.Fatalf("status: %+v", st)
	}
	// Let both pods resolve their gateway: the kernel answers ARP on the
	// host devices, which is the only thing they may transmit.
	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	txA, txB := txPackets(t, node, a.HostIf), txPackets(t, node, b.HostIf)
	before, err := dp.EndpointStats(b.IP)
	if err != nil {
		t.Fatal(err)
	}

	const pings = 20
	exchange(t, a, b, pings)

	if d := txPackets(t, node, b.HostIf) - txB; d != 0 {
		t.Errorf("%s (b's host device) transmitted %d packets: want 0, bpf_redirect_peer delivers past it", b.HostIf, d)
	}
	if d := txPackets(t, node, a.HostIf) - txA; d != 0 {
		t.Errorf("%s (a's host device) transmitted %d packets: want 0", a.HostIf, d)
	}
	if n := forwarded(); n != 0 {
		t.Errorf("netfilter FORWARD saw %d packets: want 0 in BPF host routing", n)
	}
	after, err := dp.EndpointStats(b.IP)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.ToPackets - before.ToPackets; d < pings {
		t.Errorf("b's to-container counter moved by %d: want at least %d", d, pings)
	}
	if d := after.FromPackets - before.FromPackets; d < pings {
		t.Errorf("b's from-container counter moved by %d: want at least %d", d, pings)
	}
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m.Total(maps.MetricForwardPeer).Packets < 4*pings {
		t.Errorf("forward-peer metric %d: want at least %d", m.Total(maps.MetricForwardPeer).Packets, 4*pings)
	}
}

func TestFallbackWithoutRedirectPeer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		disable loader.Disable
	}{
		{"tcx", loader.Disable{RedirectPeer: true}},
		{"clsact", loader.Disable{RedirectPeer: true, TCX: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node, a, b, dp := twoPods(t, datapath.Config{Disable: tc.disable})
			forwarded := node.CountForward(t)
			st, err := dp.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.HostRouting != datapath.HostRoutingLegacy || !strings.Contains(st.LegacyReason, "disabled by config") {
				t.Fatalf("status %q (%s): want Legacy, disabled by config", st.HostRouting, st.LegacyReason)
			}
			txB := txPackets(t, node, b.HostIf)
			const pings = 20
			exchange(t, a, b, pings)
			if d := txPackets(t, node, b.HostIf) - txB; d < pings {
				t.Errorf("%s transmitted %d packets: want at least %d, bpf_redirect crosses the veth", b.HostIf, d, pings)
			}
			if n := forwarded(); n != 0 {
				t.Errorf("netfilter FORWARD saw %d packets: want 0, bpf_redirect skips the stack", n)
			}
			if tc.disable.TCX {
				out := node.Exec(t, "tc", "filter", "show", "dev", a.HostIf, "ingress")
				if !strings.Contains(out, "from_container") {
					t.Errorf("no from_container cls_bpf filter on %s ingress:\n%s", a.HostIf, out)
				}
			}
		})
	}
}

// xlatedCallsRedirectPeer tells whether any program of the node pinned at
// pin — the entry programs, the tail-call stages behind them and the
// policy verdict stages — calls bpf_redirect_peer as the verifier left it.
func xlatedCallsRedirectPeer(t *testing.T, pin string) bool {
	t.Helper()
	var ids []ebpf.ProgramID
	arrays, _ := filepath.Glob(filepath.Join(pin, "progs", "hr_calls_*"))
	for _, path := range append(arrays, filepath.Join(pin, "hr_policy_ret")) {
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for slot := range m.MaxEntries() {
			var id uint32
			if err := m.Lookup(slot, &id); err == nil {
				ids = append(ids, ebpf.ProgramID(id))
			}
		}
		m.Close()
	}
	if len(ids) < 4 {
		t.Fatalf("found %d stage programs, want the node's stages and policy verdicts", len(ids))
	}
	dumps := []string{"pinned " + filepath.Join(pin, "progs", "from_container"), "pinned " + filepath.Join(pin, "progs", "from_netdev")}
	for _, id := range ids {
		dumps = append(dumps, fmt.Sprintf("id %d", id))
	}
	var all strings.Builder
	for _, d := range dumps {
		out, err := exec.Command("bpftool", append([]string{"prog", "dump", "xlated"}, strings.Fields(d)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("bpftool prog dump xlated %s: %v\n%s", d, err, out)
		}
		all.Write(out)
	}
	if !strings.Contains(all.String(), "call bpf_redirect") {
		t.Fatalf("bpftool output has no redirect calls at all:\n%s", all.String())
	}
	return strings.Contains(all.String(), "call bpf_redirect_peer")
}

func TestForcedFallbackLeavesNoRedirectPeerCall(t *testing.T) {
	datapathtest.RequireRoot(t)
	if _, err := exec.LookPath("bpftool"); err != nil {
		t.Fatalf("bpftool is needed to read the xlated program: %v", err)
	}
	for _, disable := range []bool{false, true} {
		pin := datapathtest.PinPath(t)
		dp, err := datapath.New(datapath.Config{PinPath: pin, Disable: loader.Disable{RedirectPeer: disable}})
		if err != nil {
			t.Fatal(err)
		}
		got := xlatedCallsRedirectPeer(t, pin)
		if got == disable {
			t.Errorf("RedirectPeer disabled=%v: xlated programs call bpf_redirect_peer: %v", disable, got)
		}
		if err := dp.Remove(); err != nil {
			t.Fatal(err)
		}
	}
}

// sendSpoofedUDP sends UDP from inside pod from with source address src.
func sendSpoofedUDP(t *testing.T, from *datapathtest.Pod, src, dst netip.Addr, port uint16, n int) {
	t.Helper()
	err := from.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// A transparent socket may send from an address it does not own.
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			return err
		}
		for range n {
			if err := unix.Sendto(fd, []byte("spoofed"), 0, &unix.SockaddrInet4{Addr: dst.As4(), Port: int(port)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send spoofed UDP from %s as %s: %v", from.Name, src, err)
	}
}

// udpListener opens a UDP socket in pod p and returns its port and a
// function that counts datagrams arriving within wait.
func udpListener(t *testing.T, p *datapathtest.Pod) (uint16, func(wait time.Duration) int) {
	t.Helper()
	var conn *net.UDPConn
	err := p.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(p.IP.AsSlice())})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	count := func(wait time.Duration) int {
		n := 0
		buf := make([]byte, 2048)
		conn.SetReadDeadline(time.Now().Add(wait))
		for {
			if _, _, err := conn.ReadFromUDP(buf); err != nil {
				return n
			}
			n++
		}
	}
	return uint16(conn.LocalAddr().(*net.UDPAddr).Port), count
}

func TestSpoofedSourceIsDropped(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{})
	c := node.AddPod(t, "c", ipC)
	c.AddEndpoint(t, dp)
	port, received := udpListener(t, c)

	// The control: a's own address gets through.
	sendSpoofedUDP(t, a, a.IP, c.IP, port, 1)
	if n := received(time.Second); n != 1 {
		t.Fatalf("c received %d datagrams from a's own address: want 1", n)
	}
	before, err := dp.EndpointStats(a.IP)
	if err != nil {
		t.Fatal(err)
	}
	metricsBefore, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}

	const n = 5
	sendSpoofedUDP(t, a, b.IP, c.IP, port, n)                            // another pod's address
	sendSpoofedUDP(t, a, netip.MustParseAddr("10.9.9.9"), c.IP, port, n) // nobody's address
	if got := received(500 * time.Millisecond); got != 0 {
		t.Errorf("c received %d spoofed datagrams: want 0", got)
	}
	after, err := dp.EndpointStats(a.IP)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.DropPackets - before.DropPackets; d != 2*n {
		t.Errorf("a's drop counter moved by %d: want %d", d, 2*n)
	}
	metricsAfter, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if d := metricsAfter.Total(maps.MetricDropSpoofed).Packets - metricsBefore.Total(maps.MetricDropSpoofed).Packets; d != 2*n {
		t.Errorf("drop-spoofed metric moved by %d: want %d", d, 2*n)
	}
}

func TestRestartAdoptsRunningDatapath(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", ipA)
	b := node.AddPod(t, "b", ipB)
	cfg := datapath.Config{Netns: node.Netns, PinPath: datapathtest.PinPath(t)}
	first, err := datapath.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.AddEndpoint(t, first)
	b.AddEndpoint(t, first)
	progID := func() any {
		n, err := instance.Open(cfg.PinPath)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		info, err := n.Program(loader.FromContainer).Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	idBefore := progID()
	a.MustPing(t, b.IP)
	txB := txPackets(t, node, b.HostIf)

	// Ping without pause while the first process goes away and a second
	// one adopts the node.
	var sent, lost atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := a.Ping(b.IP, 1, time.Second)
			sent.Add(1)
			if err != nil || got != 1 {
				lost.Add(1)
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	second, err := datapath.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Remove()
	time.Sleep(100 * time.Millisecond)
	close(stop)
	<-done

	if lost.Load() != 0 || sent.Load() < 3 {
		t.Errorf("%d of %d pings lost across the restart", lost.Load(), sent.Load())
	}
	if d := txPackets(t, node, b.HostIf) - txB; d != 0 {
		t.Errorf("%s transmitted %d packets across the restart: want 0 (still bpf_redirect_peer)", b.HostIf, d)
	}
	if idAfter := progID(); idAfter != idBefore {
		t.Errorf("from-container program %v replaced by %v: want the pinned one adopted", idBefore, idAfter)
	}
	eps, err := second.Endpoints()
	if err != nil || len(eps) != 2 {
		t.Errorf("adopted endpoints: %v, %v", eps, err)
	}
}

func TestBadInput(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", ipA)
	b := node.AddPod(t, "b", ipB)
	c := node.AddPod(t, "c", ipC)
	dp := node.NewDatapath(t, datapath.Config{MaxEndpoints: 2})
	a.AddEndpoint(t, dp)

	mac := a.MAC
	for _, tc := range []struct {
		name string
		ep   datapath.Endpoint
		want string
		is   error
	}{
		{"unknown interface", datapath.Endpoint{IfName: "nosuchdev", IP: ipB, MAC: mac}, `"nosuchdev"`, nil},
		{"no interface", datapath.Endpoint{IP: ipB, MAC: mac}, "no host device name", nil},
		{"invalid address", datapath.Endpoint{IfName: b.HostIf, MAC: mac}, "no IP address", datapath.ErrInvalidEndpoint},
		{"IPv6 address as IP", datapath.Endpoint{IfName: b.HostIf, IP: netip.MustParseAddr("fd00::1"), MAC: mac}, "want IPv4 in IP", datapath.ErrInvalidEndpoint},
		{"IPv4 address as IPv6", datapath.Endpoint{IfName: b.HostIf, IP: ipB, IPv6: ipA, MAC: mac}, "want a global or unique-local IPv6", datapath.ErrInvalidEndpoint},
		{"link-local IPv6", datapath.Endpoint{IfName: b.HostIf, IP: ipB, IPv6: netip.MustParseAddr("fe80::1"), MAC: mac}, "want a global or unique-local IPv6", datapath.ErrInvalidEndpoint},
		{"second endpoint on a device", datapath.Endpoint{IfName: a.HostIf, IP: ipB, MAC: a.MAC}, "one endpoint per device", datapath.ErrEndpointExists},
		{"ID beyond MaxEndpoints", datapath.Endpoint{IfName: b.HostIf, IP: ipB, MAC: b.MAC, ID: 3}, "endpoint IDs run from 1 to 2 (MaxEndpoints)", datapath.ErrInvalidEndpoint},
		{"bad MAC", datapath.Endpoint{IfName: b.HostIf, IP: ipB, MAC: mac[:3]}, "want 6 bytes", datapath.ErrInvalidEndpoint},
		{"duplicate IP", datapath.Endpoint{IfName: b.HostIf, IP: ipA, MAC: mac}, "10.0.0.10", datapath.ErrEndpointExists},
		{"duplicate ID", datapath.Endpoint{IfName: b.HostIf, IP: ipB, MAC: b.MAC, ID: 1}, "ID 1", datapath.ErrEndpointExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dp.AddEndpoint(tc.ep)
			if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("AddEndpoint(%+v) = %v: want an error naming %s", tc.ep, err, tc.want)
			}
			assertEndpoints(t, dp, ipA)
		})
	}

	t.Run("endpoint map full", func(t *testing.T) {
		b.AddEndpoint(t, dp)
		_, err := dp.AddEndpoint(c.Endpoint())
		if !errors.Is(err, maps.ErrMapFull) {
			t.Fatalf("third endpoint on a map of 2: %v, want ErrMapFull", err)
		}
		assertEndpoints(t, dp, ipA, ipB)
		if links, _ := filepath.Glob(filepath.Join(pinPathOf(t, dp), "links", "*_"+strconv.Itoa(c.HostIfIndex)+"_*")); len(links) != 0 {
			t.Errorf("links left for the refused endpoint: %v", links)
		}
		if _, err := dp.EndpointStats(c.IP); !errors.Is(err, maps.ErrNotFound) {
			t.Errorf("counters left for the refused endpoint: %v", err)
		}
	})

	t.Run("unknown endpoint", func(t *testing.T) {
		if err := dp.RemoveEndpoint(netip.MustParseAddr("10.0.0.99")); !errors.Is(err, maps.ErrNotFound) {
			t.Fatalf("RemoveEndpoint(unknown) = %v: want ErrNotFound", err)
		}
	})

	t.Run("pin path not on bpffs", func(t *testing.T) {
		dir := t.TempDir()
		_, err := datapath.New(datapath.Config{Netns: node.Netns, PinPath: filepath.Join(dir, "hr")})
		if !errors.Is(err, loader.ErrNotBPFFS) {
			t.Fatalf("New on %s: %v, want ErrNotBPFFS", dir, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("New left %d entries in %s", len(entries), dir)
		}
	})

	t.Run("socket LB cgroup", func(t *testing.T) {
		for _, tc := range []struct{ path, want string }{
			{"sys/fs/cgroup", "must be an absolute path"},
			{t.TempDir(), "not a cgroup v2 directory"},
			{"/sys/fs/cgroup/hr-no-such-cgroup", "no such file or directory"},
		} {
			pin := datapathtest.PinPath(t)
			_, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, CgroupPath: tc.path})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
				t.Errorf("New with CgroupPath %q = %v: want an error naming it, saying %q", tc.path, err, tc.want)
			}
			if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("refused New left %s behind", pin)
			}
		}
	})

	t.Run("require BPF host routing", func(t *testing.T) {
		pin := datapathtest.PinPath(t)
		_, err := datapath.New(datapath.Config{PinPath: pin, RequireBPFHostRouting: true, Disable: loader.Disable{RedirectPeer: true}})
		if !errors.Is(err, datapath.ErrLegacyHostRouting) || !strings.Contains(err.Error(), "bpf_redirect_peer") {
			t.Fatalf("New = %v: want ErrLegacyHostRouting naming bpf_redirect_peer", err)
		}
		if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("refused New left %s behind", pin)
		}
	})
}

func TestRemoveEndpointLeavesNothing(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{})
	pin := pinPathOf(t, dp)
	if err := dp.RemoveEndpoint(b.IP); err != nil {
		t.Fatal(err)
	}
	assertEndpoints(t, dp, a.IP)
	if links, _ := filepath.Glob(filepath.Join(pin, "links", "*_"+strconv.Itoa(b.HostIfIndex)+"_*")); len(links) != 0 {
		t.Errorf("links left for removed endpoint: %v", links)
	}
	// Without the datapath the kernel routes again: through FORWARD.
	forwarded := node.CountForward(t)
	a.MustPing(t, b.IP)
	if forwarded() == 0 {
		t.Error("FORWARD saw nothing after RemoveEndpoint: is a program still attached?")
	}
	if _, err := dp.EndpointStats(b.IP); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("stats of removed endpoint: %v", err)
	}
}

func assertEndpoints(t *testing.T, dp *datapath.Datapath, want ...netip.Addr) {
	t.Helper()
	eps, err := dp.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Addr
	for _, ep := range eps {
		got = append(got, ep.IP)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("endpoints %v: want %v", got, want)
	}
}

func pinPathOf(t *testing.T, dp *datapath.Datapath) string {
	t.Helper()
	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	return st.PinPath
}
