package bpf_test

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// Verdicts of tc programs (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

// Ethertypes the tests put on the wire.
const (
	ethPIPv4 = 0x0800
	ethPARP  = 0x0806
	ethPIPv6 = 0x86dd
	ethPVLAN = 0x8100
	ethPLLDP = 0x88cc
)

// ARP constants (linux/if_arp.h).
const (
	arpHrdEther  = 1
	arpOpRequest = 1
	arpOpReply   = 2
)

// IPv4 header bits used by the fragment tests.
const (
	ipFlagMF    = 0x2000 // more fragments
	ipFlagDF    = 0x4000 // don't fragment
	ipProtoUDP  = 17
	ipProtoICMP = 1
)

// Endpoint flags (enum endpoint_flag in lib/common.h).
const (
	endpointFlagARPResponder = 1 << 0
	endpointFlagPolicy       = 1 << 1
)

// loIfindex is the device every test frame arrives on. BPF_PROG_TEST_RUN
// resolves __sk_buff.ifindex to a device of the caller's network namespace:
// 0 and 1 select the loopback device, any other index must name an existing
// device (else ENODEV). Most tests touch no namespace, so the endpoint whose
// traffic a program sees always sits on loopback (index 1). Other endpoints'
// ifindexes only live in maps and redirect targets, which test runs record
// but never resolve, so they can be any number. The tests of bpf_fib_lookup,
// which reads the caller's namespace, run in one of their own with real
// devices (see newFIBNode in fib_test.go).
const loIfindex = 1

// mac is an Ethernet address as it sits in a frame.
type mac [6]byte

// String returns m in the usual colon notation.
func (m mac) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

var broadcastMAC = mac{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// pod is a local endpoint as the tests register it in the endpoint maps.
type pod struct {
	ip      netip.Addr
	ip6     netip.Addr // registered in hr_endpoints6 when valid
	mac     mac        // the pod's own MAC
	ifindex uint32     // its host-side device
	nodeMAC mac        // MAC of the host-side device
	id      uint16
	flags   uint16
}

// withIfindex returns p moved to another host-side device.
func (p pod) withIfindex(ifindex uint32) pod {
	p.ifindex = ifindex
	return p
}

// withFlags returns p with the given endpoint flags.
func (p pod) withFlags(flags uint16) pod {
	p.flags = flags
	return p
}

// withIPv6 returns p with an IPv6 address, registered in hr_endpoints6.
func (p pod) withIPv6(ip6 netip.Addr) pod {
	p.ip6 = ip6
	return p
}

// The endpoints of the tests. podA sends (its device is loopback, see
// loIfindex), podB receives, podC sits on a third device.
var (
	// Pod A's device is loopback, whose MAC is 00:00:00:00:00:00: a
	// frame A sends to its gateway is PACKET_HOST there (see netdev_test.go).
	podA = pod{
		ip:      netip.MustParseAddr("10.0.1.10"),
		mac:     mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0x0a},
		ifindex: loIfindex,
		nodeMAC: mac{},
		id:      10,
	}
	podB = pod{
		ip:      netip.MustParseAddr("10.0.1.20"),
		mac:     mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0x14},
		ifindex: 20,
		nodeMAC: mac{0x02, 0xfe, 0x00, 0x00, 0x00, 0x14},
		id:      20,
	}
	podC = pod{
		ip:      netip.MustParseAddr("10.0.1.30"),
		mac:     mac{0x02, 0x00, 0x0a, 0x00, 0x01, 0x1e},
		ifindex: 30,
		nodeMAC: mac{0x02, 0xfe, 0x00, 0x00, 0x00, 0x1e},
		id:      30,
	}
	gatewayIP = netip.MustParseAddr("10.0.1.1")
	remoteIP  = netip.MustParseAddr("10.0.2.10") // a pod on another node
)

