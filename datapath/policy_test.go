package datapath_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/examples/policy"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// loadPolicy loads the example policy (examples/policy) for dp, as an
// embedder does, and returns it; closed when t ends (the slots keep their
// own references).
func loadPolicy(t *testing.T, dp *datapath.Datapath) *policy.PolicyObjects {
	t.Helper()
	spec, err := policy.LoadPolicy()
	if err != nil {
		t.Fatal(err)
	}
	replacements, err := dp.PolicyMapReplacements()
	if err != nil {
		t.Fatal(err)
	}
	var objs policy.PolicyObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: replacements}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs
}

// deny lists (endpoint, source) in the example policy's map; source 0 is
// everything from outside the node.
func deny(t *testing.T, objs *policy.PolicyObjects, endpoint, source uint16) {
	t.Helper()
	if err := objs.Denied.Put(policy.PolicyPair{Endpoint: uint32(endpoint), Source: uint32(source)}, uint8(1)); err != nil {
		t.Fatal(err)
	}
}

func endpointOf(t *testing.T, dp *datapath.Datapath, ip netip.Addr) datapath.Endpoint {
	t.Helper()
	ep, err := dp.Endpoint(ip)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// policyDrops returns the drop-policy packets counted node-wide.
func policyDrops(t *testing.T, dp *datapath.Datapath) uint64 {
	t.Helper()
	return metric(t, dp, maps.MetricDropPolicy)
}

// mustNotReach fails t if any of three pings from p to dst is answered.
func mustNotReach(t *testing.T, p *datapathtest.Pod, dst netip.Addr) {
	t.Helper()
	if got, _ := p.Ping(dst, 3, time.Second); got != 0 {
		t.Errorf("%s → %s: %d of 3 replies through a policy that denies them", p.Name, dst, got)
	}
}

// TestIngressPolicySameNode drops and allows real traffic per endpoint
// through the tail-call policy slot, with bpf_redirect_peer (the policy
// runs in from-container) and with the bpf_redirect fallback (it runs in
// to-container, on the host device's egress).
func TestIngressPolicySameNode(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  datapath.Config
	}{
		{"redirect_peer", datapath.Config{}},
		{"fallback", datapath.Config{Disable: loader.Disable{RedirectPeer: true}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			node, a, b, dp := twoPods(t, c.cfg)
			cPod := node.AddPod(t, "c", ipC)
			cPod.AddEndpoint(t, dp)
			epA, epB, epC := endpointOf(t, dp, a.IP), endpointOf(t, dp, b.IP), endpointOf(t, dp, cPod.IP)
			objs := loadPolicy(t, dp)
			deny(t, objs, epB.ID, epA.ID) // b refuses a, takes c

			if err := dp.SetIngressPolicy(b.IP, objs.DenyListed); err != nil {
				t.Fatal(err)
			}
			if got := endpointOf(t, dp, b.IP); !got.Policy {
				t.Errorf("b: %s, want the policy flag", got)
			}
			dropsBefore := policyDrops(t, dp)
			statsBefore, err := dp.EndpointStats(b.IP)
			if err != nil {
				t.Fatal(err)
			}
			mustNotReach(t, a, b.IP)
			cPod.MustPing(t, b.IP) // allowed source, through the same policy
			b.MustPing(t, epC.IP)  // c has no policy: a reply from b gets in
			if d := policyDrops(t, dp) - dropsBefore; d != 3 {
				t.Errorf("drop-policy moved by %d: want 3", d)
			}
			statsAfter, err := dp.EndpointStats(b.IP)
			if err != nil {
				t.Fatal(err)
			}
			if d := statsAfter.DropPackets - statsBefore.DropPackets; d != 3 {
				t.Errorf("b's drop counter moved by %d: want 3", d)
			}
			// The policy is b's alone: a takes c's traffic (and b's
			// replies, were there any, would be denied: no conntrack).
			cPod.MustPing(t, a.IP)

			if err := dp.ClearIngressPolicy(b.IP); err != nil {
				t.Fatal(err)
			}
			a.MustPing(t, b.IP)
			if got := endpointOf(t, dp, b.IP); got.Policy {
				t.Errorf("b after clearing: %s, policy flag still set", got)
			}
		})
	}
}

