// Package datapath is what an embedding CNI or node agent uses: one
// Datapath per node, created with New, with endpoints (pods) added and
// removed as they come and go. It composes the loader (programs, pins,
// attachments), the typed maps and the routing helpers, and re-exports
// the names of theirs an embedder needs, so that the common path takes
// this one import.
//
// A node's datapath is shared by every process that works on it — an
// agent, each CNI call, hrctl — through its pins. Changes serialise on a
// lock of the pin directory, and every change first checks that the node
// is still the one the handle opened (re-adopting it after another
// process reloaded it) and completes a reload that a process left half
// done: whatever crashed where, the next call repairs it.
package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
	"github.com/hostrouting/hostrouting/routing"
)

// Config configures a node's datapath.
type Config struct {
	// PinPath is the node instance's directory on a bpf filesystem, where
	// maps, programs and links are pinned: a new or empty directory below
	// the bpffs root (never the root itself), or one a node instance
	// pinned. Default loader.DefaultPinPath.
	PinPath string
	// Netns is the node's network namespace (a path such as
	// /var/run/netns/node1); empty for this process's, the one it started
	// in (see routing.Do), whichever namespace the calling thread is in. A
	// node instance belongs to one namespace: another is refused.
	Netns string
	// MaxEndpoints is the node's endpoint limit, at most
	// loader.MaxEndpointsLimit. Zero takes the running node's, or
	// loader.DefaultMaxEndpoints for a new one.
	MaxEndpoints uint32
	// MaxFlows and MaxServices size the tables of translated flows and of
	// services (loader.ServiceBackendSlots backends per service on
	// average). Zero takes the running node's, or the loader's defaults
	// for a new one.
	MaxFlows, MaxServices uint32
	// Disable forces fallbacks the kernel would not need.
	Disable Disable
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
	// DisableMasquerade turns BPF masquerade off. It is on for a node with
	// Devices and a NativeRoutingCIDR: pods' traffic leaving the native
	// routing CIDR takes the address of the device it leaves by, and is
	// carried by BPF both ways. A config without Devices keeps what the
	// running node does.
	DisableMasquerade bool
	// NATPorts is the range of ports translated sources get; zero keeps
	// the running node's, or loader.DefaultNATPorts.
	NATPorts [2]uint16
	// CgroupPath is the cgroup v2 directory whose processes' sockets get
	// socket-level load balancing: a socket that connects or sends to a
	// service frontend gets a backend at connect time, so its packets need
	// no translation. For a whole node, the cgroup2 root
	// (loader.Cgroup2Root, as Cilium attaches); empty leaves it as it is
	// (none for a new node: the tc load balancer serves every pod).
	// SetSocketLB moves it later.
	CgroupPath string
	// MaglevTableSize makes the node choose service backends by Maglev
	// hashing, with tables of this prime size (nat.DefaultTableSize,
	// 16381, as Cilium): every node then sends a flow to the same backend,
	// and losing one of N backends moves about 1/N of the flows. Zero keeps
	// the running node's choice, random for a new node. A running node
	// changes size, or turns Maglev on or off (Replace), in place: its
	// services get new tables before the reloaded programs run.
	MaglevTableSize uint32
	// SocketLBHostnsOnly limits socket LB to the sockets of the node's own
	// network namespace, leaving pods to the tc load balancer (Cilium's
	// bpf-lb-sock-hostns-only, which service meshes need). A config
	// without Devices keeps what the running node does.
	SocketLBHostnsOnly bool
	// ServiceCIDR holds the node's ClusterIPs (the API server's
	// --service-cluster-ip-range, e.g. 10.96.0.0/12): a pod's packet or
	// a socket's connect to an address in it that no service has, or to a
	// port its service lacks, is rejected as kube-proxy does, rather than
	// sent out by the default route. Invalid (zero) keeps the running
	// node's, or none.
	ServiceCIDR netip.Prefix
	// NoBackendResponse is what the datapath does with a packet for a
	// service without usable backends (none, only not-ready or
	// terminating ones): Cilium's service-no-backend-response. Zero keeps
	// the running node's, NoBackendReject for a new node.
	NoBackendResponse NoBackendResponse
	// Replace makes this config what the node runs, zero fields included:
	// on a running node a zero NativeRoutingCIDR, ServiceCIDR, NATPorts,
	// MaglevTableSize or NoBackendResponse then means what it means for a
	// new node (none, the default range, random backends, reject), and
	// masquerade and SocketLBHostnsOnly are as the config says, Devices
	// or not. Without it, those zero fields keep what the running node has
	// (so a CNI plugin's config names only what it knows). Sizes
	// (MaxEndpoints, MaxFlows, MaxServices), Devices and CgroupPath keep
	// the running node's when zero either way.
	Replace bool
}

