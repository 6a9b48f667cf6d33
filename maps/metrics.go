package maps

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/bpf"
)

// Metric is what the datapath did with a packet; it mirrors enum metric in
// bpf/lib/common.h, in the same order.
type Metric uint32

// The datapath's node-wide counters.
const (
	MetricForwardPeer     Metric = iota // delivered to a local pod with bpf_redirect_peer
	MetricForwardRedirect               // delivered with bpf_redirect to the host device
	MetricToStack                       // handed to the kernel's stack
	MetricARPReply                      // ARP request answered by the datapath
	MetricDropSpoofed                   // source IP or MAC not the endpoint's own
	MetricDropInvalid                   // truncated or malformed frame
	MetricDropUnknownL3                 // ethertype the datapath does not carry
	MetricDropPolicy                    // refused by the ingress policy hook
	MetricForwardFIB                    // sent to another node: bpf_fib_lookup + bpf_redirect
	MetricForwardNeigh                  // sent to another node with bpf_redirect_neigh
	MetricToNetdev                      // left the node through one of its devices
	// MetricCount is the number of metrics (hr_metrics' size).
	MetricCount
)

var metricNames = [MetricCount]string{
	"forward-peer", "forward-redirect", "to-stack", "arp-reply",
	"drop-spoofed", "drop-invalid", "drop-unknown-l3", "drop-policy",
	"forward-fib", "forward-neigh", "to-netdev",
}

// String names m as hrctl prints it: "drop-spoofed".
func (m Metric) String() string {
	if m < MetricCount {
		return metricNames[m]
	}
	return fmt.Sprintf("metric(%d)", uint32(m))
}

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// Metrics is the node-wide counter map.
type Metrics struct {
	m *ebpf.Map
}

// NewMetrics wraps the loaded metrics map (loader.Maps.Metrics).
func NewMetrics(m *ebpf.Map) *Metrics {
	return &Metrics{m: m}
}

// Get returns the counter of one metric, summed over CPUs.
func (ms *Metrics) Get(m Metric) (Counter, error) {
	var per []bpf.HostroutingMetricValue
	if err := ms.m.Lookup(uint32(m), &per); err != nil {
		return Counter{}, fmt.Errorf("metric %s: %w", m, mapErr(err))
	}
	var c Counter
	for _, v := range per {
		c.Packets += v.Packets
		c.Bytes += v.Bytes
	}
	return c, nil
}

// All returns every metric's counter, indexed by Metric.
func (ms *Metrics) All() ([]Counter, error) {
	all := make([]Counter, MetricCount)
	for m := range Metric(MetricCount) {
		c, err := ms.Get(m)
		if err != nil {
			return nil, err
		}
		all[m] = c
	}
	return all, nil
}
