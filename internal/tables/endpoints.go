package tables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
	"golang.org/x/sys/unix"
)

// Endpoints is the endpoint table: the same facts under three keys, the
// IPv4 address (hr_endpoints), the IPv6 address (hr_endpoints6) and the
// host-side ifindex (hr_devices); in hr_lxc, the array slot of the
// ifindex that the datapath reads first; and who each endpoint belongs to
// (hr_ep_meta, by endpoint ID).
type Endpoints struct {
	byIPv4, byIPv6, byDevice, slots, meta *ebpf.Map
}

// EndpointMaps are the loaded maps of the endpoint table
// (instance.Maps.Endpoints, Endpoints6, Devices, DeviceSlots, EndpointMeta).
type EndpointMaps struct {
	ByIPv4, ByIPv6, ByDevice, Slots, Meta *ebpf.Map
}

// NewEndpoints wraps the loaded endpoint maps.
func NewEndpoints(m EndpointMaps) *Endpoints {
	return &Endpoints{byIPv4: m.ByIPv4, byIPv6: m.ByIPv6, byDevice: m.ByDevice, slots: m.Slots, meta: m.Meta}
}

// slot is the hr_lxc index of a device: its ifindex masked by the
// array's size (a power of two).
func (e *Endpoints) slot(ifindex int) uint32 {
	return uint32(ifindex) & (e.slots.MaxEntries() - 1)
}

// claimSlot puts v into its device's hr_lxc slot unless another live
// device holds it; that device's endpoint stays found through hr_devices.
func (e *Endpoints) claimSlot(v bpf.HostroutingEndpointInfo) error {
	slot := e.slot(int(v.Ifindex))
	var held bpf.HostroutingEndpointInfo
	if err := e.slots.Lookup(slot, &held); err != nil {
		return err
	}
	if held.Ifindex != 0 && held.Ifindex != v.Ifindex {
		var other bpf.HostroutingEndpointInfo
		if err := e.byDevice.Lookup(held.Ifindex, &other); err == nil {
			return nil // shared slot: the first device keeps it
		}
	}
	return e.slots.Update(slot, v, ebpf.UpdateAny)
}

// releaseSlot empties the hr_lxc slot of device ifindex if that device
// holds it, handing it to another device of the same slot if there is one.
func (e *Endpoints) releaseSlot(ifindex int) error {
	slot := e.slot(ifindex)
	var held bpf.HostroutingEndpointInfo
	if err := e.slots.Lookup(slot, &held); err != nil {
		return err
	}
	if int(held.Ifindex) != ifindex {
		return nil
	}
	next := bpf.HostroutingEndpointInfo{}
	var (
		k uint32
		v bpf.HostroutingEndpointInfo
	)
	for it := e.byDevice.Iterate(); it.Next(&k, &v); {
		if int(k) != ifindex && e.slot(int(k)) == slot {
			next = v
			break
		}
	}
	return e.slots.Update(slot, next, ebpf.UpdateAny)
}

// ipv4Key is the hr_endpoints key of ip: its four bytes in network order,
// read as a host-order word, as the programs load it from the packet.
func ipv4Key(ip netip.Addr) (uint32, error) {
	if !ip.Is4() {
		return 0, fmt.Errorf("invalid IPv4 address %q", ip)
	}
	a := ip.As4()
	return binary.NativeEndian.Uint32(a[:]), nil
}

func ipv4Addr(k uint32) netip.Addr {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], k)
	return netip.AddrFrom4(a)
}

func ipv6Key(ip netip.Addr) ([16]byte, error) {
	if !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
		return [16]byte{}, fmt.Errorf("invalid IPv6 address %q", ip)
	}
	return ip.As16(), nil
}

