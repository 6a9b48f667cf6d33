package bpf_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// bpf_fib_lookup in BPF_PROG_TEST_RUN looks up the routes, rules and
// neighbours of the network namespace of the calling thread, and takes the
// skb's device (__sk_buff.ifindex) as the input device, which must have IPv4
// forwarding on (else BPF_FIB_LKUP_RET_FWD_DISABLED). The tests of the
// forwarding path therefore run in a throwaway node namespace, newFIBNode,
// from a thread locked into it, with the sending pod on a device of that
// namespace. The machine's own namespace is never touched.

// fibNativeCIDR is the native routing CIDR of the FIB tests: the pod CIDRs
// of all nodes.
var fibNativeCIDR = netip.MustParsePrefix("10.0.0.0/8")

// MACs in the FIB node.
var (
	eth0MAC     = mac{0x02, 0x00, 0xac, 0x12, 0x00, 0x02} // the node's eth0
	eth1MAC     = mac{0x02, 0x00, 0xac, 0x12, 0x01, 0x02} // its eth1 (MTU fibEth1MTU)
	gw0MAC      = mac{0x02, 0x00, 0xac, 0x12, 0x00, 0x03} // next hop 172.18.0.3 on eth0
	gw1MAC      = mac{0x02, 0x00, 0xac, 0x12, 0x01, 0x03} // next hop 172.18.1.3 on eth1
	staleMAC    = mac{0x02, 0x00, 0xac, 0x12, 0x00, 0x05} // next hop 172.18.0.5, STALE
	reachMAC    = mac{0x02, 0x00, 0xac, 0x12, 0x00, 0x08} // next hop 172.18.0.8, REACHABLE
	onLinkMAC   = mac{0x02, 0x00, 0x0a, 0x00, 0x05, 0x0a} // 10.0.5.10, on eth0's link
	podEMAC     = mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0x28}
	podDMAC     = mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0x32}
	podLMAC     = mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0x3c}
	lxcaNodeMAC = mac{0x02, 0xfe, 0x00, 0x00, 0x00, 0x0a}
	lxceNodeMAC = mac{0x02, 0xfe, 0x00, 0x00, 0x00, 0x28}
	lxcdNodeMAC = mac{0x02, 0xfe, 0x00, 0x00, 0x00, 0x32}
)

// fibEth1MTU is the MTU of the FIB node's eth1.
const fibEth1MTU = 1280

// Destinations in the FIB node, by what bpf_fib_lookup answers for them.
var (
	dstGateway       = remoteIP                            // 10.0.2.0/24 via 172.18.0.3 dev eth0, neighbour PERMANENT
	dstNoNeighbour   = netip.MustParseAddr("10.0.3.10")    // via 172.18.0.4 dev eth0, no neighbour entry
	dstStale         = netip.MustParseAddr("10.0.4.10")    // via 172.18.0.5 dev eth0, neighbour STALE
	dstOnLink        = netip.MustParseAddr("10.0.5.10")    // 10.0.5.0/24 dev eth0 (no gateway), neighbour PERMANENT
	dstOnLinkNoNeigh = netip.MustParseAddr("10.0.5.20")    // same route, no neighbour entry
	dstIncomplete    = netip.MustParseAddr("10.0.6.10")    // via 172.18.0.6 dev eth0, neighbour INCOMPLETE
	dstFailed        = netip.MustParseAddr("10.0.7.10")    // via 172.18.0.7 dev eth0, neighbour FAILED
	dstReachable     = netip.MustParseAddr("10.0.8.10")    // via 172.18.0.8 dev eth0, neighbour REACHABLE
	dstEth1          = netip.MustParseAddr("10.0.9.10")    // via 172.18.1.3 dev eth1 (MTU 1280), PERMANENT
	dstUnreachable   = netip.MustParseAddr("10.0.10.10")   // unreachable 10.0.10.0/24
	dstBlackhole     = netip.MustParseAddr("10.0.11.10")   // blackhole 10.0.11.0/24
	dstProhibit      = netip.MustParseAddr("10.0.12.10")   // prohibit 10.0.12.0/24
	dstNoRoute       = netip.MustParseAddr("10.0.13.10")   // no route at all (no default route)
	dstNodeLocal     = gatewayIP                           // 10.0.1.1, an address of the node (on lxca)
	dstOutside       = netip.MustParseAddr("192.0.2.10")   // via 172.18.0.3 dev eth0, outside the native CIDR
	dstNowhere       = netip.MustParseAddr("198.51.100.1") // outside the native CIDR, no route
)

