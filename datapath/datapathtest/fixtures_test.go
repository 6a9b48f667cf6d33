package datapathtest_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// calicoPod wires a pod as Calico does, with plain `ip` commands: no
// address on the host side, the pod's gateway a link-local address nobody
// has, a /32 route to the pod on the node. It returns the pod's netns path.
func calicoPod(t *testing.T, node *datapathtest.Node, name, hostIf string, ip netip.Addr) string {
	t.Helper()
	podNs, podPath := datapathtest.NewNetns(t, name)
	t.Cleanup(func() {
		if err := routing.DeleteVeth(node.Netns, hostIf); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	for _, cmd := range [][]string{
		{"ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", podNs},
		{"ip", "-n", podNs, "link", "set", "eth0", "up"},
		{"ip", "-n", podNs, "addr", "add", ip.String() + "/32", "dev", "eth0"},
		{"ip", "-n", podNs, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"},
		{"ip", "-n", podNs, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"},
		{"ip", "link", "set", hostIf, "up"},
		{"ip", "route", "add", ip.String() + "/32", "dev", hostIf, "scope", "link"},
	} {
		node.Exec(t, cmd...)
	}
	return podPath
}

// TestWrapPodCalicoStyle: pods wired as Calico wires them, wrapped with
// WrapPod, ask for the datapath's ARP responder, and then talk on the
// datapath: without it, their ARP for the gateway goes unanswered and
// every ping is lost. A pod whose host side has the gateway's address
// (AddPod's) needs none.
func TestWrapPodCalicoStyle(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	var pods []*datapathtest.Pod
	for i, name := range []string{"cali-a", "cali-b"} {
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(30 + i)})
		hostIf := fmt.Sprintf("calitest%d", i)
		p := node.WrapPod(t, name, calicoPod(t, node, name, hostIf, ip), "eth0", hostIf)
		if !p.ARPResponder || !p.Endpoint().ARPResponder {
			t.Errorf("Calico-style pod: ARPResponder %v, endpoint %+v: want the ARP responder", p.ARPResponder, p.Endpoint())
		}
		pods = append(pods, p)
	}
	dp := node.NewDatapath(t, datapath.Config{})
	a, b := pods[0], pods[1]
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))

	// Elsewhere: a node that has the gateway's address answers the ARP.
	other := datapathtest.NewNode(t, "other").AddPod(t, "p", netip.MustParseAddr("10.0.0.40"))
	if other.ARPResponder || other.Endpoint().ARPResponder {
		t.Errorf("pod whose host side has the gateway's address: ARPResponder %v, want none", other.ARPResponder)
	}
}

// TestPrefixes: the names of what the fixtures make begin with the
// prefixes an embedder's tests chose. Not parallel: it sets them while no
// other test runs.
func TestPrefixes(t *testing.T) {
	datapathtest.RequireRoot(t)
	netnsPrefix, dirPrefix := datapathtest.NetnsPrefix, datapathtest.DirPrefix
	defer func() { datapathtest.NetnsPrefix, datapathtest.DirPrefix = netnsPrefix, dirPrefix }()
	if netnsPrefix != "hr-" || dirPrefix != "hrtest-" {
		t.Errorf("default prefixes %q and %q, want hr- and hrtest-", netnsPrefix, dirPrefix)
	}
	// Still what this repository's CI looks for, in case they are left.
	datapathtest.NetnsPrefix, datapathtest.DirPrefix = "hrpfx-", "hrtestpfx-"

	node := datapathtest.NewNode(t, "node")
	ns, _ := datapathtest.NewNetns(t, "bare")
	c := datapathtest.NewCluster(t, 1)
	for _, name := range []string{node.NetnsName, ns, c.WireName, c.Nodes[0].NetnsName} {
		if !strings.HasPrefix(name, "hrpfx-") {
			t.Errorf("netns %q: want prefix hrpfx-", name)
		}
	}
	pin := datapathtest.PinPath(t)
	cgroup := datapathtest.NewCgroup(t)
	for _, dir := range []string{pin, cgroup} {
		if !strings.HasPrefix(filepath.Base(dir), "hrtestpfx-") {
			t.Errorf("directory %s: want prefix hrtestpfx-", dir)
		}
	}
	node.NewDatapath(t, datapath.Config{PinPath: pin})
}
