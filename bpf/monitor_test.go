package bpf_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/perf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

const (
	monitorOff         = 0
	monitorDrops       = 1
	monitorAll         = 2
	monitorConnections = 3
)

// setMonitor sets hr_monitor.
func (d *datapath) setMonitor(level, capLen uint32) {
	d.tb.Helper()
	if err := d.objs.HrMonitor.Put(uint32(0), bpf.HostroutingMonitorConfig{Level: level, CapLen: capLen}); err != nil {
		d.tb.Fatal(err)
	}
}

// events opens a reader of hr_events, woken per watermark bytes (0: per
// event), closed when tb ends.
func (d *datapath) events(watermark int) *perf.Reader {
	d.tb.Helper()
	rd, err := perf.NewReaderWithOptions(d.objs.HrEvents, 64*os.Getpagesize(), perf.ReaderOptions{Watermark: watermark})
	if err != nil {
		d.tb.Fatal(err)
	}
	d.tb.Cleanup(func() { rd.Close() })
	return rd
}

// TestMonitorEvents: with drops reported, a spoofed packet's drop is an
// event carrying the decision, the device, the endpoint, the length and
// the packet's first bytes; a delivered packet is none. With everything
// reported, the delivery is one too, naming the endpoint it entered.
func TestMonitorEvents(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA, podB)
	rd := d.events(0)
	d.setMonitor(monitorDrops, 32)

	spoofed := ipv4From(podA, podB.ip)
	spoofed.src = podC.ip
	if v, _ := d.run(d.objs.FromContainer, podA.ifindex, spoofed.frame()); v != tcActShot {
		t.Fatalf("spoofed: verdict %d", v)
	}
	if v, _ := d.run(d.objs.FromContainer, podA.ifindex, ipv4From(podA, podB.ip).frame()); v != tcActRedirect {
		t.Fatalf("delivered: verdict %d", v)
	}
	d.setMonitor(monitorAll, 1000)
	delivered := ipv4From(podA, podB.ip).frame()
	if v, _ := d.run(d.objs.FromContainer, podA.ifindex, delivered); v != tcActRedirect {
		t.Fatalf("delivered: verdict %d", v)
	}
	for i, want := range []struct {
		metric   maps.Metric
		frame    []byte
		capLen   int
		endpoint uint16 // dropped for the sender, delivered to the receiver
	}{
		{maps.MetricDropSpoofed, spoofed.frame(), 32, podA.id},
		{maps.MetricForwardPeer, ipv4From(podA, podB.ip).forwarded(podB).frame(), len(delivered), podB.id},
	} {
		rec, err := rd.Read()
		if err != nil {
			t.Fatal(err)
		}
		raw := rec.RawSample
		if len(raw) < 24+want.capLen {
			t.Fatalf("event %d: %d bytes, want 24 + %d", i, len(raw), want.capLen)
		}
		ifindex, length := binary.NativeEndian.Uint32(raw[8:]), int(binary.NativeEndian.Uint32(raw[12:]))
		capLen, dir, metric := int(binary.NativeEndian.Uint16(raw[16:])), maps.Direction(raw[20]), maps.Metric(raw[21])
		endpoint := binary.NativeEndian.Uint16(raw[18:])
		if ifindex != podA.ifindex || length != len(want.frame) || capLen != want.capLen || dir != maps.FromContainer ||
			metric != want.metric || endpoint != want.endpoint {
			t.Errorf("event %d: ifindex %d length %d captured %d %s %s endpoint %d; want %d %d %d from-container %s %d",
				i, ifindex, length, capLen, dir, metric, endpoint, podA.ifindex, len(want.frame), want.capLen, want.metric, want.endpoint)
		}
		checkFrame(t, want.metric.String()+" event's bytes", raw[24:24+capLen], want.frame[:capLen])
	}
	rd.SetDeadline(deadlineNow())
	if rec, err := rd.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a third event %+v, %v: want none", rec, err)
	}
}

// event is a record of hr_events, decoded as far as these tests look.
type event struct {
	typ, ct       uint8
	ifindex       uint32
	endpoint      uint16
	dir           maps.Direction
	metric        maps.Metric
	revNAT        uint16
	proto         uint8
	from, to      [12]byte // struct tuple4
	capLen, bytes int
}

// nextEvent reads the next event, failing if none comes within 100 ms.
func nextEvent(t *testing.T, rd *perf.Reader) event {
	t.Helper()
	rd.SetDeadline(deadlineNow())
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("read event: %v", err)
	}
	raw := rec.RawSample
	e := event{typ: raw[22], ifindex: binary.NativeEndian.Uint32(raw[8:]), dir: maps.Direction(raw[20]),
		metric: maps.Metric(raw[21]), capLen: int(binary.NativeEndian.Uint16(raw[16:])), bytes: len(raw),
		endpoint: binary.NativeEndian.Uint16(raw[18:])}
	if e.typ == 1 {
		e.revNAT, e.proto, e.ct = binary.NativeEndian.Uint16(raw[24:]), raw[26], raw[27]
		copy(e.from[:], raw[28:40])
		copy(e.to[:], raw[40:52])
	}
	return e
}

