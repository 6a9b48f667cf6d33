package maps

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ICMP is the protocol of ICMP echoes, which the datapath masquerades by
// identifier: in conntrack and NAT entries the identifier is both ports.
const ICMP Protocol = 1

// protoName names p in conntrack and NAT lines: "TCP", "UDP", "ICMP".
func protoName(p Protocol) string {
	if p == ICMP {
		return "ICMP"
	}
	return p.String()
}

// CTDir is which way a conntrack key looks at a flow (enum ct_dir in
// bpf/lib/conntrack.h).
type CTDir uint8

// Conntrack directions.
const (
	// CTService is a service flow as the client sends it, client →
	// frontend: which backend the flow took.
	CTService CTDir = 1
	// CTReply is its reply as the backend sends it, backend → client:
	// the flow whose source is translated back to the frontend.
	CTReply CTDir = 2
	// CTInbound is the reply of a flow from outside the native routing
	// CIDR into a local pod, pod → outside: left untranslated by
	// masquerade.
	CTInbound CTDir = 3
)

// String names d as conntrack lines show it: "SVC", "REPLY", "INBOUND".
func (d CTDir) String() string {
	switch d {
	case CTService:
		return "SVC"
	case CTReply:
		return "REPLY"
	case CTInbound:
		return "INBOUND"
	}
	return fmt.Sprintf("dir(%d)", uint8(d))
}

// CTFlags are a conntrack entry's flags (enum flow_flag).
type CTFlags uint16

// Conntrack entry flags.
const (
	CTSeenReply   CTFlags = 1 << 0 // a reply went the other way
	CTClosing     CTFlags = 1 << 1 // closed: a FIN each way, or an RST within the sequence window
	CTHairpin     CTFlags = 1 << 2 // CTReply: a pod's flow to itself through a service, from 169.254.42.1
	CTEstablished CTFlags = 1 << 3 // in an established table, which never evicts (see Conntrack)
	CTFin         CTFlags = 1 << 4 // TCP: this direction sent a FIN
	CTSeq         CTFlags = 1 << 5 // TCP: SeqEnd is known
	CTReplyFin    CTFlags = 1 << 6 // CTInbound: the pod sent a FIN
)

// String lists the flags set, as Cilium does: "[ SeenReply Closing ]".
func (f CTFlags) String() string {
	var b strings.Builder
	b.WriteString("[ ")
	for _, x := range []struct {
		f    CTFlags
		name string
	}{{CTSeenReply, "SeenReply"}, {CTClosing, "Closing"}, {CTHairpin, "Hairpin"}, {CTEstablished, "Established"},
		{CTFin, "Fin"}, {CTSeq, "Seq"}, {CTReplyFin, "ReplyFin"}} {
		if f&x.f != 0 {
			b.WriteString(x.name + " ")
			f &^= x.f
		}
	}
	if f != 0 {
		fmt.Fprintf(&b, "%#04x ", uint16(f))
	}
	b.WriteString("]")
	return b.String()
}

// CTKey is a conntrack entry's key: a flow's tuple as its packets carry
// it, and the direction the entry looks at it from.
type CTKey struct {
	Dir      CTDir
	Proto    Protocol
	Src, Dst netip.AddrPort
}

// String formats k as the start of a conntrack line:
// "TCP SVC 10.0.0.1:41234 -> 10.96.0.10:80".
func (k CTKey) String() string {
	return fmt.Sprintf("%s %s %s -> %s", protoName(k.Proto), k.Dir, k.Src, k.Dst)
}

// CTEntry is one entry of the datapath's conntrack (hr_ct4_tcp, hr_ct4_any
// or hr_ct4_new: Flags has CTEstablished in the first two).
type CTEntry struct {
	Dir      CTDir
	Proto    Protocol
	Src, Dst netip.AddrPort

	// Expires is the second of CLOCK_MONOTONIC after which the entry is
	// garbage: the datapath sets it to now plus the timeout of the
	// flow's protocol and TCP state with every packet.
	Expires uint32
	// Remaining is Expires as time left when the entry was read;
	// negative for an expired entry. Put ignores it.
	Remaining time.Duration
	// BackendID is the backend a CTService flow goes to (and the one
	// a CTReply flow comes from).
	BackendID uint32
	// RevNAT is the service (reverse NAT index) whose frontend the
	// flow's replies come from; 0 for CTInbound.
	RevNAT uint16
	// Frontend is the address a CTReply flow's replies are translated
	// back to: the frontend the client dialled.
	Frontend netip.AddrPort
	Flags    CTFlags
	// SeqEnd is, for TCP, the sequence number after the last one this
	// direction sent (with CTSeq): an RST far from it changes nothing.
	SeqEnd  uint32
	Packets uint64 // packets seen in this direction
}

// Key returns e's key.
func (e CTEntry) Key() CTKey {
	return CTKey{Dir: e.Dir, Proto: e.Proto, Src: e.Src, Dst: e.Dst}
}

// String formats e as a line of `cilium bpf ct list global`:
//
//	TCP SVC 10.0.0.1:41234 -> 10.96.0.10:80 expires=21590 RevNAT=1 Backend=3 Flags=0x0001 [ SeenReply ] Packets=12
//	TCP REPLY 10.0.1.5:8080 -> 10.0.0.1:41234 expires=21590 RevNAT=1 Backend=3 Frontend=10.96.0.10:80 Flags=0x0001 [ SeenReply ] Packets=11
//
// Every field is shown, in this order (Frontend for replies); expires is
// the CLOCK_MONOTONIC second, as the map holds it.
func (e CTEntry) String() string {
	front := ""
	if e.Frontend.IsValid() {
		front = " Frontend=" + e.Frontend.String()
	}
	return fmt.Sprintf("%s expires=%d RevNAT=%d Backend=%d%s Flags=%#04x %s Packets=%d",
		e.Key(), e.Expires, e.RevNAT, e.BackendID, front, uint16(e.Flags), e.Flags, e.Packets)
}

// MonotonicSeconds returns the second of CLOCK_MONOTONIC, the clock of
// the datapath's expiry times (bpf_ktime_get_ns).
func MonotonicSeconds() uint32 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err)) // cannot fail on Linux
	}
	return uint32(ts.Sec)
}

// Remaining is the time from the monotonic second now to expires: how
// long an entry has left, negative once it expired.
func Remaining(expires, now uint32) time.Duration {
	return time.Duration(int64(expires)-int64(now)) * time.Second
}
