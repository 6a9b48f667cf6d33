package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/internal/netlinksafe"
)

// RouteProtocol marks every route UpsertNodeRoutes makes (rtm_protocol 200,
// which iproute2's rt_protos leaves unassigned), so that NodeRoutes and
// DeleteNodeRoutes find exactly ours and never touch routes of the kernel,
// DHCP, a routing daemon or an admin. `ip route show proto 200` lists them.
const RouteProtocol netlink.RouteProtocol = 0xc8

// UpsertNodeRoutes makes the direct routes to another node's pods in the
// namespace at nsPath ("" is the process's), as Cilium's auto direct node
// routes do: `podCIDR via nodeIP dev device proto 200` in the main table for
// each of podCIDRs. Routes of ours via nodeIP on device whose CIDR is no
// longer listed are removed, so the call converges on exactly podCIDRs;
// repeating it changes nothing. An empty podCIDRs removes them all.
//
// The next hop is kept warm by a managed neighbour entry for nodeIP on
// device (`ip neigh replace nodeIP dev device managed extern_learn`): the
// kernel resolves it at once and keeps re-probing it, so a first packet or
// a stale entry never waits for ARP. A kernel without managed neighbours
// (before Linux 5.16) gets no entry and resolves the next hop on first use,
// as it always did. The kernel flushes the entry when the device loses its
// carrier; the next UpsertNodeRoutes makes it again.
//
// Everything is checked before anything changes: IPv4 only; nodeIP on the
// subnet of one of device's addresses but none of them; podCIDRs valid,
// masked and overlapping neither each other, nor device's subnets, nor our
// routes via other next hops; no route of someone else to the same CIDR.
func UpsertNodeRoutes(nsPath, device string, nodeIP netip.Addr, podCIDRs []netip.Prefix) error {
	return upsertNodeRoutes(nsPath, device, netip.Addr{}, nodeIP, podCIDRs)
}

// MoveNodeRoutes is UpsertNodeRoutes for a node that was at from and is
// now at nodeIP: a pod CIDR routed via from is no conflict, and its route
// is replaced in place, so it is never missing. What is left via from
// (other pod CIDRs, the neighbour entry) stays for DeleteNodeRoutes.
func MoveNodeRoutes(nsPath, device string, from, nodeIP netip.Addr, podCIDRs []netip.Prefix) error {
	return upsertNodeRoutes(nsPath, device, from.Unmap(), nodeIP, podCIDRs)
}

// upsertNodeRoutes is UpsertNodeRoutes taking the routes via from as its
// own (none if from is invalid).
func upsertNodeRoutes(nsPath, device string, from, nodeIP netip.Addr, podCIDRs []netip.Prefix) error {
	nodeIP = nodeIP.Unmap()
	fail := func(err error) error {
		return fmt.Errorf("upsert routes via node %s dev %q: %w", nodeIP, device, err)
	}
	if err := checkNodeIP(nodeIP); err != nil {
		return fail(err)
	}
	if err := checkPodCIDRs(podCIDRs); err != nil {
		return fail(err)
	}
	h, err := Handle(nsPath)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	link, err := h.LinkByName(device)
	if err != nil {
		return fail(err)
	}
	if err := checkOnLink(h, link, nodeIP, podCIDRs); err != nil {
		return fail(err)
	}
	ours, err := nodeRouteList(h)
	if err != nil {
		return fail(err)
	}
	for _, p := range podCIDRs {
		if err := checkConflicts(h, link, from, nodeIP, p, ours); err != nil {
			return fail(err)
		}
	}

	if err := setManagedNeighbor(h, link, nodeIP); err != nil {
		return fail(err)
	}
	for _, p := range podCIDRs {
		if err := h.RouteReplace(nodeRoute(link, nodeIP, p)); err != nil {
			return fail(fmt.Errorf("replace route %s: %w", p, err))
		}
	}
	for _, r := range ours {
		if viaHop(r, link, nodeIP) && !slices.Contains(podCIDRs, routeDst(r)) {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fail(fmt.Errorf("remove route %s: %w", routeDst(r), err))
			}
		}
	}
	return nil
}

