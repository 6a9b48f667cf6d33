package bpf_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// clusterIP is the frontend of the services below: UDP, as ipv4From's
// packets are (port 53), with backends listening on backendPort.
var (
	clusterIP   = netip.MustParseAddrPort("10.96.0.10:53")
	backendPort = uint16(5353)
)

// services is the datapath's service table, as package maps writes it.
func (d *datapath) services() *tables.Services {
	return tables.NewServices(tables.ServiceMaps{Services: d.objs.HrLb4Services, Backends: d.objs.HrLb4Backends, On: d.objs.HrLbOn, ClusterIPs: d.objs.HrClusterIps, SourceRanges: d.objs.HrLb4Srcrange})
}

// addService registers clusterIP (service ID 1) with one active backend
// per pod, backend IDs from 1, as datapath.UpsertService writes them.
func (d *datapath) addService(backends ...pod) {
	d.tb.Helper()
	var bs []maps.Backend
	var ids []uint32
	for i, p := range backends {
		bs = append(bs, maps.Backend{ID: uint32(i + 1), Addr: netip.AddrPortFrom(p.ip, backendPort), Proto: maps.UDP})
		ids = append(ids, uint32(i+1))
	}
	if err := d.services().PutBackends(bs); err != nil {
		d.tb.Fatal(err)
	}
	f := maps.Frontend{Addr: clusterIP, Proto: maps.UDP}
	if err := d.services().Put(maps.ServiceEntry{Frontend: f, RevNAT: 1, Backends: ids}); err != nil {
		d.tb.Fatal(err)
	}
}

// removePods deletes each pod's endpoint entries.
func (d *datapath) removePods(pods ...pod) {
	d.tb.Helper()
	for _, p := range pods {
		if err := d.endpoints().Delete(maps.Endpoint{IP: p.ip, IfIndex: int(p.ifindex), ID: p.id}); err != nil {
			d.tb.Fatalf("remove endpoint %s: %v", p.ip, err)
		}
		delete(d.ids, p.ifindex)
	}
}

// withPorts returns p's UDP payload with the ports set; the checksum
// stays zero (none), which translation keeps.
func (p ipv4Packet) withPorts(sport, dport uint16) ipv4Packet {
	p.payload = append([]byte(nil), p.payload...)
	binary.BigEndian.PutUint16(p.payload[0:], sport)
	binary.BigEndian.PutUint16(p.payload[2:], dport)
	return p
}