func infoOf(ep maps.Endpoint) (bpf.HostroutingEndpointInfo, error) {
	if len(ep.MAC) != 6 || len(ep.NodeMAC) != 6 {
		return bpf.HostroutingEndpointInfo{}, fmt.Errorf("endpoint %s: MACs must be 6 bytes (mac %q, node mac %q)", ep.IP, ep.MAC, ep.NodeMAC)
	}
	if ep.IfIndex <= 0 {
		return bpf.HostroutingEndpointInfo{}, fmt.Errorf("endpoint %s: invalid ifindex %d", ep.IP, ep.IfIndex)
	}
	if ep.ID == 0 {
		return bpf.HostroutingEndpointInfo{}, fmt.Errorf("endpoint %s: ID 0 is reserved", ep.IP)
	}
	k4, err := ipv4Key(ep.IP)
	if err != nil {
		return bpf.HostroutingEndpointInfo{}, fmt.Errorf("endpoint: %w", err)
	}
	v := bpf.HostroutingEndpointInfo{Ifindex: uint32(ep.IfIndex), Id: ep.ID, Flags: uint16(ep.Flags), Ipv4: k4}
	if ep.IPv6.IsValid() {
		if v.Ipv6, err = ipv6Key(ep.IPv6); err != nil {
			return bpf.HostroutingEndpointInfo{}, fmt.Errorf("endpoint %s: %w", ep.IP, err)
		}
	}
	copy(v.Mac[:], ep.MAC)
	copy(v.NodeMac[:], ep.NodeMAC)
	return v, nil
}

// Put writes ep under each of its keys, replacing what was there. The
// device entries go first and the IPv4 entry, which turns delivery to the
// endpoint on, last.
func (e *Endpoints) Put(ep maps.Endpoint) error {
	v, err := infoOf(ep)
	if err != nil {
		return err
	}
	if err := e.byDevice.Update(uint32(ep.IfIndex), v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write endpoint %s: %w", ep.IP, mapErr(err, e.byDevice))
	}
	if err := e.claimSlot(v); err != nil {
		return fmt.Errorf("write endpoint %s: device slot: %w", ep.IP, err)
	}
	if err := e.putMeta(ep); err != nil {
		return err
	}
	if ep.IPv6.IsValid() {
		if err := e.byIPv6.Update(v.Ipv6, v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write endpoint %s: %w", ep.IPv6, mapErr(err, e.byIPv6))
		}
	}
	if err := e.byIPv4.Update(v.Ipv4, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write endpoint %s: %w", ep.IP, mapErr(err, e.byIPv4))
	}
	return nil
}

// Lookup returns the endpoint with address ip (IPv4 or IPv6), or
// ErrNotFound.
func (e *Endpoints) Lookup(ip netip.Addr) (maps.Endpoint, error) {
	var v bpf.HostroutingEndpointInfo
	var err error
	if ip.Is4() {
		var k uint32
		if k, err = ipv4Key(ip); err == nil {
			err = e.byIPv4.Lookup(k, &v)
		}
	} else {
		var k [16]byte
		if k, err = ipv6Key(ip); err == nil {
			err = e.byIPv6.Lookup(k, &v)
		}
	}
	if err != nil {
		return maps.Endpoint{}, fmt.Errorf("endpoint %s: %w", ip, mapErr(err, nil))
	}
	return e.withMeta(endpointOf(v)), nil
}

// LookupDevice returns the endpoint on the host-side device with index
// ifindex, or ErrNotFound.
func (e *Endpoints) LookupDevice(ifindex int) (maps.Endpoint, error) {
	var v bpf.HostroutingEndpointInfo
	if err := e.byDevice.Lookup(uint32(ifindex), &v); err != nil {
		return maps.Endpoint{}, fmt.Errorf("endpoint on ifindex %d: %w", ifindex, mapErr(err, nil))
	}
	return e.withMeta(endpointOf(v)), nil
}

