package main

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// serviceScenario is pod → ClusterIP service on one node: the client pod
// dials the service, whose one backend is the server pod on the same
// node, translated by each of the ways a node can translate it; direct
// dials the server pod itself on the same datapath, the baseline of the
// translation's cost.
var serviceScenario = &scenario{
	Name:  scenarioService,
	Title: "Same-node pod → ClusterIP service",
	Modes: []string{modeDirect, modeTCLB, modeSocketLB, modeKubeProxy, modeLimit},
	ModeNames: map[string]string{
		modeDirect:    "direct: host routing to the server pod's own IP, {services} other services and the measured one in the BPF maps (the server is a backend: its replies take the reverse-NAT lookup)",
		modeTCLB:      "tc-lb: the ClusterIP, DNAT at the client's host veth by the tc load balancer (BPF conntrack), same maps as direct",
		modeSocketLB:  "socket-lb: the ClusterIP, the backend picked at connect() by the socket load balancer on the client's cgroup (no per-packet translation), same maps as direct",
		modeKubeProxy: "kube-proxy: no datapath; node's stack, the ClusterIP DNATed in PREROUTING by its KUBE-SVC chain, the last of {services} other services in KUBE-SERVICES, conntrack",
		modeLimit:     "limit: direct veth pair between the pods, the server pod's own IP",
	},
	Labels: map[string]string{modeDirect: "direct (pod IP)", modeLimit: "limit (direct veth)"},
	Refs:   []string{modeLimit, modeDirect, modeKubeProxy},
	build:  buildService,
}

// clusterIP is the measured service's ClusterIP, below the range of the
// other services' (serviceIP).
var clusterIP = netip.MustParseAddr("10.96.0.10")

// measuredService is the service the client dials: clusterIP on each of
// the load's ports, with the server pod at server as the one endpoint.
func measuredService(server netip.Addr) []kubeService {
	var svcs []kubeService
	for _, p := range []struct {
		name string
		port uint16
	}{{"stream", portStream}, {"rr", portRR}, {"crr", portCRR}} {
		svcs = append(svcs, kubeService{
			Name:      "bench/measured:" + p.name,
			Frontend:  netip.AddrPortFrom(clusterIP, p.port),
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(server, p.port)},
		})
	}
	return svcs
}

// buildService makes one node with client pod A (10.0.0.10) and server
// pod B (10.0.0.11) for mode, or for the limit the two pods joined by a
// veth pair. The BPF modes put the same services into the datapath that
// kube-proxy's rules hold: the measured one and services others.
// Namespaces are named svc-<mode>-node, -a and -b; socket-lb's cgroup
// hr-bench-<id>-svc-socket-lb.
func buildService(l *lab, mode string, services int) (*setup, error) {
	tag := "svc-" + mode
	s := &setup{Scenario: scenarioService, Mode: mode}
	pp, err := l.podPair(tag, mode == modeLimit)
	if err != nil {
		return nil, err
	}
	s.Client, s.Server = pp.a, pp.b
	measured := measuredService(pp.b.IP)
	switch mode {
	case modeLimit:
	case modeDirect, modeTCLB, modeSocketLB:
		cfg := datapath.Config{RequireBPFHostRouting: true}
		if mode == modeSocketLB {
			// Made before the datapath, so removed after it.
			cg, err := l.cgroup(tag)
			if err != nil {
				return nil, err
			}
			cfg.CgroupPath, s.Cgroup = cg, cg
		}
		dp, pin, err := l.newDatapath(pp.node, tag, cfg)
		if err != nil {
			return nil, err
		}
		if err := pp.addEndpoints(dp); err != nil {
			return nil, err
		}
		if err := upsertServices(dp, append(otherServices(services), measured...)); err != nil {
			return nil, err
		}
		s.dps, s.Pins = []*datapath.Datapath{dp}, []string{pin}
		if mode != modeDirect {
			s.Target = clusterIP
		}
		s.pathCheck = func() error { return checkBPFConntrack(pin, mode == modeTCLB, s.Client.IP) }
	case modeKubeProxy:
		if err := l.loadKubeProxy(pp.node, services, measured); err != nil {
			return nil, err
		}
		s.Target, s.ctNodes = clusterIP, []peer{pp.node}
		s.pathCheck = func() error { return checkDNAT(pp.node, s.Client.IP, s.Server.IP) }
	default:
		return nil, fmt.Errorf("service has no mode %q", mode)
	}
	return s, nil
}

// upsertServices puts svcs on dp as TCP ClusterIP services and checks
// that the datapath lists them all.
func upsertServices(dp *datapath.Datapath, svcs []kubeService) error {
	var ds []datapath.Service
	for _, s := range svcs {
		d := datapath.Service{Frontend: s.Frontend, Protocol: datapath.TCP}
		for _, ep := range s.Endpoints {
			d.Backends = append(d.Backends, datapath.Backend{Addr: ep})
		}
		ds = append(ds, d)
	}
	if _, err := dp.UpsertServices(ds); err != nil {
		return err
	}
	listed, err := dp.Services()
	if err != nil {
		return err
	}
	if len(listed) != len(ds) {
		return fmt.Errorf("the datapath lists %d services, want %d", len(listed), len(ds))
	}
	return nil
}

// checkBPFConntrack checks the conntrack of the datapath pinned at pin
// after the check's TCP_RR: the tc load balancer (tc) leaves an entry of
// the client's flow to the ClusterIP; the socket load balancer, which
// connects the socket to the backend itself, and the direct path leave
// none of any flow to it.
func checkBPFConntrack(pin string, tc bool, client netip.Addr) error {
	node, err := instance.Open(pin)
	if err != nil {
		return err
	}
	defer node.Close()
	entries, err := tables.NewConntrack(node.Maps.ConntrackTables()...).List()
	if err != nil {
		return fmt.Errorf("list BPF conntrack: %w", err)
	}
	var toService []maps.CTEntry
	for _, e := range entries {
		if e.Dst.Addr() == clusterIP || e.Frontend.Addr() == clusterIP {
			toService = append(toService, e)
		}
	}
	flow := func(e maps.CTEntry) bool {
		return e.Dir == maps.CTService && e.Src.Addr() == client && e.Dst == netip.AddrPortFrom(clusterIP, portRR)
	}
	switch {
	case tc && !slices.ContainsFunc(toService, flow):
		return fmt.Errorf("BPF conntrack has no entry of %s → %s:%d (%d entries): the tc load balancer did not translate", client, clusterIP, portRR, len(entries))
	case !tc && len(toService) > 0:
		return fmt.Errorf("BPF conntrack has %d entries of flows to %s, first %s: the tc load balancer translated", len(toService), clusterIP, toService[0])
	}
	return nil
}

// checkDNAT checks that the nf_conntrack of node holds the check's flow
// from client to the ClusterIP's TCP_RR port with its replies from server:
// kube-proxy's DNAT.
func checkDNAT(node peer, client, server netip.Addr) error {
	h, err := routing.Handle(node.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list conntrack in %s: %w", node.NetnsName, err)
	}
	is := func(ip []byte, want netip.Addr) bool {
		a, ok := netip.AddrFromSlice(ip)
		return ok && a.Unmap() == want
	}
	for _, f := range flows {
		if is(f.Forward.SrcIP, client) && is(f.Forward.DstIP, clusterIP) && f.Forward.DstPort == portRR && is(f.Reverse.SrcIP, server) {
			return nil
		}
	}
	return fmt.Errorf("conntrack in %s has no flow %s → %s:%d DNATed to %s (%d flows)", node.NetnsName, client, clusterIP, portRR, server, len(flows))
}
