package datapath_test

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/maps"
)

// collect runs a monitor of dp until the returned stop is called, and
// returns the events it read and the count of lost ones. stop waits for
// an event for which last is true (at most 5 s), or, with last nil, for
// three flush periods of the monitor, then until none comes for two.
func collect(t *testing.T, dp *datapath.Datapath) (stop func(last func(datapath.Event) bool) ([]datapath.Event, uint64)) {
	t.Helper()
	mon, err := dp.OpenMonitor()
	if err != nil {
		t.Fatal(err)
	}
	var events []datapath.Event
	read := make(chan datapath.Event, 1024)
	done := make(chan error, 1)
	go func() {
		done <- mon.Run(context.Background(), func(e datapath.Event) { read <- e })
		close(read)
	}()
	return func(last func(datapath.Event) bool) ([]datapath.Event, uint64) {
		t.Helper()
		wait := time.After(300 * time.Millisecond)
		if last != nil {
			wait = time.After(5 * time.Second)
		}
	loop:
		for {
			select {
			case e := <-read:
				events = append(events, e)
				if last != nil && last(e) {
					break loop
				}
			case <-wait:
				break loop
			}
		}
		// Events of other CPUs' rings come with the same flush: take
		// what arrives until the monitor is quiet.
	quiet:
		for {
			select {
			case e := <-read:
				events = append(events, e)
			case <-time.After(200 * time.Millisecond):
				break quiet
			}
		}
		mon.Close()
		for e := range read {
			events = append(events, e)
		}
		if err := <-done; err != nil {
			t.Fatalf("Monitor: %v", err)
		}
		return events, mon.Lost()
	}
}

// eventAddrs returns the source and destination of an event's IPv4 packet.
func eventAddrs(e datapath.Event) (src, dst netip.Addr, ok bool) {
	if len(e.Data) < 34 || binary.BigEndian.Uint16(e.Data[12:]) != 0x0800 {
		return netip.Addr{}, netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(e.Data[26:30])), netip.AddrFrom4([4]byte(e.Data[30:34])), true
}

// TestMonitor: with MonitorAll, a pod-to-pod ping is traced by every
// program it passes (forward-peer from the pods' devices, with the
// packets' bytes); a spoofed datagram is reported as a drop with its
// reason; MonitorDrops reports the drop and no trace; MonitorOff nothing.
func TestMonitor(t *testing.T) {
	_, a, b, dp := twoPods(t, datapath.Config{})
	if level, capture, err := dp.MonitorSettings(); err != nil || level != datapath.MonitorOff {
		t.Fatalf("a new node's monitor: %v %d %v, want off", level, capture, err)
	}
	spoof := netip.MustParseAddr("10.0.0.99")
	for _, tc := range []struct {
		level               datapath.MonitorLevel
		wantTrace, wantDrop bool
	}{
		{datapath.MonitorAll, true, true},
		{datapath.MonitorDrops, false, true},
		{datapath.MonitorOff, false, false},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			if err := dp.SetMonitor(tc.level, 64); err != nil {
				t.Fatal(err)
			}
			stop := collect(t, dp)
			if n, err := a.Ping(b.IP, 3, 5*time.Second); n != 3 || err != nil {
				t.Fatalf("ping: %d of 3, %v", n, err)
			}
			sendSpoofedUDP(t, a, spoof, b.IP, 9, 1)
			// The spoofed datagram's drop is the last event, where
			// drops are reported.
			var last func(datapath.Event) bool
			if tc.wantDrop {
				last = func(e datapath.Event) bool { return e.Reason == maps.MetricDropSpoofed }
			}
			events, lost := stop(last)
			var requests, replies, drops int
			for _, e := range events {
				src, dst, ok := eventAddrs(e)
				switch {
				case !ok:
				case e.Reason == maps.MetricForwardPeer && e.Direction == maps.FromContainer && src == a.IP && dst == b.IP:
					requests++
					if len(e.Data) != 64 || e.Len <= 64 {
						t.Errorf("event %v carries %d bytes of a %d-byte packet, want 64", e, len(e.Data), e.Len)
					}
				case e.Reason == maps.MetricForwardPeer && src == b.IP && dst == a.IP:
					replies++
				case e.Reason == maps.MetricDropSpoofed && src == spoof:
					drops++
					if !e.IsDrop() || e.String() == "" {
						t.Errorf("spoofed packet's event %v: not a drop", e)
					}
				}
			}
			if (requests >= 3 && replies >= 3) != tc.wantTrace || (requests+replies > 0) != tc.wantTrace {
				t.Errorf("level %s: traced %d requests and %d replies of 3 each (want traced: %v)", tc.level, requests, replies, tc.wantTrace)
			}
			if (drops == 1) != tc.wantDrop || drops > 1 {
				t.Errorf("level %s: %d drop events for the spoofed datagram (want one: %v)", tc.level, drops, tc.wantDrop)
			}
			if lost != 0 {
				t.Errorf("%d events lost", lost)
			}
		})
	}
	for _, bad := range []struct {
		level   datapath.MonitorLevel
		capture int
	}{{3, 0}, {datapath.MonitorAll, -1}, {datapath.MonitorAll, 70000}} {
		if err := dp.SetMonitor(bad.level, bad.capture); err == nil {
			t.Errorf("SetMonitor(%d, %d) took it", bad.level, bad.capture)
		}
	}
}
