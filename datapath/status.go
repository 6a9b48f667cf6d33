package datapath

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// Host routing modes, as `cilium status` names them.
const (
	HostRoutingBPF    = "BPF"
	HostRoutingLegacy = "Legacy"
)

// Status is what `cilium status` would say of the node's datapath.
type Status struct {
	HostRouting       string            // HostRoutingBPF or HostRoutingLegacy
	LegacyReason      string            // why not BPF, when Legacy
	AttachMode        string            // "tcx" or "tc (clsact + cls_bpf)"
	Features          loader.Features   // what the programs were loaded with
	Devices           []Device          // the node's devices toward other nodes
	NativeRoutingCIDR netip.Prefix      // invalid when none
	Endpoints         int               // endpoints on the node
	PinPath           string            // the node instance's pin directory
	Metrics           *maps.MetricTable // node-wide counters
	Maps              []loader.MapSize  // the node's maps and the memory they take
	Services          int               // service frontends
	SocketLB          string            // "Enabled", "Enabled (host namespace only)" or "Disabled"
	BackendSelection  string            // "Random" or "Maglev (table size M)"
	Masquerading      bool              // BPF masquerade of what leaves NativeRoutingCIDR
}

// Device is one of the node's devices toward other nodes.
type Device struct {
	Name string
	IP   netip.Addr // its first IPv4 address
}

// Status reports the datapath's mode, features and size.
func (d *Datapath) Status() (Status, error) {
	var s Status
	err := d.read(func() (err error) {
		s, err = d.status()
		return err
	})
	return s, err
}

func (d *Datapath) status() (Status, error) {
	eps, err := d.endpoints.List()
	if err != nil {
		return Status{}, err
	}
	metrics, err := d.metrics.All()
	if err != nil {
		return Status{}, err
	}
	devices, err := d.devices()
	if err != nil {
		return Status{}, err
	}
	sizes, err := d.node.MapSizes()
	if err != nil {
		return Status{}, err
	}
	services, err := d.services.List()
	if err != nil {
		return Status{}, err
	}
	socketLB := "Disabled"
	if d.node.CgroupAttached() {
		socketLB = "Enabled"
		if d.node.SocketLBHostnsOnly {
			socketLB += " (host namespace only)"
		}
	}
	s := Status{
		Features:          d.node.Features,
		Devices:           devices,
		NativeRoutingCIDR: d.node.NativeRoutingCIDR,
		Endpoints:         len(eps),
		PinPath:           d.cfg.PinPath,
		Metrics:           metrics,
		Maps:              sizes,
		Services:          countFrontends(services),
		SocketLB:          socketLB,
		Masquerading:      d.node.Masquerade,
		BackendSelection:  "Random",
		AttachMode:        "tc (clsact + cls_bpf)",
	}
	if s.Features.TCX.Enabled {
		s.AttachMode = "tcx"
	}
	if m := d.node.MaglevTableSize; m > 0 {
		s.BackendSelection = fmt.Sprintf("Maglev (table size %d)", m)
	}
	s.HostRouting, s.LegacyReason = hostRouting(s.Features)
	return s, nil
}

