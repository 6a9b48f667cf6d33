package datapathtest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hostrouting/hostrouting/routing"
)

// The wire's addressing, as on the docker network kind's nodes hang on.
var (
	wireSubnet  = netip.MustParsePrefix("172.18.0.0/16")
	wireGateway = netip.MustParseAddr("172.18.0.1")
)

// MaxClusterNodes is how many nodes a Cluster can have: node IPs run from
// 172.18.0.2 to 172.18.0.254.
const MaxClusterNodes = 253

// Cluster is a kind-like set of nodes on one layer-2 segment, the "wire":
// a namespace holding the bridge br0 (STP off, forward delay 0) with
// 172.18.0.1/16 on it, like the docker bridge's gateway. Node i is named
// as kind names them ("control-plane", "worker", "worker2", ...) and is a
// NewNode namespace whose Device "eth0" is a veth with its peer on br0,
// IP 172.18.0.(2+i)/16 on it and a default route via 172.18.0.1. Node i's
// pods take addresses from its PodCIDR 10.0.i.0/24 (see Node.PodIP and
// AddPod); routes between the nodes' pod CIDRs are left to the test, such as
// routing.UpsertNodeRoutes or a datapath.
//
// All addresses exist only inside the cluster's namespaces and the wire leads
// nowhere else. Everything is removed by t.Cleanup.
type Cluster struct {
	WireName string     // name of the wire namespace under /var/run/netns
	Wire     string     // its path
	Gateway  netip.Addr // 172.18.0.1, br0's address, every node's default gateway
	Nodes    []*Node
}

// ClusterOptions describe a Cluster for NewClusterWith.
type ClusterOptions struct {
	// Nodes is how many nodes, 1 to MaxClusterNodes.
	Nodes int
	// MTU of every node's eth0 and its bridge port; 0 means 1500. Pods keep
	// 1500, so a smaller MTU here makes the nodes send them ICMP
	// fragmentation-needed, as on a real network with a small MTU.
	MTU int
}

// NewCluster makes a cluster of n nodes with MTU 1500; see Cluster.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return NewClusterWith(t, ClusterOptions{Nodes: n})
}

// NewClusterWith makes a cluster as opts describe; see Cluster. It returns
// once every device is operationally up, so the first packets sent are not
// lost.
func NewClusterWith(t testing.TB, opts ClusterOptions) *Cluster {
	t.Helper()
	RequireRoot(t)
	if opts.Nodes < 1 || opts.Nodes > MaxClusterNodes {
		t.Fatalf("new cluster: %d nodes, want 1 to %d", opts.Nodes, MaxClusterNodes)
	}
	if opts.MTU == 0 {
		opts.MTU = 1500
	}
	c := &Cluster{Gateway: wireGateway}
	c.WireName, c.Wire = NewNetns(t, "wire")
	wire := openHandle(t, c.Wire)
	defer wire.Close()
	if err := runIP(c.WireName, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		t.Fatalf("new cluster: %v", err)
	}
	br, err := wire.LinkByName("br0")
	if err == nil {
		err = wire.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(c.Gateway, wireSubnet.Bits()))})
	}
	if err == nil {
		err = wire.LinkSetUp(br)
	}
	if err != nil {
		t.Fatalf("new cluster: set up br0: %v", err)
	}

	for i := range opts.Nodes {
		c.Nodes = append(c.Nodes, c.addNode(t, i, wire, br, opts.MTU))
	}
	for _, n := range c.Nodes {
		for _, end := range []struct{ netns, ifname string }{{n.Netns, n.Device}, {c.Wire, n.wirePort}} {
			if err := waitOperUp(end.netns, end.ifname); err != nil {
				t.Fatalf("new cluster: node %s: %v", n.Name, err)
			}
		}
	}
	if err := waitOperUp(c.Wire, "br0"); err != nil {
		t.Fatalf("new cluster: %v", err)
	}
	return c
}

