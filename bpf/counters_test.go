package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// TestCountersAddUp sends a known mix of packets through all four entry
// programs of one datapath and checks every counter exactly: each packet
// lands in exactly one (direction, metric) cell, that of the program that
// saw it, with its length; and the endpoint it belongs to counts it as
// sent, received or dropped.
func TestCountersAddUp(t *testing.T) {
	d := loadDatapath(t, configPeer)
	// Pod A's device is loopback, where every test run arrives: it is
	// the pod device of from_container and to_container. It answers ARP
	// for its pod.
	a := podA.withFlags(endpointFlagARPResponder).withIPv6(podAIPv6)
	d.addPods(a, podB, podC)

	var (
		want      maps.MetricTable
		wantStats = map[uint16]*maps.EndpointStats{a.id: {}, podB.id: {}, podC.id: {}}
		runs      uint64
	)
	type effect int
	const (
		none effect = iota
		from        // counted as sent by the endpoint
		to          // as received by it
		drop        // as dropped of it
	)
	// send runs prog on frame and adds what it should count: (dir, m)
	// for the packet, and each endpoint effect.
	send := func(name string, prog *ebpf.Program, frame []byte, verdict uint32, dir maps.Direction, m maps.Metric, effects map[uint16]effect) {
		t.Helper()
		got, _ := d.run(prog, loIfindex, frame)
		if got != verdict {
			t.Errorf("%s: verdict %d, want %d", name, got, verdict)
		}
		runs++
		n := uint64(len(frame))
		want[dir][m] = want[dir][m].Add(maps.Counter{Packets: 1, Bytes: n})
		for id, e := range effects {
			s := wantStats[id]
			switch e {
			case from:
				s.FromPackets++
				s.FromBytes += n
			case to:
				s.ToPackets++
				s.ToBytes += n
			case drop:
				s.DropPackets++
				s.DropBytes += n
			}
		}
	}
	fc, tc, fn, tn := d.objs.FromContainer, d.objs.ToContainer, d.objs.FromNetdev, d.objs.ToNetdev

	// from_container: what pod A sends.
	tcp := ipv4From(a, podB.ip)
	tcp.proto = ipProtoTCP
	tcp.payload = make([]byte, 1000)
	spoofed := ipv4From(a, podB.ip)
	spoofed.src = podC.ip
	malformed := ipv4From(a, podB.ip).frame()
	malformed[14] = 0x44
	withOptions := ipv4From(a, podB.ip)
	withOptions.options = []byte{0x94, 0x04, 0x00, 0x00}
	expiring := ipv4From(a, podB.ip)
	expiring.ttl = 1
	foreignMAC := ipv4From(a, podB.ip)
	foreignMAC.dstMAC = otherHostMAC
	probe := arpRequest(a, gatewayIP)
	probe.sip = netip.IPv4Unspecified()
	send("delivered to pod B", fc, ipv4From(a, podB.ip).frame(), tcActRedirect, maps.FromContainer, maps.MetricForwardPeer,
		map[uint16]effect{a.id: from, podB.id: to})
	send("tcp delivered to pod C", fc, func() []byte { p := tcp; p.dst = podC.ip; return p.frame() }(), tcActRedirect,
		maps.FromContainer, maps.MetricForwardPeer, map[uint16]effect{a.id: from, podC.id: to})
	send("delivered to pod B again", fc, tcp.frame(), tcActRedirect, maps.FromContainer, maps.MetricForwardPeer,
		map[uint16]effect{a.id: from, podB.id: to})
	send("to another node", fc, ipv4From(a, remoteIP).frame(), tcActOK, maps.FromContainer, maps.MetricToStack,
		map[uint16]effect{a.id: from})
	send("ip options", fc, withOptions.frame(), tcActOK, maps.FromContainer, maps.MetricToStack, map[uint16]effect{a.id: from})
	send("ttl 1", fc, expiring.frame(), tcActOK, maps.FromContainer, maps.MetricToStack, map[uint16]effect{a.id: from})
	send("foreign MAC", fc, foreignMAC.frame(), tcActOK, maps.FromContainer, maps.MetricToStack, map[uint16]effect{a.id: from})
	send("spoofed", fc, spoofed.frame(), tcActShot, maps.FromContainer, maps.MetricDropSpoofed, map[uint16]effect{a.id: drop})
	send("malformed", fc, malformed, tcActShot, maps.FromContainer, maps.MetricDropInvalid, map[uint16]effect{a.id: drop})
	send("vlan tag", fc, vlanTagged(ipv4From(a, podB.ip).frame(), ethPVLAN, 100), tcActShot, maps.FromContainer,
		maps.MetricDropVLAN, map[uint16]effect{a.id: drop})
	send("lldp", fc, ethFrame(lldpMAC, a.mac, ethPLLDP, make([]byte, 46)), tcActShot, maps.FromContainer,
		maps.MetricDropUnknownL3, map[uint16]effect{a.id: drop})
	send("arp request answered", fc, arpRequest(a, gatewayIP).frame(), tcActRedirect, maps.FromContainer,
		maps.MetricARPReply, map[uint16]effect{a.id: from})
	send("arp probe", fc, probe.frame(), tcActOK, maps.FromContainer, maps.MetricToStack, map[uint16]effect{a.id: from})
	send("arp spoofed", fc, func() []byte { r := arpRequest(a, gatewayIP); r.sip = podB.ip; return r.frame() }(), tcActShot,
		maps.FromContainer, maps.MetricDropSpoofed, map[uint16]effect{a.id: drop})
	send("ipv6 link-local", fc, ipv6From(a, netip.MustParseAddr("fe80::a"), netip.MustParseAddr("ff02::2")).frame(), tcActOK,
		maps.FromContainer, maps.MetricToStack, map[uint16]effect{a.id: from})
	send("ipv6 registered", fc, ipv6From(a, podAIPv6, netip.MustParseAddr("fd00:10:2::a")).frame(), tcActOK,
		maps.FromContainer, maps.MetricToStack, map[uint16]effect{a.id: from})
	send("ipv6 spoofed", fc, ipv6From(a, podCIPv6, netip.MustParseAddr("fd00:10:2::a")).frame(), tcActShot,
		maps.FromContainer, maps.MetricDropSpoofed, map[uint16]effect{a.id: drop})

	// to_container: what the stack delivers into pod A.
	intoA := ipv4From(podB, a.ip).forwarded(a)
	send("ipv4 into pod A", tc, intoA.frame(), tcActOK, maps.ToContainer, maps.MetricPass, map[uint16]effect{a.id: to})
	send("arp into pod A", tc, arpRequest(podB, a.ip).frame(), tcActOK, maps.ToContainer, maps.MetricPass,
		map[uint16]effect{a.id: to})
	send("malformed into pod A", tc, malformed, tcActOK, maps.ToContainer, maps.MetricPass, map[uint16]effect{a.id: to})

	// from_netdev: what other nodes send.
	toB := fromNetwork(podB.ip)
	toB.payload = make([]byte, 300)
	send("delivered from the network", fn, toB.frame(), tcActRedirect, maps.FromNetdev, maps.MetricForwardPeer,
		map[uint16]effect{podB.id: to})
	send("to the node", fn, fromNetwork(netip.MustParseAddr("172.18.0.2")).frame(), tcActOK, maps.FromNetdev,
		maps.MetricToStack, nil)
	send("arp from the network", fn, arpRequest(podA, podB.ip).frame(), tcActOK, maps.FromNetdev, maps.MetricToStack, nil)
	send("malformed from the network", fn, func() []byte { f := fromNetwork(podB.ip).frame(); f[14] = 0x44; return f }(),
		tcActOK, maps.FromNetdev, maps.MetricToStack, nil)

	// to_netdev: what leaves the node.
	send("to the wire", tn, ipv4From(a, remoteIP).frame(), tcActOK, maps.ToNetdev, maps.MetricPass, nil)
	send("arp to the wire", tn, arpRequest(podA, gatewayIP).frame(), tcActOK, maps.ToNetdev, maps.MetricPass, nil)

	got := d.table()
	d.checkTable(&want)
	var total uint64
	got.Each(func(_ maps.Direction, _ maps.Metric, c maps.Counter) { total += c.Packets })
	if total != runs {
		t.Errorf("%d packets counted in all, %d sent: each must land in exactly one cell", total, runs)
	}
	for id, w := range wantStats {
		s, err := tables.NewStats(d.objs.HrEpStats).Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if s != *w {
			t.Errorf("endpoint %d: %+v, want %+v", id, s, *w)
		}
	}
	// Nothing was counted for no endpoint (ID 0).
	if s, err := tables.NewStats(d.objs.HrEpStats).Get(0); err != nil || s != (maps.EndpointStats{}) {
		t.Errorf("endpoint 0: %+v (%v), want nothing", s, err)
	}
}
