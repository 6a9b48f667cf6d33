package agent

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/datapath"
)

// TestFrontends translates Services and EndpointSlices as kube-proxy
// would, without a datapath: one datapath service per port and frontend,
// backends by port name from IPv4 slices and endpoint conditions, and
// what the datapath cannot express named.
func TestFrontends(t *testing.T) {
	a, b, c, d := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.4")
	notReady := discoveryv1.Endpoint{Addresses: []string{d.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}}
	unknown := discoveryv1.Endpoint{Addresses: []string{c.String()}} // conditions unknown: ready
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("dns", corev1.ProtocolUDP, 5353)}
	v6 := endpointSlice("web", "web-v6", ports, discoveryv1.Endpoint{Addresses: []string{"fd00::1"}})
	v6.AddressType = discoveryv1.AddressTypeIPv6
	slices := []*discoveryv1.EndpointSlice{
		endpointSlice("web", "web-1", ports, endpoint(a), terminating(b), notReady),
		endpointSlice("web", "web-2", ports, unknown, terminating(a)), // a moving between slices: ready wins
		endpointSlice("web", "web-3", []discoveryv1.EndpointPort{slicePort("other", corev1.ProtocolTCP, 9999)}, endpoint(d)),
		v6,
	}

	svc := service("web", "10.96.0.10", port("http", corev1.ProtocolTCP, 80, 8080), port("dns", corev1.ProtocolUDP, 53, 5353),
		port("sctp", corev1.ProtocolSCTP, 99, 99))
	svc.Spec.ClusterIPs = []string{"10.96.0.10", "fd00::10"}
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	svc.Spec.ExternalIPs = []string{"192.0.2.1", "2001:db8::1"}
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP

	web := []datapath.Backend{
		{Addr: netip.AddrPortFrom(a, 8080)},
		{Addr: netip.AddrPortFrom(b, 8080), State: datapath.BackendTerminating},
		{Addr: netip.AddrPortFrom(c, 8080)},
	}
	dns := []datapath.Backend{
		{Addr: netip.AddrPortFrom(a, 5353)},
		{Addr: netip.AddrPortFrom(b, 5353), State: datapath.BackendTerminating},
		{Addr: netip.AddrPortFrom(c, 5353)},
	}
	affinity := 10800 * time.Second // kube's default
	vip, ext := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("192.0.2.1")
	want := map[frontendKey]datapath.Service{
		{"default/web", "http", datapath.ClusterIP, vip}: {Frontend: netip.AddrPortFrom(vip, 80), Protocol: datapath.TCP, Type: datapath.ClusterIP,
			Backends: web, SessionAffinity: affinity},
		{"default/web", "http", datapath.NodePort, netip.IPv4Unspecified()}: {Frontend: netip.MustParseAddrPort("0.0.0.0:30080"), Protocol: datapath.TCP,
			Type: datapath.NodePort, Backends: web, SessionAffinity: affinity, ExternalTrafficPolicyLocal: true},
		{"default/web", "http", datapath.ExternalIP, ext}: {Frontend: netip.AddrPortFrom(ext, 80), Protocol: datapath.TCP, Type: datapath.ExternalIP,
			Backends: web, SessionAffinity: affinity, ExternalTrafficPolicyLocal: true},
		{"default/web", "dns", datapath.ClusterIP, vip}: {Frontend: netip.AddrPortFrom(vip, 53), Protocol: datapath.UDP, Type: datapath.ClusterIP,
			Backends: dns, SessionAffinity: affinity},
		{"default/web", "dns", datapath.ExternalIP, ext}: {Frontend: netip.AddrPortFrom(ext, 53), Protocol: datapath.UDP, Type: datapath.ExternalIP,
			Backends: dns, SessionAffinity: affinity, ExternalTrafficPolicyLocal: true},
	}
	wantProblems := []string{
		"cluster IP fd00::10: IPv6 is not supported",
		"external IP 2001:db8::1: IPv6 is not supported",
		`port "sctp": protocol SCTP is not supported`,
	}
	got, problems := frontends(svc, slices, nodeView{name: "node0"})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("frontends:\n%v\nwant\n%v", got, want)
	}
	if !reflect.DeepEqual(problems, wantProblems) {
		t.Errorf("problems %q, want %q", problems, wantProblems)
	}

	// internalTrafficPolicy Local: no endpoint has the node's name, so
	// none takes new flows; an affinity beyond the datapath's is cut, and
	// said so.
	svc = service("web", "10.96.0.10", port("http", corev1.ProtocolTCP, 80, 8080))
	svc.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(86400))}}
	got, problems = frontends(svc, []*discoveryv1.EndpointSlice{endpointSlice("web", "web-1", ports, terminating(b), notReady)}, nodeView{name: "node0"})
	want = map[frontendKey]datapath.Service{
		{"default/web", "http", datapath.ClusterIP, vip}: {Frontend: netip.AddrPortFrom(vip, 80), Protocol: datapath.TCP, Type: datapath.ClusterIP,
			Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(b, 8080), State: datapath.BackendTerminating}}, InternalTrafficPolicyLocal: true, SessionAffinity: maxAffinity},
	}
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(problems, []string{"session affinity of 24h0m0s cut to 18h12m15s"}) {
		t.Errorf("frontends:\n%v\n%q\nwant\n%v", got, problems, want)
	}

	// Headless and ExternalName services have no frontends.
	headless := service("h", corev1.ClusterIPNone, port("http", corev1.ProtocolTCP, 80, 8080))
	external := service("x", "", port("http", corev1.ProtocolTCP, 80, 8080))
	external.Spec.Type, external.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
	for _, s := range []*corev1.Service{headless, external} {
		if got, problems := frontends(s, slices, nodeView{}); got != nil || problems != nil {
			t.Errorf("%s: %v, %q", s.Name, got, problems)
		}
	}
}

