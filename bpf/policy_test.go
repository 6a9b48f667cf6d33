package bpf_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/hostrouting/hostrouting/examples/policy"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// The ingress policy of an endpoint is a program in hr_policy at the
// endpoint's ID, run by tail call for packets into the endpoint when the
// endpoint has ENDPOINT_F_POLICY: before bpf_redirect_peer on the BPF path
// (from_container, from_netdev), on to_container for what the stack
// delivers. The tests use the example policy (examples/policy), which
// drops what its denied map lists as (endpoint, source) and lets the rest
// in through hr_policy_ret.

// policyOptions are the collection options an embedder's policy loads
// with: d's hr_policy_ret in place of the policy's own.
func (d *datapath) policyOptions() *ebpf.CollectionOptions {
	return &ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{bpf.HostroutingMapHrPolicyRet: d.objs.HrPolicyRet},
	}
}

// loadPolicy loads the example policy against d; it is closed when the
// test ends.
func (d *datapath) loadPolicy() *policy.PolicyObjects {
	d.tb.Helper()
	spec, err := policy.LoadPolicy()
	if err != nil {
		d.tb.Fatal(err)
	}
	objs := new(policy.PolicyObjects)
	if err := spec.LoadAndAssign(objs, d.policyOptions()); err != nil {
		d.tb.Fatalf("load the example policy: %s", loadError(err))
	}
	d.tb.Cleanup(func() { objs.Close() })
	return objs
}

// setPolicy puts prog into the policy slot of endpoint p.
func (d *datapath) setPolicy(p pod, prog *ebpf.Program) {
	d.tb.Helper()
	if err := d.objs.HrPolicy.Put(uint32(p.id), prog); err != nil {
		d.tb.Fatalf("policy of endpoint %d: %v", p.id, err)
	}
}

// deny lists packets into endpoint from source (an endpoint ID, 0 for
// everything from outside the node) in the example policy's map.
func deny(tb testing.TB, objs *policy.PolicyObjects, endpoint, source uint16) {
	tb.Helper()
	if err := objs.Denied.Put(policy.PolicyPair{Endpoint: uint32(endpoint), Source: uint32(source)}, uint8(1)); err != nil {
		tb.Fatal(err)
	}
}

// outsideSource is the policy's source ID of packets from outside the node.
const outsideSource = 0

// policyCase is a policy set-up for a packet into pod B.
type policyCase struct {
	name    string
	flag    bool        // pod B has ENDPOINT_F_POLICY
	slot    bool        // the example policy sits in B's slot
	denied  [][2]uint16 // (endpoint, source) pairs listed
	allowed bool        // the packet gets in
}

// setUp registers pods (pod B with the case's flag) in d and installs
// the case's policy.
func (c policyCase) setUp(t *testing.T, d *datapath, b pod, others ...pod) {
	t.Helper()
	if c.flag {
		b = b.withFlags(endpointFlagPolicy)
	}
	d.addPods(append(others, b)...)
	if c.slot || len(c.denied) > 0 {
		objs := d.loadPolicy()
		for _, p := range c.denied {
			deny(t, objs, p[0], p[1])
		}
		if c.slot {
			d.setPolicy(b, objs.DenyListed)
		}
	}
}

