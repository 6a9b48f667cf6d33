package bpf_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// from_netdev only takes frames the node's device received for itself:
// __sk_buff.pkt_type PACKET_HOST. BPF_PROG_TEST_RUN does not let a test set
// pkt_type (a non-zero value in the context is EINVAL); it runs
// eth_type_trans on the frame against the device of __sk_buff.ifindex, as a
// driver does. On loopback, the device of the tests (loIfindex), whose
// address is 00:00:00:00:00:00, a frame to that MAC is PACKET_HOST and a
// frame to any other unicast MAC PACKET_OTHERHOST; multicast and broadcast
// MACs are neither. TestFromNetdevPacketType checks the same on a veth with
// a real address.

// MACs of the from_netdev tests.
var (
	loMAC            = mac{}                                   // loopback's address: the node's own
	peerNodeMAC      = mac{0x02, 0x00, 0xac, 0x12, 0x00, 0x03} // the NIC of the node that sent the frame
	otherHostMAC     = mac{0x02, 0x00, 0xac, 0x12, 0x00, 0x09} // a third node's NIC
	ipv4MulticastMAC = mac{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}
	lldpMAC          = mac{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}
)

// netdevPodA is pod A moved off loopback, which is the node's device in the
// from_netdev tests: no endpoint sits on the device the frames arrive on.
var netdevPodA = podA.withIfindex(10)

// netdevPods are the endpoints registered in the from_netdev tests.
var netdevPods = []pod{netdevPodA, podB, podC}

// netdevIfindexes are the devices of netdevPods, whose counters the tests
// check.
var netdevIfindexes = []uint32{netdevPodA.ifindex, podB.ifindex, podC.ifindex}

// fromNetwork returns a UDP packet from a pod of another node to dst as the
// node's device receives it: from the sending node's NIC to this node's
// (loopback's) MAC.
func fromNetwork(dst netip.Addr) ipv4Packet {
	p := ipv4From(podA, dst)
	p.src = remoteIP
	p.dstMAC, p.srcMAC = loMAC, peerNodeMAC
	return p
}

// checkNetdevDelivered runs pkt through from_netdev under cfg and checks
// that it is delivered to pod to as a router forwards it, with the counters
// of cfg's path: nothing is counted as sent by a pod.
func checkNetdevDelivered(t *testing.T, cfg bpf.HostroutingConfig, pkt ipv4Packet, to pod) {
	t.Helper()
	d := loadDatapath(t, cfg)
	d.addPods(netdevPods...)

	frame := pkt.frame()
	verdict, out := d.run(d.objs.FromNetdev, loIfindex, frame)
	if verdict != tcActRedirect {
		t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
	}
	checkFrame(t, "forwarded frame", out, pkt.forwarded(to).frame())
	checkIPv4Checksum(t, out)
	if got := mac(out[0:6]); got != to.mac {
		t.Errorf("destination MAC %s, want the pod's %s", got, to.mac)
	}
	if got := mac(out[6:12]); got != to.nodeMAC {
		t.Errorf("source MAC %s, want the pod's node MAC %s", got, to.nodeMAC)
	}
	if got := out[14+8]; got != pkt.ttl-1 {
		t.Errorf("TTL %d, want %d", got, pkt.ttl-1)
	}

	var want counts
	if cfg.RedirectPeer != 0 {
		// The to-container step runs inline before bpf_redirect_peer.
		want.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
		want.to = map[uint32]uint64{to.ifindex: 1}
	} else {
		// The pod's "to" is counted by to_container on its device.
		want.metrics = map[maps.Metric]uint64{maps.MetricForwardRedirect: 1}
	}
	d.checkCounts(want, len(frame), netdevIfindexes...)
}

// checkNetdevToStack runs frame through from_netdev under cfg and checks
// that it goes to the stack untouched, counted as TO_STACK only: the
// node's device never drops, the stack decides.
func checkNetdevToStack(t *testing.T, cfg bpf.HostroutingConfig, frame []byte) {
	t.Helper()
	d := loadDatapath(t, cfg)
	d.addPods(netdevPods...)

	verdict, out := d.run(d.objs.FromNetdev, loIfindex, frame)
	if verdict != tcActOK {
		t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
	}
	checkFrame(t, "frame to the stack", out, frame)
	d.checkCounts(counts{
		metrics: map[maps.Metric]uint64{maps.MetricToStack: 1},
	}, len(frame), netdevIfindexes...)
}

