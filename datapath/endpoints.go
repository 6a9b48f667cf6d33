package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// Endpoint describes a pod interface to put on the datapath. An endpoint
// is known by its IPv4 address to every other method.
type Endpoint struct {
	// IfName is the pod's host-side device in the node's netns.
	IfName string
	// IP is the pod's IPv4 address.
	IP netip.Addr
	// IPv6 is the pod's IPv6 address, if it has one. The datapath checks
	// that the pod sends from it (or from a link-local address) and leaves
	// the forwarding of IPv6 to the kernel's stack for now.
	IPv6 netip.Addr
	// MAC is the pod's own MAC, the source of every frame it sends.
	MAC net.HardwareAddr
	// ID is the endpoint ID, from 1 to the node's MaxEndpoints: it
	// indexes the endpoint's counters and policy slot. 0 picks the lowest
	// free one.
	ID uint16
	// ARPResponder makes the datapath answer the pod's ARP requests with
	// the host device's MAC, for CNIs without a gateway address on it.
	ARPResponder bool
	// ContainerID and PodIfName say who the endpoint belongs to (a CNI's
	// CNI_CONTAINERID and CNI_IFNAME), so that a DEL that lost the pod's
	// addresses still finds it (EndpointByContainer). Optional.
	ContainerID string
	PodIfName   string

	// The datapath fills in the rest (AddEndpoint's result, Endpoints,
	// Endpoint); AddEndpoint ignores them.

	// IfIndex is the host-side device's index in the node's netns.
	IfIndex int
	// NodeMAC is the host-side device's MAC.
	NodeMAC net.HardwareAddr
	// Policy tells whether the endpoint has an ingress policy
	// (SetIngressPolicy).
	Policy bool
	// ServiceBackend tells whether the endpoint is a backend of a service
	// on the node: its replies are translated back to the frontend.
	ServiceBackend bool
}

// ErrInvalidEndpoint is wrapped by the error of AddEndpoint for an
// endpoint that makes no sense, naming what is wrong: no or a malformed
// address or MAC, an ID beyond MaxEndpoints, a pod MAC that is its host
// device's own.
var ErrInvalidEndpoint = errors.New("invalid endpoint")

// AddEndpoint puts ep on the datapath: its facts into the endpoint maps and
// from-container/to-container onto its host-side device. Adding the same
// endpoint again is an update that keeps its ID, counters and policy. An
// endpoint left behind by a pod whose device is gone (a DEL that never
// came) gives way to ep. On error nothing of ep is left behind.
//
// AddEndpoint changes no route, address or neighbour entry: the pod's
// traffic with other pods and the wire is the datapath's, but the node's
// own (a kubelet probe, a host-network process, replies the stack
// routes) needs the route to the pod in the node's namespace, which the
// CNI makes as it wires the veth: routing.SetupVeth does, or
// routing.AddEndpointRoute (removed with routing.DelEndpointRoute).
// Without it, node → pod fails.
// It returns ep as the datapath holds it: with its ID, and the fields
// the datapath fills in.
func (d *Datapath) AddEndpoint(ep Endpoint) (Endpoint, error) {
	var added Endpoint
	err := d.locked(func() error {
		m, err := d.addEndpoint(ep)
		added = publicEndpoint(m, ep.IfName)
		return err
	})
	if err != nil {
		return Endpoint{}, fmt.Errorf("add endpoint %s on %q: %w", ep.IP, ep.IfName, err)
	}
	return added, nil
}

