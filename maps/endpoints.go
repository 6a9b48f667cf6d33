package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

var (
	// ErrNotFound is returned for something the datapath's maps do not
	// hold.
	ErrNotFound = errors.New("not found")
	// ErrMapFull is returned when a map has no room for another entry.
	ErrMapFull = errors.New("map full")
)

// EndpointFlags are per-endpoint switches of the datapath.
type EndpointFlags uint16

const (
	// EndpointARPResponder makes the datapath answer the pod's ARP
	// requests for any address but its own with the host-side device's
	// MAC, for CNIs that put no gateway address on the host side.
	// (ENDPOINT_F_ARP_RESPONDER in bpf/lib/common.h.)
	EndpointARPResponder EndpointFlags = 1 << 0
	// EndpointPolicy sends packets into the endpoint through the policy
	// in its slot of hr_policy (ENDPOINT_F_POLICY).
	EndpointPolicy EndpointFlags = 1 << 1
	// EndpointLBBackend marks an endpoint that is a service backend: the
	// datapath translates its replies back to the service's frontend
	// (ENDPOINT_F_LB_BACKEND).
	EndpointLBBackend EndpointFlags = 1 << 2
)

// Endpoint is what the datapath knows of one endpoint: a pod's interface.
type Endpoint struct {
	IP          netip.Addr       // the pod's IPv4 address
	IPv6        netip.Addr       // the pod's IPv6 address, if it has one (source-checked, routed by the stack)
	IfIndex     int              // host-side device in the node's netns
	ID          uint16           // endpoint ID
	Flags       EndpointFlags    // datapath switches
	MAC         net.HardwareAddr // the pod's MAC
	NodeMAC     net.HardwareAddr // the host-side device's MAC
	ContainerID string           // who the endpoint belongs to (CNI_CONTAINERID), if known
	PodIfName   string           // the pod's interface (CNI_IFNAME), if known
}

// String formats e as `cilium bpf endpoint list` does:
// "10.0.0.85:0 id=1445 flags=0x0000 ifindex=34 mac=C6:6D:95:CD:34:A2 nodemac=2A:0A:D9:17:44:22",
// with a second line for an IPv6 address.
func (e Endpoint) String() string {
	s := fmt.Sprintf("%s:0 id=%d flags=%#04x ifindex=%d mac=%s nodemac=%s",
		e.IP, e.ID, uint16(e.Flags), e.IfIndex, upperMAC(e.MAC), upperMAC(e.NodeMAC))
	if e.IPv6.IsValid() {
		s += fmt.Sprintf("\n%s:0 id=%d flags=%#04x ifindex=%d mac=%s nodemac=%s",
			e.IPv6, e.ID, uint16(e.Flags), e.IfIndex, upperMAC(e.MAC), upperMAC(e.NodeMAC))
	}
	return s
}

func upperMAC(mac net.HardwareAddr) string {
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, 3*len(mac))
	for i, x := range mac {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, hex[x>>4], hex[x&0xf])
	}
	return string(b)
}
