package datapathtest_test

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// TestWrapPod wires a pod with plain `ip` commands, as a CNI plugin would,
// wraps it with WrapPod, checks the fields against the kernel, puts it on
// a datapath beside a pod AddPod made and sends traffic both ways. WrapPod
// made nothing, so after its (sub)test everything it wrapped is still
// there.
func TestWrapPod(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	podNs, podPath := datapathtest.NewNetns(t, "wired")
	const hostIf = "lxcwired0"
	ip := netip.MustParseAddr("10.0.0.20")

	// The test's own wiring, and its own cleanup (before the namespaces go).
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
		{"ip", "addr", "add", "169.254.1.1/32", "dev", hostIf},
		{"ip", "route", "add", ip.String() + "/32", "dev", hostIf, "scope", "link"},
	} {
		node.Exec(t, cmd...)
	}

	t.Run("wrapped", func(t *testing.T) {
		p := node.WrapPod(t, "wired", podPath, "eth0", hostIf)

		// Every field as the kernel has it.
		hostLink, podLink := link(t, node.Netns, hostIf), link(t, podPath, "eth0")
		if p.Name != "wired" || p.NetnsName != podNs || p.Netns != podPath || p.Node != node || p.IP != ip ||
			p.HostIf != hostIf || p.HostIfIndex != hostLink.Index ||
			p.MAC.String() != podLink.HardwareAddr.String() || p.HostMAC.String() != hostLink.HardwareAddr.String() ||
			len(p.MAC) != 6 || len(p.HostMAC) != 6 {
			t.Errorf("wrapped pod %+v; kernel: %s index %d MAC %s, eth0 MAC %s",
				p, hostIf, hostLink.Index, hostLink.HardwareAddr, podLink.HardwareAddr)
		}
		// By name, and with the default interface name, it is the same pod.
		if q := node.WrapPod(t, "wired", podNs, "", hostIf); q.Netns != podPath || q.NetnsName != podNs ||
			q.IP != p.IP || q.HostIfIndex != p.HostIfIndex {
			t.Errorf("wrapped by name: %+v", q)
		}

		other := node.AddPod(t, "other", netip.MustParseAddr("10.0.0.21"))
		// Mistakes are errors, not a Pod.
		for _, c := range []struct{ netns, podIf, hostIf, want string }{
			{podPath, "eth0", other.HostIf, "not the veth peer"},
			{podPath, "eth0", "missing0", "missing0"},
			{podPath, "lo", hostIf, "Ethernet address"},
			{"hr-no-such-netns", "eth0", hostIf, "hr-no-such-netns"},
		} {
			if _, err := node.LookupPod("bad", c.netns, c.podIf, c.hostIf); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("LookupPod(%s, %s, %s): %v, want an error saying %q", c.netns, c.podIf, c.hostIf, err, c.want)
			}
		}

		// On a datapath, the wrapped pod talks as any other.
		dp := node.NewDatapath(t, datapath.Config{})
		if ep := p.AddEndpoint(t, dp); ep.IfIndex != p.HostIfIndex || ep.IP != ip || ep.MAC.String() != p.MAC.String() {
			t.Errorf("endpoint %+v of the wrapped pod %+v", ep, p)
		}
		other.AddEndpoint(t, dp)
		p.MustPing(t, other.IP)
		other.MustPing(t, p.IP)
		p.MustTCPEcho(t, other.IP, other.ServeTCPEcho(t))
		other.MustUDPEcho(t, p.IP, p.ServeUDPEcho(t))
		s, err := dp.EndpointStats(p.IP)
		if err != nil {
			t.Fatal(err)
		}
		if s.FromPackets < 3 || s.ToPackets < 3 {
			t.Errorf("wrapped pod's endpoint counters %+v: want its pings", s)
		}
		m, err := dp.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Total(maps.MetricForwardPeer).Packets; got < 12 {
			t.Errorf("forward-peer moved by %d, want at least the 12 ICMP packets", got)
		}
	})

	// WrapPod registered no cleanup: the pod's veth, address and namespace
	// are still there, for the test's own cleanup to remove.
	if _, err := os.Stat(podPath); errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pod netns %s gone after the subtest", podPath)
	}
	link(t, node.Netns, hostIf)
	if out := node.Exec(t, "ip", "-n", podNs, "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, " "+ip.String()+"/32 ") {
		t.Errorf("pod eth0 after the subtest: %q", out)
	}
}

// link returns the attributes of the device ifname in the namespace at
// nsPath, failing the test if it is not there.
func link(t *testing.T, nsPath, ifname string) *netlink.LinkAttrs {
	t.Helper()
	h, err := routing.Handle(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s in %s: %v", ifname, nsPath, err)
	}
	return l.Attrs()
}