// noEvent fails if rd has an event within 100 ms.
func noEvent(t *testing.T, rd *perf.Reader, what string) {
	t.Helper()
	rd.SetDeadline(deadlineNow())
	if rec, err := rd.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("%s: an event %v, %v: want none", what, rec.RawSample, err)
	}
}

// tuple encodes a struct tuple4.
func tuple(src, dst netip.AddrPort) [12]byte {
	var b [12]byte
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[0:], s[:])
	copy(b[4:], d[:])
	binary.BigEndian.PutUint16(b[8:], src.Port())
	binary.BigEndian.PutUint16(b[10:], dst.Port())
	return b
}

// TestMonitorTranslation: a pod's datagram to a ClusterIP is counted as a
// DNAT besides its delivery, and at MonitorAll reported as a translation
// event (service, conntrack verdict New, tuples before and after, no
// packet bytes) before the delivery's event; the flow's next datagram is
// Established, and the backend's reply a Reply translated back.
func TestMonitorTranslation(t *testing.T) {
	d := loadDatapath(t, configPeer)
	a, b := podA, podB.withFlags(uint16(maps.EndpointLBBackend))
	d.addPods(a, b)
	d.addService(b)
	rd := d.events(0)
	d.setMonitor(monitorAll, 64)

	client := netip.AddrPortFrom(a.ip, 40000)
	backend := netip.AddrPortFrom(b.ip, backendPort)
	out := ipv4From(a, clusterIP.Addr()).withPorts(client.Port(), clusterIP.Port())
	for i, verdict := range []uint8{1, 2} { // New, then Established
		if v, _ := d.run(d.objs.FromContainer, a.ifindex, out.frame()); v != tcActRedirect {
			t.Fatalf("datagram %d to the ClusterIP: verdict %d", i, v)
		}
		x := nextEvent(t, rd)
		want := event{typ: 1, ct: verdict, ifindex: a.ifindex, dir: maps.FromContainer, metric: maps.MetricXlateDNAT,
			revNAT: 1, proto: ipProtoUDP, from: tuple(client, clusterIP), to: tuple(client, backend), bytes: x.bytes}
		if x != want || x.bytes < 52 {
			t.Errorf("datagram %d: translation event %+v, want %+v (52 bytes)", i, x, want)
		}
		if e := nextEvent(t, rd); e.typ != 0 || e.metric != maps.MetricForwardPeer {
			t.Errorf("datagram %d: then %+v, want the forward-peer decision", i, e)
		}
	}
	// B replies from loopback (BPF_PROG_RUN wants a real device).
	d.removePods(a, b)
	a, b = a.withIfindex(podC.ifindex), b.withIfindex(loIfindex)
	b.nodeMAC = mac{}
	d.addPods(a, b)
	reply := ipv4From(b, a.ip).withPorts(backendPort, client.Port())
	if v, _ := d.run(d.objs.FromContainer, b.ifindex, reply.frame()); v != tcActRedirect {
		t.Fatalf("reply: verdict %d", v)
	}
	x := nextEvent(t, rd)
	want := event{typ: 1, ct: 3, ifindex: b.ifindex, dir: maps.FromContainer, metric: maps.MetricXlateRevDNAT,
		revNAT: 1, proto: ipProtoUDP, from: tuple(backend, client), to: tuple(clusterIP, client), bytes: x.bytes}
	if x != want {
		t.Errorf("reply: translation event %+v, want %+v", x, want)
	}
	nextEvent(t, rd) // its delivery
	m := d.metrics()
	if m[maps.MetricXlateDNAT].Packets != 2 || m[maps.MetricXlateRevDNAT].Packets != 1 || m[maps.MetricForwardPeer].Packets != 3 {
		t.Errorf("counters %v: want 2 xlate-dnat, 1 xlate-rev-dnat, 3 forward-peer", m)
	}
}

