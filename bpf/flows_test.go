package bpf_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// The flow tests' TCP service: its backends are pods of other nodes, so
// that every frame of a flow arrives on loopback — pod A's segments
// through from-container, the backends' replies through from-netdev.
var (
	tcpFrontend = netip.MustParseAddrPort("10.96.0.20:80")
	tcpBackends = []netip.AddrPort{netip.MustParseAddrPort("10.0.2.10:8080"), netip.MustParseAddrPort("10.0.2.11:8080")}
)

// TCP flags as they sit in byte 13 of the header.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// addTCPService registers tcpFrontend (service ID 2) with tcpBackends,
// backend IDs from 11.
func (d *datapath) addTCPService() {
	d.tb.Helper()
	var bs []maps.Backend
	var ids []uint32
	for i, b := range tcpBackends {
		bs = append(bs, maps.Backend{ID: uint32(11 + i), Addr: b, Proto: maps.TCP})
		ids = append(ids, uint32(11+i))
	}
	if err := d.services().PutBackends(bs); err != nil {
		d.tb.Fatal(err)
	}
	if err := d.services().Put(maps.ServiceEntry{Frontend: maps.Frontend{Addr: tcpFrontend, Proto: maps.TCP}, RevNAT: 2, Backends: ids}); err != nil {
		d.tb.Fatal(err)
	}
}

// segment returns a TCP segment from src to dst with flags, sequence and
// acknowledgement numbers and data bytes of payload.
func segment(src, dst netip.AddrPort, flags byte, seq, ack uint32, data int) ipv4Packet {
	p := ipv4From(podA, dst.Addr())
	p.src = src.Addr()
	p.proto = ipProtoTCP
	p.payload = make([]byte, 20+data)
	binary.BigEndian.PutUint16(p.payload[0:], src.Port())
	binary.BigEndian.PutUint16(p.payload[2:], dst.Port())
	binary.BigEndian.PutUint32(p.payload[4:], seq)
	binary.BigEndian.PutUint32(p.payload[8:], ack)
	p.payload[12] = 5 << 4
	p.payload[13] = flags
	binary.BigEndian.PutUint16(p.payload[14:], 65535)
	return p
}

// frameTuple returns a frame's IPv4 source and destination with their ports.
func frameTuple(frame []byte) (src, dst netip.AddrPort) {
	ip := frame[14:]
	l4 := ip[(ip[0]&0xf)*4:]
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(l4[0:])),
		netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(l4[2:]))
}

// tcpFlow is pod A's connection to tcpFrontend through the tc load
// balancer, with the sequence numbers each side sends next.
type tcpFlow struct {
	d          *datapath
	client     netip.AddrPort
	backend    netip.AddrPort
	cseq, bseq uint32
}

// send runs a segment of the client's through from-container and returns
// the verdict and the destination it left for.
func (f *tcpFlow) send(flags byte, seq, ack uint32, data int) (uint32, netip.AddrPort) {
	f.d.tb.Helper()
	verdict, out := f.d.run(f.d.objs.FromContainer, loIfindex, segment(f.client, tcpFrontend, flags, seq, ack, data).frame())
	_, dst := frameTuple(out)
	return verdict, dst
}

// reply runs a segment of the backend's through from-netdev and returns
// the verdict and the source the client gets it from.
func (f *tcpFlow) reply(flags byte, seq, ack uint32, data int) (uint32, netip.AddrPort) {
	f.d.tb.Helper()
	p := segment(f.backend, f.client, flags, seq, ack, data)
	p.dstMAC, p.srcMAC = loMAC, peerNodeMAC
	verdict, out := f.d.run(f.d.objs.FromNetdev, loIfindex, p.frame())
	src, _ := frameTuple(out)
	return verdict, src
}

// openFlow makes pod A's connection from port sport: SYN, SYN-ACK, ACK,
// each checked.
func openFlow(t *testing.T, d *datapath, sport uint16) *tcpFlow {
	t.Helper()
	f := &tcpFlow{d: d, client: netip.AddrPortFrom(podA.ip, sport), cseq: 1000 + uint32(sport)*7, bseq: 900000}
	verdict, dst := f.send(tcpSYN, f.cseq, 0, 0)
	if verdict != tcActOK { // a remote backend: the stack forwards it (no FIB lookup in this config)
		t.Fatalf("SYN from %s: verdict %d", f.client, verdict)
	}
	f.backend = dst
	f.cseq++
	if verdict, src := f.reply(tcpSYN|tcpACK, f.bseq, f.cseq, 0); verdict != tcActRedirect || src != tcpFrontend {
		t.Fatalf("SYN-ACK to %s: verdict %d from %s, want redirect from %s", f.client, verdict, src, tcpFrontend)
	}
	f.bseq++
	if verdict, dst := f.send(tcpACK, f.cseq, f.bseq, 0); verdict != tcActOK || dst != f.backend {
		t.Fatalf("ACK from %s: verdict %d to %s, want %s", f.client, verdict, dst, f.backend)
	}
	return f
}

