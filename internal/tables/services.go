package tables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// Services is the frontend map with its backend, switch, ClusterIP and
// source range maps (hr_lb4_services, hr_lb4_backends, hr_lb_on,
// hr_cluster_ips, hr_lb4_srcrange).
type Services struct {
	services, backends, on, clusterIPs, sourceRanges *ebpf.Map
}

// ServiceMaps are the loaded maps of the services (instance.Maps).
type ServiceMaps struct {
	Services, Backends, On, ClusterIPs, SourceRanges *ebpf.Map
}

// NewServices wraps the loaded service maps.
func NewServices(m ServiceMaps) *Services {
	return &Services{services: m.Services, backends: m.Backends, on: m.On, clusterIPs: m.ClusterIPs, sourceRanges: m.SourceRanges}
}

func lbKey(f maps.Frontend, slot uint16) (bpf.HostroutingLb4Key, error) {
	if !f.Addr.Addr().Is4() {
		return bpf.HostroutingLb4Key{}, fmt.Errorf("frontend %s: want an IPv4 address", f.Addr)
	}
	a := f.Addr.Addr().As4()
	return bpf.HostroutingLb4Key{
		Address:     binary.NativeEndian.Uint32(a[:]),
		Dport:       htons(f.Addr.Port()),
		BackendSlot: slot,
		Proto:       uint8(f.Proto),
		Scope:       uint8(f.Scope),
	}, nil
}

func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}

// Put writes the frontend entry e: its backend slots first, then its
// header, then it drops slots a smaller entry left; a packet sees the old
// entry or the new one, never a slot beyond its count.
func (s *Services) Put(e maps.ServiceEntry) error {
	slots := append(slices.Clone(e.Backends), e.Inactive...)
	if len(slots) > 0xffff {
		return fmt.Errorf("frontend %s: %d backends, at most 65535", e.Frontend, len(slots))
	}
	head, err := lbKey(e.Frontend, 0)
	if err != nil {
		return err
	}
	var old bpf.HostroutingLb4Service
	hadOld := s.services.Lookup(head, &old) == nil
	var oldSlots []uint32
	if hadOld {
		prev, err := s.Entry(e.Frontend)
		if err != nil {
			return err
		}
		oldSlots = append(prev.Backends, prev.Inactive...)
	}
	if err := s.putSlots(head, slots); err != nil {
		s.undoSlots(head, oldSlots, len(slots))
		return fmt.Errorf("write frontend %s slots: %w", e.Frontend, mapErr(err, s.services))
	}
	v := bpf.HostroutingLb4Service{Count: uint16(len(e.Backends)), Qcount: uint16(len(e.Inactive)), RevNatIndex: e.RevNAT,
		Flags: uint16(e.Flags), AffinityTimeout: e.AffinityTimeout}
	if err := s.services.Update(head, v, ebpf.UpdateAny); err != nil {
		s.undoSlots(head, oldSlots, len(slots))
		return fmt.Errorf("write frontend %s: %w", e.Frontend, mapErr(err, s.services))
	}
	if hadOld {
		for slot := len(slots) + 1; slot <= int(old.Count)+int(old.Qcount); slot++ {
			k := head
			k.BackendSlot = uint16(slot)
			s.services.Delete(k)
		}
	}
	return s.enable()
}

// putSlots writes backend IDs into the slots 1..len(ids) of the frontend
// at head, in one batch.
func (s *Services) putSlots(head bpf.HostroutingLb4Key, ids []uint32) error {
	if len(ids) == 0 {
		return nil
	}
	keys := make([]bpf.HostroutingLb4Key, len(ids))
	values := make([]bpf.HostroutingLb4Service, len(ids))
	for i, id := range ids {
		keys[i], values[i] = head, bpf.HostroutingLb4Service{BackendId: id}
		keys[i].BackendSlot = uint16(i + 1)
	}
	_, err := s.services.BatchUpdate(keys, values, nil)
	return err
}

// undoSlots puts back the slots a failed Put may have written: the old
// entry's (none for a new frontend), and no slot beyond them up to
// written.
func (s *Services) undoSlots(head bpf.HostroutingLb4Key, old []uint32, written int) {
	s.putSlots(head, old)
	for slot := len(old) + 1; slot <= written; slot++ {
		k := head
		k.BackendSlot = uint16(slot)
		s.services.Delete(k)
	}
}

