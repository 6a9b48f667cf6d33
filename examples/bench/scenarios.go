package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// The scenarios.
const (
	scenarioSameNode  = "same-node"
	scenarioCrossNode = "cross-node"
	scenarioService   = "service"
)

// scenario is a topology measured in several modes.
type scenario struct {
	Name      string
	Title     string
	Modes     []string          // in the order each round runs them
	ModeNames map[string]string // as the list under the table explains them
	Labels    map[string]string // as the chart's legend names them
	Refs      []string          // the modes the table's ratio columns divide by
	build     func(l *lab, mode string, services int) (*setup, error)
}

var scenarios = []*scenario{
	{
		Name:  scenarioSameNode,
		Title: "Same-node pod → pod",
		Modes: []string{modeBPF, modeFallback, modeLegacy, modeLimit},
		ModeNames: map[string]string{
			modeBPF:      "bpf: host routing, bpf_redirect_peer",
			modeFallback: "fallback: bpf_redirect via the peer's host veth",
			modeLegacy:   "legacy: node's stack, {services}-service iptables + conntrack",
			modeLimit:    "limit: direct veth pair between the pods",
		},
		Labels: map[string]string{modeLimit: "limit (direct veth)"},
		Refs:   []string{modeLimit, modeLegacy},
		build:  buildSameNode,
	},
	{
		Name:  scenarioCrossNode,
		Title: "Cross-node pod → pod",
		Modes: []string{modeBPF, modeFallback, modeLegacy, modeLimit},
		ModeNames: map[string]string{
			modeBPF:      "bpf: host routing, bpf_fib_lookup + bpf_redirect_neigh, bpf_redirect_peer",
			modeFallback: "fallback: bpf_fib_lookup + MACs + bpf_redirect (no bpf_redirect_neigh), bpf_redirect_peer",
			modeLegacy:   "legacy: nodes' stacks and routes, {services}-service iptables + conntrack",
			modeLimit:    "limit: node-to-node over the same wire",
		},
		Labels: map[string]string{modeLimit: "limit (node-to-node)"},
		Refs:   []string{modeLimit, modeLegacy},
		build:  buildCrossNode,
	},
	serviceScenario,
}

// modeNames returns the table names of the scenario's modes, with the
// number of services legacy and kube-proxy run with.
func (sc *scenario) modeNames(services int) map[string]string {
	m := map[string]string{}
	for k, v := range sc.ModeNames {
		m[k] = strings.ReplaceAll(v, "{services}", strconv.Itoa(services))
	}
	return m
}

// buildSameNode makes one node with pods A (10.0.0.10) and B (10.0.0.11)
// for mode, or for the limit just the two pods joined by a veth pair.
// Namespaces are named same-<mode>-node, -a and -b.
func buildSameNode(l *lab, mode string, services int) (*setup, error) {
	s := &setup{Scenario: scenarioSameNode, Mode: mode}
	pp, err := l.podPair("same-"+mode, mode == modeLimit)
	if err != nil {
		return nil, err
	}
	s.Client, s.Server = pp.a, pp.b
	switch mode {
	case modeLimit:
	case modeBPF, modeFallback:
		dp, pin, err := l.newDatapath(pp.node, "same-"+mode, datapath.Config{
			Disable:               loader.Disable{RedirectPeer: mode == modeFallback},
			RequireBPFHostRouting: mode == modeBPF,
		})
		if err != nil {
			return nil, err
		}
		if err := pp.addEndpoints(dp); err != nil {
			return nil, err
		}
		s.dps, s.Pins = []*datapath.Datapath{dp}, []string{pin}
	case modeLegacy:
		if err := l.loadKubeProxy(pp.node, services, nil); err != nil {
			return nil, err
		}
		s.ctNodes = []peer{pp.node}
	default:
		return nil, fmt.Errorf("same-node has no mode %q", mode)
	}
	return s, nil
}

// podPair is a node with pods A (10.0.0.10) and B (10.0.0.11), or, for a
// limit, the two pods alone, joined by a veth pair.
type podPair struct {
	node, a, b peer          // no node for a limit
	va, vb     *routing.Veth // the pods' veths to the node
}

// podPair makes the namespaces tag-node, tag-a and tag-b of a podPair,
// or only tag-a and tag-b for a limit, and waits for their devices.
func (l *lab) podPair(tag string, limit bool) (podPair, error) {
	ipA, ipB := netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.0.11")
	var pp podPair
	if limit {
		a, err := l.netns(tag + "-a")
		if err != nil {
			return pp, err
		}
		b, err := l.netns(tag + "-b")
		if err != nil {
			return pp, err
		}
		if err := l.vethBetween(a, b, netip.PrefixFrom(ipA, 24), netip.PrefixFrom(ipB, 24)); err != nil {
			return pp, err
		}
		if err := l.waitUp([2]string{a.Path, "eth0"}, [2]string{b.Path, "eth0"}); err != nil {
			return pp, err
		}
		a.IP, b.IP = ipA, ipB
		pp.a, pp.b = a, b
		return pp, nil
	}

	node, err := l.node(tag + "-node")
	if err != nil {
		return pp, err
	}
	a, va, err := l.pod(node, tag+"-a", "lxcA", ipA)
	if err != nil {
		return pp, err
	}
	b, vb, err := l.pod(node, tag+"-b", "lxcB", ipB)
	if err != nil {
		return pp, err
	}
	if err := l.waitUp([2]string{node.Path, "lxcA"}, [2]string{node.Path, "lxcB"},
		[2]string{a.Path, va.PodIfName}, [2]string{b.Path, vb.PodIfName}); err != nil {
		return pp, err
	}
	return podPair{node: node, a: a, b: b, va: va, vb: vb}, nil
}

