// Package instance loads the hostrouting datapath once per node, pins it
// under one bpffs directory per node instance, adopts what an earlier
// process pinned there, and attaches its programs to devices in any
// network namespace, with tcx links or, on kernels without them, clsact
// qdiscs and cls_bpf filters.
//
// Layout of a pin directory:
//
//	hr_endpoints hr_endpoints6 hr_devices hr_lxc           maps, kept across
//	hr_ep_stats hr_metrics hr_nodes hr_policy              reloads of new code
//	hr_policy_ret hr_info hr_gc ...
//	progs/from_container progs/to_container ...            entry programs
//	hr_ep_meta
//	progs/from_container progs/to_container ...            entry programs
//	progs/hr_calls_<object ID>                             one load's stages
//	links/<netns inode>_<ifindex>_<program>                tcx links
//
// hr_info records the node: the object whose programs are pinned, the
// object every attachment runs (they differ while a reload renews the
// attachments: a journal that the next Load completes if a process died
// half-way), the node's network namespace, sizes, features and devices.
// A node's first load pins it first, zeroed, and writes it last: until
// then the directory holds no node (Open says ErrNoNode), and the next
// Load removes what a first load killed half-way left and starts over.
package instance

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// Options configure Load.
type Options struct {
	// PinPath is the node instance's directory on a bpf filesystem: a
	// new or empty directory, or one a node instance pinned. Default
	// DefaultPinPath.
	PinPath string
	// Netns is the node's network namespace (a path such as
	// /var/run/netns/node1); empty for this process's. A node instance
	// belongs to one namespace: Load refuses another.
	Netns string
	// MaxEndpoints is the node's endpoint limit: it sizes the endpoint,
	// counter and policy maps, and endpoint IDs run from 1 to it. The
	// per-endpoint counters take 48 bytes × CPUs × MaxEndpoints: size it
	// by the node's real pod limit. Default: the running node's, else
	// DefaultMaxEndpoints; at most MaxEndpointsLimit. Another size than
	// the running node's is refused (the maps cannot be resized in place).
	MaxEndpoints uint32
	// Disable forces fallbacks.
	Disable loader.Disable
	// NativeRoutingCIDR holds the pods of all nodes: packets to it that are
	// not for this node are forwarded by the datapath (bpf_fib_lookup),
	// others left to the stack. Invalid (zero) for none.
	NativeRoutingCIDR netip.Prefix
	// Masquerade translates the source of pods' traffic leaving the native
	// routing CIDR to the address of the node device it leaves by (BPF
	// masquerade, on to-netdev), and back on from-netdev. Needs
	// NativeRoutingCIDR.
	Masquerade bool
	// NATPorts is the range of ports translated sources get (masquerade,
	// and NodePort traffic to other nodes' backends). Default
	// DefaultNATPorts.
	NATPorts [2]uint16
	// MaxFlows sizes the tables of translated flows: the established TCP
	// flows of conntrack and of SNAT (hashes that never evict), socket
	// reverse NAT and session affinity (LRU hashes) hold MaxFlows each;
	// the established flows of other protocols and the flows not
	// established yet (LRU) MaxFlows/2 each (at least 1024). All are
	// preallocated, about 100 bytes an entry. Default DefaultMaxFlows;
	// fixed at a node's first load.
	MaxFlows uint32
	// MaxServices is how many services (frontends, as datapath.Service
	// counts them) the node holds, with ServiceBackendSlots backends each
	// on average: the frontend table (hr_lb4_services, a frontend's entry
	// and one per backend slot) holds MaxServices × (1 +
	// ServiceBackendSlots) entries, the backend table MaxServices ×
	// ServiceBackendSlots. A service with both traffic policies' scopes
	// takes its entry and slots twice. Both are hashes that take memory
	// only for what they hold, besides 16 bytes an entry for their buckets
	// (6 MiB at the default). Default DefaultMaxServices; fixed at a
	// node's first load.
	MaxServices uint32
	// MaglevTableSize makes services choose backends by Maglev hashing
	// with tables of this size (a prime such as nat.DefaultTableSize), so
	// that every node sends a flow to the same backend; 0 chooses at
	// random.
	MaglevTableSize uint32
	// ServiceCIDR holds the ClusterIPs: a pod's packet (or a socket's
	// connect) to an address in it that is no frontend, or to a frontend
	// port the service lacks, is rejected as one to a service without
	// backends. Invalid (zero) for none.
	ServiceCIDR netip.Prefix
	// NoBackendDrop drops what goes to a service without usable backends
	// (Cilium's service-no-backend-response=drop); by default it is
	// rejected: ICMP port unreachable at tc, ECONNREFUSED at the socket.
	NoBackendDrop bool
	// SocketLBHostnsOnly leaves pods' sockets to the tc load balancer:
	// socket LB translates only the sockets of the node's own network
	// namespace (Cilium's bpf-lb-sock-hostns-only, which service meshes
	// need to see the frontend a pod dials).
	SocketLBHostnsOnly bool
}

