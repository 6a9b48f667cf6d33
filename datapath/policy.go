package datapath

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/maps"
)

// PolicyMapReplacements are the maps an ingress policy program must be
// loaded with (ebpf.CollectionOptions.MapReplacements), so that it can hand
// its verdict back to the datapath; see SetIngressPolicy. They belong to
// the handle: load the program before Close (which closes them; the
// program keeps its own reference).
func (d *Datapath) PolicyMapReplacements() (map[string]*ebpf.Map, error) {
	var m map[string]*ebpf.Map
	err := d.read(func() error {
		m = d.node.PolicyMapReplacements()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy map replacements: %w", err)
	}
	return m, nil
}

// SetIngressPolicy puts prog into the ingress policy slot of the endpoint
// with address ip: every IP packet into the endpoint passes it, on the BPF
// path (just before bpf_redirect_peer, also for packets from other nodes)
// and on the stack's (to-container). prog is a SchedCLS program written
// against bpf/include/hostrouting/policy.h — it reads the endpoint IDs from
// skb->cb and ends with hr_policy_allow or hr_policy_deny — and loaded with
// PolicyMapReplacements. A denied packet is counted as maps.MetricDropPolicy
// and in the endpoint's drop counters. The slot is a tail call
// (hr_policy, by endpoint ID): endpoints without a policy pay nothing. The
// policy stays in force after Close and across adoption and reloads,
// until ClearIngressPolicy or the endpoint's removal; prog may be closed.
func (d *Datapath) SetIngressPolicy(ip netip.Addr, prog *ebpf.Program) error {
	err := d.locked(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		if err := d.node.SetPolicy(ep.ID, prog); err != nil {
			return err
		}
		ep.Flags |= maps.EndpointPolicy
		return d.endpoints.Put(ep)
	})
	if err != nil {
		return fmt.Errorf("set ingress policy of %s: %w", ip, err)
	}
	return nil
}

// ClearIngressPolicy empties the ingress policy slot of the endpoint with
// address ip: all traffic into it is allowed again.
func (d *Datapath) ClearIngressPolicy(ip netip.Addr) error {
	err := d.locked(func() error {
		ep, err := d.endpoints.Lookup(ip)
		if err != nil {
			return err
		}
		ep.Flags &^= maps.EndpointPolicy
		if err := d.endpoints.Put(ep); err != nil {
			return err
		}
		return d.node.ClearPolicy(ep.ID)
	})
	if err != nil {
		return fmt.Errorf("clear ingress policy of %s: %w", ip, err)
	}
	return nil
}