// Delete removes every key of ep that still names ep's device; a key
// already gone is not an error. The IPv4 entry, which turns delivery on,
// goes first.
func (e *Endpoints) Delete(ep maps.Endpoint) error {
	var errs []error
	if k, err := ipv4Key(ep.IP); err == nil {
		errs = append(errs, deleteIfOwned(e.byIPv4, k, ep.IfIndex))
	}
	if k, err := ipv6Key(ep.IPv6); err == nil {
		errs = append(errs, deleteIfOwned(e.byIPv6, k, ep.IfIndex))
	}
	errs = append(errs, deleteIfOwned(e.byDevice, uint32(ep.IfIndex), ep.IfIndex), e.releaseSlot(ep.IfIndex))
	if ep.ID != 0 {
		if err := e.meta.Delete(uint32(ep.ID)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete endpoint %s: %w", ep.IP, err)
	}
	return nil
}

// deleteIfOwned deletes key from m if its entry is on device ifindex: a
// late delete must not take an address another device has by now.
func deleteIfOwned(m *ebpf.Map, key any, ifindex int) error {
	var v bpf.HostroutingEndpointInfo
	if err := m.Lookup(key, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return err
	}
	if int(v.Ifindex) != ifindex {
		return nil
	}
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// listChunk is how many entries List reads per batch syscall.
const listChunk = 4096

// List returns all endpoints, ordered by IPv4 address. It reads the map
// in batches, a syscall per few thousand entries rather than two per entry.
func (e *Endpoints) List() ([]maps.Endpoint, error) {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]uint32, listChunk)
		values = make([]bpf.HostroutingEndpointInfo, listChunk)
		eps    []maps.Endpoint
	)
	for {
		n, err := e.byDevice.BatchLookup(&cursor, keys, values, nil)
		for i := range n {
			eps = append(eps, e.withMeta(endpointOf(values[i])))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
	}
	slices.SortFunc(eps, func(a, b maps.Endpoint) int { return a.IP.Compare(b.IP) })
	return eps, nil
}

// putMeta records who ep belongs to, or forgets it if nobody is named.
func (e *Endpoints) putMeta(ep maps.Endpoint) error {
	var m bpf.HostroutingEndpointMeta
	if len(ep.ContainerID) >= len(m.ContainerId) || len(ep.PodIfName) >= len(m.Ifname) {
		return fmt.Errorf("endpoint %s: container ID of %d bytes, interface name of %d: at most %d and %d",
			ep.IP, len(ep.ContainerID), len(ep.PodIfName), len(m.ContainerId)-1, len(m.Ifname)-1)
	}
	if ep.ContainerID == "" && ep.PodIfName == "" {
		if err := e.meta.Delete(uint32(ep.ID)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("endpoint %s: %w", ep.IP, err)
		}
		return nil
	}
	putString(m.ContainerId[:], ep.ContainerID)
	putString(m.Ifname[:], ep.PodIfName)
	if err := e.meta.Update(uint32(ep.ID), m, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write endpoint %s: %w", ep.IP, mapErr(err, e.meta))
	}
	return nil
}

// withMeta fills in who ep belongs to.
func (e *Endpoints) withMeta(ep maps.Endpoint) maps.Endpoint {
	var m bpf.HostroutingEndpointMeta
	if e.meta.Lookup(uint32(ep.ID), &m) == nil {
		ep.ContainerID, ep.PodIfName = getString(m.ContainerId[:]), getString(m.Ifname[:])
	}
	return ep
}

func putString(dst []int8, s string) {
	for i := range len(s) {
		dst[i] = int8(s[i])
	}
}

func getString(src []int8) string {
	b := make([]byte, 0, len(src))
	for _, c := range src {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func endpointOf(v bpf.HostroutingEndpointInfo) maps.Endpoint {
	ep := maps.Endpoint{
		IP:      ipv4Addr(v.Ipv4),
		IfIndex: int(v.Ifindex),
		ID:      v.Id,
		Flags:   maps.EndpointFlags(v.Flags),
		MAC:     net.HardwareAddr(slices.Clone(v.Mac[:])),
		NodeMAC: net.HardwareAddr(slices.Clone(v.NodeMac[:])),
	}
	if v.Ipv6 != [16]byte{} {
		ep.IPv6 = netip.AddrFrom16(v.Ipv6)
	}
	return ep
}

// mapErr turns the kernel's answers into this package's sentinels; m, if
// known, names the full map's size.
func mapErr(err error, m *ebpf.Map) error {
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return maps.ErrNotFound
	case errors.Is(err, unix.E2BIG) && m != nil:
		return fmt.Errorf("%w (%d entries)", maps.ErrMapFull, m.MaxEntries())
	case errors.Is(err, unix.E2BIG):
		return maps.ErrMapFull
	}
	return err
}
