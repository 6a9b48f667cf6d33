package datapathtest

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/routing"
)

// MaxClusterNodes is how many nodes a Cluster can have: node IPs run from
// 172.18.0.2 to 172.18.0.254.
const MaxClusterNodes = topology.MaxNodes

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
	ctx := context.Background()
	w, err := topology.NewWire(ctx, topology.Options{Prefix: prefixed(t, "NetnsPrefix", NetnsPrefix, 4), MTU: opts.MTU})
	if err != nil {
		t.Fatalf("new cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	c := &Cluster{WireName: w.NetnsName, Wire: w.Netns, Gateway: topology.Gateway.Addr()}
	for i := range opts.Nodes {
		n, err := w.AddNode(ctx, topology.NodeOptions{Name: kindNodeName(i), Port: fmt.Sprintf("veth%d", i), IP: c.NodeIP(i)})
		if err != nil {
			t.Fatalf("new cluster: %v", err)
		}
		c.Nodes = append(c.Nodes, &Node{
			Name: n.Name, NetnsName: n.NetnsName, Netns: n.Netns,
			Device: n.Device, IP: n.IP, PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24),
			wire: w.Netns, wirePort: n.Port,
		})
	}
	if err := w.WaitUp(ctx); err != nil {
		t.Fatalf("new cluster: %v", err)
	}
	return c
}

// NodeIP returns node i's address on the wire, 172.18.0.(2+i).
func (c *Cluster) NodeIP(i int) netip.Addr {
	return topology.NodeIP(i)
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
		h, err := routing.Handle(end.netns)
		if err != nil {
			t.Fatal(err)
		}
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