// NoBackendResponse is what a packet for a service without usable
// backends gets.
type NoBackendResponse uint8

// Responses to a packet for a service without usable backends.
const (
	// NoBackendReject answers it with ICMP port unreachable from the
	// frontend (rate-limited, 1000 per second and CPU), and fails a
	// socket-LB socket's connect or sendmsg with ECONNREFUSED at once:
	// what kube-proxy's REJECT rules do.
	NoBackendReject NoBackendResponse = iota + 1
	// NoBackendDrop drops it: the sender times out.
	NoBackendDrop
)

// Names of the loader and maps packages an embedder uses with a Datapath:
// the same types under datapath's names, so that one import is enough.
// Their fields are shown here, as go doc shows no alias's.
type (
	// Disable forces fallbacks (loader.Disable):
	//
	//	type Disable struct {
	//		RedirectPeer  bool // deliver to local pods with bpf_redirect to the host device
	//		RedirectNeigh bool // resolve next hops with bpf_fib_lookup and bpf_redirect only
	//		FIBLookup     bool // leave forwarding off the node to the kernel's stack
	//		TCX           bool // attach with clsact qdiscs and cls_bpf filters
	//	}
	Disable = loader.Disable
	// Features are the kernel features a node runs with (loader.Features):
	//
	//	type Features struct {
	//		RedirectPeer  Feature // bpf_redirect_peer
	//		RedirectNeigh Feature // bpf_redirect_neigh
	//		FIBLookup     Feature // bpf_fib_lookup
	//		TCX           Feature // tcx links (else clsact + cls_bpf)
	//		CheckMTU      Feature // bpf_check_mtu (else unresolved next hops go by the stack)
	//	}
	Features = loader.Features
	// Feature is one of them, with the reason it is on or off
	// (loader.Feature):
	//
	//	type Feature struct {
	//		Enabled bool
	//		Reason  string
	//	}
	Feature = loader.Feature
	// Program names a datapath program by where it sits (loader.Program):
	// FromContainer, ToContainer, FromNetdev, ToNetdev below.
	Program = loader.Program
	// EndpointStats are an endpoint's counters (maps.EndpointStats):
	// "from" is what the pod sent, "to" what was delivered into it.
	//
	//	type EndpointStats struct {
	//		FromPackets, FromBytes uint64
	//		ToPackets, ToBytes     uint64
	//		DropPackets, DropBytes uint64
	//	}
	EndpointStats = maps.EndpointStats
	// MetricTable holds the node-wide counters by direction and outcome
	// (maps.MetricTable, [maps.DirectionCount][maps.MetricCount]maps.Counter,
	// each Counter {Packets, Bytes uint64}): Total(metric) sums a metric
	// over the directions, Sub(earlier) gives a delta, Each visits every
	// non-zero counter with its Direction and Metric (both print their
	// Cilium-style names).
	MetricTable = maps.MetricTable
	// GCOptions configure the GC that Datapath.GC returns (nat.Options):
	//
	//	type Options struct {
	//		// Timeouts bound entries' lifetimes; zero fields take
	//		// nat.DatapathTimeouts'.
	//		Timeouts Timeouts
	//		// OnPass, if set, is called after each pass (Collect, Run,
	//		// Start) with that pass's figures (and its error in LastError).
	//		OnPass func(pass Stats)
	//	}
	GCOptions = nat.Options
)

