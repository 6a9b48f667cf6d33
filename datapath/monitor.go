package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/perf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// MonitorLevel says which packets the datapath reports as events, besides
// counting them (Cilium's monitor aggregation). A higher level reports
// everything a lower one does, and more.
type MonitorLevel uint32

// Monitor levels, from none to every decision.
const (
	MonitorOff   MonitorLevel = iota // no events (a new node's level)
	MonitorDrops                     // an event per dropped packet
	// MonitorConnections reports drops, and of each connection its first
	// packets and state changes: translations that start or close a flow
	// the datapath tracks (services, masquerade), and TCP segments with
	// SYN, FIN or RST. Untracked packets of other protocols are counted,
	// not reported (Cilium's aggregation "medium").
	MonitorConnections
	MonitorAll // an event per packet and program, and per translation: a trace of every decision
)

// The levels as the programs read them in hr_monitor (enum monitor_level
// in bpf/lib/common.h). Those numbers came before the order above and
// stay: a running node's pinned hr_monitor, and the processes of other
// versions that share it, keep meaning the same level by them.
const (
	wireOff         = 0 // MONITOR_OFF
	wireDrops       = 1 // MONITOR_DROPS
	wireAll         = 2 // MONITOR_ALL
	wireConnections = 3 // MONITOR_CONNECTIONS
)

// wire returns l as the programs read it.
func (l MonitorLevel) wire() uint32 {
	switch l {
	case MonitorAll:
		return wireAll
	case MonitorConnections:
		return wireConnections
	}
	return uint32(l)
}

// monitorLevel returns the level the programs read as v.
func monitorLevel(v uint32) MonitorLevel {
	switch v {
	case wireAll:
		return MonitorAll
	case wireConnections:
		return MonitorConnections
	}
	return MonitorLevel(v)
}

// String names l as hrctl monitor does: "off", "drop", "connection", "all".
func (l MonitorLevel) String() string {
	switch l {
	case MonitorOff:
		return "off"
	case MonitorDrops:
		return "drop"
	case MonitorAll:
		return "all"
	case MonitorConnections:
		return "connection"
	}
	return fmt.Sprintf("level(%d)", uint32(l))
}

// DefaultCaptureLength is how many bytes of each packet an event carries
// unless SetMonitor says otherwise.
const DefaultCaptureLength = 128

// maxCaptureLength bounds the bytes an event carries (the kernel's limit
// on a perf record's appended data is 0xffff).
const maxCaptureLength = 0xffff

// SetMonitor sets which packets the node's programs report from now on
// (the whole node: every program reads it per packet, no reload), with the
// first capture bytes of each (0 for DefaultCaptureLength). Events cost
// nothing while the level is MonitorOff, and do not slow the datapath
// when nobody reads them: a full per-CPU ring drops events, counted as
// lost by Monitor.
func (d *Datapath) SetMonitor(level MonitorLevel, capture int) error {
	if level > MonitorAll {
		return fmt.Errorf("monitor level %d: want MonitorOff, MonitorDrops, MonitorConnections or MonitorAll", uint32(level))
	}
	if capture < 0 || capture > maxCaptureLength {
		return fmt.Errorf("monitor capture length %d: want 0 to %d bytes", capture, maxCaptureLength)
	}
	if capture == 0 {
		capture = DefaultCaptureLength
	}
	return d.read(func() error {
		cfg := bpf.HostroutingMonitorConfig{Level: level.wire(), CapLen: uint32(capture)}
		return d.node.Maps.Monitor.Put(uint32(0), cfg)
	})
}

// MonitorSettings returns the node's monitor level and capture length.
func (d *Datapath) MonitorSettings() (MonitorLevel, int, error) {
	var cfg bpf.HostroutingMonitorConfig
	err := d.read(func() error { return d.node.Maps.Monitor.Lookup(uint32(0), &cfg) })
	return monitorLevel(cfg.Level), int(cfg.CapLen), err
}

