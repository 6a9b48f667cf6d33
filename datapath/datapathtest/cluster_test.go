package datapathtest_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// TestCluster checks the multi-node fixture with the kernel alone: the nodes
// reach each other over the wire, and with direct node routes pods on two
// nodes talk through both nodes' forwarding.
func TestCluster(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	var names []string
	checkRemoved(t, &names)

	c := datapathtest.NewCluster(t, 3)
	names = append(names, c.WireName)
	if !strings.HasPrefix(c.WireName, "hr-") || !strings.HasSuffix(c.WireName, "-wire") {
		t.Errorf("wire netns name %q", c.WireName)
	}
	if len(c.Nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(c.Nodes))
	}
	for i, want := range []struct{ name, ip, cidr string }{
		{"control-plane", "172.18.0.2", "10.0.0.0/24"},
		{"worker", "172.18.0.3", "10.0.1.0/24"},
		{"worker2", "172.18.0.4", "10.0.2.0/24"},
	} {
		n := c.Nodes[i]
		names = append(names, n.NetnsName)
		if n.Name != want.name || n.IP.String() != want.ip || n.PodCIDR.String() != want.cidr ||
			n.Device != "eth0" || c.NodeIP(i) != n.IP || !strings.HasSuffix(n.NetnsName, "-"+want.name) {
			t.Errorf("node %d: %+v", i, n)
		}
		if out := n.Exec(t, "ip", "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, " "+want.ip+"/16 ") {
			t.Errorf("node %s eth0 addresses: %s", n.Name, out)
		}
		if out := n.Exec(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1500 ") || !strings.Contains(out, "state UP") {
			t.Errorf("node %s eth0: %s", n.Name, out)
		}
		if out := n.Exec(t, "ip", "route", "show", "default"); !strings.Contains(out, "default via 172.18.0.1 dev eth0") {
			t.Errorf("node %s default route: %q", n.Name, out)
		}
	}
	if got := c.Nodes[2].PodIP(10); got != netip.MustParseAddr("10.0.2.10") {
		t.Errorf("PodIP(10) of node 2 = %s", got)
	}

	// Node to node and to the bridge's gateway, over the wire.
	cp, w1, w2 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	cp.MustPing(t, w1.IP)
	cp.MustPing(t, w2.IP)
	w2.MustPing(t, w1.IP)
	w1.MustPing(t, c.Gateway)

	// Direct node routes: pods on control-plane and worker talk across.
	if err := routing.UpsertNodeRoutes(cp.Netns, cp.Device, w1.IP, []netip.Prefix{w1.PodCIDR}); err != nil {
		t.Fatal(err)
	}
	if err := routing.UpsertNodeRoutes(w1.Netns, w1.Device, cp.IP, []netip.Prefix{cp.PodCIDR}); err != nil {
		t.Fatal(err)
	}
	a := cp.AddPod(t, "a", cp.PodIP(10))
	b := w1.AddPod(t, "b", w1.PodIP(10))
	names = append(names, a.NetnsName, b.NetnsName)
	fwdCP, fwdW1 := cp.CountForward(t), w1.CountForward(t)
	cp0, w10 := fwdCP(), fwdW1()

	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
	b.MustTCPEcho(t, a.IP, a.ServeTCPEcho(t))
	a.MustUDPEcho(t, b.IP, b.ServeUDPEcho(t))
	b.MustUDPEcho(t, a.IP, a.ServeUDPEcho(t))

	// 12 ICMP packets, two TCP handshakes, two datagrams, each way.
	for _, n := range []struct {
		name  string
		moved uint64
	}{{cp.Name, fwdCP() - cp0}, {w1.Name, fwdW1() - w10}} {
		if n.moved < 12+3+2 {
			t.Errorf("node %s: FORWARD counter moved by %d, want the pods' traffic", n.name, n.moved)
		}
	}
	// The third node is not on the path.
	if got, err := a.Ping(w2.PodIP(10), 1, 300*time.Millisecond); err != nil || got != 0 {
		t.Errorf("ping of a pod address on %s with no route: %d replies, %v", w2.Name, got, err)
	}
}

// TestClusterMTU checks a cluster whose wire has a smaller MTU than the
// pods: the nodes answer too large packets with ICMP fragmentation-needed,
// so TCP with DF (path MTU discovery) still gets its data across.
func TestClusterMTU(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	c := datapathtest.NewClusterWith(t, datapathtest.ClusterOptions{Nodes: 2, MTU: 1400})
	n0, n1 := c.Nodes[0], c.Nodes[1]
	for _, n := range c.Nodes {
		if out := n.Exec(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400 ") {
			t.Errorf("node %s: %s", n.Name, out)
		}
	}
	if err := routing.UpsertNodeRoutes(n0.Netns, n0.Device, n1.IP, []netip.Prefix{n1.PodCIDR}); err != nil {
		t.Fatal(err)
	}
	if err := routing.UpsertNodeRoutes(n1.Netns, n1.Device, n0.IP, []netip.Prefix{n0.PodCIDR}); err != nil {
		t.Fatal(err)
	}
	a := n0.AddPod(t, "a", n0.PodIP(10))
	b := n1.AddPod(t, "b", n1.PodIP(10))
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
	if out := n0.Exec(t, "ip", "-n", a.NetnsName, "route", "get", b.IP.String()); !strings.Contains(out, "mtu 1400") {
		t.Errorf("pod a learnt no path MTU towards %s:\n%s", b.IP, out)
	}

	// SetDeviceMTU changes the node's end and the bridge port together.
	n1.SetDeviceMTU(t, 1300)
	if out := n1.Exec(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1300 ") {
		t.Errorf("node %s after SetDeviceMTU: %s", n1.Name, out)
	}
	if out := n1.Exec(t, "ip", "-n", c.WireName, "-o", "link", "show", "veth1"); !strings.Contains(out, "mtu 1300 ") {
		t.Errorf("bridge port of %s after SetDeviceMTU: %s", n1.Name, out)
	}
}
