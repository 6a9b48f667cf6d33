package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
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

// benchPodB is pod B with its MACs swapped with pod A's, see above. Pod
// A's node MAC is loopback's (00:00:00:00:00:00), so the first frame, for
// it, is PACKET_HOST on loopback; the kernel classifies a test run's frame
// once, before the repeats.
var benchPodB = pod{
	ip:      podB.ip,
	mac:     podA.nodeMAC,
	ifindex: podB.ifindex,
	nodeMAC: podA.mac,
	id:      podB.id,
}

// emptyProgram returns the cheapest tc program there is: TC_ACT_OK and
// nothing else. Its cost per run is what a test run costs around any
// program: the benchmarks give their own as a multiple of it (x-empty).
func emptyProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	datapathtest.RequireRoot(tb)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "empty",
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// benchRun is what a benchmark measures: prog on frame, at most perRun
// times per test run, each run returning want.
type benchRun struct {
	prog   *ebpf.Program
	frame  []byte
	perRun int
	want   uint32
	node   *datapathtest.Node // test runs from a thread in its namespace; nil: the caller's
	// empty, when set, is run on the same frame as often, interleaved
	// (a test run of each in turn), and the benchmark reports its own
	// time as a multiple of empty's: x-empty.
	empty *ebpf.Program
	// direct, when set, is the same path without the feature measured
	// (a packet to the backend's own address instead of a frontend, say),
	// run interleaved as empty is: the benchmark reports x-direct.
	direct *benchTarget
}

// benchTarget is a program and the frame it runs on, and the verdict it
// must return.
type benchTarget struct {
	prog  *ebpf.Program
	frame []byte
	want  uint32
}

// benchmarkProg runs prog b.N times on frame, at most perRun times per test
// run, checks that every run returned want, and reports the time the kernel
// measured inside the program as ns/op (the syscalls around it are left
// out). frame arrives on loopback, pod A's device (see loIfindex).
func benchmarkProg(b *testing.B, prog *ebpf.Program, frame []byte, perRun int, want uint32) {
	b.Helper()
	benchRun{prog: prog, frame: frame, perRun: perRun, want: want}.run(b)
}

// benchmarkVsEmpty is benchmarkProg with the empty program measured
// alongside: it reports x-empty too.
func benchmarkVsEmpty(b *testing.B, prog *ebpf.Program, frame []byte, perRun int, want uint32) {
	b.Helper()
	benchRun{prog: prog, frame: frame, perRun: perRun, want: want, empty: emptyProgram(b)}.run(b)
}

// benchmarkProgIn is benchmarkProg with every test run made from a thread
// inside node's network namespace, for programs whose helpers read the
// namespace (bpf_fib_lookup). frame arrives on that namespace's loopback.
func benchmarkProgIn(b *testing.B, node *datapathtest.Node, prog *ebpf.Program, frame []byte, perRun int, want uint32) {
	b.Helper()
	benchRun{prog: prog, frame: frame, perRun: perRun, want: want, node: node}.run(b)
}