// Event is what a program did with one packet (struct monitor_event), or
// a translation of it (struct monitor_xlate), reported before the
// decision on the same packet.
type Event struct {
	// Time is when the program ran, as CLOCK_MONOTONIC.
	Time time.Duration
	// CPU is the CPU it ran on.
	CPU int
	// IfIndex is the device the program runs on: a pod's host-side
	// device, or a node device.
	IfIndex int
	// Endpoint is the endpoint the packet entered or was dropped for; 0
	// for others (forwarded to another node, to the stack), whose
	// device's endpoint, if any, IfIndex tells.
	Endpoint  uint16
	Direction maps.Direction
	// Reason is the decision: a forward path or a drop reason; or the
	// kind of translation (Reason.IsTranslation()).
	Reason maps.Metric
	// Len is the packet's length; Data its first bytes, from the
	// Ethernet header on, as the program left them (none for a
	// translation).
	Len  int
	Data []byte
	// Translation is a translation's flow, nil for a decision.
	Translation *Translation
}

// Translation is what a translation event tells of its packet's flow.
type Translation struct {
	// Protocol is the flow's: TCP, UDP or maps.ICMP (echoes, translated
	// by identifier, which stands in both ports).
	Protocol maps.Protocol
	// From and To are the packet's addresses and ports before and after.
	// For a service (MetricXlateDNAT), the backend chosen is To.Dst.
	From, To Tuple
	// CT is conntrack's verdict on the packet.
	CT CTVerdict
	// Service is the service's ID (its reverse NAT index) for service
	// translations, 0 for masquerade.
	Service uint16
}

// Tuple is a packet's source and destination.
type Tuple struct{ Src, Dst netip.AddrPort }

// String formats t as "10.0.0.5:40000 -> 10.96.0.10:80".
func (t Tuple) String() string { return t.Src.String() + " -> " + t.Dst.String() }

// CTVerdict is what conntrack made of a translated packet (enum
// ct_verdict), as Cilium's monitor prints it.
type CTVerdict uint8

// Conntrack verdicts.
const (
	CTNew         CTVerdict = 1 + iota // the flow's first packet: an entry was made
	CTEstablished                      // a packet of a known flow, the way it started
	CTReply                            // a reply of a known flow
)

