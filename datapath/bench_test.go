package datapath_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// benchPodNetns is how many pod namespaces the benchmarks spread their
// veth peers over. Making a namespace per pod, as routing.SetupVeth into
// datapathtest pods does, would cost more than the datapath itself and
// make the benchmarks slow to set up and tear down.
const benchPodNetns = 4

// benchNode is a node with a datapath and a few pod namespaces, on which
// the benchmarks make veth pairs cheaply: the host end in the node, up,
// the peer in one of the pod namespaces, left down and unaddressed.
type benchNode struct {
	node    *datapathtest.Node
	dp      *datapath.Datapath
	pinPath string
	host    *netlink.Handle // in the node's netns
	pods    []netns.NsHandle
}

// newBenchNode makes a node with an empty datapath configured by cfg;
// b.Cleanup removes it all, the datapath first, so that its programs are
// detached here rather than by the kernel's namespace teardown later.
func newBenchNode(b *testing.B, cfg datapath.Config) *benchNode {
	b.Helper()
	n := &benchNode{node: datapathtest.NewNode(b, "node")}
	for i := range benchPodNetns {
		_, path := datapathtest.NewNetns(b, fmt.Sprint("pods", i))
		ns, err := netns.GetFromPath(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ns.Close() })
		n.pods = append(n.pods, ns)
	}
	n.pinPath = datapathtest.PinPath(b)
	cfg.PinPath = n.pinPath
	n.dp = n.node.NewDatapath(b, cfg)
	h, err := routing.Handle(n.node.Netns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.Close)
	n.host = h
	return n
}

// benchPod returns pod i as AddEndpoint takes it: host device lxb<i>,
// address 10.128.0.0 + i, a MAC made from i.
func benchPod(i int) datapath.Endpoint {
	return datapath.Endpoint{
		IfName: fmt.Sprintf("lxb%d", i),
		IP:     netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)}),
		MAC:    net.HardwareAddr{0x02, 0x00, 0x0a, byte(i >> 16), byte(i >> 8), byte(i)},
	}
}

