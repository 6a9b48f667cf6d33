package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AddEndpointRoute makes the node route to a local endpoint,
// `addr/32 dev ifname scope link`, in the namespace at nsPath ("" is the
// process's). It replaces an existing route to addr, so repeating it is fine.
func AddEndpointRoute(nsPath, ifname string, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("add endpoint route %s dev %q: only IPv4 is supported yet", addr, ifname)
	}
	h, err := Handle(nsPath)
	if err != nil {
		return fmt.Errorf("add endpoint route %s dev %q: %w", addr, ifname, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("add endpoint route %s dev %q: %w", addr, ifname, err)
	}
	return replaceEndpointRoute(h, link, addr)
}

// DelEndpointRoute removes the route AddEndpointRoute made in the namespace
// at nsPath ("" is the process's). A missing route or device is not an
// error.
func DelEndpointRoute(nsPath, ifname string, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("delete endpoint route %s dev %q: only IPv4 is supported yet", addr, ifname)
	}
	h, err := Handle(nsPath)
	if err != nil {
		return fmt.Errorf("delete endpoint route %s dev %q: %w", addr, ifname, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil // the route went with the device
	}
	if err != nil {
		return fmt.Errorf("delete endpoint route %s dev %q: %w", addr, ifname, err)
	}
	err = h.RouteDel(endpointRoute(link, addr))
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete endpoint route %s dev %q: %w", addr, ifname, err)
	}
	return nil
}

func replaceEndpointRoute(h *netlink.Handle, link netlink.Link, addr netip.Addr) error {
	if err := h.RouteReplace(endpointRoute(link, addr)); err != nil {
		return fmt.Errorf("add endpoint route %s dev %q: %w", addr, link.Attrs().Name, err)
	}
	return nil
}

func endpointRoute(link netlink.Link, addr netip.Addr) *netlink.Route {
	return &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostRoute(addr), Scope: netlink.SCOPE_LINK}
}

// hostRoute returns addr as a /32.
func hostRoute(addr netip.Addr) *net.IPNet {
	return &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}
}