// String names v: "New", "Established", "Reply".
func (v CTVerdict) String() string {
	switch v {
	case CTNew:
		return "New"
	case CTEstablished:
		return "Established"
	case CTReply:
		return "Reply"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Steps are a translation's lines in `cilium monitor -v`'s words:
// "CT verdict: New, revnat=1" and "Service backend 10.0.2.5:80 selected",
// "SNAT 10.0.0.5:40000 -> 172.18.0.2:33000", "Reverse NAT ..."; none for
// a decision.
func (e Event) Steps() []string {
	x := e.Translation
	if x == nil {
		return nil
	}
	ct := "CT verdict: " + x.CT.String()
	if x.Service != 0 {
		ct += fmt.Sprintf(", revnat=%d", x.Service)
	}
	var step string
	switch e.Reason {
	case maps.MetricXlateDNAT:
		step = fmt.Sprintf("Service backend %s selected for %s %s", x.To.Dst, x.From, x.Protocol)
		if x.To.Src != x.From.Src {
			step += fmt.Sprintf(", source %s (hairpin)", x.To.Src.Addr())
		}
	case maps.MetricXlateSNAT:
		step = fmt.Sprintf("SNAT %s -> %s to %s %s", x.From.Src, x.To.Src, x.From.Dst, x.Protocol)
	case maps.MetricXlateRevDNAT:
		step = fmt.Sprintf("Reverse NAT %s -> %s to %s %s", x.From.Src, x.To.Src, x.To.Dst, x.Protocol)
	case maps.MetricXlateRevSNAT:
		step = fmt.Sprintf("Reverse SNAT %s -> %s from %s %s", x.From.Dst, x.To.Dst, x.From.Src, x.Protocol)
	}
	return []string{ct, step}
}

// IsDrop tells whether the packet was dropped.
func (e Event) IsDrop() bool { return e.Reason.IsDrop() }

// String formats e as a line of `cilium monitor`, without the packet:
// "xx drop (drop-spoofed) from-container ifindex 5, 98 bytes",
// "-> forward-peer from-container ifindex 5, 98 bytes" or, for a
// translation, "~~ xlate-dnat from-container ifindex 5: CT verdict: New,
// revnat=1; Service backend 10.0.0.21:8080 selected for ...".
func (e Event) String() string {
	if e.Translation != nil {
		return fmt.Sprintf("~~ %s %s ifindex %d: %s", e.Reason, e.Direction, e.IfIndex, strings.Join(e.Steps(), "; "))
	}
	if e.IsDrop() {
		return fmt.Sprintf("xx drop (%s) %s ifindex %d, %d bytes", e.Reason, e.Direction, e.IfIndex, e.Len)
	}
	return fmt.Sprintf("-> %s %s ifindex %d, %d bytes", e.Reason, e.Direction, e.IfIndex, e.Len)
}

// Sizes of struct monitor_event and struct monitor_xlate, and the values
// of enum event_type.
const (
	eventHeaderLen = 24
	eventXlateLen  = 52
	eventDecision  = 0
	eventXlate     = 1
)

// parseEvent decodes a perf record: the struct, then the packet's bytes.
func parseEvent(raw []byte, cpu int) (Event, error) {
	if len(raw) < eventHeaderLen {
		return Event{}, fmt.Errorf("monitor event of %d bytes, want at least %d", len(raw), eventHeaderLen)
	}
	e := Event{
		Time:      time.Duration(binary.NativeEndian.Uint64(raw[0:])),
		CPU:       cpu,
		IfIndex:   int(binary.NativeEndian.Uint32(raw[8:])),
		Len:       int(binary.NativeEndian.Uint32(raw[12:])),
		Endpoint:  binary.NativeEndian.Uint16(raw[18:]),
		Direction: maps.Direction(raw[20]),
		Reason:    maps.Metric(raw[21]),
	}
	switch raw[22] {
	case eventDecision:
	case eventXlate:
		if len(raw) < eventXlateLen {
			return Event{}, fmt.Errorf("translation event of %d bytes, want %d", len(raw), eventXlateLen)
		}
		e.Translation = &Translation{
			Service: binary.NativeEndian.Uint16(raw[24:]), Protocol: maps.Protocol(raw[26]), CT: CTVerdict(raw[27]),
			From: parseTuple(raw[28:40]), To: parseTuple(raw[40:52]),
		}
		return e, nil
	default:
		return Event{}, fmt.Errorf("monitor event of type %d", raw[22])
	}
	capLen := int(binary.NativeEndian.Uint16(raw[16:]))
	if capLen > len(raw)-eventHeaderLen {
		return Event{}, fmt.Errorf("monitor event carries %d packet bytes, says %d", len(raw)-eventHeaderLen, capLen)
	}
	e.Data = raw[eventHeaderLen : eventHeaderLen+capLen]
	return e, nil
}

// parseTuple decodes a struct tuple4: addresses and ports in network order.
func parseTuple(b []byte) Tuple {
	src, dst := netip.AddrFrom4([4]byte(b[0:4])), netip.AddrFrom4([4]byte(b[4:8]))
	return Tuple{
		Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[8:])),
		Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[10:])),
	}
}

// Monitor reads a node's events (OpenMonitor). Its methods may be called
// from several goroutines.
type Monitor struct {
	rd    *perf.Reader
	claim *instance.Lock // the node's events are this monitor's
	lost  atomic.Uint64
	// state is hr_monitor_state: the events the programs skipped while
	// a ring was full, skipped0 their count when the monitor opened,
	// lastSkipped the last count read.
	state       *ebpf.Map
	skipped0    uint64
	lastSkipped atomic.Uint64

	closeOnce sync.Once
	closeErr  error
}

