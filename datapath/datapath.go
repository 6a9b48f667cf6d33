// Package datapath is what an embedding CNI or node agent uses: one
// Datapath per node, created with New, with endpoints (pods) added and
// removed as they come and go. It composes the loader (programs, pins,
// attachments), the typed maps and the routing helpers.
package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// Config configures a node's datapath.
type Config struct {
	// PinPath is the node instance's directory on a bpf filesystem, where
	// maps, programs and links are pinned. Default loader.DefaultPinPath.
	PinPath string
	// Netns is the node's network namespace (a path such as
	// /var/run/netns/node1); empty for the caller's own.
	Netns string
	// MaxEndpoints sizes the endpoint map. Default
	// loader.DefaultMaxEndpoints.
	MaxEndpoints uint32
	// Disable forces fallbacks the kernel would not need.
	Disable loader.Disable
	// RequireBPFHostRouting makes New fail with ErrLegacyHostRouting
	// instead of falling back when BPF host routing is not possible.
	RequireBPFHostRouting bool
	// Devices are the node's devices toward other nodes (eth0):
	// from-netdev and to-netdev attach to them. Empty leaves the devices
	// a node was started with as they are.
	Devices []string
	// NativeRoutingCIDR holds the pods of all nodes (e.g. 10.0.0.0/8):
	// packets from pods to it that are not for this node leave by
	// bpf_fib_lookup and bpf_redirect(_neigh), past the stack; packets
	// elsewhere take the stack. Invalid (zero) keeps the one a running
	// node has, or none.
	NativeRoutingCIDR netip.Prefix
}

var (
	// ErrLegacyHostRouting is returned by New when Config asks for BPF
	// host routing and the kernel or the config rules it out.
	ErrLegacyHostRouting = errors.New("BPF host routing not possible")
	// ErrEndpointExists is returned when an address belongs to an
	// endpoint on another device already.
	ErrEndpointExists = errors.New("endpoint exists")
)

// Datapath is the host-routing datapath of one node. Its methods may be
// called from several goroutines and processes: changes serialise on the
// lock of the pin directory.
type Datapath struct {
	cfg       Config
	node      *loader.Instance
	endpoints *maps.Endpoints
	stats     *maps.Stats
	metrics   *maps.Metrics
	nodes     *maps.Nodes
}

// New loads the datapath for the node described by cfg, or adopts the one
// pinned at cfg.PinPath by an earlier or concurrent process; traffic
// through an adopted datapath never stops.
func New(cfg Config) (*Datapath, error) {
	if cfg.PinPath == "" {
		cfg.PinPath = loader.DefaultPinPath
	}
	if cfg.RequireBPFHostRouting {
		if mode, why := hostRouting(loader.ProbeFeatures(cfg.Disable)); mode != HostRoutingBPF {
			return nil, fmt.Errorf("%w: %s", ErrLegacyHostRouting, why)
		}
	}
	devices, err := deviceIndexes(cfg.Netns, cfg.Devices)
	if err != nil {
		return nil, err
	}
	if !cfg.NativeRoutingCIDR.IsValid() {
		if running, err := loader.Open(cfg.PinPath); err == nil {
			cfg.NativeRoutingCIDR = running.NativeRoutingCIDR
			running.Close()
		}
	}
	node, err := loader.Load(loader.Options{PinPath: cfg.PinPath, MaxEndpoints: cfg.MaxEndpoints,
		Disable: cfg.Disable, NativeRoutingCIDR: cfg.NativeRoutingCIDR})
	if err != nil {
		return nil, err
	}
	d := newDatapath(cfg, node)
	err = d.locked(func() error {
		if node.Replaced {
			if err := d.reattach(); err != nil {
				return err
			}
		}
		if len(devices) != 0 {
			if err := d.attachDevices(devices); err != nil {
				return err
			}
			if err := node.SetDevices(devices); err != nil {
				return err
			}
		}
		return node.ReleaseStale()
	})
	if err != nil {
		node.Close()
		return nil, err
	}
	return d, nil
}