// Entry returns the entry of frontend f, or ErrNotFound.
func (s *Services) Entry(f maps.Frontend) (maps.ServiceEntry, error) {
	head, err := lbKey(f, 0)
	if err != nil {
		return maps.ServiceEntry{}, err
	}
	var v bpf.HostroutingLb4Service
	if err := s.services.Lookup(head, &v); err != nil {
		return maps.ServiceEntry{}, fmt.Errorf("frontend %s: %w", f, mapErr(err, nil))
	}
	e := maps.ServiceEntry{Frontend: f, RevNAT: v.RevNatIndex, Flags: maps.ServiceFlags(v.Flags), AffinityTimeout: v.AffinityTimeout}
	for slot := 1; slot <= int(v.Count)+int(v.Qcount); slot++ {
		k := head
		k.BackendSlot = uint16(slot)
		var b bpf.HostroutingLb4Service
		if err := s.services.Lookup(k, &b); err != nil {
			return maps.ServiceEntry{}, fmt.Errorf("frontend %s slot %d: %w", f, slot, mapErr(err, nil))
		}
		if slot <= int(v.Count) {
			e.Backends = append(e.Backends, b.BackendId)
		} else {
			e.Inactive = append(e.Inactive, b.BackendId)
		}
	}
	return e, nil
}

// Delete removes the frontend's entry and slots; a missing one is not an
// error.
func (s *Services) Delete(f maps.Frontend) error {
	head, err := lbKey(f, 0)
	if err != nil {
		return err
	}
	var old bpf.HostroutingLb4Service
	if err := s.services.Lookup(head, &old); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err := s.services.Delete(head); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete frontend %s: %w", f, err)
	}
	for slot := 1; slot <= int(old.Count)+int(old.Qcount); slot++ {
		k := head
		k.BackendSlot = uint16(slot)
		s.services.Delete(k)
	}
	return nil
}

