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