// entries returns the conntrack entries of f: its service and reply entry.
func (f *tcpFlow) entries(t *testing.T) (svc, reply maps.CTEntry) {
	t.Helper()
	ct := f.d.conntrack()
	svc, err := ct.Lookup(maps.CTKey{Dir: maps.CTService, Proto: maps.TCP, Src: f.client, Dst: tcpFrontend})
	if err != nil {
		t.Fatalf("flow %s: %v", f.client, err)
	}
	reply, err = ct.Lookup(maps.CTKey{Dir: maps.CTReply, Proto: maps.TCP, Src: f.backend, Dst: f.client})
	if err != nil {
		t.Fatalf("flow %s: %v", f.client, err)
	}
	return svc, reply
}

func (d *datapath) conntrack() *tables.Conntrack {
	return tables.NewConntrack(d.objs.HrCt4Tcp, d.objs.HrCt4Any, d.objs.HrCt4New)
}

func (d *datapath) snat() *tables.SNAT {
	return tables.NewSNAT(d.objs.HrSnat4Tcp, d.objs.HrSnat4Any, d.objs.HrSnat4New)
}

// flowDatapath loads the datapath with flow tables of size entries each,
// pod A and the TCP service.
func flowDatapath(t *testing.T, cfg bpf.HostroutingConfig, size uint32) *datapath {
	t.Helper()
	d := loadDatapathWith(t, cfg, func(spec *ebpf.CollectionSpec) {
		for _, name := range []string{bpf.HostroutingMapHrCt4Tcp, bpf.HostroutingMapHrCt4Any, bpf.HostroutingMapHrCt4New,
			bpf.HostroutingMapHrSnat4Tcp, bpf.HostroutingMapHrSnat4Any, bpf.HostroutingMapHrSnat4New} {
			spec.Maps[name].MaxEntries = size
		}
	})
	d.addPods(podA)
	d.addTCPService()
	return d
}

// TestFlowsSurviveFloods: a flow whose handshake is done moves to the
// established table, where floods of new flows (SYNs that are never
// answered, one pod's datagrams to a UDP service, many times the tables'
// size) cannot reach it; when the established table is full, further
// flows are refused there (counted) and the established ones stay.
func TestFlowsSurviveFloods(t *testing.T) {
	const size = 256
	d := flowDatapath(t, configPeer, size)
	d.addPods(podB)
	d.addService(podB) // UDP clusterIP:53
	// Each flow has two entries (service and reply): size/2 fill the table.
	var flows []*tcpFlow
	for port := uint16(20000); port < 20000+size/2; port++ {
		flows = append(flows, openFlow(t, d, port))
	}
	for _, f := range flows {
		svc, reply := f.entries(t)
		if svc.Flags&maps.CTEstablished == 0 || reply.Flags&maps.CTEstablished == 0 {
			t.Fatalf("flow %s after its handshake: %v / %v, want both established", f.client, svc, reply)
		}
	}
	// More flows than the established table holds: refused there, they
	// stay with the new flows.
	for port := uint16(30000); port < 30010; port++ {
		openFlow(t, d, port)
	}
	// The floods: 8 × size unanswered SYNs, 8 × size datagrams.
	for i := range 8 * size {
		f := &tcpFlow{d: d, client: netip.AddrPortFrom(podA.ip, uint16(40000+i))}
		if verdict, _ := f.send(tcpSYN, uint32(i), 0, 0); verdict != tcActOK {
			t.Fatalf("flood SYN %d: verdict %d", i, verdict)
		}
		dgram := ipv4From(podA, clusterIP.Addr()).withPorts(uint16(40000+i), clusterIP.Port())
		if verdict, _ := d.run(d.objs.FromContainer, loIfindex, dgram.frame()); verdict != tcActRedirect {
			t.Fatalf("flood datagram %d: verdict %d", i, verdict)
		}
	}
	// Every established flow still goes to its backend, both ways.
	for _, f := range flows {
		if verdict, dst := f.send(tcpACK, f.cseq, f.bseq, 10); verdict != tcActOK || dst != f.backend {
			t.Fatalf("flow %s after the floods: to %s (verdict %d), want %s", f.client, dst, verdict, f.backend)
		}
		if verdict, src := f.reply(tcpACK, f.bseq, f.cseq+10, 0); verdict != tcActRedirect || src != tcpFrontend {
			t.Fatalf("reply of flow %s after the floods: from %s (verdict %d)", f.client, src, verdict)
		}
	}
	stats, err := tables.ReadFlowStats(d.objs.HrCtStats)
	if err != nil {
		t.Fatal(err)
	}
	tcp := stats[maps.FlowConntrackTCP]
	if tcp.Promoted != size/2 || tcp.Refused != 10 || tcp.Created != size/2+10+8*size {
		t.Errorf("TCP flow statistics %+v, want %d promoted, 10 refused, %d created", tcp, size/2, size/2+10+8*size)
	}
	if udp := stats[maps.FlowConntrackAny]; udp.Created != 8*size || udp.Promoted != 0 {
		t.Errorf("UDP flow statistics %+v, want %d created, none promoted (no reply)", udp, 8*size)
	}
}

