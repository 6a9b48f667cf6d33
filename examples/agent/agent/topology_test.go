package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// withConditions is ep with the conditions ready, serving and terminating.
func withConditions(ep discoveryv1.Endpoint, ready, serving, terminating bool) discoveryv1.Endpoint {
	ep.Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(serving), Terminating: ptr.To(terminating)}
	return ep
}

// withHints is ep hinted for zones and nodes, as the EndpointSlice
// controller writes them for trafficDistribution.
func withHints(ep discoveryv1.Endpoint, zones, nodes []string) discoveryv1.Endpoint {
	ep.Hints = &discoveryv1.EndpointHints{}
	for _, z := range zones {
		ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
	}
	for _, n := range nodes {
		ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
	}
	return ep
}

// setZone labels Node name with zone topology.kubernetes.io/zone.
func (e *env) setZone(t testing.TB, name, zone string) {
	t.Helper()
	node := e.node(t, name)
	if node.Labels == nil {
		node.Labels = map[string]string{}
	}
	node.Labels[corev1.LabelTopologyZone] = zone
	if _, err := e.client.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// wantBackendAddrs waits until dp's TCP service front has the backends
// want, in any state: the datapath keeps one state per backend, which
// another frontend of the same endpoint may have written last (the
// service's own lists tell whether it takes new flows), and it reads back
// the scope from outside the node of a service with two.
func wantBackendAddrs(t testing.TB, dp *datapath.Datapath, front netip.AddrPort, want ...netip.AddrPort) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		s, err := findService(dp, front, datapath.TCP)
		if err != nil {
			return err
		}
		var got []netip.AddrPort
		for _, b := range s.Backends {
			got = append(got, b.Addr)
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("service %s has backends %v, want %v", front, got, want)
		}
		return nil
	})
}

// onlyFrom asks dst from nsPath until it is answered by want alone n
// times in a row (the agent may not have programmed the last change yet),
// failing the test after 10s.
func onlyFrom(t testing.TB, nsPath string, dst netip.AddrPort, want string, n int) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		for range n {
			name, _, err := ask(nsPath, "tcp4", dst)
			if err != nil || name != want {
				return fmt.Errorf("%s: answered by %q (%v), want %s only", dst, name, err, want)
			}
		}
		return nil
	})
}

// TestEndpointReadiness: an endpoint takes new flows exactly when it is
// ready, whatever its terminating flag — what publishNotReadyAddresses
// gives a terminating pod — and serving terminating endpoints take them
// only when no endpoint is ready; no conditions is ready. Upstream: e2e
// "[sig-network] Services should be able to connect to terminating and
// unready endpoints if PublishNotReadyAddresses is true" and "should
// fallback to terminating endpoints when there are no ready endpoints with
// internalTrafficPolicy=Cluster"; unit TestCategorizeEndpoints "Cluster
// traffic policy, some endpoints are Ready" and "Cluster traffic policy,
// PTE enabled, all endpoints are terminating" (pkg/proxy/topology_test.go);
// the conditions as newEndpointSliceInfo reads them
// (pkg/proxy/endpointslicecache.go). Before, the ready terminating
// endpoint took no new flows while a serving terminating one was there.
func TestEndpointReadiness(t *testing.T) {
	e := newEnv(t, 1)
	n0 := e.cluster.Nodes[0]
	pin0 := newPinPath(t, n0)
	start(t, e.agentConfig(t, n0, pin0))
	dp0 := openDatapath(t, n0, pin0)
	b0, b1 := n0.AddPod(t, "b0", n0.PodIP(10)), n0.AddPod(t, "b1", n0.PodIP(11))
	client := n0.AddPod(t, "client", n0.PodIP(20))
	for _, p := range []*datapathtest.Pod{b0, b1, client} {
		p.AddEndpoint(t, dp0)
	}
	nameServer(t, b0)
	nameServer(t, b1)
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	vip := netip.MustParseAddrPort("10.96.0.110:80")

	// b0 ready and terminating (publishNotReadyAddresses), b1 serving and
	// terminating only: b0 takes the new flows.
	svc := service("unready", vip.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080))
	svc.Spec.PublishNotReadyAddresses = true
	e.create(t, svc, endpointSlice("unready", "unready-1", ports,
		withConditions(endpoint(b0.IP), true, true, true), withConditions(endpoint(b1.IP), false, true, true)))
	wantBackends(t, dp0, vip, datapath.TCP,
		datapath.Backend{Addr: netip.AddrPortFrom(b0.IP, 8080)},
		datapath.Backend{Addr: netip.AddrPortFrom(b1.IP, 8080), State: datapath.BackendTerminating})
	onlyFrom(t, client.Netns, vip, "b0", 10)

	// b0 not ready any more: only serving terminating endpoints are left,
	// and they take new flows.
	e.updateSlice(t, "unready-1", withConditions(endpoint(b0.IP), false, true, true), withConditions(endpoint(b1.IP), false, true, true))
	wantBackends(t, dp0, vip, datapath.TCP,
		datapath.Backend{Addr: netip.AddrPortFrom(b0.IP, 8080)}, datapath.Backend{Addr: netip.AddrPortFrom(b1.IP, 8080)})
	if seen := answeredBy(t, client.Netns, "tcp4", vip, 20); len(seen) != 2 {
		t.Errorf("only serving terminating endpoints: answered by %v, want both", seen)
	}

	// An endpoint with no conditions is ready.
	e.updateSlice(t, "unready-1", discoveryv1.Endpoint{Addresses: []string{b1.IP.String()}}, withConditions(endpoint(b0.IP), false, true, true))
	wantBackends(t, dp0, vip, datapath.TCP,
		datapath.Backend{Addr: netip.AddrPortFrom(b0.IP, 8080), State: datapath.BackendTerminating},
		datapath.Backend{Addr: netip.AddrPortFrom(b1.IP, 8080)})
	onlyFrom(t, client.Netns, vip, "b1", 10)
}

