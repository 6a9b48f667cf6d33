package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// TestCrossNode runs the plugin on both nodes of a kind-like cluster, with
// device eth0 and nativeRoutingCIDR 10.0.0.0/8, and gives each node the
// other's route as a node agent would. Pods on the two nodes then talk by
// BPF host routing end to end: neither node's netfilter FORWARD chain sees
// a packet, and the destination pod's host veth transmits nothing
// (from-netdev delivers with bpf_redirect_peer).
func TestCrossNode(t *testing.T) {
	t.Run("tcx", func(t *testing.T) { testCrossNode(t, nil) })
	t.Run("clsact", func(t *testing.T) { testCrossNode(t, map[string]any{"disable": map[string]any{"tcx": true}}) })
}

func testCrossNode(t *testing.T, extra map[string]any) {
	requireCNI(t)
	c := datapathtest.NewCluster(t, 2)
	hr := map[string]any{"device": "eth0", "nativeRoutingCIDR": "10.0.0.0/8"}
	for k, v := range extra {
		hr[k] = v
	}
	var nodes [2]*testNode
	var fwd [2]func() uint64
	for i, cn := range c.Nodes {
		nodes[i] = newTestNodeOn(t, cn, cn.PodCIDR, hr)
		fwd[i] = cn.CountForward(t)
	}
	// Node 0 gets two pods: the second ADD adopts the node's datapath,
	// device programs included.
	a, b, a2 := nodes[0].mustAdd(t, "a"), nodes[1].mustAdd(t, "b"), nodes[0].mustAdd(t, "a2")
	for _, x := range []struct {
		n *testNode
		p *datapathtest.Pod
	}{{nodes[0], a}, {nodes[1], b}, {nodes[0], a2}} {
		if !x.n.PodCIDR.Contains(x.p.IP) {
			t.Fatalf("pod %s got %s, not from node %s's %s", x.p.Name, x.p.IP, x.n.Name, x.n.PodCIDR)
		}
		if err := x.n.check(x.p); err != nil {
			t.Errorf("CHECK %s: %v", x.p.Name, err)
		}
	}

	// What a node agent does: each node gets routes to the other's pods.
	var dps [2]*datapath.Datapath
	for i, n := range nodes {
		dp, err := datapath.Open(datapath.Location{PinPath: n.pinPath, Netns: n.Netns})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		dps[i] = dp
		other := c.Nodes[1-i]
		if err := dp.UpsertNode(datapath.Node{Name: other.Name, IP: other.IP, PodCIDRs: []netip.Prefix{other.PodCIDR}}); err != nil {
			t.Fatal(err)
		}
		s, err := dp.Status()
		if err != nil {
			t.Fatal(err)
		}
		if s.HostRouting != datapath.HostRoutingBPF || len(s.Devices) != 1 || s.Devices[0] != (datapath.Device{Name: "eth0", IP: n.IP}) ||
			s.NativeRoutingCIDR != netip.MustParsePrefix("10.0.0.0/8") || s.Endpoints != 2-i {
			t.Errorf("node %s status:\n%s", n.Name, s)
		}
	}
	fib := func(i int) uint64 {
		t.Helper()
		m, err := dps[i].Metrics()
		if err != nil {
			t.Fatal(err)
		}
		return m.Total(maps.MetricForwardFIB).Packets + m.Total(maps.MetricForwardNeigh).Packets
	}

	// Let the pods resolve their gateways: ARP replies are all their host
	// veths may transmit.
	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	a2.MustPing(t, a.IP)
	txA, txB := nodes[0].txPackets(t, a), nodes[1].txPackets(t, b)
	fib0, fib1 := fib(0), fib(1)

	const pings = 10
	for _, p := range [][2]*datapathtest.Pod{{a, b}, {b, a}, {a2, b}} {
		if got, err := p[0].Ping(p[1].IP, pings, 5*time.Second); err != nil || got != pings {
			t.Fatalf("ping %s (%s) → %s (%s): %d of %d replies, err %v", p[0].Name, p[0].IP, p[1].Name, p[1].IP, got, pings, err)
		}
		p[0].MustTCPEcho(t, p[1].IP, p[1].ServeTCPEcho(t))
		p[0].MustUDPEcho(t, p[1].IP, p[1].ServeUDPEcho(t))
	}
	if d := nodes[1].txPackets(t, b) - txB; d != 0 {
		t.Errorf("%s (b's host veth on %s) transmitted %d packets: want 0, from-netdev delivers past it", b.HostIf, nodes[1].Name, d)
	}
	if d := nodes[0].txPackets(t, a) - txA; d != 0 {
		t.Errorf("%s (a's host veth on %s) transmitted %d packets: want 0", a.HostIf, nodes[0].Name, d)
	}
	for i, n := range nodes {
		if got := fwd[i](); got != 0 {
			t.Errorf("node %s: netfilter FORWARD saw %d packets, want 0 (BPF host routing)", n.Name, got)
		}
	}
	if d := fib(0) - fib0; d < 2*pings {
		t.Errorf("node %s: forward-fib + forward-neigh moved by %d, want at least %d", nodes[0].Name, d, 2*pings)
	}
	if d := fib(1) - fib1; d < 2*pings {
		t.Errorf("node %s: forward-fib + forward-neigh moved by %d, want at least %d", nodes[1].Name, d, 2*pings)
	}

	// CHECK sees a device program missing.
	node := nodes[0].open(t)
	if err := node.Detach(nodes[0].Netns, deviceIndex(t, nodes[0]), loader.FromNetdev); err != nil {
		t.Fatal(err)
	}
	if err := nodes[0].check(a); err == nil || !strings.Contains(err.Error(), "hostrouting: from-netdev is not attached to eth0") {
		t.Errorf("CHECK %s without from-netdev on eth0: %v, want an error naming it", a.Name, err)
	}
	// A later ADD puts it back.
	a3 := nodes[0].mustAdd(t, "a3")
	for _, p := range []*datapathtest.Pod{a, a3} {
		if err := nodes[0].check(p); err != nil {
			t.Errorf("CHECK %s after another ADD: %v", p.Name, err)
		}
	}
	b.MustPing(t, a3.IP)

	// DEL on both nodes leaves the device programs and the other pods.
	for _, x := range []struct {
		n *testNode
		p *datapathtest.Pod
	}{{nodes[0], a}, {nodes[1], b}} {
		if err := x.n.del(x.p); err != nil {
			t.Fatalf("DEL %s: %v", x.p.Name, err)
		}
		x.n.checkGone(t, x.n.open(t), x.p)
	}
	if err := nodes[0].check(a2); err != nil {
		t.Errorf("CHECK %s after DEL of %s: %v", a2.Name, a.Name, err)
	}
	a2.MustPing(t, a3.IP)
}