// List returns every frontend entry, ordered by frontend.
func (s *Services) List() ([]maps.ServiceEntry, error) {
	var (
		heads   = map[bpf.HostroutingLb4Key]bpf.HostroutingLb4Service{}
		slots   = map[bpf.HostroutingLb4Key]uint32{}
		entries []maps.ServiceEntry
	)
	err := ListBatch(s.services, func(keys []bpf.HostroutingLb4Key, vals []bpf.HostroutingLb4Service) error {
		for i, k := range keys {
			if k.BackendSlot == 0 {
				heads[k] = vals[i]
			} else {
				slots[k] = vals[i].BackendId
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	for k, v := range heads {
		e := maps.ServiceEntry{Frontend: frontendOf(k), RevNAT: v.RevNatIndex, Flags: maps.ServiceFlags(v.Flags), AffinityTimeout: v.AffinityTimeout}
		for slot := 1; slot <= int(v.Count)+int(v.Qcount); slot++ {
			sk := k
			sk.BackendSlot = uint16(slot)
			if slot <= int(v.Count) {
				e.Backends = append(e.Backends, slots[sk])
			} else {
				e.Inactive = append(e.Inactive, slots[sk])
			}
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b maps.ServiceEntry) int {
		if c := a.Frontend.Addr.Compare(b.Frontend.Addr); c != 0 {
			return c
		}
		if a.Frontend.Proto != b.Frontend.Proto {
			return int(a.Frontend.Proto) - int(b.Frontend.Proto)
		}
		return int(a.Frontend.Scope) - int(b.Frontend.Scope)
	})
	return entries, nil
}

func frontendOf(k bpf.HostroutingLb4Key) maps.Frontend {
	return maps.Frontend{Addr: netip.AddrPortFrom(ipv4Addr(k.Address), ntohs(k.Dport)), Proto: maps.Protocol(k.Proto), Scope: maps.Scope(k.Scope)}
}

// PutBackends writes backends bs with one batch update.
func (s *Services) PutBackends(bs []maps.Backend) error {
	if len(bs) == 0 {
		return nil
	}
	ids := make([]uint32, len(bs))
	values := make([]bpf.HostroutingLb4Backend, len(bs))
	for i, b := range bs {
		if !b.Addr.Addr().Is4() || b.ID == 0 {
			return fmt.Errorf("backend %d %s: want an ID and an IPv4 address", b.ID, b.Addr)
		}
		a := b.Addr.Addr().As4()
		ids[i] = b.ID
		values[i] = bpf.HostroutingLb4Backend{Address: binary.NativeEndian.Uint32(a[:]), Port: htons(b.Addr.Port()), Proto: uint8(b.Proto), State: uint8(b.State)}
	}
	if _, err := s.backends.BatchUpdate(ids, values, nil); err != nil {
		return fmt.Errorf("write backends %d %s…: %w", bs[0].ID, bs[0].Addr, mapErr(err, s.backends))
	}
	return nil
}

// DeleteBackend removes backend id; a missing one is not an error.
func (s *Services) DeleteBackend(id uint32) error {
	if err := s.backends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete backend %d: %w", id, err)
	}
	return nil
}

// Backends returns every backend by ID.
func (s *Services) Backends() (map[uint32]maps.Backend, error) {
	all := map[uint32]maps.Backend{}
	err := ListBatch(s.backends, func(ids []uint32, vals []bpf.HostroutingLb4Backend) error {
		for i, id := range ids {
			v := vals[i]
			all[id] = maps.Backend{ID: id, Addr: netip.AddrPortFrom(ipv4Addr(v.Address), ntohs(v.Port)), Proto: maps.Protocol(v.Proto), State: maps.BackendState(v.State)}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backends: %w", err)
	}
	return all, nil
}

// ClusterIPs returns the addresses the ClusterIP table holds: a packet
// to one of them that matches no frontend is rejected.
func (s *Services) ClusterIPs() (map[netip.Addr]bool, error) {
	all := map[netip.Addr]bool{}
	err := ListBatch(s.clusterIPs, func(addrs []uint32, _ []uint8) error {
		for _, a := range addrs {
			all[ipv4Addr(a)] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list ClusterIPs: %w", err)
	}
	return all, nil
}

// PutClusterIP adds addr to the ClusterIP table.
func (s *Services) PutClusterIP(addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("ClusterIP %s: want an IPv4 address", addr)
	}
	a := addr.As4()
	if err := s.clusterIPs.Update(binary.NativeEndian.Uint32(a[:]), uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write ClusterIP %s: %w", addr, mapErr(err, s.clusterIPs))
	}
	return nil
}

// DeleteClusterIP takes addr out of the ClusterIP table; a missing one is
// not an error.
func (s *Services) DeleteClusterIP(addr netip.Addr) error {
	if !addr.Is4() {
		return nil
	}
	a := addr.As4()
	if err := s.clusterIPs.Delete(binary.NativeEndian.Uint32(a[:])); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ClusterIP %s: %w", addr, err)
	}
	return nil
}

// SourceRanges returns the source ranges of every service that has some,
// by service ID.
func (s *Services) SourceRanges() (map[uint16][]netip.Prefix, error) {
	all := map[uint16][]netip.Prefix{}
	var (
		k bpf.HostroutingLb4SrcRangeKey
		v uint8
	)
	it := s.sourceRanges.Iterate()
	for it.Next(&k, &v) {
		p := netip.PrefixFrom(ipv4Addr(k.Addr), int(k.Prefixlen)-32)
		all[k.RevNatIndex] = append(all[k.RevNatIndex], p)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list source ranges: %w", err)
	}
	for _, ps := range all {
		slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr())*64 + a.Bits() - b.Bits() })
	}
	return all, nil
}

func srcRangeKey(id uint16, p netip.Prefix) (bpf.HostroutingLb4SrcRangeKey, error) {
	if !p.Addr().Is4() {
		return bpf.HostroutingLb4SrcRangeKey{}, fmt.Errorf("source range %s: want an IPv4 prefix", p)
	}
	a := p.Masked().Addr().As4()
	return bpf.HostroutingLb4SrcRangeKey{Prefixlen: 32 + uint32(p.Bits()), RevNatIndex: id, Addr: binary.NativeEndian.Uint32(a[:])}, nil
}

// PutSourceRange allows sources in p to reach service id.
func (s *Services) PutSourceRange(id uint16, p netip.Prefix) error {
	k, err := srcRangeKey(id, p)
	if err != nil {
		return err
	}
	if err := s.sourceRanges.Update(k, uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write source range %s of service %d: %w", p, id, mapErr(err, s.sourceRanges))
	}
	return nil
}

// DeleteSourceRange takes p out of service id's source ranges; a missing
// one is not an error.
func (s *Services) DeleteSourceRange(id uint16, p netip.Prefix) error {
	k, err := srcRangeKey(id, p)
	if err != nil {
		return err
	}
	if err := s.sourceRanges.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete source range %s of service %d: %w", p, id, err)
	}
	return nil
}

// enable turns the datapath's service lookups on (hr_lb_on).
func (s *Services) enable() error {
	if err := s.on.Update(uint32(0), uint32(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("enable services: %w", err)
	}
	return nil
}