// minFlowTable is the least size of a flow table of MaxFlows/2.
const minFlowTable = 1024

// defaultMaglevSlots is the Maglev tables' size of a node made without
// Maglev (as nat.DefaultTableSize): it may switch to Maglev of that size.
const defaultMaglevSlots = 16381

// Maps are the datapath's maps of one node.
type Maps struct {
	Endpoints     *ebpf.Map // endpoint IPv4 address → endpoint info
	Endpoints6    *ebpf.Map // endpoint IPv6 address → endpoint info
	Devices       *ebpf.Map // host-side ifindex → endpoint info
	DeviceSlots   *ebpf.Map // ifindex & slots−1 → endpoint info: Devices' fast copy
	EndpointStats *ebpf.Map // endpoint ID → per-CPU endpoint counters
	Metrics       *ebpf.Map // direction × metric → per-CPU node-wide counters
	Nodes         *ebpf.Map // node IP → node name
	Policy        *ebpf.Map // endpoint ID → ingress policy program
	PolicyReturn  *ebpf.Map // where policies hand their verdict back
	EndpointMeta  *ebpf.Map // endpoint ID → container ID and interface
	Services      *ebpf.Map // frontend and backend slot → service entry
	Backends      *ebpf.Map // backend ID → backend
	ServicesOn    *ebpf.Map // whether the node has services
	ClusterIPs    *ebpf.Map // ClusterIP frontend addresses, for rejecting their other ports
	SourceRanges  *ebpf.Map // service ID and source prefix → allowed (loadBalancerSourceRanges)
	Conntrack     *ebpf.Map // translated flows, established TCP (a hash: never evicted)
	ConntrackAny  *ebpf.Map // translated flows, established, other protocols (a hash)
	ConntrackNew  *ebpf.Map // translated flows not established yet (LRU)
	FlowStats     *ebpf.Map // per CPU: flows made, established, refused, failed, by table class
	SNAT          *ebpf.Map // source-translated flows, both ways, established TCP (a hash)
	SNATAny       *ebpf.Map // source-translated flows, established, other protocols (a hash)
	SNATNew       *ebpf.Map // source-translated flows not established yet (LRU)
	NodeAddrs     *ebpf.Map // node device ifindex → its IPv4 address
	SockRevNAT    *ebpf.Map // socket and backend → the frontend it was given for (LRU)
	Affinity      *ebpf.Map // client and service → its backend (LRU)
	Maglev        *ebpf.Map // service ID → its Maglev table (array of maps)
	Monitor       *ebpf.Map // which decisions are reported as events
	Events        *ebpf.Map // the events (perf event array, one ring per CPU)
	MonitorState  *ebpf.Map // per CPU: backing off after a full ring, events skipped
	GCStatus      *ebpf.Map // the conntrack GC's last pass, for status (programs never read it)
	RejectState   *ebpf.Map // per CPU: rejections sent this second (their rate limit)
	Fragments     *ebpf.Map // datagram (addresses, IP ID, protocol) → its first fragment's ports (LRU)
}

// Instance is the loaded datapath of one node instance. Close releases this
// process's handles and leaves the pinned datapath running; Remove tears
// it down.
type Instance struct {
	// PinPath is the node instance's pin directory, as this process
	// reaches it (see LockPinPath).
	PinPath string
	// Features are the kernel features the programs were loaded with.
	Features loader.Features
	// NativeRoutingCIDR is the native routing CIDR the programs were
	// loaded with; invalid for none.
	NativeRoutingCIDR netip.Prefix
	// Masquerade, NATPorts, SocketLBHostnsOnly, MaglevTableSize,
	// ServiceCIDR and NoBackendDrop are as the programs were loaded with.
	ServiceCIDR        netip.Prefix
	NoBackendDrop      bool
	Masquerade         bool
	NATPorts           [2]uint16
	SocketLBHostnsOnly bool
	MaglevTableSize    uint32
	// MaxEndpoints is the node's endpoint limit: the highest endpoint ID.
	MaxEndpoints uint32
	// Adopted tells that the programs were found pinned and reused.
	Adopted bool
	// Maps are the node's maps.
	Maps Maps

	id        uint64 // the object this handle's programs come from
	tag       string // names this node instance's clsact filters
	progs     map[loader.Program]*ebpf.Program
	sockProgs map[string]*ebpf.Program // socket LB, by name
	info      *ebpf.Map
}