// TestLBClusterIP runs a pod's datagram to a ClusterIP through
// from-container: the tc load balancer rewrites its destination to the
// only backend, pod B, remembers the flow in hr_ct4_new and delivers it with
// bpf_redirect_peer; B's reply, through B's from-container, leaves with
// the ClusterIP as its source again and reaches A the same way.
func TestLBClusterIP(t *testing.T) {
	d := loadDatapath(t, configPeer)
	a, b := podA, podB.withFlags(uint16(maps.EndpointLBBackend))
	d.addPods(a, b)
	d.addService(b)

	out := ipv4From(a, clusterIP.Addr()).withPorts(40000, clusterIP.Port())
	verdict, got := d.run(d.objs.FromContainer, a.ifindex, out.frame())
	if verdict != tcActRedirect {
		t.Fatalf("to the ClusterIP: verdict %d, want TC_ACT_REDIRECT", verdict)
	}
	want := out
	want.dst = b.ip
	want = want.withPorts(40000, backendPort).forwarded(b)
	checkFrame(t, "to the ClusterIP, as B gets it", got, want.frame())

	cts, err := tables.NewConntrack(d.objs.HrCt4Tcp, d.objs.HrCt4Any, d.objs.HrCt4New).List()
	if err != nil {
		t.Fatal(err)
	}
	client := netip.AddrPortFrom(a.ip, 40000)
	backend := netip.AddrPortFrom(b.ip, backendPort)
	found := map[maps.CTDir]maps.CTEntry{}
	for _, e := range cts {
		found[e.Dir] = e
	}
	if svc := found[maps.CTService]; svc.Src != client || svc.Dst != clusterIP || svc.BackendID != 1 || svc.RevNAT != 1 {
		t.Errorf("SVC entry %v, want %v -> %v backend 1 RevNAT 1 (all: %v)", svc, client, clusterIP, cts)
	}
	if rep := found[maps.CTReply]; rep.Src != backend || rep.Dst != client || rep.Frontend != clusterIP {
		t.Errorf("REPLY entry %v, want %v -> %v frontend %v (all: %v)", rep, backend, client, clusterIP, cts)
	}
	if len(cts) != 2 {
		t.Errorf("%d conntrack entries, want SVC and REPLY: %v", len(cts), cts)
	}

	// A datagram to B's own address is not a service flow: untouched.
	direct := ipv4From(a, b.ip).withPorts(40001, backendPort)
	if verdict, got = d.run(d.objs.FromContainer, a.ifindex, direct.frame()); verdict != tcActRedirect {
		t.Fatalf("to B directly: verdict %d", verdict)
	}
	checkFrame(t, "to B directly", got, direct.forwarded(b).frame())

	// B replies from loopback (frames there are PACKET_HOST), A moves to
	// another device: conntrack is by tuple, not device.
	d.removePods(a, b)
	a, b = a.withIfindex(podC.ifindex), b.withIfindex(loIfindex)
	b.nodeMAC = mac{}
	d.addPods(a, b)
	reply := ipv4From(b, a.ip).withPorts(backendPort, 40000)
	verdict, got = d.run(d.objs.FromContainer, b.ifindex, reply.frame())
	if verdict != tcActRedirect {
		t.Fatalf("B's reply: verdict %d, want TC_ACT_REDIRECT", verdict)
	}
	want = reply
	want.src = clusterIP.Addr()
	want = want.withPorts(clusterIP.Port(), 40000).forwarded(a)
	checkFrame(t, "B's reply, as A gets it", got, want.frame())

	// B's port unreachable about the datagram it got: A gets it from the
	// ClusterIP, quoting the datagram as A sent it.
	gotByB := ipv4From(podA, b.ip).withPorts(40000, backendPort).forwarded(b)
	sentByA := ipv4From(podA, clusterIP.Addr()).withPorts(40000, clusterIP.Port())
	unreach := ipv4From(b, a.ip)
	unreach.proto, unreach.payload = ipProtoICMP, icmpUnreachable(gotByB.frame())
	verdict, got = d.run(d.objs.FromContainer, b.ifindex, unreach.frame())
	if verdict != tcActRedirect {
		t.Fatalf("B's port unreachable: verdict %d, want TC_ACT_REDIRECT", verdict)
	}
	quoted := gotByB
	quoted.src, quoted.dst = sentByA.src, sentByA.dst
	quoted = quoted.withPorts(40000, clusterIP.Port())
	want = unreach
	want.src, want.payload = clusterIP.Addr(), icmpUnreachable(quoted.frame())
	checkFrame(t, "B's port unreachable, as A gets it", got, want.forwarded(a).frame())
}

// icmpUnreachable returns an ICMP port unreachable quoting the IPv4 header
// and 8 bytes of the packet in frame, checksum computed.
func icmpUnreachable(frame []byte) []byte {
	msg := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, frame[14:14+20+8]...)
	binary.BigEndian.PutUint16(msg[2:], ^onesSum(msg))
	return msg
}