// Configurations of the load-time constant the local-delivery tests run
// under. The native routing CIDR holds every pod of the tests: from_netdev
// carries only what comes from it (the rest's replies take the stack).
var (
	configPeer     = nativeConfig(bpf.HostroutingConfig{RedirectPeer: 1}, fibNativeCIDR)
	configRedirect = nativeConfig(bpf.HostroutingConfig{RedirectPeer: 0}, fibNativeCIDR)
)

// datapath is one loaded copy of the hostrouting object with its own maps,
// so that every test starts from zero counters. Nothing is pinned.
type datapath struct {
	tb   testing.TB
	objs bpf.HostroutingObjects
	ids  map[uint32]uint16 // endpoint IDs by ifindex, as addPods registered them
	// ran holds the directions of the entry programs run so far:
	// checkCounts wants every counter in one of them.
	ran map[maps.Direction]bool
}

// hostroutingSpec returns the collection spec with cfg as the CONFIG
// constant and pinning disabled on every map.
func hostroutingSpec(tb testing.TB, cfg bpf.HostroutingConfig) *ebpf.CollectionSpec {
	tb.Helper()
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		tb.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	if cfg.LxcMask == 0 { // hr_lxc as compiled, as the loader sizes it
		cfg.LxcMask = spec.Maps[bpf.HostroutingMapHrLxc].MaxEntries - 1
	}
	if err := spec.Variables[bpf.HostroutingVarCONFIG].Set(cfg); err != nil {
		tb.Fatalf("set CONFIG: %v", err)
	}
	return spec
}

// loadError formats an error of a load, with the verifier's whole log.
func loadError(err error) string {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Sprintf("%+v", ve)
	}
	return err.Error()
}

// loadDatapath loads the collection with cfg as the CONFIG constant and
// pinning disabled on every map, and closes it when tb ends.
func loadDatapath(tb testing.TB, cfg bpf.HostroutingConfig) *datapath {
	tb.Helper()
	return loadDatapathWith(tb, cfg, func(*ebpf.CollectionSpec) {})
}

// loadDatapathWith is loadDatapath with the spec changed by edit first
// (map sizes, as instance.Options would).
func loadDatapathWith(tb testing.TB, cfg bpf.HostroutingConfig, edit func(*ebpf.CollectionSpec)) *datapath {
	tb.Helper()
	datapathtest.RequireRoot(tb)

	spec := hostroutingSpec(tb, cfg)
	edit(spec)
	d := &datapath{tb: tb, ids: map[uint32]uint16{}, ran: map[maps.Direction]bool{}}
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		tb.Fatalf("load hostrouting: %s", loadError(err))
	}
	tb.Cleanup(func() { d.objs.Close() })
	// What the loader does after a load: the policy verdict stages.
	for slot, prog := range []*ebpf.Program{d.objs.TailPolicyAllow, d.objs.TailPolicyDeny} {
		if err := d.objs.HrPolicyRet.Put(uint32(slot), prog); err != nil {
			tb.Fatalf("install policy verdict stage: %v", err)
		}
	}
	return d
}

// direction returns the direction an entry program counts in.
func (d *datapath) direction(prog *ebpf.Program) (maps.Direction, bool) {
	switch prog {
	case d.objs.FromContainer:
		return maps.FromContainer, true
	case d.objs.ToContainer:
		return maps.ToContainer, true
	case d.objs.FromNetdev:
		return maps.FromNetdev, true
	case d.objs.ToNetdev:
		return maps.ToNetdev, true
	}
	return 0, false
}

// ipv4Key is the hr_endpoints key of an IPv4 address: the address's four
// bytes in network order, read as a host-order uint32, as the C side loads
// them from the packet.
func ipv4Key(ip netip.Addr) uint32 {
	a := ip.As4()
	return binary.NativeEndian.Uint32(a[:])
}

