package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/bpf"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
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
	benchmarkProgIn(b, nil, prog, frame, perRun, want)
}

// benchmarkProgIn is benchmarkProg with every test run made from a thread
// inside node's network namespace (nil: the caller's), for programs whose
// helpers read the namespace (bpf_fib_lookup). frame arrives on that
// namespace's loopback.
func benchmarkProgIn(b *testing.B, node *datapathtest.Node, prog *ebpf.Program, frame []byte, perRun int, want uint32) {
	b.Helper()
	do := func(fn func() error) error { return fn() }
	if node != nil {
		do = node.Do
	}
	var total time.Duration
	b.ResetTimer()
	err := do(func() error {
		for done := 0; done < b.N; {
			n := min(b.N-done, perRun)
			verdict, perOp, err := prog.Benchmark(frame, n, nil)
			if err != nil {
				return err
			}
			if verdict != want {
				return fmt.Errorf("verdict %d, want %d", verdict, want)
			}
			total += perOp * time.Duration(n)
			done += n
		}
		return nil
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
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

// BenchmarkFromNetdevLocalDelivery measures delivery of another node's
// packet to a local pod with bpf_redirect_peer. The frame is for
// loopback's MAC (PACKET_HOST, see netdev_test.go); the kernel classifies
// it once per test run, so the MAC rewrite does not change the path.
func BenchmarkFromNetdevLocalDelivery(b *testing.B) {
	benchmarkNetdevDelivery(b, configPeer, maps.MetricForwardPeer)
}

// BenchmarkFromNetdevLocalDeliveryRedirect is
// BenchmarkFromNetdevLocalDelivery with the bpf_redirect fallback.
func BenchmarkFromNetdevLocalDeliveryRedirect(b *testing.B) {
	benchmarkNetdevDelivery(b, configRedirect, maps.MetricForwardRedirect)
}

func benchmarkNetdevDelivery(b *testing.B, cfg bpf.HostroutingConfig, counted maps.Metric) {
	d := loadDatapath(b, cfg)
	d.addPods(netdevPods...)
	pkt := fromNetwork(podB.ip)
	pkt.ttl = maxForwardsPerRun + 1
	benchmarkProg(b, d.objs.FromNetdev, pkt.frame(), maxForwardsPerRun, tcActRedirect)
	checkOnly(b, d, counted)
}

// BenchmarkFromNetdevToStack measures the node's device passing a packet
// that is not for a local pod to the stack.
func BenchmarkFromNetdevToStack(b *testing.B) {
	d := loadDatapath(b, configPeer)
	d.addPods(netdevPods...)
	benchmarkProg(b, d.objs.FromNetdev, fromNetwork(netip.MustParseAddr("172.18.0.2")).frame(), b.N, tcActOK)
	checkOnly(b, d, maps.MetricToStack)
}

// BenchmarkToNetdev measures the egress counter of the node's device.
func BenchmarkToNetdev(b *testing.B) {
	d := loadDatapath(b, configPeer)
	benchmarkProg(b, d.objs.ToNetdev, ipv4From(podA, remoteIP).frame(), b.N, tcActOK)
	checkOnly(b, d, maps.MetricPass)
}

// benchmarkFIB measures from_container forwarding a pod's packet to dst in
// the FIB node (see newFIBNode) under cfg. The pod sits on the node's
// loopback, the device a test run without a context arrives on. The pod's
// MAC is eth0's, so that the rewritten frame passes the source check again
// on the next run of the repeat loop, and the TTL starts at 255 (see
// maxForwardsPerRun): every run takes the same path.
func benchmarkFIB(b *testing.B, cfg bpf.HostroutingConfig, dst netip.Addr, counted maps.Metric) {
	f := newFIBNode(b)
	p := pod{ip: podA.ip, mac: eth0MAC, ifindex: f.ifindex["lo"], nodeMAC: podA.nodeMAC, id: podA.id}
	d := loadDatapath(b, cfg)
	d.addPods(p, podB)
	pkt := ipv4From(p, dst)
	pkt.ttl = maxForwardsPerRun + 1
	benchmarkProgIn(b, f.node, d.objs.FromContainer, pkt.frame(), maxForwardsPerRun, tcActRedirect)
	checkOnly(b, d, counted)
}

// BenchmarkFromContainerFIBRedirect measures a pod's packet to another
// node's pod: bpf_fib_lookup with a resolved next hop, then bpf_redirect.
func BenchmarkFromContainerFIBRedirect(b *testing.B) {
	benchmarkFIB(b, fibConfig(1), dstGateway, maps.MetricForwardFIB)
}

// BenchmarkFromContainerFIBRedirectNeigh measures the same with the next
// hop unresolved: bpf_fib_lookup, then bpf_redirect_neigh.
func BenchmarkFromContainerFIBRedirectNeigh(b *testing.B) {
	benchmarkFIB(b, fibConfig(1), dstNoNeighbour, maps.MetricForwardNeigh)
}