// devices names the node's recorded devices in its netns.
func (d *Datapath) devices() ([]Device, error) {
	ifindexes, err := d.node.Devices()
	if err != nil || len(ifindexes) == 0 {
		return nil, err
	}
	h, err := routing.Handle(d.cfg.Netns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var devs []Device
	for _, ifindex := range ifindexes {
		link, err := h.LinkByIndex(ifindex)
		if err != nil {
			devs = append(devs, Device{Name: fmt.Sprintf("ifindex %d (gone)", ifindex)})
			continue
		}
		dev := Device{Name: link.Attrs().Name}
		if addrs, err := h.AddrList(link, netlink.FAMILY_V4); err == nil && len(addrs) > 0 {
			dev.IP, _ = netip.AddrFromSlice(addrs[0].IP.To4())
		}
		devs = append(devs, dev)
	}
	return devs, nil
}

// hostRouting decides the mode from the features the programs use: BPF
// host routing needs all three helpers, as in Cilium.
func hostRouting(f loader.Features) (mode, reason string) {
	for _, x := range []struct {
		name string
		f    loader.Feature
	}{{"bpf_redirect_peer", f.RedirectPeer}, {"bpf_redirect_neigh", f.RedirectNeigh}, {"bpf_fib_lookup", f.FIBLookup}} {
		if !x.f.Enabled {
			return HostRoutingLegacy, x.name + ": " + x.f.Reason
		}
	}
	return HostRoutingBPF, ""
}

// String formats s in the shape of `cilium status`.
func (s Status) String() string {
	var b strings.Builder
	mode := s.HostRouting
	if s.LegacyReason != "" {
		mode += " (" + s.LegacyReason + ")"
	}
	fmt.Fprintf(&b, "Host Routing:     %s\n", mode)
	fmt.Fprintf(&b, "Attach Mode:      %s\n", s.AttachMode)
	if len(s.Devices) > 0 {
		devs := make([]string, len(s.Devices))
		for i, d := range s.Devices {
			devs[i] = fmt.Sprintf("%s %s (Direct Routing)", d.Name, d.IP)
		}
		fmt.Fprintf(&b, "Devices:          [%s]\n", strings.Join(devs, ", "))
	}
	if s.NativeRoutingCIDR.IsValid() {
		fmt.Fprintf(&b, "Native Routing:   %s\n", s.NativeRoutingCIDR)
	}
	devs := make([]string, len(s.Devices))
	for i, d := range s.Devices {
		devs[i] = d.Name
	}
	fmt.Fprintf(&b, "KubeProxyReplacement: True [%s] (%d services; Socket LB: %s; Backend Selection: %s)\n",
		strings.Join(devs, ", "), s.Services, s.SocketLB, s.BackendSelection)
	if s.Masquerading {
		fmt.Fprintf(&b, "Masquerading:     BPF [%s] %s\n", strings.Join(devs, ", "), s.NativeRoutingCIDR)
	} else {
		fmt.Fprintf(&b, "Masquerading:     Disabled\n")
	}
	fmt.Fprintf(&b, "Kernel Features:  %s\n", featureList(s.Features))
	fmt.Fprintf(&b, "Endpoints:        %d\n", s.Endpoints)
	fmt.Fprintf(&b, "Pin Path:         %s\n", s.PinPath)
	if len(s.Maps) > 0 {
		var total uint64
		for _, m := range s.Maps {
			total += m.Memory
		}
		fmt.Fprintf(&b, "BPF Maps:         %s\n", bytesString(total))
		for _, m := range s.Maps {
			fmt.Fprintf(&b, "  %-16s %10s  %6d entries\n", m.Name, bytesString(m.Memory), m.MaxEntries)
		}
	}
	return b.String()
}

// countFrontends counts the services (frontends of the external scope).
func countFrontends(entries []maps.ServiceEntry) int {
	n := 0
	for _, e := range entries {
		if e.Frontend.Scope == maps.ScopeExternal {
			n++
		}
	}
	return n
}

// bytesString formats n bytes as "1.5 MiB".
func bytesString(n uint64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func featureList(f loader.Features) string {
	var parts []string
	for _, x := range []struct {
		name string
		f    loader.Feature
	}{{"bpf_redirect_peer", f.RedirectPeer}, {"bpf_redirect_neigh", f.RedirectNeigh}, {"bpf_fib_lookup", f.FIBLookup}, {"bpf_check_mtu", f.CheckMTU}, {"tcx", f.TCX}} {
		state := "Enabled"
		if !x.f.Enabled {
			state = "Disabled (" + x.f.Reason + ")"
		}
		parts = append(parts, x.name+": "+state)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// MapUsage reports the node's maps with their memory and how full each
// is (loader.MapSize.Pressure): hash maps counted key by key, one system
// call per entry (Status leaves it out).
func (d *Datapath) MapUsage() ([]loader.MapSize, error) {
	var sizes []loader.MapSize
	err := d.read(func() (err error) {
		sizes, err = d.node.MapUsage()
		return err
	})
	return sizes, err
}