// TestLBHairpin runs pod A's datagram to a service whose backend is A
// itself: it reaches A from 169.254.42.1 (A's stack would drop a packet
// from its own address), and A's reply to that address goes back to A
// from the ClusterIP.
func TestLBHairpin(t *testing.T) {
	d := loadDatapath(t, configPeer)
	a := podA.withFlags(uint16(maps.EndpointLBBackend))
	d.addPods(a)
	d.addService(a)
	hairpin := netip.MustParseAddr("169.254.42.1")

	out := ipv4From(a, clusterIP.Addr()).withPorts(40000, clusterIP.Port())
	verdict, got := d.run(d.objs.FromContainer, a.ifindex, out.frame())
	if verdict != tcActRedirect {
		t.Fatalf("to the ClusterIP: verdict %d, want TC_ACT_REDIRECT", verdict)
	}
	want := out
	want.src, want.dst = hairpin, a.ip
	want = want.withPorts(40000, backendPort).forwarded(a)
	checkFrame(t, "to its own service, as A gets it", got, want.frame())

	reply := ipv4From(a, hairpin).withPorts(backendPort, 40000)
	verdict, got = d.run(d.objs.FromContainer, a.ifindex, reply.frame())
	if verdict != tcActRedirect {
		t.Fatalf("A's reply: verdict %d, want TC_ACT_REDIRECT", verdict)
	}
	want = reply
	want.src, want.dst = clusterIP.Addr(), a.ip
	want = want.withPorts(clusterIP.Port(), 40000).forwarded(a)
	checkFrame(t, "A's reply, as A gets it", got, want.frame())

	cts, err := tables.NewConntrack(d.objs.HrCt4Tcp, d.objs.HrCt4Any, d.objs.HrCt4New).List()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range cts {
		if e.Dir == maps.CTReply && (e.Dst != netip.AddrPortFrom(hairpin, 40000) || e.Flags&maps.CTHairpin == 0) {
			t.Errorf("REPLY entry %v, want one to %s:40000 flagged Hairpin", e, hairpin)
		}
	}
}

// TestLBNoBackend: a datagram to a frontend without active backends is
// answered with ICMP port unreachable from the frontend, quoting it, sent
// back into the pod (as kube-proxy's REJECT rules); with
// NoBackendDrop it is dropped, counted, as Cilium's DROP_NO_SERVICE.
// Neither makes a conntrack entry.
func TestLBNoBackend(t *testing.T) {
	for _, drop := range []bool{false, true} {
		t.Run(fmt.Sprintf("drop=%t", drop), func(t *testing.T) {
			cfg := configPeer
			if drop {
				cfg.NoBackendDrop = 1
			}
			d := loadDatapath(t, cfg)
			d.addPods(podA)
			d.addService()
			pkt := ipv4From(podA, clusterIP.Addr()).withPorts(40000, clusterIP.Port())
			verdict, got := d.run(d.objs.FromContainer, podA.ifindex, pkt.frame())
			if drop {
				if verdict != tcActShot || d.metrics()[maps.MetricDropNoBackend].Packets != 1 {
					t.Fatalf("verdict %d, drop-no-backend %d: want TC_ACT_SHOT, 1", verdict, d.metrics()[maps.MetricDropNoBackend].Packets)
				}
			} else {
				if verdict != tcActRedirect || d.metrics()[maps.MetricReject].Packets != 1 {
					t.Fatalf("verdict %d, reject %d: want TC_ACT_REDIRECT (back out of A's device), 1", verdict, d.metrics()[maps.MetricReject].Packets)
				}
				want := ipv4Packet{dstMAC: podA.mac, srcMAC: podA.nodeMAC, src: clusterIP.Addr(), dst: podA.ip,
					ttl: 64, proto: ipProtoICMP, payload: icmpUnreachable(pkt.frame())}
				checkFrame(t, "the rejection A gets", got[:14+56], want.frame())
				checkIPv4Checksum(t, got)
			}
			if n, err := tables.NewConntrack(d.objs.HrCt4Tcp, d.objs.HrCt4Any, d.objs.HrCt4New).List(); err != nil || len(n) != 0 {
				t.Errorf("conntrack after a rejected packet: %v %v, want empty", n, err)
			}
		})
	}
}