// mapNames are the maps pinned by name, kept across reloads.
var mapNames = []string{
	bpf.HostroutingMapHrEndpoints, bpf.HostroutingMapHrEndpoints6, bpf.HostroutingMapHrDevices, bpf.HostroutingMapHrLxc,
	bpf.HostroutingMapHrEpStats, bpf.HostroutingMapHrMetrics, bpf.HostroutingMapHrNodes,
	bpf.HostroutingMapHrPolicy, bpf.HostroutingMapHrPolicyRet, bpf.HostroutingMapHrEpMeta,
	bpf.HostroutingMapHrLb4Services, bpf.HostroutingMapHrLb4Backends, bpf.HostroutingMapHrLbOn, bpf.HostroutingMapHrClusterIps, bpf.HostroutingMapHrLb4Srcrange,
	bpf.HostroutingMapHrCt4Tcp, bpf.HostroutingMapHrCt4Any, bpf.HostroutingMapHrCt4New, bpf.HostroutingMapHrCtStats,
	bpf.HostroutingMapHrSnat4Tcp, bpf.HostroutingMapHrSnat4Any, bpf.HostroutingMapHrSnat4New, bpf.HostroutingMapHrNodeAddrs,
	bpf.HostroutingMapHrSock4Revnat, bpf.HostroutingMapHrLb4Affinity, bpf.HostroutingMapHrLb4Maglev,
	bpf.HostroutingMapHrMonitor, bpf.HostroutingMapHrEvents, bpf.HostroutingMapHrMonitorState, bpf.HostroutingMapHrGc,
	bpf.HostroutingMapHrReject, bpf.HostroutingMapHrFrag4, bpf.HostroutingMapHrInfo,
}

// Load loads the datapath for the node instance at opts.PinPath, or adopts
// the programs and maps pinned there when they come from the same code and
// config. Processes loading the same pin path at once serialise: one loads,
// the others adopt. If Load fails, it leaves no new pins behind. A reload
// (other code or config) replaces the pinned programs and leaves the
// instance Renewing until CommitRenewal.
func Load(opts Options) (*Instance, error) {
	if opts.PinPath == "" {
		opts.PinPath = loader.DefaultPinPath
	}
	if opts.MaxEndpoints > loader.MaxEndpointsLimit {
		return nil, fmt.Errorf("MaxEndpoints %d: at most %d", opts.MaxEndpoints, loader.MaxEndpointsLimit)
	}
	if opts.MaxServices > loader.MaxServicesLimit {
		return nil, fmt.Errorf("MaxServices %d: at most %d", opts.MaxServices, loader.MaxServicesLimit)
	}
	cidr := opts.NativeRoutingCIDR
	if cidr.IsValid() && (!cidr.Addr().Is4() || cidr.Masked() != cidr) {
		return nil, fmt.Errorf("native routing CIDR %s: want an IPv4 network address such as %s", cidr, cidr.Masked())
	}
	if svc := opts.ServiceCIDR; svc.IsValid() && (!svc.Addr().Is4() || svc.Masked() != svc) {
		return nil, fmt.Errorf("service CIDR %s: want an IPv4 network address such as 10.96.0.0/12", svc)
	}
	if opts.Masquerade && !cidr.IsValid() {
		return nil, errors.New("masquerade: needs a native routing CIDR (what is not masqueraded)")
	}
	if opts.NATPorts == [2]uint16{} {
		opts.NATPorts = loader.DefaultNATPorts
	}

	if p := opts.NATPorts; p[0] == 0 || p[0] > p[1] {
		return nil, fmt.Errorf("NAT ports %d-%d: want a range within 1-65535", p[0], p[1])
	}
	netns, err := routing.Netns(opts.Netns)
	if err != nil {
		return nil, err
	}
	path, created, err := preparePinDir(opts.PinPath)
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(path)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	n, err := loadLocked(opts, path, netns)
	if err != nil && created {
		os.RemoveAll(path)
	} else if err != nil {
		discardUncommitted(path) // a first load's pins
	}
	return n, err
}

