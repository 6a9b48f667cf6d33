// Package loader loads the hostrouting datapath once per node, pins it
// under one bpffs directory per node instance, adopts what an earlier
// process pinned there, and attaches its programs to devices in any
// network namespace, with tcx links or, on kernels without them, clsact
// qdiscs and cls_bpf filters.
//
// Layout of a pin directory:
//
//	hr_endpoints hr_ep_stats hr_metrics hr_nodes hr_info   maps
//	progs/from_container progs/to_container ...            programs
//	links/<netns inode>_<ifindex>_<program>        tcx links
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

// DefaultMaxEndpoints is the endpoint map's size unless
// Options.MaxEndpoints names another.
const DefaultMaxEndpoints = 65536

// Options configure Load.
type Options struct {
	// PinPath is the node instance's directory on a bpf filesystem.
	// Default DefaultPinPath.
	PinPath string
	// MaxEndpoints sizes the endpoint and counter maps. Default
	// DefaultMaxEndpoints. A node keeps the size it was first loaded with.
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
	Endpoints     *ebpf.Map // endpoint address → endpoint info
	EndpointStats *ebpf.Map // host-side ifindex → per-CPU endpoint counters
	Metrics       *ebpf.Map // metric → per-CPU node-wide counters
	Nodes         *ebpf.Map // node IP → node name
}

// Node is the loaded datapath of one node instance. Close releases this
// process's handles and leaves the pinned datapath running; Remove tears
// it down.
type Node struct {
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

var mapNames = []string{bpf.HostroutingMapHrEndpoints, bpf.HostroutingMapHrEpStats, bpf.HostroutingMapHrMetrics, bpf.HostroutingMapHrNodes, bpf.HostroutingMapHrInfo}

// Load loads the datapath for the node instance at opts.PinPath, or adopts
// the programs and maps pinned there when they come from the same code and
// config. Processes loading the same pin path at once serialise: one loads,
// the others adopt. If Load fails, it leaves no new pins behind.
func Load(opts Options) (n *Node, err error) {
	if opts.PinPath == "" {
		opts.PinPath = DefaultPinPath
	}
	if opts.MaxEndpoints == 0 {
		opts.MaxEndpoints = DefaultMaxEndpoints
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
	config := configOf(features, cidr)
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
func Open(pinPath string) (*Node, error) {
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

func open(pinPath string) (*Node, error) {
	n := &Node{PinPath: pinPath, Adopted: true, progs: map[Program]*ebpf.Program{}}
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

func load(opts Options, features Features, config bpf.HostroutingConfig, id uint64) (*Node, error) {
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		return nil, err
	}
	for _, name := range []string{bpf.HostroutingMapHrEndpoints, bpf.HostroutingMapHrEpStats} {
		spec.Maps[name].MaxEntries = opts.MaxEndpoints
	}
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

	n := &Node{PinPath: opts.PinPath, Features: features, NativeRoutingCIDR: opts.NativeRoutingCIDR, progs: map[Program]*ebpf.Program{}}
	n.setMaps(coll.Maps)
	for name := range coll.Maps {
		coll.DetachMap(name)
	}
	if err := os.MkdirAll(filepath.Join(opts.PinPath, "progs"), 0o700); err != nil {
		n.Close()
		return nil, fmt.Errorf("create program pin directory: %w", err)
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

func configOf(f Features, native netip.Prefix) bpf.HostroutingConfig {
	b := func(f Feature) uint8 {
		if f.Enabled {
			return 1
		}
		return 0
	}
	c := bpf.HostroutingConfig{RedirectPeer: b(f.RedirectPeer), RedirectNeigh: b(f.RedirectNeigh), FibLookup: b(f.FIBLookup), CheckMtu: b(f.CheckMTU)}
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

func (n *Node) objectID() uint64 {
	var info bpf.HostroutingNodeInfo
	if err := n.info.Lookup(uint32(0), &info); err != nil {
		return 0
	}
	return info.ObjectId
}

func (n *Node) setMaps(m map[string]*ebpf.Map) {
	n.Maps = Maps{
		Endpoints:     m[bpf.HostroutingMapHrEndpoints],
		EndpointStats: m[bpf.HostroutingMapHrEpStats],
		Metrics:       m[bpf.HostroutingMapHrMetrics],
		Nodes:         m[bpf.HostroutingMapHrNodes],
	}
	n.info = m[bpf.HostroutingMapHrInfo]
}

func (n *Node) closeMaps(m map[string]*ebpf.Map) {
	for _, x := range m {
		x.Close()
	}
}

// Program returns the loaded program p. It stays owned by the Node.
func (n *Node) Program(p Program) *ebpf.Program {
	return n.progs[p]
}

func (n *Node) programPin(p Program) string {
	return filepath.Join(n.PinPath, "progs", p.objectName())
}

// Close releases this process's handles on the node's programs and maps.
// Everything pinned keeps running: attachments stay, and a later Load or
// Open of the same pin path adopts it.
func (n *Node) Close() error {
	var errs []error
	for _, p := range n.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range []*ebpf.Map{n.Maps.Endpoints, n.Maps.EndpointStats, n.Maps.Metrics, n.Maps.Nodes, n.info} {
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
func (n *Node) Remove() error {
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
func (n *Node) SetDevices(ifindexes []int) error {
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
func (n *Node) Devices() ([]int, error) {
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