// TestMonitorConnections: per-connection aggregation reports drops, TCP
// segments that open or close a connection, and translations that start
// a flow; a TCP segment in the middle of its connection, an untracked
// datagram and an established flow's datagram are counted, not reported.
func TestMonitorConnections(t *testing.T) {
	d := loadDatapath(t, configPeer)
	a, b := podA, podB.withFlags(uint16(maps.EndpointLBBackend))
	d.addPods(a, b)
	d.addService(b)
	rd := d.events(0)
	d.setMonitor(monitorConnections, 64)

	syn := tcpPorts(a, b.ip, 40000, 80)
	syn.payload[13] = 0x02
	fin := tcpPorts(a, b.ip, 40000, 80)
	fin.payload[13] = 0x11
	spoofed := ipv4From(a, b.ip)
	spoofed.src = podC.ip
	toService := ipv4From(a, clusterIP.Addr()).withPorts(40001, clusterIP.Port())
	for _, c := range []struct {
		name    string
		frame   []byte
		verdict uint32
		want    []maps.Metric // the events' metrics
	}{
		{"syn", syn.frame(), tcActRedirect, []maps.Metric{maps.MetricForwardPeer}},
		{"ack", tcpPorts(a, b.ip, 40000, 80).frame(), tcActRedirect, nil},
		{"fin", fin.frame(), tcActRedirect, []maps.Metric{maps.MetricForwardPeer}},
		{"udp", ipv4From(a, b.ip).frame(), tcActRedirect, nil},
		{"spoofed", spoofed.frame(), tcActShot, []maps.Metric{maps.MetricDropSpoofed}},
		{"service, new flow", toService.frame(), tcActRedirect, []maps.Metric{maps.MetricXlateDNAT}},
		{"service, established", toService.frame(), tcActRedirect, nil},
	} {
		if v, _ := d.run(d.objs.FromContainer, a.ifindex, c.frame); v != c.verdict {
			t.Fatalf("%s: verdict %d, want %d", c.name, v, c.verdict)
		}
		for _, m := range c.want {
			if e := nextEvent(t, rd); e.metric != m {
				t.Errorf("%s: event %+v, want %s", c.name, e, m)
			}
		}
		noEvent(t, rd, c.name)
	}
}

// BenchmarkFromContainerMonitor measures pod-to-pod delivery with the
// monitor off, per connection (a datagram is not reported: what it costs
// to tell), reporting every packet with no reader (the events go
// nowhere), and reporting every packet to a reader that drains them.
func BenchmarkFromContainerMonitor(b *testing.B) {
	for _, bc := range []struct {
		name   string
		level  uint32
		reader bool
	}{{"off", monitorOff, false}, {"connection", monitorConnections, false}, {"all-no-reader", monitorAll, false}, {"all-reader", monitorAll, true}} {
		b.Run(bc.name, func(b *testing.B) {
			d := loadDatapath(b, configPeer)
			d.addPods(podA, benchPodB)
			d.setMonitor(bc.level, 128)
			if bc.reader {
				rd := d.events(16 * os.Getpagesize()) // as datapath.OpenMonitor
				go func() {
					for {
						if _, err := rd.Read(); errors.Is(err, perf.ErrClosed) {
							return
						}
					}
				}()
			}
			benchmarkDelivery(b, d, benchPodB, maps.MetricForwardPeer)
		})
	}
}

// deadlineNow is a read deadline that has passed once the events before it
// are read.
func deadlineNow() time.Time { return time.Now().Add(100 * time.Millisecond) }

// TestMonitorLost: events that find a reader's ring full are lost, never
// waited for: the programs keep their verdicts, the reader is told how
// many it lost, the programs skip sending (counted) for a while after a
// full ring, and the reader reads what comes afterwards.
func TestMonitorLost(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA, benchPodB)
	rd, err := perf.NewReader(d.objs.HrEvents, os.Getpagesize()) // room for some 25 events
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	d.setMonitor(monitorAll, 128)
	pkt := ipv4From(podA, benchPodB.ip)
	pkt.ttl = maxForwardsPerRun + 1
	if v, _, err := d.objs.FromContainer.Benchmark(pkt.frame(), maxForwardsPerRun, nil); err != nil || v != tcActRedirect {
		t.Fatalf("%d packets: verdict %d, %v", maxForwardsPerRun, v, err)
	}
	read, lost := drain(t, rd)
	if read == 0 || read == maxForwardsPerRun {
		t.Fatalf("%d events of %d read: want some lost", read, maxForwardsPerRun)
	}
	// The next event, once the reader has made room, arrives after the
	// kernel's count of the lost ones.
	if v, _ := d.run(d.objs.FromContainer, podA.ifindex, ipv4From(podA, benchPodB.ip).frame()); v != tcActRedirect {
		t.Fatalf("verdict %d", v)
	}
	next, lost2 := drain(t, rd)
	// After a send that found the ring full, the CPU tries none for a
	// while: those events are counted in hr_monitor_state.
	var per []bpf.HostroutingMonitorState
	if err := d.objs.HrMonitorState.Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	var skipped uint64
	for _, s := range per {
		skipped += s.Skipped
	}
	if lost += lost2; next != 1 || lost == 0 || skipped == 0 || read+lost+skipped != maxForwardsPerRun {
		t.Errorf("%d events read, %d lost and %d skipped of %d, then %d of 1", read, lost, skipped, maxForwardsPerRun, next)
	}
}

// drain reads rd's records until none comes within 100 ms and returns how
// many events it read and how many the kernel says were lost.
func drain(t *testing.T, rd *perf.Reader) (read, lost uint64) {
	t.Helper()
	rd.SetDeadline(deadlineNow())
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return read, lost
		}
		if err != nil {
			t.Fatal(err)
		}
		lost += rec.LostSamples
		if len(rec.RawSample) > 0 {
			read++
		}
	}
}
