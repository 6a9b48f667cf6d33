// Package metrics exposes a node's datapath to Prometheus: a
// prometheus.Collector that an agent embedding the SDK registers in one
// line,
//
//	prometheus.MustRegister(metrics.NewCollector(dp, metrics.Options{}))
//
// and that `hrctl serve-metrics` serves on its own. Every scrape reads the
// datapath's counters afresh; nothing is cached between scrapes.
//
// The series (counters are totals since the node was loaded):
//
//	hostrouting_forward_count_total{direction,path}    packets the datapath moved (path: redirect_peer,
//	hostrouting_forward_bytes_total{direction,path}    redirect, fib_redirect, redirect_neigh, stack, pass, arp_reply)
//	hostrouting_drop_count_total{direction,reason}     packets it dropped (reason: spoofed, invalid, unknown_l3,
//	hostrouting_drop_bytes_total{direction,reason}     policy, vlan, tail_call, no_backend, nat, nat_no_port,
//	                                                   ct_full, ip_options, router_msg, frag_not_found,
//	                                                   reject: answered with port unreachable instead)
//	hostrouting_translation_count_total{direction,kind}  packets translated (kind: dnat, snat, rev_dnat,
//	hostrouting_translation_bytes_total{direction,kind}  rev_snat), besides their forward or drop
//	hostrouting_bpf_map_pressure{map_name}             how full each map is, 0 to 1
//	hostrouting_bpf_map_entries{map_name}              entries in each map (hash maps counted, arrays full)
//	hostrouting_endpoints                              endpoints on the node
//	hostrouting_services                               service frontends
//	hostrouting_host_routing_info{mode,attach_mode}    1: "BPF" or "Legacy", "tcx" or clsact
//	hostrouting_ct_gc_runs_total, _errors_total         the node's conntrack GC (Datapath.GC, run by an
//	hostrouting_ct_gc_entries_removed_total{table}     agent): passes, failed passes, entries it removed as
//	hostrouting_ct_gc_last_run_timestamp_seconds       expired (conntrack, snat), when it last ran
//	hostrouting_flows_total{table,event}               flows by table class (conntrack_tcp, conntrack_any,
//	                                                   snat_tcp, snat_any) and event: created, established
//	                                                   (moved where floods cannot evict them), refused (the
//	                                                   established table full), failed (dropped)
//	hostrouting_endpoint_packets_total{endpoint,ip,direction}   with Options.Endpoints: per endpoint,
//	hostrouting_endpoint_bytes_total{endpoint,ip,direction}     direction rx (into the pod), tx, drop
//	hostrouting_monitor_lost_events_total              with Options.Monitor: events it lost (reader behind)
//
// Per-endpoint series are off by default: they are 6 per endpoint (a
// node of 100 pods adds 600 series).
package metrics

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/maps"
)

// Options choose the optional series.
type Options struct {
	// Endpoints adds per-endpoint packet and byte counters.
	Endpoints bool
	// Monitor, the agent's event reader (Datapath.OpenMonitor), adds the
	// events it lost.
	Monitor *datapath.Monitor
}

// Collector is a prometheus.Collector of one node's datapath.
type Collector struct {
	dp   *datapath.Datapath
	opts Options
}

// NewCollector returns a collector of dp, which must stay open while the
// collector is registered.
func NewCollector(dp *datapath.Datapath, opts Options) *Collector {
	return &Collector{dp: dp, opts: opts}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("hostrouting_"+name, help, labels, nil)
}

var (
	forwardCount = desc("forward_count_total", "Packets the datapath moved, by program direction and path.", "direction", "path")
	forwardBytes = desc("forward_bytes_total", "Bytes the datapath moved, by program direction and path.", "direction", "path")
	dropCount    = desc("drop_count_total", "Packets the datapath dropped, by program direction and reason.", "direction", "reason")
	dropBytes    = desc("drop_bytes_total", "Bytes the datapath dropped, by program direction and reason.", "direction", "reason")
	xlateCount   = desc("translation_count_total", "Packets the datapath translated, by program direction and kind.", "direction", "kind")
	xlateBytes   = desc("translation_bytes_total", "Bytes the datapath translated, by program direction and kind.", "direction", "kind")
	lostEvents   = desc("monitor_lost_events_total", "Monitor events lost because the reader fell behind.")
	mapPressure  = desc("bpf_map_pressure", "How full a datapath map is, 0 to 1.", "map_name")
	mapEntries   = desc("bpf_map_entries", "Entries in a datapath map (arrays count as full).", "map_name")
	endpoints    = desc("endpoints", "Endpoints on the node.")
	services     = desc("services", "Service frontends on the node.")
	hostRouting  = desc("host_routing_info", "1, labelled with the host routing mode (BPF or Legacy) and attach mode.", "mode", "attach_mode")
	gcRuns       = desc("ct_gc_runs_total", "Passes of the conntrack and NAT garbage collector.")
	gcErrors     = desc("ct_gc_errors_total", "Passes of the conntrack and NAT garbage collector that failed.")
	gcRemoved    = desc("ct_gc_entries_removed_total", "Entries the garbage collector removed as expired, by table.", "table")
	gcLastRun    = desc("ct_gc_last_run_timestamp_seconds", "When the garbage collector's last pass started, Unix time.")
	flows        = desc("flows_total", "Flows of the conntrack and NAT tables, by table class and event.", "table", "event")
	epPackets    = desc("endpoint_packets_total", "Packets of an endpoint: rx into the pod, tx from it, drop.", "endpoint", "ip", "direction")
	epBytes      = desc("endpoint_bytes_total", "Bytes of an endpoint: rx into the pod, tx from it, drop.", "endpoint", "ip", "direction")
)

