package agent

import (
	"errors"
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/hostrouting/hostrouting/datapath"
)

// Why the datapath did not take a Service: the reason label of the
// agent's metrics.
const (
	reasonTableFull = "table_full" // the service tables are full (datapath.ErrServiceTableFull)
	reasonInvalid   = "invalid"    // the datapath refuses it (datapath.ErrInvalidService)
	reasonOther     = "other"
)

// failReason names the kind of a Service's sync error.
func failReason(err error) string {
	switch {
	case errors.Is(err, datapath.ErrServiceTableFull):
		return reasonTableFull
	case errors.Is(err, datapath.ErrInvalidService):
		return reasonInvalid
	}
	return reasonOther
}

// eventReasons are the reasons of the Warning events on a Service the
// datapath did not take.
var eventReasons = map[string]string{
	reasonTableFull: "HostroutingServiceTableFull",
	reasonInvalid:   "HostroutingInvalid",
	reasonOther:     "HostroutingSyncFailed",
}

// agentMetrics are the agent's own metrics, beside the datapath's.
type agentMetrics struct {
	syncErrors    *prometheus.CounterVec
	notProgrammed *prometheus.GaugeVec
}

func newAgentMetrics() agentMetrics {
	m := agentMetrics{
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostrouting_agent_service_sync_errors_total",
			Help: "Times a Service failed to program on the datapath, by reason (table_full, invalid, other).",
		}, []string{"reason"}),
		notProgrammed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hostrouting_agent_services_not_programmed",
			Help: "Services that the datapath does not have as the API does, by reason (table_full, invalid, other).",
		}, []string{"reason"}),
	}
	for _, r := range []string{reasonTableFull, reasonInvalid, reasonOther} {
		m.syncErrors.WithLabelValues(r)
		m.notProgrammed.WithLabelValues(r)
	}
	return m
}

func (m agentMetrics) register(reg prometheus.Registerer) error {
	return errors.Join(reg.Register(m.syncErrors), reg.Register(m.notProgrammed))
}

// serviceSynced notes how the sync of Service name went (err nil for
// well): a failure is counted and, once per error, logged and sent as a
// Warning event on the Service; ERROR unless the datapath refused the
// Service as invalid (the API's to mend, not the node's).
func (a *Agent) serviceSynced(name string, err error) {
	key := "sync/" + name
	if err == nil {
		if _, ok := a.failing[name]; ok {
			a.log.Info("service programmed", "service", name)
		}
		delete(a.failing, name)
		delete(a.warned, key)
		return
	}
	reason := failReason(err)
	a.failing[name] = err
	a.metrics.syncErrors.WithLabelValues(reason).Inc()
	if a.warned[key] == err.Error() {
		return
	}
	a.warned[key] = err.Error()
	msg := "service not programmed"
	switch reason {
	case reasonInvalid:
		a.log.Warn(msg+": the datapath refuses it", "service", name, "err", err)
	case reasonTableFull:
		a.log.Error(msg+": the node's service tables are full (see --max-services)", "service", name, "err", err)
	default:
		a.log.Error(msg, "service", name, "err", err)
	}
	ns, n, _ := cache.SplitMetaNamespaceKey(name)
	if svc, err := a.informers.services.Services(ns).Get(n); err == nil {
		a.events.Event(svc, corev1.EventTypeWarning, eventReasons[reason], "not programmed: "+a.warned[key])
	}
}

// publishHealth sets the gauges and what /healthz says from the Services
// failing: unhealthy while any fails for another reason than being
// invalid.
func (a *Agent) publishHealth() {
	counts := map[string]int{}
	var names []string
	for name, err := range a.failing {
		r := failReason(err)
		counts[r]++
		if r != reasonInvalid {
			names = append(names, name)
		}
	}
	for _, r := range []string{reasonTableFull, reasonInvalid, reasonOther} {
		a.metrics.notProgrammed.WithLabelValues(r).Set(float64(counts[r]))
	}
	why := ""
	if len(names) > 0 {
		slices.Sort(names)
		why = fmt.Sprintf("%d Services not programmed, such as %s: %v", len(names), names[0], a.failing[names[0]])
	}
	a.mu.Lock()
	a.unprogrammed = why
	a.mu.Unlock()
}
