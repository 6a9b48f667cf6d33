package datapathtest

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/routing"
)

// LookupPod describes, as a Pod, a pod that the caller wired to the node
// itself: with its own CNI plugin, plain `ip` commands, or routing.SetupVeth
// with options AddPod does not use. The traffic helpers (Ping, TCPEcho, ...)
// and Pod.AddEndpoint then work on it as on a pod AddPod made.
//
// podNetns is the pod's network namespace: a name under routing.NetnsDir or
// a path such as /proc/PID/ns/net. podIfName is the pod's interface there
// ("" means "eth0"), hostIf the host-side device in the node's namespace.
// The Pod's fields come from the kernel: IP is the first IPv4 address on
// podIfName, MAC its Ethernet address, HostIfIndex and HostMAC those of
// hostIf; NetnsName is set only for a namespace under routing.NetnsDir.
// ARPResponder is set when hostIf has no IPv4 address (Calico-style):
// nothing but the datapath then answers the pod's ARP for its gateway.
//
// When hostIf is a veth, LookupPod checks that podIfName is its peer (by
// ifindex). It waits up to 5s for both ends to be operationally up. It
// changes nothing: whoever wired the pod removes it.
func (n *Node) LookupPod(name, podNetns, podIfName, hostIf string) (*Pod, error) {
	fail := func(format string, args ...any) (*Pod, error) {
		return nil, fmt.Errorf("pod %s: "+format, append([]any{name}, args...)...)
	}
	if podNetns == "" {
		return fail("no pod netns")
	}
	if podIfName == "" {
		podIfName = "eth0"
	}
	path, nsName := podNetns, ""
	if !strings.Contains(podNetns, "/") {
		path, nsName = filepath.Join(routing.NetnsDir, podNetns), podNetns
	} else if filepath.Dir(filepath.Clean(podNetns)) == routing.NetnsDir {
		nsName = filepath.Base(podNetns)
	}
	if _, err := routing.Netns(path); err != nil {
		return fail("%v", err)
	}
	if _, err := routing.Netns(n.Netns); err != nil {
		return fail("node %s: %v", n.Name, err)
	}

	podLink, err := linkByName(path, podIfName)
	if err != nil {
		return fail("%v", err)
	}
	hostLink, err := linkByName(n.Netns, hostIf)
	if err != nil {
		return fail("node %s: %v", n.Name, err)
	}
	ip, err := firstIPv4(path, podLink)
	if err != nil {
		return fail("%v", err)
	}
	hostAddrs, err := ipv4Addrs(n.Netns, hostLink)
	if err != nil {
		return fail("node %s: %v", n.Name, err)
	}
	pa, ha := podLink.Attrs(), hostLink.Attrs()
	if len(pa.HardwareAddr) != 6 || len(ha.HardwareAddr) != 6 {
		return fail("%s (%s) and %s (%s) must both have an Ethernet address", podIfName, pa.HardwareAddr, hostIf, ha.HardwareAddr)
	}
	if _, ok := hostLink.(*netlink.Veth); ok && (ha.ParentIndex != pa.Index || pa.ParentIndex != ha.Index) {
		return fail("%s (ifindex %d, peer %d) is not the veth peer of %s in node %s (ifindex %d, peer %d)",
			podIfName, pa.Index, pa.ParentIndex, hostIf, n.Name, ha.Index, ha.ParentIndex)
	}
	for _, end := range []struct{ netns, ifname string }{{n.Netns, hostIf}, {path, podIfName}} {
		if err := waitOperUp(end.netns, end.ifname); err != nil {
			return fail("%v", err)
		}
	}
	return &Pod{
		Name:        name,
		NetnsName:   nsName,
		Netns:       path,
		IP:          ip,
		MAC:         pa.HardwareAddr,
		HostIf:      hostIf,
		HostIfIndex: ha.Index,
		HostMAC:     ha.HardwareAddr,
		Node:        n,

		ARPResponder: len(hostAddrs) == 0,
	}, nil
}

// WrapPod is LookupPod that fails the test on error: it wraps a pod wired
// by the test or by the CNI plugin under test, so that the Pod helpers work
// on it. Unlike AddPod it registers no cleanup: WrapPod made nothing, and
// the veth and namespace stay for whoever made them to remove.
func (n *Node) WrapPod(t testing.TB, name, podNetns, podIfName, hostIf string) *Pod {
	t.Helper()
	p, err := n.LookupPod(name, podNetns, podIfName, hostIf)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func linkByName(nsPath, ifname string) (netlink.Link, error) {
	if ifname == "" {
		return nil, errors.New("no interface name")
	}
	h, err := routing.Handle(nsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("device %q in %s: %w", ifname, nsPath, err)
	}
	return l, nil
}

// firstIPv4 returns the first IPv4 address on link in the namespace at
// nsPath.
func firstIPv4(nsPath string, link netlink.Link) (netip.Addr, error) {
	addrs, err := ipv4Addrs(nsPath, link)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("%q has no IPv4 address", link.Attrs().Name)
	}
	return addrs[0], nil
}

// ipv4Addrs returns the IPv4 addresses on link in the namespace at nsPath.
func ipv4Addrs(nsPath string, link netlink.Link) ([]netip.Addr, error) {
	h, err := routing.Handle(nsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	addrs, err := netlinksafe.AddrList(h, link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("addresses of %q: %w", link.Attrs().Name, err)
	}
	var ips []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}
