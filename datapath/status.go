package datapath

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/internal/tables"
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
	Maps              []MapSize         // the node's maps: memory, entries and pressure
	Services          int               // service frontends
	SocketLB          string            // "Enabled", "Enabled (host namespace only)" or "Disabled"
	BackendSelection  string            // "Random" or "Maglev (table size M)"
	Masquerading      bool              // BPF masquerade of what leaves NativeRoutingCIDR
	Kernel            string            // the kernel's release (uname -r)
	Monitor           MonitorLevel      // which decisions are reported as events
	MonitorCapture    int               // bytes of each packet they carry
	GC                maps.GCStatus     // the conntrack GC's last pass (run by an agent: Datapath.GC)
	// Flows count, per class of flow table, the flows made, established
	// (moved where no flood evicts them), refused there (the table full)
	// and failed (dropped): see maps.FlowStats.
	Flows [maps.FlowClassCount]maps.FlowStats
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
	sizes, err := d.node.MapUsage()
	if err != nil {
		return Status{}, err
	}
	gc, err := tables.ReadGCStatus(d.node.Maps.GCStatus)
	if err != nil {
		return Status{}, err
	}
	flows, err := tables.ReadFlowStats(d.node.Maps.FlowStats)
	if err != nil {
		return Status{}, err
	}
	var mon bpf.HostroutingMonitorConfig
	if err := d.node.Maps.Monitor.Lookup(uint32(0), &mon); err != nil {
		return Status{}, fmt.Errorf("read monitor settings: %w", err)
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
		Maps:              mapSizes(sizes),
		Services:          countFrontends(services),
		SocketLB:          socketLB,
		Masquerading:      d.node.Masquerade,
		BackendSelection:  "Random",
		AttachMode:        "tc (clsact + cls_bpf)",
		Kernel:            kernelRelease(),
		Monitor:           monitorLevel(mon.Level),
		MonitorCapture:    int(mon.CapLen),
		GC:                gc,
		Flows:             flows,
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
		if addrs, err := netlinksafe.AddrList(h, link, netlink.FAMILY_V4); err == nil && len(addrs) > 0 {
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

// String formats s in the shape of `cilium status`; Verbose adds a line
// per feature and per map.
func (s Status) String() string { return s.format(false) }

// Verbose formats s as `cilium status --verbose`: String, with each
// kernel feature on a line of its own with the reason it is off, and
// each map with its entries, pressure and memory.
func (s Status) Verbose() string { return s.format(true) }

func (s Status) format(verbose bool) string {
	var b strings.Builder
	mode := s.HostRouting
	if s.LegacyReason != "" {
		mode += " (" + s.LegacyReason + ")"
	}
	fmt.Fprintf(&b, "Host Routing:     %s\n", mode)
	fmt.Fprintf(&b, "Attach Mode:      %s\n", s.AttachMode)
	fmt.Fprintf(&b, "Kernel:           %s\n", s.Kernel)
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
	features := features(s.Features)
	if verbose {
		fmt.Fprintf(&b, "Kernel Features:\n")
		for _, f := range features {
			fmt.Fprintf(&b, "  %-20s %s\n", f.name+":", f.state())
		}
	} else {
		parts := make([]string, len(features))
		for i, f := range features {
			parts[i] = f.name + ": " + f.state()
		}
		fmt.Fprintf(&b, "Kernel Features:  [%s]\n", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, "Endpoints:        %d\n", s.Endpoints)
	fmt.Fprintf(&b, "Monitor:          %s\n", s.monitor())
	fmt.Fprintf(&b, "Conntrack GC:     %s\n", s.gc())
	fmt.Fprintf(&b, "Flows:            %s\n", s.flows())
	fmt.Fprintf(&b, "Pin Path:         %s\n", s.PinPath)
	if len(s.Maps) > 0 {
		var total uint64
		var fullest MapSize
		for _, m := range s.Maps {
			total += m.Memory
			if isHash(m.Type) && m.Pressure() >= fullest.Pressure() {
				fullest = m
			}
		}
		fmt.Fprintf(&b, "BPF Maps:         %s in %d maps; fullest %s %.1f%% (%d of %d)\n",
			bytesString(total), len(s.Maps), fullest.Name, 100*fullest.Pressure(), fullest.Entries, fullest.MaxEntries)
		if verbose {
			for _, m := range s.Maps {
				fill := "-"
				if isHash(m.Type) {
					fill = fmt.Sprintf("%.1f%%", 100*m.Pressure())
				}
				fmt.Fprintf(&b, "  %-16s %10s  %8d of %8d entries  %6s\n", m.Name, bytesString(m.Memory), m.Entries, m.MaxEntries, fill)
			}
		}
	}
	return b.String()
}

// monitor says which events the node reports: "off", "drop (128 bytes
// of each packet)".
func (s Status) monitor() string {
	if s.Monitor == MonitorOff {
		return "off"
	}
	return fmt.Sprintf("%s (%d bytes of each packet)", s.Monitor, s.MonitorCapture)
}

// gc says how the conntrack GC fares: "12 passes, the last 4s ago (took
// 2ms), 340 entries removed, 0 failed".
func (s Status) gc() string {
	g := s.GC
	if g.Runs == 0 {
		return "never run (an agent runs Datapath.GC)"
	}
	line := fmt.Sprintf("%d passes, the last %s ago (took %s), %d entries removed, %d failed",
		g.Runs, time.Since(g.LastRun).Round(time.Second), g.LastDuration.Round(time.Microsecond),
		g.CTRemoved+g.SNATRemoved, g.Errors)
	if g.LastError != "" {
		line += "; last error: " + g.LastError
	}
	return line
}

// flows sums the flow statistics: "1200 made, 800 established, 0
// refused (table full), 0 failed".
func (s Status) flows() string {
	var t maps.FlowStats
	for _, f := range s.Flows {
		t.Created += f.Created
		t.Promoted += f.Promoted
		t.Refused += f.Refused
		t.Failed += f.Failed
	}
	return fmt.Sprintf("%d made, %d established, %d refused (table full), %d failed", t.Created, t.Promoted, t.Refused, t.Failed)
}

// isHash tells whether maps of type t hold what is put in them (their
// pressure means something; arrays are always full).
func isHash(t ebpf.MapType) bool {
	return t == ebpf.Hash || t == ebpf.LRUHash || t == ebpf.PerCPUHash || t == ebpf.LRUCPUHash
}

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return unix.ByteSliceToString(u.Release[:])
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

// feature is a kernel feature as status prints it.
type feature struct {
	name string
	loader.Feature
}

func (f feature) state() string {
	if f.Enabled {
		return "Enabled"
	}
	return "Disabled (" + f.Reason + ")"
}

func features(f loader.Features) []feature {
	return []feature{{"bpf_redirect_peer", f.RedirectPeer}, {"bpf_redirect_neigh", f.RedirectNeigh},
		{"bpf_fib_lookup", f.FIBLookup}, {"bpf_check_mtu", f.CheckMTU}, {"tcx", f.TCX}}
}

// MapSize is what one of the node's maps takes.
type MapSize struct {
	Name       string
	Type       ebpf.MapType
	MaxEntries uint32
	Memory     uint64 // bytes charged to the map (memlock), as the kernel reports it
	// Entries is how many entries a hash map holds, counted key by key
	// (an array always holds MaxEntries).
	Entries uint32
}

// Pressure is how full the map is, from 0 to 1 (Cilium's map pressure):
// Entries of MaxEntries.
func (s MapSize) Pressure() float64 {
	if s.MaxEntries == 0 {
		return 0
	}
	return float64(s.Entries) / float64(s.MaxEntries)
}

func mapSizes(usage []instance.MapSize) []MapSize {
	sizes := make([]MapSize, len(usage))
	for i, u := range usage {
		sizes[i] = MapSize(u)
	}
	return sizes
}

// MapUsage reports the node's maps with their memory and how full each
// is (MapSize.Pressure): hash maps counted key by key, one system call
// per entry (Status leaves it out).
func (d *Datapath) MapUsage() ([]MapSize, error) {
	var sizes []MapSize
	err := d.read(func() error {
		usage, err := d.node.MapUsage()
		sizes = mapSizes(usage)
		return err
	})
	return sizes, err
}
