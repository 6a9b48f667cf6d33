package tables

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// NAT entry flags: enum flow_flag's, and NAT_F_HOST.
const (
	natFlagClosing     = uint16(maps.CTClosing)
	natFlagHost        = 1 << 2
	natFlagEstablished = uint16(maps.CTEstablished)
)

// SNAT is the datapath's source NAT: BPF masquerade of pods' traffic and
// of NodePort traffic sent to other nodes' backends, and the node's own
// flows that keep their ports. As Conntrack, a flow's entries start in a
// table of new flows (hr_snat4_new, an LRU hash) and move together to
// the established table of their protocol (hr_snat4_tcp, hr_snat4_any,
// hashes that never evict) once the flow is established.
type SNAT struct {
	tables []*ebpf.Map
}

// NewSNAT wraps the loaded source NAT tables, in the order of
// instance.Maps.SNATTables: established TCP, established other protocols,
// new. With one table, every entry is in it.
func NewSNAT(tables ...*ebpf.Map) *SNAT {
	return &SNAT{tables: tables}
}

// Tables returns the wrapped maps.
func (s *SNAT) Tables() []*ebpf.Map { return s.tables }

func snatKey(k maps.SNATKey) (bpf.HostroutingCt4Key, error) {
	if !k.Src.Addr().Is4() || !k.Dst.Addr().Is4() {
		return bpf.HostroutingCt4Key{}, fmt.Errorf("NAT key %s: want IPv4 addresses", k)
	}
	return bpf.HostroutingCt4Key{
		Saddr: addrKey(k.Src.Addr()), Daddr: addrKey(k.Dst.Addr()),
		Sport: htons(k.Src.Port()), Dport: htons(k.Dst.Port()),
		Proto: uint8(k.Proto), Dir: uint8(k.Dir),
	}, nil
}

func snatEntryOf(k *bpf.HostroutingCt4Key, v *bpf.HostroutingNat4Entry, now uint32) maps.SNATEntry {
	key := ctKeyOf(k)
	return maps.SNATEntry{
		Dir: maps.NATDir(k.Dir), Proto: key.Proto, Src: key.Src, Dst: key.Dst,
		To:      netip.AddrPortFrom(ipv4Addr(v.ToAddr), ntohs(v.ToPort)),
		Expires: v.St.Expires, Remaining: maps.Remaining(v.St.Expires, now),
		Host:        v.St.Flags&natFlagHost != 0,
		Closing:     v.St.Flags&natFlagClosing != 0,
		Established: v.St.Flags&natFlagEstablished != 0,
		Flags:       maps.CTFlags(v.St.Flags),
	}
}

// Put writes entry e (for tests, and to restore entries).
func (s *SNAT) Put(e maps.SNATEntry) error {
	k, err := snatKey(e.Key())
	if err != nil {
		return err
	}
	if !e.To.Addr().Is4() {
		return fmt.Errorf("NAT entry %s: translation %s, want an IPv4 address", e.Key(), e.To)
	}
	v := bpf.HostroutingNat4Entry{ToAddr: addrKey(e.To.Addr()), ToPort: htons(e.To.Port())}
	v.St.Expires = e.Expires
	if e.Closing {
		v.St.Flags |= natFlagClosing
	}
	if e.Host {
		v.St.Flags |= natFlagHost
	}
	if e.Established {
		v.St.Flags |= natFlagEstablished | uint16(maps.CTSeenReply)
	}
	m := tableOf(s.tables, e.Proto, e.Established)
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write NAT entry %s: %w", e.Key(), mapErr(err, m))
	}
	return nil
}

// Lookup returns the entry at k, or ErrNotFound.
func (s *SNAT) Lookup(k maps.SNATKey) (maps.SNATEntry, error) {
	bk, err := snatKey(k)
	if err != nil {
		return maps.SNATEntry{}, err
	}
	var v bpf.HostroutingNat4Entry
	for _, m := range s.tables {
		err = m.Lookup(bk, &v)
		if err == nil {
			return snatEntryOf(&bk, &v, maps.MonotonicSeconds()), nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
	}
	return maps.SNATEntry{}, fmt.Errorf("NAT entry %s: %w", k, mapErr(err, s.tables[0]))
}

// Delete removes the entry at k, or returns ErrNotFound. A flow's other
// entry stays: see Reverse.
func (s *SNAT) Delete(k maps.SNATKey) error {
	bk, err := snatKey(k)
	if err != nil {
		return err
	}
	if err := deleteAny(s.tables, bk); err != nil {
		return fmt.Errorf("delete NAT entry %s: %w", k, err)
	}
	return nil
}

// DeleteKeys removes the entries at keys in batches where the kernel has
// them, skipping keys that are gone. It returns how many it removed.
func (s *SNAT) DeleteKeys(keys []maps.SNATKey) (int, error) {
	bks := make([]bpf.HostroutingCt4Key, len(keys))
	for i, k := range keys {
		var err error
		if bks[i], err = snatKey(k); err != nil {
			return 0, err
		}
	}
	return deleteKeys(s.tables, bks, "NAT")
}

// List returns every entry, read in batches where the kernel has them,
// table by table in Tables' order. Remaining is computed against one
// reading of the clock. The datapath changes the tables meanwhile: an
// entry made, or moved, during List may be missing or listed twice.
func (s *SNAT) List() ([]maps.SNATEntry, error) {
	var out []maps.SNATEntry
	now := maps.MonotonicSeconds()
	for _, m := range s.tables {
		err := ListBatch(m, func(keys []bpf.HostroutingCt4Key, vals []bpf.HostroutingNat4Entry) error {
			out = slices.Grow(out, len(keys))
			for i := range keys {
				out = append(out, snatEntryOf(&keys[i], &vals[i], now))
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list NAT: %w", err)
		}
	}
	return out, nil
}
