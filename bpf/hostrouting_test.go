package bpf_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/hostrouting/hostrouting/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// forEachConfig runs test once per local-delivery configuration: with
// bpf_redirect_peer and with the bpf_redirect fallback.
func forEachConfig(t *testing.T, test func(t *testing.T, cfg bpf.HostroutingConfig)) {
	for _, c := range []struct {
		name string
		cfg  bpf.HostroutingConfig
	}{
		{"redirect_peer", configPeer},
		{"redirect", configRedirect},
	} {
		t.Run(c.name, func(t *testing.T) { test(t, c.cfg) })
	}
}

// checkDelivered sends pkt from podA to podB through from_container under
// cfg and checks that it leaves forwarded (MACs rewritten, TTL one less,
// checksum right, all else unchanged), with the counters of cfg's path.
func checkDelivered(t *testing.T, cfg bpf.HostroutingConfig, pkt ipv4Packet) {
	t.Helper()
	d := loadDatapath(t, cfg)
	d.addPods(podA, podB, podC)

	frame := pkt.frame()
	verdict, out := d.run(d.objs.FromContainer, loIfindex, frame)
	if verdict != tcActRedirect {
		t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
	}
	checkFrame(t, "forwarded frame", out, pkt.forwarded(podB).frame())
	checkIPv4Checksum(t, out)
	if got := mac(out[0:6]); got != podB.mac {
		t.Errorf("destination MAC %s, want pod B's %s", got, podB.mac)
	}
	if got := mac(out[6:12]); got != podB.nodeMAC {
		t.Errorf("source MAC %s, want pod B's node MAC %s", got, podB.nodeMAC)
	}
	if got := out[14+8]; got != pkt.ttl-1 {
		t.Errorf("TTL %d, want %d", got, pkt.ttl-1)
	}

	want := counts{from: map[uint32]uint64{podA.ifindex: 1}}
	if cfg.RedirectPeer != 0 {
		// The to-container step runs inline before bpf_redirect_peer.
		want.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
		want.to = map[uint32]uint64{podB.ifindex: 1}
	} else {
		// B's "to" is counted by to_container on its device's egress.
		want.metrics = map[maps.Metric]uint64{maps.MetricForwardRedirect: 1}
	}
	d.checkCounts(want, len(frame), podA.ifindex, podB.ifindex, podC.ifindex)
}

// TestFromContainerLocalDelivery forwards packets of several kinds from pod A
// to pod B, with bpf_redirect_peer and with the bpf_redirect fallback.
func TestFromContainerLocalDelivery(t *testing.T) {
	tcp := ipv4From(podA, podB.ip)
	tcp.proto = 6
	tcp.payload = make([]byte, 1400)
	for i := range tcp.payload {
		tcp.payload[i] = byte(i)
	}
	icmp := ipv4From(podA, podB.ip)
	icmp.proto = 1
	icmp.payload = []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0}
	padded := ipv4From(podA, podB.ip)
	padded.payload = padded.payload[:8] // 42-byte frame, padded to 60 on the wire
	padded.padding = 18
	ttl2 := ipv4From(podA, podB.ip)
	ttl2.ttl = 2
	ttl255 := ipv4From(podA, podB.ip)
	ttl255.ttl = 255

	for _, c := range []struct {
		name string
		pkt  ipv4Packet
	}{
		{"udp", ipv4From(podA, podB.ip)},
		{"tcp 1400 bytes", tcp},
		{"icmp echo", icmp},
		{"ethernet padding", padded},
		{"ttl 2", ttl2},
		{"ttl 255", ttl255},
	} {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkDelivered(t, cfg, c.pkt)
			})
		})
	}
}

// TestFromContainerTTLChecksum drives the incremental checksum update of the
// TTL decrement through its carry cases: the IP ID is chosen so that the
// header checksum before forwarding has the given value.
func TestFromContainerTTLChecksum(t *testing.T) {
	for _, c := range []struct {
		ttl   uint8
		check uint16
	}{
		{64, 0x0000},
		{64, 0x00ff},
		{64, 0xff00},
		{64, 0xfeff}, // + 0x0100 gives 0xffff: the one's complement carry case
		{64, 0xfffe},
		{2, 0xfeff},
		{255, 0xfeff},
		{128, 0x1234},
	} {
		t.Run(fmt.Sprintf("ttl %d check %#04x", c.ttl, c.check), func(t *testing.T) {
			pkt := ipv4From(podA, podB.ip)
			pkt.ttl = c.ttl
			pkt.id = idForChecksum(t, pkt, c.check)
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkDelivered(t, cfg, pkt)
			})
		})
	}
}