// The datapath's programs.
const (
	FromContainer = loader.FromContainer
	ToContainer   = loader.ToContainer
	FromNetdev    = loader.FromNetdev
	ToNetdev      = loader.ToNetdev
)

var (
	// ErrLegacyHostRouting is returned by New when Config asks for BPF
	// host routing and the kernel or the config rules it out.
	ErrLegacyHostRouting = errors.New("BPF host routing not possible")
	// ErrEndpointExists is returned when an address, ID or device belongs
	// to another live endpoint.
	ErrEndpointExists = errors.New("endpoint exists")
	// ErrClosed is returned by a Datapath's methods after Close or Remove.
	ErrClosed = errors.New("datapath closed")
	// ErrRemoved is returned when the node was removed (by another
	// process): nothing is made again behind its back.
	ErrRemoved = errors.New("node removed")
	// ErrNotFound is returned for an endpoint or node the datapath does
	// not have (maps.ErrNotFound).
	ErrNotFound = maps.ErrNotFound
	// ErrMapFull is returned when a map has no room (maps.ErrMapFull).
	ErrMapFull = maps.ErrMapFull
)

// The errors of a node's loading and pins, as loader names them:
// errors.Is works against either name.
var (
	// ErrNoNode is returned by Open for a pin directory that holds no
	// node.
	ErrNoNode = loader.ErrNoNode
	// ErrOtherNetns is returned for a pin path whose node belongs to
	// another network namespace.
	ErrOtherNetns = loader.ErrOtherNetns
	// ErrNotBPFFS is returned when a pin path is not on a bpf filesystem.
	ErrNotBPFFS = loader.ErrNotBPFFS
	// ErrPartialPins is returned for a pin directory that lacks some of a
	// node's pins (removed by hand) which cannot be found again.
	ErrPartialPins = loader.ErrPartialPins
	// ErrForeignPinPath is returned for a pin path that is the bpf
	// filesystem's root or holds files that are not a node's.
	ErrForeignPinPath = loader.ErrForeignPinPath
	// ErrOtherInstance is returned for a device that runs the datapath of
	// another node instance (another pin path).
	ErrOtherInstance = loader.ErrOtherInstance
	// ErrStale is returned when another process reloaded the node with
	// other code or config meanwhile: open it again.
	ErrStale = loader.ErrStale
	// ErrPolicyNotLinked is returned by SetIngressPolicy for a program not
	// loaded with PolicyMapReplacements.
	ErrPolicyNotLinked = loader.ErrPolicyNotLinked
)

// Datapath is the host-routing datapath of one node. Its methods may be
// called from several goroutines and processes.
type Datapath struct {
	mu        sync.Mutex // guards everything below
	closed    bool
	cfg       Config
	node      *instance.Instance
	endpoints *tables.Endpoints
	stats     *tables.Stats
	metrics   *tables.Metrics
	nodes     *tables.Nodes
	services  *tables.Services
	flows     *nat.GC // flushes the flows of endpoints and backends that go
}

