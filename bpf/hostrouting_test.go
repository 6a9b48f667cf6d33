package bpf_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/examples/policy"
	"github.com/hostrouting/hostrouting/internal/bpf"
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

// TestFromContainerIPv4Options leaves packets whose header carries options
// to the stack, untouched: source routes (LSRR, SSRR), record route and
// the like are the kernel's to honour or refuse (accept_source_route), not
// a router's fast path to forward blindly.
func TestFromContainerIPv4Options(t *testing.T) {
	// Loose source and record route (RFC 791, type 0x83) through
	// 192.0.2.1, then pod B: 8 bytes with an EOL and NOP, ihl 7.
	lsrr := []byte{0x83, 0x07, 0x04, 192, 0, 2, 1, 0x00}
	// Strict source route (0x89) with room for one hop, padded: ihl 7.
	ssrr := []byte{0x89, 0x07, 0x04, 10, 0, 1, 20, 0x00}
	// Record route with room for 9 addresses and NOP padding: 40 bytes, ihl 15.
	recordRoute := make([]byte, 40)
	recordRoute[0], recordRoute[1], recordRoute[2] = 0x07, 39, 4
	copy(recordRoute[3:], []byte{10, 0, 1, 10})
	recordRoute[39] = 0x01
	// Router alert (RFC 2113), 4 bytes: ihl 6.
	routerAlert := []byte{0x94, 0x04, 0x00, 0x00}
	// Two NOPs and an end of options list: ihl 6.
	nops := []byte{0x01, 0x01, 0x00, 0x00}

	for _, c := range []struct {
		name    string
		options []byte
		dst     netip.Addr
	}{
		{"ihl 7 lsrr to pod B", lsrr, podB.ip},
		{"ihl 7 ssrr to pod B", ssrr, podB.ip},
		{"ihl 15 record route to pod B", recordRoute, podB.ip},
		{"ihl 6 router alert to pod B", routerAlert, podB.ip},
		{"ihl 6 nop eol to pod B", nops, podB.ip},
		{"ihl 7 lsrr to a remote pod", lsrr, remoteIP},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := ipv4From(podA, c.dst)
			pkt.options = c.options
			if ihl := pkt.frame()[14] & 0x0f; ihl != byte(5+len(c.options)/4) {
				t.Fatalf("test frame has ihl %d", ihl)
			}
			// checkToStack compares the whole frame, options included.
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkToStack(t, cfg, pkt.frame(), true)
			})
		})
	}
}

// TestFromContainerForeignMAC leaves frames a pod sends to a MAC other
// than its device's to the stack, untouched though counted as sent by the
// pod: on the pod's device (loopback, MAC 00:00:00:00:00:00) a foreign
// unicast MAC is PACKET_OTHERHOST, broadcast and multicast MACs are
// neither. The kernel would not route them either. Source checks come
// first: a forged source is dropped whatever the MAC.
func TestFromContainerForeignMAC(t *testing.T) {
	for _, c := range []struct {
		name string
		dst  mac
	}{
		{"another host's unicast MAC", otherHostMAC},
		{"pod B's MAC", podB.mac},
		{"pod B's node MAC", podB.nodeMAC},
		{"broadcast", broadcastMAC},
		{"ipv4 multicast MAC", ipv4MulticastMAC},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, dst := range []netip.Addr{podB.ip, remoteIP} {
				t.Run(dst.String(), func(t *testing.T) {
					pkt := ipv4From(podA, dst)
					pkt.dstMAC = c.dst
					forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
						checkToStack(t, cfg, pkt.frame(), true)
					})
				})
			}
			t.Run("forged source", func(t *testing.T) {
				pkt := ipv4From(podA, podB.ip)
				pkt.dstMAC = c.dst
				pkt.src = podC.ip
				checkDropped(t, pkt.frame(), maps.MetricDropSpoofed)
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

// TestFromContainerOtherEthertypes drops what the datapath does not carry.
func TestFromContainerOtherEthertypes(t *testing.T) {
	for _, c := range []struct {
		name      string
		ethertype uint16
	}{
		{"lldp", ethPLLDP},
		{"802.3 length field", 0x0040},
		{"mpls", 0x8847},
		{"pppoe", 0x8864},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame := ethFrame(podA.nodeMAC, podA.mac, c.ethertype, make([]byte, 46))
			checkDropped(t, frame, maps.MetricDropUnknownL3)
		})
	}
}

