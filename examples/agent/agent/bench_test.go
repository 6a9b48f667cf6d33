package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// Scale of the benchmarks: the 1000 Services of 10 endpoints.
const (
	benchServices  = 1000
	benchEndpoints = 10
)

// benchVIP is the cluster IP of benchmark service i, port 80.
func benchVIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(1 + i/250), byte(1 + i%250)}), 80)
}

// benchBackend is endpoint j of generation g of benchmark service i: an
// address in the pod CIDRs of other nodes (nothing answers there).
func benchBackend(i, j, g int) netip.Addr {
	n := (i*benchEndpoints+j)*16 + g%16
	return netip.AddrFrom4([4]byte{10, byte(64 + n>>16), byte(n >> 8), byte(n)})
}

// createBenchServices writes the benchmark's Services and EndpointSlices,
// several at a time, and returns the slices as written.
func (e *env) createBenchServices(b *testing.B) []*discoveryv1.EndpointSlice {
	b.Helper()
	start := time.Now()
	out := make([]*discoveryv1.EndpointSlice, benchServices)
	var wg sync.WaitGroup
	errs := make(chan error, benchServices)
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				name := fmt.Sprintf("svc-%04d", i)
				vip := benchVIP(i)
				eps := make([]discoveryv1.Endpoint, benchEndpoints)
				for j := range eps {
					eps[j] = endpoint(benchBackend(i, j, 0))
				}
				s := service(name, vip.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080))
				if _, err := e.client.CoreV1().Services(s.Namespace).Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
					errs <- err
					continue
				}
				es := endpointSlice(name, name+"-1", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}, eps...)
				es, err := e.client.DiscoveryV1().EndpointSlices(es.Namespace).Create(context.Background(), es, metav1.CreateOptions{})
				if err != nil {
					errs <- err
					continue
				}
				out[i] = es
			}
		})
	}
	for i := range benchServices {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("wrote %d Services and EndpointSlices in %s", benchServices, time.Since(start).Round(time.Millisecond))
	return out
}

// tookRE finds how long the agent's first sync programmed the datapath.
var tookRE = regexp.MustCompile(`msg="datapath in line with the API" .* took=(\S+)`)

// BenchmarkStartup measures how long an agent takes from its start until
// the datapath has all of 1000 Services × 10 endpoints that are in the API
// before it starts ("to-synced"), and of that the programming of the
// datapath after the informers' initial list ("programming"): on a fresh
// node, and restarted on a node that has them all already (adoption,
// nothing to change).
//
//	go test ./examples/agent/agent -run XXX -bench Startup -benchtime 5x -timeout 20m
func BenchmarkStartup(b *testing.B) {
	e := newEnv(b, 1)
	n := e.cluster.Nodes[0]
	e.createBenchServices(b)
	want := benchServices + 1 // and kubernetes

	run := func(b *testing.B, pinPath string) (total, programming time.Duration) {
		var logs lockedBuffer
		cfg := e.agentConfig(b, n, pinPath)
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		startAt := time.Now()
		r := start(b, cfg)
		total = time.Since(startAt)
		r.stop(b)
		m := tookRE.FindStringSubmatch(logs.String())
		if m == nil {
			b.Fatalf("no sync line in the log:\n%s", logs.String())
		}
		if programming, _ = time.ParseDuration(m[1]); programming == 0 {
			programming = time.Millisecond / 2 // logged rounded to 0s
		}
		dp, err := datapath.Open(datapath.Location{PinPath: pinPath, Netns: n.Netns})
		if err != nil {
			b.Fatal(err)
		}
		defer dp.Close()
		if svcs, err := dp.Services(); err != nil || len(svcs) != want {
			b.Fatalf("%d services after the start, want %d (%v)", len(svcs), want, err)
		}
		return total, programming
	}
	report := func(b *testing.B, totals, programming []time.Duration) {
		slices.Sort(totals)
		slices.Sort(programming)
		b.ReportMetric(float64(totals[len(totals)/2].Milliseconds()), "ms-to-synced(p50)")
		b.ReportMetric(float64(totals[len(totals)-1].Milliseconds()), "ms-to-synced(max)")
		b.ReportMetric(float64(programming[len(programming)/2].Microseconds())/1000, "ms-programming(p50)")
		b.Logf("%d starts: to synced %v, programming %v", len(totals), totals, programming)
	}

	b.Run("fresh", func(b *testing.B) {
		var totals, programming []time.Duration
		for b.Loop() {
			pinPath := datapathtest.PinPath(b)
			total, prog := run(b, pinPath)
			if err := datapath.Cleanup(datapath.Location{PinPath: pinPath, Netns: n.Netns}); err != nil {
				b.Fatal(err)
			}
			totals, programming = append(totals, total), append(programming, prog)
		}
		report(b, totals, programming)
	})
	b.Run("restart", func(b *testing.B) {
		pinPath := newPinPath(b, n)
		run(b, pinPath)
		var totals, programming []time.Duration
		for b.Loop() {
			total, prog := run(b, pinPath)
			totals, programming = append(totals, total), append(programming, prog)
		}
		report(b, totals, programming)
	})
}

// BenchmarkEndpointSliceLatency measures, with 1000 Services × 10
// endpoints programmed, how long one EndpointSlice change takes from the
// API write (the Update call) until the datapath's service map has the new
// backend, one change at a time: each replaces one endpoint of a service.
// The map is read directly (hr_lb4_services, one lookup per slot, every
// 0.5 ms).
//
//	go test ./examples/agent/agent -run XXX -bench EndpointSliceLatency -benchtime 300x -timeout 20m
func BenchmarkEndpointSliceLatency(b *testing.B) {
	e := newEnv(b, 1)
	n := e.cluster.Nodes[0]
	slicesOf := e.createBenchServices(b)
	pinPath := newPinPath(b, n)
	start(b, e.agentConfig(b, n, pinPath))
	inst, err := instance.Open(pinPath)
	if err != nil {
		b.Fatal(err)
	}
	defer inst.Close()
	svcMap := tables.NewServices(tables.ServiceMaps{Services: inst.Maps.Services, Backends: inst.Maps.Backends, On: inst.Maps.ServicesOn})
	backendIDs := func(i int) []uint32 {
		entry, err := svcMap.Entry(maps.Frontend{Addr: benchVIP(i), Proto: maps.TCP})
		if err != nil {
			return nil
		}
		return entry.Backends
	}

	var lat []time.Duration
	i := 0
	for b.Loop() {
		s := i % benchServices
		gen := i/benchServices + 1
		before := backendIDs(s)
		es := slicesOf[s].DeepCopy()
		es.Endpoints[0] = endpoint(benchBackend(s, 0, gen))
		t0 := time.Now()
		updated, err := e.client.DiscoveryV1().EndpointSlices(es.Namespace).Update(context.Background(), es, metav1.UpdateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if ids := backendIDs(s); len(ids) == benchEndpoints && !slices.Equal(ids, before) {
				break
			}
			if time.Since(t0) > 10*time.Second {
				b.Fatalf("service %d: no change after 10s", s)
			}
			time.Sleep(500 * time.Microsecond)
		}
		lat = append(lat, time.Since(t0))
		slicesOf[s] = updated
		i++
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(q(0.5).Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(q(0.99).Microseconds())/1000, "ms-p99")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "ms-max")
	b.Logf("%d changes: p50 %s, p90 %s, p99 %s, max %s", len(lat), q(0.5), q(0.9), q(0.99), lat[len(lat)-1])
}
