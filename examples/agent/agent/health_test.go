package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/routing"
)

// answer is an HTTP answer read in a test.
type answer struct {
	code   int
	header http.Header
	body   []byte
}

// httpGet GETs url from the network namespace at nsPath ("" for the
// test's own), on a connection of its own.
func httpGet(nsPath, url string) (answer, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := routing.Do(nsPath, func() (err error) {
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, body}, err
}

// wantHealthCheck waits until GET path on addr from nsPath answers as
// kube-proxy's health check of Service default/name with local endpoints:
// 200 for some, 503 for none, the exact body and headers.
func wantHealthCheck(t *testing.T, nsPath string, addr netip.AddrPort, path, name string, local int) {
	t.Helper()
	want := fmt.Sprintf("{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": true\n}", name, local)
	code := http.StatusOK
	if local == 0 {
		code = http.StatusServiceUnavailable
	}
	eventually(t, 10*time.Second, func() error {
		a, err := httpGet(nsPath, "http://"+addr.String()+path)
		switch {
		case err != nil:
			return err
		case a.code != code || string(a.body) != want:
			return fmt.Errorf("GET %s%s: %d %q, want %d %q", addr, path, a.code, a.body, code, want)
		case a.header.Get("Content-Type") != "application/json" || a.header.Get("X-Content-Type-Options") != "nosniff" ||
			a.header.Get("X-Load-Balancing-Endpoint-Weight") != fmt.Sprint(local):
			return fmt.Errorf("GET %s%s: headers %v", addr, path, a.header)
		}
		return nil
	})
}

// wantRefused waits until a connection to addr from nsPath is refused: no
// health check listens there.
func wantRefused(t *testing.T, nsPath string, addr netip.AddrPort) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		a, err := httpGet(nsPath, "http://"+addr.String()+"/healthz")
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		return fmt.Errorf("GET %s: %d %q (%v), want connection refused", addr, a.code, a.body, err)
	})
}

// onNode is endpoint ep on node.
func onNode(ep discoveryv1.Endpoint, node string) discoveryv1.Endpoint {
	ep.NodeName = ptr.To(node)
	return ep
}