// idForChecksum returns the IP ID that gives pkt the header checksum check.
func idForChecksum(t *testing.T, pkt ipv4Packet, check uint16) uint16 {
	t.Helper()
	for id := range 1 << 16 {
		pkt.id = uint16(id)
		if binary.BigEndian.Uint16(pkt.frame()[14+10:]) == check {
			return pkt.id
		}
	}
	t.Fatalf("no IP ID gives checksum %#04x", check)
	return 0
}

// TestFromContainerIPv4Options forwards packets whose header carries options
// and checks that the options arrive unchanged.
func TestFromContainerIPv4Options(t *testing.T) {
	// Router alert (RFC 2113), 4 bytes: ihl 6.
	routerAlert := []byte{0x94, 0x04, 0x00, 0x00}
	// Record route with room for 9 addresses and NOP padding: 40 bytes, ihl 15.
	recordRoute := make([]byte, 40)
	recordRoute[0], recordRoute[1], recordRoute[2] = 0x07, 39, 4
	copy(recordRoute[3:], []byte{10, 0, 1, 10})
	recordRoute[39] = 0x01
	// Two NOPs and an end of options list: ihl 6.
	nops := []byte{0x01, 0x01, 0x00, 0x00}

	for _, c := range []struct {
		name    string
		options []byte
	}{
		{"ihl 6 router alert", routerAlert},
		{"ihl 6 nop eol", nops},
		{"ihl 15 record route", recordRoute},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := ipv4From(podA, podB.ip)
			pkt.options = c.options
			if ihl := pkt.frame()[14] & 0x0f; ihl != byte(5+len(c.options)/4) {
				t.Fatalf("test frame has ihl %d", ihl)
			}
			// checkDelivered compares the whole frame, options included.
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkDelivered(t, cfg, pkt)
			})
		})
	}
}

// TestFromContainerFragments forwards IPv4 fragments like any packet: local
// delivery needs nothing beyond the IP header.
func TestFromContainerFragments(t *testing.T) {
	for _, c := range []struct {
		name     string
		fragment uint16
	}{
		{"first fragment (MF)", ipFlagMF},
		{"middle fragment (MF, offset 1480)", ipFlagMF | 185},
		{"last fragment (offset 2960)", 370},
		{"offset without L4 header", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := ipv4From(podA, podB.ip)
			pkt.fragment = c.fragment
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkDelivered(t, cfg, pkt)
			})
		})
	}
}

// checkToStack sends frame through from_container and checks that it goes
// to the kernel's stack untouched, counted as TO_STACK and, when countedFrom,
// as sent by pod A.
func checkToStack(t *testing.T, cfg bpf.HostroutingConfig, frame []byte, countedFrom bool) {
	t.Helper()
	d := loadDatapath(t, cfg)
	d.addPods(podA, podB)

	verdict, out := d.run(d.objs.FromContainer, loIfindex, frame)
	if verdict != tcActOK {
		t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
	}
	checkFrame(t, "frame to the stack", out, frame)
	want := counts{metrics: map[maps.Metric]uint64{maps.MetricToStack: 1}}
	if countedFrom {
		want.from = map[uint32]uint64{podA.ifindex: 1}
	}
	d.checkCounts(want, len(frame), podA.ifindex, podB.ifindex)
}

// TestFromContainerTTLExpiring leaves packets that would expire on the way to
// the stack, which answers with ICMP time exceeded.
func TestFromContainerTTLExpiring(t *testing.T) {
	for _, ttl := range []uint8{1, 0} {
		t.Run(fmt.Sprintf("ttl %d", ttl), func(t *testing.T) {
			pkt := ipv4From(podA, podB.ip)
			pkt.ttl = ttl
			// The stack answers with ICMP time exceeded.
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkToStack(t, cfg, pkt.frame(), true)
			})
		})
	}
}

