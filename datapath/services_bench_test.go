package datapath_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// BenchmarkUpsertServices writes 10k ClusterIP services of 10 backends
// each into an empty node with one UpsertServices, as an agent starting on
// a cluster of that size does, and reports the seconds it took (target:
// at most 2 s).
func BenchmarkUpsertServices(b *testing.B) {
	const services, backends = 10_000, 10
	node := datapathtest.NewNode(b, "node")
	svcs := make([]datapath.Service, services)
	for i := range svcs {
		svcs[i] = datapath.Service{
			Frontend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), 80),
			Protocol: datapath.TCP,
		}
		for j := range backends {
			addr := netip.AddrFrom4([4]byte{10, 100 + byte(j), byte(i >> 8), byte(i)})
			svcs[i].Backends = append(svcs[i].Backends, datapath.Backend{Addr: netip.AddrPortFrom(addr, 8080)})
		}
	}
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		dp := node.NewDatapath(b, datapath.Config{MaxServices: 12500})
		b.StartTimer()
		start := time.Now()
		if _, err := dp.UpsertServices(svcs); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.StopTimer()
		if err := dp.Remove(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/10k-services")
}