// TestFromContainerVLAN drops frames with a VLAN tag in the frame from a
// pod, whatever is behind the tag and whatever it claims to be: pods have
// no VLANs. The drop is counted against the device's endpoint (pod A), not
// the tagged packet's source. (A tag the kernel took off into the skb's
// metadata, vlan_present, cannot be set in a test run: see
// TestRegressionVLANFromContainer.)
func TestFromContainerVLAN(t *testing.T) {
	toB := ipv4From(podA, podB.ip).frame()
	forged := ipv4From(podA, podB.ip)
	forged.src, forged.srcMAC = podC.ip, podC.mac
	arp := arpRequest(podA, gatewayIP).frame()
	ip6 := ipv6From(podA, netip.MustParseAddr("fe80::a"), netip.MustParseAddr("ff02::2")).frame()

	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"802.1Q VLAN 100, ipv4 to pod B", vlanTagged(toB, ethPVLAN, 100)},
		{"802.1Q priority tag (VLAN 0), ipv4 to pod B", vlanTagged(toB, ethPVLAN, 5<<13)},
		{"802.1ad VLAN 4094, ipv4 to pod B", vlanTagged(toB, 0x88a8, 4094)},
		{"802.1ad over 802.1Q (QinQ)", vlanTagged(vlanTagged(toB, ethPVLAN, 100), 0x88a8, 200)},
		{"priority tag, forged source (pod C's IP and MAC)", vlanTagged(forged.frame(), ethPVLAN, 0)},
		{"priority tag, arp", vlanTagged(arp, ethPVLAN, 0)},
		{"priority tag, ipv6 link-local", vlanTagged(ip6, ethPVLAN, 0)},
		{"tag and nothing behind it", ethFrame(podA.nodeMAC, podA.mac, ethPVLAN, make([]byte, 46))},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkDropped(t, c.frame, maps.MetricDropVLAN)
		})
	}
}

// TestFromContainerMissingStage drops what from_container would hand to a
// stage that is not in hr_calls (a reload replaced the program's stages):
// nothing passes unchecked. Counted against the device's endpoint.
func TestFromContainerMissingStage(t *testing.T) {
	// Slots of hr_calls (enum call in lib/calls.h).
	const (
		callIPv4 = 0
		callIPv6 = 1
		callARP  = 2
	)
	for _, c := range []struct {
		name  string
		slot  uint32
		frame []byte
		other []byte // a frame of another stage, still served: to the stack
	}{
		{"ipv4", callIPv4, ipv4From(podA, podB.ip).frame(), arpRequest(podA, gatewayIP).frame()},
		{"ipv6", callIPv6, ipv6From(podA, netip.MustParseAddr("fe80::a"), netip.MustParseAddr("ff02::2")).frame(),
			ipv4From(podA, remoteIP).frame()},
		{"arp", callARP, arpRequest(podA, gatewayIP).frame(), ipv4From(podA, remoteIP).frame()},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			d.addPods(podA, podB)
			if err := d.objs.HrCalls.Delete(c.slot); err != nil {
				t.Fatal(err)
			}
			verdict, out := d.run(d.objs.FromContainer, loIfindex, c.frame)
			if verdict != tcActShot {
				t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", verdict, tcActShot)
			}
			checkFrame(t, "dropped frame", out, c.frame)
			d.checkCounts(counts{
				metrics: map[maps.Metric]uint64{maps.MetricDropTailCall: 1},
				drop:    map[uint32]uint64{podA.ifindex: 1},
			}, len(c.frame), podA.ifindex, podB.ifindex)

			// The other stages still run.
			if verdict, _ := d.run(d.objs.FromContainer, loIfindex, c.other); verdict != tcActOK {
				t.Errorf("frame of another stage: verdict %d, want TC_ACT_OK", verdict)
			}
			if got := d.metrics()[maps.MetricToStack].Packets; got != 1 {
				t.Errorf("frame of another stage: to-stack %d packets, want 1", got)
			}
		})
	}
}