// TestFromNetdevLocalDelivery delivers packets from other nodes to the pods
// of this one, with bpf_redirect_peer and with the bpf_redirect fallback.
func TestFromNetdevLocalDelivery(t *testing.T) {
	with := func(dst netip.Addr, mutate func(p *ipv4Packet)) ipv4Packet {
		p := fromNetwork(dst)
		mutate(&p)
		return p
	}
	for _, c := range []struct {
		name string
		pkt  ipv4Packet
		to   pod
	}{
		{"udp to pod B", fromNetwork(podB.ip), podB},
		{"udp to pod A", fromNetwork(netdevPodA.ip), netdevPodA},
		{"udp to pod C", fromNetwork(podC.ip), podC},
		{"tcp 1400 bytes", with(podB.ip, func(p *ipv4Packet) {
			p.proto = 6
			p.payload = make([]byte, 1400)
			for i := range p.payload {
				p.payload[i] = byte(i)
			}
		}), podB},
		{"icmp echo", with(podB.ip, func(p *ipv4Packet) {
			p.proto = 1
			p.payload = []byte{8, 0, 0xf7, 0xff, 0, 0, 0, 0}
		}), podB},
		{"ethernet padding", with(podB.ip, func(p *ipv4Packet) {
			p.payload = p.payload[:8]
			p.padding = 18
		}), podB},
		{"ttl 2", with(podB.ip, func(p *ipv4Packet) { p.ttl = 2 }), podB},
		{"ttl 255", with(podB.ip, func(p *ipv4Packet) { p.ttl = 255 }), podB},
		{"tos 0xb8", with(podB.ip, func(p *ipv4Packet) { p.tos = 0xb8 }), podB},
		{"first fragment", with(podB.ip, func(p *ipv4Packet) { p.fragment = ipFlagMF }), podB},
		{"later fragment", with(podB.ip, func(p *ipv4Packet) { p.fragment = 185 }), podB},
		// No source checks on the node's device: what the network
		// routes here is delivered, whatever its source.
		{"source a local pod", with(podB.ip, func(p *ipv4Packet) { p.src = podC.ip }), podB},
		{"source the node", with(podB.ip, func(p *ipv4Packet) { p.src = gatewayIP }), podB},
	} {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevDelivered(t, cfg, c.pkt, c.to)
			})
		})
	}
}

// TestFromNetdevTTLChecksum drives the TTL decrement's incremental checksum
// update through its carry cases on the from_netdev path.
func TestFromNetdevTTLChecksum(t *testing.T) {
	for _, c := range []struct {
		ttl   uint8
		check uint16
	}{
		{64, 0x0000},
		{64, 0xfeff}, // + 0x0100 gives 0xffff: the one's complement carry case
		{64, 0xfffe},
		{2, 0xfeff},
		{255, 0x1234},
	} {
		t.Run(fmt.Sprintf("ttl %d check %#04x", c.ttl, c.check), func(t *testing.T) {
			pkt := fromNetwork(podB.ip)
			pkt.ttl = c.ttl
			pkt.id = idForChecksum(t, pkt, c.check)
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevDelivered(t, cfg, pkt, podB)
			})
		})
	}
}

// TestFromNetdevNotLocal leaves IPv4 for this node that is not for one of
// its endpoints to the stack, untouched: the node's own addresses, other
// nodes' pods, broadcast and multicast, and packets that would expire.
func TestFromNetdevNotLocal(t *testing.T) {
	for _, dst := range []netip.Addr{
		netip.MustParseAddr("172.18.0.2"), // the node's IP
		gatewayIP,
		netip.MustParseAddr("10.0.1.99"), // in the pod CIDR, no endpoint
		netip.MustParseAddr("10.0.2.20"), // another node's pod
		netip.MustParseAddr("192.0.2.1"),
		netip.MustParseAddr("255.255.255.255"),
		netip.MustParseAddr("224.0.0.251"),
		netip.IPv4Unspecified(),
	} {
		t.Run(dst.String(), func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevToStack(t, cfg, fromNetwork(dst).frame())
			})
		})
	}
	for _, ttl := range []uint8{1, 0} {
		t.Run(fmt.Sprintf("ttl %d to pod B", ttl), func(t *testing.T) {
			// The stack answers with ICMP time exceeded.
			pkt := fromNetwork(podB.ip)
			pkt.ttl = ttl
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevToStack(t, cfg, pkt.frame())
			})
		})
	}
}