// DeleteNodeRoutes removes every route of ours via nodeIP on device and the
// managed neighbour entry UpsertNodeRoutes made for it, in the namespace at
// nsPath ("" is the process's). Other neighbour entries for nodeIP are left to the kernel. Nothing
// to remove, a missing device included, is not an error.
func DeleteNodeRoutes(nsPath, device string, nodeIP netip.Addr) error {
	nodeIP = nodeIP.Unmap()
	fail := func(err error) error {
		return fmt.Errorf("delete routes via node %s dev %q: %w", nodeIP, device, err)
	}
	if err := checkNodeIP(nodeIP); err != nil {
		return fail(err)
	}
	h, err := Handle(nsPath)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	link, err := h.LinkByName(device)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil // routes and neighbours went with the device
	}
	if err != nil {
		return fail(err)
	}
	ours, err := nodeRouteList(h)
	if err != nil {
		return fail(err)
	}
	for _, r := range ours {
		if viaHop(r, link, nodeIP) {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fail(fmt.Errorf("remove route %s: %w", routeDst(r), err))
			}
		}
	}
	neighs, err := netlinksafe.NeighList(h, link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fail(fmt.Errorf("list neighbours: %w", err))
	}
	for _, n := range neighs {
		if n.IP.Equal(nodeIP.AsSlice()) && n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
			if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return fail(fmt.Errorf("remove managed neighbour: %w", err))
			}
		}
	}
	return nil
}

// NodeRoutes lists the routes UpsertNodeRoutes made in the namespace at
// nsPath ("" is the process's): pod CIDRs, sorted, by the node IP they go via.
func NodeRoutes(nsPath string) (map[netip.Addr][]netip.Prefix, error) {
	h, err := Handle(nsPath)
	if err != nil {
		return nil, fmt.Errorf("list node routes: %w", err)
	}
	defer h.Close()
	ours, err := nodeRouteList(h)
	if err != nil {
		return nil, fmt.Errorf("list node routes: %w", err)
	}
	out := map[netip.Addr][]netip.Prefix{}
	for _, r := range ours {
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok {
			continue // not made by UpsertNodeRoutes
		}
		out[gw.Unmap()] = append(out[gw.Unmap()], routeDst(r))
	}
	for _, ps := range out {
		slices.SortFunc(ps, netip.Prefix.Compare)
	}
	return out, nil
}

func checkNodeIP(ip netip.Addr) error {
	switch {
	case !ip.IsValid():
		return errors.New("node IP is not a valid address")
	case !ip.Is4():
		return fmt.Errorf("node IP %s: IPv6 is not supported yet", ip)
	case !ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast():
		return fmt.Errorf("node IP %s is not a unicast address", ip)
	}
	return nil
}

func checkPodCIDRs(cidrs []netip.Prefix) error {
	for i, p := range cidrs {
		switch {
		case !p.IsValid():
			return fmt.Errorf("pod CIDR #%d is not a valid prefix", i+1)
		case !p.Addr().Is4():
			return fmt.Errorf("pod CIDR %s: IPv6 is not supported yet", p)
		case p.Masked() != p:
			return fmt.Errorf("pod CIDR %s has host bits set (did you mean %s?)", p, p.Masked())
		case p.Bits() == 0:
			return fmt.Errorf("pod CIDR %s would be the default route", p)
		}
		for _, q := range cidrs[:i] {
			if p.Overlaps(q) {
				return fmt.Errorf("pod CIDRs %s and %s overlap", q, p)
			}
		}
	}
	return nil
}

// checkOnLink checks that nodeIP is a neighbour on one of link's IPv4
// subnets, not the link's own address or a subnet broadcast, and that no pod
// CIDR takes over a link subnet.
func checkOnLink(h *netlink.Handle, link netlink.Link, nodeIP netip.Addr, cidrs []netip.Prefix) error {
	name := link.Attrs().Name
	addrs, err := netlinksafe.AddrList(h, link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", name, err)
	}
	var subnets []string
	onLink := false
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		own := netip.PrefixFrom(ip.Unmap(), ones)
		subnet := own.Masked()
		subnets = append(subnets, own.String())
		if own.Addr() == nodeIP {
			return fmt.Errorf("node IP %s is an address of %s itself", nodeIP, name)
		}
		if subnet.Contains(nodeIP) {
			if ones <= 30 && nodeIP == lastAddr(subnet) {
				return fmt.Errorf("node IP %s is the broadcast address of %s", nodeIP, own)
			}
			onLink = true
		}
		for _, p := range cidrs {
			if p.Overlaps(subnet) {
				return fmt.Errorf("pod CIDR %s overlaps the subnet of %s (%s)", p, name, own)
			}
		}
	}
	if len(subnets) == 0 {
		return fmt.Errorf("node IP %s is not on a subnet of %s (it has no IPv4 address)", nodeIP, name)
	}
	if !onLink {
		return fmt.Errorf("node IP %s is not on a subnet of %s (%s)", nodeIP, name, strings.Join(subnets, ", "))
	}
	return nil
}