// TestLocalByNodeName: an endpoint is local when its EndpointSlice
// nodeName is the agent's node, a host-network one too (its address is
// the node's); and a node's Local traffic falls back to its own serving
// terminating endpoints while other nodes have ready ones — a node drained
// behind a load balancer keeps answering it until the load balancer stops.
// Upstream: unit TestCategorizeEndpoints "iTP: Cluster, eTP: Local, PTE
// enabled, with terminating endpoints" and "iTP: Local, eTP: Local, some
// endpoints local" (pkg/proxy/topology_test.go), isLocal in
// pkg/proxy/endpointslicecache.go; e2e "[sig-network] Services should
// fallback to local terminating endpoints when there are no ready
// endpoints with externalTrafficPolicy=Local". Before, node 0's NodePort
// and ClusterIP had no backend for the host-network endpoint (the
// datapath took only its own pods for local), and the drain's fallback
// waited for the whole Service to have no ready endpoint.
func TestLocalByNodeName(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	pin0, pin1 := newPinPath(t, n0), newPinPath(t, n1)
	start(t, e.agentConfig(t, n0, pin0))
	start(t, e.agentConfig(t, n1, pin1))
	dp0, dp1 := openDatapath(t, n0, pin0), openDatapath(t, n1, pin1)
	b0, b1 := n0.AddPod(t, "b0", n0.PodIP(10)), n1.AddPod(t, "b1", n1.PodIP(10))
	client0 := n0.AddPod(t, "client0", n0.PodIP(20))
	b0.AddEndpoint(t, dp0)
	b1.AddEndpoint(t, dp1)
	client0.AddEndpoint(t, dp0)
	nameServer(t, b0)
	nameServer(t, b1)
	host := netip.AddrPortFrom(n0.IP, 8081) // a hostNetwork pod of node 0
	datapathtest.ServeName(t, n0.Netns, host, "host0")
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	hostPorts := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8081)}

	// The host-network endpoint of node 0 and b1 of node 1, both traffic
	// policies Local: a pod of node 0 gets the host-network endpoint from
	// the ClusterIP, and node 0's NodePort has it for its backend; node
	// 1's NodePort answers from the wire with b1.
	hostSvc := service("hostnet", "10.96.0.111", port("http", corev1.ProtocolTCP, 80, 8080))
	hostSvc.Spec.Type = corev1.ServiceTypeNodePort
	hostSvc.Spec.Ports[0].NodePort = 30111
	hostSvc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	hostSvc.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	e.create(t, hostSvc,
		endpointSlice("hostnet", "hostnet-1", hostPorts, onNode(endpoint(n0.IP), n0.Name)),
		endpointSlice("hostnet", "hostnet-2", ports, onNode(endpoint(b1.IP), n1.Name)))
	np := netip.MustParseAddrPort("0.0.0.0:30111")
	b1Term := datapath.Backend{Addr: netip.AddrPortFrom(b1.IP, 8080), State: datapath.BackendTerminating}
	wantBackends(t, dp0, np, datapath.TCP, b1Term, datapath.Backend{Addr: host})
	wantBackends(t, dp0, netip.MustParseAddrPort("10.96.0.111:80"), datapath.TCP, b1Term, datapath.Backend{Addr: host})
	onlyFrom(t, client0.Netns, netip.MustParseAddrPort("10.96.0.111:80"), "host0", 10)
	onlyFrom(t, e.cluster.Wire, netip.AddrPortFrom(n1.IP, 30111), "b1", 10)

	// Node 0 drains: b0 is serving and terminating, b1 is ready. Node 0's
	// NodePort goes on with b0 for new flows from the wire; node 1's
	// with b1 alone; the ClusterIP, whose Cluster policy has a ready
	// endpoint, takes b1 only.
	drain := service("drain", "10.96.0.112", port("http", corev1.ProtocolTCP, 80, 8080))
	drain.Spec.Type = corev1.ServiceTypeNodePort
	drain.Spec.Ports[0].NodePort = 30112
	drain.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	e.create(t, drain, endpointSlice("drain", "drain-1", ports,
		onNode(withConditions(endpoint(b0.IP), false, true, true), n0.Name), onNode(endpoint(b1.IP), n1.Name)))
	onlyFrom(t, e.cluster.Wire, netip.AddrPortFrom(n0.IP, 30112), "b0", 10)
	onlyFrom(t, e.cluster.Wire, netip.AddrPortFrom(n1.IP, 30112), "b1", 10)
	np2 := netip.MustParseAddrPort("0.0.0.0:30112")
	wantBackendAddrs(t, dp0, np2, netip.AddrPortFrom(b0.IP, 8080)) // its scope from outside; the node's own has b1 too
	wantBackends(t, dp1, np2, datapath.TCP,
		datapath.Backend{Addr: netip.AddrPortFrom(b0.IP, 8080), State: datapath.BackendTerminating}, datapath.Backend{Addr: netip.AddrPortFrom(b1.IP, 8080)})
	onlyFrom(t, client0.Netns, netip.MustParseAddrPort("10.96.0.112:80"), "b1", 10)
}

