package nat_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/nat"
)

// A node agent collects its node's translation tables every 30 seconds,
// until it stops, and flushes a pod's entries when the pod goes.
func ExampleGC() {
	node, err := instance.Open(loader.DefaultPinPath)
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()

	gc := nat.NewGC(tables.NewConntrack(node.Maps.ConntrackTables()...), tables.NewSNAT(node.Maps.SNATTables()...), nat.Options{
		// Idle established TCP flows go after an hour, not six.
		Timeouts: nat.Timeouts{TCPEstablished: time.Hour},
		OnPass: func(pass nat.Stats) {
			if pass.LastError != nil {
				log.Printf("conntrack GC: %v", pass.LastError)
			}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go gc.Run(ctx, 30*time.Second)

	// ... a pod is deleted:
	// gc.FlushEndpoint(netip.MustParseAddr("10.0.0.85"))

	st := gc.Stats()
	fmt.Printf("%d passes, %d conntrack and %d NAT entries removed\n", st.Runs, st.Conntrack.Removed, st.SNAT.Removed)
}

// One pass, as a command that cleans up a node once would make it.
func ExampleGC_Collect() {
	node, err := instance.Open(loader.DefaultPinPath)
	if err != nil {
		log.Fatal(err)
	}
	defer node.Close()
	gc := nat.NewGC(tables.NewConntrack(node.Maps.ConntrackTables()...), tables.NewSNAT(node.Maps.SNATTables()...), nat.Options{})
	pass, err := gc.Collect()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("scanned %d, removed %d conntrack entries in %s\n", pass.Conntrack.Scanned, pass.Conntrack.Removed, pass.LastDuration)
}

// The Maglev table of a service's backends, by their addresses: each
// slot names the backend a flow whose hash falls there goes to.
func ExampleTable() {
	backends := []string{"10.0.1.5:8080/TCP", "10.0.2.7:8080/TCP", "10.0.3.9:8080/TCP"}
	table := nat.Table(backends, 251) // M = 251 here; DefaultTableSize for services
	slots := make([]int, len(backends))
	for _, b := range table {
		slots[b]++
	}
	fmt.Println(len(table), slots)
	// Output: 251 [84 84 83]
}

// Tables with another size and seed, as Cilium's bpf-lb-maglev-table-size
// and bpf-lb-maglev-hash-seed set them, and weights.
func ExampleMaglev_WeightedTable() {
	g, err := nat.NewMaglev(1021, "JLfvgnHc2kaSUFaI")
	if err != nil {
		log.Fatal(err)
	}
	backends := []string{"10.0.1.5:8080/TCP", "10.0.2.7:8080/TCP"}
	table, err := g.WeightedTable(backends, []uint32{3, 1})
	if err != nil {
		log.Fatal(err)
	}
	slots := make([]int, len(backends))
	for _, b := range table {
		slots[b]++
	}
	fmt.Println(slots)
	// Output: [766 255]
}