func loadLocked(opts Options, path string, netns routing.NetnsID) (*Instance, error) {
	var prev bpf.HostroutingNodeInfo
	running, err := open(path, opts.PinPath)
	switch {
	case err == nil:
		prev, err = running.readInfo()
		flows, services := running.Maps.Conntrack.MaxEntries(), running.Maps.Backends.MaxEntries()/loader.ServiceBackendSlots
		running.Close()
		if err != nil {
			return nil, err
		}
		for _, size := range []struct {
			name      string
			want, has *uint32
		}{{"MaxFlows", &opts.MaxFlows, &flows}, {"MaxServices", &opts.MaxServices, &services}} {
			if *size.want == 0 {
				*size.want = *size.has
			}
			if *size.want != *size.has {
				return nil, fmt.Errorf("%s %d: the node at %s was made with %d, and its maps cannot be resized in place (Remove it first)",
					size.name, *size.want, opts.PinPath, *size.has)
			}
		}
		if have := (routing.NetnsID{Ino: prev.NetnsIno, Dev: prev.NetnsDev}); have != netns {
			return nil, fmt.Errorf("%w: pin path %s holds the node of network namespace %s, not %s (%s)",
				loader.ErrOtherNetns, opts.PinPath, have, netns, cmpOr(opts.Netns, "this process's"))
		}
		if opts.MaxEndpoints == 0 {
			opts.MaxEndpoints = prev.MaxEndpoints
		}
		if opts.MaxEndpoints != prev.MaxEndpoints {
			return nil, fmt.Errorf("MaxEndpoints %d: the node at %s was made with %d, and its maps cannot be resized in place (Remove it first)",
				opts.MaxEndpoints, opts.PinPath, prev.MaxEndpoints)
		}
	case errors.Is(err, loader.ErrNoNode):
		if opts.MaxEndpoints == 0 {
			opts.MaxEndpoints = loader.DefaultMaxEndpoints
		}
		if opts.MaxFlows == 0 {
			opts.MaxFlows = loader.DefaultMaxFlows
		}
		if opts.MaxServices == 0 {
			opts.MaxServices = loader.DefaultMaxServices
		}
	default:
		return nil, err
	}

	features := loader.ProbeFeatures(opts.Disable)
	config := configOf(features, opts)
	config.MaglevM = opts.MaglevTableSize
	// The node's namespace: socket LB tells the node's own sockets by it
	// (hostns-only mode, and NodePorts on 127.0.0.1, which only the
	// node's sockets reach); without the cookie, only hostns-only fails.
	cookie, err := netnsCookie(opts.Netns)
	if err != nil && opts.SocketLBHostnsOnly {
		return nil, err
	}
	config.NetnsCookie = cookie
	if opts.SocketLBHostnsOnly {
		config.SockHostnsOnly = 1
	}
	id := objectID(config, features, opts.MaxEndpoints)
	if prev.ObjectId == id {
		return open(path, opts.PinPath)
	}
	info := prev // devices, qdiscs and the journal carry over
	info.ObjectId = id
	if prev.ObjectId == 0 {
		info.RenewedId = id // nothing attached yet: nothing to renew
	}
	info.NetnsIno, info.NetnsDev = netns.Ino, netns.Dev
	info.Features = featureBits(features)
	info.NativeCidr, info.NativePrefix = config.NativeCidr, 0
	if opts.NativeRoutingCIDR.IsValid() {
		info.NativePrefix = uint32(opts.NativeRoutingCIDR.Bits())
	}
	info.MaxEndpoints = opts.MaxEndpoints
	info.NatPortMin, info.NatPortMax, info.Masquerade = config.NatPortMin, config.NatPortMax, uint32(config.Masquerade)
	info.SockHostnsOnly, info.MaglevM = uint32(config.SockHostnsOnly), config.MaglevM
	info.ServiceCidr, info.ServicePrefix, info.NoBackendDrop = config.ServiceCidr, 0, uint32(config.NoBackendDrop)
	if opts.ServiceCIDR.IsValid() {
		info.ServicePrefix = uint32(opts.ServiceCIDR.Bits())
	}
	switch {
	case info.MaglevSlots == 0: // a new node
		info.MaglevSlots = cmp.Or(config.MaglevM, defaultMaglevSlots)
	case config.MaglevM != 0 && config.MaglevM != info.MaglevSlots:
		// Tables of another size: a new map of them. The running programs
		// keep the old one until the reload's renewal, which fills the
		// new one (datapath) before it attaches a program that reads it.
		info.MaglevSlots = config.MaglevM
		if err := os.Remove(filepath.Join(path, bpf.HostroutingMapHrLb4Maglev)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("Maglev table size %d: replace the tables of %d: %w", config.MaglevM, prev.MaglevSlots, err)
		}
	}
	return load(path, opts, config, info)
}

// cmpOr returns s, or def if s is empty.
func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Open adopts the node instance pinned at pinPath without loading or
// mounting anything: for tools that inspect a running node. It repairs a
// node whose map pins were removed while its programs still run them.
func Open(pinPath string) (*Instance, error) {
	given := filepath.Clean(pinPath)
	pinPath, err := reach(given, false)
	if err != nil {
		return nil, err
	}
	if ok, err := onBPFFS(pinPath); err != nil {
		return nil, fmt.Errorf("open node at %s: %w", given, err)
	} else if !ok {
		return nil, fmt.Errorf("open node at %s: %w", given, loader.ErrNotBPFFS)
	}
	return open(pinPath, given)
}

