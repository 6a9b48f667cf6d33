package maps

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/bpf"
)

// NATDir is which way a source NAT entry looks at a flow (enum nat_dir in
// bpf/lib/nat.h).
type NATDir uint8

// Source NAT directions.
const (
	// NATOut is a translated flow as the pod (or NodePort client) sent
	// it: its source becomes To.
	NATOut NATDir = 1
	// NATIn is its reply as it arrives at the node address: its
	// destination becomes To. The node's own flows have one too (Host),
	// to keep their ports from translated flows.
	NATIn NATDir = 2
)

// String names d as Cilium's NAT lines do: "OUT", "IN".
func (d NATDir) String() string {
	switch d {
	case NATOut:
		return "OUT"
	case NATIn:
		return "IN"
	}
	return fmt.Sprintf("dir(%d)", uint8(d))
}

// NAT entry flags: enum flow_flag's, and NAT_F_HOST.
const (
	natFlagClosing     = uint16(CTClosing)
	natFlagHost        = 1 << 2
	natFlagEstablished = uint16(CTEstablished)
)

// SNATKey is a source NAT entry's key: a flow's tuple as its packets
// carry it, and the direction.
type SNATKey struct {
	Dir      NATDir
	Proto    Protocol
	Src, Dst netip.AddrPort
}

// String formats k as the start of a NAT line:
// "TCP OUT 10.0.0.5:40000 -> 172.18.0.1:9000"; an ICMP echo's identifier
// shows as both ports.
func (k SNATKey) String() string {
	return fmt.Sprintf("%s %s %s -> %s", protoName(k.Proto), k.Dir, k.Src, k.Dst)
}

// SNATEntry is one entry of the datapath's source NAT tables (hr_snat4_*).
// A translated flow has two, made together: NATOut (the tuple as the pod
// sent it → the node address and port it leaves with, To) and NATIn (the
// reply's tuple → the pod's address and port, To).
type SNATEntry struct {
	Dir      NATDir
	Proto    Protocol
	Src, Dst netip.AddrPort
	// To is what the packet's source (NATOut) or destination (NATIn) is
	// translated to.
	To netip.AddrPort
	// Expires is the second of CLOCK_MONOTONIC after which the entry is
	// garbage; each packet in the entry's direction renews it.
	Expires uint32
	// Remaining is Expires as time left when the entry was read;
	// negative for an expired entry. Put ignores it.
	Remaining time.Duration
	// Host marks a NATIn entry of the node's own flow, recorded so that no
	// translated flow takes its port; it is not translated (To is Dst).
	Host bool
	// Closing marks a closed TCP flow (a FIN each way, or an RST within
	// the sequence window): its short timeout.
	Closing bool
	// Established marks an entry of an established table, which never
	// evicts (see SNAT).
	Established bool
	// Flags are the entry's flags as the datapath keeps them (Host,
	// Closing and Established among them); Put ignores them.
	Flags CTFlags
}

// Key returns e's key.
func (e SNATEntry) Key() SNATKey {
	return SNATKey{Dir: e.Dir, Proto: e.Proto, Src: e.Src, Dst: e.Dst}
}

// Reverse returns the key of the entry that pairs with e, as the datapath
// makes them: a NATOut entry's NATIn and back. An ICMP echo's identifier
// is both its "ports", the original one in NATOut's key and the
// translated one in NATIn's. For a Host entry it returns a key no entry
// has (Dir 0).
func (e SNATEntry) Reverse() SNATKey {
	switch {
	case e.Host:
		return SNATKey{}
	case e.Dir == NATOut && e.Proto == ICMP:
		return SNATKey{Dir: NATIn, Proto: e.Proto, Src: netip.AddrPortFrom(e.Dst.Addr(), e.To.Port()), Dst: e.To}
	case e.Dir == NATIn && e.Proto == ICMP:
		return SNATKey{Dir: NATOut, Proto: e.Proto, Src: e.To, Dst: netip.AddrPortFrom(e.Src.Addr(), e.To.Port())}
	case e.Dir == NATOut:
		return SNATKey{Dir: NATIn, Proto: e.Proto, Src: e.Dst, Dst: e.To}
	case e.Dir == NATIn:
		return SNATKey{Dir: NATOut, Proto: e.Proto, Src: e.To, Dst: e.Src}
	}
	return SNATKey{}
}