// New loads the datapath for the node described by cfg, or adopts the one
// pinned at cfg.PinPath by an earlier or concurrent process; traffic
// through an adopted datapath never stops. The config is checked before
// anything is loaded. A reload (other code or config) renews every
// attachment before New returns; if a process died half-way through one,
// New finishes it.
func New(cfg Config) (*Datapath, error) {
	devices, err := cfg.check()
	if err != nil {
		return nil, fmt.Errorf("datapath config: %w", err)
	}
	masquerade := len(devices) > 0 && cfg.NativeRoutingCIDR.IsValid()
	hostnsOnly := cfg.SocketLBHostnsOnly
	maglev := cfg.MaglevTableSize
	if running, err := instance.Open(cfg.PinPath); err == nil && cfg.Replace {
		running.Close()
	} else if err == nil {
		if !cfg.NativeRoutingCIDR.IsValid() {
			cfg.NativeRoutingCIDR = running.NativeRoutingCIDR
		}
		if len(devices) == 0 {
			masquerade, hostnsOnly = running.Masquerade, running.SocketLBHostnsOnly
		}
		if cfg.NATPorts == [2]uint16{} {
			cfg.NATPorts = running.NATPorts
		}
		if maglev == 0 {
			maglev = running.MaglevTableSize
		}
		if !cfg.ServiceCIDR.IsValid() {
			cfg.ServiceCIDR = running.ServiceCIDR
		}
		if cfg.NoBackendResponse == 0 && running.NoBackendDrop {
			cfg.NoBackendResponse = NoBackendDrop
		}
		running.Close()
	}
	node, err := instance.Load(instance.Options{PinPath: cfg.PinPath, Netns: cfg.Netns, MaxEndpoints: cfg.MaxEndpoints,
		MaxFlows: cfg.MaxFlows, MaxServices: cfg.MaxServices,
		Disable: cfg.Disable, NativeRoutingCIDR: cfg.NativeRoutingCIDR,
		Masquerade: masquerade && !cfg.DisableMasquerade, NATPorts: cfg.NATPorts, SocketLBHostnsOnly: hostnsOnly,
		MaglevTableSize: maglev, ServiceCIDR: cfg.ServiceCIDR, NoBackendDrop: cfg.NoBackendResponse == NoBackendDrop})
	if err != nil {
		return nil, err
	}
	d := newDatapath(cfg, node)
	err = d.locked(func() error {
		if cfg.CgroupPath != "" {
			if err := d.node.AttachCgroup(cfg.CgroupPath); err != nil {
				return err
			}
		}
		if len(devices) == 0 {
			return nil
		}
		if err := d.node.SetDevices(devices); err != nil {
			return err
		}
		if err := d.setNodeAddrs(devices); err != nil {
			return err
		}
		return d.attachDevices(devices)
	})
	if err != nil {
		node.Close()
		return nil, err
	}
	return d, nil
}

// check fills in defaults and checks cfg: the pin path, the namespace,
// the devices (returned as ifindexes) and the features it asks for.
func (cfg *Config) check() ([]int, error) {
	if cfg.PinPath == "" {
		cfg.PinPath = loader.DefaultPinPath
	}
	if !filepath.IsAbs(cfg.PinPath) {
		return nil, fmt.Errorf("pin path %q: must be absolute", cfg.PinPath)
	}
	if cfg.MaxEndpoints > loader.MaxEndpointsLimit {
		return nil, fmt.Errorf("MaxEndpoints %d: at most %d", cfg.MaxEndpoints, loader.MaxEndpointsLimit)
	}
	if err := checkCIDR("native routing CIDR", cfg.NativeRoutingCIDR, "10.0.0.0/8"); err != nil {
		return nil, err
	}
	if err := checkCIDR("service CIDR", cfg.ServiceCIDR, "10.96.0.0/12"); err != nil {
		return nil, err
	}
	if cfg.NoBackendResponse > NoBackendDrop {
		return nil, fmt.Errorf("no-backend response %d: want NoBackendReject or NoBackendDrop", cfg.NoBackendResponse)
	}
	if err := checkNetns(cfg.Netns); err != nil {
		return nil, err
	}
	if cfg.CgroupPath != "" {
		if err := instance.CheckCgroup(cfg.CgroupPath); err != nil {
			return nil, err
		}
	}
	if cfg.MaglevTableSize != 0 {
		if _, err := nat.NewMaglev(uint64(cfg.MaglevTableSize), ""); err != nil {
			return nil, err
		}
	}
	if cfg.RequireBPFHostRouting {
		if mode, why := hostRouting(loader.ProbeFeatures(cfg.Disable)); mode != HostRoutingBPF {
			return nil, fmt.Errorf("%w: %s", ErrLegacyHostRouting, why)
		}
	}
	var devices []int
	for _, name := range cfg.Devices {
		ifindex, _, err := hostDevice(cfg.Netns, name)
		if err != nil {
			return nil, fmt.Errorf("node device: %w", err)
		}
		devices = append(devices, ifindex)
	}
	return devices, nil
}

