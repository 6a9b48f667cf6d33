package metrics_test

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/metrics"
	"github.com/hostrouting/hostrouting/nat"
)

// An agent serves its node's datapath counters next to its own metrics;
// its conntrack garbage collector's passes are among them (the GC
// records them in the node).
func ExampleNewCollector() {
	dp, err := datapath.Open(datapath.Location{PinPath: "/sys/fs/bpf/hostrouting"})
	if err != nil {
		panic(err)
	}
	defer dp.Close()
	gc, err := dp.GC(nat.Options{})
	if err != nil {
		panic(err)
	}
	stop := gc.Start(30 * time.Second)
	defer stop()

	prometheus.MustRegister(metrics.NewCollector(dp, metrics.Options{}))
	http.Handle("/metrics", promhttp.Handler())
	http.ListenAndServe("127.0.0.1:9962", nil)
}