func (d *Datapath) addEndpoint(ep Endpoint) (maps.Endpoint, error) {
	m, err := d.endpointOf(ep)
	if err != nil {
		return maps.Endpoint{}, err
	}
	all, err := d.endpoints.List()
	if err != nil {
		return maps.Endpoint{}, err
	}
	var existing *maps.Endpoint
	for i, other := range all {
		clash := ""
		switch {
		case other.IfIndex == m.IfIndex && other.IP == m.IP:
			existing = &all[i]
		case other.IfIndex == m.IfIndex:
			clash = fmt.Sprintf("device %q carries endpoint %s (one endpoint per device)", ep.IfName, other.IP)
		case other.IP == m.IP:
			clash = fmt.Sprintf("%s is on ifindex %d", other.IP, other.IfIndex)
		case m.IPv6.IsValid() && other.IPv6 == m.IPv6:
			clash = fmt.Sprintf("%s is on ifindex %d", other.IPv6, other.IfIndex)
		case m.ID != 0 && other.ID == m.ID:
			clash = fmt.Sprintf("ID %d belongs to %s", m.ID, other.IP)
		}
		if clash == "" {
			continue
		}
		if !d.stale(other) {
			return maps.Endpoint{}, fmt.Errorf("%w: %s", ErrEndpointExists, clash)
		}
		if err := d.removeEndpoint(other); err != nil {
			return maps.Endpoint{}, fmt.Errorf("remove stale endpoint %s: %w", other.IP, err)
		}
		all[i] = maps.Endpoint{} // gone: frees its ID
	}
	if backend, err := d.isBackend(m.IP); err != nil {
		return maps.Endpoint{}, err
	} else if backend {
		m.Flags |= maps.EndpointLBBackend
	}
	if existing != nil {
		if m.ID == 0 {
			m.ID = existing.ID
		}
		// An update keeps the endpoint's policy; a changed ID starts over.
		if m.ID == existing.ID {
			m.Flags |= existing.Flags & maps.EndpointPolicy
		}
	}
	if m.ID == 0 {
		if m.ID, err = freeID(all, d.maxEndpoints()); err != nil {
			return maps.Endpoint{}, err
		}
	}

	if existing == nil || existing.ID != m.ID {
		if err := d.stats.Reset(m.ID); err != nil {
			return maps.Endpoint{}, err
		}
		// The ID's slot must not keep a policy of an earlier endpoint.
		if err := d.node.ClearPolicy(m.ID); err != nil {
			return maps.Endpoint{}, err
		}
	}
	if existing != nil && existing.IPv6 != m.IPv6 {
		if err := d.endpoints.Delete(maps.Endpoint{IPv6: existing.IPv6, IfIndex: existing.IfIndex}); err != nil {
			return maps.Endpoint{}, err
		}
	}
	if err := d.endpoints.Put(m); err != nil {
		if existing == nil {
			d.endpoints.Delete(m)
		}
		return maps.Endpoint{}, err
	}
	if err := d.attach(m.IfIndex); err != nil {
		if existing == nil {
			d.detach(m.IfIndex)
			d.endpoints.Delete(m)
		}
		return maps.Endpoint{}, err
	}
	return m, nil
}

// invalidEndpoint returns an error wrapping ErrInvalidEndpoint.
func invalidEndpoint(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidEndpoint, fmt.Sprintf(format, args...))
}

// endpointOf checks ep and finds its host device.
func (d *Datapath) endpointOf(ep Endpoint) (maps.Endpoint, error) {
	switch {
	case !ep.IP.IsValid():
		return maps.Endpoint{}, invalidEndpoint("no IP address")
	case !ep.IP.Is4():
		return maps.Endpoint{}, invalidEndpoint("address %s: want IPv4 in IP (IPv6 goes in IPv6)", ep.IP)
	case ep.IPv6.IsValid() && (!ep.IPv6.Is6() || ep.IPv6.Is4In6() || ep.IPv6.Zone() != "" || ep.IPv6.IsLinkLocalUnicast()):
		return maps.Endpoint{}, invalidEndpoint("IPv6 address %s: want a global or unique-local IPv6 address", ep.IPv6)
	case len(ep.MAC) != 6:
		return maps.Endpoint{}, invalidEndpoint("pod MAC %q: want 6 bytes", ep.MAC)
	case int(ep.ID) > d.maxEndpoints():
		return maps.Endpoint{}, invalidEndpoint("endpoint ID %d: the node's endpoint IDs run from 1 to %d (MaxEndpoints)", ep.ID, d.maxEndpoints())
	}
	ifindex, nodeMAC, err := hostDevice(d.cfg.Netns, ep.IfName)
	if err != nil {
		return maps.Endpoint{}, err
	}
	if len(nodeMAC) != 6 {
		return maps.Endpoint{}, invalidEndpoint("host device %q has no Ethernet address", ep.IfName)
	}
	if bytes.Equal(ep.MAC, nodeMAC) {
		// Every frame of the pod would look like the node's own: the
		// source check drops them all (drop-spoofed).
		return maps.Endpoint{}, invalidEndpoint("pod MAC %s is the MAC of host device %q: want the MAC of the pod's own interface (its veth peer)", ep.MAC, ep.IfName)
	}
	m := maps.Endpoint{IP: ep.IP, IPv6: ep.IPv6, IfIndex: ifindex, ID: ep.ID, MAC: ep.MAC, NodeMAC: nodeMAC,
		ContainerID: ep.ContainerID, PodIfName: ep.PodIfName}
	if ep.ARPResponder {
		m.Flags |= maps.EndpointARPResponder
	}
	return m, nil
}

// isBackend tells whether ip is the address of a service backend.
func (d *Datapath) isBackend(ip netip.Addr) (bool, error) {
	backends, err := d.services.Backends()
	if err != nil {
		return false, err
	}
	for _, b := range backends {
		if b.Addr.Addr() == ip {
			return true, nil
		}
	}
	return false, nil
}

