package maps

import (
	"fmt"
	"net/netip"
	"time"
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
