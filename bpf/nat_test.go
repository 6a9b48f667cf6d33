package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// The masquerade tests' node: its device is loopback (frames there are
// PACKET_HOST), with address nodeIP; outsideIP is beyond the native
// routing CIDR. NAT ports are masqPorts.
var (
	nodeIP     = netip.MustParseAddr("172.18.0.2")
	outsideIP  = netip.MustParseAddr("192.0.2.1")
	masqConfig = nativeConfig(bpf.HostroutingConfig{RedirectPeer: 1, Masquerade: 1, NatPortMin: 30000, NatPortMax: 30099}, fibNativeCIDR)
)

// masqDatapath loads the datapath with masquerade on, pod A on it and
// loopback as the node device with nodeIP.
func masqDatapath(tb testing.TB) *datapath {
	tb.Helper()
	d := loadDatapath(tb, masqConfig)
	d.addPods(podA)
	if err := d.objs.HrNodeAddrs.Put(uint32(loIfindex), ipv4Key(nodeIP)); err != nil {
		tb.Fatal(err)
	}
	return d
}

// TestMasquerade runs pod A's datagram to an address outside the native
// routing CIDR through to-netdev: it leaves from the node's address and a
// port of the NAT range, with both SNAT entries made; the reply, through
// from-netdev, is translated back to A's address and port and delivered
// to A with bpf_redirect_peer. A datagram inside the native routing CIDR
// keeps its source.
func TestMasquerade(t *testing.T) {
	d := masqDatapath(t)
	out := ipv4From(podA, outsideIP).withPorts(40000, 53)
	out.dstMAC, out.srcMAC = peerNodeMAC, loMAC // as the stack sends it out
	verdict, got := d.run(d.objs.ToNetdev, loIfindex, out.frame())
	if verdict != tcActOK {
		t.Fatalf("out: verdict %d, want TC_ACT_OK", verdict)
	}
	entries, err := tables.NewSNAT(d.objs.HrSnat4Tcp, d.objs.HrSnat4Any, d.objs.HrSnat4New).List()
	if err != nil || len(entries) != 2 {
		t.Fatalf("SNAT entries %v, %v: want OUT and IN", entries, err)
	}
	var natPort uint16
	for _, e := range entries {
		if e.Dir == maps.NATOut {
			natPort = e.To.Port()
			if e.Src != netip.AddrPortFrom(podA.ip, 40000) || e.To.Addr() != nodeIP {
				t.Errorf("OUT entry %v, want %s:40000 → %s", e, podA.ip, nodeIP)
			}
		}
	}
	if natPort < 30000 || natPort > 30099 {
		t.Fatalf("NAT port %d, want one of 30000-30099 (entries %v)", natPort, entries)
	}
	want := out
	want.src = nodeIP
	want = want.withPorts(natPort, 53)
	checkFrame(t, "leaving the node", got, want.frame())

	reply := fromNetwork(nodeIP).withPorts(53, natPort)
	reply.src = outsideIP
	verdict, got = d.run(d.objs.FromNetdev, loIfindex, reply.frame())
	if verdict != tcActRedirect {
		t.Fatalf("reply: verdict %d, want TC_ACT_REDIRECT", verdict)
	}
	want = reply
	want.dst = podA.ip
	want = want.withPorts(53, 40000).forwarded(podA)
	checkFrame(t, "the reply, as A gets it", got, want.frame())

	inside := ipv4From(podA, remoteIP).withPorts(40001, 53)
	inside.dstMAC, inside.srcMAC = peerNodeMAC, loMAC
	frame := inside.frame()
	if verdict, got = d.run(d.objs.ToNetdev, loIfindex, frame); verdict != tcActOK {
		t.Fatalf("inside the native routing CIDR: verdict %d", verdict)
	}
	checkFrame(t, "inside the native routing CIDR", got, frame)
}

// BenchmarkToNetdevMasquerade measures to-netdev translating a
// masqueraded flow (SNAT entry hit, source rewrite) against to-netdev
// passing a packet inside the native routing CIDR: a flow not established
// yet (no reply: its entries among the new flows, the IN half checked
// with each packet) and an established one (a reply came, and another
// packet: its entries in the established table). The translation
// rewrites the frame: one packet per test run, for all.
func BenchmarkToNetdevMasquerade(b *testing.B) {
	for _, bc := range []struct {
		name    string
		to      netip.Addr
		replied bool
	}{{"native", remoteIP, false}, {"masquerade-new", outsideIP, false}, {"masquerade-established", outsideIP, true}} {
		b.Run(bc.name, func(b *testing.B) {
			d := masqDatapath(b)
			pkt := ipv4From(podA, bc.to).withPorts(40000, 53)
			pkt.dstMAC, pkt.srcMAC = peerNodeMAC, loMAC
			v, out := d.run(d.objs.ToNetdev, loIfindex, pkt.frame())
			if v != tcActOK {
				b.Fatalf("first packet: verdict %d", v)
			}
			if bc.replied {
				src, dst := frameTuple(out)
				d.run(d.objs.FromNetdev, loIfindex, udpIn(dst, src))
				d.run(d.objs.ToNetdev, loIfindex, pkt.frame())
				if e, err := d.snat().Lookup(maps.SNATKey{Dir: maps.NATOut, Proto: maps.UDP, Src: netip.AddrPortFrom(podA.ip, 40000), Dst: dst}); err != nil || !e.Established {
					b.Fatalf("after a reply and another packet: %v, %v; want established", e, err)
				}
			}
			native := ipv4From(podA, remoteIP).withPorts(40000, 53)
			native.dstMAC, native.srcMAC = peerNodeMAC, loMAC
			benchRun{prog: d.objs.ToNetdev, frame: pkt.frame(), perRun: 1, want: tcActOK, empty: emptyProgram(b),
				direct: &benchTarget{d.objs.ToNetdev, native.frame(), tcActOK}}.run(b)
		})
	}
}
