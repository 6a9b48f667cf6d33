package agent

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/hostrouting/hostrouting/datapath"
)

// TestEndpointSlicePortsByName: a Service's ports take the EndpointSlice
// ports of their name and protocol, whatever the slices' order of ports,
// their numbers (the targetPort plays no part: a named targetPort
// resolves per pod) or other ports the slices have; an unnamed Service
// port takes the slice port named "". Upstream: unit pkg/proxy
// endpointslicecache_test.go TestEndpointInfoByServicePort, e2e
// "[sig-network] Services should serve multiport endpoints from pods
// [Conformance]" and "should be able to update service type to NodePort
// listening on same port number but different protocols".
func TestEndpointSlicePortsByName(t *testing.T) {
	e := newEnv(t, 1)
	n0 := e.cluster.Nodes[0]
	pin := newPinPath(t, n0)
	start(t, e.agentConfig(t, n0, pin))
	dp := openDatapath(t, n0, pin)
	a, b := n0.PodIP(10), n0.PodIP(11)

	multi := service("multi", "10.96.0.82", port("http", corev1.ProtocolTCP, 80, 8080), port("dns", corev1.ProtocolUDP, 53, 53),
		port("dns-tcp", corev1.ProtocolTCP, 53, 53))
	single := service("single", "10.96.0.83", port("", corev1.ProtocolTCP, 80, 8080))
	e.create(t, multi, single,
		// Ports in another order than the Service's, other numbers, one
		// the Service lacks, a name shared by two protocols.
		endpointSlice("multi", "multi-1", []discoveryv1.EndpointPort{slicePort("dns-tcp", corev1.ProtocolTCP, 5353),
			slicePort("extra", corev1.ProtocolTCP, 9999), slicePort("dns", corev1.ProtocolUDP, 5354), slicePort("http", corev1.ProtocolTCP, 8081)},
			endpoint(a)),
		endpointSlice("multi", "multi-2", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8082)}, endpoint(b)),
		endpointSlice("single", "single-1", []discoveryv1.EndpointPort{slicePort("", corev1.ProtocolTCP, 8083)}, endpoint(a)))
	be := func(ip netip.Addr, port uint16) datapath.Backend {
		return datapath.Backend{Addr: netip.AddrPortFrom(ip, port)}
	}
	for _, c := range []struct {
		front netip.AddrPort
		proto datapath.Protocol
		want  []datapath.Backend
	}{
		{netip.MustParseAddrPort("10.96.0.82:80"), datapath.TCP, []datapath.Backend{be(a, 8081), be(b, 8082)}},
		{netip.MustParseAddrPort("10.96.0.82:53"), datapath.UDP, []datapath.Backend{be(a, 5354)}},
		{netip.MustParseAddrPort("10.96.0.82:53"), datapath.TCP, []datapath.Backend{be(a, 5353)}},
		{netip.MustParseAddrPort("10.96.0.83:80"), datapath.TCP, []datapath.Backend{be(a, 8083)}},
	} {
		s := wantBackends(t, dp, c.front, c.proto, c.want...)
		if slices.ContainsFunc(s.Backends, func(b datapath.Backend) bool { return b.Addr.Port() == 9999 }) {
			t.Errorf("%s/%s has the slice port no Service port names: %v", c.front, c.proto, s.Backends)
		}
	}
}