// checkCIDR checks that c, if valid, is an IPv4 network address; the
// error suggests the network of an IPv4 prefix, or example for another.
func checkCIDR(what string, c netip.Prefix, example string) error {
	switch {
	case !c.IsValid() || c.Addr().Is4() && c.Masked() == c:
		return nil
	case !c.Addr().Is4():
		return fmt.Errorf("%s %s: want an IPv4 network such as %s (IPv6 is not supported yet)", what, c, example)
	}
	return fmt.Errorf("%s %s: want a network address, %s (its host bits zero)", what, c, c.Masked())
}

// checkNetns checks that netns ("" for the process's) is a network
// namespace. A bare name, as `ip netns` takes, is no path: the error says
// which path it may mean.
func checkNetns(netns string) error {
	_, err := routing.Netns(netns)
	if err == nil || strings.Contains(netns, "/") {
		return err
	}
	named := filepath.Join(routing.NetnsDir, netns)
	if _, statErr := os.Stat(named); statErr == nil {
		return fmt.Errorf("netns %q: want a path, such as %s (a name as `ip netns` takes is no path): %w", netns, named, err)
	}
	return fmt.Errorf("netns %q: want the path of a network namespace, such as %s or /proc/PID/ns/net (there is no %s either): %w",
		netns, filepath.Join(routing.NetnsDir, "NAME"), named, err)
}

// Location says where a node's datapath is, for Open and Cleanup: the
// fields mean what Config's of the same names do.
type Location struct {
	// PinPath is the node instance's directory on a bpf filesystem.
	// Default loader.DefaultPinPath.
	PinPath string
	// Netns is the path of the node's network namespace (such as
	// /var/run/netns/node1); empty for this process's (see Config.Netns).
	Netns string
}

// Location returns where the node cfg configures is.
func (cfg Config) Location() Location {
	return Location{PinPath: cfg.PinPath, Netns: cfg.Netns}
}

// Open adopts the datapath pinned at at.PinPath for the node whose network
// namespace is at.Netns, without loading or attaching anything: for tools
// and for CNI DEL and CHECK, which must not start a node that is not
// there. A missing pin path gives an error wrapping os.ErrNotExist, one
// without a node loader.ErrNoNode.
func Open(at Location) (*Datapath, error) {
	if at.PinPath == "" {
		at.PinPath = loader.DefaultPinPath
	}
	if err := checkNetns(at.Netns); err != nil {
		return nil, fmt.Errorf("open datapath at %s: %w", at.PinPath, err)
	}
	node, err := instance.Open(at.PinPath)
	if err != nil {
		return nil, err
	}
	return newDatapath(Config{PinPath: at.PinPath, Netns: at.Netns, NativeRoutingCIDR: node.NativeRoutingCIDR}, node), nil
}

func newDatapath(cfg Config, node *instance.Instance) *Datapath {
	d := &Datapath{cfg: cfg}
	d.use(node)
	return d
}

// use makes node the handle d works with.
func (d *Datapath) use(node *instance.Instance) {
	d.node = node
	d.cfg.NativeRoutingCIDR = node.NativeRoutingCIDR
	d.endpoints = tables.NewEndpoints(tables.EndpointMaps{ByIPv4: node.Maps.Endpoints, ByIPv6: node.Maps.Endpoints6,
		ByDevice: node.Maps.Devices, Slots: node.Maps.DeviceSlots, Meta: node.Maps.EndpointMeta})
	d.stats = tables.NewStats(node.Maps.EndpointStats)
	d.metrics = tables.NewMetrics(node.Maps.Metrics)
	d.nodes = tables.NewNodes(node.Maps.Nodes)
	d.services = tables.NewServices(tables.ServiceMaps{Services: node.Maps.Services, Backends: node.Maps.Backends,
		On: node.Maps.ServicesOn, ClusterIPs: node.Maps.ClusterIPs, SourceRanges: node.Maps.SourceRanges})
	d.flows = d.newGC(nat.Options{})
}