// TestFromNetdevIPv4Options leaves packets for a local pod whose header
// carries options to the stack, untouched: source routes and the like are
// the kernel's to honour or refuse.
func TestFromNetdevIPv4Options(t *testing.T) {
	recordRoute := make([]byte, 40)
	recordRoute[0], recordRoute[1], recordRoute[2] = 0x07, 39, 4
	recordRoute[39] = 0x01
	for _, c := range []struct {
		name    string
		options []byte
	}{
		{"ihl 6 router alert", []byte{0x94, 0x04, 0x00, 0x00}},
		{"ihl 6 nop eol", []byte{0x01, 0x01, 0x00, 0x00}},
		{"ihl 7 lsrr", []byte{0x83, 0x07, 0x04, 10, 0, 1, 20, 0x00}},
		{"ihl 15 record route", recordRoute},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := fromNetwork(podB.ip)
			pkt.options = c.options
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevToStack(t, cfg, pkt.frame())
			})
		})
	}
}

// TestFromNetdevNotForThisHost leaves frames that were not sent to this
// node's MAC to the stack, even when they carry IPv4 for a local pod:
// PACKET_OTHERHOST (promiscuous mode, a bridge port), broadcast, multicast.
func TestFromNetdevNotForThisHost(t *testing.T) {
	for _, c := range []struct {
		name string
		dst  mac
	}{
		{"another host's MAC", otherHostMAC},
		{"the sender's own MAC", peerNodeMAC},
		{"pod B's MAC", podB.mac},
		{"broadcast", broadcastMAC},
		{"ipv4 multicast MAC", ipv4MulticastMAC},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := fromNetwork(podB.ip)
			pkt.dstMAC = c.dst
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevToStack(t, cfg, pkt.frame())
			})
		})
	}
}

// TestFromNetdevOtherEthertypes leaves everything but IPv4 to the stack,
// untouched and undropped: ARP, IPv6, LLDP, VLAN-tagged frames (even with
// IPv4 for a local pod inside: the tag is not this node's to strip), 802.3.
func TestFromNetdevOtherEthertypes(t *testing.T) {
	arpReq := arpRequest(podA, podB.ip)
	arpReq.ethSrc, arpReq.sha, arpReq.sip = peerNodeMAC, peerNodeMAC, remoteIP
	arpUnicast := arpReq
	arpUnicast.ethDst, arpUnicast.tha = loMAC, loMAC
	arpReply := arpUnicast
	arpReply.op = arpOpReply

	ip6 := make([]byte, 40+8)
	ip6[0] = 0x60
	binary.BigEndian.PutUint16(ip6[4:], 8)
	ip6[6], ip6[7] = 58, 64
	ip6[40] = 128

	// An 802.1Q tag (VLAN 100) in front of IPv4 to pod B.
	inner := fromNetwork(podB.ip).frame()
	tagged := ethFrame(loMAC, peerNodeMAC, ethPVLAN, append([]byte{0x00, 0x64, 0x08, 0x00}, inner[14:]...))

	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"arp request (broadcast)", arpReq.frame()},
		{"arp request (unicast)", arpUnicast.frame()},
		{"arp reply", arpReply.frame()},
		{"ipv6 to the node's MAC", ethFrame(loMAC, peerNodeMAC, ethPIPv6, ip6)},
		{"ipv6 multicast", ethFrame(mac{0x33, 0x33, 0, 0, 0, 1}, peerNodeMAC, ethPIPv6, ip6)},
		{"lldp", ethFrame(lldpMAC, peerNodeMAC, ethPLLDP, make([]byte, 46))},
		{"vlan tag in the frame", tagged},
		{"802.3 length field", ethFrame(loMAC, peerNodeMAC, 0x0040, make([]byte, 64))},
	} {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevToStack(t, cfg, c.frame)
			})
		})
	}
}

// TestFromNetdevMalformed leaves malformed IPv4 to the stack, which counts
// and drops it: the program on the node's device drops nothing.
func TestFromNetdevMalformed(t *testing.T) {
	good := fromNetwork(podB.ip).frame()
	with := func(mutate func(f []byte) []byte) []byte {
		return mutate(append([]byte(nil), good...))
	}

	// Less than a full IPv4 header: Linux 6.18 refuses these in
	// BPF_PROG_TEST_RUN (EINVAL, before the program runs); kernels that
	// take them must see the program pass them.
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
			d.addPods(netdevPods...)
			_, _, err := d.tryRun(d.objs.FromNetdev, skbContext{Ifindex: loIfindex}, c.frame)
			if errors.Is(err, syscall.EINVAL) {
				t.Logf("the kernel refuses a %d-byte IPv4 frame in BPF_PROG_TEST_RUN: the program never sees it", len(c.frame))
				d.checkCounts(counts{}, 0, netdevIfindexes...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkNetdevToStack(t, configPeer, c.frame)
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
	} {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				checkNetdevToStack(t, cfg, c.frame)
			})
		})
	}
}