// ipv6Key is the hr_endpoints6 key of an IPv6 address (all zeros for none).
func ipv6Key(ip netip.Addr) [16]byte {
	if !ip.IsValid() {
		return [16]byte{}
	}
	return ip.As16()
}

// endpoints is the datapath's endpoint table, as package maps writes it.
func (d *datapath) endpoints() *tables.Endpoints {
	return tables.NewEndpoints(tables.EndpointMaps{ByIPv4: d.objs.HrEndpoints, ByIPv6: d.objs.HrEndpoints6, ByDevice: d.objs.HrDevices, Slots: d.objs.HrLxc, Meta: d.objs.HrEpMeta})
}

// addPods registers each pod in the endpoint maps (by address, device and
// device slot, as package maps writes them) with zeroed counters.
func (d *datapath) addPods(pods ...pod) {
	d.tb.Helper()
	for _, p := range pods {
		if id, ok := d.ids[p.ifindex]; ok {
			d.tb.Fatalf("endpoints %d and %d on one device (ifindex %d): hr_devices holds one", id, p.id, p.ifindex)
		}
		ep := maps.Endpoint{IP: p.ip, IPv6: p.ip6, IfIndex: int(p.ifindex), ID: p.id, Flags: maps.EndpointFlags(p.flags),
			MAC: net.HardwareAddr(p.mac[:]), NodeMAC: net.HardwareAddr(p.nodeMAC[:])}
		if err := d.endpoints().Put(ep); err != nil {
			d.tb.Fatalf("add endpoint %s: %v", p.ip, err)
		}
		if err := tables.NewStats(d.objs.HrEpStats).Reset(p.id); err != nil {
			d.tb.Fatal(err)
		}
		d.ids[p.ifindex] = p.id
	}
}

// skbContext is struct __sk_buff (linux/bpf.h), which BPF_PROG_TEST_RUN
// accepts as context input. Of its fields the kernel honours mark,
// priority, ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs,
// gso_size, hwtstamp and (Linux 6.19+) data_end, and rejects a non-zero
// value anywhere else. The layout has no implicit padding: it marshals to
// the kernel's 192 bytes as it sits in memory (TestSkbContextLayout).
type skbContext struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTCI        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32 // device the skb is on: 0 or 1 is loopback
	TCIndex        uint32
	CB             [5]uint32
	Hash           uint32
	TCClassid      uint32
	Data           uint32
	DataEnd        uint32 // size of the linear area (non-linear skb), 0 for all linear
	NapiID         uint32
	Family         uint32
	RemoteIP4      uint32
	LocalIP4       uint32
	RemoteIP6      [4]uint32
	LocalIP6       [4]uint32
	RemotePort     uint32
	LocalPort      uint32
	DataMeta       uint32
	FlowKeys       uint64
	Tstamp         uint64
	WireLen        uint32
	GSOSegs        uint32 // segments of a GSO packet
	Sk             uint64
	GSOSize        uint32 // segment size of a GSO packet: non-zero makes the skb GSO
	TstampType     uint8
	Pad            [3]uint8
	Hwtstamp       uint64
}

// skbContextSize is sizeof(struct __sk_buff).
const skbContextSize = 192

// run runs prog once on frame as if it arrived on ifindex and returns the
// verdict and the frame as the program left it.
func (d *datapath) run(prog *ebpf.Program, ifindex uint32, frame []byte) (uint32, []byte) {
	d.tb.Helper()
	verdict, out, err := d.tryRun(prog, skbContext{Ifindex: ifindex}, frame)
	if err != nil {
		d.tb.Fatalf("run %s: %v", prog, err)
	}
	return verdict, out
}

// tryRun is run with a full context and the error returned to the caller.
func (d *datapath) tryRun(prog *ebpf.Program, ctx skbContext, frame []byte) (uint32, []byte, error) {
	opts := ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256),
		Context: ctx,
	}
	if dir, ok := d.direction(prog); ok {
		d.ran[dir] = true
	}
	verdict, err := prog.Run(&opts)
	if err != nil {
		return 0, nil, err
	}
	return verdict, opts.DataOut, nil
}

