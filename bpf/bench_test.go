package bpf_test

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// A BPF_PROG_TEST_RUN with a repeat count runs the program again and again
// on the same skb, so a program that rewrites the frame sees its own output
// from the second run on: after local delivery the source MAC is the node
// MAC, which the anti-spoofing check drops, and every run takes one from the
// TTL. To measure the delivery path and nothing else, the benchmarks give
// pod B MACs that make the rewrite a no-op for the checks (B's node MAC is
// A's MAC and the other way round), start at TTL 255 and run at most 254
// times per test run. Every run then takes the same branches as a real
// delivery; each benchmark checks the counters afterwards to prove it.
const maxForwardsPerRun = 254

// benchPodB is pod B with its MACs swapped with pod A's, see above.
var benchPodB = pod{
	ip:      podB.ip,
	mac:     podA.nodeMAC,
	ifindex: podB.ifindex,
	nodeMAC: podA.mac,
	id:      podB.id,
}

// benchmarkProg runs prog b.N times on frame, at most perRun times per test
// run, checks that every run returned want, and reports the time the kernel
// measured inside the program as ns/op (the syscalls around it are left
// out). frame arrives on loopback, pod A's device (see loIfindex).
func benchmarkProg(b *testing.B, prog *ebpf.Program, frame []byte, perRun int, want uint32) {
	b.Helper()
	var total time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(b.N-done, perRun)
		verdict, perOp, err := prog.Benchmark(frame, n, nil)
		if err != nil {
			b.Fatal(err)
		}
		if verdict != want {
			b.Fatalf("verdict %d, want %d", verdict, want)
		}
		total += perOp * time.Duration(n)
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
}

// checkOnly fails b unless m is the only metric that moved, by at least
// b.N packets (a test run interrupted by a signal is run again, so more is
// possible).
func checkOnly(b *testing.B, d *datapath, m maps.Metric) {
	b.Helper()
	for got, c := range d.metrics() {
		if got != m {
			b.Errorf("metric %s moved by %d packets: the benchmark left the measured path", got, c.Packets)
		} else if c.Packets < uint64(b.N) {
			b.Errorf("metric %s = %d packets, want at least %d", got, c.Packets, b.N)
		}
	}
}

// benchmarkDelivery measures from_container delivering A's packets to B
// under cfg.
func benchmarkDelivery(b *testing.B, cfg bpf.HostroutingConfig, counted maps.Metric) {
	d := loadDatapath(b, cfg)
	d.addPods(podA, benchPodB)
	pkt := ipv4From(podA, benchPodB.ip)
	pkt.ttl = maxForwardsPerRun + 1
	benchmarkProg(b, d.objs.FromContainer, pkt.frame(), maxForwardsPerRun, tcActRedirect)
	checkOnly(b, d, counted)
}

// BenchmarkFromContainerLocalDelivery measures pod-to-pod delivery with
// bpf_redirect_peer.
func BenchmarkFromContainerLocalDelivery(b *testing.B) {
	benchmarkDelivery(b, configPeer, maps.MetricForwardPeer)
}

// BenchmarkFromContainerLocalDeliveryRedirect measures pod-to-pod delivery
// with the bpf_redirect fallback.
func BenchmarkFromContainerLocalDeliveryRedirect(b *testing.B) {
	benchmarkDelivery(b, configRedirect, maps.MetricForwardRedirect)
}

// BenchmarkFromContainerToStack measures a pod's packet to another node,
// left to the kernel's stack after the source checks.
func BenchmarkFromContainerToStack(b *testing.B) {
	d := loadDatapath(b, configPeer)
	d.addPods(podA, podB)
	// Nothing is rewritten on the way to the stack: no limit per run.
	benchmarkProg(b, d.objs.FromContainer, ipv4From(podA, remoteIP).frame(), b.N, tcActOK)
	checkOnly(b, d, maps.MetricToStack)
}

// BenchmarkToContainer measures the to-container step on a device's egress.
func BenchmarkToContainer(b *testing.B) {
	d := loadDatapath(b, configRedirect)
	a, pb := podA.withIfindex(10), podB.withIfindex(loIfindex)
	d.addPods(a, pb)
	frame := ipv4From(a, pb.ip).forwarded(pb).frame()
	benchmarkProg(b, d.objs.ToContainer, frame, b.N, tcActOK)
	if got := d.endpointStats(pb.ifindex).ToPackets; got < uint64(b.N) {
		b.Errorf("pod B received %d packets, want at least %d", got, b.N)
	}
}