// TestIngressPolicyFromNetdev drops traffic from another node in the
// policy slot of the destination, on the BPF path (from-netdev →
// redirect_peer) and the fallback (from-netdev → bpf_redirect →
// to-container).
func TestIngressPolicyFromNetdev(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  datapath.Config
	}{
		{"redirect_peer", datapath.Config{}},
		{"fallback", datapath.Config{Disable: loader.Disable{RedirectPeer: true}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cn := newCrossNode(t, datapathtest.ClusterOptions{}, c.cfg)
			dp := cn.dps[1]
			objs := loadPolicy(t, dp)
			epB := endpointOf(t, dp, cn.b.IP)
			deny(t, objs, epB.ID, 0) // nothing from outside the node
			if err := dp.SetIngressPolicy(cn.b.IP, objs.DenyListed); err != nil {
				t.Fatal(err)
			}
			before := policyDrops(t, dp)
			mustNotReach(t, cn.a, cn.b.IP)
			if d := policyDrops(t, dp) - before; d != 3 {
				t.Errorf("drop-policy on b's node moved by %d: want 3", d)
			}
			if err := dp.ClearIngressPolicy(cn.b.IP); err != nil {
				t.Fatal(err)
			}
			cn.a.MustPing(t, cn.b.IP)
		})
	}
}

// TestIngressPolicySurvivesAdoptionAndReload installs a policy, then lets a
// second process adopt the node (same code and config) and a third reload
// it with other config (tcx → clsact): the policy stays in force with no
// one re-installing it, and every attachment runs the new programs. The
// first handle stays open, as an agent's would.
func TestIngressPolicySurvivesAdoptionAndReload(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{})
	pin := pinPathOf(t, dp)
	objs := loadPolicy(t, dp)
	deny(t, objs, endpointOf(t, dp, b.IP).ID, endpointOf(t, dp, a.IP).ID)
	if err := dp.SetIngressPolicy(b.IP, objs.DenyListed); err != nil {
		t.Fatal(err)
	}
	objs.DenyListed.Close() // the slot holds its own reference
	mustNotReach(t, a, b.IP)

	adopted, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns})
	if err != nil {
		t.Fatal(err)
	}
	mustNotReach(t, a, b.IP)
	adopted.Close()

	reloaded, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, Disable: loader.Disable{TCX: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reloaded.Close() })
	if st, err := reloaded.Status(); err != nil || st.AttachMode == "tcx" {
		t.Fatalf("reloaded node: attach mode %q (err %v), want clsact", st.AttachMode, err)
	}
	for _, ep := range []*datapathtest.Pod{a, b} {
		for _, p := range []loader.Program{loader.FromContainer, loader.ToContainer} {
			if ok, err := reloaded.Attached(ep.IP, p); err != nil || !ok {
				t.Errorf("%s on %s after the reload: attached %v, err %v", p, ep.HostIf, ok, err)
			}
		}
	}
	mustNotReach(t, a, b.IP)
	if err := reloaded.ClearIngressPolicy(b.IP); err != nil {
		t.Fatal(err)
	}
	a.MustPing(t, b.IP)
}

// TestIngressPolicyBadInput refuses programs the slot cannot run and
// leaves the endpoint open.
func TestIngressPolicyBadInput(t *testing.T) {
	_, a, b, dp := twoPods(t, datapath.Config{})

	// A SchedCLS program that was not loaded with the node's
	// hr_policy_ret: its verdicts would reach nothing.
	spec, err := policy.LoadPolicy()
	if err != nil {
		t.Fatal(err)
	}
	otherSpec := spec.Maps["hr_policy_ret"].Copy()
	otherSpec.Pinning = ebpf.PinNone
	other, err := ebpf.NewMap(otherSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var stray policy.PolicyObjects
	if err := spec.LoadAndAssign(&stray, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"hr_policy_ret": other}}); err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	if err := dp.SetIngressPolicy(b.IP, stray.DenyListed); !errors.Is(err, loader.ErrPolicyNotLinked) {
		t.Errorf("policy linked to another hr_policy_ret: %v, want ErrPolicyNotLinked", err)
	}
	// Without the replacement the object does not load at all: its
	// hr_policy_ret is pinned by name and there is no pin path.
	var unlinked policy.PolicyObjects
	if err := spec.LoadAndAssign(&unlinked, nil); err == nil {
		unlinked.Close()
		t.Error("example policy loaded without the node's hr_policy_ret")
	}

	objs := loadPolicy(t, dp)
	for _, c := range []struct {
		name string
		ip   netip.Addr
		prog *ebpf.Program
	}{
		{"nil program", b.IP, nil},
		{"unknown endpoint", netip.MustParseAddr("10.0.0.99"), objs.DenyListed},
		{"no address", netip.Addr{}, objs.DenyListed},
	} {
		if err := dp.SetIngressPolicy(c.ip, c.prog); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	if got := endpointOf(t, dp, b.IP); got.Policy {
		t.Errorf("b after refused policies: %s, policy flag set", got)
	}
	a.MustPing(t, b.IP)
}