// TestCategorize: the endpoints each traffic policy gives new flows, as
// kube-proxy's CategorizeEndpoints, by the names of its unit test cases
// (TestCategorizeEndpoints, pkg/proxy/topology_test.go) where it has them
// (the PreferSameNode and publishNotReadyAddresses cases are ours), from
// the EndpointSlice fields it reads.
func TestCategorize(t *testing.T) {
	node := nodeView{name: "node-a", zone: "zone-a"}
	ep := func(ip string, ready, serving, terminating, local bool, zones ...string) sliceEndpoint {
		return sliceEndpoint{addr: netip.AddrPortFrom(netip.MustParseAddr(ip), 80), ready: ready, serving: serving || ready,
			terminating: terminating, local: local, zones: zones}
	}
	set := func(ips ...string) map[netip.AddrPort]bool {
		out := map[netip.AddrPort]bool{}
		for _, ip := range ips {
			out[netip.AddrPortFrom(netip.MustParseAddr(ip), 80)] = true
		}
		return out
	}
	withNodes := func(e sliceEndpoint, nodes ...string) sliceEndpoint { e.nodes = nodes; return e }
	for _, c := range []struct {
		name                   string
		eps                    []sliceEndpoint
		usesCluster, usesLocal bool
		cluster, local         map[netip.AddrPort]bool
	}{{
		name:        "normal endpoint filtering",
		eps:         []sliceEndpoint{ep("10.1.2.3", true, true, false, false, "zone-a"), ep("10.1.2.4", true, true, false, false, "zone-b"), ep("10.1.2.6", true, true, false, false, "zone-a")},
		usesCluster: true, cluster: set("10.1.2.3", "10.1.2.6"),
	}, {
		name:        "missing hints, no filtering applied",
		eps:         []sliceEndpoint{ep("10.1.2.3", true, true, false, false, "zone-a"), ep("10.1.2.5", true, true, false, false)},
		usesCluster: true, cluster: set("10.1.2.3", "10.1.2.5"),
	}, {
		name:        "node in different zone, no endpoint filtering",
		eps:         []sliceEndpoint{ep("10.1.2.3", true, true, false, false, "zone-b")},
		usesCluster: true, cluster: set("10.1.2.3"),
	}, {
		name:        "only unready endpoints in same zone (should not filter)",
		eps:         []sliceEndpoint{ep("10.1.2.3", false, false, false, false, "zone-a"), ep("10.1.2.4", true, true, false, false, "zone-b"), ep("10.1.2.5", true, true, false, false, "zone-c")},
		usesCluster: true, cluster: set("10.1.2.4", "10.1.2.5"),
	}, {
		name:        "multiple hints per endpoint, filtering includes any endpoint with zone included",
		eps:         []sliceEndpoint{ep("10.1.2.3", true, true, false, false, "zone-b", "zone-a"), ep("10.1.2.5", true, true, false, false, "zone-b")},
		usesCluster: true, cluster: set("10.1.2.3"),
	}, {
		name: "PreferSameNode: node hints before zone hints",
		eps: []sliceEndpoint{withNodes(ep("10.1.2.3", true, true, false, false, "zone-a"), "node-b"),
			withNodes(ep("10.1.2.4", true, true, false, false, "zone-a"), "node-a")},
		usesCluster: true, cluster: set("10.1.2.4"),
	}, {
		name: "PreferSameNode: no node hint for this node, zone hints hold",
		eps: []sliceEndpoint{withNodes(ep("10.1.2.3", true, true, false, false, "zone-a"), "node-b"),
			withNodes(ep("10.1.2.4", true, true, false, false, "zone-b"), "node-c")},
		usesCluster: true, cluster: set("10.1.2.3"),
	}, {
		name:        "externalTrafficPolicy: Local, topology ignored for Local endpoints",
		eps:         []sliceEndpoint{ep("10.1.2.3", true, true, false, true, "zone-a"), ep("10.1.2.4", true, true, false, true, "zone-b"), ep("10.1.2.6", true, true, false, false, "zone-a")},
		usesCluster: true, usesLocal: true, cluster: set("10.1.2.3", "10.1.2.6"), local: set("10.1.2.3", "10.1.2.4"),
	}, {
		name:      "internalTrafficPolicy: Local, but all endpoints are remote",
		eps:       []sliceEndpoint{ep("10.0.0.0", true, true, false, false), ep("10.0.0.1", true, true, false, false)},
		usesLocal: true, local: set(),
	}, {
		name:        "Cluster traffic policy, PTE enabled, all endpoints are terminating",
		eps:         []sliceEndpoint{ep("10.0.0.0", false, true, true, true), ep("10.0.0.1", false, true, true, false)},
		usesCluster: true, cluster: set("10.0.0.0", "10.0.0.1"),
	}, {
		name: "iTP: Cluster, eTP: Local, PTE enabled, with terminating endpoints",
		eps: []sliceEndpoint{ep("10.0.0.0", true, true, false, false), ep("10.0.0.1", false, false, false, true),
			ep("10.0.0.2", false, true, true, true), ep("10.0.0.3", false, true, true, false)},
		usesCluster: true, usesLocal: true, cluster: set("10.0.0.0"), local: set("10.0.0.2"),
	}, {
		name:        "ready and terminating (publishNotReadyAddresses): ready",
		eps:         []sliceEndpoint{ep("10.0.0.0", true, true, true, true), ep("10.0.0.1", false, true, true, true)},
		usesCluster: true, usesLocal: true, cluster: set("10.0.0.0"), local: set("10.0.0.0"),
	}} {
		cluster, local := categorize(c.eps, c.usesCluster, c.usesLocal, node)
		if !reflect.DeepEqual(cluster, c.cluster) || !reflect.DeepEqual(local, c.local) {
			t.Errorf("%s: cluster %v, local %v; want %v, %v", c.name, addrList(cluster), addrList(local), addrList(c.cluster), addrList(c.local))
		}
	}
}

