package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hostrouting/hostrouting/datapath/metrics"
)

// serve starts the /healthz, /livez and /metrics servers that cfg asks for; they
// stop when ctx ends, and servers is done once they have.
func (a *Agent) serve(ctx context.Context, servers *sync.WaitGroup) error {
	mux := map[string]*http.ServeMux{}
	if a.cfg.Healthz != "" {
		mux[a.cfg.Healthz] = http.NewServeMux()
		mux[a.cfg.Healthz].HandleFunc("/healthz", a.healthz)
		mux[a.cfg.Healthz].HandleFunc("/livez", a.livez)
	}
	if a.cfg.Metrics != "" {
		reg := prometheus.NewRegistry()
		if err := errors.Join(reg.Register(metrics.NewCollector(a.dp, metrics.Options{})), a.metrics.register(reg)); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
		if mux[a.cfg.Metrics] == nil {
			mux[a.cfg.Metrics] = http.NewServeMux()
		}
		mux[a.cfg.Metrics].Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	}
	for addr, m := range mux {
		l, err := listen(addr)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
		servers.Go(func() {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("HTTP server failed", "addr", addr, "err", err)
			}
		})
		servers.Go(func() {
			<-ctx.Done()
			_ = srv.Close()
		})
	}
	return nil
}

// health is the body of /healthz and /livez, as kube-proxy's
// (lastUpdated, currentTime, and nodeEligible for /healthz), with whether
// the agent is healthy and why not.
type health struct {
	LastUpdated  time.Time `json:"lastUpdated"`
	CurrentTime  time.Time `json:"currentTime"`
	NodeEligible *bool     `json:"nodeEligible,omitempty"`
	Healthy      bool      `json:"healthy"`
	Reason       string    `json:"reason,omitempty"`
}

// healthz answers 200 once the agent has brought the datapath in line with
// the API and the datapath answers, 503 with the reason before, when it
// does not, while Services fail to program for another reason than
// being invalid (such as full service tables), once a change has waited
// longer than the healthz timeout to reach the datapath (queued, or
// failing: kube-proxy's proxier health), and while the agent's Node is
// not eligible for load balancer traffic (being deleted, or tainted
// ToBeDeletedByClusterAutoscaler: nodeEligible false).
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	h := health{CurrentTime: time.Now(), Reason: a.unprogrammed}
	dp := a.dp
	a.mu.Unlock()
	st := a.health.state(h.CurrentTime, a.cfg.HealthzTimeout)
	h.LastUpdated, h.NodeEligible = st.lastUpdated, &st.nodeEligible
	select {
	case <-a.synced:
		if _, err := dp.Devices(); err != nil {
			h.Reason = fmt.Sprintf("datapath: %v", err)
		}
	default:
		h.Reason = "not in line with the API yet"
	}
	switch {
	case h.Reason != "":
	case !st.healthy:
		h.Reason = pendingReason(st, a.cfg.HealthzTimeout)
	case !st.nodeEligible:
		h.Reason = "node is being deleted or tainted " + toBeDeletedTaint
	}
	h.Healthy = h.Reason == ""
	writeHealth(w, h)
}

// livez answers as kube-proxy's /livez: 503 once a change has waited
// longer than the healthz timeout to reach the datapath, 200 otherwise,
// whatever the Node's eligibility and before the first sync.
func (a *Agent) livez(w http.ResponseWriter, _ *http.Request) {
	h := health{CurrentTime: time.Now()}
	st := a.health.state(h.CurrentTime, a.cfg.HealthzTimeout)
	h.LastUpdated, h.Healthy = st.lastUpdated, st.healthy
	if !st.healthy {
		h.Reason = pendingReason(st, a.cfg.HealthzTimeout)
	}
	writeHealth(w, h)
}

func pendingReason(st proxyState, timeout time.Duration) string {
	return fmt.Sprintf("a change has waited %s to reach the datapath, longer than the healthz timeout %s",
		st.pending.Round(time.Millisecond), timeout)
}

// writeHealth writes h, 200 if healthy, 503 if not. As kube-proxy, a
// healthy answer's lastUpdated is its currentTime.
func writeHealth(w http.ResponseWriter, h health) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if h.Healthy {
		h.LastUpdated = h.CurrentTime
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(h)
}

// listen opens a TCP listener on addr.
func listen(addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}
