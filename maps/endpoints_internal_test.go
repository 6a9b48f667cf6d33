package maps

import (
	"net"
	"net/netip"
	"testing"
)

func TestEndpointStringIsCiliums(t *testing.T) {
	mac, _ := net.ParseMAC("c6:6d:95:cd:34:a2")
	nodeMAC, _ := net.ParseMAC("2a:0a:d9:17:44:22")
	ep := Endpoint{IP: netip.MustParseAddr("10.0.0.85"), IfIndex: 34, ID: 1445, MAC: mac, NodeMAC: nodeMAC}
	// `cilium bpf endpoint list` as the seeds show it.
	want := "10.0.0.85:0 id=1445 flags=0x0000 ifindex=34 mac=C6:6D:95:CD:34:A2 nodemac=2A:0A:D9:17:44:22"
	if got := ep.String(); got != want {
		t.Errorf("String() = %q\nwant       %q", got, want)
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