// TestFromContainerNotLocal leaves packets for addresses that are not local
// endpoints to the stack, untouched.
func TestFromContainerNotLocal(t *testing.T) {
	for _, dst := range []netip.Addr{
		remoteIP,
		gatewayIP,
		netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("224.0.0.251"),
	} {
		t.Run(dst.String(), func(t *testing.T) {
			checkToStack(t, configPeer, ipv4From(podA, dst).frame(), true)
		})
	}
}

// checkDropped sends frame through from_container and checks that it is
// dropped for reason, counted against pod A's device and nobody else's.
func checkDropped(t *testing.T, frame []byte, reason maps.Metric) {
	t.Helper()
	d := loadDatapath(t, configPeer)
	d.addPods(podA, podB, podC)

	verdict, out := d.run(d.objs.FromContainer, loIfindex, frame)
	if verdict != tcActShot {
		t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", verdict, tcActShot)
	}
	checkFrame(t, "dropped frame", out, frame)
	d.checkCounts(counts{
		metrics: map[maps.Metric]uint64{reason: 1},
		drop:    map[uint32]uint64{podA.ifindex: 1},
	}, len(frame), podA.ifindex, podB.ifindex, podC.ifindex)
}

// TestFromContainerSpoofing drops IPv4 from a pod whose source IP, MAC or
// device is not that of the endpoint it claims to be.
func TestFromContainerSpoofing(t *testing.T) {
	otherIP := ipv4From(podA, podB.ip)
	otherIP.src = podC.ip
	otherEndpoint := ipv4From(podA, podB.ip)
	otherEndpoint.src, otherEndpoint.srcMAC = podC.ip, podC.mac
	unknownIP := ipv4From(podA, podB.ip)
	unknownIP.src = netip.MustParseAddr("10.0.1.99")
	unspecified := ipv4From(podA, podB.ip)
	unspecified.src = netip.IPv4Unspecified()
	wrongMAC := ipv4From(podA, podB.ip)
	wrongMAC.srcMAC = mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0xff}
	peerMAC := ipv4From(podA, podB.ip)
	peerMAC.srcMAC = podB.mac
	toStack := ipv4From(podA, remoteIP)
	toStack.src = podC.ip

	for _, c := range []struct {
		name string
		pkt  ipv4Packet
	}{
		{"source IP of another endpoint", otherIP},
		{"source IP unknown", unknownIP},
		{"source IP unspecified", unspecified},
		{"right IP wrong MAC", wrongMAC},
		{"right IP with another endpoint's MAC", peerMAC},
		// pod C's own IP and MAC, arriving on pod A's device.
		{"right IP and MAC on another device", otherEndpoint},
		{"spoofed source to a remote destination", toStack},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkDropped(t, c.pkt.frame(), maps.MetricDropSpoofed)
		})
	}
}

// TestFromContainerMalformed drops truncated and malformed IPv4 and ARP.
func TestFromContainerMalformed(t *testing.T) {
	good := ipv4From(podA, podB.ip).frame()
	with := func(mutate func(f []byte) []byte) []byte {
		return mutate(append([]byte(nil), good...))
	}
	arp := arpRequest(podA, gatewayIP).frame()

	// Frames with an IPv4 ethertype but less than a full IPv4 header: Linux
	// 6.18 refuses these in BPF_PROG_TEST_RUN (EINVAL, before the program
	// runs); kernels that take them must see the program drop them.
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"ethernet header only", good[:14]},
		{"partial ipv4 header (10 bytes)", good[:24]},
		{"partial ipv4 header (19 bytes)", good[:33]},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			d.addPods(podA, podB, podC)
			_, _, err := d.tryRun(d.objs.FromContainer, skbContext{Ifindex: loIfindex}, c.frame)
			if errors.Is(err, syscall.EINVAL) {
				t.Logf("the kernel refuses a %d-byte IPv4 frame in BPF_PROG_TEST_RUN: the program never sees it", len(c.frame))
				d.checkCounts(counts{}, 0, podA.ifindex)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkDropped(t, c.frame, maps.MetricDropInvalid)
		})
	}

	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"tot_len larger than frame", with(func(f []byte) []byte {
			binary.BigEndian.PutUint16(f[16:], uint16(len(f)-14+1))
			return f
		})},
		{"tot_len 0xffff", with(func(f []byte) []byte {
			binary.BigEndian.PutUint16(f[16:], 0xffff)
			return f
		})},
		{"tot_len smaller than header", with(func(f []byte) []byte {
			binary.BigEndian.PutUint16(f[16:], 19)
			return f
		})},
		{"ihl 4", with(func(f []byte) []byte { f[14] = 0x44; return f })},
		{"ihl 0", with(func(f []byte) []byte { f[14] = 0x40; return f })},
		{"ihl 15 beyond tot_len", with(func(f []byte) []byte { f[14] = 0x4f; return f })},
		{"version 6 in ipv4 ethertype", with(func(f []byte) []byte { f[14] = 0x65; return f })},
		{"version 0", with(func(f []byte) []byte { f[14] = 0x05; return f })},
		{"truncated arp", arp[:14+20]},
		{"arp ethernet header only", arp[:14]},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkDropped(t, c.frame, maps.MetricDropInvalid)
		})
	}
}