// TestFlowForgedRST: an RST whose sequence number is far from the one its
// sender owes changes nothing — neither the RST of a third host spoofing
// the client nor a SYN after it moves the flow to another backend — while
// the client's own RST closes the flow, and a SYN then reopens it with
// fresh state on both entries.
func TestFlowForgedRST(t *testing.T) {
	d := flowDatapath(t, configPeer, 1024)
	var flows []*tcpFlow
	for port := uint16(20000); port < 20020; port++ {
		flows = append(flows, openFlow(t, d, port))
	}
	for _, f := range flows {
		f.send(tcpRST, f.cseq+0x40000000, 0, 0)
		f.reply(tcpRST, f.bseq-0x40000000, 0, 0)
		if verdict, dst := f.send(tcpSYN, 12345, 0, 0); verdict != tcActOK || dst != f.backend {
			t.Fatalf("flow %s: a SYN after forged RSTs went to %s, want its backend %s", f.client, dst, f.backend)
		}
		svc, reply := f.entries(t)
		if svc.Flags&maps.CTClosing != 0 || reply.Flags&maps.CTClosing != 0 || svc.Remaining < 3600e9 {
			t.Fatalf("flow %s after forged RSTs: %v / %v, want established, not closing", f.client, svc, reply)
		}
	}

	// The client's own RST (its next sequence number) closes the flow.
	f := flows[0]
	f.send(tcpRST|tcpACK, f.cseq, f.bseq, 0)
	if svc, reply := f.entries(t); svc.Flags&maps.CTClosing == 0 || reply.Flags&maps.CTClosing == 0 || svc.Remaining > 10e9 {
		t.Fatalf("after the client's RST: %v / %v, want both closing", svc, reply)
	}
	// A SYN reopens it: fresh state on both entries, replies translated.
	if verdict, _ := f.send(tcpSYN, 5000, 0, 0); verdict != tcActOK {
		t.Fatalf("SYN reopening: verdict %d", verdict)
	}
	svc, reply := f.entries(t)
	if svc.Flags&(maps.CTClosing|maps.CTSeenReply|maps.CTFin) != 0 || reply.Flags&(maps.CTClosing|maps.CTSeenReply) != 0 {
		t.Fatalf("reopened: %v / %v, want fresh entries", svc, reply)
	}
	if verdict, src := f.reply(tcpSYN|tcpACK, 7000, 5001, 0); verdict != tcActRedirect || src != tcpFrontend {
		t.Fatalf("reopened flow's SYN-ACK: from %s (verdict %d)", src, verdict)
	}
}

// TestFlowReusedAfterClose: a flow closed by a FIN each way, idle past its
// close timeout and collected (or not yet), is opened again from the same
// port: a new flow whose replies are translated.
func TestFlowReusedAfterClose(t *testing.T) {
	for _, collect := range []bool{true, false} {
		t.Run(fmt.Sprintf("collected=%t", collect), func(t *testing.T) {
			d := flowDatapath(t, configPeer, 1024)
			f := openFlow(t, d, 20000)
			f.send(tcpFIN|tcpACK, f.cseq, f.bseq, 0)
			if svc, _ := f.entries(t); svc.Flags&maps.CTClosing != 0 || svc.Remaining < 3600e9 {
				t.Fatalf("after one FIN: %v, want open (half closed)", svc)
			}
			f.reply(tcpFIN|tcpACK, f.bseq, f.cseq+1, 0)
			svc, reply := f.entries(t)
			if svc.Flags&maps.CTClosing == 0 || reply.Flags&maps.CTClosing == 0 {
				t.Fatalf("after a FIN each way: %v / %v, want closing", svc, reply)
			}
			// 12 s of idleness: both entries expire.
			ct := d.conntrack()
			for _, e := range []maps.CTEntry{svc, reply} {
				e.Expires = maps.MonotonicSeconds() - 2
				if err := ct.Put(e); err != nil {
					t.Fatal(err)
				}
			}
			if collect {
				if _, err := nat.NewGC(ct, nil, nat.Options{}).Collect(); err != nil {
					t.Fatal(err)
				}
			}
			g := &tcpFlow{d: d, client: f.client, cseq: 77, bseq: 99}
			if verdict, dst := g.send(tcpSYN, g.cseq, 0, 0); verdict != tcActOK || !dst.IsValid() {
				t.Fatalf("SYN on the reused tuple: verdict %d", verdict)
			}
			_, g.backend = g.send(tcpSYN, g.cseq, 0, 0) // a retransmission: the same backend
			if verdict, src := g.reply(tcpSYN|tcpACK, g.bseq, g.cseq+1, 0); verdict != tcActRedirect || src != tcpFrontend {
				t.Fatalf("SYN-ACK on the reused tuple: from %s (verdict %d)", src, verdict)
			}
			if verdict, src := g.reply(tcpACK, g.bseq+1, g.cseq+1, 100); verdict != tcActRedirect || src != tcpFrontend {
				t.Fatalf("data on the reused tuple: from %s (verdict %d)", src, verdict)
			}
			svc, reply = g.entries(t)
			if svc.Flags&maps.CTClosing != 0 || reply.Flags&maps.CTClosing != 0 || reply.Remaining < 50e9 {
				t.Errorf("reused tuple: %v / %v, want fresh entries", svc, reply)
			}
		})
	}
}

// masqTCP returns a TCP segment from src to dst as the stack sends it out
// of the node device (to-netdev).
func masqTCP(src, dst netip.AddrPort, flags byte, seq, ack uint32) []byte {
	p := segment(src, dst, flags, seq, ack, 0)
	p.dstMAC, p.srcMAC = peerNodeMAC, loMAC
	return p.frame()
}

// fromOutside returns a TCP segment from src to dst as the node device
// receives it (from-netdev).
func fromOutside(src, dst netip.AddrPort, flags byte, seq, ack uint32) []byte {
	p := segment(src, dst, flags, seq, ack, 0)
	p.dstMAC, p.srcMAC = loMAC, peerNodeMAC
	return p.frame()
}

