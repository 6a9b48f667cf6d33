package routing_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// newNetns creates a uniquely named namespace that t.Cleanup deletes.
func newNetns(t *testing.T, name string) (nsName, path string) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	nsName = "hr-" + hex.EncodeToString(b) + "-" + name
	path, err := routing.CreateNetns(nsName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := routing.DeleteNetns(nsName); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return nsName, path
}

func handle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := routing.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// linkNames lists the devices in the namespace at path.
func linkNames(t *testing.T, path string) []string {
	t.Helper()
	links, err := handle(t, path).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

func TestCreateDeleteNetns(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	name, path := newNetns(t, "create")
	if path != filepath.Join(routing.NetnsDir, name) {
		t.Errorf("path = %q, want it under %s", path, routing.NetnsDir)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !before.Equal(after) {
		t.Fatal("CreateNetns moved the calling thread")
	}
	created, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer created.Close()
	if created.Equal(before) {
		t.Fatal("created netns is the caller's")
	}
	if got := linkNames(t, path); len(got) != 1 || got[0] != "lo" {
		t.Errorf("new netns has links %v, want only lo", got)
	}

	if _, err := routing.CreateNetns(name); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateNetns of a taken name: err = %v, want ErrExist", err)
	}
	for range 2 {
		if err := routing.DeleteNetns(name); err != nil {
			t.Fatalf("DeleteNetns: %v", err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netns file still there after delete: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "a/b"} {
		if _, err := routing.CreateNetns(bad); err == nil {
			t.Errorf("CreateNetns(%q) succeeded", bad)
		}
		if err := routing.DeleteNetns(bad); err == nil {
			t.Errorf("DeleteNetns(%q) succeeded", bad)
		}
	}
}

func TestEnableForwarding(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	read := func(key string) string {
		b, err := os.ReadFile("/proc/sys/net/ipv4/" + key)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	keys := []string{"ip_forward", "conf/all/rp_filter", "conf/default/rp_filter"}
	root := map[string]string{}
	for _, k := range keys {
		root[k] = read(k)
	}

	_, path := newNetns(t, "fwd")
	if err := routing.EnableForwarding(path); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ip_forward": "1", "conf/all/rp_filter": "0", "conf/default/rp_filter": "0"}
	err := routing.Do(path, func() error {
		for _, k := range keys {
			if got := read(k); got != want[k] {
				t.Errorf("in netns: %s = %s, want %s", k, got, want[k])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if got := read(k); got != root[k] {
			t.Errorf("caller's %s changed from %s to %s", k, root[k], got)
		}
	}
	if err := routing.EnableForwarding("/nonexistent/netns"); err == nil {
		t.Error("EnableForwarding of a missing netns succeeded")
	}
}

var (
	podAddr = netip.MustParsePrefix("10.1.0.5/32")
	gateway = routing.DefaultGateway
)

func TestSetupVeth(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	_, node := newNetns(t, "node")
	_, pod := newNetns(t, "pod")
	if err := routing.EnableForwarding(node); err != nil {
		t.Fatal(err)
	}
	v, err := routing.SetupVeth(routing.VethConfig{HostNetns: node, HostIfName: "lxctest0", PodNetns: pod, Addr: podAddr, MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	hostH, podH := handle(t, node), handle(t, pod)

	// Both ends: names, indexes, MACs, MTU, state.
	host, err := hostH.LinkByName("lxctest0")
	if err != nil {
		t.Fatal(err)
	}
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	lo, err := podH.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if v.HostIfName != "lxctest0" || v.PodIfName != "eth0" {
		t.Errorf("names = %q, %q", v.HostIfName, v.PodIfName)
	}
	for _, c := range []struct {
		link  netlink.Link
		index int
		mac   net.HardwareAddr
	}{{host, v.HostIfIndex, v.HostMAC}, {eth0, v.PodIfIndex, v.PodMAC}} {
		a := c.link.Attrs()
		if a.Index != c.index || a.HardwareAddr.String() != c.mac.String() || len(c.mac) != 6 {
			t.Errorf("%s: index %d MAC %s, Veth says %d %s", a.Name, a.Index, a.HardwareAddr, c.index, c.mac)
		}
		if a.MTU != 1400 || a.Flags&net.FlagUp == 0 {
			t.Errorf("%s: MTU %d flags %v, want 1400 and up", a.Name, a.MTU, a.Flags)
		}
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("pod lo is down")
	}

	// Addresses: the pod's on eth0, the gateway on the host device.
	checkAddr := func(h *netlink.Handle, link netlink.Link, want netip.Prefix) {
		t.Helper()
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != want.String() {
			t.Errorf("%s addresses = %v, want %s", link.Attrs().Name, addrs, want)
		}
	}
	checkAddr(podH, eth0, podAddr)
	checkAddr(hostH, host, netip.PrefixFrom(gateway, 32))

	// Routes: pod via the gateway; node to the pod by its device.
	type route struct {
		dst, gw string
		scope   netlink.Scope
	}
	routes := func(h *netlink.Handle, link netlink.Link) map[route]bool {
		t.Helper()
		rs, err := h.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		out := map[route]bool{}
		for _, r := range rs {
			out[route{r.Dst.String(), r.Gw.String(), r.Scope}] = true
		}
		return out
	}
	podRoutes := routes(podH, eth0)
	if len(podRoutes) != 2 ||
		!podRoutes[route{"169.254.1.1/32", "<nil>", netlink.SCOPE_LINK}] ||
		!podRoutes[route{"0.0.0.0/0", "169.254.1.1", netlink.SCOPE_UNIVERSE}] {
		t.Errorf("pod routes = %v", podRoutes)
	}
	hostRoutes := routes(hostH, host)
	if len(hostRoutes) != 1 || !hostRoutes[route{"10.1.0.5/32", "<nil>", netlink.SCOPE_LINK}] {
		t.Errorf("node routes = %v", hostRoutes)
	}

	// The pod reaches its gateway (ARP answered by the node) and the node
	// reaches the pod by the endpoint route.
	connect(t, pod, node, netip.AddrPortFrom(gateway, 0))
	connect(t, node, pod, netip.AddrPortFrom(podAddr.Addr(), 0))

	for range 2 {
		if err := routing.DeleteVeth(node, "lxctest0"); err != nil {
			t.Fatal(err)
		}
	}
	if got := linkNames(t, node); len(got) != 1 {
		t.Errorf("node links after DeleteVeth: %v", got)
	}
	if got := linkNames(t, pod); len(got) != 1 {
		t.Errorf("pod links after DeleteVeth: %v", got)
	}
}

// connect opens a TCP connection from the namespace at from to a listener in
// the namespace at to, bound to the address of at.
func connect(t *testing.T, from, to string, at netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	err := routing.Do(to, func() (err error) {
		ln, err = net.Listen("tcp4", at.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var c net.Conn
	err = routing.Do(from, func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", ln.Addr(), err)
	}
	c.Close()
}

func TestSetupVethInvalid(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	_, node := newNetns(t, "node")
	_, pod := newNetns(t, "pod")
	valid := routing.VethConfig{HostNetns: node, HostIfName: "lxcbad", PodNetns: pod, Addr: podAddr}
	for _, c := range []struct {
		name   string
		modify func(*routing.VethConfig)
		want   string
	}{
		{"no host name", func(c *routing.VethConfig) { c.HostIfName = "" }, "host interface name: empty"},
		{"long host name", func(c *routing.VethConfig) { c.HostIfName = "lxc0123456789abc" }, "longer than 15"},
		{"bad host name", func(c *routing.VethConfig) { c.HostIfName = "lxc/1" }, "not a valid interface name"},
		{"bad pod name", func(c *routing.VethConfig) { c.PodIfName = "eth 0" }, "pod interface name"},
		{"no pod netns", func(c *routing.VethConfig) { c.PodNetns = "" }, "pod netns path is required"},
		{"missing pod netns", func(c *routing.VethConfig) { c.PodNetns = "/var/run/netns/hr-missing" }, "no such file"},
		{"missing host netns", func(c *routing.VethConfig) { c.HostNetns = "/var/run/netns/hr-missing" }, "no such file"},
		{"no address", func(c *routing.VethConfig) { c.Addr = netip.Prefix{} }, "not a valid prefix"},
		{"IPv6", func(c *routing.VethConfig) { c.Addr = netip.MustParsePrefix("fd00::5/128") }, "IPv6 is not supported yet"},
		{"multicast", func(c *routing.VethConfig) { c.Addr = netip.MustParsePrefix("224.0.0.5/32") }, "not a unicast address"},
		{"address is gateway", func(c *routing.VethConfig) { c.Addr = netip.PrefixFrom(gateway, 32) }, "is the gateway"},
		{"IPv6 gateway", func(c *routing.VethConfig) { c.Gateway = netip.MustParseAddr("fe80::1") }, "only IPv4"},
		{"MTU", func(c *routing.VethConfig) { c.MTU = 10 }, "MTU 10 out of range"},
	} {
		cfg := valid
		c.modify(&cfg)
		_, err := routing.SetupVeth(cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", c.name, err, c.want)
		}
	}
	if got := linkNames(t, node); len(got) != 1 {
		t.Errorf("node links after failed setups: %v", got)
	}
}

func TestSetupVethLeavesNothingOnFailure(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	_, node := newNetns(t, "node")
	_, pod := newNetns(t, "pod")
	podH := handle(t, pod)
	cfg := routing.VethConfig{HostNetns: node, HostIfName: "lxcfail", PodNetns: pod, Addr: podAddr}

	// A default route already in the pod makes the last pod step fail.
	// (The kernel here has no dummy driver; a veth pair serves.)
	other := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other1"}
	if err := podH.LinkAdd(other); err != nil {
		t.Fatal(err)
	}
	if err := podH.LinkSetUp(other); err != nil {
		t.Fatal(err)
	}
	if err := podH.RouteAdd(&netlink.Route{LinkIndex: other.Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		t.Fatal(err)
	}
	_, err := routing.SetupVeth(cfg)
	if !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "default route") {
		t.Errorf("err = %v, want EEXIST adding the default route", err)
	}
	if got := linkNames(t, node); len(got) != 1 {
		t.Errorf("node links after failed setup: %v", got)
	}
	if got := linkNames(t, pod); len(got) != 3 {
		t.Errorf("pod links after failed setup: %v, want lo and the other pair", got)
	}

	// A taken name fails before anything is made, and the owner keeps it.
	peer, err := podH.LinkByName("other1")
	if err != nil {
		t.Fatal(err)
	}
	if err := podH.LinkSetName(peer, "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := routing.SetupVeth(cfg); !errors.Is(err, unix.EEXIST) {
		t.Errorf("pod name taken: err = %v, want EEXIST", err)
	}
	if got := linkNames(t, node); len(got) != 1 {
		t.Errorf("node links after failed setup: %v", got)
	}
	if _, err := podH.LinkByName("eth0"); err != nil {
		t.Errorf("existing eth0 gone: %v", err)
	}
}

func TestEndpointRoute(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	_, node := newNetns(t, "node")
	h := handle(t, node)
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lxcroute"}, PeerName: "peer"}
	if err := h.LinkAdd(link); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("10.1.0.7")
	count := func() int {
		t.Helper()
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}, netlink.RT_FILTER_DST)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.LinkIndex != link.Index || r.Scope != netlink.SCOPE_LINK {
				t.Errorf("route %v, want dev %s scope link", r, link.Name)
			}
		}
		return len(rs)
	}
	for range 2 {
		if err := routing.AddEndpointRoute(node, "lxcroute", addr); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(); n != 1 {
		t.Errorf("%d routes after adding twice, want 1", n)
	}
	for range 2 {
		if err := routing.DelEndpointRoute(node, "lxcroute", addr); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(); n != 0 {
		t.Errorf("%d routes after deleting, want 0", n)
	}
	if err := routing.DelEndpointRoute(node, "missing", addr); err != nil {
		t.Errorf("delete with missing device: %v", err)
	}
	if err := routing.AddEndpointRoute(node, "missing", addr); err == nil {
		t.Error("add with missing device succeeded")
	}
	if err := routing.AddEndpointRoute(node, "lxcroute", netip.MustParseAddr("fd00::7")); err == nil {
		t.Error("add of an IPv6 address succeeded")
	}
}