// TestHealthCheckNodePort: a LoadBalancer Service with
// externalTrafficPolicy Local gets kube-proxy's health check on its
// spec.healthCheckNodePort on every node, read over HTTP from the node
// itself and from a load balancer's host on the wire: 200 with the count
// of the node's ready endpoints, 503 with 0 on a node with none (a
// serving but terminating endpoint, or one not ready, does not count);
// the answers follow endpoint changes; the listener moves when the port
// changes and goes with the Service. Upstream: e2e "[sig-network]
// LoadBalancers ExternalTrafficPolicy: Local [Feature:LoadBalancer] should
// work for type=LoadBalancer" and "... should only target nodes with
// endpoints" (their health check part, once "ESIPP [Slow]"); unit
// pkg/proxy/healthcheck TestServer.
func TestHealthCheckNodePort(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	start(t, e.agentConfig(t, n0, newPinPath(t, n0)))
	start(t, e.agentConfig(t, n1, newPinPath(t, n1)))
	lb := e.cluster.AddHost(t, "lb", netip.MustParseAddr("172.18.1.1"))

	a0, b0 := n0.PodIP(10), n0.PodIP(11)
	a1, b1 := n1.PodIP(10), n1.PodIP(11)
	svc := service("web", "10.96.0.80", port("http", corev1.ProtocolTCP, 80, 8080), port("metrics", corev1.ProtocolTCP, 9090, 9090))
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc, err := e.client.CoreV1().Services(metav1.NamespaceDefault).Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hc := uint16(svc.Spec.HealthCheckNodePort)
	if hc == 0 {
		t.Fatalf("the API server gave no healthCheckNodePort: %+v", svc.Spec)
	}
	// Two ready endpoints on control-plane, with two ports each (counted
	// once each); on worker one not ready and one serving but terminating.
	notReady := onNode(discoveryv1.Endpoint{Addresses: []string{a1.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}}, n1.Name)
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("metrics", corev1.ProtocolTCP, 9090)}
	e.create(t, endpointSlice("web", "web-1", ports, onNode(endpoint(a0), n0.Name), onNode(endpoint(b0), n0.Name),
		notReady, onNode(terminating(b1), n1.Name)))

	at0, at1 := netip.AddrPortFrom(n0.IP, hc), netip.AddrPortFrom(n1.IP, hc)
	for _, from := range []string{n0.Netns, lb.Netns} {
		wantHealthCheck(t, from, at0, "/healthz", "web", 2)
		wantHealthCheck(t, from, at1, "/", "web", 0)
	}
	wantHealthCheck(t, n1.Netns, at1, "/anything", "web", 0)

	// Endpoints change: worker's becomes ready, control-plane's terminate.
	e.updateSlice(t, "web-1", onNode(terminating(a0), n0.Name), onNode(terminating(b0), n0.Name),
		onNode(endpoint(a1), n1.Name), onNode(terminating(b1), n1.Name))
	wantHealthCheck(t, lb.Netns, at0, "/", "web", 0)
	wantHealthCheck(t, lb.Netns, at1, "/", "web", 1)

	// externalTrafficPolicy Cluster: no health check (the API server frees
	// the port); Local again on another port: it listens there.
	update := func(f func(*corev1.Service)) {
		t.Helper()
		s, err := e.client.CoreV1().Services(metav1.NamespaceDefault).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f(s)
		if svc, err = e.client.CoreV1().Services(metav1.NamespaceDefault).Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		s.Spec.HealthCheckNodePort = 0
	})
	wantRefused(t, lb.Netns, at0)
	wantRefused(t, lb.Netns, at1)
	moved := hc + 1
	if moved > 32767 {
		moved = 30000
	}
	update(func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = int32(moved)
	})
	at0, at1 = netip.AddrPortFrom(n0.IP, moved), netip.AddrPortFrom(n1.IP, moved)
	wantHealthCheck(t, lb.Netns, at0, "/", "web", 0)
	wantHealthCheck(t, lb.Netns, at1, "/", "web", 1)

	// The Service goes, and its health check with it.
	e.deleteService(t, "web")
	wantRefused(t, lb.Netns, at0)
	wantRefused(t, n1.Netns, at1)
}

// TestLocalReadyEndpoints counts as kube-proxy's LocalReadyEndpoints
// (unit pkg/proxy TestLocalReadyEndpoints-like cases of endpoints_test.go):
// addresses once whatever their ports, ready whether terminating or not,
// nodeName the node's, IPv4 slices, ports with a name and number only.
func TestLocalReadyEndpoints(t *testing.T) {
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080), slicePort("dns", corev1.ProtocolUDP, 53)}
	readyTerminating := onNode(endpoint(ip("10.0.0.4")), "me")
	readyTerminating.Conditions.Terminating = ptr.To(true)
	noConditions := discoveryv1.Endpoint{Addresses: []string{"10.0.0.5"}, NodeName: ptr.To("me")}
	v6 := endpointSlice("web", "web-v6", ports, onNode(discoveryv1.Endpoint{Addresses: []string{"fd00::1"}}, "me"))
	v6.AddressType = discoveryv1.AddressTypeIPv6
	noName := endpointSlice("web", "web-noname", []discoveryv1.EndpointPort{{Port: ptr.To(int32(80))}}, onNode(endpoint(ip("10.0.0.6")), "me"))
	eps := []*discoveryv1.EndpointSlice{
		endpointSlice("web", "web-1", ports,
			onNode(endpoint(ip("10.0.0.1")), "me"),    // counted once for two ports
			onNode(terminating(ip("10.0.0.2")), "me"), // serving, not ready
			onNode(endpoint(ip("10.0.0.3")), "other"), // elsewhere
			endpoint(ip("10.0.0.7")),                  // no node
			readyTerminating,                          // ready: counted
			noConditions),                             // nil ready: counted
		endpointSlice("web", "web-2", ports[:1], onNode(endpoint(ip("10.0.0.1")), "me")), // in two slices
		v6, noName,
	}
	if got := localReadyEndpoints(eps, "me"); got != 3 {
		t.Errorf("local ready endpoints %d, want 3 (10.0.0.1, .4, .5)", got)
	}
	if got := localReadyEndpoints(eps, ""); got != 0 {
		t.Errorf("without a node name: %d, want 0", got)
	}
}

