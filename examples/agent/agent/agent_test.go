package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// wantNodes waits until dp routes exactly the nodes want.
func wantNodes(t testing.TB, dp *datapath.Datapath, want ...datapath.Node) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		got, err := dp.Nodes()
		if err != nil {
			return err
		}
		if !slices.EqualFunc(got, want, func(a, b datapath.Node) bool { return a.String() == b.String() }) {
			return fmt.Errorf("nodes %v, want %v", got, want)
		}
		return nil
	})
}

func nodeOfCluster(n *datapathtest.Node) datapath.Node {
	return datapath.Node{Name: n.Name, IP: n.IP, PodCIDRs: []netip.Prefix{n.PodCIDR}}
}

// TestNodes: each agent routes the other Nodes' pod CIDRs via their
// InternalIP, so pods ping across nodes (and puts socket LB on the cgroup
// it is given); a Node without a pod CIDR is not
// routed until it has one, one whose address changes moves, and a deleted
// Node's routes go.
func TestNodes(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	pin0, pin1 := newPinPath(t, n0), newPinPath(t, n1)
	cfg0 := e.agentConfig(t, n0, pin0)
	cfg0.CgroupPath = datapathtest.NewCgroup(t)
	start(t, cfg0)
	start(t, e.agentConfig(t, n1, pin1))
	dp0, dp1 := openDatapath(t, n0, pin0), openDatapath(t, n1, pin1)
	for dp, want := range map[*datapath.Datapath]string{dp0: "Enabled", dp1: "Disabled"} {
		if st, err := dp.Status(); err != nil || st.SocketLB != want || st.HostRouting != datapath.HostRoutingBPF {
			t.Errorf("status: socket LB %q, host routing %q (%v): want %s, BPF", st.SocketLB, st.HostRouting, err, want)
		}
	}
	a, b := n0.AddPod(t, "a", n0.PodIP(10)), n1.AddPod(t, "b", n1.PodIP(10))
	a.AddEndpoint(t, dp0)
	b.AddEndpoint(t, dp1)

	wantNodes(t, dp0, nodeOfCluster(n1))
	wantNodes(t, dp1, nodeOfCluster(n0))
	if out := n0.Exec(t, "ip", "route", "show", n1.PodCIDR.String()); !strings.Contains(out, "via "+n1.IP.String()+" dev eth0") {
		t.Errorf("node %s's route to %s: %q", n0.Name, n1.PodCIDR, out)
	}
	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))

	// worker8 comes after worker9: once it is routed, the agent has seen
	// worker9, which has no pod CIDR yet.
	ip9, cidr9 := netip.MustParseAddr("172.18.0.99"), netip.MustParsePrefix("10.0.9.0/24")
	e.putNode(t, "worker9", ip9, netip.Prefix{})
	worker8 := datapath.Node{Name: "worker8", IP: netip.MustParseAddr("172.18.0.98"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.8.0/24")}}
	e.putNode(t, worker8.Name, worker8.IP, worker8.PodCIDRs[0])
	wantNodes(t, dp0, nodeOfCluster(n1), worker8)

	node := e.node(t, "worker9")
	node.Spec.PodCIDR, node.Spec.PodCIDRs = cidr9.String(), []string{cidr9.String()}
	if _, err := e.client.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	worker9 := datapath.Node{Name: "worker9", IP: ip9, PodCIDRs: []netip.Prefix{cidr9}}
	wantNodes(t, dp0, nodeOfCluster(n1), worker8, worker9)
	worker9.IP = netip.MustParseAddr("172.18.0.97")
	e.setNodeIP(t, e.node(t, "worker9"), worker9.IP)
	wantNodes(t, dp0, nodeOfCluster(n1), worker8, worker9)
	wantNodes(t, dp1, nodeOfCluster(n0), worker8, worker9)
	if out := n0.Exec(t, "ip", "route", "show", cidr9.String()); !strings.Contains(out, "via "+worker9.IP.String()) {
		t.Errorf("route to %s after worker9 moved: %q", cidr9, out)
	}

	for _, name := range []string{"worker8", "worker9", n1.Name} {
		if err := e.client.CoreV1().Nodes().Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	wantNodes(t, dp0)
	wantNodes(t, dp1, nodeOfCluster(n0))
	if out := n0.Exec(t, "ip", "route", "show", n1.PodCIDR.String()); strings.TrimSpace(out) != "" {
		t.Errorf("route to deleted node %s's pods left: %q", n1.Name, out)
	}
	if got, err := a.Ping(b.IP, 2, time.Second); err != nil || got != 0 {
		t.Errorf("pod on a deleted node answered %d pings (%v): want none", got, err)
	}
}

// TestServices: a Service with its EndpointSlice written through the API
// reaches both nodes' datapaths: its ClusterIP (TCP and UDP ports) from a
// pod, its NodePort from the wire on every node, spread over the backends
// of both nodes; a removed endpoint takes no new connections; a
// terminating one keeps its flows and takes new ones only when no
// endpoint is ready; a deleted Service is gone.
func TestServices(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	pin0, pin1 := newPinPath(t, n0), newPinPath(t, n1)
	start(t, e.agentConfig(t, n0, pin0))
	start(t, e.agentConfig(t, n1, pin1))
	dps := []*datapath.Datapath{openDatapath(t, n0, pin0), openDatapath(t, n1, pin1)}
	b0, b1 := n0.AddPod(t, "b0", n0.PodIP(10)), n1.AddPod(t, "b1", n1.PodIP(10))
	client := n1.AddPod(t, "client", n1.PodIP(20))
	b0.AddEndpoint(t, dps[0])
	b1.AddEndpoint(t, dps[1])
	client.AddEndpoint(t, dps[1])
	be0, be1 := nameServer(t, b0), nameServer(t, b1)

	svc := service("web", "10.96.0.100", port("http", corev1.ProtocolTCP, 80, 8080), port("dns", corev1.ProtocolUDP, 53, 8080))
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("dns", corev1.ProtocolUDP, 8080)}
	e.create(t, svc, endpointSlice("web", "web-1", ports, endpoint(b0.IP), endpoint(b1.IP)))

	vip, dns := netip.MustParseAddrPort("10.96.0.100:80"), netip.MustParseAddrPort("10.96.0.100:53")
	nodePort := netip.MustParseAddrPort("0.0.0.0:30080")
	both := []datapath.Backend{{Addr: be0}, {Addr: be1}}
	for _, dp := range dps {
		wantBackends(t, dp, vip, datapath.TCP, both...)
		wantBackends(t, dp, dns, datapath.UDP, both...)
		if s := wantBackends(t, dp, nodePort, datapath.TCP, both...); s.Type != datapath.NodePort {
			t.Errorf("NodePort service is a %s", s.Type)
		}
		if _, err := findService(dp, netip.MustParseAddrPort("0.0.0.0:30080"), datapath.UDP); err == nil {
			t.Error("the UDP port without a nodePort got one")
		}
	}
	for proto, dst := range map[string]netip.AddrPort{"tcp4": vip, "udp4": dns} {
		if seen := answeredBy(t, client.Netns, proto, dst, 20); len(seen) != 2 {
			t.Errorf("%s from a pod to %s answered by %v: want b0 and b1", proto, dst, seen)
		}
	}
	for _, n := range e.cluster.Nodes {
		dst := netip.AddrPortFrom(n.IP, 30080)
		if seen := answeredBy(t, e.cluster.Wire, "tcp4", dst, 20); len(seen) != 2 {
			t.Errorf("NodePort %s from the wire answered by %v: want b0 and b1", dst, seen)
		}
	}
	// The other node's NodePort from a pod, as `kubectl exec client -- curl`.
	if seen := answeredBy(t, client.Netns, "tcp4", netip.AddrPortFrom(n0.IP, 30080), 20); len(seen) != 2 {
		t.Errorf("NodePort of node %s from a pod on %s answered by %v: want b0 and b1", n0.Name, n1.Name, seen)
	}

	// b0 removed: no new connections go to it.
	e.updateSlice(t, "web-1", endpoint(b1.IP))
	for _, dp := range dps {
		wantBackends(t, dp, vip, datapath.TCP, datapath.Backend{Addr: be1})
	}
	if seen := answeredBy(t, client.Netns, "tcp4", vip, 10); seen["b1"] != 10 {
		t.Errorf("after b0 went: answered by %v, want b1 only", seen)
	}

	// b0 back as serving and terminating: its flows only, while b1 is ready.
	e.updateSlice(t, "web-1", terminating(b0.IP), endpoint(b1.IP))
	wantBackends(t, dps[1], vip, datapath.TCP, datapath.Backend{Addr: be0, State: datapath.BackendTerminating}, datapath.Backend{Addr: be1})
	if seen := answeredBy(t, client.Netns, "tcp4", vip, 10); seen["b1"] != 10 {
		t.Errorf("with b0 terminating: answered by %v, want b1 only", seen)
	}
	// Only terminating endpoints left: they take new flows, as in kube-proxy.
	e.updateSlice(t, "web-1", terminating(b0.IP))
	wantBackends(t, dps[1], vip, datapath.TCP, datapath.Backend{Addr: be0})
	if seen := answeredBy(t, client.Netns, "tcp4", vip, 5); seen["b0"] != 5 {
		t.Errorf("with b0 the only (terminating) endpoint: answered by %v, want b0", seen)
	}

	e.deleteService(t, "web")
	for _, dp := range dps {
		noService(t, dp, vip, datapath.TCP)
		noService(t, dp, dns, datapath.UDP)
		noService(t, dp, nodePort, datapath.TCP)
	}
	if _, _, err := ask(client.Netns, "tcp4", vip); err == nil {
		t.Error("a deleted service still answers")
	}
}

// TestServiceKinds: externalTrafficPolicy Local (NodePort and external IP:
// the node's own backend, which sees the client's address),
// internalTrafficPolicy Local, sessionAffinity ClientIP; an SCTP port is
// left out with a Warning event while the Service's TCP port works;
// headless Services and those of another proxy are left alone.
func TestServiceKinds(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	pin0, pin1 := newPinPath(t, n0), newPinPath(t, n1)
	start(t, e.agentConfig(t, n0, pin0))
	start(t, e.agentConfig(t, n1, pin1))
	dp0, dp1 := openDatapath(t, n0, pin0), openDatapath(t, n1, pin1)
	b0, b1 := n0.AddPod(t, "b0", n0.PodIP(10)), n1.AddPod(t, "b1", n1.PodIP(10))
	client := n1.AddPod(t, "client", n1.PodIP(20))
	b0.AddEndpoint(t, dp0)
	b1.AddEndpoint(t, dp1)
	client.AddEndpoint(t, dp1)
	nameServer(t, b0)
	nameServer(t, b1)
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}

	local := service("local", "10.96.0.101", port("http", corev1.ProtocolTCP, 80, 8080))
	local.Spec.Type = corev1.ServiceTypeNodePort
	local.Spec.Ports[0].NodePort = 30090
	local.Spec.ExternalIPs = []string{n0.IP.String()}
	local.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	local.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	sticky := service("sticky", "10.96.0.102", port("http", corev1.ProtocolTCP, 80, 8080))
	sticky.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	sticky.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(int32(600))}}
	mixed := service("mixed", "10.96.0.103", port("http", corev1.ProtocolTCP, 80, 8080), port("sctp", corev1.ProtocolSCTP, 90, 9090))
	headless := service("headless", corev1.ClusterIPNone, port("http", corev1.ProtocolTCP, 80, 8080))
	other := service("other", "10.96.0.104", port("http", corev1.ProtocolTCP, 80, 8080))
	other.Labels = map[string]string{labelServiceProxyName: "someone-else"}
	last := service("last", "10.96.0.105", port("http", corev1.ProtocolTCP, 80, 8080))
	for _, s := range []*corev1.Service{local, sticky, mixed, headless, other, last} {
		e.create(t, s, endpointSlice(s.Name, s.Name+"-1", ports, onNode(endpoint(b0.IP), n0.Name), onNode(endpoint(b1.IP), n1.Name)))
	}
	wantBackends(t, dp1, netip.MustParseAddrPort("10.96.0.105:80"), datapath.TCP,
		datapath.Backend{Addr: netip.AddrPortFrom(b0.IP, 8080)}, datapath.Backend{Addr: netip.AddrPortFrom(b1.IP, 8080)})

	svcs, err := dp1.Services()
	if err != nil {
		t.Fatal(err)
	}
	byFront := map[string]datapath.Service{}
	for _, s := range svcs {
		byFront[fmt.Sprintf("%s/%s", s.Frontend, s.Protocol)] = s
	}
	for front, want := range map[string]func(datapath.Service) bool{
		"10.96.0.101:80/TCP": func(s datapath.Service) bool {
			return s.Type == datapath.ClusterIP && s.InternalTrafficPolicyLocal && !s.ExternalTrafficPolicyLocal
		},
		"0.0.0.0:30090/TCP": func(s datapath.Service) bool { return s.Type == datapath.NodePort && s.ExternalTrafficPolicyLocal },
		n0.IP.String() + ":80/TCP": func(s datapath.Service) bool {
			return s.Type == datapath.ExternalIP && s.ExternalTrafficPolicyLocal
		},
		"10.96.0.102:80/TCP": func(s datapath.Service) bool { return s.SessionAffinity == 600*time.Second },
		"10.96.0.103:80/TCP": func(s datapath.Service) bool { return len(s.Backends) == 2 },
	} {
		if s, ok := byFront[front]; !ok || !want(s) {
			t.Errorf("service %s: %+v (there: %v)", front, s, ok)
		}
	}
	for _, front := range []string{"10.96.0.103:90/TCP", "10.96.0.103:90/UDP", "10.96.0.104:80/TCP"} {
		if s, ok := byFront[front]; ok {
			t.Errorf("service %s programmed: %v", front, s)
		}
	}
	if len(svcs) != 7 { // the above, last's and the API server's own (kubernetes)
		t.Errorf("%d services, want 7:\n%v", len(svcs), svcs)
	}

	// externalTrafficPolicy Local: from the wire, node 0's NodePort and
	// external IP go to its own backend, which sees the client.
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(n0.IP, 30090), netip.AddrPortFrom(n0.IP, 80)} {
		onlyFrom(t, e.cluster.Wire, dst, "b0", 1) // node 0's agent may not be done yet
		for range 10 {
			name, peer, err := ask(e.cluster.Wire, "tcp4", dst)
			if err != nil || name != "b0" || !strings.HasPrefix(peer, e.cluster.Gateway.String()+":") {
				t.Fatalf("%s from the wire: answered by %q, which saw %q (%v): want b0 seeing %s", dst, name, peer, err, e.cluster.Gateway)
			}
		}
	}
	// internalTrafficPolicy Local: a pod on node 1 gets b1 only.
	if seen := answeredBy(t, client.Netns, "tcp4", netip.MustParseAddrPort("10.96.0.101:80"), 10); seen["b1"] != 10 {
		t.Errorf("internalTrafficPolicy Local: answered by %v, want b1 only", seen)
	}
	// sessionAffinity ClientIP: one backend for all of the client's flows.
	if seen := answeredBy(t, client.Netns, "tcp4", netip.MustParseAddrPort("10.96.0.102:80"), 10); len(seen) != 1 {
		t.Errorf("sessionAffinity ClientIP: answered by %v, want one backend", seen)
	}
	if seen := answeredBy(t, client.Netns, "tcp4", netip.MustParseAddrPort("10.96.0.103:80"), 20); len(seen) != 2 {
		t.Errorf("TCP port of a Service with an SCTP port: answered by %v, want both", seen)
	}

	// The SCTP port is named in a Warning event (one per agent; the event
	// correlator may merge them).
	eventually(t, 10*time.Second, func() error {
		evs, err := e.client.CoreV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=mixed"})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Type == corev1.EventTypeWarning && ev.Reason == "HostroutingUnsupported" && strings.Contains(ev.Message, `port "sctp": protocol SCTP is not supported`) {
				return nil
			}
		}
		return fmt.Errorf("no event for the SCTP port among %v", evs.Items)
	})
}