// stale tells whether ep's host device is gone from the node: no device
// with its ifindex, or another one in its place. A new device may take the
// index, the name and the MAC of a deleted one (a CNI such as Calico gives
// every host-side veth ee:ee:ee:ee:ee:ee), so the device is known by what
// the kernel ties to it alone: the attachments AddEndpoint made on it (a
// tcx link is unbound, a cls_bpf filter deleted, with its device). When in
// doubt (an error) the endpoint is not stale.
func (d *Datapath) stale(ep maps.Endpoint) bool {
	h, err := routing.Handle(d.cfg.Netns)
	if err != nil {
		return false
	}
	defer h.Close()
	l, err := h.LinkByIndex(ep.IfIndex)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return true
	}
	if err != nil {
		return false
	}
	if !bytes.Equal(l.Attrs().HardwareAddr, ep.NodeMAC) {
		return true
	}
	for _, p := range []Program{FromContainer, ToContainer} {
		if ours, err := d.node.HasAttachment(d.cfg.Netns, ep.IfIndex, p); err != nil || ours {
			return false
		}
	}
	return true
}

// maxEndpoints is the node's endpoint limit: the highest endpoint ID.
func (d *Datapath) maxEndpoints() int {
	return int(d.node.Maps.EndpointStats.MaxEntries()) - 1
}

// freeID returns the lowest endpoint ID no endpoint uses.
func freeID(eps []maps.Endpoint, maxID int) (uint16, error) {
	used := make(map[uint16]bool, len(eps))
	for _, ep := range eps {
		used[ep.ID] = true
	}
	for id := 1; id <= maxID; id++ {
		if !used[uint16(id)] {
			return uint16(id), nil
		}
	}
	return 0, fmt.Errorf("%w: all %d endpoint IDs are in use (MaxEndpoints)", maps.ErrMapFull, maxID)
}

// RemoveEndpoint takes the endpoint with address ip off the datapath: its
// map entries, counters, policy and attachments. The host device may be
// gone already. Removing an unknown address returns an error wrapping
// ErrNotFound.
func (d *Datapath) RemoveEndpoint(ip netip.Addr) error {
	err := d.locked(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		return d.removeEndpoint(ep)
	})
	if err != nil {
		return fmt.Errorf("remove endpoint %s: %w", ip, err)
	}
	return nil
}

// removeEndpoint takes ep off: attachments, entries, policy, counters,
// and the translated flows of its address (pod IPs are reused).
func (d *Datapath) removeEndpoint(ep maps.Endpoint) error {
	_, flushErr := d.flows.FlushEndpoint(ep.IP)
	return errors.Join(d.detach(ep.IfIndex), d.endpoints.Delete(ep), d.node.ClearPolicy(ep.ID), d.stats.Reset(ep.ID), flushErr)
}

// EndpointByContainer returns the endpoint that AddEndpoint recorded for
// containerID and, if not empty, the pod interface podIfName: for a CNI
// DEL whose pod namespace and previous result are gone.
func (d *Datapath) EndpointByContainer(containerID, podIfName string) (Endpoint, error) {
	var found Endpoint
	err := d.read(func() error {
		eps, err := d.endpoints.List()
		if err != nil {
			return err
		}
		for _, ep := range eps {
			if ep.ContainerID == containerID && (podIfName == "" || ep.PodIfName == podIfName) {
				found, err = d.named(ep)
				return err
			}
		}
		return ErrNotFound
	})
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint of container %q %s: %w", containerID, podIfName, err)
	}
	return found, nil
}

// Endpoints lists the node's endpoints, ordered by address.
func (d *Datapath) Endpoints() ([]Endpoint, error) {
	var eps []Endpoint
	err := d.read(func() error {
		all, err := d.endpoints.List()
		if err != nil {
			return err
		}
		names, err := d.deviceNames()
		if err != nil {
			return err
		}
		for _, m := range all {
			eps = append(eps, publicEndpoint(m, names[m.IfIndex]))
		}
		return nil
	})
	return eps, err
}

// Endpoint returns the endpoint with address ip (its IPv4 or IPv6
// address).
func (d *Datapath) Endpoint(ip netip.Addr) (Endpoint, error) {
	var ep Endpoint
	err := d.read(func() error {
		m, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		ep, err = d.named(m)
		return err
	})
	return ep, err
}