// TestPolicyFromContainer runs pod A's packets to pod B through B's
// policy on the BPF path (redirect_peer): allowed, they are delivered as
// without a policy; denied, dropped and counted against B (A still sent
// them). The policy sees B's ID and A's as the source.
func TestPolicyFromContainer(t *testing.T) {
	for _, c := range []policyCase{
		{name: "nothing listed", flag: true, slot: true, allowed: true},
		{name: "(B, A) listed", flag: true, slot: true, denied: [][2]uint16{{podB.id, podA.id}}},
		{name: "(B, A) and more listed", flag: true, slot: true,
			denied: [][2]uint16{{podB.id, podC.id}, {podB.id, podA.id}, {podB.id, outsideSource}}},
		{name: "(B, outside) listed", flag: true, slot: true, denied: [][2]uint16{{podB.id, outsideSource}}, allowed: true},
		{name: "(B, C) listed", flag: true, slot: true, denied: [][2]uint16{{podB.id, podC.id}}, allowed: true},
		{name: "(C, A) listed", flag: true, slot: true, denied: [][2]uint16{{podC.id, podA.id}}, allowed: true},
		// The flag is cleared before a policy goes, and set after one
		// came: a slot without the flag is not consulted, a flag
		// without a slot lets everything in.
		{name: "flag without policy", flag: true, allowed: true},
		{name: "policy without flag", slot: true, denied: [][2]uint16{{podB.id, podA.id}}, allowed: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			c.setUp(t, d, podB, podA, podC)
			pkt := ipv4From(podA, podB.ip)
			frame := pkt.frame()

			verdict, out := d.run(d.objs.FromContainer, loIfindex, frame)
			// The policy saw the packet as it is delivered: rewritten.
			checkFrame(t, "frame", out, pkt.forwarded(podB).frame())
			want := counts{from: map[uint32]uint64{podA.ifindex: 1}}
			if c.allowed {
				if verdict != tcActRedirect {
					t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
				want.to = map[uint32]uint64{podB.ifindex: 1}
			} else {
				if verdict != tcActShot {
					t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", verdict, tcActShot)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricDropPolicy: 1}
				want.drop = map[uint32]uint64{podB.ifindex: 1}
			}
			d.checkCounts(want, len(frame), podA.ifindex, podB.ifindex, podC.ifindex)
		})
	}

	// With the bpf_redirect fallback the packet goes to B's device,
	// whose to_container runs the policy (TestPolicyToContainer):
	// from_container does not.
	t.Run("redirect fallback", func(t *testing.T) {
		d := loadDatapath(t, configRedirect)
		policyCase{flag: true, slot: true, denied: [][2]uint16{{podB.id, podA.id}}}.setUp(t, d, podB, podA)
		pkt := ipv4From(podA, podB.ip)
		verdict, out := d.run(d.objs.FromContainer, loIfindex, pkt.frame())
		if verdict != tcActRedirect {
			t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
		}
		checkFrame(t, "frame", out, pkt.forwarded(podB).frame())
		d.checkCounts(counts{
			metrics: map[maps.Metric]uint64{maps.MetricForwardRedirect: 1},
			from:    map[uint32]uint64{podA.ifindex: 1},
		}, len(pkt.frame()), podA.ifindex, podB.ifindex)
	})
}

// TestPolicyFromNetdev runs packets from other nodes to pod B through B's
// policy: their source is "outside" (0), whatever address they carry.
func TestPolicyFromNetdev(t *testing.T) {
	fromLocalPod := fromNetwork(podB.ip)
	fromLocalPod.src = podC.ip
	for _, c := range []struct {
		policyCase
		pkt ipv4Packet
	}{
		{policyCase{name: "nothing listed", flag: true, slot: true, allowed: true}, fromNetwork(podB.ip)},
		{policyCase{name: "(B, outside) listed", flag: true, slot: true,
			denied: [][2]uint16{{podB.id, outsideSource}}}, fromNetwork(podB.ip)},
		{policyCase{name: "(B, C) listed, source C's address", flag: true, slot: true,
			denied: [][2]uint16{{podB.id, podC.id}}, allowed: true}, fromLocalPod},
		{policyCase{name: "(B, outside) listed, source C's address", flag: true, slot: true,
			denied: [][2]uint16{{podB.id, outsideSource}}}, fromLocalPod},
		{policyCase{name: "flag without policy", flag: true, allowed: true}, fromNetwork(podB.ip)},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configPeer)
			c.setUp(t, d, podB, netdevPodA, podC)
			frame := c.pkt.frame()

			verdict, out := d.run(d.objs.FromNetdev, loIfindex, frame)
			checkFrame(t, "frame", out, c.pkt.forwarded(podB).frame())
			var want counts
			if c.allowed {
				if verdict != tcActRedirect {
					t.Errorf("verdict %d, want TC_ACT_REDIRECT (%d)", verdict, tcActRedirect)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricForwardPeer: 1}
				want.to = map[uint32]uint64{podB.ifindex: 1}
			} else {
				if verdict != tcActShot {
					t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", verdict, tcActShot)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricDropPolicy: 1}
				want.drop = map[uint32]uint64{podB.ifindex: 1}
			}
			d.checkCounts(want, len(frame), netdevIfindexes...)
			if got := d.table()[maps.FromNetdev]; got[maps.MetricForwardPeer].Packets+got[maps.MetricDropPolicy].Packets != 1 {
				t.Errorf("from-netdev counters %v: want the packet there", got)
			}
		})
	}
}

