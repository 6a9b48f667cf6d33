package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
)

// monitorOptions are monitor's flags.
type monitorOptions struct {
	typ     string // all, drop or trace
	perConn bool   // --aggregate connection
	from    uint   // endpoint ID, 0 for every device
	pcap    string // file to write the packets to
	capture int    // bytes of each packet
	count   int    // events to print before exiting, 0 for no limit
	verbose bool
}

func monitorFlags(fs *flag.FlagSet, o *options) {
	o.mon.typ = "all"
	fs.StringVar(&o.mon.typ, "type", "all", "which events: `all`, drop or trace")
	fs.UintVar(&o.mon.from, "from", 0, "only events on the device of endpoint `ID`")
	fs.StringVar(&o.mon.pcap, "pcap", "", "also write the events' packets to `FILE` (pcap, as tcpdump -r reads)")
	fs.IntVar(&o.mon.capture, "capture", datapath.DefaultCaptureLength, "bytes of each packet the events carry")
	fs.IntVar(&o.mon.count, "count", 0, "exit after `N` events (0: until interrupted)")
	fs.BoolVar(&o.mon.verbose, "v", false, "add conntrack and load-balancing steps, each event's time, CPU and length, and a hex dump of its bytes")
	fs.Func("aggregate", "`none` (an event per packet) or connection (per connection its first packets and state changes, and drops)",
		func(v string) error {
			switch v {
			case "none", "connection":
				o.mon.perConn = v == "connection"
				return nil
			}
			return fmt.Errorf("want none or connection")
		})
}

func monitorCheck(o *options) error {
	switch {
	case o.mon.typ != "all" && o.mon.typ != "drop" && o.mon.typ != "trace":
		return fmt.Errorf("--type %q: want all, drop or trace", o.mon.typ)
	case o.mon.capture < 1 || o.mon.capture > 0xffff:
		return fmt.Errorf("--capture %d: want 1 to 65535 bytes", o.mon.capture)
	case o.mon.count < 0:
		return fmt.Errorf("--count %d: want 0 or more", o.mon.count)
	}
	return nil
}

// monitor turns the node's monitor on for the events asked for, prints
// them until interrupted (or --count), and puts the node's monitor back
// as it was.
func monitor(dp *datapath.Datapath, opts options, w io.Writer) error {
	o := opts.mon
	var ifindex int
	if o.from != 0 {
		eps, err := dp.Endpoints()
		if err != nil {
			return err
		}
		for _, ep := range eps {
			if uint(ep.ID) == o.from {
				ifindex = ep.IfIndex
			}
		}
		if ifindex == 0 {
			return fmt.Errorf("no endpoint with ID %d (see hrctl endpoint list)", o.from)
		}
	}
	endpoints, err := newEndpointIndex(dp)
	if err != nil {
		return err
	}
	var pcap *pcapgo.Writer
	if o.pcap != "" {
		f, err := os.Create(o.pcap)
		if err != nil {
			return err
		}
		defer f.Close()
		pcap = pcapgo.NewWriter(f)
		if err := pcap.WriteFileHeader(uint32(o.capture), layers.LinkTypeEthernet); err != nil {
			return err
		}
	}
	prevLevel, prevCapture, err := dp.MonitorSettings()
	if err != nil {
		return err
	}
	level := datapath.MonitorAll
	switch {
	case o.typ == "drop":
		level = datapath.MonitorDrops
	case o.perConn:
		level = datapath.MonitorConnections
	}
	mon, err := dp.OpenMonitor()
	if err != nil {
		return err
	}
	defer mon.Close()
	if err := dp.SetMonitor(level, o.capture); err != nil {
		return err
	}
	defer dp.SetMonitor(prevLevel, prevCapture)

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	boot := bootTime()
	var printed int
	var werr error
	err = mon.Run(ctx, func(e datapath.Event) {
		if (o.typ == "trace" && e.IsDrop()) || (o.typ == "drop" && !e.IsDrop()) || (ifindex != 0 && e.IfIndex != ifindex) ||
			(e.Translation != nil && !o.verbose && !opts.json) || werr != nil {
			return
		}
		if opts.json {
			ej := eventJSON{Event: e, Endpoint: endpoints.of(e), Drop: e.IsDrop(),
				Direction: e.Direction.String(), Reason: e.Reason.String(), Steps: e.Steps()}
			if e.Translation == nil {
				ej.Summary = summary(e.Data)
			}
			werr = json.NewEncoder(w).Encode(ej)
		} else {
			werr = printEvent(w, e, endpoints.of(e), o.verbose)
		}
		if pcap != nil && werr == nil && e.Translation == nil {
			werr = pcap.WritePacket(gopacket.CaptureInfo{Timestamp: boot.Add(e.Time), CaptureLength: len(e.Data),
				Length: max(e.Len, len(e.Data))}, e.Data)
		}
		if printed++; o.count > 0 && printed == o.count {
			cancel()
		}
	})
	if lost := mon.Lost(); lost > 0 {
		fmt.Fprintf(w, "%d events lost\n", lost)
	}
	return errors.Join(err, werr)
}

