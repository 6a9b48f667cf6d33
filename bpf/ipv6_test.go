package bpf_test

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/hostrouting/hostrouting/maps"
)

// IPv6 addresses of the IPv6 tests: pod A's and pod C's registered ones.
var (
	podAIPv6 = netip.MustParseAddr("fd00:10:1::a")
	podCIPv6 = netip.MustParseAddr("fd00:10:1::1e")
)

// TestFromContainerIPv6 checks the source of a pod's IPv6, which the
// stack then routes: a link-local address from the pod's own MAC, a
// registered address of the endpoint on this device from its MAC, or the
// unspecified address towards a multicast group (duplicate address
// detection, MLD reports) from its MAC. Anything else is spoofed.
func TestFromContainerIPv6(t *testing.T) {
	a := podA.withIPv6(podAIPv6)
	c := podC.withIPv6(podCIPv6)
	var (
		linkLocal    = netip.MustParseAddr("fe80::a")
		linkLocalTop = netip.MustParseAddr("febf:ffff::1") // still fe80::/10
		notLinkLocal = netip.MustParseAddr("fec0::a")      // site-local, deprecated: not fe80::/10
		unregistered = netip.MustParseAddr("fd00:10:1::99")
		allRouters   = netip.MustParseAddr("ff02::2")
		solicited    = netip.MustParseAddr("ff02::1:ff00:1")
		mldv2        = netip.MustParseAddr("ff02::16")
		remote       = netip.MustParseAddr("fd00:10:2::a")
	)
	// MACs of IPv6 multicast groups (RFC 2464).
	solicitedMAC := mac{0x33, 0x33, 0xff, 0x00, 0x00, 0x01}
	mldv2MAC := mac{0x33, 0x33, 0x00, 0x00, 0x00, 0x16}

	pkt := func(src, dst netip.Addr, mutate func(p *ipv6Packet)) ipv6Packet {
		p := ipv6From(a, src, dst)
		if mutate != nil {
			mutate(&p)
		}
		return p
	}
	toMAC := func(m mac) func(p *ipv6Packet) { return func(p *ipv6Packet) { p.dstMAC = m } }
	fromMAC := func(m mac) func(p *ipv6Packet) { return func(p *ipv6Packet) { p.srcMAC = m } }

	const (
		ok = iota
		spoofed
	)
	for _, tc := range []struct {
		name string
		pkt  ipv6Packet
		want int
	}{
		{"link-local to link-local", pkt(linkLocal, netip.MustParseAddr("fe80::1"), nil), ok},
		{"link-local router solicitation", pkt(linkLocal, allRouters, toMAC(mac{0x33, 0x33, 0, 0, 0, 2})), ok},
		{"link-local, top of fe80::/10", pkt(linkLocalTop, netip.MustParseAddr("fe80::1"), nil), ok},
		{"link-local to a global address", pkt(linkLocal, remote, nil), ok},
		{"registered address to another node", pkt(podAIPv6, remote, nil), ok},
		{"registered address to the routers", pkt(podAIPv6, allRouters, nil), ok},
		{"unspecified to a solicited-node group (DAD)", pkt(netip.IPv6Unspecified(), solicited, toMAC(solicitedMAC)), ok},
		{"unspecified to the MLDv2 routers", pkt(netip.IPv6Unspecified(), mldv2, toMAC(mldv2MAC)), ok},

		{"link-local from another MAC", pkt(linkLocal, allRouters, fromMAC(podB.mac)), spoofed},
		{"link-local from pod C's MAC", pkt(linkLocal, allRouters, fromMAC(podC.mac)), spoofed},
		{"fec0::/10 is not link-local", pkt(notLinkLocal, remote, nil), spoofed},
		{"unregistered address", pkt(unregistered, remote, nil), spoofed},
		{"registered address from another MAC", pkt(podAIPv6, remote, fromMAC(podB.mac)), spoofed},
		{"pod C's address (on another device)", pkt(podCIPv6, remote, nil), spoofed},
		{"pod C's address and MAC (on another device)", pkt(podCIPv6, remote, fromMAC(podC.mac)), spoofed},
		{"pod A's IPv4 as an IPv4-mapped address", pkt(netip.AddrFrom16(podA.ip.As16()), remote, nil), spoofed},
		{"unspecified to a unicast address", pkt(netip.IPv6Unspecified(), remote, nil), spoofed},
		{"unspecified to a link-local address", pkt(netip.IPv6Unspecified(), netip.MustParseAddr("fe80::1"), nil), spoofed},
		{"unspecified to a group from another MAC", pkt(netip.IPv6Unspecified(), solicited, func(p *ipv6Packet) {
			p.dstMAC, p.srcMAC = solicitedMAC, podB.mac
		}), spoofed},
		{"multicast source", pkt(allRouters, remote, nil), spoofed},
		{"loopback source", pkt(netip.IPv6Loopback(), remote, nil), spoofed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			d.addPods(a, podB, c)
			frame := tc.pkt.frame()

			verdict, out := d.run(d.objs.FromContainer, loIfindex, frame)
			checkFrame(t, "frame", out, frame)
			var want counts
			switch tc.want {
			case ok:
				if verdict != tcActOK {
					t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricToStack: 1}
				want.from = map[uint32]uint64{a.ifindex: 1}
			case spoofed:
				if verdict != tcActShot {
					t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", verdict, tcActShot)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricDropSpoofed: 1}
				want.drop = map[uint32]uint64{a.ifindex: 1}
			}
			d.checkCounts(want, len(frame), a.ifindex, podB.ifindex, c.ifindex)
		})
	}

	// Without an IPv6 address of its own the endpoint may still use
	// link-local addresses and DAD.
	t.Run("endpoint without ipv6", func(t *testing.T) {
		d := loadDatapath(t, configPeer)
		d.addPods(podA, podB)
		for _, p := range []ipv6Packet{
			ipv6From(podA, linkLocal, allRouters),
			ipv6From(podA, netip.IPv6Unspecified(), solicited),
		} {
			if verdict, _ := d.run(d.objs.FromContainer, loIfindex, p.frame()); verdict != tcActOK {
				t.Errorf("%s → %s: verdict %d, want TC_ACT_OK", p.src, p.dst, verdict)
			}
		}
		if verdict, _ := d.run(d.objs.FromContainer, loIfindex, ipv6From(podA, podAIPv6, remote).frame()); verdict != tcActShot {
			t.Errorf("unregistered global source: verdict %d, want TC_ACT_SHOT", verdict)
		}
		if got := d.endpointStats(podA.ifindex); got.FromPackets != 2 || got.DropPackets != 1 {
			t.Errorf("pod A's stats %+v: want 2 sent, 1 dropped", got)
		}
	})

	// A device that is no endpoint's: nothing may be sent from it.
	t.Run("unknown device", func(t *testing.T) {
		d := loadDatapath(t, configPeer)
		d.addPods(podB, c)
		for _, p := range []ipv6Packet{
			ipv6From(podA, linkLocal, allRouters),
			ipv6From(podA, netip.IPv6Unspecified(), solicited),
			ipv6From(podA, podCIPv6, remote),
		} {
			if verdict, _ := d.run(d.objs.FromContainer, loIfindex, p.frame()); verdict != tcActShot {
				t.Errorf("%s → %s: verdict %d, want TC_ACT_SHOT", p.src, p.dst, verdict)
			}
		}
		if got := d.metrics(); len(got) != 1 || got[maps.MetricDropSpoofed].Packets != 3 {
			t.Errorf("metrics %v, want 3 drop-spoofed", got)
		}
	})
}

