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