// deviceIndex returns the ifindex of the node's eth0.
func deviceIndex(t *testing.T, n *testNode) int {
	t.Helper()
	h, err := routing.Handle(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 on %s: %v", n.Name, err)
	}
	return l.Attrs().Index
}

// TestServiceKeysReachNode checks that masquerade and cgroupPath reach
// the datapath the first ADD loads: its status says so.
func TestServiceKeysReachNode(t *testing.T) {
	for _, tc := range []struct {
		name       string
		masquerade *bool
		cgroup     bool
		wantSocket string
	}{
		{name: "defaults", wantSocket: "Disabled"},
		{name: "masquerade off, socket LB", masquerade: new(bool), cgroup: true, wantSocket: "Enabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requireCNI(t)
			c := datapathtest.NewCluster(t, 1)
			hr := map[string]any{"device": "eth0", "nativeRoutingCIDR": "10.0.0.0/8"}
			if tc.masquerade != nil {
				hr["masquerade"] = *tc.masquerade
			}
			if tc.cgroup {
				hr["cgroupPath"] = datapathtest.NewCgroup(t)
			}
			n := newTestNodeOn(t, c.Nodes[0], c.Nodes[0].PodCIDR, hr)
			n.mustAdd(t, "a")
			dp, err := datapath.Open(datapath.Location{PinPath: n.pinPath, Netns: n.Netns})
			if err != nil {
				t.Fatal(err)
			}
			defer dp.Close()
			s, err := dp.Status()
			if err != nil {
				t.Fatal(err)
			}
			if s.Masquerading != (tc.masquerade == nil) || s.SocketLB != tc.wantSocket {
				t.Errorf("Masquerading %v, Socket LB %q; want %v, %q:\n%s", s.Masquerading, s.SocketLB, tc.masquerade == nil, tc.wantSocket, s)
			}
		})
	}
}