// String formats e as a line of `cilium bpf nat list`:
//
//	TCP OUT 10.0.0.5:40000 -> 172.18.0.1:9000 XLATE_SRC 172.18.0.2:33388 expires=3045
//	TCP IN 172.18.0.1:9000 -> 172.18.0.2:33388 XLATE_DST 10.0.0.5:40000 expires=3045
//	TCP IN 172.18.0.1:443 -> 172.18.0.2:51000 HOST expires=3045
//
// expires is the CLOCK_MONOTONIC second, as the map holds it. A host
// entry shows To only if it differs from Dst (the datapath makes none
// such).
func (e SNATEntry) String() string {
	xlate := "XLATE_SRC"
	if e.Dir == NATIn {
		xlate = "XLATE_DST"
	}
	switch {
	case !e.Host:
		return fmt.Sprintf("%s %s %s expires=%d", e.Key(), xlate, e.To, e.Expires)
	case e.To != e.Dst:
		return fmt.Sprintf("%s HOST %s %s expires=%d", e.Key(), xlate, e.To, e.Expires)
	}
	return fmt.Sprintf("%s HOST expires=%d", e.Key(), e.Expires)
}

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
// loader.Maps.SNATTables: established TCP, established other protocols,
// new. With one table, every entry is in it.
func NewSNAT(tables ...*ebpf.Map) *SNAT {
	return &SNAT{tables: tables}
}

// Tables returns the wrapped maps.
func (s *SNAT) Tables() []*ebpf.Map { return s.tables }

func snatKey(k SNATKey) (bpf.HostroutingCt4Key, error) {
	if !k.Src.Addr().Is4() || !k.Dst.Addr().Is4() {
		return bpf.HostroutingCt4Key{}, fmt.Errorf("NAT key %s: want IPv4 addresses", k)
	}
	return bpf.HostroutingCt4Key{
		Saddr: addrKey(k.Src.Addr()), Daddr: addrKey(k.Dst.Addr()),
		Sport: htons(k.Src.Port()), Dport: htons(k.Dst.Port()),
		Proto: uint8(k.Proto), Dir: uint8(k.Dir),
	}, nil
}

func snatEntryOf(k *bpf.HostroutingCt4Key, v *bpf.HostroutingNat4Entry, now uint32) SNATEntry {
	key := ctKeyOf(k)
	return SNATEntry{
		Dir: NATDir(k.Dir), Proto: key.Proto, Src: key.Src, Dst: key.Dst,
		To:      netip.AddrPortFrom(ipv4Addr(v.ToAddr), ntohs(v.ToPort)),
		Expires: v.St.Expires, Remaining: Remaining(v.St.Expires, now),
		Host:        v.St.Flags&natFlagHost != 0,
		Closing:     v.St.Flags&natFlagClosing != 0,
		Established: v.St.Flags&natFlagEstablished != 0,
		Flags:       CTFlags(v.St.Flags),
	}
}

// Put writes entry e (for tests, and to restore entries).
func (s *SNAT) Put(e SNATEntry) error {
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
		v.St.Flags |= natFlagEstablished | uint16(CTSeenReply)
	}
	m := tableOf(s.tables, e.Proto, e.Established)
	if err := m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write NAT entry %s: %w", e.Key(), mapErr(err, m))
	}
	return nil
}

// Lookup returns the entry at k, or ErrNotFound.
func (s *SNAT) Lookup(k SNATKey) (SNATEntry, error) {
	bk, err := snatKey(k)
	if err != nil {
		return SNATEntry{}, err
	}
	var v bpf.HostroutingNat4Entry
	for _, m := range s.tables {
		err = m.Lookup(bk, &v)
		if err == nil {
			return snatEntryOf(&bk, &v, MonotonicSeconds()), nil
		}
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
	}
	return SNATEntry{}, fmt.Errorf("NAT entry %s: %w", k, mapErr(err, s.tables[0]))
}

// Delete removes the entry at k, or returns ErrNotFound. A flow's other
// entry stays: see Reverse.
func (s *SNAT) Delete(k SNATKey) error {
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
func (s *SNAT) DeleteKeys(keys []SNATKey) (int, error) {
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
func (s *SNAT) List() ([]SNATEntry, error) {
	var out []SNATEntry
	now := MonotonicSeconds()
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