// TestBigTCP delivers a GSO packet of BIG TCP, whose IPv4 tot_len is 0
// (its length, over 64 KiB, is the skb's, as the kernel's iph_totlen says),
// and drops or leaves to the stack a tot_len of 0 on a packet that is not
// GSO: that one is malformed.
func TestBigTCP(t *testing.T) {
	bigTCP := func(pkt ipv4Packet) []byte {
		pkt.proto = ipProtoTCP
		pkt.payload = make([]byte, 20+2800)
		pkt.payload[12] = 5 << 4
		for i := 20; i < len(pkt.payload); i++ {
			pkt.payload[i] = byte(i)
		}
		f := pkt.frame()
		binary.BigEndian.PutUint16(f[14+2:], 0)
		binary.BigEndian.PutUint16(f[14+10:], ipv4Checksum(f[14:34]))
		return f
	}
	gso := skbContext{GSOSize: 1400, GSOSegs: 2}

	t.Run("from_container", func(t *testing.T) {
		forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
			d := loadDatapath(t, cfg)
			d.addPods(podA, podB)
			frame := bigTCP(ipv4From(podA, podB.ip))
			// Forwarded: tot_len stays 0, the rest as for any packet.
			pkt := ipv4From(podA, podB.ip).forwarded(podB)
			want := bigTCP(pkt)
			ctx := gso
			ctx.Ifindex = loIfindex
			verdict, out, err := d.tryRun(d.objs.FromContainer, ctx, frame)
			if err != nil {
				t.Fatal(err)
			}
			if verdict != tcActRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
			}
			checkFrame(t, "forwarded frame", out, want)
			checkIPv4Checksum(t, out)
			c := counts{
				metrics: map[maps.Metric]uint64{maps.MetricForwardRedirect: 1},
				from:    map[uint32]uint64{podA.ifindex: 1},
			}
			if cfg.RedirectPeer != 0 {
				c.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
				c.to = map[uint32]uint64{podB.ifindex: 1}
			}
			d.checkCounts(c, len(frame), podA.ifindex, podB.ifindex)
		})
	})
	t.Run("from_netdev", func(t *testing.T) {
		forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
			d := loadDatapath(t, cfg)
			d.addPods(netdevPods...)
			frame := bigTCP(fromNetwork(podB.ip))
			want := bigTCP(fromNetwork(podB.ip).forwarded(podB))
			ctx := gso
			ctx.Ifindex = loIfindex
			verdict, out, err := d.tryRun(d.objs.FromNetdev, ctx, frame)
			if err != nil {
				t.Fatal(err)
			}
			if verdict != tcActRedirect {
				t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
			}
			checkFrame(t, "forwarded frame", out, want)
			c := counts{metrics: map[maps.Metric]uint64{maps.MetricForwardRedirect: 1}}
			if cfg.RedirectPeer != 0 {
				c.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
				c.to = map[uint32]uint64{podB.ifindex: 1}
			}
			d.checkCounts(c, len(frame), netdevIfindexes...)
		})
	})
	t.Run("tot_len 0 without gso_size from a pod", func(t *testing.T) {
		checkDropped(t, bigTCP(ipv4From(podA, podB.ip)), maps.MetricDropInvalid)
	})
	t.Run("tot_len 0 without gso_size from the network", func(t *testing.T) {
		checkNetdevToStack(t, configPeer, bigTCP(fromNetwork(podB.ip)))
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
		// Address probes (RFC 5227) have no sender IP to check: they
		// pass, counted against the device's endpoint, whatever MAC
		// they carry.
		{"probe (sender IP 0.0.0.0)", responder, req(func(a *arpPacket) { a.sip = netip.IPv4Unspecified() }), stack},
		{"probe without responder flag", podA, req(func(a *arpPacket) { a.sip = netip.IPv4Unspecified() }), stack},
		{"probe for pod B's address", responder, req(func(a *arpPacket) { a.sip, a.tip = netip.IPv4Unspecified(), podB.ip }), stack},
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

// TestToContainer checks that to_container passes whatever the stack
// delivers into a pod, untouched, and counts it against the device's
// endpoint (hr_devices), whatever the frame says: ARP, IPv4 to any
// address, IPv6, malformed frames. (The endpoint's policy, when it has
// one, is TestPolicyToContainer's.)
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
	ip6 := ipv6From(b, netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::b"))
	ip6.dstMAC, ip6.srcMAC = b.mac, b.nodeMAC

	frames := []struct {
		name  string
		frame []byte
	}{
		{"ipv4 to the endpoint", fromA.frame()},
		{"ipv4 to another endpoint", toA.frame()},
		{"ipv4 to an unknown address", toUnknown.frame()},
		{"malformed ipv4", malformed},
		{"arp", arpRequest(a, b.ip).frame()},
		{"ipv6", ip6.frame()},
		{"lldp", ethFrame(lldpMAC, b.nodeMAC, ethPLLDP, make([]byte, 46))},
	}
	for _, c := range frames {
		t.Run(c.name, func(t *testing.T) {
			for _, cfg := range []bpf.HostroutingConfig{configPeer, configRedirect} {
				d := loadDatapath(t, cfg)
				d.addPods(a, b, podC)

				verdict, out := d.run(d.objs.ToContainer, b.ifindex, c.frame)
				if verdict != tcActOK {
					t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
				}
				checkFrame(t, "frame", out, c.frame)
				d.checkCounts(counts{
					metrics: map[maps.Metric]uint64{maps.MetricPass: 1},
					to:      map[uint32]uint64{b.ifindex: 1},
				}, len(c.frame), a.ifindex, b.ifindex, podC.ifindex)
			}
		})
	}

	// A device that is no endpoint's (any more): passed and counted
	// node-wide only.
	t.Run("unknown device", func(t *testing.T) {
		d := loadDatapath(t, configRedirect)
		d.addPods(a, podB, podC)
		for _, c := range frames {
			verdict, out := d.run(d.objs.ToContainer, loIfindex, c.frame)
			if verdict != tcActOK {
				t.Errorf("%s: verdict %d, want TC_ACT_OK (%d)", c.name, verdict, tcActOK)
			}
			checkFrame(t, c.name, out, c.frame)
		}
		var want maps.MetricTable
		for _, c := range frames {
			want[maps.ToContainer][maps.MetricPass] = want[maps.ToContainer][maps.MetricPass].Add(
				maps.Counter{Packets: 1, Bytes: uint64(len(c.frame))})
		}
		d.checkTable(&want)
		for _, ifindex := range []uint32{a.ifindex, podB.ifindex, podC.ifindex} {
			if got := d.endpointStats(ifindex); got != (maps.EndpointStats{}) {
				t.Errorf("stats of ifindex %d = %+v, want none", ifindex, got)
			}
		}
	})
}

// TestMetricsLayout guards maps.Metric and maps.Direction, the Go copies
// of enum metric and enum direction in lib/common.h (the enums are not in
// the object's BTF): hr_metrics has a counter for every pair.
func TestMetricsLayout(t *testing.T) {
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		t.Fatal(err)
	}
	want := uint32(maps.DirectionCount) * uint32(maps.MetricCount)
	if n := spec.Maps[bpf.HostroutingMapHrMetrics].MaxEntries; n != want {
		t.Fatalf("hr_metrics has %d entries, maps knows %d directions × %d metrics: update maps.Metric or maps.Direction",
			n, maps.DirectionCount, maps.MetricCount)
	}
}

// TestSkbContextLayout checks that skbContext is struct __sk_buff as the
// kernel has it: its size, and the offsets of the fields the tests set.
func TestSkbContextLayout(t *testing.T) {
	var c skbContext
	if n := binary.Size(c); n != skbContextSize {
		t.Errorf("skbContext marshals to %d bytes, struct __sk_buff has %d", n, skbContextSize)
	}
	if n := unsafe.Sizeof(c); n != skbContextSize {
		t.Errorf("skbContext has %d bytes in memory, struct __sk_buff has %d", n, skbContextSize)
	}
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"mark", unsafe.Offsetof(c.Mark), 8},
		{"ifindex", unsafe.Offsetof(c.Ifindex), 40},
		{"cb", unsafe.Offsetof(c.CB), 48},
		{"data_end", unsafe.Offsetof(c.DataEnd), 80},
		{"flow_keys", unsafe.Offsetof(c.FlowKeys), 144},
		{"tstamp", unsafe.Offsetof(c.Tstamp), 152},
		{"wire_len", unsafe.Offsetof(c.WireLen), 160},
		{"gso_segs", unsafe.Offsetof(c.GSOSegs), 164},
		{"sk", unsafe.Offsetof(c.Sk), 168},
		{"gso_size", unsafe.Offsetof(c.GSOSize), 176},
		{"tstamp_type", unsafe.Offsetof(c.TstampType), 180},
		{"hwtstamp", unsafe.Offsetof(c.Hwtstamp), 184},
	} {
		if f.got != f.want {
			t.Errorf("%s at offset %d, struct __sk_buff has it at %d", f.name, f.got, f.want)
		}
	}
}