// TestPolicyToContainer runs what the stack delivers into pod B (on
// loopback, its device) through B's policy on to_container, under the
// redirect configuration where this is the policy's only place: IPv4 and
// IPv6 pass it, ARP does not. The source is the sending endpoint of this
// node by IPv4 source address, else outside.
func TestPolicyToContainer(t *testing.T) {
	b := podB.withIfindex(loIfindex)
	a := podA.withIfindex(10)

	fromA := ipv4From(a, b.ip).forwarded(b)
	fromRemote := fromA
	fromRemote.src = remoteIP
	malformed := fromA.frame()
	malformed[14] = 0x44
	ip6 := ipv6From(b, netip.MustParseAddr("fe80::1"), netip.MustParseAddr("fe80::b"))
	ip6.dstMAC, ip6.srcMAC = b.mac, b.nodeMAC
	arp := arpRequest(a, b.ip).frame()
	denyA := [][2]uint16{{b.id, a.id}}
	denyOutside := [][2]uint16{{b.id, outsideSource}}
	denyAll := [][2]uint16{{b.id, a.id}, {b.id, outsideSource}}

	for _, c := range []struct {
		policyCase
		frame []byte
	}{
		{policyCase{name: "from A, nothing listed", flag: true, slot: true, allowed: true}, fromA.frame()},
		{policyCase{name: "from A, (B, A) listed", flag: true, slot: true, denied: denyA}, fromA.frame()},
		{policyCase{name: "from A, (B, outside) listed", flag: true, slot: true, denied: denyOutside, allowed: true}, fromA.frame()},
		{policyCase{name: "from another node, (B, outside) listed", flag: true, slot: true, denied: denyOutside}, fromRemote.frame()},
		{policyCase{name: "from another node, (B, A) listed", flag: true, slot: true, denied: denyA, allowed: true}, fromRemote.frame()},
		{policyCase{name: "ipv6, (B, outside) listed", flag: true, slot: true, denied: denyOutside}, ip6.frame()},
		{policyCase{name: "ipv6, (B, A) listed", flag: true, slot: true, denied: denyA, allowed: true}, ip6.frame()},
		// An IPv4 header that does not parse has no source: outside.
		{policyCase{name: "malformed ipv4, (B, outside) listed", flag: true, slot: true, denied: denyOutside}, malformed},
		{policyCase{name: "arp, all listed", flag: true, slot: true, denied: denyAll, allowed: true}, arp},
		{policyCase{name: "flag without policy", flag: true, allowed: true}, fromA.frame()},
		{policyCase{name: "policy without flag", slot: true, denied: denyAll, allowed: true}, fromA.frame()},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := loadDatapath(t, configRedirect)
			c.setUp(t, d, b, a, podC)

			verdict, out := d.run(d.objs.ToContainer, b.ifindex, c.frame)
			checkFrame(t, "frame", out, c.frame)
			var want counts
			if c.allowed {
				if verdict != tcActOK {
					t.Errorf("verdict %d, want TC_ACT_OK (%d)", verdict, tcActOK)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricPass: 1}
				want.to = map[uint32]uint64{b.ifindex: 1}
			} else {
				if verdict != tcActShot {
					t.Errorf("verdict %d, want TC_ACT_SHOT (%d)", verdict, tcActShot)
				}
				want.metrics = map[maps.Metric]uint64{maps.MetricDropPolicy: 1}
				want.drop = map[uint32]uint64{b.ifindex: 1}
			}
			d.checkCounts(want, len(c.frame), a.ifindex, b.ifindex, podC.ifindex)
		})
	}
}

// TestPolicyOwnVerdict checks the contract's escape: a policy that ends
// with a verdict of its own, not through hr_policy_ret, gives the packet
// that verdict, and the datapath counts nothing more of it.
func TestPolicyOwnVerdict(t *testing.T) {
	for _, verdict := range []uint32{tcActOK, tcActShot} {
		d := loadDatapath(t, configPeer)
		d.addPods(podA, podB.withFlags(endpointFlagPolicy))
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:         ebpf.SchedCLS,
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(verdict)), asm.Return()},
			License:      "GPL",
		})
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		d.setPolicy(podB, prog)

		frame := ipv4From(podA, podB.ip).frame()
		got, _ := d.run(d.objs.FromContainer, loIfindex, frame)
		if got != verdict {
			t.Errorf("verdict %d, want the policy's %d", got, verdict)
		}
		d.checkCounts(counts{from: map[uint32]uint64{podA.ifindex: 1}}, len(frame), podA.ifindex, podB.ifindex)
	}
}

// TestPolicyVerdictOutsideDatapath runs the verdict stages as if a policy
// had been called by something other than the datapath (cb holds no
// datapath state): they drop and count nothing.
func TestPolicyVerdictOutsideDatapath(t *testing.T) {
	d := loadDatapath(t, configPeer)
	d.addPods(podA, podB)
	frame := ipv4From(podA, podB.ip).frame()
	for _, prog := range []*ebpf.Program{d.objs.TailPolicyAllow, d.objs.TailPolicyDeny} {
		ctx := skbContext{Ifindex: loIfindex, CB: [5]uint32{uint32(podB.id), 0, loIfindex, 0xff, 0}}
		verdict, _, err := d.tryRun(prog, ctx, frame)
		if err != nil {
			t.Fatal(err)
		}
		if verdict != tcActShot {
			t.Errorf("%s: verdict %d, want TC_ACT_SHOT", prog, verdict)
		}
	}
	d.checkCounts(counts{}, len(frame), podA.ifindex, podB.ifindex)
}

// TestPolicyNeedsNodeMap checks that a policy cannot be loaded without the
// node's hr_policy_ret: the header pins the map by name and gives no
// path, so the load fails rather than making a map of its own that no
// datapath stage sits in (every verdict would be a silent drop).
func TestPolicyNeedsNodeMap(t *testing.T) {
	loadDatapath(t, configPeer) // root, as the loads below need
	spec, err := policy.LoadPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps[policy.PolicyMapHrPolicyRet].Pinning; got != ebpf.PinByName {
		t.Errorf("the policy's hr_policy_ret has pinning %v, want by name", got)
	}
	var objs policy.PolicyObjects
	err = spec.LoadAndAssign(&objs, nil)
	if err == nil {
		objs.Close()
		t.Fatal("the policy loaded without the node's hr_policy_ret")
	}
	if !strings.Contains(err.Error(), "hr_policy_ret") || !strings.Contains(err.Error(), "PinPath") {
		t.Errorf("error %q: want one about hr_policy_ret's missing pin path", err)
	}
}