// open adopts the node at path (as this process reaches it; given is the
// pin path as the caller named it, for errors), repairing missing map pins
// from the running programs.
func open(path, given string) (*Instance, error) {
	if uncommitted(path) {
		return nil, fmt.Errorf("open node at %s: %w: its first load has not finished", given, loader.ErrNoNode)
	}
	missing, err := missingPins(path)
	if err != nil {
		return nil, err
	}
	if len(missing) == len(mapNames) {
		return nil, fmt.Errorf("open node at %s: %w", given, loader.ErrNoNode)
	}
	if len(missing) > 0 {
		if err := repairPins(path, given, missing); err != nil {
			return nil, fmt.Errorf("node at %s: %w", given, err)
		}
	}
	n := &Instance{PinPath: path, Adopted: true, progs: map[loader.Program]*ebpf.Program{}, sockProgs: map[string]*ebpf.Program{}}
	pinned := map[string]*ebpf.Map{}
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(path, name), nil)
		if err != nil {
			closeMaps(pinned)
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		pinned[name] = m
	}
	n.setMaps(pinned)
	for _, p := range programs {
		prog, err := ebpf.LoadPinnedProgram(n.programPin(p), nil)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("node at %s: open pinned program %s: %w", given, p, err)
		}
		n.progs[p] = prog
	}
	for _, h := range socketHooks {
		prog, err := ebpf.LoadPinnedProgram(filepath.Join(path, "progs", h.name), nil)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("node at %s: open pinned program %s: %w", given, h.name, err)
		}
		n.sockProgs[h.name] = prog
	}
	info, err := n.readInfo()
	if err != nil {
		n.Close()
		return nil, err
	}
	n.id = info.ObjectId
	n.MaxEndpoints = info.MaxEndpoints
	n.Masquerade, n.NATPorts = info.Masquerade != 0, [2]uint16{info.NatPortMin, info.NatPortMax}
	n.SocketLBHostnsOnly, n.MaglevTableSize = info.SockHostnsOnly != 0, info.MaglevM
	n.Features = featuresFromBits(info.Features)
	n.NativeRoutingCIDR = prefixOf(info.NativeCidr, info.NativePrefix)
	n.ServiceCIDR, n.NoBackendDrop = prefixOf(info.ServiceCidr, info.ServicePrefix), info.NoBackendDrop != 0
	return n, nil
}