// addEndpoints adds both pods to the node's datapath dp.
func (pp podPair) addEndpoints(dp *datapath.Datapath) error {
	for _, p := range []struct {
		ifName string
		ip     netip.Addr
		v      *routing.Veth
	}{{"lxcA", pp.a.IP, pp.va}, {"lxcB", pp.b.IP, pp.vb}} {
		if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: p.ifName, IP: p.ip, MAC: p.v.PodMAC}); err != nil {
			return err
		}
	}
	return nil
}

// crossNodeAddrs are each cross-node mode's nodes' addresses on the shared
// wire and their pod CIDRs: each mode is a two-node cluster of its own.
var crossNodeAddrs = map[string]struct {
	nodes [2]netip.Addr
	pods  [2]netip.Prefix
}{
	modeBPF:    {[2]netip.Addr{netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("172.18.0.3")}, [2]netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.1.0/24")}},
	modeLegacy: {[2]netip.Addr{netip.MustParseAddr("172.18.0.4"), netip.MustParseAddr("172.18.0.5")}, [2]netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.1.1.0/24")}},
	modeLimit:  {[2]netip.Addr{netip.MustParseAddr("172.18.0.6"), netip.MustParseAddr("172.18.0.7")}, [2]netip.Prefix{}},
	modeFallback: {[2]netip.Addr{netip.MustParseAddr("172.18.0.8"), netip.MustParseAddr("172.18.0.9")},
		[2]netip.Prefix{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("10.2.1.0/24")}},
}

// buildCrossNode makes two nodes on the scenario's wire (made once, shared
// by the modes) and a pod on each, A → B; the limit has no pods and runs
// node1 → node2. Namespaces are named cross-wire and cross-<mode>-node1,
// -node2, -a, -b.
func buildCrossNode(l *lab, mode string, services int) (*setup, error) {
	addrs, ok := crossNodeAddrs[mode]
	if !ok {
		return nil, fmt.Errorf("cross-node has no mode %q", mode)
	}
	if l.wire == nil {
		w, err := l.newWire()
		if err != nil {
			return nil, err
		}
		l.wire = w
	}
	tag := "cross-" + mode
	var nodes [2]peer
	for i := range nodes {
		n, err := l.wire.AddNode(l.ctx, topology.NodeOptions{
			Name: fmt.Sprintf("%s-node%d", mode, i+1), Port: fmt.Sprintf("veth-%s%d", mode, i+1), IP: addrs.nodes[i],
		})
		if err != nil {
			return nil, err
		}
		nodes[i] = peer{NetnsName: n.NetnsName, Path: n.Netns, IP: n.IP}
	}
	if err := l.wire.WaitUp(l.ctx); err != nil {
		return nil, err
	}
	s := &setup{Scenario: scenarioCrossNode, Mode: mode}
	if mode == modeLimit {
		s.Client, s.Server = nodes[0], nodes[1]
		return s, nil
	}

	var pods [2]peer
	var veths [2]*routing.Veth
	for i, name := range []string{"a", "b"} {
		a4 := addrs.pods[i].Addr().As4()
		a4[3] = 10
		ip := netip.AddrFrom4(a4)
		hostIf := []string{"lxcA", "lxcB"}[i]
		p, v, err := l.pod(nodes[i], tag+"-"+name, hostIf, ip)
		if err != nil {
			return nil, err
		}
		if err := l.waitUp([2]string{nodes[i].Path, hostIf}, [2]string{p.Path, v.PodIfName}); err != nil {
			return nil, err
		}
		pods[i], veths[i] = p, v
	}
	s.Client, s.Server = pods[0], pods[1]

	switch mode {
	case modeBPF, modeFallback:
		for i, n := range nodes {
			dp, pin, err := l.newDatapath(n, fmt.Sprintf("%s-node%d", tag, i+1), datapath.Config{
				Devices:               []string{"eth0"},
				NativeRoutingCIDR:     nativeRouting,
				RequireBPFHostRouting: mode == modeBPF,
				Disable:               loader.Disable{RedirectNeigh: mode == modeFallback},
			})
			if err != nil {
				return nil, err
			}
			s.dps, s.Pins = append(s.dps, dp), append(s.Pins, pin)
		}
		for i, dp := range s.dps {
			o := 1 - i
			if err := dp.UpsertNode(datapath.Node{Name: fmt.Sprintf("node%d", o+1), IP: addrs.nodes[o], PodCIDRs: []netip.Prefix{addrs.pods[o]}}); err != nil {
				return nil, fmt.Errorf("node%d: %w", i+1, err)
			}
			hostIf := []string{"lxcA", "lxcB"}[i]
			if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: hostIf, IP: pods[i].IP, MAC: veths[i].PodMAC}); err != nil {
				return nil, fmt.Errorf("node%d: %w", i+1, err)
			}
		}
	case modeLegacy:
		for i, n := range nodes {
			o := 1 - i
			if err := l.guard(n.Path); err != nil {
				return nil, err
			}
			if err := routing.UpsertNodeRoutes(n.Path, "eth0", addrs.nodes[o], []netip.Prefix{addrs.pods[o]}); err != nil {
				return nil, fmt.Errorf("node%d: %w", i+1, err)
			}
			if err := l.loadKubeProxy(n, services, nil); err != nil {
				return nil, err
			}
		}
		s.ctNodes = nodes[:]
	}
	return s, nil
}