// checkConflicts refuses a pod CIDR that someone else routes already, or
// that overlaps a pod CIDR of ours via another next hop: taking it over
// silently would cut off the node it belongs to.
func checkConflicts(h *netlink.Handle, link netlink.Link, from, nodeIP netip.Addr, p netip.Prefix, ours []netlink.Route) error {
	for _, r := range ours {
		moving := from.IsValid() && r.Gw.Equal(from.AsSlice()) && routeDst(r) == p
		if q := routeDst(r); !viaHop(r, link, nodeIP) && !moving && q.Overlaps(p) {
			return fmt.Errorf("pod CIDR %s overlaps %s, routed via node %s", p, q, r.Gw)
		}
	}
	same, err := netlinksafe.RouteListFiltered(h, netlink.FAMILY_V4, &netlink.Route{Dst: prefixNet(p)}, netlink.RT_FILTER_DST)
	if err != nil {
		return fmt.Errorf("list routes to %s: %w", p, err)
	}
	for _, r := range same {
		if r.Protocol != RouteProtocol {
			return fmt.Errorf("pod CIDR %s: a route to it exists already (%s), not made by hostrouting", p, describeRoute(r))
		}
	}
	return nil
}

// setManagedNeighbor creates or refreshes the managed entry for ip on link,
// as `ip neigh replace IP dev DEV managed extern_learn` does. The state is
// NUD_NONE because the kernel refuses permanent managed entries; replacing an
// entry that is already resolved keeps its state and address. NTF_EXT_LEARNED
// exempts the entry from garbage collection (Cilium sets it for the same
// reason). On a kernel without managed neighbours nothing is left behind.
func setManagedNeighbor(h *netlink.Handle, link netlink.Link, ip netip.Addr) error {
	n := &netlink.Neigh{
		LinkIndex: link.Attrs().Index,
		Family:    netlink.FAMILY_V4,
		IP:        ip.AsSlice(),
		State:     netlink.NUD_NONE,
		Flags:     netlink.NTF_EXT_LEARNED,
		FlagsExt:  netlink.NTF_EXT_MANAGED,
	}
	err := h.NeighSet(n)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil // no managed neighbours here: the stack resolves on demand
	}
	if err != nil {
		return fmt.Errorf("set managed neighbour: %w", err)
	}
	// Kernels before 5.16 ignore NDA_FLAGS_EXT and keep an entry that is
	// never resolved; remove it.
	neighs, err := netlinksafe.NeighList(h, n.LinkIndex, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours: %w", err)
	}
	for _, got := range neighs {
		if got.IP.Equal(n.IP) && got.FlagsExt&netlink.NTF_EXT_MANAGED == 0 && got.State == netlink.NUD_NONE {
			if err := h.NeighDel(&got); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove unmanaged neighbour: %w", err)
			}
		}
	}
	return nil
}

// nodeRouteList returns the IPv4 routes of ours in the main table.
func nodeRouteList(h *netlink.Handle) ([]netlink.Route, error) {
	rs, err := netlinksafe.RouteListFiltered(h, netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list routes proto %d: %w", RouteProtocol, err)
	}
	return rs, nil
}

// describeRoute says what `ip route` would about r's next hop and origin.
func describeRoute(r netlink.Route) string {
	s := "proto " + r.Protocol.String()
	if r.Gw != nil {
		s = "via " + r.Gw.String() + " " + s
	}
	return s
}

func nodeRoute(link netlink.Link, nodeIP netip.Addr, p netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       prefixNet(p),
		Gw:        nodeIP.AsSlice(),
		Protocol:  RouteProtocol,
	}
}

// viaHop reports whether r goes via nodeIP on link.
func viaHop(r netlink.Route, link netlink.Link, nodeIP netip.Addr) bool {
	return r.LinkIndex == link.Attrs().Index && r.Gw.Equal(nodeIP.AsSlice())
}

func routeDst(r netlink.Route) netip.Prefix {
	if r.Dst == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	ip, _ := netip.AddrFromSlice(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones)
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// lastAddr returns the highest address of the IPv4 prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// DeleteAllNodeRoutes removes every route UpsertNodeRoutes made in the
// namespace at nsPath ("" is the process's; `ip route show proto 200`) and the managed
// neighbour entries of their next hops: for a node whose registry of
// other nodes is lost.
func DeleteAllNodeRoutes(nsPath string) error {
	h, err := Handle(nsPath)
	if err != nil {
		return fmt.Errorf("delete node routes: %w", err)
	}
	defer h.Close()
	ours, err := nodeRouteList(h)
	if err != nil {
		return fmt.Errorf("delete node routes: %w", err)
	}
	var errs []error
	for _, r := range ours {
		gw, ok := netip.AddrFromSlice(r.Gw)
		link, err := h.LinkByIndex(r.LinkIndex)
		if !ok || err != nil {
			continue
		}
		errs = append(errs, DeleteNodeRoutes(nsPath, link.Attrs().Name, gw.Unmap()))
	}
	return errors.Join(errs...)
}
