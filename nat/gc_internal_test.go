package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

func rawAddr(s string) uint32 {
	a := netip.MustParseAddr(s).As4()
	return binary.NativeEndian.Uint32(a[:])
}

func rawPort(p uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p))
}

// TestSNATReverseMatchesMaps: the GC pairs raw entries as
// maps.SNATEntry.Reverse does.
func TestSNATReverseMatchesMaps(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, e := range []maps.SNATEntry{
		{Dir: maps.NATOut, Proto: maps.TCP, Src: ap("10.0.0.5:40000"), Dst: ap("172.18.0.1:9000"), To: ap("172.18.0.2:33388")},
		{Dir: maps.NATIn, Proto: maps.UDP, Src: ap("172.18.0.1:9000"), Dst: ap("172.18.0.2:33388"), To: ap("10.0.0.5:40000")},
		{Dir: maps.NATOut, Proto: maps.ICMP, Src: ap("10.0.0.5:77"), Dst: ap("172.18.0.1:77"), To: ap("172.18.0.2:40001")},
		{Dir: maps.NATIn, Proto: maps.ICMP, Src: ap("172.18.0.1:40001"), Dst: ap("172.18.0.2:40001"), To: ap("10.0.0.5:77")},
	} {
		k := ctKey{Saddr: rawAddr(e.Src.Addr().String()), Daddr: rawAddr(e.Dst.Addr().String()),
			Sport: rawPort(e.Src.Port()), Dport: rawPort(e.Dst.Port()), Proto: uint8(e.Proto), Dir: uint8(e.Dir)}
		v := bpf.HostroutingNat4Entry{ToAddr: rawAddr(e.To.Addr().String()), ToPort: rawPort(e.To.Port())}
		got, ok := snatReverse(&k, &v)
		want := e.Reverse()
		wk := ctKey{Saddr: rawAddr(want.Src.Addr().String()), Daddr: rawAddr(want.Dst.Addr().String()),
			Sport: rawPort(want.Src.Port()), Dport: rawPort(want.Dst.Port()), Proto: uint8(want.Proto), Dir: uint8(want.Dir)}
		if !ok || got != wk {
			t.Errorf("%s: raw reverse %+v, maps' %s", e, got, want)
		}
		v.St.Flags = natFlagHost
		if _, ok := snatReverse(&k, &v); ok {
			t.Errorf("%s as a host entry: has a reverse", e)
		}
	}
}

func TestDeadline(t *testing.T) {
	bounds := Timeouts{TCPEstablished: time.Hour, TCPSYN: 90 * time.Second}.withDefaults()
	for _, c := range []struct {
		expires uint32
		class   class
		want    uint32
	}{
		{100000, tcpEstablished, 100000 - (21600 - 3600)}, // last packet at 78400, bound 1h
		{100, tcpEstablished, 0},                          // clamps at 0
		{1000, tcpSYN, 1000},                              // bound above the datapath's: no change
		{1000, tcpClosing, 1000},                          // default bound
		{1000, other, 1000},
	} {
		if got := bounds.deadline(c.expires, c.class); got != c.want {
			t.Errorf("deadline(%d, class %d) = %d, want %d", c.expires, c.class, got, c.want)
		}
	}
}