// TestProgram: how the agent puts kube-proxy's sets on a datapath service,
// whose flags take the datapath's own endpoints (pods) for local.
func TestProgram(t *testing.T) {
	a, b, h := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.1.1:80"), netip.MustParseAddrPort("172.18.0.2:80")
	pods := map[netip.Addr]bool{a.Addr(): true}
	ready := func(addrs ...netip.AddrPort) (out []sliceEndpoint) {
		for _, x := range addrs {
			out = append(out, sliceEndpoint{addr: x, ready: true, serving: true})
		}
		return out
	}
	set := func(addrs ...netip.AddrPort) map[netip.AddrPort]bool {
		out := map[netip.AddrPort]bool{}
		for _, x := range addrs {
			out[x] = true
		}
		return out
	}
	active := func(s datapath.Service) map[netip.AddrPort]bool {
		out := map[netip.AddrPort]bool{}
		for _, be := range s.Backends {
			if be.State == datapath.BackendActive {
				out[be.Addr] = true
			}
		}
		return out
	}
	for _, c := range []struct {
		name                  string
		typ                   datapath.ServiceType
		eps                   []sliceEndpoint
		external, internal    map[netip.AddrPort]bool
		extLocal, intLocal    bool
		wantExt, wantInt      bool // the flags programmed
		wantActive, wantInner map[netip.AddrPort]bool
		exact                 bool
	}{
		{"ClusterIP, Cluster", datapath.ClusterIP, ready(a, b), nil, set(a, b), false, false, false, false, set(a, b), set(a, b), true},
		{"ClusterIP, Local, a pod", datapath.ClusterIP, ready(a, b), nil, set(a), false, true, false, true, set(a), set(a), true},
		{"ClusterIP, Local, host network", datapath.ClusterIP, ready(h, b), nil, set(h), false, true, false, false, set(h), set(h), true},
		{"NodePort, eTP Local, a pod", datapath.NodePort, ready(a, b), set(a), set(a, b), true, false, true, false, set(a, b), set(a, b), true},
		{"NodePort, eTP Local, host network", datapath.NodePort, ready(h, b), set(h), set(h, b), true, false, false, false, set(h), set(h), false},
		{"NodePort, eTP Local, nothing local", datapath.NodePort, ready(b), set(), set(b), true, false, true, false, set(b), set(b), true},
	} {
		s := datapath.Service{Type: c.typ}
		got, exact := program(&s, c.eps, c.external, c.internal, c.extLocal, c.intLocal, pods)
		if s.ExternalTrafficPolicyLocal != c.wantExt || s.InternalTrafficPolicyLocal != c.wantInt || !reflect.DeepEqual(active(s), c.wantActive) ||
			!reflect.DeepEqual(got, c.wantInner) || exact != c.exact {
			t.Errorf("%s: %v (flags %v %v), the node's own traffic to %v, exact %v", c.name, s, s.ExternalTrafficPolicyLocal, s.InternalTrafficPolicyLocal, addrList(got), exact)
		}
	}
}