// load loads the object for the node at path with config and info (its
// object ID and everything an earlier load recorded), and pins it.
func load(path string, opts Options, config bpf.HostroutingConfig, info bpf.HostroutingNodeInfo) (*Instance, error) {
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		return nil, err
	}
	for _, name := range []string{bpf.HostroutingMapHrEndpoints, bpf.HostroutingMapHrEndpoints6, bpf.HostroutingMapHrDevices} {
		spec.Maps[name].MaxEntries = opts.MaxEndpoints
	}
	for _, name := range []string{bpf.HostroutingMapHrEpStats, bpf.HostroutingMapHrPolicy} {
		spec.Maps[name].MaxEntries = opts.MaxEndpoints + 1 // by ID, 0 unused
	}
	spec.Maps[bpf.HostroutingMapHrEpMeta].MaxEntries = opts.MaxEndpoints
	spec.Maps[bpf.HostroutingMapHrLxc].MaxEntries = config.LxcMask + 1
	spec.Maps[bpf.HostroutingMapHrLb4Maglev].InnerMap.ValueSize = 4 * info.MaglevSlots
	for _, name := range []string{bpf.HostroutingMapHrCt4Tcp, bpf.HostroutingMapHrSnat4Tcp, bpf.HostroutingMapHrSock4Revnat, bpf.HostroutingMapHrLb4Affinity} {
		spec.Maps[name].MaxEntries = opts.MaxFlows
	}
	for _, name := range []string{bpf.HostroutingMapHrCt4Any, bpf.HostroutingMapHrCt4New, bpf.HostroutingMapHrSnat4Any, bpf.HostroutingMapHrSnat4New} {
		spec.Maps[name].MaxEntries = max(opts.MaxFlows/2, minFlowTable)
	}
	spec.Maps[bpf.HostroutingMapHrLb4Services].MaxEntries = opts.MaxServices * (1 + loader.ServiceBackendSlots)
	spec.Maps[bpf.HostroutingMapHrLb4Backends].MaxEntries = opts.MaxServices * loader.ServiceBackendSlots
	// As many as the frontend table can hold frontends: it is never the
	// table that fills first.
	spec.Maps[bpf.HostroutingMapHrClusterIps].MaxEntries = opts.MaxServices * (1 + loader.ServiceBackendSlots)
	spec.Maps[bpf.HostroutingMapHrLb4Srcrange].MaxEntries = opts.MaxServices * (1 + loader.ServiceBackendSlots)
	if err := spec.Variables[bpf.HostroutingVarCONFIG].Set(config); err != nil {
		return nil, fmt.Errorf("set datapath config: %w", err)
	}
	if err := startLoad(path, spec); err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: path},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("load datapath: maps pinned at %s were made by an incompatible version (Remove the node first): %w", opts.PinPath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	defer coll.Close()

	n := &Instance{PinPath: path, Features: loader.ProbeFeatures(opts.Disable), NativeRoutingCIDR: opts.NativeRoutingCIDR,
		Masquerade: opts.Masquerade, NATPorts: opts.NATPorts, SocketLBHostnsOnly: opts.SocketLBHostnsOnly,
		MaglevTableSize: opts.MaglevTableSize, ServiceCIDR: opts.ServiceCIDR, NoBackendDrop: opts.NoBackendDrop,
		MaxEndpoints: info.MaxEndpoints, id: info.ObjectId, progs: map[loader.Program]*ebpf.Program{}, sockProgs: map[string]*ebpf.Program{}}
	n.setMaps(coll.Maps)
	for _, name := range mapNames {
		coll.DetachMap(name)
	}
	if err := os.MkdirAll(filepath.Join(path, "progs"), 0o700); err != nil {
		n.Close()
		return nil, fmt.Errorf("create program pin directory: %w", err)
	}
	// This load's stages live as long as their pin: programs of an earlier
	// load keep theirs until CommitRenewal, after every attachment moved.
	os.Remove(n.callsPin(n.id)) // left by a load of the same object that did not finish
	if err := coll.Maps[bpf.HostroutingMapHrCalls].Pin(n.callsPin(n.id)); err != nil {
		n.Close()
		return nil, fmt.Errorf("pin tail-call stages: %w", err)
	}
	for slot, name := range []string{bpf.HostroutingProgTailPolicyAllow, bpf.HostroutingProgTailPolicyDeny} {
		if err := n.Maps.PolicyReturn.Update(uint32(slot), coll.Programs[name], ebpf.UpdateAny); err != nil {
			n.Close()
			return nil, fmt.Errorf("install policy verdict stage %s: %w", name, err)
		}
	}
	for _, p := range programs {
		prog := coll.DetachProgram(objectName(p))
		n.progs[p] = prog
		if err := pinReplacing(prog, n.programPin(p)); err != nil {
			n.Close()
			return nil, fmt.Errorf("pin program %s: %w", p, err)
		}
	}
	for _, h := range socketHooks {
		prog := coll.DetachProgram(h.name)
		n.sockProgs[h.name] = prog
		if err := pinReplacing(prog, filepath.Join(path, "progs", h.name)); err != nil {
			n.Close()
			return nil, fmt.Errorf("pin program %s: %w", h.name, err)
		}
	}
	// The new object becomes the node's with this write, and the pinned
	// programs are already its own.
	if err := n.writeInfo(&info); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// lxcSlots sizes hr_lxc, the array that finds a device's endpoint by
// ifindex & (slots − 1): a power of two of at least 8 slots per endpoint,
// so that few live devices share a slot (those that do are found in the
// hash map behind it), and at most 65536 slots (2.5 MiB).
func lxcSlots(maxEndpoints uint32) uint32 {
	slots := uint32(64)
	for slots < 8*maxEndpoints && slots < 1<<16 {
		slots *= 2
	}
	return slots
}

func configOf(f loader.Features, opts Options) bpf.HostroutingConfig {
	b := func(f loader.Feature) uint8 {
		if f.Enabled {
			return 1
		}
		return 0
	}
	c := bpf.HostroutingConfig{RedirectPeer: b(f.RedirectPeer), RedirectNeigh: b(f.RedirectNeigh), FibLookup: b(f.FIBLookup), CheckMtu: b(f.CheckMTU),
		LxcMask: lxcSlots(opts.MaxEndpoints) - 1, NatPortMin: opts.NATPorts[0], NatPortMax: opts.NATPorts[1]}
	if opts.Masquerade {
		c.Masquerade = 1
	}
	if features.HaveProgramHelper(ebpf.SchedCLS, asm.FnKtimeGetCoarseNs) == nil {
		c.CoarseClock = 1
	}
	if features.HaveProgramHelper(ebpf.CGroupSockAddr, asm.FnSetRetval) == nil {
		c.SetRetval = 1
	}
	c.NativeCidr, c.NativeMask = prefixKey(opts.NativeRoutingCIDR)
	c.ServiceCidr, c.ServiceMask = prefixKey(opts.ServiceCIDR)
	if opts.NoBackendDrop {
		c.NoBackendDrop = 1
	}
	return c
}

// prefixKey returns an IPv4 prefix's address and mask as the programs
// compare them (network order); zeros for an invalid prefix.
func prefixKey(p netip.Prefix) (addr, mask uint32) {
	if !p.IsValid() {
		return 0, 0
	}
	a := p.Addr().As4()
	return binary.NativeEndian.Uint32(a[:]), binary.NativeEndian.Uint32(net.CIDRMask(p.Bits(), 32))
}

// prefixOf is prefixKey's inverse for an address and a prefix length; 0
// bits for none.
func prefixOf(addr, bits uint32) netip.Prefix {
	if bits == 0 {
		return netip.Prefix{}
	}
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], addr)
	return netip.PrefixFrom(netip.AddrFrom4(a), int(bits))
}

