package datapath_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/maps"
)

// TestSourceRanges (kube-proxy's loadBalancerSourceRanges, e2e "should
// only allow access from service loadbalancer source ranges"): a NodePort
// with source ranges answers a host of the wire inside them, over TCP and
// UDP, and drops, counted, a host outside them and a pod of another node;
// Services reads the ranges back; without ranges every source reaches it
// again and the ranges are gone from the node. A ClusterIP with ranges and
// a range that is no IPv4 prefix are refused.
func TestSourceRanges(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	allowed := cn.cluster.AddHost(t, "allowed", netip.MustParseAddr("172.18.1.1"))
	denied := cn.cluster.AddHost(t, "denied", netip.MustParseAddr("172.18.1.2"))
	backend := nameServer(t, cn.a)
	front := netip.AddrPortFrom(n0.IP, 30111)
	ranges := []netip.Prefix{netip.MustParsePrefix("172.18.1.1/32"), netip.MustParsePrefix("192.0.2.0/24")}
	var ids []uint16
	for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		id, err := cn.dps[0].UpsertService(datapath.Service{Frontend: front, Protocol: proto, Type: datapath.NodePort,
			Backends: []datapath.Backend{{Addr: backend}}, SourceRanges: ranges})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	before := metricsNow(t, cn.dps[0]).Total(maps.MetricDropSourceRange)
	for _, proto := range []string{"tcp4", "udp4"} {
		if _, err := askName(allowed.Netns, proto, front); err != nil {
			t.Errorf("%s from %s, inside the source ranges: %v", proto, allowed.IP, err)
		}
		if name, err := askName(denied.Netns, proto, front); err == nil {
			t.Errorf("%s from %s, outside the source ranges: answered by %s", proto, denied.IP, name)
		}
		if name, err := askName(cn.b.Netns, proto, front); err == nil {
			t.Errorf("%s from pod %s on another node: answered by %s", proto, cn.b.IP, name)
		}
	}
	if got := metricsNow(t, cn.dps[0]).Total(maps.MetricDropSourceRange).Packets - before.Packets; got < 4 {
		t.Errorf("drop-source-range counted %d packets, want at least the 4 refused first packets", got)
	}
	svcs, err := cn.dps[0].Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if slices.Contains(ids, s.ID) && !slices.Equal(s.SourceRanges, ranges) {
			t.Errorf("service %d lists source ranges %v, want %v", s.ID, s.SourceRanges, ranges)
		}
	}

	// Without ranges: open to all again.
	for i, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		if _, err := cn.dps[0].UpsertService(datapath.Service{ID: ids[i], Frontend: front, Protocol: proto, Type: datapath.NodePort,
			Backends: []datapath.Backend{{Addr: backend}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, proto := range []string{"tcp4", "udp4"} {
		if _, err := askName(denied.Netns, proto, front); err != nil {
			t.Errorf("%s from %s after the ranges went: %v", proto, denied.IP, err)
		}
	}
	if svcs, err = cn.dps[0].Services(); err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if len(s.SourceRanges) > 0 {
			t.Errorf("service %d keeps source ranges %v", s.ID, s.SourceRanges)
		}
	}

	for _, bad := range []datapath.Service{
		{Frontend: netip.MustParseAddrPort("10.96.0.50:80"), Protocol: datapath.TCP, SourceRanges: ranges},
		{Frontend: netip.AddrPortFrom(n0.IP, 30112), Protocol: datapath.TCP, Type: datapath.NodePort,
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("fd00::/8")}},
	} {
		if _, err := cn.dps[0].UpsertService(bad); !errors.Is(err, datapath.ErrInvalidService) {
			t.Errorf("%s with source ranges %v: %v, want ErrInvalidService", bad.Frontend, bad.SourceRanges, err)
		}
	}
}