func (d *Datapath) newGC(opts nat.Options) *nat.GC {
	return nat.NewGC(tables.NewConntrack(d.node.Maps.ConntrackTables()...), tables.NewSNAT(d.node.Maps.SNATTables()...), opts)
}

// GC returns a garbage collector of the node's conntrack and SNAT tables
// (see package nat): an agent runs it, e.g. gc.Start(30 * time.Second),
// and reads its Stats. After each pass of Run or Start its totals are
// recorded in the node for Status (of any process: hrctl status).
// Entries of endpoints and backends that go are flushed by the datapath
// itself. The GC works on this handle's maps: after a reload by another
// process (which keeps the maps) it goes on working.
func (d *Datapath) GC(opts GCOptions) (*nat.GC, error) {
	var gc *nat.GC
	err := d.read(func() error {
		status, onPass := d.node.Maps.GCStatus, opts.OnPass
		opts.OnPass = func(pass nat.Stats) {
			t := gc.Stats()
			s := maps.GCStatus{LastRun: t.LastRun, LastDuration: t.LastDuration, Runs: t.Runs, Errors: t.Errors,
				CTRemoved: t.Conntrack.Removed, SNATRemoved: t.SNAT.Removed}
			if t.LastError != nil {
				s.LastError = t.LastError.Error()
			}
			tables.WriteGCStatus(status, s) // best effort: the pass itself is done
			if onPass != nil {
				onPass(pass)
			}
		}
		gc = d.newGC(opts)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("conntrack GC: %w", err)
	}
	return gc, nil
}

// read runs fn, which only reads, on an open handle.
func (d *Datapath) read(fn func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	return fn()
}

// locked runs fn holding the pin directory's lock, on the node as it is
// pinned now: a handle whose node another process reloaded adopts the new
// programs first, and a reload that some process left half done is
// completed. A removed node gives ErrRemoved.
func (d *Datapath) locked(fn func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	lock, err := instance.LockPinPath(d.node.PinPath)
	if errors.Is(err, loader.ErrNoNode) {
		return fmt.Errorf("%w: pin path %s is gone", ErrRemoved, d.cfg.PinPath)
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := d.current(); err != nil {
		return err
	}
	if renewing, err := d.node.Renewing(); err != nil {
		return err
	} else if renewing {
		if err := d.renew(); err != nil {
			return fmt.Errorf("complete the node's reload: %w", err)
		}
	}
	return fn()
}

// current re-adopts the pinned node if another process reloaded it.
func (d *Datapath) current() error {
	err := d.node.Current()
	switch {
	case errors.Is(err, loader.ErrNoNode):
		return fmt.Errorf("%w: %w", ErrRemoved, err)
	case errors.Is(err, loader.ErrStale):
		node, err := instance.Open(d.node.PinPath)
		if err != nil {
			return fmt.Errorf("adopt the reloaded node: %w", err)
		}
		d.node.Close()
		d.use(node)
		return nil
	}
	return err
}

// renew writes the services' Maglev tables as the reloaded node wants
// them, attaches the node's programs to every endpoint and device, in
// place of an earlier load's, and commits the reload. Endpoints whose
// device is gone are left for their removal.
func (d *Datapath) renew() error {
	// The new programs' Maglev tables (of another size, or Maglev just
	// turned on or off) before any of them runs.
	if err := d.reprogramMaglev(); err != nil {
		return fmt.Errorf("Maglev tables: %w", err)
	}
	eps, err := d.endpoints.List()
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if d.stale(ep) {
			continue
		}
		if err := d.attach(ep.IfIndex); err != nil {
			return fmt.Errorf("renew endpoint %s: %w", ep.IP, err)
		}
	}
	devices, err := d.node.Devices()
	if err != nil {
		return err
	}
	if err := d.attachDevices(devices); err != nil {
		return err
	}
	if err := d.node.RenewCgroup(); err != nil {
		return err
	}
	return d.node.CommitRenewal()
}

func (d *Datapath) attachDevices(ifindexes []int) error {
	for _, ifindex := range ifindexes {
		for _, p := range []Program{FromNetdev, ToNetdev} {
			if err := d.node.Attach(d.cfg.Netns, ifindex, p); err != nil {
				return fmt.Errorf("node device: %w", err)
			}
		}
	}
	return nil
}

// Close releases this process's handles. The datapath keeps running from
// its pins: endpoints keep their routing, and a later New adopts it. Every
// method but Close returns ErrClosed afterwards.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return d.node.Close()
}