// objectID names the code and config programs were loaded with.
func objectID(c bpf.HostroutingConfig, f loader.Features, maxEndpoints uint32) uint64 {
	h := sha256.New()
	obj := bpf.ObjectHash()
	h.Write(obj[:])
	binary.Write(h, binary.LittleEndian, c)
	binary.Write(h, binary.LittleEndian, featureBits(f))
	binary.Write(h, binary.LittleEndian, maxEndpoints)
	return binary.LittleEndian.Uint64(h.Sum(nil))
}

func (n *Instance) setMaps(m map[string]*ebpf.Map) {
	if info, err := m[bpf.HostroutingMapHrInfo].Info(); err == nil {
		if id, ok := info.ID(); ok {
			n.tag = fmt.Sprint(id)
		}
	}
	n.Maps = Maps{
		Endpoints:     m[bpf.HostroutingMapHrEndpoints],
		Endpoints6:    m[bpf.HostroutingMapHrEndpoints6],
		Devices:       m[bpf.HostroutingMapHrDevices],
		DeviceSlots:   m[bpf.HostroutingMapHrLxc],
		EndpointStats: m[bpf.HostroutingMapHrEpStats],
		Metrics:       m[bpf.HostroutingMapHrMetrics],
		Nodes:         m[bpf.HostroutingMapHrNodes],
		Policy:        m[bpf.HostroutingMapHrPolicy],
		PolicyReturn:  m[bpf.HostroutingMapHrPolicyRet],
		EndpointMeta:  m[bpf.HostroutingMapHrEpMeta],
		Services:      m[bpf.HostroutingMapHrLb4Services],
		Backends:      m[bpf.HostroutingMapHrLb4Backends],
		ServicesOn:    m[bpf.HostroutingMapHrLbOn],
		ClusterIPs:    m[bpf.HostroutingMapHrClusterIps],
		SourceRanges:  m[bpf.HostroutingMapHrLb4Srcrange],
		Conntrack:     m[bpf.HostroutingMapHrCt4Tcp],
		ConntrackAny:  m[bpf.HostroutingMapHrCt4Any],
		ConntrackNew:  m[bpf.HostroutingMapHrCt4New],
		FlowStats:     m[bpf.HostroutingMapHrCtStats],
		SNAT:          m[bpf.HostroutingMapHrSnat4Tcp],
		SNATAny:       m[bpf.HostroutingMapHrSnat4Any],
		SNATNew:       m[bpf.HostroutingMapHrSnat4New],
		NodeAddrs:     m[bpf.HostroutingMapHrNodeAddrs],
		SockRevNAT:    m[bpf.HostroutingMapHrSock4Revnat],
		Affinity:      m[bpf.HostroutingMapHrLb4Affinity],
		Maglev:        m[bpf.HostroutingMapHrLb4Maglev],
		Monitor:       m[bpf.HostroutingMapHrMonitor],
		Events:        m[bpf.HostroutingMapHrEvents],
		MonitorState:  m[bpf.HostroutingMapHrMonitorState],
		GCStatus:      m[bpf.HostroutingMapHrGc],
		RejectState:   m[bpf.HostroutingMapHrReject],
		Fragments:     m[bpf.HostroutingMapHrFrag4],
	}
	n.info = m[bpf.HostroutingMapHrInfo]
}

