package datapath_test

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
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
		// Each CPU has its ring: put the events in the order they
		// happened.
		slices.SortStableFunc(events, func(a, b datapath.Event) int { return cmp.Compare(a.Time, b.Time) })
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
	epA, errA := dp.Endpoint(a.IP)
	epB, errB := dp.Endpoint(b.IP)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
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
					if len(e.Data) != 64 || e.Len <= 64 || e.Endpoint != epB.ID {
						t.Errorf("event %v carries %d bytes of a %d-byte packet into endpoint %d, want 64 into %d", e, len(e.Data), e.Len, e.Endpoint, epB.ID)
					}
				case e.Reason == maps.MetricForwardPeer && src == b.IP && dst == a.IP:
					replies++
				case e.Reason == maps.MetricDropSpoofed && src == spoof:
					drops++
					if !e.IsDrop() || e.String() == "" || e.Endpoint != epA.ID {
						t.Errorf("spoofed packet's event %v: not a drop of endpoint %d's", e, epA.ID)
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
	}{{datapath.MonitorAll + 1, 0}, {datapath.MonitorAll, -1}, {datapath.MonitorAll, 70000}} {
		if err := dp.SetMonitor(bad.level, bad.capture); err == nil {
			t.Errorf("SetMonitor(%d, %d) took it", bad.level, bad.capture)
		}
	}
}

// TestMonitorService: a pod's TCP connection to a ClusterIP, with the
// monitor per connection, is reported as the service translation with its
// conntrack verdict and backend (then the SYN's and FIN's decisions), its
// replies as reverse translations; mid-connection segments are counted,
// not reported; the translations are counted besides the forwards.
func TestMonitorService(t *testing.T) {
	_, a, b, dp := twoPods(t, datapath.Config{})
	backend := nameServer(t, b)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	id, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: []datapath.Backend{{Addr: backend}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.SetMonitor(datapath.MonitorConnections, 0); err != nil {
		t.Fatal(err)
	}
	before, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	stop := collect(t, dp)
	if name, err := askName(a.Netns, "tcp4", vip); err != nil || name != "b" {
		t.Fatalf("TCP to %s: %q, %v", vip, name, err)
	}
	events, lost := stop(nil)
	var dnat, revnat, decisions int
	for _, e := range events {
		switch x := e.Translation; {
		case x == nil:
			decisions++
		case e.Reason == maps.MetricXlateDNAT && dnat > 0: // the FIN's, closing the flow
			dnat++
			if x.CT != datapath.CTEstablished || x.To.Dst != backend {
				t.Errorf("DNAT event %v after the first: want CT Established to %s", e, backend)
			}
		case e.Reason == maps.MetricXlateDNAT:
			dnat++
			if x.CT != datapath.CTNew || x.Service != id || x.To.Dst != backend || x.From.Dst != vip || x.From.Src.Addr() != a.IP {
				t.Errorf("DNAT event %v: want CT New, service %d, %s to backend %s", e, id, vip, backend)
			}
			if steps := e.Steps(); len(steps) != 2 || steps[0] != fmt.Sprintf("CT verdict: New, revnat=%d", id) ||
				!strings.HasPrefix(steps[1], "Service backend "+backend.String()+" selected") {
				t.Errorf("DNAT steps %q", steps)
			}
		case e.Reason == maps.MetricXlateRevDNAT:
			revnat++
			if x.CT != datapath.CTReply || x.To.Src != vip || x.From.Src != backend {
				t.Errorf("reverse NAT event %v: want a reply from %s as %s", e, backend, vip)
			}
		}
	}
	// The SYN is reported (a new flow), and so are the FINs and their
	// translations (the flow closes); the data segments are not.
	if dnat < 1 || revnat < 1 || decisions < 2 {
		t.Errorf("%d DNAT, %d reverse NAT and %d decision events (%d lost): want one of each at least: %v", dnat, revnat, decisions, lost, events)
	}
	after, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	xlated, forwarded := d.Total(maps.MetricXlateDNAT).Packets, d.Total(maps.MetricForwardPeer).Packets
	if xlated < 3 || d.Total(maps.MetricXlateRevDNAT).Packets < 3 || forwarded < 2*xlated || uint64(decisions) >= forwarded {
		t.Errorf("%d DNATs, %d reverse, %d forward-peer, %d decision events: want a handshake's worth each way, and fewer events than packets",
			xlated, d.Total(maps.MetricXlateRevDNAT).Packets, forwarded, decisions)
	}
}

// flood sends n UDP datagrams from pod a to b's port 9 as fast as one
// socket can, and returns how long the sends took. b has a socket there
// that never reads: its stack drops what does not fit, quietly.
func flood(tb testing.TB, a, b *datapathtest.Pod, n int) time.Duration {
	tb.Helper()
	var sink int
	if err := b.Do(func() (err error) {
		sink, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err == nil {
			err = unix.Bind(sink, &unix.SockaddrInet4{Addr: b.IP.As4(), Port: 9})
		}
		return err
	}); err != nil {
		tb.Fatalf("flood sink: %v", err)
	}
	defer unix.Close(sink)
	var took time.Duration
	err := a.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: b.IP.As4(), Port: 9}); err != nil {
			return err
		}
		payload := make([]byte, 64)
		start := time.Now()
		for range n {
			if _, err := unix.Write(fd, payload); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
				return err
			}
		}
		took = time.Since(start)
		return nil
	})
	if err != nil {
		tb.Fatalf("flood %s → %s: %v", a.IP, b.IP, err)
	}
	return took
}

