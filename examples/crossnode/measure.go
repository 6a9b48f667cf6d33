package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// phase is one exchange between the pods, from pods[src] to pods[dst].
type phase struct {
	name     string // "ping A → B"
	src, dst int
	tcp      bool // a TCP echo instead of pings
}

var phases = []phase{
	{name: "ping A → B", src: 0, dst: 1},
	{name: "ping B → A", src: 1, dst: 0},
	{name: "TCP  A → B", src: 0, dst: 1, tcp: true},
}

// tcpEchoSize is how many bytes the TCP phase echoes: several segments.
const tcpEchoSize = 8 << 10

// minPackets is the fewest packets each pod sends in phase ph: every echo
// request is answered, and a TCP echo has at least a handshake, data and
// a FIN each way.
func (ph phase) minPackets(count int) uint64 {
	if ph.tcp {
		return 3
	}
	return uint64(count)
}

// counts are a device's packet counters.
type counts struct{ rx, tx uint64 }

// The devices the demo watches, as indexes into measurement.deltas' rows:
// pod A's lxc and its node's eth0, pod B's node's eth0 and pod B's lxc.
const (
	devLxcA = iota
	devEth0A
	devEth0B
	devLxcB
	numDevs
)

// lxcOf and eth0Of are the device indexes of pod i's lxc and its node's
// eth0.
var (
	lxcOf  = [2]int{devLxcA, devLxcB}
	eth0Of = [2]int{devEth0A, devEth0B}
)

// forwardCount is what a node's netfilter FORWARD chain counted.
type forwardCount struct{ during, total uint64 }

// measurement is what the exchange moved: per phase, the deltas of the
// devices (devLxcA...); per pod's node, the FORWARD chain and the datapath's
// metric deltas over all phases.
type measurement struct {
	count   int // echo requests each way
	deltas  [][numDevs]counts
	forward [2]forwardCount
	metrics [2]*maps.MetricTable
}

// forwardRule is the comment of the counting rule in the nodes' FORWARD
// chains.
const forwardRule = "hostrouting-demo"

// measure counts the FORWARD chains of the pods' nodes, warms up, runs the
// phases and returns what moved.
func measure(ctx context.Context, out io.Writer, pods []*pod, opts options) (*measurement, error) {
	var fwd [2]*netcheck.ForwardCounter // left in place: --keep shows them
	for i, p := range pods {
		var err error
		if fwd[i], err = netcheck.CountForward(ctx, p.node.path, forwardRule); err != nil {
			return nil, fmt.Errorf("%s: %w", p.node.name, err)
		}
	}
	// One echo each way first, so that both pods know their gateway's MAC
	// and no ARP exchange shows up in the counters.
	for _, ph := range phases[:2] {
		if err := pingAll(ctx, pods[ph.src], pods[ph.dst], 1); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}

	m := &measurement{count: opts.Count}
	var fwdBefore [2]uint64
	var metricsBefore [2]*maps.MetricTable
	for i, p := range pods {
		var err error
		if fwdBefore[i], err = fwd[i].Packets(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", p.node.name, err)
		}
		if metricsBefore[i], err = p.node.dp.Metrics(); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(out, "\nPinging with %d ICMP echo requests each way, then echoing %d bytes over TCP from A to B\n(after one warm-up echo each way):\n", opts.Count, tcpEchoSize)
	for _, ph := range phases {
		before, err := devCounts(pods)
		if err != nil {
			return nil, err
		}
		src, dst := pods[ph.src], pods[ph.dst]
		if ph.tcp {
			if err := tcpEcho(ctx, src, dst); err != nil {
				return nil, fmt.Errorf("TCP %s → %s: %w", src.name, dst.name, err)
			}
		} else if err := pingAll(ctx, src, dst, opts.Count); err != nil {
			return nil, err
		}
		after, err := devCounts(pods)
		if err != nil {
			return nil, err
		}
		var d [numDevs]counts
		for j := range d {
			d[j] = counts{after[j].rx - before[j].rx, after[j].tx - before[j].tx}
		}
		m.deltas = append(m.deltas, d)
		if ph.tcp {
			fmt.Fprintf(out, "  %s: %d bytes echoed\n", ph.name, tcpEchoSize)
		} else {
			fmt.Fprintf(out, "  %s: %d/%d replies\n", ph.name, opts.Count, opts.Count)
		}
	}
	for i, p := range pods {
		total, err := fwd[i].Packets(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.node.name, err)
		}
		m.forward[i] = forwardCount{during: total - fwdBefore[i], total: total}
		after, err := p.node.dp.Metrics()
		if err != nil {
			return nil, err
		}
		m.metrics[i] = after.Sub(metricsBefore[i])
	}
	return m, nil
}