// TestServiceCIDRReject: with a service CIDR, a pod's packet to an
// address in it that is no frontend, or to a frontend's address on a port
// its service lacks, is rejected; other destinations are not.
func TestServiceCIDRReject(t *testing.T) {
	cfg := configPeer
	svc := netip.MustParsePrefix("10.96.0.0/12")
	a := svc.Addr().As4()
	cfg.ServiceCidr, cfg.ServiceMask = binary.NativeEndian.Uint32(a[:]), binary.NativeEndian.Uint32([]byte{255, 240, 0, 0})
	d := loadDatapath(t, cfg)
	d.addPods(podA, podB)
	d.addService(podB)
	for _, c := range []struct {
		dst    netip.AddrPort
		reject bool
	}{
		{netip.MustParseAddrPort("10.100.1.1:53"), true}, // unallocated
		{netip.AddrPortFrom(clusterIP.Addr(), 54), true}, // a port the service lacks
		{clusterIP, false},
		{netip.MustParseAddrPort("192.0.2.1:53"), false},
	} {
		pkt := ipv4From(podA, c.dst.Addr()).withPorts(40000, c.dst.Port())
		verdict, _ := d.run(d.objs.FromContainer, podA.ifindex, pkt.frame())
		if got := verdict == tcActRedirect && c.dst != clusterIP; got != c.reject {
			t.Errorf("to %s: verdict %d, want rejected %t", c.dst, verdict, c.reject)
		}
	}
	if got := d.metrics()[maps.MetricReject].Packets; got != 2 {
		t.Errorf("reject counted %d, want 2", got)
	}
}

// TestClusterIPReject: without a service CIDR, a pod's TCP or UDP packet
// to a ClusterIP on a port or protocol its services lack is rejected, once
// the address is in the ClusterIP table; other addresses leave as before.
func TestClusterIPReject(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA, podB)
	d.addService(podB)
	wrong := netip.AddrPortFrom(clusterIP.Addr(), 54)
	run := func(dst netip.AddrPort, tcp bool) uint32 {
		pkt := ipv4From(podA, dst.Addr()).withPorts(40000, dst.Port())
		if tcp {
			pkt.proto = ipProtoTCP // the ports are where UDP has them
		}
		verdict, _ := d.run(d.objs.FromContainer, podA.ifindex, pkt.frame())
		return verdict
	}
	if v := run(wrong, false); v == tcActRedirect {
		t.Fatalf("to %s without the ClusterIP table: verdict %d, want it left alone", wrong, v)
	}
	if err := d.services().PutClusterIP(clusterIP.Addr()); err != nil {
		t.Fatal(err)
	}
	before := d.metrics()[maps.MetricReject].Packets
	for _, c := range []struct {
		dst         netip.AddrPort
		tcp, reject bool
	}{
		{wrong, false, true},
		{clusterIP, true, true}, // the service is UDP
		{clusterIP, false, false},
		{netip.MustParseAddrPort("192.0.2.1:53"), false, false},
	} {
		v := run(c.dst, c.tcp)
		if got := v == tcActRedirect && c.dst != clusterIP || c.tcp && v == tcActRedirect; got != c.reject {
			t.Errorf("to %s (tcp %t): verdict %d, want rejected %t", c.dst, c.tcp, v, c.reject)
		}
	}
	if got := d.metrics()[maps.MetricReject].Packets - before; got != 2 {
		t.Errorf("reject counted %d, want 2", got)
	}
}

// TestSourceRangeCheck: a frontend flagged with source ranges takes a
// pod's packet only from a source its ranges (an LPM trie by service ID
// and prefix) hold; others are dropped as drop-source-range.
func TestSourceRangeCheck(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA, podB)
	d.addService(podB)
	e, err := d.services().Entry(maps.Frontend{Addr: clusterIP, Proto: maps.UDP})
	if err != nil {
		t.Fatal(err)
	}
	e.Flags |= maps.ServiceExternal | maps.ServiceSourceRanges
	if err := d.services().Put(e); err != nil {
		t.Fatal(err)
	}
	send := func() uint32 {
		v, _ := d.run(d.objs.FromContainer, podA.ifindex, ipv4From(podA, clusterIP.Addr()).withPorts(40000, clusterIP.Port()).frame())
		return v
	}
	if v := send(); v != tcActShot || d.metrics()[maps.MetricDropSourceRange].Packets != 1 {
		t.Errorf("from %s, no range holds it: verdict %d, drop-source-range %d; want dropped, counted", podA.ip, v, d.metrics()[maps.MetricDropSourceRange].Packets)
	}
	if err := d.services().PutSourceRange(e.RevNAT, netip.PrefixFrom(podA.ip, 24).Masked()); err != nil {
		t.Fatal(err)
	}
	if v := send(); v != tcActRedirect {
		t.Errorf("from %s inside %s: verdict %d, want translated and delivered", podA.ip, netip.PrefixFrom(podA.ip, 24).Masked(), v)
	}
	if err := d.services().PutSourceRange(e.RevNAT+1, netip.PrefixFrom(podA.ip, 32)); err != nil {
		t.Fatal(err)
	}
	if err := d.services().DeleteSourceRange(e.RevNAT, netip.PrefixFrom(podA.ip, 24).Masked()); err != nil {
		t.Fatal(err)
	}
	if v := send(); v != tcActShot {
		t.Errorf("from %s, only another service's range holds it: verdict %d, want dropped", podA.ip, v)
	}
}