// TestTopologyHints: the cluster endpoints of a node are those hinted for
// it (forNodes: trafficDistribution PreferSameNode) or for its zone (its
// topology.kubernetes.io/zone label; forZones: PreferSameZone,
// PreferClose), as kube-proxy reads them, with its fallbacks: hints count
// only if every ready endpoint has them (terminating ones aside) and one
// is for the node or its zone; a zone change of the node translates the
// Services again; the Local policy ignores hints. Upstream: unit
// TestCategorizeEndpoints "normal endpoint filtering, auto annotation",
// "missing hints, no filtering applied", "node in different zone, no
// endpoint filtering", "internalTrafficPolicy: Local, topology ignored for
// Local endpoints" and its PreferSameNode cases (pkg/proxy/topology_test.go,
// topologyModeFromHints); e2e "[sig-network] Traffic Distribution should
// route traffic to an endpoint in the same zone when using PreferSameZone"
// (and PreferClose) and its PreferSameNode test. Before, hints were
// ignored: every ready endpoint took flows.
func TestTopologyHints(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	e.setZone(t, n0.Name, "zone-a")
	e.setZone(t, n1.Name, "zone-b")
	pin0, pin1 := newPinPath(t, n0), newPinPath(t, n1)
	start(t, e.agentConfig(t, n0, pin0))
	start(t, e.agentConfig(t, n1, pin1))
	dp0, dp1 := openDatapath(t, n0, pin0), openDatapath(t, n1, pin1)
	b0, b1 := n0.AddPod(t, "b0", n0.PodIP(10)), n1.AddPod(t, "b1", n1.PodIP(10))
	b2 := n1.AddPod(t, "b2", n1.PodIP(11))
	client := n1.AddPod(t, "client", n1.PodIP(20))
	b0.AddEndpoint(t, dp0)
	for _, p := range []*datapathtest.Pod{b1, b2, client} {
		p.AddEndpoint(t, dp1)
	}
	for _, p := range []*datapathtest.Pod{b0, b1, b2} {
		nameServer(t, p)
	}
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	vip := netip.MustParseAddrPort("10.96.0.113:80")
	ep0 := func(zones, nodes []string) discoveryv1.Endpoint {
		return withHints(onNode(endpoint(b0.IP), n0.Name), zones, nodes)
	}
	ep1 := func(zones, nodes []string) discoveryv1.Endpoint {
		return withHints(onNode(endpoint(b1.IP), n1.Name), zones, nodes)
	}
	ep2 := func(zones, nodes []string) discoveryv1.Endpoint {
		return withHints(onNode(endpoint(b2.IP), n1.Name), zones, nodes)
	}
	active := func(pods ...*datapathtest.Pod) []datapath.Backend {
		var out []datapath.Backend
		for _, p := range []*datapathtest.Pod{b0, b1, b2} {
			b := datapath.Backend{Addr: netip.AddrPortFrom(p.IP, 8080), State: datapath.BackendTerminating}
			for _, q := range pods {
				if q == p {
					b.State = datapath.BackendActive
				}
			}
			out = append(out, b)
		}
		return out
	}

	// PreferSameZone: zone hints; the client on node 1 (zone-b) gets b1
	// and b2, node 0 b0 alone.
	svc := service("zoned", vip.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080))
	svc.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameZone)
	zoneB := []string{"zone-b"}
	e.create(t, svc, endpointSlice("zoned", "zoned-1", ports, ep0([]string{"zone-a"}, nil), ep1(zoneB, nil), ep2(zoneB, nil)))
	wantBackends(t, dp1, vip, datapath.TCP, active(b1, b2)...)
	wantBackends(t, dp0, vip, datapath.TCP, active(b0)...)
	if seen := answeredBy(t, client.Netns, "tcp4", vip, 20); seen["b0"] != 0 || len(seen) != 2 {
		t.Errorf("PreferSameZone from zone-b: answered by %v, want b1 and b2", seen)
	}

	// PreferSameNode: node hints as well; node 1 gets b2, hinted for it.
	e.updateSlice(t, "zoned-1", ep0([]string{"zone-a"}, []string{n0.Name}), ep1(zoneB, []string{"elsewhere"}), ep2(zoneB, []string{n1.Name}))
	wantBackends(t, dp1, vip, datapath.TCP, active(b2)...)
	onlyFrom(t, client.Netns, vip, "b2", 10)

	// Node hints for other nodes only: zone hints hold.
	e.updateSlice(t, "zoned-1", ep0([]string{"zone-a"}, []string{n0.Name}), ep1(zoneB, []string{"elsewhere"}), ep2(zoneB, []string{"elsewhere"}))
	wantBackends(t, dp1, vip, datapath.TCP, active(b1, b2)...)

	// One ready endpoint without hints: hints are ignored. A serving
	// terminating one without them does not count.
	e.updateSlice(t, "zoned-1", ep0([]string{"zone-a"}, nil), ep1(zoneB, nil), onNode(endpoint(b2.IP), n1.Name))
	wantBackends(t, dp1, vip, datapath.TCP, active(b0, b1, b2)...)
	e.updateSlice(t, "zoned-1", ep0([]string{"zone-a"}, nil), ep1(zoneB, nil), onNode(withConditions(endpoint(b2.IP), false, true, true), n1.Name))
	wantBackends(t, dp1, vip, datapath.TCP, active(b1)...)

	// No endpoint for node 1's zone: all.
	zoneC := []string{"zone-c"}
	e.updateSlice(t, "zoned-1", ep0([]string{"zone-a"}, nil), ep1(zoneC, nil), ep2(zoneC, nil))
	wantBackends(t, dp1, vip, datapath.TCP, active(b0, b1, b2)...)

	// Node 1 moves to zone-c: the Service is translated again.
	e.setZone(t, n1.Name, "zone-c")
	wantBackends(t, dp1, vip, datapath.TCP, active(b1, b2)...)
	onlyFrom(t, client.Netns, vip, "b1", 0)
	if seen := answeredBy(t, client.Netns, "tcp4", vip, 20); seen["b0"] != 0 {
		t.Errorf("node 1 moved to zone-c: answered by %v, want b1 and b2", seen)
	}

	// internalTrafficPolicy Local ignores hints: node 1's own endpoints.
	local := service("local-hints", "10.96.0.114", port("http", corev1.ProtocolTCP, 80, 8080))
	local.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	e.create(t, local, endpointSlice("local-hints", "local-hints-1", ports, ep0(zoneC, nil), ep1([]string{"zone-a"}, nil), ep2(zoneC, nil)))
	wantBackends(t, dp1, netip.MustParseAddrPort("10.96.0.114:80"), datapath.TCP, active(b1, b2)...)
}