// fibNode is the namespace of the FIB tests and the ifindexes of its
// devices. See newFIBNode for its routes.
type fibNode struct {
	node    *datapathtest.Node
	ifindex map[string]uint32
}

// newFIBNode makes a node namespace (forwarding on, rp_filter off) laid out
// as a node of a native-routing cluster whose other nodes sit behind eth0:
//
//	eth0  veth (peer eth0-wire), 172.18.0.2/24, MAC eth0MAC
//	eth1  veth (peer eth1-wire), 172.18.1.2/24, MAC eth1MAC, MTU 1280
//	lxca  veth (peer lxca-pod), MAC lxcaNodeMAC, host side of pod A:
//	      10.0.1.1/32 (the pods' gateway) on it, route 10.0.1.10/32
//	lxce  veth (peer lxce-pod), MAC lxceNodeMAC, host side of pod E: route
//	      10.0.1.40/32
//	lxcd  veth (peer lxcd-pod), host side of pod D, IPv4 forwarding off
//
// with the routes and neighbours listed at the dst* variables, and policy
// routing: packets from 10.0.1.40 or with TOS 0x10 take table 100, where
// 10.0.2.0/24 goes via 172.18.1.3 on eth1. All of it is deleted with the
// namespace.
func newFIBNode(tb testing.TB) *fibNode {
	tb.Helper()
	n := datapathtest.NewNode(tb, "fib")
	ip := func(args ...string) { n.Exec(tb, append([]string{"ip"}, args...)...) }

	ip("link", "add", "eth0", "address", eth0MAC.String(), "type", "veth", "peer", "name", "eth0-wire")
	ip("link", "add", "eth1", "address", eth1MAC.String(), "mtu", fmt.Sprint(fibEth1MTU),
		"type", "veth", "peer", "name", "eth1-wire", "mtu", fmt.Sprint(fibEth1MTU))
	ip("link", "add", "lxca", "address", lxcaNodeMAC.String(), "type", "veth", "peer", "name", "lxca-pod")
	ip("link", "add", "lxcd", "address", lxcdNodeMAC.String(), "type", "veth", "peer", "name", "lxcd-pod")
	ip("link", "add", "lxce", "address", lxceNodeMAC.String(), "type", "veth", "peer", "name", "lxce-pod")
	for _, dev := range []string{"eth0", "eth0-wire", "eth1", "eth1-wire", "lxca", "lxca-pod", "lxcd", "lxcd-pod", "lxce", "lxce-pod"} {
		ip("link", "set", dev, "up")
	}
	n.Exec(tb, "sysctl", "-qw", "net.ipv4.conf.lxcd.forwarding=0")

	ip("addr", "add", "172.18.0.2/24", "dev", "eth0")
	ip("addr", "add", "172.18.1.2/24", "dev", "eth1")
	ip("addr", "add", gatewayIP.String()+"/32", "dev", "lxca")
	ip("route", "add", podA.ip.String()+"/32", "dev", "lxca")
	ip("route", "add", "10.0.1.40/32", "dev", "lxce")
	ip("route", "add", "10.0.1.50/32", "dev", "lxcd")

	ip("route", "add", "10.0.2.0/24", "via", "172.18.0.3", "dev", "eth0")
	ip("route", "add", "10.0.3.0/24", "via", "172.18.0.4", "dev", "eth0")
	ip("route", "add", "10.0.4.0/24", "via", "172.18.0.5", "dev", "eth0")
	ip("route", "add", "10.0.5.0/24", "dev", "eth0")
	ip("route", "add", "10.0.6.0/24", "via", "172.18.0.6", "dev", "eth0")
	ip("route", "add", "10.0.7.0/24", "via", "172.18.0.7", "dev", "eth0")
	ip("route", "add", "10.0.8.0/24", "via", "172.18.0.8", "dev", "eth0")
	ip("route", "add", "10.0.9.0/24", "via", "172.18.1.3", "dev", "eth1")
	ip("route", "add", "unreachable", "10.0.10.0/24")
	ip("route", "add", "blackhole", "10.0.11.0/24")
	ip("route", "add", "prohibit", "10.0.12.0/24")
	ip("route", "add", "192.0.2.0/24", "via", "172.18.0.3", "dev", "eth0")
	ip("route", "add", "10.0.2.0/24", "via", "172.18.1.3", "dev", "eth1", "table", "100")
	ip("rule", "add", "from", "10.0.1.40", "lookup", "100")
	ip("rule", "add", "tos", "0x10", "lookup", "100")

	ip("neigh", "add", "172.18.0.3", "lladdr", gw0MAC.String(), "nud", "permanent", "dev", "eth0")
	ip("neigh", "add", "172.18.0.5", "lladdr", staleMAC.String(), "nud", "stale", "dev", "eth0")
	ip("neigh", "add", "172.18.0.6", "nud", "incomplete", "dev", "eth0")
	ip("neigh", "add", "172.18.0.7", "nud", "failed", "dev", "eth0")
	ip("neigh", "add", "172.18.0.8", "lladdr", reachMAC.String(), "nud", "reachable", "dev", "eth0")
	ip("neigh", "add", "10.0.5.10", "lladdr", onLinkMAC.String(), "nud", "permanent", "dev", "eth0")
	ip("neigh", "add", "172.18.1.3", "lladdr", gw1MAC.String(), "nud", "permanent", "dev", "eth1")

	f := &fibNode{node: n, ifindex: make(map[string]uint32)}
	err := n.Do(func() error {
		for _, dev := range []string{"lo", "eth0", "eth1", "lxca", "lxcd", "lxce"} {
			ifi, err := net.InterfaceByName(dev)
			if err != nil {
				return err
			}
			f.ifindex[dev] = uint32(ifi.Index)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("node %s: %v", n.Name, err)
	}
	return f
}

// Pods of the FIB node: A on lxca, E on lxce, D on lxcd (forwarding off),
// L on loopback. Each sends to its device's MAC: PACKET_HOST there.
func (f *fibNode) podA() pod {
	a := podA.withIfindex(f.ifindex["lxca"])
	a.nodeMAC = lxcaNodeMAC
	return a
}

func (f *fibNode) podE() pod {
	return pod{ip: netip.MustParseAddr("10.0.1.40"), mac: podEMAC, ifindex: f.ifindex["lxce"], nodeMAC: lxceNodeMAC, id: 40}
}

func (f *fibNode) podD() pod {
	return pod{ip: netip.MustParseAddr("10.0.1.50"), mac: podDMAC, ifindex: f.ifindex["lxcd"], nodeMAC: lxcdNodeMAC, id: 50}
}

func (f *fibNode) podL() pod {
	return pod{ip: netip.MustParseAddr("10.0.1.60"), mac: podLMAC, ifindex: f.ifindex["lo"], nodeMAC: mac{}, id: 60}
}

// runIn is run with the test run made from a thread inside node's
// namespace, where ifindex must name a device.
func (d *datapath) runIn(node *datapathtest.Node, prog *ebpf.Program, ifindex uint32, frame []byte) (uint32, []byte) {
	d.tb.Helper()
	var (
		verdict uint32
		out     []byte
	)
	err := node.Do(func() error {
		var err error
		verdict, out, err = d.tryRun(prog, skbContext{Ifindex: ifindex}, frame)
		return err
	})
	if err != nil {
		d.tb.Fatalf("run %s in node %s: %v", prog, node.Name, err)
	}
	return verdict, out
}

// nativeConfig returns cfg with prefix as its native routing CIDR, in the
// byte order the C side compares (network order, as the loader sets it).
func nativeConfig(cfg bpf.HostroutingConfig, prefix netip.Prefix) bpf.HostroutingConfig {
	a := prefix.Masked().Addr().As4()
	cfg.NativeCidr = binary.NativeEndian.Uint32(a[:])
	cfg.NativeMask = binary.NativeEndian.Uint32(net.CIDRMask(prefix.Bits(), 32))
	cfg.CoarseClock = 1 // as the loader sets it on this kernel
	return cfg
}

// fibConfig is the configuration of the forwarding tests: local delivery
// with bpf_redirect_peer, bpf_fib_lookup for the native CIDR 10.0.0.0/8,
// and bpf_redirect_neigh when redirectNeigh is 1.
func fibConfig(redirectNeigh uint8) bpf.HostroutingConfig {
	return nativeConfig(bpf.HostroutingConfig{RedirectPeer: 1, FibLookup: 1, RedirectNeigh: redirectNeigh, CheckMtu: 1}, fibNativeCIDR)
}

// forEachNeighConfig runs test under fibConfig with bpf_redirect_neigh and
// without.
func forEachNeighConfig(t *testing.T, test func(t *testing.T, cfg bpf.HostroutingConfig)) {
	t.Helper()
	for _, neigh := range []uint8{1, 0} {
		t.Run(fmt.Sprintf("redirect_neigh=%d", neigh), func(t *testing.T) { test(t, fibConfig(neigh)) })
	}
}

// What bpf_fib_lookup answers for a pod's packet for another node, and so
// what from_container does with it.
type fibOutcome int

const (
	// The next hop is resolved (SUCCESS): with redirect_neigh the packet
	// goes to bpf_redirect_neigh (TTL-1, MACs left to the helper,
	// FWD_NEIGH); without, it gets the lookup's MACs and bpf_redirect
	// (TTL-1, FWD_FIB).
	fibResolved fibOutcome = iota
	// The next hop is unresolved (NO_NEIGH): bpf_redirect_neigh (TTL-1,
	// FWD_NEIGH) or, without redirect_neigh, the stack.
	fibUnresolved
	// Untouched to the stack: TO_STACK.
	fibToStack
)

// fibCase is one packet through from_container in the FIB node.
type fibCase struct {
	name   string
	from   pod
	pkt    ipv4Packet
	want   fibOutcome
	dstMAC mac // fibResolved: the next hop's MAC
	srcMAC mac // fibResolved: the egress device's MAC
}

// How from_container finishes a fibCase under a configuration.
const (
	fibViaRedirect = iota // lookup's MACs + bpf_redirect
	fibViaNeigh           // bpf_redirect_neigh
	fibViaStack           // the stack
)

// way returns how from_container finishes c under cfg.
func (c fibCase) way(cfg bpf.HostroutingConfig) int {
	switch {
	case c.want == fibToStack:
		return fibViaStack
	case cfg.RedirectNeigh != 0:
		return fibViaNeigh
	case c.want == fibResolved:
		return fibViaRedirect
	}
	return fibViaStack
}

// check runs c under cfg in f, with pods registered, and checks verdict,
// frame and every counter.
func (c fibCase) check(t *testing.T, f *fibNode, cfg bpf.HostroutingConfig, pods ...pod) {
	t.Helper()
	d := loadDatapath(t, cfg)
	d.addPods(pods...)
	frame := c.pkt.frame()

	verdict, out := d.runIn(f.node, d.objs.FromContainer, c.from.ifindex, frame)

	want := counts{from: map[uint32]uint64{c.from.ifindex: 1}}
	switch c.way(cfg) {
	case fibViaRedirect:
		if verdict != tcActRedirect {
			t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
		}
		fwd := c.pkt
		fwd.ttl--
		fwd.dstMAC, fwd.srcMAC = c.dstMAC, c.srcMAC
		checkFrame(t, "forwarded frame", out, fwd.frame())
		checkIPv4Checksum(t, out)
		if got := mac(out[0:6]); got != c.dstMAC {
			t.Errorf("destination MAC %s, want the next hop's %s", got, c.dstMAC)
		}
		if got := mac(out[6:12]); got != c.srcMAC {
			t.Errorf("source MAC %s, want the egress device's %s", got, c.srcMAC)
		}
		if got := out[14+8]; got != c.pkt.ttl-1 {
			t.Errorf("TTL %d, want %d", got, c.pkt.ttl-1)
		}
		want.metrics = map[maps.Metric]uint64{maps.MetricForwardFIB: 1}
	case fibViaNeigh:
		// bpf_redirect_neigh fills in the MACs from the neighbour
		// table: the program only takes one from the TTL.
		if verdict != tcActRedirect {
			t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
		}
		fwd := c.pkt
		fwd.ttl--
		checkFrame(t, "frame for bpf_redirect_neigh", out, fwd.frame())
		checkIPv4Checksum(t, out)
		want.metrics = map[maps.Metric]uint64{maps.MetricForwardNeigh: 1}
	case fibViaStack:
		if verdict != tcActOK {
			t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
		}
		checkFrame(t, "frame to the stack", out, frame)
		want.metrics = map[maps.Metric]uint64{maps.MetricToStack: 1}
	}
	ifindexes := make([]uint32, 0, len(pods))
	for _, p := range pods {
		ifindexes = append(ifindexes, p.ifindex)
	}
	d.checkCounts(want, len(frame), ifindexes...)
}

// TestFromContainerFIB sends pods' packets to other nodes' pods through
// from_container with bpf_fib_lookup on, in a namespace whose routes give
// every answer of the lookup, with bpf_redirect_neigh and without. With
// bpf_redirect_neigh every next hop, resolved or not, goes to the helper;
// the MACs the lookup found show the way only without it.
func TestFromContainerFIB(t *testing.T) {
	f := newFIBNode(t)
	a, e, dp, l := f.podA(), f.podE(), f.podD(), f.podL()
	pods := []pod{a, e, dp, l, podB, podC}

	to := func(from pod, dst netip.Addr, mutate func(p *ipv4Packet)) ipv4Packet {
		p := ipv4From(from, dst)
		if mutate != nil {
			mutate(&p)
		}
		return p
	}
	withLen := func(n int) func(p *ipv4Packet) {
		return func(p *ipv4Packet) { p.payload = make([]byte, n-20) }
	}
	fwd := func(name string, from pod, pkt ipv4Packet, dstMAC, srcMAC mac) fibCase {
		return fibCase{name: name, from: from, pkt: pkt, want: fibResolved, dstMAC: dstMAC, srcMAC: srcMAC}
	}
	neigh := func(name string, pkt ipv4Packet) fibCase {
		return fibCase{name: name, from: a, pkt: pkt, want: fibUnresolved}
	}
	stack := func(name string, from pod, pkt ipv4Packet) fibCase {
		return fibCase{name: name, from: from, pkt: pkt, want: fibToStack}
	}
	tcp := to(a, dstGateway, func(p *ipv4Packet) {
		p.proto = 6
		p.payload = make([]byte, 1400)
		for i := range p.payload {
			p.payload[i] = byte(i)
		}
	})
	recordRoute := make([]byte, 40)
	recordRoute[0], recordRoute[1], recordRoute[2] = 0x07, 39, 4
	recordRoute[39] = 0x01

	for _, c := range []fibCase{
		fwd("gateway resolved (permanent)", a, to(a, dstGateway, nil), gw0MAC, eth0MAC),
		fwd("gateway stale", a, to(a, dstStale, nil), staleMAC, eth0MAC),
		fwd("gateway reachable", a, to(a, dstReachable, nil), reachMAC, eth0MAC),
		fwd("on-link destination resolved", a, to(a, dstOnLink, nil), onLinkMAC, eth0MAC),
		fwd("route through eth1", a, to(a, dstEth1, nil), gw1MAC, eth1MAC),
		fwd("packet of eth1's MTU", a, to(a, dstEth1, withLen(fibEth1MTU)), gw1MAC, eth1MAC),
		fwd("policy rule by source", e, to(e, dstGateway, nil), gw1MAC, eth1MAC),
		fwd("policy rule by tos", a, to(a, dstGateway, func(p *ipv4Packet) { p.tos = 0x10 }), gw1MAC, eth1MAC),
		fwd("tcp 1400 bytes", a, tcp, gw0MAC, eth0MAC),
		fwd("first fragment", a, to(a, dstGateway, func(p *ipv4Packet) { p.fragment = ipFlagMF }), gw0MAC, eth0MAC),
		fwd("later fragment", a, to(a, dstGateway, func(p *ipv4Packet) { p.fragment = 185 }), gw0MAC, eth0MAC),
		fwd("ttl 2", a, to(a, dstGateway, func(p *ipv4Packet) { p.ttl = 2 }), gw0MAC, eth0MAC),
		fwd("ttl 255", a, to(a, dstGateway, func(p *ipv4Packet) { p.ttl = 255 }), gw0MAC, eth0MAC),
		// ip_forward=1 turns forwarding on for lo too: a pod behind
		// loopback (the benchmarks' setup) is forwarded like any.
		fwd("input device loopback", l, to(l, dstGateway, nil), gw0MAC, eth0MAC),

		neigh("gateway without neighbour entry", to(a, dstNoNeighbour, nil)),
		neigh("gateway incomplete", to(a, dstIncomplete, nil)),
		neigh("gateway failed", to(a, dstFailed, nil)),
		neigh("on-link destination unresolved", to(a, dstOnLinkNoNeigh, nil)),

		stack("unreachable route", a, to(a, dstUnreachable, nil)),
		stack("blackhole route", a, to(a, dstBlackhole, nil)),
		stack("prohibit route", a, to(a, dstProhibit, nil)),
		stack("no route", a, to(a, dstNoRoute, nil)),
		stack("address of the node", a, to(a, dstNodeLocal, nil)),
		stack("forwarding off on the input device", dp, to(dp, dstGateway, nil)),
		// The helper allows 4 bytes (a VLAN tag) beyond the MTU; past
		// that it answers FRAG_NEEDED and the stack sends the ICMP.
		stack("larger than eth1's MTU", a, to(a, dstEth1, withLen(fibEth1MTU+5))),
		stack("tcp 1400 bytes to eth1", a, to(a, dstEth1, func(p *ipv4Packet) { p.proto = 6; p.payload = tcp.payload })),
		stack("ttl 1", a, to(a, dstGateway, func(p *ipv4Packet) { p.ttl = 1 })),
		stack("ttl 0", a, to(a, dstGateway, func(p *ipv4Packet) { p.ttl = 0 })),
		// IP options are the stack's to handle, on every path.
		stack("ip options (ihl 15)", a, to(a, dstGateway, func(p *ipv4Packet) { p.options = recordRoute })),
		stack("ip options, next hop unresolved", a, to(a, dstNoNeighbour, func(p *ipv4Packet) { p.options = recordRoute })),
		// Frames not for lxca's MAC are the stack's, routable or not.
		stack("to another host's MAC", a, to(a, dstGateway, func(p *ipv4Packet) { p.dstMAC = otherHostMAC })),
		stack("to the broadcast MAC", a, to(a, dstGateway, func(p *ipv4Packet) { p.dstMAC = broadcastMAC })),
		// A route to 192.0.2.0/24 exists: a lookup would forward.
		stack("outside the native CIDR", a, to(a, dstOutside, nil)),
		stack("next hop itself (outside the native CIDR)", a, to(a, netip.MustParseAddr("172.18.0.3"), nil)),
		stack("outside the native CIDR, no route", a, to(a, dstNowhere, nil)),
	} {
		t.Run(c.name, func(t *testing.T) {
			forEachNeighConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				c.check(t, f, cfg, pods...)
			})
		})
	}
}

