package instance

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/loader"
)

// PolicyMapReplacements are the maps an ingress policy program must be
// loaded with (ebpf.CollectionOptions.MapReplacements): the node's
// hr_policy_ret, through which it hands its verdict back
// (bpf/include/hostrouting/policy.h).
func (n *Instance) PolicyMapReplacements() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{bpf.HostroutingMapHrPolicyRet: n.Maps.PolicyReturn}
}

// SetPolicy puts prog into the ingress policy slot of endpoint id,
// replacing what was there. The slot holds its own reference: prog may be
// closed afterwards, and the policy stays in force across Close, adoption
// and reloads. The endpoint's policy flag (maps.EndpointPolicy) turns the
// slot on; set it after SetPolicy, and clear it before ClearPolicy.
func (n *Instance) SetPolicy(id uint16, prog *ebpf.Program) error {
	if prog == nil || prog.Type() != ebpf.SchedCLS {
		return fmt.Errorf("set policy of endpoint %d: want a program of type SchedCLS", id)
	}
	if int(id) == 0 || uint32(id) >= n.Maps.Policy.MaxEntries() {
		return fmt.Errorf("set policy of endpoint %d: no such endpoint ID (1 to %d)", id, n.Maps.Policy.MaxEntries()-1)
	}
	linked, err := usesMap(prog, n.Maps.PolicyReturn)
	if err != nil {
		return fmt.Errorf("set policy of endpoint %d: %w", id, err)
	}
	if !linked {
		return fmt.Errorf("set policy of endpoint %d: %w", id, loader.ErrPolicyNotLinked)
	}
	if err := n.Maps.Policy.Update(uint32(id), prog, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set policy of endpoint %d: %w", id, err)
	}
	return nil
}

// ClearPolicy empties the ingress policy slot of endpoint id. An empty
// slot is not an error.
func (n *Instance) ClearPolicy(id uint16) error {
	err := n.Maps.Policy.Delete(uint32(id))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("clear policy of endpoint %d: %w", id, err)
	}
	return nil
}

// usesMap tells whether prog refers to map m.
func usesMap(prog *ebpf.Program, m *ebpf.Map) (bool, error) {
	pinfo, err := prog.Info()
	if err != nil {
		return false, fmt.Errorf("program info: %w", err)
	}
	ids, ok := pinfo.MapIDs()
	if !ok {
		return false, errors.New("the kernel does not tell a program's maps")
	}
	minfo, err := m.Info()
	if err != nil {
		return false, fmt.Errorf("map info: %w", err)
	}
	id, ok := minfo.ID()
	if !ok {
		return false, errors.New("the kernel does not tell map IDs")
	}
	return slices.Contains(ids, id), nil
}
