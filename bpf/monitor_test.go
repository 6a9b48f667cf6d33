package bpf_test

import (
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/perf"

	"github.com/hostrouting/hostrouting/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

const (
	monitorOff   = 0
	monitorDrops = 1
	monitorAll   = 2
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
// event carrying the decision, the device, the length and the packet's
// first bytes; a delivered packet is none. With everything reported, the
// delivery is one too.
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
		metric maps.Metric
		frame  []byte
		capLen int
	}{
		{maps.MetricDropSpoofed, spoofed.frame(), 32},
		{maps.MetricForwardPeer, ipv4From(podA, podB.ip).forwarded(podB).frame(), len(delivered)},
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
		capLen, dir, metric := int(binary.NativeEndian.Uint32(raw[16:])), maps.Direction(raw[20]), maps.Metric(raw[21])
		if ifindex != podA.ifindex || length != len(want.frame) || capLen != want.capLen || dir != maps.FromContainer || metric != want.metric {
			t.Errorf("event %d: ifindex %d length %d captured %d %s %s; want %d %d %d from-container %s",
				i, ifindex, length, capLen, dir, metric, podA.ifindex, len(want.frame), want.capLen, want.metric)
		}
		checkFrame(t, want.metric.String()+" event's bytes", raw[24:24+capLen], want.frame[:capLen])
	}
	rd.SetDeadline(deadlineNow())
	if rec, err := rd.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a third event %+v, %v: want none", rec, err)
	}
}

// BenchmarkFromContainerMonitor measures pod-to-pod delivery with the
// monitor off, reporting every packet with no reader (the events go
// nowhere), and reporting every packet to a reader that drains them.
func BenchmarkFromContainerMonitor(b *testing.B) {
	for _, bc := range []struct {
		name   string
		level  uint32
		reader bool
	}{{"off", monitorOff, false}, {"all-no-reader", monitorAll, false}, {"all-reader", monitorAll, true}} {
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
// many it lost, and it reads what comes afterwards.
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
	if lost += lost2; next != 1 || read+lost != maxForwardsPerRun {
		t.Errorf("%d events read and %d lost of %d, then %d of 1", read, lost, maxForwardsPerRun, next)
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
