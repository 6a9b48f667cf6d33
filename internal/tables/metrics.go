package tables

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// Metrics is the node-wide counter map.
type Metrics struct {
	m *ebpf.Map
}

// NewMetrics wraps the loaded metrics map (instance.Maps.Metrics).
func NewMetrics(m *ebpf.Map) *Metrics {
	return &Metrics{m: m}
}

// Get returns the counter of metric m in direction d, summed over CPUs.
func (ms *Metrics) Get(d maps.Direction, m maps.Metric) (maps.Counter, error) {
	var per []bpf.HostroutingMetricValue
	if err := ms.m.Lookup(uint32(d)*uint32(maps.MetricCount)+uint32(m), &per); err != nil {
		return maps.Counter{}, fmt.Errorf("metric %s %s: %w", d, m, mapErr(err, ms.m))
	}
	var c maps.Counter
	for _, v := range per {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	return c, nil
}

// All returns every counter.
func (ms *Metrics) All() (*maps.MetricTable, error) {
	var t maps.MetricTable
	for d := range maps.DirectionCount {
		for m := range maps.MetricCount {
			c, err := ms.Get(d, m)
			if err != nil {
				return nil, err
			}
			t[d][m] = c
		}
	}
	return &t, nil
}