// eventJSON is an event as monitor --json prints it, one object per
// line: its packet bytes in base64 (Data), and what they hold (Summary);
// a translation's flow (Translation) and its -v lines (Steps).
type eventJSON struct {
	datapath.Event
	Endpoint          uint16 // the endpoint whose device it is, or on a node device the one it is for; 0 for none
	Drop              bool
	Direction, Reason string
	Summary           string   `json:",omitempty"`
	Steps             []string `json:",omitempty"`
}

// endpointIndex finds the node's endpoints by host device and address.
type endpointIndex struct {
	byDevice map[int]uint16
	byIP     map[netip.Addr]uint16
}

func newEndpointIndex(dp *datapath.Datapath) (endpointIndex, error) {
	eps, err := dp.Endpoints()
	if err != nil {
		return endpointIndex{}, err
	}
	x := endpointIndex{byDevice: map[int]uint16{}, byIP: map[netip.Addr]uint16{}}
	for _, ep := range eps {
		x.byDevice[ep.IfIndex] = ep.ID
		x.byIP[ep.IP] = ep.ID
	}
	return x, nil
}

// of returns the endpoint an event is about: the one it names (the packet
// entered it or was dropped for it), else the one whose device the program
// ran on, else the one its IPv4 packet is for.
func (x endpointIndex) of(e datapath.Event) uint16 {
	if e.Endpoint != 0 {
		return e.Endpoint
	}
	if id, ok := x.byDevice[e.IfIndex]; ok {
		return id
	}
	if len(e.Data) >= 34 && e.Data[12] == 0x08 && e.Data[13] == 0x00 {
		return x.byIP[netip.AddrFrom4([4]byte(e.Data[30:34]))]
	}
	return 0
}

// bootTime is when CLOCK_MONOTONIC was zero, for the events' times.
func bootTime() time.Time {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now().Add(-time.Duration(ts.Nano()))
}

// printEvent prints e as `cilium monitor` does:
//
//	-> endpoint 12 flow 10.0.0.10 -> 10.0.0.11 ICMPv4 EchoRequest, forward-peer (from-container, ifindex 5)
//	xx drop (drop-spoofed) flow 10.0.0.99:9 -> 10.0.0.11:9 UDP to endpoint 12, ifindex 5 (from-container)
//
// and with verbose, a translation's steps before the packet's decision:
//
//	CT verdict: New, revnat=1
//	Service backend 10.0.1.5:8080 selected for 10.0.0.10:40000 -> 10.96.0.10:80 TCP
func printEvent(w io.Writer, e datapath.Event, endpoint uint16, verbose bool) error {
	var err error
	if e.Translation != nil {
		_, err = fmt.Fprintf(w, "%s\n", strings.Join(e.Steps(), "\n"))
		return err
	}
	if e.IsDrop() {
		_, err = fmt.Fprintf(w, "xx drop (%s) flow %s to endpoint %d, ifindex %d (%s)\n", e.Reason, summary(e.Data), endpoint, e.IfIndex, e.Direction)
	} else {
		_, err = fmt.Fprintf(w, "-> endpoint %d flow %s, %s (%s, ifindex %d)\n", endpoint, summary(e.Data), e.Reason, e.Direction, e.IfIndex)
	}
	if err == nil && verbose {
		_, err = fmt.Fprintf(w, "   time %v cpu %d length %d captured %d\n%s", e.Time, e.CPU, e.Len, len(e.Data), hexDump(e.Data))
	}
	return err
}

// summary describes a captured frame: "10.0.0.10 -> 10.0.0.11 ICMPv4
// EchoRequest", "10.0.0.10:40000 -> 10.96.0.10:80 TCP SYN".
func summary(data []byte) string {
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	if arp, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		op := "request"
		if arp.Operation == layers.ARPReply {
			op = "reply"
		}
		return fmt.Sprintf("ARP %s %v -> %v", op, net.IP(arp.SourceProtAddress), net.IP(arp.DstProtAddress))
	}
	nl := p.NetworkLayer()
	if nl == nil {
		return "unknown frame"
	}
	src, dst := nl.NetworkFlow().Endpoints()
	switch l := p.TransportLayer().(type) {
	case *layers.TCP:
		var flags []string
		for _, f := range []struct {
			set  bool
			name string
		}{{l.SYN, "SYN"}, {l.ACK, "ACK"}, {l.FIN, "FIN"}, {l.RST, "RST"}, {l.PSH, "PSH"}} {
			if f.set {
				flags = append(flags, f.name)
			}
		}
		return fmt.Sprintf("%v:%d -> %v:%d TCP %s", src, l.SrcPort, dst, l.DstPort, strings.Join(flags, " "))
	case *layers.UDP:
		return fmt.Sprintf("%v:%d -> %v:%d UDP", src, l.SrcPort, dst, l.DstPort)
	}
	if icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		return fmt.Sprintf("%v -> %v ICMPv4 %s", src, dst, icmp.TypeCode)
	}
	if icmp, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
		return fmt.Sprintf("%v -> %v ICMPv6 %s", src, dst, icmp.TypeCode)
	}
	return fmt.Sprintf("%v -> %v", src, dst)
}

// hexDump formats data 16 bytes to a line, indented.
func hexDump(data []byte) string {
	var b strings.Builder
	for i := 0; i < len(data); i += 16 {
		fmt.Fprintf(&b, "   %04x  % x\n", i, data[i:min(i+16, len(data))])
	}
	return b.String()
}
