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
	"golang.org/x/sys/unix"
)

// Conntrack is the datapath's connection tracking of translated flows:
// service flows and their replies, and the replies of flows from outside
// into pods. A flow starts in the table of new flows (hr_ct4_new, an LRU
// hash); once established (TCP: its handshake done; others: a reply, then
// another packet) its entries move to the established table of its
// protocol (hr_ct4_tcp or hr_ct4_any, hashes that never evict), so that
// no flood of new flows can push out an established one.
type Conntrack struct {
	tables []*ebpf.Map
}

// NewConntrack wraps the loaded conntrack tables, in the order of
// instance.Maps.ConntrackTables: established TCP, established other
// protocols, new. With one table, every entry is in it.
func NewConntrack(tables ...*ebpf.Map) *Conntrack {
	return &Conntrack{tables: tables}
}

// Tables returns the wrapped maps.
func (c *Conntrack) Tables() []*ebpf.Map { return c.tables }

// tableOf is the table an entry with proto and flags belongs in.
func tableOf(tables []*ebpf.Map, proto maps.Protocol, established bool) *ebpf.Map {
	switch {
	case len(tables) < 3:
		return tables[0]
	case !established:
		return tables[2]
	case proto == maps.TCP:
		return tables[0]
	}
	return tables[1]
}

func ctKey(k maps.CTKey) (bpf.HostroutingCt4Key, error) {
	if !k.Src.Addr().Is4() || !k.Dst.Addr().Is4() {
		return bpf.HostroutingCt4Key{}, fmt.Errorf("conntrack key %s: want IPv4 addresses", k)
	}
	return bpf.HostroutingCt4Key{
		Saddr: addrKey(k.Src.Addr()), Daddr: addrKey(k.Dst.Addr()),
		Sport: htons(k.Src.Port()), Dport: htons(k.Dst.Port()),
		Proto: uint8(k.Proto), Dir: uint8(k.Dir),
	}, nil
}

func addrKey(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func ctKeyOf(k *bpf.HostroutingCt4Key) maps.CTKey {
	return maps.CTKey{
		Dir: maps.CTDir(k.Dir), Proto: maps.Protocol(k.Proto),
		Src: netip.AddrPortFrom(ipv4Addr(k.Saddr), ntohs(k.Sport)),
		Dst: netip.AddrPortFrom(ipv4Addr(k.Daddr), ntohs(k.Dport)),
	}
}

func ctEntryOf(k *bpf.HostroutingCt4Key, v *bpf.HostroutingCtEntry, now uint32) maps.CTEntry {
	key := ctKeyOf(k)
	e := maps.CTEntry{
		Dir: key.Dir, Proto: key.Proto, Src: key.Src, Dst: key.Dst,
		Expires: v.St.Expires, Remaining: maps.Remaining(v.St.Expires, now),
		BackendID: v.BackendId, RevNAT: v.RevNatIndex, Flags: maps.CTFlags(v.St.Flags), SeqEnd: v.St.SeqEnd,
		Packets: v.Packets,
	}
	if v.NatAddr != 0 {
		e.Frontend = netip.AddrPortFrom(ipv4Addr(v.NatAddr), ntohs(v.NatPort))
	}
	return e
}

// Put writes entry e, in the table its protocol and CTEstablished flag
// say (for tests, and to restore entries).
func (c *Conntrack) Put(e maps.CTEntry) error {
	k, err := ctKey(e.Key())
	if err != nil {
		return err
	}
	v := bpf.HostroutingCtEntry{BackendId: e.BackendID, RevNatIndex: e.RevNAT, Packets: e.Packets}
	v.St.Expires, v.St.Flags, v.St.SeqEnd = e.Expires, uint16(e.Flags), e.SeqEnd
	if e.Frontend.IsValid() {
		if !e.Frontend.Addr().Is4() {
			return fmt.Errorf("conntrack entry %s: frontend %s: want IPv4", e.Key(), e.Frontend)
		}
		v.NatAddr, v.NatPort = addrKey(e.Frontend.Addr()), htons(e.Frontend.Port())
	}
	m := tableOf(c.tables, e.Proto, e.Flags&maps.CTEstablished != 0)
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write conntrack entry %s: %w", e.Key(), mapErr(err, m))
	}
	return nil
}

