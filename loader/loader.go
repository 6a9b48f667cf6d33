// Package loader loads the hostrouting datapath once per node, pins it
// under one bpffs directory per node instance, adopts what an earlier
// process pinned there, and attaches its programs to devices in any
// network namespace, with tcx links or, on kernels without them, clsact
// qdiscs and cls_bpf filters.
//
// Layout of a pin directory:
//
//	hr_endpoints hr_endpoints6 hr_devices hr_lxc           maps, kept across
//	hr_ep_stats hr_metrics hr_nodes hr_policy              reloads of new code
//	hr_policy_ret hr_info
//	progs/from_container progs/to_container ...            entry programs
//	progs/hr_calls_<object ID>                             one load's stages
//	links/<netns inode>_<ifindex>_<program>                tcx links
package loader

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/bpf"
)

// DefaultPinPath is the pin directory of a node instance unless
// Options.PinPath names another.
const DefaultPinPath = "/sys/fs/bpf/hostrouting"

// DefaultMaxEndpoints is the endpoint limit unless Options.MaxEndpoints
// names another.
const DefaultMaxEndpoints = 1024

// MaxEndpointsLimit is the largest endpoint limit: endpoint IDs are 16-bit.
const MaxEndpointsLimit = 65535

// Options configure Load.
type Options struct {
	// PinPath is the node instance's directory on a bpf filesystem.
	// Default DefaultPinPath.
	PinPath string
	// MaxEndpoints is the node's endpoint limit: it sizes the endpoint,
	// counter and policy maps, and endpoint IDs run from 1 to it. The
	// per-endpoint counters take 48 bytes × CPUs × MaxEndpoints: size it
	// by the node's real pod limit. Default DefaultMaxEndpoints, at most
	// MaxEndpointsLimit. A node keeps the size it was first loaded with.
	MaxEndpoints uint32
	// Disable forces fallbacks.
	Disable Disable
	// NativeRoutingCIDR holds the pods of all nodes: packets to it that are
	// not for this node are forwarded by the datapath (bpf_fib_lookup),
	// others left to the stack. Invalid (zero) for none.
	NativeRoutingCIDR netip.Prefix
}

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
}

// Instance is the loaded datapath of one node instance. Close releases this
// process's handles and leaves the pinned datapath running; Remove tears
// it down.
type Instance struct {
	// PinPath is the node instance's pin directory, as this process
	// reaches it (see LockPinPath).
	PinPath string
	// Features are the kernel features the programs were loaded with.
	Features Features
	// NativeRoutingCIDR is the native routing CIDR the programs were
	// loaded with; invalid for none.
	NativeRoutingCIDR netip.Prefix
	// Adopted tells that the programs were found pinned and reused.
	Adopted bool
	// Replaced tells that programs pinned by an earlier load, of other
	// code or config, were replaced: attachments must be renewed.
	Replaced bool
	// Maps are the node's maps.
	Maps Maps

	progs map[Program]*ebpf.Program
	info  *ebpf.Map
}

// mapNames are the maps pinned by name, kept across reloads.
var mapNames = []string{
	bpf.HostroutingMapHrEndpoints, bpf.HostroutingMapHrEndpoints6, bpf.HostroutingMapHrDevices, bpf.HostroutingMapHrLxc,
	bpf.HostroutingMapHrEpStats, bpf.HostroutingMapHrMetrics, bpf.HostroutingMapHrNodes,
	bpf.HostroutingMapHrPolicy, bpf.HostroutingMapHrPolicyRet, bpf.HostroutingMapHrInfo,
}

// Load loads the datapath for the node instance at opts.PinPath, or adopts
// the programs and maps pinned there when they come from the same code and
// config. Processes loading the same pin path at once serialise: one loads,
// the others adopt. If Load fails, it leaves no new pins behind.
func Load(opts Options) (n *Instance, err error) {
	if opts.PinPath == "" {
		opts.PinPath = DefaultPinPath
	}
	if opts.MaxEndpoints == 0 {
		opts.MaxEndpoints = DefaultMaxEndpoints
	}
	if opts.MaxEndpoints > MaxEndpointsLimit {
		return nil, fmt.Errorf("MaxEndpoints %d: at most %d", opts.MaxEndpoints, MaxEndpointsLimit)
	}
	path, created, err := preparePinDir(opts.PinPath)
	if err != nil {
		return nil, err
	}
	opts.PinPath = path
	lock, err := lockDir(opts.PinPath)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()

	cidr := opts.NativeRoutingCIDR
	if cidr.IsValid() && (!cidr.Addr().Is4() || cidr.Masked() != cidr) {
		return nil, fmt.Errorf("native routing CIDR %s: want an IPv4 network address such as %s", cidr, cidr.Masked())
	}
	features := ProbeFeatures(opts.Disable)
	config := configOf(features, cidr, opts.MaxEndpoints)
	id := objectID(config, features, opts.MaxEndpoints)
	if n, err := open(opts.PinPath); err == nil {
		if n.objectID() == id {
			return n, nil
		}
		n.Close()
	}
	hadPrograms := pinExists(filepath.Join(opts.PinPath, "progs"))
	n, err = load(opts, features, config, id)
	if err != nil {
		if created {
			os.RemoveAll(opts.PinPath)
		}
		return nil, err
	}
	n.Replaced = hadPrograms
	return n, nil
}