// TestFromContainerRuntFrame documents what happens to frames shorter than
// an Ethernet header: BPF_PROG_TEST_RUN refuses them with EINVAL before the
// program runs (a real device never hands tc such a frame either), so the
// program's own length check cannot be reached from a test run.
func TestFromContainerRuntFrame(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA)
	frame := ipv4From(podA, podB.ip).frame()

	for _, n := range []int{1, 13} {
		_, _, err := d.tryRun(d.objs.FromContainer, skbContext{Ifindex: loIfindex}, frame[:n])
		if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%d-byte frame: error %v, want EINVAL", n, err)
		}
	}
	d.checkCounts(counts{}, 0, podA.ifindex)
}

// TestFromContainerOtherEthertypes drops what the datapath does not carry
// and leaves IPv6 to the stack.
func TestFromContainerOtherEthertypes(t *testing.T) {
	for _, c := range []struct {
		name      string
		ethertype uint16
	}{
		{"lldp", ethPLLDP},
		{"vlan tag in the frame", ethPVLAN},
		{"802.3 length field", 0x0040},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame := ethFrame(podA.nodeMAC, podA.mac, c.ethertype, make([]byte, 46))
			checkDropped(t, frame, maps.MetricDropUnknownL3)
		})
	}

	t.Run("ipv6", func(t *testing.T) {
		// An ICMPv6 echo header behind a minimal IPv6 header: to the stack
		// uninspected (the datapath does not carry IPv6 yet).
		ip6 := make([]byte, 40+8)
		ip6[0] = 0x60
		binary.BigEndian.PutUint16(ip6[4:], 8)
		ip6[6], ip6[7] = 58, 64
		ip6[40] = 128
		frame := ethFrame(podA.nodeMAC, podA.mac, ethPIPv6, ip6)
		checkToStack(t, configPeer, frame, false)
	})
}

