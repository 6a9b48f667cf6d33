package tables

import (
	"net/netip"
	"testing"
	"unsafe"

	"github.com/hostrouting/hostrouting/maps"
)

func TestConntrackKeyRoundTrip(t *testing.T) {
	k := maps.CTKey{Dir: maps.CTReply, Proto: maps.UDP, Src: netip.MustParseAddrPort("10.1.2.3:4567"), Dst: netip.MustParseAddrPort("192.168.9.8:53")}
	bk, err := ctKey(k)
	if err != nil {
		t.Fatal(err)
	}
	// Network order in memory, as the C struct holds it.
	b := (*[4]byte)(unsafe.Pointer(&bk.Saddr))
	if *b != [4]byte{10, 1, 2, 3} {
		t.Errorf("saddr bytes %v", *b)
	}
	p := (*[2]byte)(unsafe.Pointer(&bk.Dport))
	if *p != [2]byte{0, 53} {
		t.Errorf("dport bytes %v", *p)
	}
	if got := ctKeyOf(&bk); got != k {
		t.Errorf("round trip: %v, want %v", got, k)
	}
}

func TestEndpointKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.0.0.85", "0.0.0.1", "255.255.255.255"} {
		ip := netip.MustParseAddr(s)
		k, err := ipv4Key(ip)
		if err != nil {
			t.Fatal(err)
		}
		if got := ipv4Addr(k); got != ip {
			t.Errorf("%s: key round trip gives %s", ip, got)
		}
	}
	for _, bad := range []netip.Addr{{}, netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("fd00::1")} {
		if _, err := ipv4Key(bad); err == nil {
			t.Errorf("ipv4Key(%v) accepted", bad)
		}
	}
	for _, bad := range []netip.Addr{{}, netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fe80::1%eth0")} {
		if _, err := ipv6Key(bad); err == nil {
			t.Errorf("ipv6Key(%v) accepted", bad)
		}
	}
}
