package routing_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}

// managedNeighbor returns the managed neighbour entry for ip on the node's
// device, if there is one.
func managedNeighbor(t *testing.T, n *datapathtest.Node, ip netip.Addr) (netlink.Neigh, bool) {
	t.Helper()
	h := handle(t, n.Netns)
	link, err := h.LinkByName(n.Device)
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, nb := range neighs {
		if nb.IP.Equal(ip.AsSlice()) && nb.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
			return nb, true
		}
	}
	return netlink.Neigh{}, false
}

func TestNodeRoutes(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	c := datapathtest.NewCluster(t, 3)
	n, w1, w2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	listed := func() map[netip.Addr][]netip.Prefix {
		t.Helper()
		got, err := routing.NodeRoutes(n.Netns)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	// Upsert twice: one route per CIDR, ours, via the node on eth0.
	cidrs := prefixes("10.0.1.0/24", "10.1.1.0/24")
	for range 2 {
		if err := routing.UpsertNodeRoutes(n.Netns, n.Device, w1.IP, cidrs); err != nil {
			t.Fatal(err)
		}
	}
	if err := routing.UpsertNodeRoutes(n.Netns, n.Device, w2.IP, prefixes("10.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr][]netip.Prefix{w1.IP: cidrs, w2.IP: prefixes("10.0.2.0/24")}
	if got := listed(); !reflect.DeepEqual(got, want) {
		t.Errorf("NodeRoutes = %v, want %v", got, want)
	}
	out := n.Exec(t, "ip", "route", "show", "proto", fmt.Sprint(routing.RouteProtocol))
	for _, line := range []string{
		"10.0.1.0/24 via 172.18.0.3 dev eth0",
		"10.1.1.0/24 via 172.18.0.3 dev eth0",
		"10.0.2.0/24 via 172.18.0.4 dev eth0",
	} {
		if strings.Count(out, line) != 1 {
			t.Errorf("ip route show proto %d: want %q once in\n%s", routing.RouteProtocol, line, out)
		}
	}
	if got := strings.Count(out, "\n"); got != 3 {
		t.Errorf("%d routes of ours, want 3:\n%s", got, out)
	}

	// The next hop's managed entry is resolved by the kernel on its own:
	// nothing has been sent to worker's address yet.
	var nb netlink.Neigh
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var ok bool
		if nb, ok = managedNeighbor(t, n, w1.IP); !ok {
			t.Fatalf("no managed neighbour for %s", w1.IP)
		}
		if nb.State&netlink.NUD_REACHABLE != 0 || time.Now().After(deadline) {
			break
		}
	}
	out = n.Exec(t, "ip", "neigh", "show", w1.IP.String(), "dev", "eth0")
	t.Logf("ip neigh show %s: %s", w1.IP, strings.TrimSpace(out))
	if nb.State&netlink.NUD_REACHABLE == 0 || !strings.Contains(out, "managed") || !strings.Contains(out, "extern_learn") {
		t.Errorf("neighbour of %s: state %#x, want REACHABLE; ip neigh: %s", w1.IP, nb.State, out)
	}
	eth0, err := handle(t, w1.Netns).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if nb.HardwareAddr.String() != eth0.Attrs().HardwareAddr.String() {
		t.Errorf("neighbour of %s has MAC %s, want worker's eth0 %s", w1.IP, nb.HardwareAddr, eth0.Attrs().HardwareAddr)
	}

	// Shrink: the CIDR no longer listed goes, the other next hop stays.
	if err := routing.UpsertNodeRoutes(n.Netns, n.Device, w1.IP, cidrs[:1]); err != nil {
		t.Fatal(err)
	}
	want[w1.IP] = cidrs[:1]
	if got := listed(); !reflect.DeepEqual(got, want) {
		t.Errorf("after shrinking: NodeRoutes = %v, want %v", got, want)
	}

	// Delete: routes and managed neighbour go; twice is fine.
	for range 2 {
		if err := routing.DeleteNodeRoutes(n.Netns, n.Device, w1.IP); err != nil {
			t.Fatal(err)
		}
	}
	delete(want, w1.IP)
	if got := listed(); !reflect.DeepEqual(got, want) {
		t.Errorf("after delete: NodeRoutes = %v, want %v", got, want)
	}
	if _, ok := managedNeighbor(t, n, w1.IP); ok {
		t.Errorf("managed neighbour of %s left after delete", w1.IP)
	}
	if _, ok := managedNeighbor(t, n, w2.IP); !ok {
		t.Errorf("managed neighbour of %s gone with %s's", w2.IP, w1.IP)
	}
	if err := routing.DeleteNodeRoutes(n.Netns, "missing0", w1.IP); err != nil {
		t.Errorf("delete on a missing device: %v", err)
	}

	// An empty list removes all routes via the node.
	if err := routing.UpsertNodeRoutes(n.Netns, n.Device, w2.IP, nil); err != nil {
		t.Fatal(err)
	}
	if got := listed(); len(got) != 0 {
		t.Errorf("after upserting no CIDRs: NodeRoutes = %v", got)
	}
}

// snapshot is what bad input must leave alone: all routes, and the
// neighbour entries (without their changing states).
func snapshot(t *testing.T, n *datapathtest.Node) string {
	t.Helper()
	routes := n.Exec(t, "ip", "route", "show", "table", "all")
	var neighs []string
	for _, line := range strings.Split(n.Exec(t, "ip", "neigh", "show"), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			neighs = append(neighs, f[0]+" "+strings.Join(slices.DeleteFunc(f[1:], isNUDState), " "))
		}
	}
	return routes + strings.Join(neighs, "\n")
}

func isNUDState(s string) bool {
	return slices.Contains([]string{"REACHABLE", "STALE", "DELAY", "PROBE", "INCOMPLETE", "FAILED", "NONE"}, s)
}

func TestNodeRoutesBadInput(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	c := datapathtest.NewCluster(t, 3)
	n, w1, w2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	// worker2 owns 10.0.2.0/24; someone else routes 10.0.7.0/24.
	if err := routing.UpsertNodeRoutes(n.Netns, n.Device, w2.IP, prefixes("10.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	n.Exec(t, "ip", "route", "add", "10.0.7.0/24", "via", w1.IP.String(), "proto", "static")
	before := snapshot(t, n)

	for _, c := range []struct {
		name   string
		device string
		ip     string
		cidrs  []netip.Prefix
		want   string
	}{
		{"IPv6 node", "eth0", "fd00::3", prefixes("10.0.1.0/24"), "node IP fd00::3: IPv6 is not supported yet"},
		{"IPv6 CIDR", "eth0", "172.18.0.3", prefixes("fd00:1::/64"), "pod CIDR fd00:1::/64: IPv6 is not supported yet"},
		{"no node IP", "eth0", "", prefixes("10.0.1.0/24"), "not a valid address"},
		{"multicast node", "eth0", "224.0.0.5", prefixes("10.0.1.0/24"), "224.0.0.5 is not a unicast address"},
		{"unmasked", "eth0", "172.18.0.3", prefixes("10.0.1.5/24"), "10.0.1.5/24 has host bits set (did you mean 10.0.1.0/24?)"},
		{"invalid CIDR", "eth0", "172.18.0.3", []netip.Prefix{{}}, "not a valid prefix"},
		{"default", "eth0", "172.18.0.3", prefixes("0.0.0.0/0"), "would be the default route"},
		{"overlap in list", "eth0", "172.18.0.3", prefixes("10.0.1.0/24", "10.0.1.128/25"), "pod CIDRs 10.0.1.0/24 and 10.0.1.128/25 overlap"},
		{"missing device", "missing0", "172.18.0.3", prefixes("10.0.1.0/24"), `dev "missing0": Link not found`},
		{"off subnet", "eth0", "10.9.9.9", prefixes("10.0.1.0/24"), "node IP 10.9.9.9 is not on a subnet of eth0 (172.18.0.2/16)"},
		{"own address", "eth0", "172.18.0.2", prefixes("10.0.1.0/24"), "node IP 172.18.0.2 is an address of eth0 itself"},
		{"broadcast", "eth0", "172.18.255.255", prefixes("10.0.1.0/24"), "broadcast address of 172.18.0.2/16"},
		{"wire subnet", "eth0", "172.18.0.3", prefixes("172.18.5.0/24"), "pod CIDR 172.18.5.0/24 overlaps the subnet of eth0 (172.18.0.2/16)"},
		{"other node's CIDR", "eth0", "172.18.0.3", prefixes("10.0.1.0/24", "10.0.2.0/23"), "pod CIDR 10.0.2.0/23 overlaps 10.0.2.0/24, routed via node 172.18.0.4"},
		{"foreign route", "eth0", "172.18.0.3", prefixes("10.0.7.0/24"), "a route to it exists already (via 172.18.0.3 proto static), not made by hostrouting"},
	} {
		var ip netip.Addr
		if c.ip != "" {
			ip = netip.MustParseAddr(c.ip)
		}
		err := routing.UpsertNodeRoutes(n.Netns, c.device, ip, c.cidrs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to say %q", c.name, err, c.want)
			continue
		}
		t.Logf("%s: %v", c.name, err)
		if after := snapshot(t, n); after != before {
			t.Errorf("%s changed the node:\nbefore:\n%s\nafter:\n%s", c.name, before, after)
		}
	}
	if err := routing.DeleteNodeRoutes(n.Netns, "eth0", netip.MustParseAddr("fd00::3")); err == nil {
		t.Error("DeleteNodeRoutes of an IPv6 node succeeded")
	}
}