// TestFromContainerARP covers the ARP sender checks and the responder.
func TestFromContainerARP(t *testing.T) {
	responder := podA.withFlags(endpointFlagARPResponder)

	// reply is the answer the responder gives to req.
	reply := func(req arpPacket) arpPacket {
		return arpPacket{
			ethDst: req.ethSrc, ethSrc: podA.nodeMAC,
			hrd: arpHrdEther, pro: ethPIPv4, hln: 6, pln: 4,
			op:  arpOpReply,
			sha: podA.nodeMAC, sip: req.tip,
			tha: req.sha, tip: req.sip,
			padding: req.padding,
		}
	}
	req := func(mutate func(a *arpPacket)) arpPacket {
		a := arpRequest(podA, gatewayIP)
		if mutate != nil {
			mutate(&a)
		}
		return a
	}
	padded := req(func(a *arpPacket) { a.padding = 18 })
	forPodB := req(func(a *arpPacket) { a.tip = podB.ip })
	unicast := req(func(a *arpPacket) { a.ethDst = podA.nodeMAC; a.tha = podA.nodeMAC })

	const (
		answered = iota // TC_ACT_REDIRECT with a reply
		stack           // TC_ACT_OK, unchanged, counted as from pod A
		probe           // TC_ACT_OK, unchanged, not counted as from pod A
		spoofed
		invalid
	)
	for _, c := range []struct {
		name    string
		sender  pod // pod A with or without the responder flag
		request arpPacket
		want    int
	}{
		{"request for the gateway", responder, req(nil), answered},
		{"request for another pod", responder, forPodB, answered},
		{"padded request", responder, padded, answered},
		{"unicast request (refresh)", responder, unicast, answered},
		{"request without responder flag", podA, req(nil), stack},
		{"gratuitous request", responder, req(func(a *arpPacket) { a.tip = podA.ip }), stack},
		{"reply from the pod", responder, req(func(a *arpPacket) { a.op = arpOpReply }), stack},
		{"other opcode", responder, req(func(a *arpPacket) { a.op = 3 }), stack},
		{"probe (sender IP 0.0.0.0)", responder, req(func(a *arpPacket) { a.sip = netip.IPv4Unspecified() }), probe},
		{"probe without responder flag", podA, req(func(a *arpPacket) { a.sip = netip.IPv4Unspecified() }), probe},
		{"sender IP of another endpoint", responder, req(func(a *arpPacket) { a.sip = podB.ip }), spoofed},
		{"sender IP unknown", responder, req(func(a *arpPacket) { a.sip = netip.MustParseAddr("10.0.1.99") }), spoofed},
		{"sender MAC wrong", responder, req(func(a *arpPacket) { a.sha = podB.mac }), spoofed},
		{"ethernet source wrong", responder, req(func(a *arpPacket) { a.ethSrc = podB.mac }), spoofed},
		{"endpoint of another device", responder, req(func(a *arpPacket) {
			a.ethSrc, a.sha, a.sip = podC.mac, podC.mac, podC.ip
		}), spoofed},
		{"spoofed without responder flag", podA, req(func(a *arpPacket) { a.sip = podB.ip }), spoofed},
		{"hlen 8", responder, req(func(a *arpPacket) { a.hln = 8 }), invalid},
		{"plen 16", responder, req(func(a *arpPacket) { a.pln = 16 }), invalid},
		{"hardware type ieee802", responder, req(func(a *arpPacket) { a.hrd = 6 }), invalid},
		{"protocol ipv6", responder, req(func(a *arpPacket) { a.pro = ethPIPv6 }), invalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			d.addPods(c.sender, podB, podC)
			frame := c.request.frame()

			verdict, out := d.run(d.objs.FromContainer, loIfindex, frame)
			var wantVerdict uint32
			want := counts{}
			wantFrame := frame
			switch c.want {
			case answered:
				wantVerdict = tcActRedirect
				wantFrame = reply(c.request).frame()
				want.metrics = map[maps.Metric]uint64{maps.MetricARPReply: 1}
				want.from = map[uint32]uint64{podA.ifindex: 1}
			case stack:
				wantVerdict = tcActOK
				want.metrics = map[maps.Metric]uint64{maps.MetricToStack: 1}
				want.from = map[uint32]uint64{podA.ifindex: 1}
			case probe:
				wantVerdict = tcActOK
				want.metrics = map[maps.Metric]uint64{maps.MetricToStack: 1}
			case spoofed, invalid:
				wantVerdict = tcActShot
				reason := maps.MetricDropSpoofed
				if c.want == invalid {
					reason = maps.MetricDropInvalid
				}
				want.metrics = map[maps.Metric]uint64{reason: 1}
				want.drop = map[uint32]uint64{podA.ifindex: 1}
			}
			if verdict != wantVerdict {
				t.Errorf("verdict %d, want %d", verdict, wantVerdict)
			}
			checkFrame(t, "frame", out, wantFrame)
			if c.want == answered {
				checkARPReply(t, out, c.request)
			}
			d.checkCounts(want, len(frame), podA.ifindex, podB.ifindex, podC.ifindex)
		})
	}
}