// paths are the labels of the metrics that move a packet on; every other
// metric is a drop or a translation.
var paths = map[maps.Metric]string{
	maps.MetricForwardPeer: "redirect_peer", maps.MetricForwardRedirect: "redirect",
	maps.MetricForwardFIB: "fib_redirect", maps.MetricForwardNeigh: "redirect_neigh",
	maps.MetricToStack: "stack", maps.MetricPass: "pass", maps.MetricARPReply: "arp_reply",
}

// reason is a drop or translation metric's label: "drop-no-backend" →
// "no_backend", "xlate-rev-dnat" → "rev_dnat".
func reason(m maps.Metric) string {
	name := strings.TrimPrefix(strings.TrimPrefix(m.String(), "drop-"), "xlate-")
	return strings.ReplaceAll(name, "-", "_")
}

func label(s fmt.Stringer) string { return strings.ReplaceAll(s.String(), "-", "_") }

// Describe sends every series' description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{forwardCount, forwardBytes, dropCount, dropBytes, xlateCount, xlateBytes,
		mapPressure, mapEntries, endpoints, services, hostRouting, gcRuns, gcErrors, gcRemoved, gcLastRun, flows} {
		ch <- d
	}
	if c.opts.Endpoints {
		ch <- epPackets
		ch <- epBytes
	}
	if c.opts.Monitor != nil {
		ch <- lostEvents
	}
}

// Collect reads the datapath and sends its series. A part it cannot read
// is sent as an invalid metric, which fails the scrape with the reason.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st, err := c.dp.Status()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(hostRouting, err)
		return
	}
	for dir := range maps.DirectionCount {
		for m := range maps.MetricCount {
			v := st.Metrics[dir][m]
			if path, ok := paths[m]; ok {
				counter(forwardCount, v.Packets, label(dir), path)
				counter(forwardBytes, v.Bytes, label(dir), path)
			} else if m.IsTranslation() {
				counter(xlateCount, v.Packets, label(dir), reason(m))
				counter(xlateBytes, v.Bytes, label(dir), reason(m))
			} else {
				counter(dropCount, v.Packets, label(dir), reason(m))
				counter(dropBytes, v.Bytes, label(dir), reason(m))
			}
		}
	}
	for _, s := range st.Maps {
		gauge(mapPressure, s.Pressure(), s.Name)
		gauge(mapEntries, float64(s.Entries), s.Name)
	}
	gauge(endpoints, float64(st.Endpoints))
	gauge(services, float64(st.Services))
	gauge(hostRouting, 1, st.HostRouting, st.AttachMode)
	counter(gcRuns, st.GC.Runs)
	counter(gcErrors, st.GC.Errors)
	counter(gcRemoved, st.GC.CTRemoved, "conntrack")
	counter(gcRemoved, st.GC.SNATRemoved, "snat")
	for class, f := range st.Flows {
		table := label(maps.FlowClass(class))
		counter(flows, f.Created, table, "created")
		counter(flows, f.Promoted, table, "established")
		counter(flows, f.Refused, table, "refused")
		counter(flows, f.Failed, table, "failed")
	}
	if !st.GC.LastRun.IsZero() {
		gauge(gcLastRun, float64(st.GC.LastRun.UnixNano())/1e9)
	}
	if c.opts.Endpoints {
		c.collectEndpoints(ch, counter)
	}
	if c.opts.Monitor != nil {
		counter(lostEvents, c.opts.Monitor.Lost())
	}
}

func (c *Collector) collectEndpoints(ch chan<- prometheus.Metric, counter func(*prometheus.Desc, uint64, ...string)) {
	eps, err := c.dp.Endpoints()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(epPackets, err)
		return
	}
	for _, ep := range eps {
		st, err := c.dp.EndpointStats(ep.IP)
		if err != nil {
			continue // removed meanwhile
		}
		id, ip := strconv.Itoa(int(ep.ID)), ep.IP.String()
		for _, v := range []struct {
			dir            string
			packets, bytes uint64
		}{{"rx", st.ToPackets, st.ToBytes}, {"tx", st.FromPackets, st.FromBytes}, {"drop", st.DropPackets, st.DropBytes}} {
			counter(epPackets, v.packets, id, ip, v.dir)
			counter(epBytes, v.bytes, id, ip, v.dir)
		}
	}
}
