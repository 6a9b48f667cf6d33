package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hostrouting/hostrouting/routing"
)

// BenchmarkHealthCheckLatency measures how long a healthCheckNodePort
// answer takes to follow an endpoint change: from the EndpointSlice
// update sent to the API server until GET on the node's health check
// (from the node's netns, polled every 0.5 ms on a kept-alive connection)
// says the new count; the node's only endpoint turns not ready and ready
// again, 503 and 200 in turn. It reports p50 and p99, on a node with
// that Service only and with benchServices more of benchEndpoints each.
func BenchmarkHealthCheckLatency(b *testing.B) {
	b.Run("services=1", func(b *testing.B) { benchHealthCheckLatency(b, false) })
	b.Run(fmt.Sprintf("services=%d", benchServices+1), func(b *testing.B) { benchHealthCheckLatency(b, true) })
}

func benchHealthCheckLatency(b *testing.B, more bool) {
	e := newEnv(b, 1)
	n0 := e.cluster.Nodes[0]
	if more {
		e.createBenchServices(b)
	}
	start(b, e.agentConfig(b, n0, newPinPath(b, n0)))
	svc := service("web", "10.96.0.90", port("http", corev1.ProtocolTCP, 80, 8080))
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	svc, err := e.client.CoreV1().Services(metav1.NamespaceDefault).Create(b.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ready := onNode(endpoint(n0.PodIP(10)), n0.Name)
	notReady := ready
	notReady.Conditions.Ready = new(bool)
	e.create(b, endpointSlice("web", "web-1", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}, ready))
	url := "http://" + netip.AddrPortFrom(n0.IP, uint16(svc.Spec.HealthCheckNodePort)).String() + "/"
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := routing.Do(n0.Netns, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}}
	get := func() (int, []byte) {
		resp, err := client.Get(url)
		if err != nil {
			return 0, []byte(err.Error()) // not listening yet
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	wait := func(code int, local string, limit time.Duration) {
		deadline := time.Now().Add(limit)
		for {
			c, body := get()
			if c == code && bytes.Contains(body, []byte(`"localEndpoints": `+local+",")) {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("health check %d %s, want %d with %s local endpoints", c, body, code, local)
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	wait(http.StatusOK, "1", 10*time.Second)

	var took []time.Duration
	b.ResetTimer()
	for i := range b.N {
		ep, code, local := notReady, http.StatusServiceUnavailable, "0"
		if i%2 == 1 {
			ep, code, local = ready, http.StatusOK, "1"
		}
		begin := time.Now()
		e.updateSlice(b, "web-1", ep)
		wait(code, local, 10*time.Second)
		took = append(took, time.Since(begin))
	}
	b.StopTimer()
	slices.Sort(took)
	p := func(q float64) float64 { return float64(took[int(q*float64(len(took)-1))].Microseconds()) / 1000 }
	b.ReportMetric(p(0.5), "p50-ms")
	b.ReportMetric(p(0.99), "p99-ms")
	b.Logf("%d changes: p50 %.1f ms, p99 %.1f ms, max %s", len(took), p(0.5), p(0.99), fmt.Sprint(took[len(took)-1].Round(time.Microsecond)))
}