// TestFromNetdevPacketType checks the PACKET_HOST test on a device with a
// real address: the FIB node's eth0, in its namespace. Only frames to
// eth0's MAC reach a local pod.
func TestFromNetdevPacketType(t *testing.T) {
	f := newFIBNode(t)
	eth0 := f.ifindex["eth0"]
	for _, c := range []struct {
		name      string
		dst       mac
		delivered bool
	}{
		{"eth0's MAC (PACKET_HOST)", eth0MAC, true},
		{"another host's MAC (PACKET_OTHERHOST)", otherHostMAC, false},
		{"loopback's MAC (PACKET_OTHERHOST here)", loMAC, false},
		{"broadcast (PACKET_BROADCAST)", broadcastMAC, false},
		{"multicast (PACKET_MULTICAST)", ipv4MulticastMAC, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				d := loadDatapath(t, cfg)
				d.addPods(netdevPods...)
				pkt := fromNetwork(podB.ip)
				pkt.dstMAC = c.dst
				frame := pkt.frame()

				verdict, out := d.runIn(f.node, d.objs.FromNetdev, eth0, frame)
				want := counts{metrics: map[maps.Metric]uint64{maps.MetricToStack: 1}}
				wantVerdict, wantFrame := uint32(tcActOK), frame
				if c.delivered {
					wantVerdict, wantFrame = tcActRedirect, pkt.forwarded(podB).frame()
					want.metrics = map[maps.Metric]uint64{maps.MetricForwardRedirect: 1}
					if cfg.RedirectPeer != 0 {
						want.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
						want.to = map[uint32]uint64{podB.ifindex: 1}
					}
				}
				if verdict != wantVerdict {
					t.Errorf("verdict %d, want %d", verdict, wantVerdict)
				}
				checkFrame(t, "frame", out, wantFrame)
				d.checkCounts(want, len(frame), netdevIfindexes...)
			})
		})
	}
}

// TestToNetdev checks that to_netdev passes whatever leaves the node,
// untouched, and counts it as pass in direction to-netdev.
func TestToNetdev(t *testing.T) {
	forwarded := ipv4From(podA, remoteIP)
	forwarded.ttl--
	forwarded.dstMAC, forwarded.srcMAC = gw0MAC, eth0MAC
	malformed := forwarded.frame()
	malformed[14] = 0x44
	ip6 := make([]byte, 40+8)
	ip6[0] = 0x60
	binary.BigEndian.PutUint16(ip6[4:], 8)
	ip6[6], ip6[7] = 58, 64

	frames := []struct {
		name  string
		frame []byte
	}{
		{"ipv4 forwarded to another node", forwarded.frame()},
		{"ipv4 from a pod", ipv4From(podA, remoteIP).frame()},
		{"ipv4 to a local pod's address", fromNetwork(podB.ip).frame()},
		{"malformed ipv4", malformed},
		{"arp request", arpRequest(podA, gatewayIP).frame()},
		{"ipv6", ethFrame(gw0MAC, eth0MAC, ethPIPv6, ip6)},
		{"lldp", ethFrame(lldpMAC, eth0MAC, ethPLLDP, make([]byte, 46))},
		{"ethernet header only", ethFrame(gw0MAC, eth0MAC, 0x88b5, nil)},
	}
	for _, c := range frames {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				d := loadDatapath(t, cfg)
				d.addPods(podA, podB)
				verdict, out := d.run(d.objs.ToNetdev, loIfindex, c.frame)
				if verdict != tcActOK {
					t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
				}
				checkFrame(t, "frame", out, c.frame)
				d.checkCounts(counts{
					metrics: map[maps.Metric]uint64{maps.MetricPass: 1},
				}, len(c.frame), podA.ifindex, podB.ifindex)
			})
		})
	}

	t.Run("counts add up", func(t *testing.T) {
		d := loadDatapath(t, fibConfig(1))
		var want maps.Counter
		for _, c := range frames {
			d.run(d.objs.ToNetdev, loIfindex, c.frame)
			want.Packets++
			want.Bytes += uint64(len(c.frame))
		}
		var table maps.MetricTable
		table[maps.ToNetdev][maps.MetricPass] = want
		d.checkTable(&table)
	})
}