// addNode makes node i and plugs its eth0 into br, which wire reaches.
func (c *Cluster) addNode(t testing.TB, i int, wire *netlink.Handle, br netlink.Link, mtu int) *Node {
	t.Helper()
	n := NewNode(t, kindNodeName(i))
	n.Device = "eth0"
	n.IP = c.NodeIP(i)
	n.PodCIDR = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24)
	n.wire = c.Wire
	n.wirePort = fmt.Sprintf("veth%d", i)
	fail := func(step string, err error) {
		t.Helper()
		t.Fatalf("new cluster: node %s: %s: %v", n.Name, step, err)
	}

	wireNs, err := netns.GetFromPath(c.Wire)
	if err != nil {
		fail("open wire netns", err)
	}
	defer wireNs.Close()
	h := openHandle(t, n.Netns)
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = n.Device
	attrs.MTU = mtu
	eth0 := &netlink.Veth{LinkAttrs: attrs, PeerName: n.wirePort, PeerNamespace: netlink.NsFd(wireNs)}
	if err := h.LinkAdd(eth0); err != nil {
		fail("create veth", err)
	}
	t.Cleanup(func() {
		if err := routing.DeleteVeth(n.Netns, n.Device); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	port, err := wire.LinkByName(n.wirePort)
	if err == nil {
		err = wire.LinkSetMaster(port, br)
	}
	if err == nil {
		err = wire.LinkSetUp(port)
	}
	if err != nil {
		fail("plug "+n.wirePort+" into br0", err)
	}

	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.IP, wireSubnet.Bits()))}); err != nil {
		fail("add address", err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		fail("set eth0 up", err)
	}
	def := &netlink.Route{LinkIndex: eth0.Index, Gw: c.Gateway.AsSlice()}
	if err := h.RouteAdd(def); err != nil {
		fail("add default route", err)
	}
	return n
}

// NodeIP returns node i's address on the wire, 172.18.0.(2+i).
func (c *Cluster) NodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 18, 0, byte(2 + i)})
}

// kindNodeName names node i as kind does: control-plane, worker, worker2...
func kindNodeName(i int) string {
	switch i {
	case 0:
		return "control-plane"
	case 1:
		return "worker"
	}
	return fmt.Sprintf("worker%d", i)
}

// PodIP returns the address host of the node's PodCIDR: 10.0.i.host on
// Cluster node i, such as PodIP(10) for AddPod.
func (n *Node) PodIP(host int) netip.Addr {
	a := n.PodCIDR.Addr().As4()
	a[3] = byte(host)
	return netip.AddrFrom4(a)
}

// SetDeviceMTU sets the MTU of the node's Device and of its bridge port on
// the wire, like changing a NIC and its switch port together. The bridge,
// like a switch, drops frames larger than the port they leave by, without
// ICMP; for path MTU tests give the whole cluster one MTU
// (ClusterOptions.MTU) or keep large packets flowing towards this node only.
func (n *Node) SetDeviceMTU(t testing.TB, mtu int) {
	t.Helper()
	if n.wirePort == "" {
		t.Fatalf("set device MTU: node %s is not in a Cluster", n.Name)
	}
	for _, end := range []struct{ netns, ifname string }{{n.Netns, n.Device}, {n.wire, n.wirePort}} {
		h := openHandle(t, end.netns)
		link, err := h.LinkByName(end.ifname)
		if err == nil {
			err = h.LinkSetMTU(link, mtu)
		}
		h.Close()
		if err != nil {
			t.Fatalf("node %s: set MTU %d on %s: %v", n.Name, mtu, end.ifname, err)
		}
	}
}

// openHandle returns a netlink handle in the namespace at path or fails the
// test.
func openHandle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	h, err := routing.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// runIP runs `ip -n nsName args...`, for what the netlink package cannot
// say (the bridge's STP state and forward delay).
func runIP(nsName string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append([]string{"-n", nsName}, args...)
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
