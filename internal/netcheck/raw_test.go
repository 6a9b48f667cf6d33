package netcheck

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestMarshalChecksums: the IPv4 header and the TCP and UDP checksums of
// built packets are right (a checksum over data carrying a right one is
// 0), and the fields are where they belong.
func TestMarshalChecksums(t *testing.T) {
	src, dst := netip.MustParseAddrPort("198.51.100.7:40000"), netip.MustParseAddrPort("10.0.0.20:7000")
	for _, c := range []struct {
		name  string
		pkt   []byte
		proto byte
	}{
		{"TCP SYN", TCPSegment{Src: src, Dst: dst, Flags: TCPSyn, Seq: 0xdeadbeef}.Marshal(), 6},
		{"TCP data", TCPSegment{Src: src, Dst: dst, Flags: TCPAck | TCPPsh, Seq: 1, Ack: 2, Payload: []byte("odd")}.Marshal(), 6},
		{"UDP", UDPDatagram{Src: src, Dst: dst, Payload: []byte("flood")}.Marshal(), 17},
	} {
		p := c.pkt
		if p[0] != 0x45 || p[9] != c.proto || int(binary.BigEndian.Uint16(p[2:])) != len(p) || checksum(p[:20]) != 0 {
			t.Errorf("%s: IPv4 header % x", c.name, p[:20])
		}
		if netip.AddrFrom4([4]byte(p[12:16])) != src.Addr() || netip.AddrFrom4([4]byte(p[16:20])) != dst.Addr() ||
			binary.BigEndian.Uint16(p[20:]) != src.Port() || binary.BigEndian.Uint16(p[22:]) != dst.Port() {
			t.Errorf("%s: addresses or ports wrong: % x", c.name, p[:24])
		}
		pseudo := append(append([]byte{}, p[12:20]...), 0, c.proto, byte((len(p)-20)>>8), byte(len(p)-20))
		if sum := checksum(append(pseudo, p[20:]...)); sum != 0 {
			t.Errorf("%s: L4 checksum does not add up (%#x)", c.name, sum)
		}
	}
	if s := (TCPSegment{Src: src, Dst: dst, Flags: TCPRst, Seq: 7}).Marshal(); s[33] != TCPRst || binary.BigEndian.Uint32(s[24:]) != 7 {
		t.Errorf("RST: flags %#x, seq %d", s[33], binary.BigEndian.Uint32(s[24:]))
	}
}
