package maps

import (
	"fmt"
	"strings"
)

// Direction is where the datapath saw a packet: the program that decided
// its outcome. It mirrors enum direction in bpf/lib/common.h.
type Direction uint32

// The datapath's directions.
const (
	FromContainer Direction = iota // tc ingress of a pod's host-side device
	ToContainer                    // tc egress of a pod's host-side device
	FromNetdev                     // tc ingress of a node device
	ToNetdev                       // tc egress of a node device
	// DirectionCount is the number of directions.
	DirectionCount
)

var directionNames = [DirectionCount]string{"from-container", "to-container", "from-netdev", "to-netdev"}

// String names d as Cilium names its programs: "from-container".
func (d Direction) String() string {
	if d < DirectionCount {
		return directionNames[d]
	}
	return fmt.Sprintf("direction(%d)", uint32(d))
}

// Metric is what the datapath did with a packet; it mirrors enum metric in
// bpf/lib/common.h, in the same order. The numbers are stable.
type Metric uint32

// The datapath's outcomes, and its translations. Every packet a program
// sees is counted under exactly one outcome, and once more under each
// translation it undergoes (IsTranslation).
const (
	MetricForwardPeer      Metric = iota // delivered to a local pod with bpf_redirect_peer
	MetricForwardRedirect                // delivered with bpf_redirect to the host device
	MetricToStack                        // handed to the kernel's stack
	MetricARPReply                       // ARP request answered by the datapath
	MetricDropSpoofed                    // source IP or MAC not the endpoint's own
	MetricDropInvalid                    // truncated or malformed frame
	MetricDropUnknownL3                  // ethertype the datapath does not carry
	MetricDropPolicy                     // refused by the endpoint's ingress policy
	MetricForwardFIB                     // to another node: bpf_fib_lookup + bpf_redirect
	MetricForwardNeigh                   // to another node: bpf_fib_lookup + bpf_redirect_neigh
	MetricPass                           // let through where it was going (into the pod, onto the wire)
	MetricDropVLAN                       // VLAN-tagged frame from a pod
	MetricDropTailCall                   // a datapath stage was missing (during a reload)
	MetricDropNoBackend                  // to a service frontend without backends
	MetricDropNAT                        // a translation failed (packet rewrite)
	MetricDropNATNoPort                  // no free port to translate a new flow's source to
	MetricXlateDNAT                      // translated to a service backend (destination NAT)
	MetricXlateSNAT                      // source translated to the node's address (masquerade, NodePort to another node)
	MetricXlateRevDNAT                   // a service reply translated back to come from the frontend
	MetricXlateRevSNAT                   // a masqueraded flow's reply translated back to its pod
	MetricDropCTFull                     // no room for a new flow's conntrack or NAT entries
	MetricDropIPOptions                  // a pod's packet with IP options that would leave untranslated
	MetricDropRouterMsg                  // a router advertisement or redirect from a pod
	MetricReject                         // to a service without backends (or none): answered with port unreachable
	MetricDropFragNotFound               // a fragment to translate whose first fragment was not seen
	MetricDropSourceRange                // to a frontend with source ranges, from a source outside them
	// MetricCount is the number of metrics.
	MetricCount
)

var metricNames = [MetricCount]string{
	"forward-peer", "forward-redirect", "to-stack", "arp-reply",
	"drop-spoofed", "drop-invalid", "drop-unknown-l3", "drop-policy",
	"forward-fib", "forward-neigh", "pass", "drop-vlan", "drop-tail-call",
	"drop-no-backend", "drop-nat", "drop-nat-no-port",
	"xlate-dnat", "xlate-snat", "xlate-rev-dnat", "xlate-rev-snat",
	"drop-ct-full", "drop-ip-options", "drop-router-msg", "reject",
	"drop-frag-not-found", "drop-source-range",
}

// String names m as hrctl prints it: "drop-spoofed".
func (m Metric) String() string {
	if m < MetricCount {
		return metricNames[m]
	}
	return fmt.Sprintf("metric(%d)", uint32(m))
}

// IsDrop tells whether m counts packets that went nowhere: dropped, or
// answered with a rejection in their place.
func (m Metric) IsDrop() bool {
	return m < MetricCount && (strings.HasPrefix(metricNames[m], "drop-") || m == MetricReject)
}

// IsTranslation tells whether m counts translations rather than outcomes.
func (m Metric) IsTranslation() bool {
	return m < MetricCount && strings.HasPrefix(metricNames[m], "xlate-")
}

// Counter is a packet and byte count.
type Counter struct {
	Packets, Bytes uint64
}

// Add returns c + o.
func (c Counter) Add(o Counter) Counter {
	return Counter{c.Packets + o.Packets, c.Bytes + o.Bytes}
}

// MetricTable holds every counter by direction and metric.
type MetricTable [DirectionCount][MetricCount]Counter

// Total returns metric m summed over directions.
func (t *MetricTable) Total(m Metric) Counter {
	var c Counter
	for d := range DirectionCount {
		c = c.Add(t[d][m])
	}
	return c
}

// Sub returns t − o, counter by counter: what moved between two readings.
func (t *MetricTable) Sub(o *MetricTable) *MetricTable {
	var d MetricTable
	for dir := range DirectionCount {
		for m := range MetricCount {
			d[dir][m] = Counter{t[dir][m].Packets - o[dir][m].Packets, t[dir][m].Bytes - o[dir][m].Bytes}
		}
	}
	return &d
}

// Each calls fn for every counter that is not zero, by direction, then
// metric.
func (t *MetricTable) Each(fn func(Direction, Metric, Counter)) {
	for d := range DirectionCount {
		for m := range MetricCount {
			if c := t[d][m]; c != (Counter{}) {
				fn(d, m, c)
			}
		}
	}
}
