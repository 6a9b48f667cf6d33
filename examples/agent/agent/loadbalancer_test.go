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
)

// TestLoadBalancer (kube-proxy's LoadBalancer ingress handling and e2e
// "should only allow access from service loadbalancer source ranges"):
// a LoadBalancer Service's ingress IP of ipMode VIP is served on the node,
// from the wire, to sources in loadBalancerSourceRanges only; an ingress IP
// of ipMode Proxy is left to the load balancer (not programmed); with
// allocateLoadBalancerNodePorts false there is no NodePort. Changing the
// ranges reaches the datapath.
func TestLoadBalancer(t *testing.T) {
	e := newEnv(t, 1)
	n0 := e.cluster.Nodes[0]
	pin := newPinPath(t, n0)
	start(t, e.agentConfig(t, n0, pin))
	dp := openDatapath(t, n0, pin)
	b := n0.AddPod(t, "b", n0.PodIP(10))
	b.AddEndpoint(t, dp)
	nameServer(t, b)
	vip, proxied := netip.MustParseAddr("198.51.100.20"), netip.MustParseAddr("198.51.100.21")
	allowed := e.cluster.AddHost(t, "allowed", netip.MustParseAddr("172.18.1.1"))
	denied := e.cluster.AddHost(t, "denied", netip.MustParseAddr("172.18.1.2"))
	for _, h := range []interface {
		AddRoute(testing.TB, netip.Prefix, netip.Addr)
	}{allowed, denied} {
		h.AddRoute(t, netip.PrefixFrom(vip, 32), n0.IP)
	}

	lb := service("lb", "10.96.0.120", port("http", corev1.ProtocolTCP, 80, 8080))
	lb.Spec.Type = corev1.ServiceTypeLoadBalancer
	lb.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
	lb.Spec.LoadBalancerSourceRanges = []string{"172.18.1.1/32", " 192.0.2.0/24"}
	e.create(t, lb, endpointSlice("lb", "lb-1", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)},
		onNode(endpoint(b.IP), n0.Name)))
	got, err := e.client.CoreV1().Services(metav1.NamespaceDefault).Get(t.Context(), "lb", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
		{IP: vip.String()}, {IP: proxied.String(), IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)},
	}
	if _, err := e.client.CoreV1().Services(metav1.NamespaceDefault).UpdateStatus(t.Context(), got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	front := netip.AddrPortFrom(vip, 80)
	s := wantBackends(t, dp, front, datapath.TCP, datapath.Backend{Addr: netip.AddrPortFrom(b.IP, 8080)})
	if want := []netip.Prefix{netip.MustParsePrefix("172.18.1.1/32"), netip.MustParsePrefix("192.0.2.0/24")}; s.Type != datapath.ExternalIP || !slices.Equal(s.SourceRanges, want) {
		t.Errorf("load balancer IP %s: %s with source ranges %v, want an external IP with %v", front, s.Type, s.SourceRanges, want)
	}
	svcs, err := dp.Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Frontend.Addr() == proxied || s.Type == datapath.NodePort {
			t.Errorf("programmed %s (%s): want no ipMode Proxy IP and no NodePort", s.Frontend, s.Type)
		}
	}
	if name, _, err := ask(allowed.Netns, "tcp4", front); err != nil || name != "b" {
		t.Errorf("from %s, inside the source ranges: %q, %v", allowed.IP, name, err)
	}
	if name, _, err := ask(denied.Netns, "tcp4", front); err == nil {
		t.Errorf("from %s, outside the source ranges: answered by %s", denied.IP, name)
	}

	// The ranges go: every source reaches the load balancer IP.
	eventually(t, 10*time.Second, func() error {
		cur, err := e.client.CoreV1().Services(metav1.NamespaceDefault).Get(t.Context(), "lb", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec.LoadBalancerSourceRanges = nil
		_, err = e.client.CoreV1().Services(metav1.NamespaceDefault).Update(t.Context(), cur, metav1.UpdateOptions{})
		return err
	})
	eventually(t, 10*time.Second, func() error {
		s, err := findService(dp, front, datapath.TCP)
		if err != nil {
			return err
		}
		if len(s.SourceRanges) > 0 {
			return fmt.Errorf("source ranges %v still there", s.SourceRanges)
		}
		return nil
	})
	if name, _, err := ask(denied.Netns, "tcp4", front); err != nil || name != "b" {
		t.Errorf("from %s after the ranges went: %q, %v", denied.IP, name, err)
	}
}
