package maps

import (
	"net/netip"
	"testing"
)

func TestConntrackStrings(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, c := range []struct {
		e    CTEntry
		want string
	}{
		{CTEntry{Dir: CTService, Proto: TCP, Src: ap("10.0.0.1:41234"), Dst: ap("10.96.0.10:80"), Expires: 21590, BackendID: 3, RevNAT: 1, Flags: CTSeenReply, Packets: 12},
			"TCP SVC 10.0.0.1:41234 -> 10.96.0.10:80 expires=21590 RevNAT=1 Backend=3 Flags=0x0001 [ SeenReply ] Packets=12"},
		{CTEntry{Dir: CTReply, Proto: UDP, Src: ap("10.0.1.5:53"), Dst: ap("10.0.0.1:41234"), Expires: 60, BackendID: 3, RevNAT: 1, Flags: CTSeenReply | CTClosing},
			"UDP REPLY 10.0.1.5:53 -> 10.0.0.1:41234 expires=60 RevNAT=1 Backend=3 Flags=0x0003 [ SeenReply Closing ] Packets=0"},
		{CTEntry{Dir: CTInbound, Proto: TCP, Src: ap("10.0.0.7:80"), Dst: ap("203.0.113.9:51000"), Expires: 7, Flags: 0x100},
			"TCP INBOUND 10.0.0.7:80 -> 203.0.113.9:51000 expires=7 RevNAT=0 Backend=0 Flags=0x0100 [ 0x0100 ] Packets=0"},
	} {
		if got := c.e.String(); got != c.want {
			t.Errorf("String:\n got %q\nwant %q", got, c.want)
		}
	}
}

func TestSNATStrings(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, c := range []struct {
		e    SNATEntry
		want string
	}{
		{SNATEntry{Dir: NATOut, Proto: TCP, Src: ap("10.0.0.5:40000"), Dst: ap("172.18.0.1:9000"), To: ap("172.18.0.2:33388"), Expires: 3045},
			"TCP OUT 10.0.0.5:40000 -> 172.18.0.1:9000 XLATE_SRC 172.18.0.2:33388 expires=3045"},
		{SNATEntry{Dir: NATIn, Proto: TCP, Src: ap("172.18.0.1:9000"), Dst: ap("172.18.0.2:33388"), To: ap("10.0.0.5:40000"), Expires: 3045},
			"TCP IN 172.18.0.1:9000 -> 172.18.0.2:33388 XLATE_DST 10.0.0.5:40000 expires=3045"},
		{SNATEntry{Dir: NATIn, Proto: UDP, Src: ap("172.18.0.1:53"), Dst: ap("172.18.0.2:51000"), To: ap("172.18.0.2:51000"), Expires: 9, Host: true},
			"UDP IN 172.18.0.1:53 -> 172.18.0.2:51000 HOST expires=9"},
		{SNATEntry{Dir: NATOut, Proto: ICMP, Src: ap("10.0.0.10:31755"), Dst: ap("172.18.0.1:31755"), To: ap("172.18.0.2:33671"), Expires: 2870},
			"ICMP OUT 10.0.0.10:31755 -> 172.18.0.1:31755 XLATE_SRC 172.18.0.2:33671 expires=2870"},
	} {
		if got := c.e.String(); got != c.want {
			t.Errorf("String:\n got %q\nwant %q", got, c.want)
		}
	}
}
