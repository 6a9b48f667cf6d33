package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultGateway is the pod's gateway when VethConfig.Gateway is unset: a
// link-local address that every pod's host device carries (unless
// VethConfig.NoHostAddress), so pods never need to know the node's own
// addresses.
var DefaultGateway = netip.AddrFrom4([4]byte{169, 254, 1, 1})

// VethConfig describes a pod's veth pair for SetupVeth.
type VethConfig struct {
	// HostNetns is the path of the node's network namespace; "" is the
	// process's (the one it started in).
	HostNetns string
	// HostIfName names the node-side device (at most 15 bytes), e.g. "lxc1234".
	HostIfName string
	// PodNetns is the path of the pod's network namespace. Required.
	PodNetns string
	// PodIfName names the device inside the pod; "" means "eth0".
	PodIfName string
	// Addr is the pod's address, typically a /32. No on-link subnet route
	// is made for wider prefixes: all the pod's traffic goes via Gateway.
	Addr netip.Prefix
	// Gateway is the pod's next hop; the zero value means DefaultGateway.
	Gateway netip.Addr
	// MTU of both ends; 0 means 1500.
	MTU int
	// NoHostAddress sets the pair up Calico-style: the node-side device
	// gets no address at all, not even the gateway's. The pod side is the
	// same as by default: Addr, the on-link route to Gateway and the
	// default route via it. But nothing in the node owns Gateway, so the
	// kernel does not answer the pod's ARP requests for it. (Unless some
	// other device of the node carries it, as a ptp-like pod's does: by
	// default the kernel answers ARP for any of its addresses on any
	// device. Do not rely on that.)
	//
	// Such a pod REQUIRES the datapath's ARP responder
	// (datapath.Endpoint.ARPResponder), which answers them with the
	// node-side device's MAC. Without it the pod never resolves its
	// gateway and cannot send anything: ping loses 100% of its packets,
	// silently, with no error anywhere.
	//
	// False, the default, is the ptp-like pair: Gateway/32 on the
	// node-side device, as the CNI ptp plugin makes it.
	NoHostAddress bool
}

// Veth is a pod's veth pair as SetupVeth made it.
type Veth struct {
	HostIfName  string
	HostIfIndex int
	HostMAC     net.HardwareAddr
	PodIfName   string
	PodIfIndex  int
	PodMAC      net.HardwareAddr
}

// SetupVeth creates a veth pair with one end in the node (cfg.HostNetns) and
// the other in the pod (cfg.PodNetns), addressed like the CNI ptp plugin:
//
//   - pod: lo and the device up, cfg.Addr on the device, a link-scope route
//     to the gateway and a default route via it;
//   - node: the device up, the gateway address as a /32 on it (so the kernel
//     answers the pod's ARP for the gateway) and the endpoint route
//     addr/32 dev HostIfName scope link (see AddEndpointRoute).
//
// The node-side device ignores the pod's IPv6 Router Advertisements and
// Redirects and makes no SLAAC address (net.ipv6.conf.<HostIfName>.accept_ra,
// accept_redirects and autoconf are 0, set before the device is up), so a
// pod can never give its node a route or an address (CVE-2020-10749). A
// device without IPv6 (none in the kernel, or an MTU below 1280) is left so;
// should its MTU be raised to 1280 or more later, it gets the namespace's
// default IPv6 settings, and with them the pod's RAs.
//
// With cfg.NoHostAddress (Calico-style) the node-side device gets no
// address, and the pod needs the datapath's ARP responder to reach its
// gateway; see VethConfig.NoHostAddress.
//
// The pod end is created directly inside the pod namespace. On failure
// nothing is left behind. Use DeleteVeth to remove the pair.
func SetupVeth(cfg VethConfig) (*Veth, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	host, err := Handle(cfg.HostNetns)
	if err != nil {
		return nil, fmt.Errorf("setup veth %q: %w", cfg.HostIfName, err)
	}
	defer host.Close()
	podNs, err := netns.GetFromPath(cfg.PodNetns)
	if err != nil {
		return nil, fmt.Errorf("setup veth %q: open pod netns %q: %w", cfg.HostIfName, cfg.PodNetns, err)
	}
	defer podNs.Close()
	pod, err := netlink.NewHandleAt(podNs)
	if err != nil {
		return nil, fmt.Errorf("setup veth %q: netlink handle in pod netns %q: %w", cfg.HostIfName, cfg.PodNetns, err)
	}
	defer pod.Close()

	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.HostIfName
	attrs.MTU = cfg.MTU
	link := &netlink.Veth{LinkAttrs: attrs, PeerName: cfg.PodIfName, PeerNamespace: netlink.NsFd(podNs)}
	if err := host.LinkAdd(link); err != nil {
		return nil, fmt.Errorf("create veth %q (peer %q in %q): %w", cfg.HostIfName, cfg.PodIfName, cfg.PodNetns, err)
	}
	v, err := configureVeth(host, pod, cfg)
	if err != nil {
		// Deleting one end deletes the peer, its addresses and routes.
		if delErr := host.LinkDel(link); delErr != nil {
			err = errors.Join(err, fmt.Errorf("remove veth %q after failure: %w", cfg.HostIfName, delErr))
		}
		return nil, err
	}
	return v, nil
}