// Remove tears the node's datapath down: every endpoint's and device's
// attachments (and a clsact qdisc the node made on a device), the routes
// to other nodes, then the programs and maps it pinned, by name; the pin
// directory goes if nothing else is in it. Pods fall back to the kernel's
// routing. Removing a node that is gone already is not an error.
func (d *Datapath) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.closed = true
	lock, err := instance.LockPinPath(d.node.PinPath)
	if errors.Is(err, loader.ErrNoNode) {
		return d.node.Close()
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := d.current(); errors.Is(err, ErrRemoved) {
		return d.node.Close()
	} else if err != nil {
		return err
	}
	eps, err := d.endpoints.List()
	errs := []error{err}
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
		for _, p := range []Program{FromNetdev, ToNetdev} {
			errs = append(errs, d.node.Detach(d.cfg.Netns, ifindex, p))
		}
	}
	return errors.Join(append(errs, d.node.Remove())...)
}

// Cleanup removes the node at at, whatever state it is in: as Remove for
// a node that opens, and for one that does not (pins removed by hand, a
// version whose maps do not load) what is left of it: its attachments,
// pins and routes to other nodes. It leaves everything it did not make,
// and a node that is gone already is not an error. `hrctl cleanup` runs
// it.
func Cleanup(at Location) error {
	if at.PinPath == "" {
		at.PinPath = loader.DefaultPinPath
	}
	if err := checkNetns(at.Netns); err != nil {
		return fmt.Errorf("clean up datapath at %s: %w", at.PinPath, err)
	}
	dp, err := Open(at)
	switch {
	case err == nil:
		return dp.Remove()
	case errors.Is(err, os.ErrNotExist):
		return nil
	}
	return errors.Join(instance.Cleanup(at.PinPath, at.Netns), routing.DeleteAllNodeRoutes(at.Netns))
}

// setNodeAddrs records each device's first IPv4 address: what pods'
// traffic leaving by it is translated to (masquerade, NodePort).
func (d *Datapath) setNodeAddrs(ifindexes []int) error {
	h, err := routing.Handle(d.cfg.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	var k uint32
	var v uint32
	var stale []uint32
	it := d.node.Maps.NodeAddrs.Iterate()
	for it.Next(&k, &v) {
		if !slices.Contains(ifindexes, int(k)) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read node device addresses: %w", err)
	}
	for _, k := range stale {
		if err := d.node.Maps.NodeAddrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget the address of former node device %d: %w", k, err)
		}
	}
	for _, ifindex := range ifindexes {
		link, err := h.LinkByIndex(ifindex)
		if err != nil {
			return fmt.Errorf("node device %d: %w", ifindex, err)
		}
		addrs, err := netlinksafe.AddrList(h, link, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("node device %s addresses: %w", link.Attrs().Name, err)
		}
		if len(addrs) == 0 {
			// Nothing to translate to: masquerade by it drops, counted.
			if err := d.node.Maps.NodeAddrs.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("forget the address of node device %s: %w", link.Attrs().Name, err)
			}
			continue
		}
		if err := d.node.Maps.NodeAddrs.Update(uint32(ifindex), addrs[0].IP.To4(), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("node device %s address: %w", link.Attrs().Name, err)
		}
	}
	return nil
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
