package tables_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// tcActRedirect is the verdict of a redirecting tc program (linux/pkt_cls.h).
const tcActRedirect = 7

// loIfindex is the device a BPF_PROG_RUN frame arrives on when no context
// is given: loopback of the caller's network namespace. The sending
// endpoint sits there; every other endpoint's ifindex only lives in maps.
const loIfindex = 1

// loadNode loads the datapath as a node would, with the largest endpoint
// limit (loader.MaxEndpointsLimit), on a fresh pin path; b.Cleanup removes
// it.
func loadNode(b *testing.B) *instance.Instance {
	b.Helper()
	datapathtest.RequireRoot(b)
	n, err := instance.Load(instance.Options{PinPath: datapathtest.PinPath(b), MaxEndpoints: loader.MaxEndpointsLimit})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := n.Remove(); err != nil {
			b.Errorf("remove node: %v", err)
		}
	})
	return n
}

// benchEndpoint returns the i-th of the endpoints the benchmarks write:
// 10.64.0.0 + i on ifindex 1000 + i, with made-up MACs.
func benchEndpoint(i int) maps.Endpoint {
	ip := netip.AddrFrom4([4]byte{10, 64 + byte(i>>16), byte(i >> 8), byte(i)})
	return maps.Endpoint{
		IP:      ip,
		IfIndex: 1000 + i,
		ID:      uint16(i + 1),
		MAC:     net.HardwareAddr{0x02, 0x00, 0x0a, byte(i >> 16), byte(i >> 8), byte(i)},
		NodeMAC: net.HardwareAddr{0x02, 0xfe, 0x0a, byte(i >> 16), byte(i >> 8), byte(i)},
	}
}

// rawEndpoints returns eps as hr_endpoints keys and values, for
// ebpf.Map.BatchUpdate: tables.Endpoints has no batch write.
func rawEndpoints(eps []maps.Endpoint) ([]uint32, []bpf.HostroutingEndpointInfo) {
	keys := make([]uint32, len(eps))
	values := make([]bpf.HostroutingEndpointInfo, len(eps))
	for i, ep := range eps {
		a := ep.IP.As4()
		keys[i] = binary.NativeEndian.Uint32(a[:])
		values[i] = bpf.HostroutingEndpointInfo{Ifindex: uint32(ep.IfIndex), Id: ep.ID, Flags: uint16(ep.Flags), Ipv4: keys[i]}
		copy(values[i].Mac[:], ep.MAC)
		copy(values[i].NodeMac[:], ep.NodeMAC)
	}
	return keys, values
}

// fillEndpoints writes eps to the node's endpoint maps (by IPv4 address
// and by device) with one batch update each, and zeroed counters for each
// of them, as a node with len(eps) endpoints has.
func fillEndpoints(b *testing.B, n *instance.Instance, eps []maps.Endpoint) {
	b.Helper()
	keys, values := rawEndpoints(eps)
	if _, err := n.Maps.Endpoints.BatchUpdate(keys, values, nil); err != nil {
		b.Fatalf("batch update %d endpoints: %v", len(eps), err)
	}
	ifindexes := make([]uint32, len(eps))
	ids := make([]uint32, len(eps))
	for i, ep := range eps {
		ifindexes[i] = uint32(ep.IfIndex)
		ids[i] = uint32(ep.ID)
	}
	if _, err := n.Maps.Devices.BatchUpdate(ifindexes, values, nil); err != nil {
		b.Fatalf("batch update %d devices: %v", len(eps), err)
	}
	zero := make([]bpf.HostroutingEndpointStats, len(eps)*ebpf.MustPossibleCPU())
	if _, err := n.Maps.EndpointStats.BatchUpdate(ids, zero, nil); err != nil {
		b.Fatalf("batch update %d endpoint counters: %v", len(eps), err)
	}
}