// addVeths makes the veth pairs of pods first to first+count-1 and
// returns the pods.
func (n *benchNode) addVeths(first, count int) ([]datapath.Endpoint, error) {
	pods := make([]datapath.Endpoint, 0, count)
	for i := first; i < first+count; i++ {
		p := benchPod(i)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = p.IfName
		attrs.Flags = net.FlagUp
		veth := &netlink.Veth{
			LinkAttrs:        attrs,
			PeerName:         fmt.Sprint("eth", i),
			PeerHardwareAddr: p.MAC,
			PeerNamespace:    netlink.NsFd(n.pods[i%len(n.pods)]),
		}
		if err := n.host.LinkAdd(veth); err != nil {
			return nil, fmt.Errorf("veth %s: %w", p.IfName, err)
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// fillEndpoints writes count endpoints on devices the node does not have
// straight into its endpoint map, with one batch update, as stand-ins for
// the pods of a busy node: AddEndpoint reads them all. b.Cleanup deletes
// them, before the datapath goes.
func (n *benchNode) fillEndpoints(b *testing.B, count int) {
	b.Helper()
	if count == 0 {
		return
	}
	ln, err := instance.Open(n.pinPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	keys := make([]uint32, count)
	devices := make([]uint32, count)
	values := make([]bpf.HostroutingEndpointInfo, count)
	for i := range count {
		a := [4]byte{10, 192 + byte(i>>16), byte(i >> 8), byte(i)}
		keys[i] = binary.NativeEndian.Uint32(a[:])
		devices[i] = uint32(1_000_000 + i)
		values[i] = bpf.HostroutingEndpointInfo{
			Ifindex: devices[i],
			Id:      uint16(i + 1),
			Mac:     [6]byte{0x02, 0x00, 0x0b, byte(i >> 16), byte(i >> 8), byte(i)},
			NodeMac: [6]byte{0x02, 0xfe, 0x0b, byte(i >> 16), byte(i >> 8), byte(i)},
			Ipv4:    keys[i],
		}
	}
	if _, err := ln.Maps.Endpoints.BatchUpdate(keys, values, nil); err != nil {
		b.Fatalf("batch update %d endpoints: %v", count, err)
	}
	if _, err := ln.Maps.Devices.BatchUpdate(devices, values, nil); err != nil {
		b.Fatalf("batch update %d devices: %v", count, err)
	}
	b.Cleanup(func() {
		_, err1 := ln.Maps.Endpoints.BatchDelete(keys, nil)
		_, err2 := ln.Maps.Devices.BatchDelete(devices, nil)
		if err := errors.Join(err1, err2); err != nil {
			b.Errorf("delete %d stand-in endpoints: %v", count, err)
		}
	})
}

// median returns the median of ds, which it sorts.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// benchAddPool is how many veth pairs BenchmarkAddEndpoint adds in turn.
const benchAddPool = 32

// attachModes are the datapath's two ways of attaching programs, as
// sub-benchmark names: tcx links, and clsact qdiscs with cls_bpf filters
// (forced with loader.Disable.TCX).
var attachModes = []struct {
	name    string
	disable loader.Disable
}{
	{"tcx", loader.Disable{}},
	{"tc", loader.Disable{TCX: true}},
}

// BenchmarkAddEndpoint measures AddEndpoint of one pod whose veth pair
// exists (made before the clock starts): the duplicate and ID checks,
// the device lookup, the map writes and the attachment of from-container
// and to-container, in each attach mode. It runs on nodes with 0, 100,
// 1000 and 10000 endpoints already there (stand-ins written straight into
// the map, see fillEndpoints), since AddEndpoint reads all of them. Each
// iteration adds one of 32 prepared pods and, off the clock, removes it
// again, so the node keeps its size whatever b.N is. Besides the mean
// (ns/op) it reports the median AddEndpoint and, for comparison, the
// median RemoveEndpoint.
func BenchmarkAddEndpoint(b *testing.B) {
	for _, mode := range attachModes {
		b.Run(mode.name, func(b *testing.B) {
			n := newBenchNode(b, datapath.Config{Disable: mode.disable})
			pool, err := n.addVeths(0, benchAddPool)
			if err != nil {
				b.Fatal(err)
			}
			for _, existing := range []int{0, 100, 1000, 10_000} {
				b.Run(fmt.Sprintf("existing=%d", existing), func(b *testing.B) {
					benchmarkAddEndpoint(b, n, pool, existing)
				})
			}
		})
	}
}

func benchmarkAddEndpoint(b *testing.B, n *benchNode, pool []datapath.Endpoint, existing int) {
	n.fillEndpoints(b, existing)
	adds := make([]time.Duration, 0, b.N)
	removes := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		ep := pool[i%len(pool)]
		start := time.Now()
		if _, err := n.dp.AddEndpoint(ep); err != nil {
			b.Fatal(err)
		}
		adds = append(adds, time.Since(start))
		b.StopTimer()
		start = time.Now()
		if err := n.dp.RemoveEndpoint(ep.IP); err != nil {
			b.Fatal(err)
		}
		removes = append(removes, time.Since(start))
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(median(adds).Nanoseconds()), "median-ns/op")
	b.ReportMetric(float64(median(removes).Nanoseconds()), "median-remove-ns")
}

// benchEndpoints is how many pods BenchmarkAddEndpoints1000 adds.
const benchEndpoints = 1000

// BenchmarkAddEndpoints1000 puts 1000 pods on an empty node, end to end,
// in each attach mode: their veth pairs created (the host end up in the
// node, the peer in one of 4 pod namespaces, left down and unaddressed:
// no namespace, address or route per pod as a CNI would make), then
// AddEndpoint for each in turn, programs attached and maps written. A
// fresh node and datapath per iteration are made off the clock. It
// reports the seconds of the whole (total-s/op), of the veths
// (veth-s/op) and of the AddEndpoint calls (add-s/op), and the median
// and the last (1000th) AddEndpoint.
func BenchmarkAddEndpoints1000(b *testing.B) {
	for _, mode := range attachModes {
		b.Run(mode.name, func(b *testing.B) { benchmarkAddEndpoints(b, datapath.Config{Disable: mode.disable}) })
	}
}

func benchmarkAddEndpoints(b *testing.B, cfg datapath.Config) {
	var veths, adds time.Duration
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		n := newBenchNode(b, cfg)
		b.StartTimer()
		start := time.Now()
		pods, err := n.addVeths(0, benchEndpoints)
		if err != nil {
			b.Fatal(err)
		}
		made := time.Now()
		veths += made.Sub(start)
		for _, p := range pods {
			t := time.Now()
			if _, err := n.dp.AddEndpoint(p); err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(t))
		}
		adds += time.Since(made)
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	b.ReportMetric(per(veths+adds), "total-s/op")
	b.ReportMetric(per(veths), "veth-s/op")
	b.ReportMetric(per(adds), "add-s/op")
	b.ReportMetric(float64(took[len(took)-1].Microseconds()), "last-add-us")
	b.ReportMetric(float64(median(took).Microseconds()), "median-add-us")
}