// table returns every node-wide counter, summed over all CPUs.
func (d *datapath) table() *maps.MetricTable {
	d.tb.Helper()
	all, err := tables.NewMetrics(d.objs.HrMetrics).All()
	if err != nil {
		d.tb.Fatal(err)
	}
	return all
}

// metrics returns the non-zero node-wide counters, summed over all CPUs
// and directions (a test runs one program at a time; TestCountersAddUp
// checks the directions).
func (d *datapath) metrics() map[maps.Metric]maps.Counter {
	d.tb.Helper()
	got := make(map[maps.Metric]maps.Counter)
	d.table().Each(func(_ maps.Direction, m maps.Metric, c maps.Counter) {
		got[m] = got[m].Add(c)
	})
	return got
}

// checkTable compares every node-wide counter, by direction and metric,
// with want.
func (d *datapath) checkTable(want *maps.MetricTable) {
	d.tb.Helper()
	got := d.table()
	for dir := range maps.DirectionCount {
		for m := range maps.MetricCount {
			if got[dir][m] != want[dir][m] {
				d.tb.Errorf("%s %s = %+v, want %+v", dir, m, got[dir][m], want[dir][m])
			}
		}
	}
}

// endpointStats returns the counters of the endpoint behind ifindex.
func (d *datapath) endpointStats(ifindex uint32) maps.EndpointStats {
	d.tb.Helper()
	id, ok := d.ids[ifindex]
	if !ok {
		d.tb.Fatalf("no endpoint registered on ifindex %d", ifindex)
	}
	s, err := tables.NewStats(d.objs.HrEpStats).Get(id)
	if err != nil {
		d.tb.Fatal(err)
	}
	return s
}

// counts is what a test expects of the counters after one frame: node-wide
// metrics and per-device from/to/drop packets. Byte counts are implied: one
// frame of the tested length per packet.
type counts struct {
	metrics map[maps.Metric]uint64
	from    map[uint32]uint64 // by ifindex
	to      map[uint32]uint64
	drop    map[uint32]uint64
}

// checkCounts compares every counter the programs keep with want, for the
// given devices (each of which must have been registered by addPods);
// frameLen is the length of the frame each counted packet had.
func (d *datapath) checkCounts(want counts, frameLen int, ifindexes ...uint32) {
	d.tb.Helper()
	n := uint64(frameLen)

	wantMetrics := make(map[maps.Metric]maps.Counter)
	for m, p := range want.metrics {
		if p != 0 {
			wantMetrics[m] = maps.Counter{Packets: p, Bytes: p * n}
		}
	}
	table := d.table()
	gotMetrics := make(map[maps.Metric]maps.Counter)
	table.Each(func(dir maps.Direction, m maps.Metric, c maps.Counter) {
		gotMetrics[m] = gotMetrics[m].Add(c)
		if len(d.ran) > 0 && !d.ran[dir] {
			d.tb.Errorf("metric %s counted %+v in direction %s, where no program ran", m, c, dir)
		}
	})
	for m := range maps.MetricCount {
		if gotMetrics[m] != wantMetrics[m] {
			d.tb.Errorf("metric %s = %+v, want %+v", m, gotMetrics[m], wantMetrics[m])
		}
	}

	for _, ifindex := range ifindexes {
		w := maps.EndpointStats{
			FromPackets: want.from[ifindex], FromBytes: want.from[ifindex] * n,
			ToPackets: want.to[ifindex], ToBytes: want.to[ifindex] * n,
			DropPackets: want.drop[ifindex], DropBytes: want.drop[ifindex] * n,
		}
		if got := d.endpointStats(ifindex); got != w {
			d.tb.Errorf("stats of ifindex %d = %+v, want %+v", ifindex, got, w)
		}
	}
}