// Open adopts the datapath pinned at pinPath for the node whose network
// namespace is at netns ("" for the caller's), without loading or
// attaching anything: for tools and for CNI DEL and CHECK, which must not
// start a node that is not there. A missing pin path gives an error
// wrapping os.ErrNotExist, one without a node loader.ErrNoNode.
func Open(pinPath, netns string) (*Datapath, error) {
	if pinPath == "" {
		pinPath = loader.DefaultPinPath
	}
	node, err := loader.Open(pinPath)
	if err != nil {
		return nil, err
	}
	return newDatapath(Config{PinPath: pinPath, Netns: netns, NativeRoutingCIDR: node.NativeRoutingCIDR}, node), nil
}

func newDatapath(cfg Config, node *loader.Instance) *Datapath {
	return &Datapath{
		cfg:       cfg,
		node:      node,
		endpoints: maps.NewEndpoints(node.Maps.Endpoints, node.Maps.Endpoints6, node.Maps.Devices, node.Maps.DeviceSlots),
		stats:     maps.NewStats(node.Maps.EndpointStats),
		metrics:   maps.NewMetrics(node.Maps.Metrics),
		nodes:     maps.NewNodes(node.Maps.Nodes),
	}
}

// reattach renews every endpoint's and device's attachments with the
// node's programs, after they were replaced by another version or config.
func (d *Datapath) reattach() error {
	eps, err := d.endpoints.List()
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if err := d.attach(ep.IfIndex); err != nil {
			return fmt.Errorf("renew endpoint %s: %w", ep.IP, err)
		}
	}
	devices, err := d.node.Devices()
	if err != nil {
		return err
	}
	return d.attachDevices(devices)
}

// deviceIndexes resolves the node's device names in its netns.
func deviceIndexes(netns string, names []string) ([]int, error) {
	var idx []int
	for _, name := range names {
		ifindex, _, err := hostDevice(netns, name)
		if err != nil {
			return nil, fmt.Errorf("node device: %w", err)
		}
		idx = append(idx, ifindex)
	}
	return idx, nil
}

func (d *Datapath) attachDevices(ifindexes []int) error {
	for _, ifindex := range ifindexes {
		for _, p := range []loader.Program{loader.FromNetdev, loader.ToNetdev} {
			if err := d.node.Attach(d.cfg.Netns, ifindex, p); err != nil {
				return fmt.Errorf("node device: %w", err)
			}
		}
	}
	return nil
}

// Endpoint describes a pod interface to put on the datapath.
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
}

// AddEndpoint puts ep on the datapath: its facts into the endpoint map and
// from-container/to-container onto its host-side device. Adding the same
// endpoint again is a no-op update. On error nothing of ep is left behind.
func (d *Datapath) AddEndpoint(ep Endpoint) (maps.Endpoint, error) {
	var added maps.Endpoint
	err := d.locked(func() error {
		var err error
		added, err = d.addEndpoint(ep)
		return err
	})
	if err != nil {
		return maps.Endpoint{}, fmt.Errorf("add endpoint %s on %q: %w", ep.IP, ep.IfName, err)
	}
	return added, nil
}

