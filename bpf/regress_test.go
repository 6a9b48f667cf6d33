package bpf_test

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// Regression tests for four bugs of the datapath (the MTU ones are two),
// each checking the fixed behaviour:
//
//   - VLAN: a frame whose 802.1Q/802.1ad tag the kernel took off into the
//     skb's metadata (__sk_buff.vlan_present) was forwarded by
//     from_container and from_netdev with its tag. from_netdev leaves it to
//     the stack now; from_container drops it (pods have no VLANs).
//     BPF_PROG_TEST_RUN cannot set vlan_present, so these tests attach the
//     programs with tcx to devices of a node namespace and send real frames.
//   - MTU: a packet 1 to 4 bytes over the egress MTU passed bpf_fib_lookup's
//     own check (it allows a VLAN header of slack), and an unresolved next
//     hop (NO_NEIGH) had no MTU check at all. With CheckMtu both are checked
//     with bpf_check_mtu and go to the stack, which sends "fragmentation
//     needed"; without it NO_NEIGH goes to the stack.
//   - Ports: the lookup did not get the L4 ports, so ip rules on sport or
//     dport were ignored. (The first fragment of a packet gets none: the
//     kernel routes every fragment alike.)

// tcx links, raw frames and captures: the tools of the VLAN tests.

// waitLinksUp waits until every device of ifnames in the namespace at
// nsPath is operationally up (netcheck.WaitOperUp) and has its qdisc: the
// kernel's link watcher gives a new veth its qdisc just after the
// operstate, and until then the noop qdisc drops what is sent through it.
func waitLinksUp(tb testing.TB, nsPath string, ifnames ...string) {
	tb.Helper()
	h, err := routing.Handle(nsPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer h.Close()
	for _, ifname := range ifnames {
		if err := netcheck.WaitOperUp(context.Background(), nsPath, ifname, 5*time.Second); err != nil {
			tb.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err := h.LinkByName(ifname)
			if err != nil {
				tb.Fatalf("wait for the qdisc of %s: %v", ifname, err)
			}
			qdisc := "none"
			if qs, err := h.QdiscList(l); err == nil && len(qs) > 0 {
				qdisc = qs[0].Type()
			}
			if qdisc != "none" && qdisc != "noop" {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s still has qdisc %s after 5s", ifname, qdisc)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// attachIngress attaches prog to the tcx ingress of the device ifindex of
// node until the test ends.
func (d *datapath) attachIngress(node *datapathtest.Node, prog *ebpf.Program, ifindex uint32) {
	d.tb.Helper()
	var l link.Link
	err := node.Do(func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Interface: int(ifindex), Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		d.tb.Fatalf("attach %s to tcx ingress of ifindex %d in node %s: %v", prog, ifindex, node.Name, err)
	}
	d.tb.Cleanup(func() { l.Close() })
}

// waitCounted waits until the programs have counted packets packets in
// all metrics together: they have seen every frame sent so far.
func (d *datapath) waitCounted(packets uint64) {
	d.tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var n uint64
		got := d.metrics()
		for _, c := range got {
			n += c.Packets
		}
		if n >= packets {
			return
		}
		if time.Now().After(deadline) {
			d.tb.Fatalf("the programs counted %d packets after 5s, want %d: %v", n, packets, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// netOrder16 returns v as the bytes of a network-order field read in host
// order: what struct sockaddr_ll wants in sll_protocol.
func netOrder16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// sendFrames sends frames, as they are, out of the device ifname of the
// namespace do runs in: its peer receives them as from the wire.
func sendFrames(tb testing.TB, do func(func() error) error, ifname string, frames ...[]byte) {
	tb.Helper()
	err := do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, f := range frames {
			to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: netOrder16(binary.BigEndian.Uint16(f[12:14])), Halen: 6}
			copy(to.Addr[:], f[0:6])
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("send on %s: %v", ifname, err)
	}
}

// linkSniffer captures what one device receives, with the VLAN tag the
// kernel keeps out of band (PACKET_AUXDATA, as tcpdump -e reads it). It is
// open before the first frame is sent, so it misses nothing.
type linkSniffer struct {
	tb   testing.TB
	name string // for messages
	fd   int
}

// sniffedFrame is a frame a linkSniffer received.
type sniffedFrame struct {
	data   []byte // as received; an out-of-band tag is not in it
	tagged bool   // carried an 802.1Q or 802.1ad tag, in the frame or out of band
	tci    uint16 // the tag's TCI, when tagged
}

// sniffLink opens a capture of what the device ifname of the namespace do
// runs in receives; name names both in messages. It is closed when the
// test ends.
func sniffLink(tb testing.TB, do func(func() error) error, ifname, name string) *linkSniffer {
	tb.Helper()
	s := &linkSniffer{tb: tb, name: name, fd: -1}
	err := do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		// Protocol 0: nothing is queued before bind, which limits the
		// socket to ifname.
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((20 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(s.fd, &unix.SockaddrLinklayer{Protocol: netOrder16(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if s.fd >= 0 {
		tb.Cleanup(func() { unix.Close(s.fd) })
	}
	if err != nil {
		tb.Fatalf("capture on %s: %v", name, err)
	}
	return s
}

// collect returns the frames received until done says all are there and
// then 100ms passed without another, or until 5s passed.
func (s *linkSniffer) collect(done func([]sniffedFrame) bool) []sniffedFrame {
	s.tb.Helper()
	var got []sniffedFrame
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	deadline := time.Now().Add(5 * time.Second)
	var quietSince time.Time
	for time.Now().Before(deadline) {
		n, oobn, _, from, err := unix.Recvmsg(s.fd, buf, oob, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if quietSince.IsZero() && done(got) {
				quietSince = time.Now()
			}
			if !quietSince.IsZero() && time.Since(quietSince) >= 100*time.Millisecond {
				break
			}
			continue
		}
		if err != nil {
			s.tb.Fatalf("capture on %s: %v", s.name, err)
		}
		quietSince = time.Time{}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f := sniffedFrame{data: append([]byte(nil), buf[:n]...)}
		if n >= 14 {
			switch binary.BigEndian.Uint16(f.data[12:14]) {
			case unix.ETH_P_8021Q, unix.ETH_P_8021AD:
				f.tagged = true
				if n >= 16 {
					f.tci = binary.BigEndian.Uint16(f.data[14:16])
				}
			}
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			s.tb.Fatalf("capture on %s: %v", s.name, err)
		}
		for _, m := range msgs {
			// struct tpacket_auxdata: tp_status at 0, tp_vlan_tci at 16.
			if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA || len(m.Data) < 18 {
				continue
			}
			if binary.NativeEndian.Uint32(m.Data[0:4])&unix.TP_STATUS_VLAN_VALID != 0 {
				f.tagged = true
				f.tci = binary.NativeEndian.Uint16(m.Data[16:18])
			}
		}
		got = append(got, f)
	}
	return got
}

// ipv4ID returns the IP ID of the IPv4 packet in f, whose tag, if any, may
// still be in the frame.
func (f sniffedFrame) ipv4ID() (uint16, bool) {
	l3 := 14
	if f.tagged && len(f.data) >= 18 {
		switch binary.BigEndian.Uint16(f.data[12:14]) {
		case unix.ETH_P_8021Q, unix.ETH_P_8021AD:
			l3 = 18
		}
	}
	if len(f.data) < l3+20 || binary.BigEndian.Uint16(f.data[l3-2:l3]) != ethPIPv4 {
		return 0, false
	}
	return binary.BigEndian.Uint16(f.data[l3+4 : l3+6]), true
}

// withID returns the frames of frames that carry IPv4 with IP ID id.
func withID(frames []sniffedFrame, id uint16) []sniffedFrame {
	var out []sniffedFrame
	for _, f := range frames {
		if got, ok := f.ipv4ID(); ok && got == id {
			out = append(out, f)
		}
	}
	return out
}

// vlanTagged returns frame with a VLAN tag (tpid, tci) after its MACs.
func vlanTagged(frame []byte, tpid, tci uint16) []byte {
	b := append([]byte(nil), frame[:12]...)
	b = binary.BigEndian.AppendUint16(b, tpid)
	b = binary.BigEndian.AppendUint16(b, tci)
	return append(b, frame[12:]...)
}

// vlanCase is a tag in front of a frame the VLAN tests send.
type vlanCase struct {
	name string
	tpid uint16
	tci  uint16
	// The stack forwards the frame untagged: a priority tag (VLAN 0)
	// is no VLAN. The node has no VLAN device: the stack drops a frame
	// of any other VLAN.
	stackForwards bool
}

var vlanCases = []vlanCase{
	{name: "802.1Q VLAN 100", tpid: unix.ETH_P_8021Q, tci: 100},
	{name: "802.1ad VLAN 4094 priority 7", tpid: unix.ETH_P_8021AD, tci: 7<<13 | 4094},
	{name: "802.1Q priority tag (VLAN 0)", tpid: unix.ETH_P_8021Q, tci: 5 << 13, stackForwards: true},
}

// checkVLANCapture checks what the capture on the device behind the
// datapath received after a tagged frame (IP ID tagID) and then its
// untagged twin (IP ID sentinelID) were sent: no frame with a tag; the
// untagged one, as the datapath forwards it (want with IP ID sentinelID);
// the tagged one only when tagSeen, untagged, exactly as the datapath
// would have forwarded it (want).
func checkVLANCapture(t *testing.T, s *linkSniffer, tagSeen bool, tagID, sentinelID uint16, want ipv4Packet) {
	t.Helper()
	got := s.collect(func(fs []sniffedFrame) bool {
		return len(withID(fs, sentinelID)) > 0 && (!tagSeen || len(withID(fs, tagID)) > 0)
	})
	for _, f := range got {
		if f.tagged {
			t.Errorf("%s received a frame with a VLAN tag (TCI %#04x):\n%s", s.name, f.tci, hex.Dump(f.data))
		}
	}
	check := func(what string, id uint16, wantSeen bool) {
		t.Helper()
		fs := withID(got, id)
		switch {
		case !wantSeen && len(fs) > 0:
			t.Errorf("%s: %d frames on %s, want none:\n%s", what, len(fs), s.name, hex.Dump(fs[0].data))
		case wantSeen && len(fs) != 1:
			t.Errorf("%s: %d frames on %s, want 1 (%d frames captured in all)", what, len(fs), s.name, len(got))
		case wantSeen:
			w := want
			w.id = id
			checkFrame(t, what+" on "+s.name, fs[0].data, w.frame())
		}
	}
	check("untagged frame", sentinelID, true)
	check("tagged frame", tagID, tagSeen)
}

// TestRegressionVLANFromNetdev sends frames with a VLAN tag for a local pod
// to the node's eth0, with from_netdev on its tcx ingress: each goes to the
// stack, which forwards it only without its tag, and the pod never sees a
// tag. The same frame untagged, sent next, is delivered by the datapath.
func TestRegressionVLANFromNetdev(t *testing.T) {
	f := newFIBNode(t)
	b := f.node.AddPod(t, "b", podB.ip)
	pb := pod{ip: b.IP, ifindex: uint32(b.HostIfIndex), id: podB.id}
	copy(pb.mac[:], b.MAC)
	copy(pb.nodeMAC[:], b.HostMAC)
	// The stack's way to pod B needs no ARP: what it forwards arrives at
	// once.
	f.node.Exec(t, "ip", "neigh", "replace", b.IP.String(), "lladdr", b.MAC.String(), "nud", "permanent", "dev", b.HostIf)
	waitLinksUp(t, f.node.Netns, "eth0", "eth0-wire", b.HostIf)

	id := uint16(0x7100) // IP IDs of the frames, each sent once
	for _, c := range vlanCases {
		t.Run(c.name, func(t *testing.T) {
			forEachConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				d := loadDatapath(t, cfg)
				d.addPods(pb)
				d.attachIngress(f.node, d.objs.FromNetdev, f.ifindex["eth0"])
				s := sniffLink(t, b.Do, "eth0", "pod B's eth0")

				pkt := fromNetwork(pb.ip)
				pkt.dstMAC = eth0MAC
				pkt.id = id
				id += 2
				sentinel := pkt
				sentinel.id++
				frameLen := len(pkt.frame())

				sendFrames(t, f.node.Do, "eth0-wire", vlanTagged(pkt.frame(), c.tpid, c.tci))
				d.waitCounted(1)
				// The kernel took the tag off before tc: the program
				// saw, and counted, the untagged length.
				d.checkCounts(counts{metrics: map[maps.Metric]uint64{maps.MetricToStack: 1}}, frameLen, pb.ifindex)

				sendFrames(t, f.node.Do, "eth0-wire", sentinel.frame())
				d.waitCounted(2)
				want := counts{metrics: map[maps.Metric]uint64{maps.MetricToStack: 1, maps.MetricForwardRedirect: 1}}
				if cfg.RedirectPeer != 0 {
					want.metrics = map[maps.Metric]uint64{maps.MetricToStack: 1, maps.MetricForwardPeer: 1}
					want.to = map[uint32]uint64{pb.ifindex: 1}
				}
				d.checkCounts(want, frameLen, pb.ifindex)

				checkVLANCapture(t, s, c.stackForwards, pkt.id, sentinel.id, pkt.forwarded(pb))
			})
		})
	}
}

// TestRegressionVLANFromContainer sends frames with a VLAN tag from pod A to
// another node's pod, with from_container on the tcx ingress of pod A's
// host-side device: pods have no VLANs, each is dropped (a priority tag,
// VLAN 0, too), counted against pod A, and never leaves the node. The same
// frame untagged, sent next, is forwarded by the datapath.
func TestRegressionVLANFromContainer(t *testing.T) {
	f := newFIBNode(t)
	a := f.podA()
	waitLinksUp(t, f.node.Netns, "lxca", "lxca-pod", "eth0", "eth0-wire")

	id := uint16(0x7200) // IP IDs of the frames, each sent once
	for _, c := range vlanCases {
		t.Run(c.name, func(t *testing.T) {
			forEachNeighConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				d := loadDatapath(t, cfg)
				d.addPods(a)
				d.attachIngress(f.node, d.objs.FromContainer, a.ifindex)
				s := sniffLink(t, f.node.Do, "eth0-wire", "the wire (eth0-wire)")

				pkt := ipv4From(a, dstGateway)
				pkt.id = id
				id += 2
				sentinel := pkt
				sentinel.id++
				frameLen := len(pkt.frame())

				sendFrames(t, f.node.Do, "lxca-pod", vlanTagged(pkt.frame(), c.tpid, c.tci))
				d.waitCounted(1)
				// The kernel took the tag off before tc: the program
				// saw, and counted, the untagged length. A drop, not
				// something pod A sent.
				d.checkCounts(counts{
					metrics: map[maps.Metric]uint64{maps.MetricDropVLAN: 1},
					drop:    map[uint32]uint64{a.ifindex: 1},
				}, frameLen, a.ifindex)

				sendFrames(t, f.node.Do, "lxca-pod", sentinel.frame())
				d.waitCounted(2)
				forwarded := maps.MetricForwardFIB
				if cfg.RedirectNeigh != 0 {
					forwarded = maps.MetricForwardNeigh
				}
				d.checkCounts(counts{
					metrics: map[maps.Metric]uint64{maps.MetricDropVLAN: 1, forwarded: 1},
					from:    map[uint32]uint64{a.ifindex: 1},
					drop:    map[uint32]uint64{a.ifindex: 1},
				}, frameLen, a.ifindex)
				if got := d.table()[maps.FromContainer][maps.MetricDropVLAN].Packets; got != 1 {
					t.Errorf("drop-vlan in from-container: %d packets, want 1", got)
				}

				// With redirect_neigh or without, the next hop's MACs:
				// bpf_redirect_neigh takes them from the neighbour
				// table, the program from the lookup.
				fwd := pkt
				fwd.ttl--
				fwd.dstMAC, fwd.srcMAC = gw0MAC, eth0MAC
				checkVLANCapture(t, s, false, pkt.id, sentinel.id, fwd)
			})
		})
	}
}

// The regression node: newFIBNode plus what the MTU, port and mark tests
// route by.
var (
	// dstEth1NoNeigh: 10.0.14.0/24 via 172.18.1.4 dev eth1 (MTU
	// fibEth1MTU), no neighbour entry: bpf_fib_lookup answers NO_NEIGH
	// with eth1 as the egress device.
	dstEth1NoNeigh = netip.MustParseAddr("10.0.14.10")
)

// Ports and marks the policy rules of newRegressionNode match; each sends
// the packet to table 100 (10.0.2.0/24 via 172.18.1.3 dev eth1).
const (
	ruleUDPDport = 5353 // ipproto udp dport 5353
	ruleTCPSport = 8080 // ipproto tcp sport 8080
	ruleMark     = 0x77 // fwmark 0x77
)

const ipProtoTCP = 6

// newRegressionNode is newFIBNode with the route to dstEth1NoNeigh and the
// policy rules on ports and mark.
func newRegressionNode(t *testing.T) *fibNode {
	t.Helper()
	f := newFIBNode(t)
	ip := func(args ...string) { f.node.Exec(t, append([]string{"ip"}, args...)...) }
	ip("route", "add", "10.0.14.0/24", "via", "172.18.1.4", "dev", "eth1")
	ip("rule", "add", "ipproto", "udp", "dport", fmt.Sprint(ruleUDPDport), "lookup", "100")
	ip("rule", "add", "ipproto", "tcp", "sport", fmt.Sprint(ruleTCPSport), "lookup", "100")
	ip("rule", "add", "fwmark", fmt.Sprint(ruleMark), "lookup", "100")
	return f
}

// withIPLength returns p grown or cut to an IP total length of n, its
// first payload bytes (the L4 header) kept.
func withIPLength(p ipv4Packet, n int) ipv4Packet {
	payload := make([]byte, n-20-len(p.options))
	copy(payload, p.payload)
	p.payload = payload
	return p
}

// TestFromContainerFIBMTU checks the MTU of the egress device on both ways
// out of the FIB path, against eth1 (MTU 1280) and eth0 (1500): a packet
// up to the MTU is forwarded, one byte more goes to the stack (which sends
// fragmentation needed, or fragments without DF), for a resolved next hop
// (SUCCESS) and an unresolved one (NO_NEIGH) alike. Test-run packets are
// not GSO, so the lookup checks their IP length exactly, with or without
// bpf_check_mtu (CheckMtu), which covers GSO packets.
func TestFromContainerFIBMTU(t *testing.T) {
	f := newRegressionNode(t)
	a, e := f.podA(), f.podE()
	pods := []pod{a, e}

	type mtuCase struct {
		name   string
		from   pod
		dst    netip.Addr
		mtu    int
		way    fibOutcome // up to the MTU: fibResolved or fibUnresolved
		dstMAC mac        // fibResolved
		srcMAC mac
		over   []int // bytes over the MTU to try, besides 0 and 1
	}
	all := []int{2, 3, 4, 5, 100}
	for _, c := range []mtuCase{
		{"eth1 resolved", a, dstEth1, fibEth1MTU, fibResolved, gw1MAC, eth1MAC, all},
		{"eth1 by policy rule", e, dstGateway, fibEth1MTU, fibResolved, gw1MAC, eth1MAC, []int{4, 5}},
		{"eth1 unresolved", a, dstEth1NoNeigh, fibEth1MTU, fibUnresolved, mac{}, mac{}, all},
		{"eth0 resolved", a, dstGateway, 1500, fibResolved, gw0MAC, eth0MAC, []int{4, 5}},
		{"eth0 unresolved", a, dstNoNeighbour, 1500, fibUnresolved, mac{}, mac{}, []int{4, 5, 1500}},
	} {
		t.Run(c.name, func(t *testing.T) {
			type size struct {
				over int
				df   uint16
			}
			sizes := []size{{0, ipFlagDF}, {1, ipFlagDF}, {1, 0}}
			for _, over := range c.over {
				sizes = append(sizes, size{over, ipFlagDF})
			}
			for _, sz := range sizes {
				n := c.mtu + sz.over
				pkt := withIPLength(ipv4From(c.from, c.dst), n)
				pkt.fragment = sz.df
				name := fmt.Sprintf("ip length %d (MTU+%d)", n, sz.over)
				if sz.df == 0 {
					name += " no DF"
				}
				t.Run(name, func(t *testing.T) {
					for _, cfg := range []bpf.HostroutingConfig{fibConfig(1), fibConfig(0), withoutCheckMTU(fibConfig(1))} {
						fc := fibCase{from: c.from, pkt: pkt, want: fibToStack, dstMAC: c.dstMAC, srcMAC: c.srcMAC}
						// Test-run packets are not GSO: the lookup
						// checks their own length against the route,
						// with or without bpf_check_mtu.
						if sz.over == 0 {
							fc.want = c.way
						}
						t.Run(fmt.Sprintf("check_mtu=%d redirect_neigh=%d", cfg.CheckMtu, cfg.RedirectNeigh), func(t *testing.T) {
							fc.check(t, f, cfg, pods...)
						})
					}
				})
			}
		})
	}
}

// withoutCheckMTU returns cfg as the loader sets it on a kernel without
// bpf_check_mtu.
func withoutCheckMTU(cfg bpf.HostroutingConfig) bpf.HostroutingConfig {
	cfg.CheckMtu = 0
	return cfg
}

// udpPorts returns a UDP packet from p to dst between the given ports.
func udpPorts(p pod, dst netip.Addr, sport, dport uint16) ipv4Packet {
	pkt := ipv4From(p, dst)
	pkt.payload = append([]byte(nil), pkt.payload...)
	binary.BigEndian.PutUint16(pkt.payload[0:], sport)
	binary.BigEndian.PutUint16(pkt.payload[2:], dport)
	return pkt
}

// tcpPorts returns a TCP segment (ACK, 8 bytes of data) from p to dst
// between the given ports.
func tcpPorts(p pod, dst netip.Addr, sport, dport uint16) ipv4Packet {
	pkt := ipv4From(p, dst)
	pkt.proto = ipProtoTCP
	pkt.payload = make([]byte, 20, 28)
	binary.BigEndian.PutUint16(pkt.payload[0:], sport)
	binary.BigEndian.PutUint16(pkt.payload[2:], dport)
	binary.BigEndian.PutUint32(pkt.payload[4:], 1000) // sequence number
	binary.BigEndian.PutUint32(pkt.payload[8:], 2000) // acknowledgement number
	pkt.payload[12] = 5 << 4                          // data offset
	pkt.payload[13] = 0x10                            // ACK
	binary.BigEndian.PutUint16(pkt.payload[14:], 65535)
	pkt.payload = append(pkt.payload, "segment!"...)
	return pkt
}

// kernelRouteDev returns the device the node's kernel routes a packet from
// pod A to dst by, for ip route get's further selectors args.
func kernelRouteDev(t *testing.T, f *fibNode, dst netip.Addr, args ...string) string {
	t.Helper()
	out := f.node.Exec(t, append([]string{"ip", "-4", "route", "get", dst.String(), "from", podA.ip.String(), "iif", "lxca"}, args...)...)
	fields := strings.Fields(out)
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "dev" {
			return fields[i+1]
		}
	}
	t.Fatalf("no device in ip route get %s %v: %s", dst, args, out)
	return ""
}

// TestFromContainerFIBPorts checks that policy rules on L4 ports steer the
// lookup as they steer the kernel: ipproto udp dport 5353 and ipproto tcp
// sport 8080 send 10.0.2.0/24 through eth1 (table 100), all else takes
// eth0. Without redirect_neigh the egress device's MACs show the way. With
// it the program leaves the MACs to bpf_redirect_neigh, and the way shows
// in the MTU the packet is checked against: grown to eth1's MTU + 1, it
// still leaves by eth0 (MTU 1500) and goes to the stack by eth1.
func TestFromContainerFIBPorts(t *testing.T) {
	f := newRegressionNode(t)
	a := f.podA()
	viaEth0 := func(name string, pkt ipv4Packet) fibCase {
		return fibCase{name: name, from: a, pkt: pkt, want: fibResolved, dstMAC: gw0MAC, srcMAC: eth0MAC}
	}
	viaEth1 := func(name string, pkt ipv4Packet) fibCase {
		return fibCase{name: name, from: a, pkt: pkt, want: fibResolved, dstMAC: gw1MAC, srcMAC: eth1MAC}
	}
	with := func(pkt ipv4Packet, mutate func(p *ipv4Packet)) ipv4Packet {
		mutate(&pkt)
		return pkt
	}
	recordRoute := make([]byte, 40)
	recordRoute[0], recordRoute[1], recordRoute[2] = 0x07, 39, 4
	recordRoute[39] = 0x01
	dns := udpPorts(a, dstGateway, 40000, ruleUDPDport)
	// The first bytes of a later fragment are data: here data that reads
	// as ports 40000 → 5353.
	laterFragment := with(dns, func(p *ipv4Packet) { p.fragment = 185 })
	// The first fragment carries the ports, but the kernel routes every
	// fragment of a packet alike, without them: so does the datapath.
	firstFragment := with(dns, func(p *ipv4Packet) { p.fragment = ipFlagMF })

	// kernel: the selectors of ip route get for the same packet, nil when
	// it has none (fragments: the kernel's flow dissector takes no ports
	// from a later fragment either).
	for _, c := range []struct {
		fibCase
		kernel []string
	}{
		{viaEth1("udp to port 5353", dns), []string{"ipproto", "udp", "sport", "40000", "dport", "5353"}},
		{viaEth0("udp to port 53", udpPorts(a, dstGateway, 40000, 53)), []string{"ipproto", "udp", "sport", "40000", "dport", "53"}},
		{viaEth0("udp from port 5353 to port 53", udpPorts(a, dstGateway, ruleUDPDport, 53)), []string{"ipproto", "udp", "sport", "5353", "dport", "53"}},
		{viaEth0("udp to port 5354", udpPorts(a, dstGateway, 40000, ruleUDPDport+1)), []string{"ipproto", "udp", "sport", "40000", "dport", "5354"}},
		{viaEth0("tcp to port 5353 (the rule is for udp)", tcpPorts(a, dstGateway, 40000, ruleUDPDport)), []string{"ipproto", "tcp", "sport", "40000", "dport", "5353"}},
		{viaEth1("tcp from port 8080", tcpPorts(a, dstGateway, ruleTCPSport, 443)), []string{"ipproto", "tcp", "sport", "8080", "dport", "443"}},
		{viaEth0("tcp to port 8080 (the rule is for the source port)", tcpPorts(a, dstGateway, 443, ruleTCPSport)), []string{"ipproto", "tcp", "sport", "443", "dport", "8080"}},
		{viaEth0("udp from port 8080 (the rule is for tcp)", udpPorts(a, dstGateway, ruleTCPSport, 443)), []string{"ipproto", "udp", "sport", "8080", "dport", "443"}},
		// IP options are the stack's, which routes by the ports.
		{fibCase{name: "udp to port 5353 behind ip options", from: a, want: fibToStack,
			pkt: with(dns, func(p *ipv4Packet) { p.options = recordRoute })}, nil},
		{viaEth0("udp to port 5353, first fragment", firstFragment), nil},
		{viaEth0("later fragment of udp to port 5353", laterFragment), nil},
		// The rule's way decides the MTU too: eth1's 1280.
		{viaEth0("udp to port 53, 1281 bytes", withIPLength(udpPorts(a, dstGateway, 40000, 53), fibEth1MTU+1)), nil},
		{fibCase{name: "udp to port 5353, 1281 bytes", from: a, want: fibToStack,
			pkt: withIPLength(dns, fibEth1MTU+1)}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.kernel != nil {
				wantDev := "eth0"
				if c.srcMAC == eth1MAC {
					wantDev = "eth1"
				}
				if got := kernelRouteDev(t, f, c.pkt.dst, c.kernel...); got != wantDev {
					t.Fatalf("the kernel routes it through %s, the test expects %s: fixture broken", got, wantDev)
				}
			}
			forEachNeighConfig(t, func(t *testing.T, cfg bpf.HostroutingConfig) {
				c.check(t, f, cfg, a)
				if cfg.RedirectNeigh == 0 || c.want != fibResolved {
					return
				}
				probe := c.fibCase
				probe.pkt = withIPLength(c.pkt, fibEth1MTU+1)
				if c.srcMAC == eth1MAC {
					probe.want = fibToStack
				}
				t.Run("grown to eth1's MTU + 1", func(t *testing.T) {
					probe.check(t, f, cfg, a)
				})
			})
		})
	}
}

// TestFromContainerFIBFragments checks that every fragment of a packet
// takes the same way, whatever the rules on ports say: the first fragment
// (MF, offset 0), which carries the ports, and its followers, which do not.
// The kernel routes them all without ports.
func TestFromContainerFIBFragments(t *testing.T) {
	f := newRegressionNode(t)
	a := f.podA()
	dns := udpPorts(a, dstGateway, 40000, ruleUDPDport)
	if got := kernelRouteDev(t, f, dstGateway, "ipproto", "udp", "sport", "40000", "dport", fmt.Sprint(ruleUDPDport)); got != "eth1" {
		t.Fatalf("the kernel routes the unfragmented packet through %s, want eth1: fixture broken", got)
	}
	if got := kernelRouteDev(t, f, dstGateway, "ipproto", "udp"); got != "eth0" {
		t.Fatalf("the kernel routes udp without ports through %s, want eth0: fixture broken", got)
	}
	for _, c := range []struct {
		name     string
		fragment uint16
		way      mac // egress device's MAC
	}{
		{"unfragmented (DF)", ipFlagDF, eth1MAC},
		{"unfragmented (no DF)", 0, eth1MAC},
		{"first fragment", ipFlagMF, eth0MAC},
		{"middle fragment", ipFlagMF | 185, eth0MAC},
		{"last fragment", 370, eth0MAC},
	} {
		t.Run(c.name, func(t *testing.T) {
			pkt := dns
			pkt.fragment = c.fragment
			fc := fibCase{from: a, pkt: pkt, want: fibResolved, dstMAC: gw0MAC, srcMAC: eth0MAC}
			if c.way == eth1MAC {
				fc.dstMAC, fc.srcMAC = gw1MAC, eth1MAC
			}
			fc.check(t, f, fibConfig(0), a)
		})
	}
}

// TestFromContainerFIBMarkNotUsed documents that the lookup does not see
// skb->mark (BPF_FIB_LOOKUP_MARK needs Linux 6.10): a packet the kernel
// would route by the fwmark rule through eth1 takes the main table's way,
// eth0. Pod traffic reaches tc ingress with mark 0 (a netns crossing
// clears it); a mark only matters when something before this program set
// it. Update this test when the datapath starts to use the mark.
func TestFromContainerFIBMarkNotUsed(t *testing.T) {
	f := newRegressionNode(t)
	a := f.podA()
	if got := kernelRouteDev(t, f, dstGateway, "mark", fmt.Sprint(ruleMark)); got != "eth1" {
		t.Fatalf("the kernel routes mark %#x through %s, want eth1: fixture broken", ruleMark, got)
	}
	// Without redirect_neigh: the lookup's MACs show the way.
	d := loadDatapath(t, fibConfig(0))
	d.addPods(a)
	pkt := ipv4From(a, dstGateway)
	frame := pkt.frame()
	var (
		verdict uint32
		out     []byte
	)
	err := f.node.Do(func() error {
		var err error
		verdict, out, err = d.tryRun(d.objs.FromContainer, skbContext{Ifindex: a.ifindex, Mark: ruleMark}, frame)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if verdict != tcActRedirect {
		t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
	}
	fwd := pkt
	fwd.ttl--
	fwd.dstMAC, fwd.srcMAC = gw0MAC, eth0MAC
	checkFrame(t, "forwarded frame (main table, eth0)", out, fwd.frame())
	d.checkCounts(counts{
		metrics: map[maps.Metric]uint64{maps.MetricForwardFIB: 1},
		from:    map[uint32]uint64{a.ifindex: 1},
	}, len(frame), a.ifindex)
}