func configureVeth(host, pod *netlink.Handle, cfg VethConfig) (*Veth, error) {
	gateway := hostRoute(cfg.Gateway)

	// Before any end is up, so that not one RA from the pod slips in.
	if err := guardHostVeth(cfg.HostNetns, cfg.HostIfName); err != nil {
		return nil, fmt.Errorf("guard veth %q against the pod's IPv6 router advertisements: %w", cfg.HostIfName, err)
	}

	lo, err := pod.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo in pod netns %q: %w", cfg.PodNetns, err)
	}
	if err := pod.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("set lo up in pod netns %q: %w", cfg.PodNetns, err)
	}
	podLink, err := pod.LinkByName(cfg.PodIfName)
	if err != nil {
		return nil, fmt.Errorf("find %q in pod netns %q: %w", cfg.PodIfName, cfg.PodNetns, err)
	}
	podIndex := podLink.Attrs().Index
	if err := pod.LinkSetUp(podLink); err != nil {
		return nil, fmt.Errorf("set %q up in pod netns %q: %w", cfg.PodIfName, cfg.PodNetns, err)
	}
	addr := &netlink.Addr{
		IPNet: &net.IPNet{IP: cfg.Addr.Addr().AsSlice(), Mask: net.CIDRMask(cfg.Addr.Bits(), 32)},
		Flags: unix.IFA_F_NOPREFIXROUTE,
	}
	if err := pod.AddrAdd(podLink, addr); err != nil {
		return nil, fmt.Errorf("add address %s to %q in pod netns %q: %w", cfg.Addr, cfg.PodIfName, cfg.PodNetns, err)
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: podIndex, Dst: gateway, Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("add route %s dev %q in pod netns %q: %w", gateway, cfg.PodIfName, cfg.PodNetns, err)
	}
	if err := pod.RouteAdd(&netlink.Route{LinkIndex: podIndex, Gw: gateway.IP}); err != nil {
		return nil, fmt.Errorf("add default route via %s in pod netns %q: %w", cfg.Gateway, cfg.PodNetns, err)
	}

	hostLink, err := host.LinkByName(cfg.HostIfName)
	if err != nil {
		return nil, fmt.Errorf("find veth %q: %w", cfg.HostIfName, err)
	}
	if err := host.LinkSetUp(hostLink); err != nil {
		return nil, fmt.Errorf("set veth %q up: %w", cfg.HostIfName, err)
	}
	if !cfg.NoHostAddress {
		if err := host.AddrAdd(hostLink, &netlink.Addr{IPNet: gateway}); err != nil {
			return nil, fmt.Errorf("add gateway address %s to veth %q: %w", gateway, cfg.HostIfName, err)
		}
	}
	if err := replaceEndpointRoute(host, hostLink, cfg.Addr.Addr()); err != nil {
		return nil, err
	}
	return &Veth{
		HostIfName:  cfg.HostIfName,
		HostIfIndex: hostLink.Attrs().Index,
		HostMAC:     hostLink.Attrs().HardwareAddr,
		PodIfName:   cfg.PodIfName,
		PodIfIndex:  podIndex,
		PodMAC:      podLink.Attrs().HardwareAddr,
	}, nil
}

func (cfg VethConfig) withDefaults() (VethConfig, error) {
	if cfg.PodIfName == "" {
		cfg.PodIfName = "eth0"
	}
	if !cfg.Gateway.IsValid() {
		cfg.Gateway = DefaultGateway
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	fail := func(format string, args ...any) (VethConfig, error) {
		return cfg, fmt.Errorf("setup veth %q: "+format, append([]any{cfg.HostIfName}, args...)...)
	}
	if err := checkIfName(cfg.HostIfName); err != nil {
		return fail("host interface name: %w", err)
	}
	if err := checkIfName(cfg.PodIfName); err != nil {
		return fail("pod interface name: %w", err)
	}
	if cfg.PodNetns == "" {
		return fail("pod netns path is required")
	}
	switch a := cfg.Addr.Addr(); {
	case !cfg.Addr.IsValid():
		return fail("pod address %s is not a valid prefix", cfg.Addr)
	case !a.Is4():
		return fail("pod address %s: IPv6 is not supported yet", cfg.Addr)
	case !a.IsGlobalUnicast() && !a.IsLinkLocalUnicast():
		return fail("pod address %s is not a unicast address", cfg.Addr)
	case !cfg.Gateway.Is4():
		return fail("gateway %s: only IPv4 is supported yet", cfg.Gateway)
	case a == cfg.Gateway:
		return fail("pod address %s is the gateway", a)
	case cfg.MTU < 68 || cfg.MTU > 65535:
		return fail("MTU %d out of range 68..65535", cfg.MTU)
	}
	return cfg, nil
}

// checkIfName applies the kernel's rules for interface names.
func checkIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > unix.IFNAMSIZ-1:
		return fmt.Errorf("%q is longer than %d bytes", name, unix.IFNAMSIZ-1)
	case name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("%q is not a valid interface name", name)
	}
	return nil
}

// DeleteVeth removes the veth pair whose node end is hostIfName in the
// namespace at hostNetns ("" is the process's). The pod end, the addresses and
// the routes through the pair go with it. A missing link is not an error.
func DeleteVeth(hostNetns, hostIfName string) error {
	h, err := Handle(hostNetns)
	if err != nil {
		return fmt.Errorf("delete veth %q: %w", hostIfName, err)
	}
	defer h.Close()
	link, err := h.LinkByName(hostIfName)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete veth %q: %w", hostIfName, err)
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete veth %q: %w", hostIfName, err)
	}
	return nil
}