// BenchmarkFromContainerService measures a pod's datagram on an
// established service flow (conntrack hit, DNAT, delivery with
// bpf_redirect_peer) against the same datagram sent to the backend's own
// address, with 10 and 100000 services in the table. The translation
// rewrites the frame, so every test run is one packet, for all.
func BenchmarkFromContainerService(b *testing.B) {
	for _, bc := range []struct {
		name     string
		services int
		to       netip.AddrPort
		ranges   bool // the frontend has source ranges (an LPM lookup)
	}{
		{"direct", 10, netip.AddrPortFrom(podB.ip, backendPort), false},
		{"service-10", 10, clusterIP, false},
		{"service-10-source-ranges", 10, clusterIP, true},
		{"service-100k", 100000, clusterIP, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := loadDatapathWith(b, configPeer, func(spec *ebpf.CollectionSpec) {
				// Room for the services' entries and their slots.
				spec.Maps[bpf.HostroutingMapHrLb4Services].MaxEntries = 2*uint32(bc.services) + 16
			})
			d.addPods(podA, benchPodB)
			d.addService(benchPodB)
			d.addOtherServices(bc.services - 1)
			if bc.ranges {
				e, err := d.services().Entry(maps.Frontend{Addr: clusterIP, Proto: maps.UDP})
				if err != nil {
					b.Fatal(err)
				}
				e.Flags |= maps.ServiceExternal | maps.ServiceSourceRanges
				err1 := d.services().Put(e)
				err2 := d.services().PutSourceRange(e.RevNAT, netip.MustParsePrefix("192.0.2.0/24"))
				err3 := d.services().PutSourceRange(e.RevNAT, netip.PrefixFrom(podA.ip, 16).Masked())
				if err := errors.Join(err1, err2, err3); err != nil {
					b.Fatal(err)
				}
			}
			pkt := ipv4From(podA, bc.to.Addr()).withPorts(40000, bc.to.Port())
			if v, _ := d.run(d.objs.FromContainer, podA.ifindex, pkt.frame()); v != tcActRedirect {
				b.Fatalf("first packet: verdict %d", v)
			}
			direct := ipv4From(podA, benchPodB.ip).withPorts(40001, backendPort)
			benchRun{prog: d.objs.FromContainer, frame: pkt.frame(), perRun: 1, want: tcActRedirect, empty: emptyProgram(b),
				direct: &benchTarget{d.objs.FromContainer, direct.frame(), tcActRedirect}}.run(b)
			if got := d.endpointStats(benchPodB.ifindex).ToPackets; got < uint64(b.N) {
				b.Errorf("pod B received %d packets, want at least %d", got, b.N)
			}
		})
	}
}

// addOtherServices registers n more UDP services from 10.97.0.0 up, each with
// one backend (ID 2, an address nobody has).
func (d *datapath) addOtherServices(n int) {
	d.tb.Helper()
	if n == 0 {
		return
	}
	if err := d.services().PutBackends([]maps.Backend{{ID: 2, Addr: netip.MustParseAddrPort("10.0.9.9:80"), Proto: maps.UDP}}); err != nil {
		d.tb.Fatal(err)
	}
	for i := range n {
		addr := netip.AddrFrom4([4]byte{10, 97 + byte(i>>16), byte(i >> 8), byte(i)})
		f := maps.Frontend{Addr: netip.AddrPortFrom(addr, 53), Proto: maps.UDP}
		if err := d.services().Put(maps.ServiceEntry{Frontend: f, RevNAT: uint16(i + 2), Backends: []uint32{2}}); err != nil {
			d.tb.Fatal(err)
		}
	}
}
