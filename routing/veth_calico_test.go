package routing_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// calicoPod wires a pod to the node with SetupVeth and NoHostAddress, and
// wraps it (WrapPod: the test removes the veth, the fixture the netns).
func calicoPod(t *testing.T, node *datapathtest.Node, name, hostIf string, ip netip.Addr) *datapathtest.Pod {
	t.Helper()
	_, path := datapathtest.NewNetns(t, name)
	_, err := routing.SetupVeth(routing.VethConfig{HostNetns: node.Netns, HostIfName: hostIf, PodNetns: path,
		Addr: netip.PrefixFrom(ip, 32), NoHostAddress: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := routing.DeleteVeth(node.Netns, hostIf); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return node.WrapPod(t, name, path, "eth0", hostIf)
}

// gatewayNeighbor returns the pod's neighbour entry for the default
// gateway on eth0, if it has one.
func gatewayNeighbor(t *testing.T, p *datapathtest.Pod) (netlink.Neigh, bool) {
	t.Helper()
	h := handle(t, p.Netns)
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := h.NeighList(eth0.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if n.IP.Equal(routing.DefaultGateway.AsSlice()) {
			return n, true
		}
	}
	return netlink.Neigh{}, false
}

func arpReplies(t *testing.T, dp *datapath.Datapath) uint64 {
	t.Helper()
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m.Total(maps.MetricARPReply).Packets
}

// TestSetupVethNoHostAddress checks the Calico-style pair: no address on
// the host side, the pod's routes as by default. Two such pods on a
// node's datapath cannot reach each other without the ARP responder —
// nothing in the node owns 169.254.1.1, so the pods' ARP requests for
// their gateway go unanswered and every ping is lost, without an error —
// and talk once their endpoints have it.
func TestSetupVethNoHostAddress(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	a := calicoPod(t, node, "a", "calia", netip.MustParseAddr("10.0.0.1"))
	b := calicoPod(t, node, "b", "calib", netip.MustParseAddr("10.0.0.2"))

	// The node side has no IPv4 address; the pod side is as by default.
	nodeH, podH := handle(t, node.Netns), handle(t, a.Netns)
	host, err := nodeH.LinkByName("calia")
	if err != nil {
		t.Fatal(err)
	}
	if addrs, err := nodeH.AddrList(host, netlink.FAMILY_V4); err != nil || len(addrs) != 0 {
		t.Errorf("calia addresses = %v (%v), want none", addrs, err)
	}
	if rs, err := nodeH.RouteList(host, netlink.FAMILY_V4); err != nil || len(rs) != 1 ||
		rs[0].Dst.String() != "10.0.0.1/32" || rs[0].Scope != netlink.SCOPE_LINK {
		t.Errorf("node routes via calia = %v (%v), want 10.0.0.1/32 scope link", rs, err)
	}
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if addrs, err := podH.AddrList(eth0, netlink.FAMILY_V4); err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.0.1/32" {
		t.Errorf("pod addresses = %v (%v)", addrs, err)
	}
	rs, err := podH.RouteList(eth0, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]netlink.Scope{}
	for _, r := range rs {
		got[r.Dst.String()+" via "+r.Gw.String()] = r.Scope
	}
	if len(got) != 2 || got["169.254.1.1/32 via <nil>"] != netlink.SCOPE_LINK || got["0.0.0.0/0 via 169.254.1.1"] != netlink.SCOPE_UNIVERSE {
		t.Errorf("pod routes = %v", got)
	}

	dp := node.NewDatapath(t, datapath.Config{})

	// Without the ARP responder: 100% loss, and no error says why. The
	// pod's ARP for its gateway goes to the node's stack, which has no
	// 169.254.1.1 to answer for; the echo requests wait for a MAC that
	// never comes.
	// (datapathtest would ask for it: a wrapped pod whose host side has
	// no address gets Pod.ARPResponder, so the endpoints go without.)
	for _, p := range []*datapathtest.Pod{a, b} {
		ep := p.Endpoint()
		ep.ARPResponder = false
		if _, err := dp.AddEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := a.Ping(b.IP, 3, time.Second); err != nil || n != 0 {
		t.Errorf("ping without the ARP responder: %d of 3 replies (%v), want all lost", n, err)
	}
	if n, ok := gatewayNeighbor(t, a); ok && n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
		t.Errorf("pod a resolved its gateway without the ARP responder: %s state %#x", n.HardwareAddr, n.State)
	}
	if n := arpReplies(t, dp); n != 0 {
		t.Errorf("datapath answered %d ARP requests without the ARP responder", n)
	}

	// With it (an update of the endpoints), the datapath answers with the
	// host device's MAC and the pods talk.
	for _, p := range []*datapathtest.Pod{a, b} {
		ep := p.Endpoint()
		ep.ARPResponder = true
		if _, err := dp.AddEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range [][2]*datapathtest.Pod{{a, b}, {b, a}} {
		if n, err := p[0].Ping(p[1].IP, 3, 5*time.Second); err != nil || n != 3 {
			t.Errorf("ping %s → %s with the ARP responder: %d of 3 replies (%v)", p[0].Name, p[1].Name, n, err)
		}
	}
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
	if n, ok := gatewayNeighbor(t, a); !ok || net.HardwareAddr(n.HardwareAddr).String() != a.HostMAC.String() {
		t.Errorf("pod a's gateway neighbour %+v (found %v), want the MAC of %s, %s", n, ok, a.HostIf, a.HostMAC)
	}
	if n := arpReplies(t, dp); n < 2 {
		t.Errorf("datapath answered %d ARP requests, want at least one per pod", n)
	}
}