// slowReader runs a monitor of dp whose reader takes a millisecond per
// event until fast is set; stop ends it and returns the events it read.
func slowReader(tb testing.TB, dp *datapath.Datapath, fast *atomic.Bool) (mon *datapath.Monitor, stop func() []datapath.Event) {
	tb.Helper()
	mon, err := dp.OpenMonitor()
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var events []datapath.Event
	done := make(chan error, 1)
	go func() {
		done <- mon.Run(context.Background(), func(e datapath.Event) {
			if !fast.Load() {
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		})
	}()
	return mon, func() []datapath.Event {
		mon.Close()
		if err := <-done; err != nil {
			tb.Errorf("Monitor.Run: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		return events
	}
}

// TestMonitorFlood: a flood of 200000 datagrams traced to a reader that
// takes a millisecond per event: every datagram is still delivered and
// counted, the events that found the rings full are counted as lost, and
// once the reader keeps up it reports new packets again.
func TestMonitorFlood(t *testing.T) {
	_, a, b, dp := twoPods(t, datapath.Config{})
	if err := dp.SetMonitor(datapath.MonitorAll, 0); err != nil {
		t.Fatal(err)
	}
	var fast atomic.Bool
	mon, stop := slowReader(t, dp, &fast)
	before, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	const n = 200000
	took := flood(t, a, b, n)
	after, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Sub(before)[maps.FromContainer][maps.MetricForwardPeer].Packets; got != n {
		t.Errorf("%d datagrams delivered by redirect_peer, want %d", got, n)
	}
	fast.Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for mon.Lost() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	lost := mon.Lost()
	// Recovered: a ping's request is reported.
	var seen bool
	for !seen && time.Now().Before(deadline) {
		a.MustPing(t, b.IP)
		time.Sleep(300 * time.Millisecond) // past the monitor's 100 ms flush
		events := stop()
		for _, e := range events[max(0, len(events)-50):] {
			if src, dst, ok := eventAddrs(e); ok && src == a.IP && dst == b.IP && len(e.Data) > 34 && e.Data[23] == 1 /* ICMP */ {
				seen = true
			}
		}
		if !seen {
			_, stop = slowReader(t, dp, &fast)
		}
	}
	t.Logf("%d datagrams in %v (%.0f ns each), %d events lost", n, took, float64(took.Nanoseconds())/n, lost)
	if lost == 0 || !seen {
		t.Errorf("after the flood: %d events lost, ping reported: %v; want some lost and the ping reported", lost, seen)
	}
}

// BenchmarkMonitorFlood measures a pod's UDP flood to another pod on the
// node (10000 datagrams per op, one socket) with the monitor off, per
// connection (the datagrams are untracked: not reported), and tracing
// every packet to a reader that takes a millisecond per event (its rings
// full, almost every event lost).
func BenchmarkMonitorFlood(b *testing.B) {
	node := datapathtest.NewNode(b, "node")
	pa, pb := node.AddPod(b, "a", ipA), node.AddPod(b, "b", ipB)
	dp := node.NewDatapath(b, datapath.Config{})
	pa.AddEndpoint(b, dp)
	pb.AddEndpoint(b, dp)
	const perOp = 10000
	for _, bc := range []struct {
		name   string
		level  datapath.MonitorLevel
		reader bool
	}{{"off", datapath.MonitorOff, false}, {"connection", datapath.MonitorConnections, false}, {"all-slow-reader", datapath.MonitorAll, true}} {
		b.Run(bc.name, func(b *testing.B) {
			if err := dp.SetMonitor(bc.level, 0); err != nil {
				b.Fatal(err)
			}
			if bc.reader {
				var fast atomic.Bool
				_, stop := slowReader(b, dp, &fast)
				defer stop()
			}
			var took time.Duration
			for b.Loop() {
				took += flood(b, pa, pb, perOp)
			}
			b.ReportMetric(float64(took.Nanoseconds())/float64(b.N*perOp), "ns/datagram")
		})
	}
}

// TestMonitorCrossNode: a ping to a pod on another node is traced as
// forward-neigh from the sender's pod device and forward-peer from the
// receiving node's device, each counted; a ping leaving the native routing
// CIDR is reported as its masquerade (SNAT to the node's address) and its
// replies as reverse SNAT.
func TestMonitorCrossNode(t *testing.T) {
	c := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := c.cluster.Nodes[0]
	var stops []func(func(datapath.Event) bool) ([]datapath.Event, uint64)
	for _, dp := range c.dps {
		if err := dp.SetMonitor(datapath.MonitorAll, 0); err != nil {
			t.Fatal(err)
		}
		stops = append(stops, collect(t, dp))
	}
	before := metric(t, c.dps[0], maps.MetricForwardNeigh)
	if n, err := c.a.Ping(c.b.IP, 3, 5*time.Second); n != 3 || err != nil {
		t.Fatalf("ping a → b: %d of 3, %v", n, err)
	}
	if n, err := c.a.Ping(c.cluster.Gateway, 2, 5*time.Second); n != 2 || err != nil {
		t.Fatalf("ping a → %s: %d of 2, %v", c.cluster.Gateway, n, err)
	}
	events0, _ := stops[0](nil)
	events1, _ := stops[1](nil)
	count := func(events []datapath.Event, dir maps.Direction, reason maps.Metric, src, dst netip.Addr) (n int) {
		for _, e := range events {
			if s, d, ok := eventAddrs(e); ok && e.Direction == dir && e.Reason == reason && s == src && d == dst {
				n++
			}
		}
		return n
	}
	for _, x := range []struct {
		what   string
		events []datapath.Event
		dir    maps.Direction
		reason maps.Metric
		src    netip.Addr
		dst    netip.Addr
	}{
		{"requests leaving node 0", events0, maps.FromContainer, maps.MetricForwardNeigh, c.a.IP, c.b.IP},
		{"requests into b", events1, maps.FromNetdev, maps.MetricForwardPeer, c.a.IP, c.b.IP},
		{"replies into a", events0, maps.FromNetdev, maps.MetricForwardPeer, c.b.IP, c.a.IP},
	} {
		if n := count(x.events, x.dir, x.reason, x.src, x.dst); n != 3 {
			t.Errorf("%s: %d %s %s events %s → %s, want 3", x.what, n, x.dir, x.reason, x.src, x.dst)
		}
	}
	if got := metric(t, c.dps[0], maps.MetricForwardNeigh) - before; got < 3 {
		t.Errorf("node 0 counted %d forward-neigh, want the 3 requests at least", got)
	}
	var snat, revSNAT int
	for _, e := range events0 {
		x := e.Translation
		switch {
		case x == nil:
		case e.Reason == maps.MetricXlateSNAT && x.From.Src.Addr() == c.a.IP && x.To.Src.Addr() == n0.IP && x.From.Dst.Addr() == c.cluster.Gateway:
			snat++
		case e.Reason == maps.MetricXlateRevSNAT && x.From.Dst.Addr() == n0.IP && x.To.Dst.Addr() == c.a.IP && x.CT == datapath.CTReply:
			revSNAT++
		}
	}
	if snat != 2 || revSNAT != 2 {
		t.Errorf("node 0: %d SNAT and %d reverse SNAT events of a's pings to %s, want 2 each", snat, revSNAT, c.cluster.Gateway)
	}
}

// TestMonitorOneReader: a node's events go to one reader at a time (its
// perf rings are the map's): a second OpenMonitor, in this process or
// another, is refused with ErrMonitorBusy instead of silently taking the
// first one's events; once the first closes, the next one reads.
func TestMonitorOneReader(t *testing.T) {
	pin := datapathtest.PinPath(t)
	node, a, b, dp := twoPods(t, datapath.Config{PinPath: pin})
	if err := dp.SetMonitor(datapath.MonitorAll, 0); err != nil {
		t.Fatal(err)
	}
	first := collect(t, dp)
	if _, err := dp.OpenMonitor(); !errors.Is(err, datapath.ErrMonitorBusy) {
		t.Fatalf("second OpenMonitor: %v, want ErrMonitorBusy", err)
	}
	other, err := datapath.Open(datapath.Location{PinPath: pin, Netns: node.Netns}) // as another process would
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.OpenMonitor(); !errors.Is(err, datapath.ErrMonitorBusy) {
		t.Fatalf("OpenMonitor of another handle: %v, want ErrMonitorBusy", err)
	}
	a.MustPing(t, b.IP)
	if events, _ := first(nil); len(events) == 0 {
		t.Error("the first monitor got no events")
	}
	next := collect(t, other)
	a.MustPing(t, b.IP)
	if events, _ := next(nil); len(events) == 0 {
		t.Error("the monitor opened after the first closed got no events")
	}
}