// checkFrame fails tb when got differs from want, naming the first byte that
// differs and dumping both frames.
func checkFrame(tb testing.TB, what string, got, want []byte) {
	tb.Helper()
	if string(got) == string(want) {
		return
	}
	at := 0
	for at < len(got) && at < len(want) && got[at] == want[at] {
		at++
	}
	tb.Errorf("%s: frames differ from byte %d (got %d bytes, want %d)\ngot:\n%swant:\n%s",
		what, at, len(got), len(want), hex.Dump(got), hex.Dump(want))
}

// ethFrame returns an Ethernet frame around payload.
func ethFrame(dst, src mac, ethertype uint16, payload []byte) []byte {
	b := make([]byte, 0, 14+len(payload))
	b = append(b, dst[:]...)
	b = append(b, src[:]...)
	b = binary.BigEndian.AppendUint16(b, ethertype)
	return append(b, payload...)
}

// ipv4Packet describes an Ethernet frame carrying one IPv4 packet.
type ipv4Packet struct {
	dstMAC, srcMAC mac
	src, dst       netip.Addr
	tos            uint8 // DSCP and ECN
	ttl            uint8
	proto          uint8
	id             uint16
	fragment       uint16 // flags and fragment offset as on the wire (ipFlagMF, offset in 8-byte units)
	options        []byte // IP options, padded by the caller to a multiple of 4 (at most 40 bytes)
	payload        []byte
	padding        int // bytes of Ethernet padding after the IP packet
}

// ipv4From returns a UDP packet from p to dst as p sends it: to the MAC of
// its host-side device, which answers for the pod's gateway.
func ipv4From(p pod, dst netip.Addr) ipv4Packet {
	return ipv4Packet{
		dstMAC:   p.nodeMAC,
		srcMAC:   p.mac,
		src:      p.ip,
		dst:      dst,
		ttl:      64,
		proto:    ipProtoUDP,
		id:       0x1c46,
		fragment: ipFlagDF,
		// A UDP header (ports 40000 → 53, length 20, no checksum)
		// and 12 bytes of data.
		payload: []byte{
			0x9c, 0x40, 0x00, 0x35, 0x00, 0x14, 0x00, 0x00,
			'h', 'o', 's', 't', 'r', 'o', 'u', 't', 'i', 'n', 'g', '!',
		},
	}
}

// forwarded returns the packet as a router forwards it to pod to: TTL one
// less, from the pod's host-side device MAC to the pod's MAC.
func (p ipv4Packet) forwarded(to pod) ipv4Packet {
	p.ttl--
	p.dstMAC = to.mac
	p.srcMAC = to.nodeMAC
	return p
}

// frame returns the packet on the wire, header checksum computed.
func (p ipv4Packet) frame() []byte {
	hlen := 20 + len(p.options)
	ip := make([]byte, hlen, hlen+len(p.payload)+p.padding)
	ip[0] = 4<<4 | byte(hlen/4)
	ip[1] = p.tos
	binary.BigEndian.PutUint16(ip[2:], uint16(hlen+len(p.payload)))
	binary.BigEndian.PutUint16(ip[4:], p.id)
	binary.BigEndian.PutUint16(ip[6:], p.fragment)
	ip[8] = p.ttl
	ip[9] = p.proto
	src, dst := p.src.As4(), p.dst.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	copy(ip[20:], p.options)
	binary.BigEndian.PutUint16(ip[10:], ipv4Checksum(ip))
	ip = append(ip, p.payload...)
	ip = append(ip, make([]byte, p.padding)...)
	return ethFrame(p.dstMAC, p.srcMAC, ethPIPv4, ip)
}

// onesSum is the 16-bit one's complement sum of b (RFC 1071).
func onesSum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// ipv4Checksum returns the header checksum of hdr, computed as if its
// checksum field were zero.
func ipv4Checksum(hdr []byte) uint16 {
	h := append([]byte(nil), hdr...)
	h[10], h[11] = 0, 0
	return ^onesSum(h)
}