// report prints the device tables with what they show, the FORWARD
// counters, the datapath counters and every node's status and node list.
func report(out io.Writer, nodes []*node, pods []*pod, m *measurement, opts options) error {
	a, b := pods[0], pods[1]
	fmt.Fprintf(out, "\nPackets per device (netlink link statistics, deltas):\n")
	for i, p := range pods {
		cols := [2]int{lxcOf[i], eth0Of[i]}
		heads := [2]string{fmt.Sprintf("%s (pod %s)", p.hostIf, p.name), "eth0"}
		if i == 1 { // left to right as the packets of A → B go
			cols[0], cols[1] = cols[1], cols[0]
			heads[0], heads[1] = heads[1], heads[0]
		}
		fmt.Fprintf(out, "  %s %s, pod %s's node:\n", p.node.name, p.node.ip, p.name)
		fmt.Fprintf(out, "                %13s    %13s\n", heads[0], heads[1])
		fmt.Fprintf(out, "                %6s %6s    %6s %6s\n", "RX", "TX", "RX", "TX")
		for k, ph := range phases {
			d := m.deltas[k]
			fmt.Fprintf(out, "  %-12s  %6d %6d    %6d %6d\n", ph.name, d[cols[0]].rx, d[cols[0]].tx, d[cols[1]].rx, d[cols[1]].tx)
		}
	}
	if opts.Fallback {
		fmt.Fprintf(out, "What each pod sends enters its lxc (RX) and leaves its node's eth0 by bpf_fib_lookup +\n"+
			"bpf_redirect. On the other node from-netdev redirects it to the destination's lxc, which\n"+
			"transmits it across the veth into the pod (TX): every packet crosses both host-side devices,\n"+
			"still past the nodes' stacks.\n")
	} else {
		fmt.Fprintf(out, "What each pod sends enters its lxc (RX) and leaves its node's eth0 by bpf_fib_lookup +\n"+
			"bpf_redirect(_neigh); eth0 carries both directions. On the other node from-netdev puts it\n"+
			"straight into the destination pod with bpf_redirect_peer: %s and %s transmitted nothing (TX 0).\n"+
			"Each lxc sees only half of the exchange, what its own pod sends, as tcpdump on the lxc\n"+
			"devices of a kind cluster running Cilium with native routing shows.\n", a.hostIf, b.hostIf)
	}

	fmt.Fprintf(out, "\nNetfilter FORWARD chain (counting rule %q at its head):\n", forwardRule)
	for i, p := range pods {
		fmt.Fprintf(out, "  %s: %d packets during the exchange, %d since installed (warm-up included)\n",
			p.node.name, m.forward[i].during, m.forward[i].total)
	}

	fmt.Fprintf(out, "\nDatapath counters during the exchange (dp.Metrics deltas):\n")
	fmt.Fprintf(out, "  %-18s %10s %10s\n", "", pods[0].node.name, pods[1].node.name)
	for _, metric := range []maps.Metric{maps.MetricForwardFIB, maps.MetricForwardNeigh, maps.MetricForwardPeer,
		maps.MetricForwardRedirect, maps.MetricPass, maps.MetricToStack} {
		fmt.Fprintf(out, "  %-18s %10d %10d\n", metric.String()+":", m.metrics[0].Total(metric).Packets, m.metrics[1].Total(metric).Packets)
	}
	for metric := range maps.Metric(maps.MetricCount) { // the drops, should there be any
		if strings.HasPrefix(metric.String(), "drop-") && m.metrics[0].Total(metric).Packets+m.metrics[1].Total(metric).Packets > 0 {
			fmt.Fprintf(out, "  %-18s %10d %10d\n", metric.String()+":", m.metrics[0].Total(metric).Packets, m.metrics[1].Total(metric).Packets)
		}
	}
	fmt.Fprintf(out, "forward-fib: next hop resolved (a managed neighbour entry keeps it so), MACs rewritten, bpf_redirect;\n"+
		"forward-neigh: next hop unresolved, bpf_redirect_neigh resolves it; forward-peer: into a pod with\n"+
		"bpf_redirect_peer; forward-redirect: to a pod's lxc with bpf_redirect; to-netdev: left by eth0.\n")

	for _, n := range nodes {
		st, err := n.dp.Status()
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		others, err := n.dp.Nodes()
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		fmt.Fprintf(out, "\n%s:\n%sNodes:\n", n.name, st)
		for _, o := range others {
			fmt.Fprintf(out, "  %s\n", o)
		}
	}
	return nil
}