// TestStrictAlignment loads the whole object, every program, with
// BPF_F_STRICT_ALIGNMENT under each configuration: the verifier then
// refuses any packet or map access that is not naturally aligned (for a
// frame that starts 2 bytes into a word, NET_IP_ALIGN), which
// architectures without efficient unaligned access need. The example
// policy loads the same way.
func TestStrictAlignment(t *testing.T) {
	datapathtest.RequireRoot(t)
	for _, c := range []struct {
		name string
		cfg  bpf.HostroutingConfig
	}{
		{"redirect_peer", configPeer},
		{"redirect", configRedirect},
		{"fib redirect_neigh", fibConfig(1)},
		{"fib", fibConfig(0)},
		{"fib without check_mtu", withoutCheckMTU(fibConfig(1))},
		{"fib redirect fallback", nativeConfig(bpf.HostroutingConfig{FibLookup: 1, CheckMtu: 1}, fibNativeCIDR)},
		{"masquerade", withMasquerade(fibConfig(1))},
		{"everything off", bpf.HostroutingConfig{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := hostroutingSpec(t, c.cfg)
			if len(spec.Programs) != 19 {
				t.Errorf("the object has %d programs, the test knows 19", len(spec.Programs))
			}
			for _, p := range spec.Programs {
				p.Flags |= unix.BPF_F_STRICT_ALIGNMENT
			}
			var objs bpf.HostroutingObjects
			if err := spec.LoadAndAssign(&objs, nil); err != nil {
				t.Fatalf("load with BPF_F_STRICT_ALIGNMENT: %s", loadError(err))
			}
			defer objs.Close()

			// And it runs: a delivery through the stages.
			d := &datapath{tb: t, objs: objs, ids: map[uint32]uint16{}, ran: map[maps.Direction]bool{}}
			d.addPods(podA, podB)
			verdict, _ := d.run(d.objs.FromContainer, loIfindex, ipv4From(podA, podB.ip).frame())
			if verdict != tcActRedirect {
				t.Errorf("delivery: verdict %d, want TC_ACT_REDIRECT", verdict)
			}
		})
	}
	// The control: the flag is in force, a misaligned packet read fails.
	t.Run("misaligned read refused", func(t *testing.T) {
		for _, strict := range []bool{false, true} {
			spec := misalignedReader()
			if strict {
				spec.Flags |= unix.BPF_F_STRICT_ALIGNMENT
			}
			prog, err := ebpf.NewProgram(spec)
			if err == nil {
				prog.Close()
			}
			if strict && err == nil {
				t.Error("a 4-byte read at frame offset 1 loaded with BPF_F_STRICT_ALIGNMENT")
			}
			if !strict && err != nil {
				t.Errorf("a 4-byte read at frame offset 1 does not load without BPF_F_STRICT_ALIGNMENT: %s", loadError(err))
			}
		}
	})
	t.Run("example policy", func(t *testing.T) {
		d := loadDatapath(t, configPeer)
		spec, err := policy.LoadPolicy()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range spec.Programs {
			p.Flags |= unix.BPF_F_STRICT_ALIGNMENT
		}
		var objs policy.PolicyObjects
		if err := spec.LoadAndAssign(&objs, d.policyOptions()); err != nil {
			t.Fatalf("load with BPF_F_STRICT_ALIGNMENT: %s", loadError(err))
		}
		objs.Close()
	})
}

// misalignedReader is a tc program that reads 4 bytes at offset 1 of the
// frame: 3 bytes into a word (NET_IP_ALIGN), misaligned.
func misalignedReader() *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 76, asm.Word), // __sk_buff.data
			asm.LoadMem(asm.R3, asm.R1, 80, asm.Word), // __sk_buff.data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 8),
			asm.Mov.Imm(asm.R0, 0),
			asm.JGT.Reg(asm.R4, asm.R3, "out"),
			asm.LoadMem(asm.R0, asm.R2, 1, asm.Word),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
			asm.Return(),
		},
		License: "GPL",
	}
}

// withMasquerade is cfg with BPF masquerade over the default port range.
func withMasquerade(cfg bpf.HostroutingConfig) bpf.HostroutingConfig {
	cfg.Masquerade, cfg.NatPortMin, cfg.NatPortMax = 1, 32768, 65535
	return cfg
}