// TestFromContainerIPv6Malformed drops IPv6 frames whose header is not
// one: a wrong version, or too short.
func TestFromContainerIPv6Malformed(t *testing.T) {
	good := ipv6From(podA, netip.MustParseAddr("fe80::a"), netip.MustParseAddr("ff02::2")).frame()
	for _, c := range []struct {
		name    string
		frame   []byte
		mayFail bool // the kernel may refuse it in BPF_PROG_TEST_RUN
	}{
		{"version 4", func() []byte { f := append([]byte(nil), good...); f[14] = 0x45; return f }(), false},
		{"version 0", func() []byte { f := append([]byte(nil), good...); f[14] = 0x00; return f }(), false},
		{"header cut at 39 bytes", good[:14+39], true},
		{"header cut at 20 bytes", good[:14+20], true},
		{"ethernet header only", good[:14], true},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			d.addPods(podA, podB)
			_, _, err := d.tryRun(d.objs.FromContainer, skbContext{Ifindex: loIfindex}, c.frame)
			if c.mayFail && errors.Is(err, syscall.EINVAL) {
				t.Logf("the kernel refuses a %d-byte IPv6 frame in BPF_PROG_TEST_RUN: the program never sees it", len(c.frame))
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkDropped(t, c.frame, maps.MetricDropInvalid)
		})
	}
}