// checkClaims checks what the demo claims: every echo answered and every
// pod's sends seen on its lxc and on both eth0s; with bpf_redirect_peer the
// lxc devices transmitting nothing, with the fallback transmitting what
// arrives for their pods; the nodes' FORWARD chains untouched; the datapath
// counting the packets on the path it says they took.
func checkClaims(m *measurement, opts options) error {
	var errs []error
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("claim failed: "+format, args...))
	}
	lxc := [2]string{"lxcA", "lxcB"}
	for k, ph := range phases {
		d, least := m.deltas[k], ph.minPackets(m.count)
		for i := range 2 {
			if rx := d[lxcOf[i]].rx; rx < least {
				fail("%s: %s received %d packets, its pod sent at least %d", ph.name, lxc[i], rx, least)
			}
			if e := d[eth0Of[i]]; e.rx < least || e.tx < least {
				fail("%s: node%d's eth0 received %d and transmitted %d packets, want at least %d each way", ph.name, i+1, e.rx, e.tx, least)
			}
			tx := d[lxcOf[i]].tx
			switch {
			case !opts.Fallback && tx != 0:
				fail("%s: %s transmitted %d packets: what arrived for its pod went through the host-side veth instead of bpf_redirect_peer", ph.name, lxc[i], tx)
			case opts.Fallback && tx < least:
				fail("%s: %s transmitted only %d packets, its pod received at least %d through it", ph.name, lxc[i], tx, least)
			}
		}
	}

	// Each node receives the other's echo requests, replies and TCP
	// segments, and sends as many.
	least := 2*uint64(m.count) + phases[2].minPackets(m.count)
	for i := range 2 {
		if f := m.forward[i].during; f != 0 {
			fail("node%d's netfilter FORWARD chain counted %d packets during the exchange: the stack forwarded them", i+1, f)
		}
		c := func(metric maps.Metric) uint64 { return m.metrics[i].Total(metric).Packets }
		out := c(maps.MetricForwardFIB) + c(maps.MetricForwardNeigh)
		if out < least {
			fail("node%d's datapath forwarded %d packets to the other node (forward-fib + forward-neigh), want at least %d", i+1, out, least)
		}
		in, other := maps.MetricForwardPeer, maps.MetricForwardRedirect
		if opts.Fallback {
			in, other = other, in
			if n := c(maps.MetricForwardNeigh); n != 0 {
				fail("node%d: forward-neigh counted %d packets with bpf_redirect_neigh disabled", i+1, n)
			}
		}
		if c(in) < least || c(other) != 0 {
			fail("node%d's datapath delivered %d packets with %s and %d with %s, want at least %d and 0", i+1, c(in), in, c(other), other, least)
		}
	}
	return errors.Join(errs...)
}

// pingAll pings dst from src count times, allowing a second per echo, and
// fails unless every one is answered.
func pingAll(ctx context.Context, src, dst *pod, count int) error {
	opts := netcheck.PingOptions{Count: count, Timeout: time.Duration(count+1) * time.Second}
	if err := netcheck.PingAll(ctx, src.path, dst.ip, opts); err != nil {
		return fmt.Errorf("%s → %s: %w", src.name, dst.name, err)
	}
	return nil
}

// tcpEcho echoes tcpEchoSize bytes from src to a TCP echo server on dst's
// address, within five seconds.
func tcpEcho(ctx context.Context, src, dst *pod) error {
	srv, err := netcheck.ServeTCPEcho(dst.path, netip.AddrPortFrom(dst.ip, 0))
	if err != nil {
		return err
	}
	defer srv.Close()
	return netcheck.TCPEcho(ctx, src.path, srv.Addr(), netcheck.Payload(tcpEchoSize), 5*time.Second)
}

// devCounts reads the packet counters of the watched devices, indexed by
// devLxcA...
func devCounts(pods []*pod) ([numDevs]counts, error) {
	var c [numDevs]counts
	for i, p := range pods {
		h, err := routing.Handle(p.node.path)
		if err != nil {
			return c, err
		}
		for _, dev := range []struct {
			ifname string
			index  int
		}{{p.hostIf, lxcOf[i]}, {"eth0", eth0Of[i]}} {
			l, err := h.LinkByName(dev.ifname)
			if err != nil {
				h.Close()
				return c, fmt.Errorf("%s: read counters of %s: %w", p.node.name, dev.ifname, err)
			}
			s := l.Attrs().Statistics
			c[dev.index] = counts{s.RxPackets, s.TxPackets}
		}
		h.Close()
	}
	return c, nil
}