func (n *Instance) allMaps() []*ebpf.Map {
	return []*ebpf.Map{n.Maps.Endpoints, n.Maps.Endpoints6, n.Maps.Devices, n.Maps.DeviceSlots, n.Maps.EndpointStats,
		n.Maps.Metrics, n.Maps.Nodes, n.Maps.Policy, n.Maps.PolicyReturn, n.Maps.EndpointMeta,
		n.Maps.Services, n.Maps.Backends, n.Maps.ServicesOn, n.Maps.ClusterIPs, n.Maps.SourceRanges, n.Maps.Conntrack, n.Maps.ConntrackAny, n.Maps.ConntrackNew,
		n.Maps.FlowStats, n.Maps.SNAT, n.Maps.SNATAny, n.Maps.SNATNew, n.Maps.NodeAddrs, n.Maps.SockRevNAT, n.Maps.Affinity, n.Maps.Maglev,
		n.Maps.Monitor, n.Maps.Events, n.Maps.MonitorState, n.Maps.GCStatus, n.Maps.RejectState,
		n.Maps.Fragments, n.info}
}

// MapSizes reports the node's maps, in the order of Maps, and the memory
// each takes.
func (n *Instance) MapSizes() ([]MapSize, error) {
	var sizes []MapSize
	for _, m := range n.allMaps() {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("map info: %w", err)
		}
		mem, _ := info.Memlock()
		sizes = append(sizes, MapSize{Name: info.Name, Type: m.Type(), MaxEntries: m.MaxEntries(), Memory: mem})
	}
	return sizes, nil
}

// MapUsage is MapSizes with each map's entries counted: hash maps key by
// key (one system call per entry), arrays as full.
func (n *Instance) MapUsage() ([]MapSize, error) {
	sizes, err := n.MapSizes()
	if err != nil {
		return nil, err
	}
	for i, m := range n.allMaps() {
		switch m.Type() {
		case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
			c, err := countKeys(m)
			if err != nil {
				return nil, fmt.Errorf("count %s entries: %w", sizes[i].Name, err)
			}
			sizes[i].Entries = c
		default:
			sizes[i].Entries = sizes[i].MaxEntries
		}
	}
	return sizes, nil
}

// countKeys counts the keys of a hash map, walking them with NextKey.
func countKeys(m *ebpf.Map) (uint32, error) {
	key, next := make([]byte, m.KeySize()), make([]byte, m.KeySize())
	var n uint32
	var prev any // nil: the first key
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		// Keys deleted meanwhile restart the walk: never count past the
		// map's size.
		if n++; n == m.MaxEntries() {
			return n, nil
		}
		copy(key, next)
		prev = key
	}
}

func (n *Instance) callsPin(id uint64) string {
	return filepath.Join(n.PinPath, "progs", fmt.Sprintf("hr_calls_%016x", id))
}

func closeMaps(m map[string]*ebpf.Map) {
	for _, x := range m {
		x.Close()
	}
}

// Program returns the loaded program p. It stays owned by the Instance.
func (n *Instance) Program(p loader.Program) *ebpf.Program {
	return n.progs[p]
}

func (n *Instance) programPin(p loader.Program) string {
	return filepath.Join(n.PinPath, "progs", objectName(p))
}

// Close releases this process's handles on the node's programs and maps.
// Everything pinned keeps running: attachments stay, and a later Load or
// Open of the same pin path adopts it.
func (n *Instance) Close() error {
	var errs []error
	for _, p := range n.progs {
		errs = append(errs, p.Close())
	}
	for _, p := range n.sockProgs {
		errs = append(errs, p.Close())
	}
	for _, m := range n.allMaps() {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// pinReplacing pins prog at path, atomically replacing what was pinned there.
func pinReplacing(prog *ebpf.Program, path string) error {
	tmp := path + "_new" // bpffs refuses names with dots
	os.Remove(tmp)
	if err := prog.Pin(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		prog.Unpin()
		return err
	}
	return nil
}

// ConntrackTables are the node's conntrack tables: established TCP,
// established other protocols, not established yet.
func (m Maps) ConntrackTables() []*ebpf.Map {
	return []*ebpf.Map{m.Conntrack, m.ConntrackAny, m.ConntrackNew}
}

// SNATTables are the node's source NAT tables, in ConntrackTables' order.
func (m Maps) SNATTables() []*ebpf.Map {
	return []*ebpf.Map{m.SNAT, m.SNATAny, m.SNATNew}
}

// MapSize is what one of the node's maps takes.
type MapSize struct {
	Name       string
	Type       ebpf.MapType
	MaxEntries uint32
	Memory     uint64 // bytes charged to the map (memlock), as the kernel reports it
	// Entries is how many entries a hash map holds, as MapUsage counts
	// them (an array always holds MaxEntries); 0 from MapSizes.
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