// TestMasqueradeForgedACK: one packet from outside "from" the server to
// the pod's own address and port does not turn the pod's masqueraded flow
// into an inbound one: its next packets still leave from the node's
// address. Only a SYN opens an inbound flow.
func TestMasqueradeForgedACK(t *testing.T) {
	d := masqDatapath(t)
	pod, server := netip.AddrPortFrom(podA.ip, 40000), netip.AddrPortFrom(outsideIP, 443)
	_, out := d.run(d.objs.ToNetdev, loIfindex, masqTCP(pod, server, tcpSYN, 1, 0))
	if src, _ := frameTuple(out); src.Addr() != nodeIP {
		t.Fatalf("SYN left from %s, want %s", src, nodeIP)
	}
	for _, flags := range []byte{tcpACK, tcpSYN} {
		d.run(d.objs.FromNetdev, loIfindex, fromOutside(server, pod, flags, 5, 2))
		_, out = d.run(d.objs.ToNetdev, loIfindex, masqTCP(pod, server, tcpACK, 2, 6))
		if src, _ := frameTuple(out); src.Addr() != nodeIP {
			t.Fatalf("after a forged segment (flags %#x) to the pod: the flow left from %s, want %s", flags, src, nodeIP)
		}
	}
	for _, e := range must(d.conntrack().List()) {
		if e.Dir == maps.CTInbound {
			t.Errorf("inbound entry on the pod's masqueraded tuple: %v", e)
		}
	}
	// An ACK alone opens no inbound flow; a SYN does.
	client := netip.AddrPortFrom(outsideIP, 5555)
	web := netip.AddrPortFrom(podA.ip, 80)
	d.run(d.objs.FromNetdev, loIfindex, fromOutside(client, web, tcpACK, 1, 1))
	if n := len(must(d.conntrack().List())); n != 0 {
		t.Fatalf("an ACK from outside made %d conntrack entries", n)
	}
	d.run(d.objs.FromNetdev, loIfindex, fromOutside(client, web, tcpSYN, 1, 0))
	_, out = d.run(d.objs.ToNetdev, loIfindex, masqTCP(web, client, tcpSYN|tcpACK, 9, 2))
	if src, _ := frameTuple(out); src != web {
		t.Fatalf("the pod's SYN-ACK to an outside client left from %s, want %s (untranslated)", src, web)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// udpOut returns a datagram from src to dst as it leaves by to-netdev.
func udpOut(src, dst netip.AddrPort) []byte {
	p := ipv4From(podA, dst.Addr()).withPorts(src.Port(), dst.Port())
	p.src = src.Addr()
	p.dstMAC, p.srcMAC = peerNodeMAC, loMAC
	return p.frame()
}

// udpIn returns a datagram from src to dst as it arrives by from-netdev.
func udpIn(src, dst netip.AddrPort) []byte {
	p := fromNetwork(dst.Addr()).withPorts(src.Port(), dst.Port())
	p.src = src.Addr()
	return p.frame()
}

// TestSNATPairIntegrity: pod A's flow whose IN half is gone (evicted, or
// removed) while its OUT half stays is not left half-made: pod C that
// then takes A's port keeps it, A's next datagram gets a new mapping, and
// each pod gets exactly its own replies.
func TestSNATPairIntegrity(t *testing.T) {
	d := masqDatapath(t)
	d.addPods(podC)
	server := netip.AddrPortFrom(outsideIP, 53)
	a, c := netip.AddrPortFrom(podA.ip, 30050), netip.AddrPortFrom(podC.ip, 30050)
	_, out := d.run(d.objs.ToNetdev, loIfindex, udpOut(a, server))
	if src, _ := frameTuple(out); src != netip.AddrPortFrom(nodeIP, 30050) {
		t.Fatalf("A's datagram left from %s, want its own port", src)
	}
	snat := d.snat()
	if err := snat.Delete(maps.SNATKey{Dir: maps.NATIn, Proto: maps.UDP, Src: server, Dst: netip.AddrPortFrom(nodeIP, 30050)}); err != nil {
		t.Fatal(err)
	}
	_, out = d.run(d.objs.ToNetdev, loIfindex, udpOut(c, server))
	cNAT, _ := frameTuple(out)
	_, out = d.run(d.objs.ToNetdev, loIfindex, udpOut(a, server))
	aNAT, _ := frameTuple(out)
	if aNAT == cNAT || aNAT.Addr() != nodeIP || cNAT.Addr() != nodeIP {
		t.Fatalf("A leaves from %s, C from %s: want the node's address, two ports", aNAT, cNAT)
	}
	for _, c := range []struct {
		to   netip.AddrPort
		want netip.AddrPort
	}{{aNAT, a}, {cNAT, c}} {
		verdict, out := d.run(d.objs.FromNetdev, loIfindex, udpIn(server, c.to))
		if _, dst := frameTuple(out); verdict != tcActRedirect || dst != c.want {
			t.Errorf("reply to %s went to %s (verdict %d), want %s", c.to, dst, verdict, c.want)
		}
	}
}

// TestSNATHostCollision: a socket of the node's own that uses the port a
// pod's flow kept, to the same peer, would leave with the pod's tuple; it
// is translated to another port instead, and each gets its own replies
// (the node's through the stack, with its own port again).
func TestSNATHostCollision(t *testing.T) {
	d := masqDatapath(t)
	server := netip.AddrPortFrom(outsideIP, 53)
	pod, host := netip.AddrPortFrom(podA.ip, 30050), netip.AddrPortFrom(nodeIP, 30050)
	d.run(d.objs.ToNetdev, loIfindex, udpOut(pod, server))
	verdict, out := d.run(d.objs.ToNetdev, loIfindex, udpOut(host, server))
	hostNAT, _ := frameTuple(out)
	if verdict != tcActOK || hostNAT == host || hostNAT.Addr() != nodeIP {
		t.Fatalf("the node's datagram left from %s (verdict %d), want the node's address and another port", hostNAT, verdict)
	}
	if verdict, out := d.run(d.objs.FromNetdev, loIfindex, udpIn(server, host)); verdict != tcActRedirect {
		t.Errorf("reply to the pod's mapping: verdict %d, want redirect to the pod", verdict)
	} else if _, dst := frameTuple(out); dst != pod {
		t.Errorf("reply to the pod's mapping went to %s", dst)
	}
	verdict, out = d.run(d.objs.FromNetdev, loIfindex, udpIn(server, hostNAT))
	if _, dst := frameTuple(out); verdict != tcActOK || dst != host {
		t.Errorf("reply to the node's mapping: to %s (verdict %d), want %s through the stack", dst, verdict, host)
	}
	// A node flow first keeps its port; a pod then gets another.
	host2, pod2 := netip.AddrPortFrom(nodeIP, 30060), netip.AddrPortFrom(podA.ip, 30060)
	_, out = d.run(d.objs.ToNetdev, loIfindex, udpOut(host2, server))
	if src, _ := frameTuple(out); src != host2 {
		t.Fatalf("the node's own flow left from %s, want %s", src, host2)
	}
	_, out = d.run(d.objs.ToNetdev, loIfindex, udpOut(pod2, server))
	if src, _ := frameTuple(out); src == host2 {
		t.Fatalf("a pod's flow took the node's tuple %s", src)
	}
}

// TestIPOptionsNeverLeak: a pod's packet with IP options, which the
// translation stages do not parse, is dropped (counted) rather than leave
// the node with the pod's address.
func TestIPOptionsNeverLeak(t *testing.T) {
	d := masqDatapath(t)
	p := ipv4From(podA, outsideIP)
	p.options = []byte{1, 1, 1, 0} // NOPs, end of options
	p.dstMAC, p.srcMAC = peerNodeMAC, loMAC
	if verdict, _ := d.run(d.objs.ToNetdev, loIfindex, p.frame()); verdict != tcActShot {
		t.Fatalf("verdict %d, want TC_ACT_SHOT", verdict)
	}
	if got := d.metrics()[maps.MetricDropIPOptions]; got.Packets != 1 {
		t.Errorf("drop-ip-options %+v, want 1 packet", got)
	}
}

// TestRouterAdvertisementFromPod: a pod's IPv6 router advertisement or
// redirect never reaches the node's stack.
func TestRouterAdvertisementFromPod(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA)
	ll := netip.MustParseAddr("fe80::a:1")
	for _, typ := range []byte{134, 137} {
		p := ipv6From(podA, ll, netip.MustParseAddr("ff02::1"))
		p.hopLimit = 255
		p.payload = []byte{typ, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}
		if verdict, _ := d.run(d.objs.FromContainer, loIfindex, p.frame()); verdict != tcActShot {
			t.Errorf("ICMPv6 type %d: verdict %d, want TC_ACT_SHOT", typ, verdict)
		}
	}
	if got := d.metrics()[maps.MetricDropRouterMsg]; got.Packets != 2 {
		t.Errorf("drop-router-msg %+v, want 2 packets", got)
	}
	// A neighbour solicitation still passes.
	p := ipv6From(podA, ll, netip.MustParseAddr("ff02::1:ff00:1"))
	p.payload = []byte{135, 0, 0, 0, 0, 0, 0, 0}
	if verdict, _ := d.run(d.objs.FromContainer, loIfindex, p.frame()); verdict != tcActOK {
		t.Errorf("neighbour solicitation: verdict %d, want TC_ACT_OK", verdict)
	}
}

// BenchmarkServiceEstablished measures a segment of an established TCP
// service flow (its entries in the established table), both ways, against
// the same segment without the service, run interleaved (x-direct): out,
// pod A's segment through from-container (DNAT to a backend on another
// node, handed to the stack; direct: to the backend's own address); in,
// the backend's reply through from-netdev (reverse DNAT, delivered to A
// by bpf_redirect_peer; direct: a packet of no service flow). One packet
// per test run.
func BenchmarkServiceEstablished(b *testing.B) {
	for _, out := range []bool{true, false} {
		b.Run(map[bool]string{true: "out", false: "in"}[out], func(b *testing.B) {
			t := &testing.T{}
			d := loadDatapathWith(b, configPeer, func(*ebpf.CollectionSpec) {})
			d.addPods(podA)
			d.addTCPService()
			f := openFlow(t, d, 20000)
			if t.Failed() {
				b.Fatal("flow not opened")
			}
			other := netip.AddrPortFrom(podA.ip, 20001)
			if out {
				benchRun{prog: d.objs.FromContainer, frame: segment(f.client, tcpFrontend, tcpACK, f.cseq, f.bseq, 64).frame(),
					perRun: 1, want: tcActOK, empty: emptyProgram(b),
					direct: &benchTarget{d.objs.FromContainer, segment(other, f.backend, tcpACK, 1, 1, 64).frame(), tcActOK}}.run(b)
				return
			}
			reply, direct := segment(f.backend, f.client, tcpACK, f.bseq, f.cseq, 64), segment(f.backend, other, tcpACK, 1, 1, 64)
			reply.dstMAC, reply.srcMAC = loMAC, peerNodeMAC
			direct.dstMAC, direct.srcMAC = loMAC, peerNodeMAC
			benchRun{prog: d.objs.FromNetdev, frame: reply.frame(), perRun: 1, want: tcActRedirect, empty: emptyProgram(b),
				direct: &benchTarget{d.objs.FromNetdev, direct.frame(), tcActRedirect}}.run(b)
		})
	}
}

// udpChecksum returns the UDP checksum of a datagram from src to dst
// with payload.
func udpChecksum(src, dst netip.AddrPort, payload []byte) uint16 {
	s, d := src.Addr().As4(), dst.Addr().As4()
	b := append(append([]byte{}, s[:]...), d[:]...)
	b = binary.BigEndian.AppendUint16(append(b, 0, ipProtoUDP), uint16(8+len(payload)))
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	b = binary.BigEndian.AppendUint16(append(b, 0, 0), uint16(8+len(payload)))
	sum := ^onesSum(append(b, payload...))
	if sum == 0 {
		sum = 0xffff
	}
	return sum
}

// udpDatagram returns an IPv4 UDP datagram from src to dst with payload
// and a correct checksum, as pod A's host device would see it.
func udpDatagram(src, dst netip.AddrPort, payload []byte) ipv4Packet {
	p := ipv4From(podA, dst.Addr())
	p.src = src.Addr()
	p.payload = binary.BigEndian.AppendUint16(nil, src.Port())
	p.payload = binary.BigEndian.AppendUint16(p.payload, dst.Port())
	p.payload = binary.BigEndian.AppendUint16(p.payload, uint16(8+len(payload)))
	p.payload = binary.BigEndian.AppendUint16(p.payload, udpChecksum(src, dst, payload))
	p.payload = append(p.payload, payload...)
	return p
}

// TestICMPErrorNodePortRemoteBackend: fragmentation needed from a router
// between this node and the backend of a NodePort flow, about a datagram
// the node forwarded (its source translated to the node's address and a
// NAT port, its destination the backend), reaches the client as an error
// about the datagram it sent: to its address, quoting its own address and
// port and the NodePort, with every checksum right (the outer and quoted
// IP headers', the quoted UDP one, the ICMP one). Before, only the source
// half was translated: the client's stack matched no socket and PMTU
// discovery black-holed.
func TestICMPErrorNodePortRemoteBackend(t *testing.T) {
	d := masqDatapath(t)
	d.addTCPService() // services on: from-netdev runs the load balancer's stages
	var (
		client   = netip.AddrPortFrom(outsideIP, 5000)
		nodePort = netip.AddrPortFrom(nodeIP, 30080)
		backend  = netip.MustParseAddrPort("10.0.2.10:8080")
		natted   = netip.AddrPortFrom(nodeIP, 30007)
		router   = netip.MustParseAddr("172.18.0.254")
	)
	now := maps.MonotonicSeconds()
	if err := d.conntrack().Put(maps.CTEntry{Dir: maps.CTReply, Proto: maps.UDP, Src: backend, Dst: client,
		Frontend: nodePort, RevNAT: 3, BackendID: 11, Expires: now + 60}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []maps.SNATEntry{
		{Dir: maps.NATOut, Proto: maps.UDP, Src: client, Dst: backend, To: natted, Expires: now + 60},
		{Dir: maps.NATIn, Proto: maps.UDP, Src: backend, Dst: natted, To: client, Expires: now + 60},
	} {
		if err := d.snat().Put(e); err != nil {
			t.Fatal(err)
		}
	}
	payload := make([]byte, 1400)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	forwarded := udpDatagram(natted, backend, payload)
	errMsg := func(quoted ipv4Packet) []byte {
		f := quoted.frame()
		msg := append([]byte{3, 4, 0, 0, 0, 0, 0x05, 0x00}, f[14:14+20+8]...) // frag needed, MTU 1280
		binary.BigEndian.PutUint16(msg[2:], ^onesSum(msg))
		return msg
	}
	in := ipv4From(podA, nodeIP)
	in.src, in.proto, in.payload = router, ipProtoICMP, errMsg(forwarded)
	in.dstMAC, in.srcMAC = loMAC, peerNodeMAC
	verdict, got := d.run(d.objs.FromNetdev, loIfindex, in.frame())
	if verdict != tcActOK {
		t.Fatalf("verdict %d, want TC_ACT_OK (to the stack, which routes it to the client)", verdict)
	}
	got = got[:len(in.frame())]
	sent := udpDatagram(client, nodePort, payload)
	want := in
	want.dst, want.payload = client.Addr(), errMsg(sent)
	checkFrame(t, "the error as the client gets it", got, want.frame())
	checkIPv4Checksum(t, got)
	if sum := onesSum(got[14+20:]); sum != 0xffff {
		t.Errorf("ICMP checksum does not verify: sum %#04x", sum)
	}
}

// TestToContainerRevNAT: a reply the stack delivers into a pod (from a
// service backend in the node's own namespace) is translated back at
// to-container: from the frontend the pod dialled.
func TestToContainerRevNAT(t *testing.T) {
	d := flowDatapath(t, configPeer, 1024)
	host := netip.AddrPortFrom(nodeIP, 6443)
	client := netip.AddrPortFrom(podA.ip, 40000)
	if err := d.conntrack().Put(maps.CTEntry{Dir: maps.CTReply, Proto: maps.TCP, Src: host, Dst: client,
		Frontend: tcpFrontend, RevNAT: 2, BackendID: 11, Expires: maps.MonotonicSeconds() + 60}); err != nil {
		t.Fatal(err)
	}
	reply := segment(host, client, tcpSYN|tcpACK, 1, 2, 0)
	reply.dstMAC, reply.srcMAC = podA.mac, podA.nodeMAC
	verdict, got := d.run(d.objs.ToContainer, loIfindex, reply.frame())
	if src, dst := frameTuple(got); verdict != tcActOK || src != tcpFrontend || dst != client {
		t.Fatalf("reply into pod A: %s → %s (verdict %d), want from %s", src, dst, verdict, tcpFrontend)
	}
	checkIPv4Checksum(t, got)
	if got := d.metrics()[maps.MetricXlateRevDNAT].Packets; got != 1 {
		t.Errorf("xlate-rev-dnat %d, want 1", got)
	}
}

// fragments returns the datagram p cut in two IPv4 fragments: the first
// with its UDP header and 8 bytes of its payload (MF), the second the
// rest (offset 16 bytes).
func fragments(p ipv4Packet) (first, second ipv4Packet) {
	first, second = p, p
	first.fragment, first.payload = ipFlagMF, p.payload[:16]
	second.fragment, second.payload = 2, p.payload[16:] // 2 × 8 bytes
	return first, second
}

// TestFragmentsThroughServices: a fragmented datagram to a ClusterIP is
// translated whole — its first fragment by its ports, the others by the
// datagram's identity, recorded from the first — and so is its
// fragmented reply; a fragment whose first was not seen is dropped,
// counted, where it would have to be translated. Before, every fragment
// went untranslated (no answer through a ClusterIP for a 3000-byte UDP
// request or reply).
func TestFragmentsThroughServices(t *testing.T) {
	d := loadDatapath(t, configPeer)
	a, b := podA, podB.withFlags(uint16(maps.EndpointLBBackend))
	d.addPods(a, b)
	d.addService(b)
	req := udpDatagram(netip.AddrPortFrom(a.ip, 40000), clusterIP, make([]byte, 40))
	req.id = 0x4242
	first, second := fragments(req)
	for i, f := range []ipv4Packet{first, second} {
		verdict, got := d.run(d.objs.FromContainer, a.ifindex, f.frame())
		if verdict != tcActRedirect {
			t.Fatalf("request fragment %d: verdict %d, want redirect to B", i, verdict)
		}
		checkIPv4Checksum(t, got)
		if dst := netip.AddrFrom4([4]byte(got[30:34])); dst != b.ip {
			t.Errorf("request fragment %d went to %s, want B %s", i, dst, b.ip)
		}
		if i == 0 {
			if _, dst := frameTuple(got); dst.Port() != backendPort {
				t.Errorf("first fragment to port %d, want %d", dst.Port(), backendPort)
			}
		} else if want := f.frame(); string(got[34:len(want)]) != string(want[34:]) {
			t.Errorf("second fragment's payload changed")
		}
	}

	// B's reply, fragmented too, from B's device (loopback here).
	d.removePods(a, b)
	a, b = a.withIfindex(podC.ifindex), b.withIfindex(loIfindex)
	b.nodeMAC = mac{}
	d.addPods(a, b)
	rep := udpDatagram(netip.AddrPortFrom(b.ip, backendPort), netip.AddrPortFrom(a.ip, 40000), make([]byte, 40))
	rep.srcMAC, rep.dstMAC, rep.id = b.mac, b.nodeMAC, 0x5151
	first, second = fragments(rep)
	for i, f := range []ipv4Packet{first, second} {
		verdict, got := d.run(d.objs.FromContainer, b.ifindex, f.frame())
		if src := netip.AddrFrom4([4]byte(got[26:30])); verdict != tcActRedirect || src != clusterIP.Addr() {
			t.Errorf("reply fragment %d: from %s (verdict %d), want from the ClusterIP", i, src, verdict)
		}
		checkIPv4Checksum(t, got)
	}

	// Out of order: a second fragment whose first was not seen.
	lost := udpDatagram(netip.AddrPortFrom(b.ip, 40001), clusterIP, make([]byte, 40))
	lost.srcMAC, lost.dstMAC, lost.id = b.mac, b.nodeMAC, 0x6161
	_, second = fragments(lost)
	if verdict, got := d.run(d.objs.FromContainer, b.ifindex, second.frame()); verdict == tcActRedirect {
		t.Errorf("a fragment whose first was not seen was delivered to %s", netip.AddrFrom4([4]byte(got[30:34])))
	}
}

// TestFragmentsMasquerade: a pod's fragmented datagram leaving the native
// CIDR leaves whole from the node's address, its fragmented reply comes
// back whole to the pod; a fragment of a datagram whose first went by
// unseen is dropped, never leaving with the pod's address.
func TestFragmentsMasquerade(t *testing.T) {
	d := masqDatapath(t)
	server := netip.AddrPortFrom(outsideIP, 53)
	out := udpDatagram(netip.AddrPortFrom(podA.ip, 40000), server, make([]byte, 40))
	out.dstMAC, out.srcMAC, out.id = peerNodeMAC, loMAC, 0x7171
	first, second := fragments(out)
	var natted netip.AddrPort
	for i, f := range []ipv4Packet{first, second} {
		verdict, got := d.run(d.objs.ToNetdev, loIfindex, f.frame())
		src := netip.AddrFrom4([4]byte(got[26:30]))
		if verdict != tcActOK || src != nodeIP {
			t.Fatalf("fragment %d left from %s (verdict %d), want %s", i, src, verdict, nodeIP)
		}
		checkIPv4Checksum(t, got)
		if i == 0 {
			natted, _ = frameTuple(got)
		}
	}
	in := udpDatagram(server, natted, make([]byte, 40))
	in.dstMAC, in.srcMAC, in.id = loMAC, peerNodeMAC, 0x8181
	first, second = fragments(in)
	for i, f := range []ipv4Packet{first, second} {
		verdict, got := d.run(d.objs.FromNetdev, loIfindex, f.frame())
		if dst := netip.AddrFrom4([4]byte(got[30:34])); verdict != tcActRedirect || dst != podA.ip {
			t.Errorf("reply fragment %d: to %s (verdict %d), want pod A", i, dst, verdict)
		}
	}
	lost := udpDatagram(netip.AddrPortFrom(podA.ip, 40002), server, make([]byte, 40))
	lost.dstMAC, lost.srcMAC, lost.id = peerNodeMAC, loMAC, 0x9191
	_, second = fragments(lost)
	if verdict, _ := d.run(d.objs.ToNetdev, loIfindex, second.frame()); verdict != tcActShot {
		t.Errorf("an unseen datagram's fragment: verdict %d, want TC_ACT_SHOT", verdict)
	}
	if got := d.metrics()[maps.MetricDropFragNotFound].Packets; got != 1 {
		t.Errorf("drop-frag-not-found %d, want 1", got)
	}
}

// BenchmarkNodePortRemote measures a client's datagram of an established
// UDP flow to a NodePort whose backend is on another node, through
// from-netdev: DNAT to the backend, SNAT to the node's address, out by
// bpf_fib_lookup + bpf_redirect_neigh (in the FIB node's namespace, its
// loopback the device with the node's address), against a datagram from
// the wire to a local pod (x-direct) and the empty program. One packet
// per test run.
func BenchmarkNodePortRemote(b *testing.B) {
	f := newFIBNode(b)
	lo := f.ifindex["lo"]
	d := loadDatapath(b, withMasquerade(fibConfig(1)))
	local := podB.withIfindex(f.ifindex["lxca"])
	d.addPods(local)
	node := netip.MustParseAddr("172.18.0.2")
	if err := d.objs.HrNodeAddrs.Put(lo, ipv4Key(node)); err != nil {
		b.Fatal(err)
	}
	backend := netip.MustParseAddrPort("10.0.2.10:8080")
	if err := d.services().PutBackends([]maps.Backend{{ID: 21, Addr: backend, Proto: maps.UDP}}); err != nil {
		b.Fatal(err)
	}
	front := netip.AddrPortFrom(node, 30053)
	if err := d.services().Put(maps.ServiceEntry{Frontend: maps.Frontend{Addr: front, Proto: maps.UDP},
		RevNAT: 3, Backends: []uint32{21}, Flags: maps.ServiceNodePort}); err != nil {
		b.Fatal(err)
	}
	client := netip.AddrPortFrom(outsideIP, 5000)
	in := func(src, dst netip.AddrPort) []byte {
		p := udpDatagram(src, dst, make([]byte, 32))
		p.dstMAC, p.srcMAC, p.ttl = mac{}, gw0MAC, 255
		return p.frame()
	}
	run := func(frame []byte) (uint32, []byte) {
		var verdict uint32
		var out []byte
		if err := f.node.Do(func() error {
			verdict, out = d.run(d.objs.FromNetdev, lo, frame)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		return verdict, out
	}
	// The flow: a datagram, the backend's reply, another datagram.
	verdict, out := run(in(client, front))
	natted, _ := frameTuple(out)
	if verdict != tcActRedirect || natted.Addr() != node {
		b.Fatalf("first datagram: verdict %d from %s, want redirected from %s", verdict, natted, node)
	}
	run(in(backend, natted))
	run(in(client, front))
	if e, err := d.snat().Lookup(maps.SNATKey{Dir: maps.NATOut, Proto: maps.UDP, Src: client, Dst: backend}); err != nil || !e.Established {
		b.Fatalf("NodePort flow's SNAT entry: %v, %v; want established", e, err)
	}
	benchRun{prog: d.objs.FromNetdev, frame: in(client, front), perRun: 1, want: tcActRedirect, node: f.node,
		empty: emptyProgram(b), direct: &benchTarget{d.objs.FromNetdev, in(client, netip.AddrPortFrom(local.ip, 53)), tcActRedirect}}.run(b)
}
