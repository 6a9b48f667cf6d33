package datapath_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

var nativeCIDR = netip.MustParsePrefix("10.0.0.0/8")

// crossNode is a cluster with host routing on every node, every node
// routed to every other, and a pod on each of the first two nodes.
type crossNode struct {
	cluster *datapathtest.Cluster
	dps     []*datapath.Datapath
	a, b    *datapathtest.Pod // on Nodes[0] and Nodes[1]
}

func newCrossNode(t *testing.T, opts datapathtest.ClusterOptions, cfg datapath.Config) *crossNode {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	c := &crossNode{cluster: datapathtest.NewClusterWith(t, opts)}
	for _, n := range c.cluster.Nodes {
		cfg := cfg
		cfg.Devices = []string{n.Device}
		cfg.NativeRoutingCIDR = nativeCIDR
		c.dps = append(c.dps, n.NewDatapath(t, cfg))
	}
	for i, dp := range c.dps {
		for j, other := range c.cluster.Nodes {
			if i == j {
				continue
			}
			if err := dp.UpsertNode(datapath.Node{Name: other.Name, IP: other.IP, PodCIDRs: []netip.Prefix{other.PodCIDR}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	n0, n1 := c.cluster.Nodes[0], c.cluster.Nodes[1]
	c.a = n0.AddPod(t, "a", n0.PodIP(10))
	c.b = n1.AddPod(t, "b", n1.PodIP(10))
	c.a.AddEndpoint(t, c.dps[0])
	c.b.AddEndpoint(t, c.dps[1])
	return c
}

func metric(t *testing.T, dp *datapath.Datapath, m maps.Metric) uint64 {
	t.Helper()
	all, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return all.Total(m).Packets
}

func TestCrossNodeBPFHostRouting(t *testing.T) {
	c := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, n1 := c.cluster.Nodes[0], c.cluster.Nodes[1]
	fwd0, fwd1 := n0.CountForward(t), n1.CountForward(t)

	st, err := c.dps[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.HostRouting != datapath.HostRoutingBPF || !strings.Contains(st.String(), "Devices:          [eth0 172.18.0.2 (Direct Routing)]") {
		t.Fatalf("status:\n%s", st)
	}
	c.a.MustPing(t, c.b.IP)
	c.b.MustPing(t, c.a.IP)
	txA, txB := txPackets(t, n0, c.a.HostIf), txPackets(t, n1, c.b.HostIf)
	peer0, peer1 := metric(t, c.dps[0], maps.MetricForwardPeer), metric(t, c.dps[1], maps.MetricForwardPeer)

	const pings = 20
	exchange(t, c.a, c.b, pings)

	if d := txPackets(t, n1, c.b.HostIf) - txB; d != 0 {
		t.Errorf("%s on %s transmitted %d packets: want 0, from-netdev delivers with bpf_redirect_peer", c.b.HostIf, n1.Name, d)
	}
	if d := txPackets(t, n0, c.a.HostIf) - txA; d != 0 {
		t.Errorf("%s on %s transmitted %d packets: want 0", c.a.HostIf, n0.Name, d)
	}
	if f0, f1 := fwd0(), fwd1(); f0 != 0 || f1 != 0 {
		t.Errorf("netfilter FORWARD saw %d packets on %s and %d on %s: want 0", f0, n0.Name, f1, n1.Name)
	}
	for i, dp := range c.dps[:2] {
		out := metric(t, dp, maps.MetricForwardFIB) + metric(t, dp, maps.MetricForwardNeigh)
		if out < 2*pings {
			t.Errorf("%s forwarded %d packets with bpf_fib_lookup: want at least %d", c.cluster.Nodes[i].Name, out, 2*pings)
		}
	}
	if d := metric(t, c.dps[1], maps.MetricForwardPeer) - peer1; d < 2*pings {
		t.Errorf("%s's from-netdev delivered %d packets with redirect_peer: want at least %d", n1.Name, d, 2*pings)
	}
	if d := metric(t, c.dps[0], maps.MetricForwardPeer) - peer0; d < 2*pings {
		t.Errorf("%s's from-netdev delivered %d packets with redirect_peer: want at least %d", n0.Name, d, 2*pings)
	}
}

func TestCrossNodeFirstPacketWithoutNeighbour(t *testing.T) {
	c := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, n1 := c.cluster.Nodes[0], c.cluster.Nodes[1]
	// Take the next hops' entries away on both sides, managed or not.
	n0.Exec(t, "ip", "neigh", "del", n1.IP.String(), "dev", n0.Device)
	n1.Exec(t, "ip", "neigh", "del", n0.IP.String(), "dev", n1.Device)
	neighBefore := metric(t, c.dps[0], maps.MetricForwardNeigh)

	if got, err := c.a.Ping(c.b.IP, 1, 2*time.Second); err != nil || got != 1 {
		t.Fatalf("first ping after the neighbour went away: %d replies, %v", got, err)
	}
	if metric(t, c.dps[0], maps.MetricForwardNeigh) == neighBefore {
		t.Error("the first packet did not take bpf_redirect_neigh")
	}
}

func TestCrossNodeHonoursIPRules(t *testing.T) {
	c := newCrossNode(t, datapathtest.ClusterOptions{Nodes: 3}, datapath.Config{})
	n0, n1, n2 := c.cluster.Nodes[0], c.cluster.Nodes[1], c.cluster.Nodes[2]
	// Pod a's traffic takes table 100, which sends it by the third node;
	// the main table's direct route would not.
	n0.Exec(t, "ip", "route", "add", n1.PodCIDR.String(), "via", n2.IP.String(), "dev", n0.Device, "table", "100")
	n0.Exec(t, "ip", "rule", "add", "from", c.a.IP.String(), "lookup", "100", "pref", "100")
	n2.Exec(t, "sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf."+n2.Device+".send_redirects=0")
	rx2 := func() uint64 {
		s, err := n2.LinkStats(n2.Device)
		if err != nil {
			t.Fatal(err)
		}
		return s.RxPackets
	}
	before := rx2()
	const pings = 10
	if got, err := c.a.Ping(c.b.IP, pings, 5*time.Second); err != nil || got != pings {
		t.Fatalf("ping by way of table 100: %d of %d replies, %v", got, pings, err)
	}
	if d := rx2() - before; d < pings {
		t.Errorf("%s received %d packets: want the %d echo requests table 100 sends by it", n2.Name, d, pings)
	}
}

func TestCrossNodePathMTU(t *testing.T) {
	c := newCrossNode(t, datapathtest.ClusterOptions{MTU: 1400}, datapath.Config{})
	// Pods have MTU 1500, the wire 1400: a full-size packet with DF set
	// must come back as ICMP fragmentation-needed, which only the stack
	// sends, and TCP must settle on the smaller MTU.
	if got, _ := c.a.PingWith(c.b.IP, datapathtest.PingOptions{Count: 1, Size: 1472}); got != 0 {
		t.Fatalf("a 1500-byte echo crossed a 1400-byte wire: %d replies", got)
	}
	route := "ip -n " + c.a.NetnsName + " route get " + c.b.IP.String()
	out := c.cluster.Nodes[0].Exec(t, "sh", "-c", route)
	if !strings.Contains(out, "mtu 1400") {
		t.Errorf("the pod did not learn the path MTU from ICMP: %s", out)
	}
	port := c.b.ServeTCPEcho(t)
	if err := c.a.TCPEcho(c.b.IP, port, make([]byte, 256<<10), 10*time.Second); err != nil {
		t.Fatalf("TCP over the smaller path MTU: %v", err)
	}
	if got, err := c.a.PingWith(c.b.IP, datapathtest.PingOptions{Count: 3, Size: 1372}); err != nil || got != 3 {
		t.Errorf("echoes that fit the path: %d of 3 replies, %v", got, err)
	}
}

func TestCrossNodeFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name      string
		disable   loader.Disable
		forwarded bool // through the stack, so FORWARD counts
	}{
		{"no redirect_neigh or redirect_peer", loader.Disable{RedirectNeigh: true, RedirectPeer: true}, false},
		{"no fib_lookup", loader.Disable{FIBLookup: true}, true},
		{"clsact", loader.Disable{TCX: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{Disable: tc.disable})
			fwd0 := c.cluster.Nodes[0].CountForward(t)
			exchange(t, c.a, c.b, 10)
			if got := fwd0(); (got != 0) != tc.forwarded {
				t.Errorf("FORWARD on %s counted %d packets: want through the stack %v", c.cluster.Nodes[0].Name, got, tc.forwarded)
			}
			st, err := c.dps[0].Status()
			if err != nil {
				t.Fatal(err)
			}
			wantMode := datapath.HostRoutingLegacy
			if tc.disable == (loader.Disable{TCX: true}) {
				wantMode = datapath.HostRoutingBPF
			}
			if st.HostRouting != wantMode {
				t.Errorf("status %s (%s): want %s", st.HostRouting, st.LegacyReason, wantMode)
			}
		})
	}
}

func TestNodes(t *testing.T) {
	c := datapathtest.NewCluster(t, 3)
	n0, n1, n2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	dp := n0.NewDatapath(t, datapath.Config{Devices: []string{n0.Device}, NativeRoutingCIDR: nativeCIDR})
	worker := datapath.Node{Name: n1.Name, IP: n1.IP, PodCIDRs: []netip.Prefix{n1.PodCIDR}}
	for range 2 {
		if err := dp.UpsertNode(worker); err != nil {
			t.Fatal(err)
		}
	}
	routes := n0.Exec(t, "ip", "route", "show", "proto", "200")
	if want := "10.0.1.0/24 via 172.18.0.3 dev eth0"; strings.Count(routes, want) != 1 {
		t.Errorf("routes after two upserts:\n%s\nwant one %q", routes, want)
	}
	nodes, err := dp.Nodes()
	if err != nil || len(nodes) != 1 || nodes[0].String() != "worker 172.18.0.3 10.0.1.0/24" {
		t.Errorf("Nodes() = %v, %v", nodes, err)
	}

	for _, tc := range []struct {
		name string
		node datapath.Node
		want string
	}{
		{"bad CIDR", datapath.Node{Name: n2.Name, IP: n2.IP, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.2.5/24")}}, "10.0.2.0/24"},
		{"IP off the device's subnet", datapath.Node{Name: n2.Name, IP: netip.MustParseAddr("10.9.9.9"), PodCIDRs: []netip.Prefix{n2.PodCIDR}}, "not on a subnet"},
		{"overlapping pod CIDR", datapath.Node{Name: n2.Name, IP: n2.IP, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, "overlaps"},
		{"IP of another node", datapath.Node{Name: "other", IP: n1.IP, PodCIDRs: []netip.Prefix{n2.PodCIDR}}, "belongs to node worker"},
		{"no name", datapath.Node{IP: n2.IP, PodCIDRs: []netip.Prefix{n2.PodCIDR}}, "no node name"},
		{"own IP", datapath.Node{Name: n2.Name, IP: n0.IP, PodCIDRs: []netip.Prefix{n2.PodCIDR}}, "this node's own address"},
		{"IPv6", datapath.Node{Name: n2.Name, IP: netip.MustParseAddr("fd00::3"), PodCIDRs: []netip.Prefix{n2.PodCIDR}}, "IPv4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := dp.UpsertNode(tc.node)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("UpsertNode(%v) = %v: want an error naming %q", tc.node, err, tc.want)
			}
			if after := n0.Exec(t, "ip", "route", "show", "proto", "200"); after != routes {
				t.Errorf("routes changed by a refused upsert:\n%s", after)
			}
		})
	}

	if err := dp.DeleteNode(worker.Name); err != nil {
		t.Fatal(err)
	}
	if routes := n0.Exec(t, "ip", "route", "show", "proto", "200"); routes != "" {
		t.Errorf("routes left after DeleteNode:\n%s", routes)
	}
	if err := dp.DeleteNode(worker.Name); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("second DeleteNode = %v, want ErrNotFound", err)
	}
	if nodes, _ := dp.Nodes(); len(nodes) != 0 {
		t.Errorf("nodes after delete: %v", nodes)
	}
}

// TestNodeMoves: a node that comes back under its name with another IP
// moves: its pod CIDR's route goes via the new IP at once (replaced in
// place, never missing), the registry has it once, and moving it back to
// its real address carries pod traffic again.
func TestNodeMoves(t *testing.T) {
	c := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0, n1 := c.cluster.Nodes[0], c.cluster.Nodes[1]
	dp := c.dps[0]
	elsewhere := netip.MustParseAddr("172.18.0.50")
	for _, ip := range []netip.Addr{elsewhere, n1.IP} {
		if err := dp.UpsertNode(datapath.Node{Name: n1.Name, IP: ip, PodCIDRs: []netip.Prefix{n1.PodCIDR}}); err != nil {
			t.Fatalf("move %s to %s: %v", n1.Name, ip, err)
		}
		if out := n0.Exec(t, "ip", "-4", "route", "show", n1.PodCIDR.String()); !strings.Contains(out, "via "+ip.String()+" ") {
			t.Errorf("after the move to %s, route %s", ip, out)
		}
		nodes, err := dp.Nodes()
		if err != nil || len(nodes) != 1 || nodes[0].IP != ip {
			t.Errorf("after the move to %s, nodes %v, %v", ip, nodes, err)
		}
	}
	c.a.MustPing(t, c.b.IP)
}