// ErrNoNode is returned by Open for a pin directory that holds no node;
// a pin path that does not exist gives an error wrapping os.ErrNotExist.
var ErrNoNode = errors.New("no hostrouting node")

// Open adopts the node instance pinned at pinPath without loading or
// mounting anything: for tools that inspect a running node.
func Open(pinPath string) (*Instance, error) {
	pinPath, err := reach(filepath.Clean(pinPath), false)
	if err != nil {
		return nil, err
	}
	if ok, err := onBPFFS(pinPath); err != nil {
		return nil, fmt.Errorf("open node at %s: %w", pinPath, err)
	} else if !ok {
		return nil, fmt.Errorf("open node at %s: %w", pinPath, ErrNotBPFFS)
	}
	n, err := open(pinPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open node at %s: %w: %w", pinPath, ErrNoNode, err)
	}
	return n, err
}

func open(pinPath string) (*Instance, error) {
	n := &Instance{PinPath: pinPath, Adopted: true, progs: map[Program]*ebpf.Program{}}
	pinned := map[string]*ebpf.Map{}
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil)
		if err != nil {
			n.closeMaps(pinned)
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		pinned[name] = m
	}
	n.setMaps(pinned)
	for _, p := range programs {
		prog, err := ebpf.LoadPinnedProgram(n.programPin(p), nil)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("open pinned program %s: %w", p, err)
		}
		n.progs[p] = prog
	}
	var info bpf.HostroutingNodeInfo
	if err := n.info.Lookup(uint32(0), &info); err != nil {
		n.Close()
		return nil, fmt.Errorf("read node info: %w", err)
	}
	n.Features = featuresFromBits(info.Features)
	if info.NativePrefix != 0 {
		var a [4]byte
		binary.NativeEndian.PutUint32(a[:], info.NativeCidr)
		n.NativeRoutingCIDR = netip.PrefixFrom(netip.AddrFrom4(a), int(info.NativePrefix))
	}
	return n, nil
}

