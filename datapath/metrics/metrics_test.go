package metrics_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/datapath/metrics"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// serve registers c in a registry of its own, served on loopback until t
// ends, and returns a scrape function.
func serve(t *testing.T, c prometheus.Collector) func() (string, int) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(srv.Close)
	return func() (string, int) {
		t.Helper()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b), resp.StatusCode
	}
}

// TestCollector scrapes a node's collector over HTTP after pod-to-pod
// pings: every forward and drop counter equals the datapath's own, and the
// map pressure, endpoint, GC and per-endpoint series are there with the
// node's values.
func TestCollector(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.10"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.11"))
	dp := node.NewDatapath(t, datapath.Config{MaxEndpoints: 64})
	a.AddEndpoint(t, dp)
	epB := b.AddEndpoint(t, dp)
	gc, err := dp.GC(nat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Collect(); err != nil { // an agent's GC pass, recorded in the node
		t.Fatal(err)
	}
	mon, err := dp.OpenMonitor()
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	scrape := serve(t, metrics.NewCollector(dp, metrics.Options{Endpoints: true, Monitor: mon}))
	if n, err := a.Ping(b.IP, 3, 5*time.Second); err != nil || n != 3 {
		t.Fatalf("ping a → b: %d of 3, %v", n, err)
	}

	body, code := scrape()
	if code != http.StatusOK {
		t.Fatalf("scrape: HTTP %d\n%s", code, body)
	}
	table, err := dp.Metrics() // nothing moved since the scrape: the pods are quiet
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"hostrouting_endpoints 2",
		`hostrouting_bpf_map_entries{map_name="hr_endpoints"} 2`,
		fmt.Sprintf(`hostrouting_bpf_map_pressure{map_name="hr_endpoints"} %g`, 2.0/64),
		"hostrouting_ct_gc_runs_total 1",
		`hostrouting_ct_gc_entries_removed_total{table="conntrack"} 0`,
		"hostrouting_ct_gc_last_run_timestamp_seconds ",
		`hostrouting_translation_count_total{direction="from_container",kind="dnat"} 0`,
		"hostrouting_monitor_lost_events_total 0",
		`hostrouting_host_routing_info{attach_mode=`,
	}
	table.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
		dir := strings.ReplaceAll(d.String(), "-", "_")
		switch m {
		case maps.MetricForwardPeer:
			want = append(want, fmt.Sprintf(`hostrouting_forward_count_total{direction="%s",path="redirect_peer"} %d`, dir, c.Packets),
				fmt.Sprintf(`hostrouting_forward_bytes_total{direction="%s",path="redirect_peer"} %d`, dir, c.Bytes))
		case maps.MetricToStack:
			want = append(want, fmt.Sprintf(`hostrouting_forward_count_total{direction="%s",path="stack"} %d`, dir, c.Packets))
		}
	})
	if table.Total(maps.MetricForwardPeer).Packets < 6 {
		t.Errorf("forward-peer counted %d packets, want the 6 pings at least", table.Total(maps.MetricForwardPeer).Packets)
	}
	stB, err := dp.EndpointStats(b.IP)
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, fmt.Sprintf(`hostrouting_endpoint_packets_total{direction="rx",endpoint="%d",ip="%s"} %d`, epB.ID, b.IP, stB.ToPackets),
		`hostrouting_drop_count_total{direction="from_container",reason="spoofed"} 0`)
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("scrape lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", body)
	}

	// A closed datapath fails the scrape, with the reason.
	dp.Close()
	if body, code := scrape(); code != http.StatusInternalServerError || !strings.Contains(body, "closed") {
		t.Errorf("scrape of a closed datapath: HTTP %d:\n%s\nwant 500 naming the closed datapath", code, body)
	}
}