// ErrMonitorBusy is returned by OpenMonitor while another monitor, in
// this process or another, reads the node's events.
var ErrMonitorBusy = loader.ErrMonitorBusy

// OpenMonitor starts reading the node's events: every event reported from
// its return on reaches Run. SetMonitor says which packets are reported;
// OpenMonitor does not change it. A node's events go to one monitor at a
// time (a perf ring per CPU): while one is open, OpenMonitor fails with
// ErrMonitorBusy; an agent hands its events on to whoever wants them.
func (d *Datapath) OpenMonitor() (*Monitor, error) {
	m := &Monitor{}
	err := d.read(func() (err error) {
		if m.claim, err = d.node.ClaimEvents(); err != nil {
			return err
		}
		if m.state, err = d.node.Maps.MonitorState.Clone(); err != nil {
			m.claim.Unlock()
			return err
		}
		m.skipped0 = m.skipped()
		m.lastSkipped.Store(m.skipped0)
		// Woken per 16 pages of events, not per event (a wakeup per
		// event costs the sending CPU microseconds); Run flushes what
		// is below that every monitorFlush.
		m.rd, err = perf.NewReaderWithOptions(d.node.Maps.Events, 64*os.Getpagesize(),
			perf.ReaderOptions{Watermark: 16 * os.Getpagesize()})
		if err != nil {
			m.state.Close()
			m.claim.Unlock()
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	return m, nil
}

// skipped sums the events the programs did not send while backing off
// after a full ring, over all CPUs; the last sum read once the monitor is
// closed.
func (m *Monitor) skipped() uint64 {
	var per []bpf.HostroutingMonitorState
	if err := m.state.Lookup(uint32(0), &per); err != nil {
		return m.lastSkipped.Load()
	}
	var n uint64
	for _, s := range per {
		n += s.Skipped
	}
	m.lastSkipped.Store(n)
	return n
}

// Run calls fn with each event (from Run's goroutine; e.Data is fn's to
// keep), at most monitorFlush (100 ms) after the packet, until ctx ends
// or the monitor is closed, which end it without an error.
func (m *Monitor) Run(ctx context.Context, fn func(Event)) error {
	stop := context.AfterFunc(ctx, func() { m.rd.Close() })
	defer stop()
	flush := time.NewTicker(monitorFlush)
	defer flush.Stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-flush.C:
				m.rd.Flush()
			case <-done:
				return
			}
		}
	}()
	for {
		rec, err := m.rd.Read()
		switch {
		case errors.Is(err, perf.ErrClosed):
			return nil
		case errors.Is(err, perf.ErrFlushed):
			continue
		case err != nil:
			return fmt.Errorf("monitor: %w", err)
		}
		m.lost.Add(rec.LostSamples)
		if len(rec.RawSample) == 0 {
			continue
		}
		e, err := parseEvent(rec.RawSample, rec.CPU)
		if err != nil {
			return fmt.Errorf("monitor: %w", err)
		}
		fn(e)
	}
}

// monitorFlush bounds how long an event waits in its ring for a reader.
const monitorFlush = 100 * time.Millisecond

// Lost returns how many events were lost since the monitor opened because
// a reader fell behind (the datapath never waits for one): those its
// rings had no room for, and those the programs did not try to send while
// a ring was full (they back off for 100 µs per CPU: a failed send costs
// more than the program's forwarding of the packet).
func (m *Monitor) Lost() uint64 { return m.lost.Load() + m.skipped() - m.skipped0 }

// Close stops the monitor; a Run returns.
func (m *Monitor) Close() error {
	m.closeOnce.Do(func() {
		m.skipped() // Lost goes on answering
		m.closeErr = errors.Join(m.rd.Close(), m.state.Close(), m.claim.Unlock())
	})
	return m.closeErr
}