// udpFrame returns an Ethernet frame with a UDP packet from src to dst
// with the given TTL, IPv4 header checksum computed.
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, ttl uint8) []byte {
	udp := []byte{0x9c, 0x40, 0x00, 0x35, 0x00, 0x14, 0x00, 0x00, 'h', 'o', 's', 't', 'r', 'o', 'u', 't', 'i', 'n', 'g', '!'}
	f := make([]byte, 14+20, 14+20+len(udp))
	copy(f[0:], dstMAC)
	copy(f[6:], srcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = ttl
	ip[9] = unix.IPPROTO_UDP
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return append(f, udp...)
}

// maxForwardsPerRun bounds the repeat count of one BPF_PROG_RUN of local
// delivery. A repeated test run runs the program again on the frame it
// rewrote: the source MAC becomes the destination's node MAC and the TTL
// drops by one. As in bpf/bench_test.go, the destination gets the
// sender's MACs swapped (its MAC is the sender's node MAC and the other
// way round), so the rewritten frame passes the source checks again, and
// the TTL starts at 255, so 254 runs forward it without expiring.
const maxForwardsPerRun = 254

// BenchmarkEndpointLookup measures from-container local delivery, two
// endpoint lookups (source and destination) included, with 10, 10k and
// 65535 endpoints in the map, as the kernel times it in BPF_PROG_RUN. The
// per-packet cost should not depend on the count: hr_endpoints is a hash
// map with as many buckets as entries, so a lookup walks a chain of about
// one entry however full the map is. Each test run sends to another of up
// to 64 destinations spread over the map, so that no one bucket's chain
// decides the figure; within a test run the same entries are looked up
// again and again and stay in the CPU's caches, so the cache misses of
// traffic to many endpoints are not part of it.
func BenchmarkEndpointLookup(b *testing.B) {
	for _, count := range []int{10, 10_000, loader.MaxEndpointsLimit} {
		b.Run(fmt.Sprint(count), func(b *testing.B) { benchmarkLookup(b, count) })
	}
}

// maxDestinations is how many destinations BenchmarkEndpointLookup sends
// to in turn.
const maxDestinations = 64

func benchmarkLookup(b *testing.B, count int) {
	n := loadNode(b)
	// Endpoint 0 is the sender, on loopback. Every other endpoint can be
	// a destination: each gets the sender's MACs swapped (see
	// maxForwardsPerRun), which costs nothing in a lookup.
	eps := make([]maps.Endpoint, count)
	for i := range eps {
		eps[i] = benchEndpoint(i)
	}
	src := eps[0]
	src.IfIndex = loIfindex
	src.NodeMAC = make(net.HardwareAddr, 6) // loopback's MAC: frames to it are PACKET_HOST
	eps[0] = src
	for i := 1; i < count; i++ {
		eps[i].MAC, eps[i].NodeMAC = src.NodeMAC, src.MAC
	}
	fillEndpoints(b, n, eps)

	ndst := min(count-1, maxDestinations)
	frames := make([][]byte, ndst)
	for i := range frames {
		dst := eps[1+i*(count-1)/ndst]
		frames[i] = udpFrame(src.NodeMAC, src.MAC, src.IP, dst.IP, maxForwardsPerRun+1)
	}
	metric := maps.MetricForwardPeer
	if !n.Features.RedirectPeer.Enabled {
		metric = maps.MetricForwardRedirect
	}
	prog := n.Program(loader.FromContainer)

	var inProg time.Duration
	b.ResetTimer()
	for run, done := 0, 0; done < b.N; run++ {
		repeat := min(b.N-done, maxForwardsPerRun)
		verdict, perRun, err := prog.Benchmark(frames[run%ndst], repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		if verdict != tcActRedirect {
			b.Fatalf("verdict %d, want %d (redirect)", verdict, tcActRedirect)
		}
		inProg += perRun * time.Duration(repeat)
		done += repeat
	}
	b.StopTimer()
	// The time the kernel measured inside the program, without the
	// syscalls around it.
	b.ReportMetric(float64(inProg.Nanoseconds())/float64(b.N), "ns/op")

	all, err := tables.NewMetrics(n.Maps.Metrics).All()
	if err != nil {
		b.Fatal(err)
	}
	if c := all[maps.FromContainer][metric]; c.Packets < uint64(b.N) {
		b.Errorf("metric %s = %d packets, want at least %d", metric, c.Packets, b.N)
	}
	all.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
		if d != maps.FromContainer || m != metric {
			b.Errorf("metric %s %s moved by %d packets: the benchmark left the delivery path", d, m, c.Packets)
		}
	})
}

// BenchmarkEndpointsBatchUpdate writes 1k and 10k endpoints into an
// empty endpoint map, with one ebpf.Map.BatchUpdate on the raw map
// (instance.Instance.Maps.Endpoints) and with tables.Endpoints.Put one by one, and
// reports entries/s. The map is emptied between iterations, off the clock.
func BenchmarkEndpointsBatchUpdate(b *testing.B) {
	n := loadNode(b)
	for _, count := range []int{1_000, 10_000} {
		eps := make([]maps.Endpoint, count)
		for i := range eps {
			eps[i] = benchEndpoint(i)
		}
		keys, values := rawEndpoints(eps)
		write := map[string]func() error{
			"batch": func() error {
				_, err := n.Maps.Endpoints.BatchUpdate(keys, values, nil)
				return err
			},
			"put": func() error {
				m := tables.NewEndpoints(tables.EndpointMaps{ByIPv4: n.Maps.Endpoints, ByIPv6: n.Maps.Endpoints6, ByDevice: n.Maps.Devices, Slots: n.Maps.DeviceSlots, Meta: n.Maps.EndpointMeta})
				for _, ep := range eps {
					if err := m.Put(ep); err != nil {
						return err
					}
				}
				return nil
			},
		}
		for _, how := range []string{"batch", "put"} {
			b.Run(fmt.Sprintf("%s/%d", how, count), func(b *testing.B) {
				var (
					elapsed time.Duration
					writes  int
				)
				for b.Loop() {
					start := time.Now()
					if err := write[how](); err != nil {
						b.Fatal(err)
					}
					elapsed += time.Since(start)
					writes++
					b.StopTimer()
					if got, err := n.Maps.Endpoints.BatchDelete(keys, nil); err != nil || got != count {
						b.Fatalf("empty the map: deleted %d of %d: %v", got, count, err)
					}
					if how == "put" {
						for _, ep := range eps {
							if err := n.Maps.Devices.Delete(uint32(ep.IfIndex)); err != nil {
								b.Fatal(err)
							}
						}
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(count*writes)/elapsed.Seconds(), "entries/s")
			})
		}
	}
}