// Flags are ep's switches as the endpoint map holds them and `cilium bpf
// endpoint list` shows them.
func (ep Endpoint) Flags() maps.EndpointFlags {
	var f maps.EndpointFlags
	for _, x := range []struct {
		on   bool
		flag maps.EndpointFlags
	}{{ep.ARPResponder, maps.EndpointARPResponder}, {ep.Policy, maps.EndpointPolicy}, {ep.ServiceBackend, maps.EndpointLBBackend}} {
		if x.on {
			f |= x.flag
		}
	}
	return f
}

// String formats ep as `cilium bpf endpoint list` does (maps.Endpoint).
func (ep Endpoint) String() string {
	return maps.Endpoint{IP: ep.IP, IPv6: ep.IPv6, IfIndex: ep.IfIndex, ID: ep.ID, Flags: ep.Flags(), MAC: ep.MAC,
		NodeMAC: ep.NodeMAC, ContainerID: ep.ContainerID, PodIfName: ep.PodIfName}.String()
}

// publicEndpoint is the endpoint m of the endpoint maps as AddEndpoint
// takes and returns it, on the host device named ifName.
func publicEndpoint(m maps.Endpoint, ifName string) Endpoint {
	return Endpoint{IfName: ifName, IP: m.IP, IPv6: m.IPv6, MAC: m.MAC, ID: m.ID,
		ARPResponder: m.Flags&maps.EndpointARPResponder != 0, ContainerID: m.ContainerID, PodIfName: m.PodIfName,
		IfIndex: m.IfIndex, NodeMAC: m.NodeMAC, Policy: m.Flags&maps.EndpointPolicy != 0,
		ServiceBackend: m.Flags&maps.EndpointLBBackend != 0}
}

// named is publicEndpoint of m with the name of its host device, "" if
// the device is gone.
func (d *Datapath) named(m maps.Endpoint) (Endpoint, error) {
	h, err := routing.Handle(d.cfg.Netns)
	if err != nil {
		return Endpoint{}, err
	}
	defer h.Close()
	var name string
	l, err := h.LinkByIndex(m.IfIndex)
	switch {
	case err == nil:
		name = l.Attrs().Name
	case !errors.As(err, &netlink.LinkNotFoundError{}):
		return Endpoint{}, fmt.Errorf("endpoint %s's device %d: %w", m.IP, m.IfIndex, err)
	}
	return publicEndpoint(m, name), nil
}

// deviceNames maps the ifindexes of the node's network namespace to the
// devices' names.
func (d *Datapath) deviceNames() (map[int]string, error) {
	h, err := routing.Handle(d.cfg.Netns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := netlinksafe.LinkList(h)
	if err != nil {
		return nil, fmt.Errorf("list the node's devices: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return names, nil
}

// EndpointStats returns the counters of the endpoint with address ip.
func (d *Datapath) EndpointStats(ip netip.Addr) (EndpointStats, error) {
	var s EndpointStats
	err := d.read(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		s, err = d.stats.Get(ep.ID)
		return err
	})
	return s, err
}

// Attached tells whether program p (FromContainer or ToContainer) of the
// node's current load is attached to the host device of the endpoint with
// address ip: for checks such as CNI CHECK.
func (d *Datapath) Attached(ip netip.Addr, p Program) (bool, error) {
	var ok bool
	err := d.read(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		ok, err = d.node.Attached(d.cfg.Netns, ep.IfIndex, p)
		return err
	})
	return ok, err
}

// DeviceAttached tells whether program p (FromNetdev or ToNetdev) is
// attached to the node device with index ifindex (see Devices).
func (d *Datapath) DeviceAttached(ifindex int, p Program) (bool, error) {
	var ok bool
	err := d.read(func() (err error) {
		ok, err = d.node.Attached(d.cfg.Netns, ifindex, p)
		return err
	})
	return ok, err
}

// Devices returns the ifindexes of the node's devices toward other nodes.
func (d *Datapath) Devices() ([]int, error) {
	var devs []int
	err := d.read(func() (err error) {
		devs, err = d.node.Devices()
		return err
	})
	return devs, err
}

// Metrics returns the node-wide counters by direction and metric.
func (d *Datapath) Metrics() (*MetricTable, error) {
	var t *MetricTable
	err := d.read(func() (err error) {
		t, err = d.metrics.All()
		return err
	})
	return t, err
}

func (d *Datapath) attach(ifindex int) error {
	for _, p := range []Program{FromContainer, ToContainer} {
		if err := d.node.Attach(d.cfg.Netns, ifindex, p); err != nil {
			return err
		}
	}
	return nil
}

func (d *Datapath) detach(ifindex int) error {
	return errors.Join(
		d.node.Detach(d.cfg.Netns, ifindex, FromContainer),
		d.node.Detach(d.cfg.Netns, ifindex, ToContainer))
}