// checkARPReply spells out the fields of the responder's reply to req, so
// that a failure names the field and not only a byte offset.
func checkARPReply(t *testing.T, out []byte, req arpPacket) {
	t.Helper()
	if len(out) < 42 {
		t.Fatalf("reply of %d bytes", len(out))
	}
	arp := out[14:]
	if op := binary.BigEndian.Uint16(arp[6:]); op != arpOpReply {
		t.Errorf("op %d, want %d (reply)", op, arpOpReply)
	}
	if sha := mac(arp[8:14]); sha != podA.nodeMAC {
		t.Errorf("sender MAC %s, want node MAC %s", sha, podA.nodeMAC)
	}
	if sip, _ := netip.AddrFromSlice(arp[14:18]); sip != req.tip {
		t.Errorf("sender IP %s, want the asked %s", sip, req.tip)
	}
	if tha := mac(arp[18:24]); tha != req.sha {
		t.Errorf("target MAC %s, want the pod's %s", tha, req.sha)
	}
	if tip, _ := netip.AddrFromSlice(arp[24:28]); tip != req.sip {
		t.Errorf("target IP %s, want the pod's %s", tip, req.sip)
	}
	if dst := mac(out[0:6]); dst != req.ethSrc {
		t.Errorf("ethernet destination %s, want the pod's %s", dst, req.ethSrc)
	}
	if src := mac(out[6:12]); src != podA.nodeMAC {
		t.Errorf("ethernet source %s, want node MAC %s", src, podA.nodeMAC)
	}
}

// TestToContainer checks that to_container passes what the stack delivers
// into a pod and counts it against the pod's device.
func TestToContainer(t *testing.T) {
	// to_container runs on pod B's device, which must be loopback in a
	// test run (see loIfindex); pod A is elsewhere.
	b := podB.withIfindex(loIfindex)
	a := podA.withIfindex(10)

	fromA := ipv4From(a, b.ip).forwarded(b)
	toA := ipv4From(b, a.ip)
	toA.dstMAC, toA.srcMAC = b.mac, b.nodeMAC
	toUnknown := fromA
	toUnknown.dst = netip.MustParseAddr("10.0.1.99")
	malformed := fromA.frame()
	malformed[14] = 0x44

	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"ipv4 to the endpoint", fromA.frame()},
		{"ipv4 to another endpoint", toA.frame()},
		{"ipv4 to an unknown address", toUnknown.frame()},
		{"malformed ipv4", malformed},
		{"arp", arpRequest(a, b.ip).frame()},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			d.addPods(a, b)

			verdict, out := d.run(d.objs.ToContainer, b.ifindex, c.frame)
			if verdict != tcActOK {
				t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
			}
			checkFrame(t, "frame", out, c.frame)
			d.checkCounts(counts{
				to: map[uint32]uint64{b.ifindex: 1},
			}, len(c.frame), a.ifindex, b.ifindex)
		})
	}
}

// TestMetricsLayout guards maps.Metric, the Go copy of enum metric in
// lib/common.h (the enum is not in the object's BTF).
func TestMetricsLayout(t *testing.T) {
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		t.Fatal(err)
	}
	if n := spec.Maps[bpf.HostroutingMapHrMetrics].MaxEntries; n != uint32(maps.MetricCount) {
		t.Fatalf("hr_metrics has %d entries, maps knows %d metrics: update maps.Metric", n, maps.MetricCount)
	}
}

// TestPolicyHookIsReplaceable checks that the ingress policy hook survives
// compilation as a global BTF function, which is what freplace needs to
// find and replace it (the datapath package tests the replacement itself).
func TestPolicyHookIsReplaceable(t *testing.T) {
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		t.Fatal(err)
	}
	var hook *btf.Func
	if err := spec.Types.TypeByName("hr_ingress_policy", &hook); err != nil {
		t.Fatalf("hr_ingress_policy is not a BTF function of the object (must stay global and noinline): %v", err)
	}
	if hook.Linkage != btf.GlobalFunc {
		t.Errorf("hr_ingress_policy has linkage %v: want global", hook.Linkage)
	}
	proto, ok := hook.Type.(*btf.FuncProto)
	if !ok || len(proto.Params) != 2 {
		t.Fatalf("hr_ingress_policy: want (struct __sk_buff *, __u32), got %v", hook.Type)
	}
}