func (d *Datapath) addEndpoint(ep Endpoint) (maps.Endpoint, error) {
	if !ep.IP.IsValid() {
		return maps.Endpoint{}, errors.New("no IP address")
	}
	if !ep.IP.Is4() {
		return maps.Endpoint{}, fmt.Errorf("address %s: want IPv4 in IP (IPv6 goes in IPv6)", ep.IP)
	}
	if ep.IPv6.IsValid() && (!ep.IPv6.Is6() || ep.IPv6.Is4In6() || ep.IPv6.Zone() != "" || ep.IPv6.IsLinkLocalUnicast()) {
		return maps.Endpoint{}, fmt.Errorf("IPv6 address %s: want a global or unique-local IPv6 address", ep.IPv6)
	}
	if len(ep.MAC) != 6 {
		return maps.Endpoint{}, fmt.Errorf("pod MAC %q: want 6 bytes", ep.MAC)
	}
	maxID := d.maxEndpoints()
	if int(ep.ID) > maxID {
		return maps.Endpoint{}, fmt.Errorf("endpoint ID %d: the node's endpoint IDs run from 1 to %d (MaxEndpoints)", ep.ID, maxID)
	}
	ifindex, nodeMAC, err := hostDevice(d.cfg.Netns, ep.IfName)
	if err != nil {
		return maps.Endpoint{}, err
	}
	if len(nodeMAC) != 6 {
		return maps.Endpoint{}, fmt.Errorf("host device %q has no Ethernet address", ep.IfName)
	}
	m := maps.Endpoint{IP: ep.IP, IPv6: ep.IPv6, IfIndex: ifindex, ID: ep.ID, MAC: ep.MAC, NodeMAC: nodeMAC}
	if ep.ARPResponder {
		m.Flags |= maps.EndpointARPResponder
	}

	all, err := d.endpoints.List()
	if err != nil {
		return maps.Endpoint{}, err
	}
	var existing *maps.Endpoint
	for i, other := range all {
		switch {
		case other.IfIndex == m.IfIndex && other.IP != m.IP:
			return maps.Endpoint{}, fmt.Errorf("%w: device %q carries endpoint %s (one endpoint per device)", ErrEndpointExists, ep.IfName, other.IP)
		case other.IfIndex == m.IfIndex:
			existing = &all[i]
		case other.IP == m.IP:
			return maps.Endpoint{}, fmt.Errorf("%w: %s is on ifindex %d", ErrEndpointExists, other.IP, other.IfIndex)
		case m.IPv6.IsValid() && other.IPv6 == m.IPv6:
			return maps.Endpoint{}, fmt.Errorf("%w: %s is on ifindex %d", ErrEndpointExists, other.IPv6, other.IfIndex)
		case m.ID != 0 && other.ID == m.ID:
			return maps.Endpoint{}, fmt.Errorf("%w: ID %d belongs to %s", ErrEndpointExists, m.ID, other.IP)
		}
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
		if m.ID, err = freeID(all, maxID); err != nil {
			return maps.Endpoint{}, err
		}
	}

	if existing == nil || existing.ID != m.ID {
		if err := d.stats.Reset(m.ID); err != nil {
			return maps.Endpoint{}, err
		}
	}
	if existing != nil && existing.ID != m.ID {
		// The new ID's slot must not inherit a policy of an old endpoint.
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
// map entries, counters and attachments. The host device may be gone
// already. Removing an unknown address returns an error wrapping
// maps.ErrNotFound.
func (d *Datapath) RemoveEndpoint(ip netip.Addr) error {
	err := d.locked(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		return errors.Join(d.detach(ep.IfIndex), d.endpoints.Delete(ep), d.node.ClearPolicy(ep.ID), d.stats.Reset(ep.ID))
	})
	if err != nil {
		return fmt.Errorf("remove endpoint %s: %w", ip, err)
	}
	return nil
}

// Endpoints lists the node's endpoints, ordered by address.
func (d *Datapath) Endpoints() ([]maps.Endpoint, error) {
	return d.endpoints.List()
}

// Attached tells whether program p is attached to the device with index
// ifindex in the node's netns: for checks such as CNI CHECK.
func (d *Datapath) Attached(ifindex int, p loader.Program) (bool, error) {
	return d.node.Attached(d.cfg.Netns, ifindex, p)
}

// Devices returns the ifindexes of the node's devices toward other nodes.
func (d *Datapath) Devices() ([]int, error) {
	return d.node.Devices()
}

// Endpoint returns the endpoint with address ip.
func (d *Datapath) Endpoint(ip netip.Addr) (maps.Endpoint, error) {
	return d.endpoints.Lookup(ip)
}

// EndpointStats returns the counters of the endpoint with address ip.
func (d *Datapath) EndpointStats(ip netip.Addr) (maps.EndpointStats, error) {
	ep, err := d.endpoints.Lookup(ip)
	if err != nil {
		return maps.EndpointStats{}, err
	}
	return d.stats.Get(ep.ID)
}

// Metrics returns the node-wide counters by direction and metric.
func (d *Datapath) Metrics() (*maps.MetricTable, error) {
	return d.metrics.All()
}

// Close releases this process's handles. The datapath keeps running from
// its pins: endpoints keep their routing, and a later New adopts it.
func (d *Datapath) Close() error {
	return d.node.Close()
}

// Remove tears the node's datapath down: every endpoint's and device's
// attachments, the routes to other nodes, then programs, maps and the pin
// directory. Pods fall back to the kernel's routing.
func (d *Datapath) Remove() error {
	if _, err := os.Stat(d.node.PinPath); errors.Is(err, os.ErrNotExist) {
		return d.node.Close() // removed by another process already
	}
	err := d.locked(func() error {
		eps, err := d.endpoints.List()
		if err != nil {
			return err
		}
		var errs []error
		for _, ep := range eps {
			errs = append(errs, d.detach(ep.IfIndex))
		}
		nodes, err := d.listNodes()
		errs = append(errs, err)
		for _, n := range nodes {
			errs = append(errs, d.deleteNode(n))
		}
		devices, err := d.node.Devices()
		errs = append(errs, err)
		for _, ifindex := range devices {
			for _, p := range []loader.Program{loader.FromNetdev, loader.ToNetdev} {
				errs = append(errs, d.node.Detach(d.cfg.Netns, ifindex, p))
			}
		}
		return errors.Join(errs...)
	})
	return errors.Join(err, d.node.Remove())
}

func (d *Datapath) attach(ifindex int) error {
	for _, p := range []loader.Program{loader.FromContainer, loader.ToContainer} {
		if err := d.node.Attach(d.cfg.Netns, ifindex, p); err != nil {
			return err
		}
	}
	return nil
}

func (d *Datapath) detach(ifindex int) error {
	return errors.Join(
		d.node.Detach(d.cfg.Netns, ifindex, loader.FromContainer),
		d.node.Detach(d.cfg.Netns, ifindex, loader.ToContainer))
}

// hostDevice finds a device in the node's netns.
func hostDevice(netns, ifname string) (ifindex int, mac net.HardwareAddr, err error) {
	if ifname == "" {
		return 0, nil, errors.New("no host device name")
	}
	h, err := routing.Handle(netns)
	if err != nil {
		return 0, nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return 0, nil, fmt.Errorf("host device %q: %w", ifname, err)
	}
	return l.Attrs().Index, l.Attrs().HardwareAddr, nil
}

// locked runs fn holding the pin directory's lock.
func (d *Datapath) locked(fn func() error) error {
	lock, err := loader.LockPinPath(d.node.PinPath)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	return fn()
}

// PolicyMapReplacements are the maps an ingress policy program must be
// loaded with (ebpf.CollectionOptions.MapReplacements), so that it can hand
// its verdict back to the datapath; see SetIngressPolicy.
func (d *Datapath) PolicyMapReplacements() map[string]*ebpf.Map {
	return d.node.PolicyMapReplacements()
}

// SetIngressPolicy puts prog into the ingress policy slot of the endpoint
// with address ip: every IP packet into the endpoint passes it, on the BPF
// path (just before bpf_redirect_peer, also for packets from other nodes)
// and on the stack's (to-container). prog is a SchedCLS program written
// against bpf/include/hostrouting/policy.h — it reads the endpoint IDs from
// skb->cb and ends with hr_policy_allow or hr_policy_deny — and loaded with
// PolicyMapReplacements. A denied packet is counted as maps.MetricDropPolicy
// and in the endpoint's drop counters. The slot is a tail call
// (hr_policy, by endpoint ID): endpoints without a policy pay nothing. The
// policy stays in force after Close and across adoption and reloads,
// until ClearIngressPolicy or the endpoint's removal; prog may be closed.
func (d *Datapath) SetIngressPolicy(ip netip.Addr, prog *ebpf.Program) error {
	err := d.locked(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		if err := d.node.SetPolicy(ep.ID, prog); err != nil {
			return err
		}
		ep.Flags |= maps.EndpointPolicy
		return d.endpoints.Put(ep)
	})
	if err != nil {
		return fmt.Errorf("set ingress policy of %s: %w", ip, err)
	}
	return nil
}

// ClearIngressPolicy empties the ingress policy slot of the endpoint with
// address ip: all traffic into it is allowed again.
func (d *Datapath) ClearIngressPolicy(ip netip.Addr) error {
	err := d.locked(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		ep.Flags &^= maps.EndpointPolicy
		if err := d.endpoints.Put(ep); err != nil {
			return err
		}
		return d.node.ClearPolicy(ep.ID)
	})
	if err != nil {
		return fmt.Errorf("clear ingress policy of %s: %w", ip, err)
	}
	return nil
}