// run measures r as benchmarkProg describes. The kernel reports each test
// run's time per repeat in whole nanoseconds.
func (r benchRun) run(b *testing.B) {
	b.Helper()
	do := func(fn func() error) error { return fn() }
	if r.node != nil {
		do = r.node.Do
	}
	var total, empty, direct time.Duration
	b.ResetTimer()
	err := do(func() error {
		for done := 0; done < b.N; {
			n := min(b.N-done, r.perRun)
			t, err := measureFrame(r.prog, r.frame, n, r.want)
			if err != nil {
				return err
			}
			total += t
			if r.empty != nil {
				t, err := measureFrame(r.empty, r.frame, n, tcActOK)
				if err != nil {
					return err
				}
				empty += t
			}
			if r.direct != nil {
				t, err := measureFrame(r.direct.prog, r.direct.frame, n, r.direct.want)
				if err != nil {
					return err
				}
				direct += t
			}
			done += n
		}
		return nil
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
	for _, base := range []struct {
		name string
		t    time.Duration
		set  bool
	}{{"x-empty", empty, r.empty != nil}, {"x-direct", direct, r.direct != nil}} {
		if !base.set {
			continue
		}
		if base.t <= 0 {
			b.Fatalf("the %s baseline took %v for %d runs", base.name, base.t, b.N)
		}
		b.ReportMetric(float64(total)/float64(base.t), base.name)
	}
}

// measureFrame runs prog n times on frame and returns the time the kernel
// measured, checking the verdict.
func measureFrame(prog *ebpf.Program, frame []byte, n int, want uint32) (time.Duration, error) {
	verdict, perOp, err := prog.Benchmark(frame, n, nil)
	if err != nil {
		return 0, err
	}
	if verdict != want {
		return 0, fmt.Errorf("%s: verdict %d, want %d", prog, verdict, want)
	}
	return perOp * time.Duration(n), nil
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

// BenchmarkEmpty measures the empty program (emptyProgram): the floor of
// every other benchmark, and what x-empty divides by.
func BenchmarkEmpty(b *testing.B) {
	benchmarkProg(b, emptyProgram(b), ipv4From(podA, benchPodB.ip).frame(), b.N, tcActOK)
}

// benchmarkDelivery measures from_container of d delivering A's packets to
// pb, pod B as registered in d, and checks the path was counted.
func benchmarkDelivery(b *testing.B, d *datapath, pb pod, counted maps.Metric) {
	pkt := ipv4From(podA, pb.ip)
	pkt.ttl = maxForwardsPerRun + 1
	benchmarkVsEmpty(b, d.objs.FromContainer, pkt.frame(), maxForwardsPerRun, tcActRedirect)
	checkOnly(b, d, counted)
	if counted == maps.MetricForwardPeer {
		if got := d.endpointStats(pb.ifindex).ToPackets; got < uint64(b.N) {
			b.Errorf("pod B received %d packets, want at least %d", got, b.N)
		}
	}
}

// BenchmarkFromContainerLocalDelivery measures pod-to-pod delivery with
// bpf_redirect_peer.
func BenchmarkFromContainerLocalDelivery(b *testing.B) {
	d := loadDatapath(b, configPeer)
	d.addPods(podA, benchPodB)
	benchmarkDelivery(b, d, benchPodB, maps.MetricForwardPeer)
}

// BenchmarkFromContainerLocalDeliveryRedirect measures pod-to-pod delivery
// with the bpf_redirect fallback.
func BenchmarkFromContainerLocalDeliveryRedirect(b *testing.B) {
	d := loadDatapath(b, configRedirect)
	d.addPods(podA, benchPodB)
	benchmarkDelivery(b, d, benchPodB, maps.MetricForwardRedirect)
}

// BenchmarkFromContainerLocalDeliveryPolicy measures pod-to-pod delivery
// with bpf_redirect_peer through pod B's ingress policy, the example
// policy, which lets the packet in: the cost of the policy's tail calls
// (to the policy and back to the verdict stage) and its map lookup.
func BenchmarkFromContainerLocalDeliveryPolicy(b *testing.B) {
	d := loadDatapath(b, configPeer)
	pb := benchPodB.withFlags(endpointFlagPolicy)
	d.addPods(podA, pb)
	objs := d.loadPolicy()
	deny(b, objs, pb.id, podC.id) // a listed pair that is not this one
	d.setPolicy(pb, objs.DenyListed)
	benchmarkDelivery(b, d, pb, maps.MetricForwardPeer)
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

// BenchmarkFromContainerToStackServices is BenchmarkFromContainerToStack
// on a node with services and a ClusterIP in its ClusterIP table: the
// packet, for no frontend, is looked up there too before it leaves
// (x-direct: the same packet on a node without services).
func BenchmarkFromContainerToStackServices(b *testing.B) {
	plain := loadDatapath(b, configPeer)
	plain.addPods(podA, podB)
	d := loadDatapath(b, configPeer)
	d.addPods(podA, podB)
	d.addService(podB)
	if err := d.services().PutClusterIP(clusterIP.Addr()); err != nil {
		b.Fatal(err)
	}
	frame := ipv4From(podA, remoteIP).frame()
	benchRun{prog: d.objs.FromContainer, frame: frame, perRun: b.N, want: tcActOK, empty: emptyProgram(b),
		direct: &benchTarget{plain.objs.FromContainer, frame, tcActOK}}.run(b)
}

// BenchmarkToContainer measures the to-container step on a device's egress.
func BenchmarkToContainer(b *testing.B) {
	benchmarkToContainer(b, false)
}

// BenchmarkToContainerServices measures the to-container step of a node
// with services: a packet the stack delivers passes the reverse NAT stage
// (a tail call and a conntrack lookup that finds nothing).
func BenchmarkToContainerServices(b *testing.B) {
	d := loadDatapath(b, configRedirect)
	a, pb := podA.withIfindex(10), podB.withIfindex(loIfindex)
	d.addPods(a, pb)
	d.addService(a)
	frame := ipv4From(a, pb.ip).forwarded(pb).frame()
	benchmarkVsEmpty(b, d.objs.ToContainer, frame, b.N, tcActOK)
	checkOnly(b, d, maps.MetricPass)
}

// BenchmarkToContainerPolicy measures the to-container step through the
// endpoint's ingress policy, the example policy letting the packet in.
func BenchmarkToContainerPolicy(b *testing.B) {
	benchmarkToContainer(b, true)
}

func benchmarkToContainer(b *testing.B, withPolicy bool) {
	d := loadDatapath(b, configRedirect)
	a, pb := podA.withIfindex(10), podB.withIfindex(loIfindex)
	if withPolicy {
		pb = pb.withFlags(endpointFlagPolicy)
	}
	d.addPods(a, pb)
	if withPolicy {
		objs := d.loadPolicy()
		deny(b, objs, pb.id, podC.id)
		d.setPolicy(pb, objs.DenyListed)
	}
	frame := ipv4From(a, pb.ip).forwarded(pb).frame()
	// Nothing is rewritten: no limit per run.
	benchmarkVsEmpty(b, d.objs.ToContainer, frame, b.N, tcActOK)
	checkOnly(b, d, maps.MetricPass)
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
	benchmarkVsEmpty(b, d.objs.FromNetdev, pkt.frame(), maxForwardsPerRun, tcActRedirect)
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
// loopback, the device a test run without a context arrives on, and sends
// to loopback's MAC (PACKET_HOST). The pod's MAC is eth0's, so that a frame
// rewritten with the lookup's MACs (no redirect_neigh) passes the source
// check again on the next run of the repeat loop, and the TTL starts at
// 255 (see maxForwardsPerRun): every run takes the same path.
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
// node's pod without redirect_neigh: bpf_fib_lookup with a resolved next
// hop, the lookup's MACs, then bpf_redirect.
func BenchmarkFromContainerFIBRedirect(b *testing.B) {
	benchmarkFIB(b, fibConfig(0), dstGateway, maps.MetricForwardFIB)
}

// BenchmarkFromContainerFIBRedirectNeigh measures the same with
// redirect_neigh, the default: bpf_fib_lookup, then bpf_redirect_neigh.
func BenchmarkFromContainerFIBRedirectNeigh(b *testing.B) {
	benchmarkFIB(b, fibConfig(1), dstGateway, maps.MetricForwardNeigh)
}

// BenchmarkFromContainerFIBRedirectNeighUnresolved is
// BenchmarkFromContainerFIBRedirectNeigh with the next hop unresolved.
func BenchmarkFromContainerFIBRedirectNeighUnresolved(b *testing.B) {
	benchmarkFIB(b, fibConfig(1), dstNoNeighbour, maps.MetricForwardNeigh)
}