// checkIPv4Checksum fails tb unless the IPv4 header of frame verifies (its
// one's complement sum, checksum included, is all ones) and carries the
// checksum a full recomputation gives.
func checkIPv4Checksum(tb testing.TB, frame []byte) {
	tb.Helper()
	if len(frame) < 14+20 {
		tb.Errorf("frame of %d bytes has no IPv4 header", len(frame))
		return
	}
	hdr := frame[14 : 14+int(frame[14]&0x0f)*4]
	if sum := onesSum(hdr); sum != 0xffff {
		tb.Errorf("IPv4 header does not verify: one's complement sum %#04x, want 0xffff", sum)
	}
	if got, want := binary.BigEndian.Uint16(hdr[10:]), ipv4Checksum(hdr); got != want {
		tb.Errorf("IPv4 checksum %#04x, recomputed %#04x", got, want)
	}
}

// arpPacket describes an Ethernet frame carrying an ARP packet. The field
// layout is always that of Ethernet/IPv4 ARP, whatever hln and pln say.
type arpPacket struct {
	ethDst, ethSrc mac
	hrd, pro       uint16
	hln, pln       uint8
	op             uint16
	sha            mac
	sip            netip.Addr
	tha            mac
	tip            netip.Addr
	padding        int // bytes of Ethernet padding
}

// arpRequest returns the broadcast request p sends to resolve tip.
func arpRequest(p pod, tip netip.Addr) arpPacket {
	return arpPacket{
		ethDst: broadcastMAC,
		ethSrc: p.mac,
		hrd:    arpHrdEther,
		pro:    ethPIPv4,
		hln:    6,
		pln:    4,
		op:     arpOpRequest,
		sha:    p.mac,
		sip:    p.ip,
		tip:    tip,
	}
}

// frame returns the ARP packet on the wire.
func (a arpPacket) frame() []byte {
	b := make([]byte, 0, 28+a.padding)
	b = binary.BigEndian.AppendUint16(b, a.hrd)
	b = binary.BigEndian.AppendUint16(b, a.pro)
	b = append(b, a.hln, a.pln)
	b = binary.BigEndian.AppendUint16(b, a.op)
	sip, tip := a.sip.As4(), a.tip.As4()
	b = append(b, a.sha[:]...)
	b = append(b, sip[:]...)
	b = append(b, a.tha[:]...)
	b = append(b, tip[:]...)
	b = append(b, make([]byte, a.padding)...)
	return ethFrame(a.ethDst, a.ethSrc, ethPARP, b)
}

// ipv6Packet describes an Ethernet frame carrying one IPv6 packet.
type ipv6Packet struct {
	dstMAC, srcMAC mac
	src, dst       netip.Addr
	next           uint8 // next header
	hopLimit       uint8
	payload        []byte
}

// ipv6From returns an ICMPv6 echo request from p, sent from src to dst as p
// sends it: to the MAC of its host-side device.
func ipv6From(p pod, src, dst netip.Addr) ipv6Packet {
	return ipv6Packet{
		dstMAC:   p.nodeMAC,
		srcMAC:   p.mac,
		src:      src,
		dst:      dst,
		next:     58, // ICMPv6
		hopLimit: 64,
		payload:  []byte{128, 0, 0, 0, 0x12, 0x34, 0, 1},
	}
}

// frame returns the packet on the wire.
func (p ipv6Packet) frame() []byte {
	ip := make([]byte, 40, 40+len(p.payload))
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(p.payload)))
	ip[6], ip[7] = p.next, p.hopLimit
	src, dst := p.src.As16(), p.dst.As16()
	copy(ip[8:], src[:])
	copy(ip[24:], dst[:])
	return ethFrame(p.dstMAC, p.srcMAC, ethPIPv6, append(ip, p.payload...))
}