// healthzAt GETs path (/healthz or /livez) at addr and decodes it.
func healthzAt(t *testing.T, addr, path string) (int, health, []byte) {
	t.Helper()
	a, err := httpGet("", "http://"+addr+path)
	if err != nil {
		t.Fatal(err)
	}
	var h health
	if err := json.Unmarshal(a.body, &h); err != nil {
		t.Fatalf("%s body %q: %v", path, a.body, err)
	}
	if a.header.Get("Content-Type") != "application/json" || a.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("%s headers %v", path, a.header)
	}
	return a.code, h, a.body
}

// wantHealthz waits until path at addr answers code, and its body has
// nodeEligible eligible (for /healthz).
func wantHealthz(t *testing.T, addr, path string, code int, eligible bool) health {
	t.Helper()
	var h health
	eventually(t, 15*time.Second, func() error {
		c, got, body := healthzAt(t, addr, path)
		h = got
		switch {
		case c != code || got.Healthy != (code == http.StatusOK):
			return fmt.Errorf("%s: %d %s, want %d", path, c, body, code)
		case path == "/healthz" && (got.NodeEligible == nil || *got.NodeEligible != eligible):
			return fmt.Errorf("%s: %s, want nodeEligible %v", path, body, eligible)
		case path == "/livez" && bytes.Contains(body, []byte("nodeEligible")):
			return fmt.Errorf("%s: %s has nodeEligible", path, body)
		}
		return nil
	})
	return h
}

