package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/perf"

	"github.com/hostrouting/hostrouting/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// MonitorLevel says which packets the datapath reports as events, besides
// counting them (Cilium's monitor aggregation, without per-connection).
type MonitorLevel uint32

// Monitor levels.
const (
	MonitorOff   MonitorLevel = iota // no events (a new node's level)
	MonitorDrops                     // an event per dropped packet
	MonitorAll                       // an event per packet and program: a trace of every decision
)

// String names l as hrctl monitor's --type does: "off", "drop", "all".
func (l MonitorLevel) String() string {
	switch l {
	case MonitorOff:
		return "off"
	case MonitorDrops:
		return "drop"
	case MonitorAll:
		return "all"
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
		return fmt.Errorf("monitor level %d: want MonitorOff, MonitorDrops or MonitorAll", uint32(level))
	}
	if capture < 0 || capture > maxCaptureLength {
		return fmt.Errorf("monitor capture length %d: want 0 to %d bytes", capture, maxCaptureLength)
	}
	if capture == 0 {
		capture = DefaultCaptureLength
	}
	return d.read(func() error {
		cfg := bpf.HostroutingMonitorConfig{Level: uint32(level), CapLen: uint32(capture)}
		return d.node.Maps.Monitor.Put(uint32(0), cfg)
	})
}

// MonitorSettings returns the node's monitor level and capture length.
func (d *Datapath) MonitorSettings() (MonitorLevel, int, error) {
	var cfg bpf.HostroutingMonitorConfig
	err := d.read(func() error { return d.node.Maps.Monitor.Lookup(uint32(0), &cfg) })
	return MonitorLevel(cfg.Level), int(cfg.CapLen), err
}

// Event is what a program did with one packet (struct monitor_event).
type Event struct {
	// Time is when the program ran, as CLOCK_MONOTONIC.
	Time time.Duration
	// CPU is the CPU it ran on.
	CPU int
	// IfIndex is the device the program runs on: a pod's host-side
	// device, or a node device.
	IfIndex   int
	Direction maps.Direction
	// Reason is the decision: a forward path or a drop reason.
	Reason maps.Metric
	// Len is the packet's length; Data its first bytes, from the
	// Ethernet header on, as the program left them.
	Len  int
	Data []byte
}

// IsDrop tells whether the packet was dropped.
func (e Event) IsDrop() bool { return e.Reason.IsDrop() }

// String formats e as a line of `cilium monitor`, without the packet:
// "xx drop (drop-spoofed) from-container ifindex 5, 98 bytes" or
// "-> forward-peer from-container ifindex 5, 98 bytes".
func (e Event) String() string {
	if e.IsDrop() {
		return fmt.Sprintf("xx drop (%s) %s ifindex %d, %d bytes", e.Reason, e.Direction, e.IfIndex, e.Len)
	}
	return fmt.Sprintf("-> %s %s ifindex %d, %d bytes", e.Reason, e.Direction, e.IfIndex, e.Len)
}

// eventHeaderLen is sizeof(struct monitor_event).
const eventHeaderLen = 24

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
		Direction: maps.Direction(raw[20]),
		Reason:    maps.Metric(raw[21]),
	}
	capLen := int(binary.NativeEndian.Uint32(raw[16:]))
	if capLen > len(raw)-eventHeaderLen {
		return Event{}, fmt.Errorf("monitor event carries %d packet bytes, says %d", len(raw)-eventHeaderLen, capLen)
	}
	e.Data = raw[eventHeaderLen : eventHeaderLen+capLen]
	return e, nil
}

// Monitor reads a node's events (OpenMonitor). Its methods may be called
// from several goroutines.
type Monitor struct {
	rd   *perf.Reader
	lost atomic.Uint64
}

// OpenMonitor starts reading the node's events: every event reported from
// its return on reaches Run. SetMonitor says which packets are reported;
// OpenMonitor does not change it. Several monitors each get every event.
func (d *Datapath) OpenMonitor() (*Monitor, error) {
	var rd *perf.Reader
	err := d.read(func() (err error) {
		// Woken per 16 pages of events, not per event (a wakeup per
		// event costs the sending CPU microseconds); Run flushes what
		// is below that every monitorFlush.
		rd, err = perf.NewReaderWithOptions(d.node.Maps.Events, 64*os.Getpagesize(),
			perf.ReaderOptions{Watermark: 16 * os.Getpagesize()})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	return &Monitor{rd: rd}, nil
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

// Lost returns how many events the rings dropped because this monitor
// fell behind (the datapath never waits for a reader).
func (m *Monitor) Lost() uint64 { return m.lost.Load() }

// Close stops the monitor; a Run returns.
func (m *Monitor) Close() error { return m.rd.Close() }