// TestFromContainerFIBLocalFirst checks that a local endpoint in the native
// CIDR is delivered locally with the FIB path on: the lookup is for what is
// not on this node.
func TestFromContainerFIBLocalFirst(t *testing.T) {
	f := newFIBNode(t)
	a := f.podA()
	forEachNeighConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
		d := loadDatapath(t, cfg)
		d.addPods(a, podB)
		pkt := ipv4From(a, podB.ip)
		frame := pkt.frame()
		verdict, out := d.runIn(f.node, d.objs.FromContainer, a.ifindex, frame)
		if verdict != tcActRedirect {
			t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
		}
		checkFrame(t, "delivered frame", out, pkt.forwarded(podB).frame())
		d.checkCounts(counts{
			metrics: map[maps.Metric]uint64{maps.MetricForwardPeer: 1},
			from:    map[uint32]uint64{a.ifindex: 1},
			to:      map[uint32]uint64{podB.ifindex: 1},
		}, len(frame), a.ifindex, podB.ifindex)
	})
}

// TestFromContainerFIBConfig checks that the FIB path is taken only with
// fib_lookup on and for destinations in the native CIDR, in a namespace
// where the lookup would succeed.
func TestFromContainerFIBConfig(t *testing.T) {
	f := newFIBNode(t)
	a := f.podA()
	resolved := ipv4From(a, dstGateway)
	forwarded := fibCase{pkt: resolved, want: fibResolved, dstMAC: gw0MAC, srcMAC: eth0MAC}
	toStack := fibCase{pkt: resolved, want: fibToStack}

	for _, c := range []struct {
		name string
		cfg  bpf.HostroutingConfig
		c    fibCase
	}{
		{"fib_lookup=0", nativeConfig(bpf.HostroutingConfig{RedirectPeer: 1}, fibNativeCIDR), toStack},
		{"fib_lookup=0 redirect_neigh=1", nativeConfig(bpf.HostroutingConfig{RedirectPeer: 1, RedirectNeigh: 1}, fibNativeCIDR), toStack},
		{"fib_lookup=0 redirect", nativeConfig(bpf.HostroutingConfig{}, fibNativeCIDR), toStack},
		{"no native CIDR", bpf.HostroutingConfig{RedirectPeer: 1, FibLookup: 1, RedirectNeigh: 1}, toStack},
		{"native CIDR 10.0.2.0/24", nativeConfig(fibConfig(1), netip.MustParsePrefix("10.0.2.0/24")), forwarded},
		{"native CIDR 10.0.3.0/24", nativeConfig(fibConfig(1), netip.MustParsePrefix("10.0.3.0/24")), toStack},
		{"native CIDR 10.0.2.10/32", nativeConfig(fibConfig(1), netip.MustParsePrefix("10.0.2.10/32")), forwarded},
		{"native CIDR 10.0.2.11/32", nativeConfig(fibConfig(1), netip.MustParsePrefix("10.0.2.11/32")), toStack},
		{"native CIDR 0.0.0.0/1", nativeConfig(fibConfig(1), netip.MustParsePrefix("0.0.0.0/1")), forwarded},
		{"native CIDR 128.0.0.0/1", nativeConfig(fibConfig(1), netip.MustParsePrefix("128.0.0.0/1")), toStack},
		{"redirect fallback for local delivery", nativeConfig(bpf.HostroutingConfig{FibLookup: 1}, fibNativeCIDR), forwarded},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.c.from = a
			c.c.check(t, f, c.cfg, a)
		})
	}
}
