package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hostrouting/hostrouting/datapath"
)

// healthOf calls a's /healthz handler and decodes the answer.
func healthOf(t *testing.T, a *Agent) (int, health) {
	t.Helper()
	rec := httptest.NewRecorder()
	a.healthz(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	var h health
	if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
		t.Fatalf("healthz body %q: %v", rec.Body, err)
	}
	return rec.Code, h
}

// TestServiceTableFull: on a node whose service tables hold 2 services
// (--max-services 2: 18 frontend entries, 16 backends), a Service of 20
// endpoints does not fit. The agent says so: an ERROR log line and a
// Warning event naming the Service, the metrics, and /healthz answering
// 503 with the reason, while the Service that fits is programmed and the
// big one stays as it was. Once the big Service shrinks, it is programmed
// and the node is healthy again.
func TestServiceTableFull(t *testing.T) {
	e := newEnv(t, 1)
	n0 := e.cluster.Nodes[0]
	pin := newPinPath(t, n0)
	cfg := e.agentConfig(t, n0, pin)
	cfg.MaxServices = 2
	var logs lockedBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), &logs), nil))
	cfg.Metrics = freeAddr(t)
	r := start(t, cfg)
	dp := openDatapath(t, n0, pin)
	checkHealthz(t, r.Agent.healthz, http.StatusOK)

	endpoints := func(n int) []discoveryv1.Endpoint {
		var eps []discoveryv1.Endpoint
		for i := range n {
			eps = append(eps, endpoint(netip.AddrFrom4([4]byte{10, 0, 9, byte(10 + i)})))
		}
		return eps
	}
	backends := func(n int) []datapath.Backend {
		var bs []datapath.Backend
		for i := range n {
			bs = append(bs, datapath.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 9, byte(10 + i)}), 8080)})
		}
		return bs
	}
	ports := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	small, big := netip.MustParseAddrPort("10.96.0.50:80"), netip.MustParseAddrPort("10.96.0.51:80")
	e.create(t,
		service("small", small.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080)), endpointSlice("small", "small-1", ports, endpoints(1)...),
		service("big", big.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080)), endpointSlice("big", "big-1", ports, endpoints(20)...))
	wantBackends(t, dp, small, datapath.TCP, backends(1)...)

	eventually(t, 30*time.Second, func() error {
		code, h := healthOf(t, r.Agent)
		if code != http.StatusServiceUnavailable || h.Healthy || !strings.Contains(h.Reason, "default/big") || !strings.Contains(h.Reason, "service table full") {
			return fmt.Errorf("healthz %d %+v, want 503 naming default/big and the full table", code, h)
		}
		return nil
	})
	// It stays as it was before its endpoints came (none, or without
	// backends): nothing half-made.
	if s, err := findService(dp, big, datapath.TCP); err == nil && len(s.Backends) != 0 {
		t.Errorf("the Service that does not fit: %v; want it without backends, as before its endpoints came", s)
	}
	eventually(t, 10*time.Second, func() error {
		evs, err := e.client.CoreV1().Events(metav1.NamespaceDefault).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=big"})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.Type == corev1.EventTypeWarning && ev.Reason == "HostroutingServiceTableFull" && strings.Contains(ev.Message, "service table full") {
				return nil
			}
		}
		return fmt.Errorf("no table-full event on Service big among %v", evs.Items)
	})
	if !regexp.MustCompile(`level=ERROR msg="service not programmed: the node's service tables are full \(see --max-services\)".* service=default/big .*service table full`).MatchString(logs.String()) {
		t.Errorf("no ERROR line naming default/big and the full table in the log:\n%s", logs.String())
	}
	body := getMetrics(t, cfg.Metrics)
	for _, re := range []string{
		`\nhostrouting_agent_services_not_programmed\{reason="table_full"\} 1\n`,
		`\nhostrouting_agent_service_sync_errors_total\{reason="table_full"\} [1-9]`,
		`\nhostrouting_agent_services_not_programmed\{reason="other"\} 0\n`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics does not match %q:\n%s", re, body)
		}
	}

	// The big Service shrinks: it fits, and the node is healthy again.
	e.updateSlice(t, "big-1", endpoints(4)...)
	wantBackends(t, dp, big, datapath.TCP, backends(4)...)
	eventually(t, 10*time.Second, func() error {
		if code, h := healthOf(t, r.Agent); code != http.StatusOK || h.Reason != "" {
			return fmt.Errorf("healthz %d %+v, want 200", code, h)
		}
		return nil
	})
	if body := getMetrics(t, cfg.Metrics); !strings.Contains(body, "\nhostrouting_agent_services_not_programmed{reason=\"table_full\"} 0\n") {
		t.Errorf("/metrics after the Service fits:\n%s", body)
	}
}

// getMetrics returns the body of /metrics at addr.
func getMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