// TestHealthzNodeEligible: /healthz answers 503 with nodeEligible false
// while the agent's Node is tainted ToBeDeletedByClusterAutoscaler or
// being deleted, 200 with nodeEligible true otherwise; /livez ignores the
// Node and has no nodeEligible, as kube-proxy's. Upstream: unit
// pkg/proxy/healthcheck healthcheck_test.go TestHealthzServer and
// TestLivezServer (their node eligibility cases).
func TestHealthzNodeEligible(t *testing.T) {
	e := newEnv(t, 1)
	n0 := e.cluster.Nodes[0]
	cfg := e.agentConfig(t, n0, newPinPath(t, n0))
	cfg.Healthz = freeAddr(t)
	start(t, cfg)
	wantHealthz(t, cfg.Healthz, "/healthz", http.StatusOK, true)
	wantHealthz(t, cfg.Healthz, "/livez", http.StatusOK, true)

	setTaints := func(taints ...corev1.Taint) {
		t.Helper()
		node := e.node(t, n0.Name)
		node.Spec.Taints = taints
		if _, err := e.client.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setTaints(corev1.Taint{Key: "ToBeDeletedByClusterAutoscaler", Value: "1733600000", Effect: corev1.TaintEffectNoSchedule})
	h := wantHealthz(t, cfg.Healthz, "/healthz", http.StatusServiceUnavailable, false)
	if !strings.Contains(h.Reason, "ToBeDeletedByClusterAutoscaler") {
		t.Errorf("reason %q", h.Reason)
	}
	wantHealthz(t, cfg.Healthz, "/livez", http.StatusOK, true)
	setTaints(corev1.Taint{Key: "other", Effect: corev1.TaintEffectNoSchedule})
	wantHealthz(t, cfg.Healthz, "/healthz", http.StatusOK, true)

	// Being deleted: a finalizer holds the Node with its deletionTimestamp.
	patch := []byte(`{"metadata":{"finalizers":["hostrouting.test/hold"]}}`)
	if _, err := e.client.CoreV1().Nodes().Patch(t.Context(), n0.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().Nodes().Delete(t.Context(), n0.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wantHealthz(t, cfg.Healthz, "/healthz", http.StatusServiceUnavailable, false)
	wantHealthz(t, cfg.Healthz, "/livez", http.StatusOK, true)
	patch = []byte(`{"metadata":{"finalizers":null}}`)
	if _, err := e.client.CoreV1().Nodes().Patch(t.Context(), n0.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestHealthzPendingTimeout: a change that keeps failing (a Node whose pod
// CIDR another Node has: the datapath refuses to route it) turns /healthz,
// /livez and the Services' health checks (serviceProxyHealthy false) to
// 503 once it has waited longer than the healthz timeout, and they answer
// 200 again once it is in the datapath. Upstream: unit pkg/proxy/healthcheck
// TestHealthzServer and TestLivezServer (an update queued longer than
// healthTimeout makes both 503).
func TestHealthzPendingTimeout(t *testing.T) {
	e := newEnv(t, 2)
	n0, n1 := e.cluster.Nodes[0], e.cluster.Nodes[1]
	cfg := e.agentConfig(t, n0, newPinPath(t, n0))
	cfg.Healthz = freeAddr(t)
	cfg.HealthzTimeout = 3 * time.Second
	start(t, cfg)
	dp := openDatapath(t, n0, cfg.PinPath)
	wantNodes(t, dp, nodeOfCluster(n1))

	svc := service("web", "10.96.0.81", port("http", corev1.ProtocolTCP, 80, 8080))
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc, err := e.client.CoreV1().Services(metav1.NamespaceDefault).Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.create(t, endpointSlice("web", "web-1", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)},
		onNode(endpoint(n0.PodIP(10)), n0.Name)))
	hc := netip.AddrPortFrom(n0.IP, uint16(svc.Spec.HealthCheckNodePort))
	wantHealthCheck(t, n0.Netns, hc, "/", "web", 1)
	wantHealthz(t, cfg.Healthz, "/healthz", http.StatusOK, true)

	// worker's pod CIDR again, on another Node: never routed.
	e.putNode(t, "clash", netip.MustParseAddr("172.18.0.50"), n1.PodCIDR)
	began := time.Now()
	h := wantHealthz(t, cfg.Healthz, "/healthz", http.StatusServiceUnavailable, true)
	if waited := time.Since(began); waited < 2*time.Second {
		t.Errorf("/healthz 503 %s after the change: before the healthz timeout", waited)
	}
	if !strings.Contains(h.Reason, "healthz timeout") || h.LastUpdated.IsZero() {
		t.Errorf("/healthz %+v", h)
	}
	wantHealthz(t, cfg.Healthz, "/livez", http.StatusServiceUnavailable, true)
	eventually(t, 10*time.Second, func() error {
		a, err := httpGet(n0.Netns, "http://"+hc.String()+"/")
		if err != nil {
			return err
		}
		if a.code != http.StatusServiceUnavailable || !bytes.Contains(a.body, []byte(`"localEndpoints": 1,`)) ||
			!bytes.Contains(a.body, []byte(`"serviceProxyHealthy": false`)) {
			return fmt.Errorf("health check %d %s, want 503 with 1 local endpoint and serviceProxyHealthy false", a.code, a.body)
		}
		return nil
	})

	// The clash goes: the change is done, healthy again.
	if err := e.client.CoreV1().Nodes().Delete(t.Context(), "clash", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wantHealthz(t, cfg.Healthz, "/healthz", http.StatusOK, true)
	wantHealthz(t, cfg.Healthz, "/livez", http.StatusOK, true)
	wantHealthCheck(t, n0.Netns, hc, "/", "web", 1)
}
