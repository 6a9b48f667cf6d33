package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

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
// CIDR another Node has: the datapath refuses to route it) turns /healthz
// and /livez to 503 once it has waited longer than the healthz timeout, and they answer
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
	// The clash goes: the change is done, healthy again.
	if err := e.client.CoreV1().Nodes().Delete(t.Context(), "clash", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wantHealthz(t, cfg.Healthz, "/healthz", http.StatusOK, true)
	wantHealthz(t, cfg.Healthz, "/livez", http.StatusOK, true)
}