func load(opts Options, features Features, config bpf.HostroutingConfig, id uint64) (*Instance, error) {
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
	spec.Maps[bpf.HostroutingMapHrLxc].MaxEntries = config.LxcMask + 1
	if err := spec.Variables[bpf.HostroutingVarCONFIG].Set(config); err != nil {
		return nil, fmt.Errorf("set datapath config: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: opts.PinPath},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("load datapath: maps pinned at %s were made with other sizes (MaxEndpoints?): %w", opts.PinPath, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	defer coll.Close()

	n := &Instance{PinPath: opts.PinPath, Features: features, NativeRoutingCIDR: opts.NativeRoutingCIDR, progs: map[Program]*ebpf.Program{}}
	n.setMaps(coll.Maps)
	for _, name := range mapNames {
		coll.DetachMap(name)
	}
	if err := os.MkdirAll(filepath.Join(opts.PinPath, "progs"), 0o700); err != nil {
		n.Close()
		return nil, fmt.Errorf("create program pin directory: %w", err)
	}
	// This load's stages live as long as their pin: programs of an earlier
	// load keep theirs until ReleaseStale, after every attachment moved.
	os.Remove(n.callsPin(id)) // left by a load of the same object that did not finish
	if err := coll.Maps[bpf.HostroutingMapHrCalls].Pin(n.callsPin(id)); err != nil {
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
		prog := coll.DetachProgram(p.objectName())
		n.progs[p] = prog
		if err := pinReplacing(prog, n.programPin(p)); err != nil {
			n.Close()
			return nil, fmt.Errorf("pin program %s: %w", p, err)
		}
	}
	info := bpf.HostroutingNodeInfo{ObjectId: id, Features: features.bits(), NativeCidr: config.NativeCidr}
	if opts.NativeRoutingCIDR.IsValid() {
		info.NativePrefix = uint32(opts.NativeRoutingCIDR.Bits())
	}
	if err := n.info.Put(uint32(0), &info); err != nil {
		n.Close()
		return nil, fmt.Errorf("write node info: %w", err)
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

func configOf(f Features, native netip.Prefix, maxEndpoints uint32) bpf.HostroutingConfig {
	b := func(f Feature) uint8 {
		if f.Enabled {
			return 1
		}
		return 0
	}
	c := bpf.HostroutingConfig{RedirectPeer: b(f.RedirectPeer), RedirectNeigh: b(f.RedirectNeigh), FibLookup: b(f.FIBLookup), CheckMtu: b(f.CheckMTU),
		LxcMask: lxcSlots(maxEndpoints) - 1}
	if native.IsValid() {
		addr := native.Addr().As4()
		mask := net.CIDRMask(native.Bits(), 32)
		c.NativeCidr = binary.NativeEndian.Uint32(addr[:])
		c.NativeMask = binary.NativeEndian.Uint32(mask)
	}
	return c
}

// objectID names the code and config programs were loaded with.
func objectID(c bpf.HostroutingConfig, f Features, maxEndpoints uint32) uint64 {
	h := sha256.New()
	obj := bpf.ObjectHash()
	h.Write(obj[:])
	binary.Write(h, binary.LittleEndian, c)
	binary.Write(h, binary.LittleEndian, f.bits())
	binary.Write(h, binary.LittleEndian, maxEndpoints)
	return binary.LittleEndian.Uint64(h.Sum(nil))
}

func (n *Instance) objectID() uint64 {
	var info bpf.HostroutingNodeInfo
	if err := n.info.Lookup(uint32(0), &info); err != nil {
		return 0
	}
	return info.ObjectId
}

func (n *Instance) setMaps(m map[string]*ebpf.Map) {
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
	}
	n.info = m[bpf.HostroutingMapHrInfo]
}

func (n *Instance) allMaps() []*ebpf.Map {
	return []*ebpf.Map{n.Maps.Endpoints, n.Maps.Endpoints6, n.Maps.Devices, n.Maps.DeviceSlots, n.Maps.EndpointStats,
		n.Maps.Metrics, n.Maps.Nodes, n.Maps.Policy, n.Maps.PolicyReturn, n.info}
}

// MapSize is what one of the node's maps takes.
type MapSize struct {
	Name       string
	MaxEntries uint32
	Memory     uint64 // bytes charged to the map (memlock), as the kernel reports it
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
		sizes = append(sizes, MapSize{Name: info.Name, MaxEntries: m.MaxEntries(), Memory: mem})
	}
	return sizes, nil
}

func (n *Instance) callsPin(id uint64) string {
	return filepath.Join(n.PinPath, "progs", fmt.Sprintf("hr_calls_%016x", id))
}

// ReleaseStale unpins the tail-call stages of earlier loads. Call it once
// every attachment runs this load's programs (after renewing them when
// Replaced): programs of an earlier load that are still attached lose
// their stages and drop what they see.
func (n *Instance) ReleaseStale() error {
	current := n.callsPin(n.objectID())
	stale, err := filepath.Glob(filepath.Join(n.PinPath, "progs", "hr_calls_*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, pin := range stale {
		if pin != current {
			if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("unpin stale stages: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

func (n *Instance) closeMaps(m map[string]*ebpf.Map) {
	for _, x := range m {
		x.Close()
	}
}

// Program returns the loaded program p. It stays owned by the Instance.
func (n *Instance) Program(p Program) *ebpf.Program {
	return n.progs[p]
}

func (n *Instance) programPin(p Program) string {
	return filepath.Join(n.PinPath, "progs", p.objectName())
}

// Close releases this process's handles on the node's programs and maps.
// Everything pinned keeps running: attachments stay, and a later Load or
// Open of the same pin path adopts it.
func (n *Instance) Close() error {
	var errs []error
	for _, p := range n.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range n.allMaps() {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// Remove tears the node instance down: it detaches every tcx link pinned
// under the pin path, unpins programs and maps and removes the directory.
// Filters attached in clsact mode are not pinned: detach them first with
// Detach (the datapath package does so for its endpoints).
func (n *Instance) Remove() error {
	errs := []error{n.detachAllLinks()}
	errs = append(errs, n.Close())
	if err := os.RemoveAll(n.PinPath); err != nil {
		errs = append(errs, fmt.Errorf("remove pin path: %w", err))
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

// SetDevices records the ifindexes of the node's devices (those with
// from-netdev and to-netdev), for adopters and status.
func (n *Instance) SetDevices(ifindexes []int) error {
	var info bpf.HostroutingNodeInfo
	if err := n.info.Lookup(uint32(0), &info); err != nil {
		return fmt.Errorf("read node info: %w", err)
	}
	if len(ifindexes) > len(info.Devices) {
		return fmt.Errorf("%d devices: at most %d", len(ifindexes), len(info.Devices))
	}
	info.Devices = [len(info.Devices)]uint32{}
	for i, ifindex := range ifindexes {
		info.Devices[i] = uint32(ifindex)
	}
	if err := n.info.Put(uint32(0), &info); err != nil {
		return fmt.Errorf("write node info: %w", err)
	}
	return nil
}

// Devices returns the ifindexes recorded by SetDevices.
func (n *Instance) Devices() ([]int, error) {
	var info bpf.HostroutingNodeInfo
	if err := n.info.Lookup(uint32(0), &info); err != nil {
		return nil, fmt.Errorf("read node info: %w", err)
	}
	var devs []int
	for _, d := range info.Devices {
		if d == 0 {
			break
		}
		devs = append(devs, int(d))
	}
	return devs, nil
}

func pinExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
