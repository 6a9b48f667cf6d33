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

// serve starts the /healthz and /metrics servers that cfg asks for; they
// stop when ctx ends, and servers is done once they have.
func (a *Agent) serve(ctx context.Context, servers *sync.WaitGroup) error {
	mux := map[string]*http.ServeMux{}
	if a.cfg.Healthz != "" {
		mux[a.cfg.Healthz] = http.NewServeMux()
		mux[a.cfg.Healthz].HandleFunc("/healthz", a.healthz)
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

// health is the body of /healthz, as kube-proxy's, with the reason it is
// unhealthy.
type health struct {
	LastUpdated time.Time `json:"lastUpdated"`
	CurrentTime time.Time `json:"currentTime"`
	Healthy     bool      `json:"healthy"`
	Reason      string    `json:"reason,omitempty"`
}

// healthz answers 200 once the agent has brought the datapath in line with
// the API and the datapath answers, 503 with the reason before, when it
// does not, and while Services fail to program for another reason than
// being invalid (such as full service tables).
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	h := health{LastUpdated: a.lastUpdated, CurrentTime: time.Now(), Reason: a.unprogrammed}
	dp := a.dp
	a.mu.Unlock()
	select {
	case <-a.synced:
		if _, err := dp.Devices(); err != nil {
			h.Reason = fmt.Sprintf("datapath: %v", err)
		}
		h.Healthy = h.Reason == ""
	default:
		h.Reason = "not in line with the API yet"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if h.Healthy {
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