// Lookup returns the entry at k, or ErrNotFound.
func (c *Conntrack) Lookup(k maps.CTKey) (maps.CTEntry, error) {
	bk, err := ctKey(k)
	if err != nil {
		return maps.CTEntry{}, err
	}
	var v bpf.HostroutingCtEntry
	for _, m := range c.tables {
		err = m.Lookup(bk, &v)
		if err == nil {
			return ctEntryOf(&bk, &v, maps.MonotonicSeconds()), nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
	}
	return maps.CTEntry{}, fmt.Errorf("conntrack entry %s: %w", k, mapErr(err, c.tables[0]))
}

// Delete removes the entry at k, or returns ErrNotFound.
func (c *Conntrack) Delete(k maps.CTKey) error {
	bk, err := ctKey(k)
	if err != nil {
		return err
	}
	if err := deleteAny(c.tables, bk); err != nil {
		return fmt.Errorf("delete conntrack entry %s: %w", k, err)
	}
	return nil
}

// deleteAny deletes key from every table that has it: ErrNotFound if
// none did.
func deleteAny(tables []*ebpf.Map, key bpf.HostroutingCt4Key) error {
	found := false
	for _, m := range tables {
		err := m.Delete(key)
		if err == nil {
			found = true
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return mapErr(err, m)
		}
	}
	if !found {
		return mapErr(ebpf.ErrKeyNotExist, tables[0])
	}
	return nil
}

// DeleteKeys removes the entries at keys in batches where the kernel has
// them, skipping keys that are gone. It returns how many it removed.
func (c *Conntrack) DeleteKeys(keys []maps.CTKey) (int, error) {
	bks := make([]bpf.HostroutingCt4Key, len(keys))
	for i, k := range keys {
		var err error
		if bks[i], err = ctKey(k); err != nil {
			return 0, err
		}
	}
	return deleteKeys(c.tables, bks, "conntrack")
}

func deleteKeys(tables []*ebpf.Map, keys []bpf.HostroutingCt4Key, what string) (int, error) {
	removed := 0
	for _, m := range tables {
		n, err := DeleteBatch(m, keys)
		removed += n
		if err != nil {
			return removed, fmt.Errorf("delete %s entries: %w", what, err)
		}
	}
	return removed, nil
}

// List returns every entry, read in batches where the kernel has them
// (one syscall per few thousand entries), table by table in Tables'
// order. Remaining is computed against one reading of the clock. The
// datapath changes the tables meanwhile: an entry made, or moved to an
// established table, during List may be missing or listed twice.
func (c *Conntrack) List() ([]maps.CTEntry, error) {
	var out []maps.CTEntry
	now := maps.MonotonicSeconds()
	for _, m := range c.tables {
		err := ListBatch(m, func(keys []bpf.HostroutingCt4Key, vals []bpf.HostroutingCtEntry) error {
			out = slices.Grow(out, len(keys))
			for i := range keys {
				out = append(out, ctEntryOf(&keys[i], &vals[i], now))
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list conntrack: %w", err)
		}
	}
	return out, nil
}

// DefaultBatchSize is how many entries ListBatch reads per syscall.
const DefaultBatchSize = 4096

// ListBatch calls fn with every key and value of the hash map m, a batch
// at a time: read with BPF_MAP_LOOKUP_BATCH, DefaultBatchSize entries per
// syscall, or by iteration on kernels without batch operations (before
// 5.6). fn may delete entries it was given (and others already read); it
// must not keep the slices, which the next batch overwrites. An error from
// fn ends the listing and is returned.
func ListBatch[K, V any](m *ebpf.Map, fn func(keys []K, vals []V) error) error {
	size := DefaultBatchSize
	keys, vals := make([]K, size), make([]V, size)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		switch {
		case errors.Is(err, unix.ENOSPC) && n == 0 && size < 1<<20:
			// A hash bucket holds more entries than the batch.
			size *= 2
			keys, vals = make([]K, size), make([]V, size)
			continue
		case errors.Is(err, ebpf.ErrNotSupported):
			return listIterate(m, fn)
		case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
			return err
		}
		if n > 0 {
			if err := fn(keys[:n], vals[:n]); err != nil {
				return err
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the end
		}
	}
}

// listIterate is ListBatch by iteration: the whole map first, so that fn
// may delete entries without upsetting the iterator.
func listIterate[K, V any](m *ebpf.Map, fn func([]K, []V) error) error {
	var (
		keys []K
		vals []V
		k    K
		v    V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := it.Err(); err != nil {
		return err
	}
	for len(keys) > 0 {
		n := min(len(keys), DefaultBatchSize)
		if err := fn(keys[:n], vals[:n]); err != nil {
			return err
		}
		keys, vals = keys[n:], vals[n:]
	}
	return nil
}

// DeleteBatch removes the entries at keys from m with BPF_MAP_DELETE_BATCH
// (one syscall per run of keys that exist), or one by one on kernels
// without batch operations. Keys that are gone are skipped. It returns
// how many entries it removed.
func DeleteBatch[K any](m *ebpf.Map, keys []K) (int, error) {
	deleted := 0
	for len(keys) > 0 {
		n, err := m.BatchDelete(keys, nil)
		deleted += n
		switch {
		case err == nil:
			return deleted, nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[n+1:] // keys[n] is gone: skip it
		case errors.Is(err, ebpf.ErrNotSupported):
			for i := range keys {
				err := m.Delete(&keys[i])
				if err == nil {
					deleted++
				} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
					return deleted, err
				}
			}
			return deleted, nil
		default:
			return deleted, err
		}
	}
	return deleted, nil
}
