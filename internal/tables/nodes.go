package tables

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
)

// Nodes is the registry of other nodes: node IP → name. Their pod CIDRs
// are the kernel's routes (routing.NodeRoutes).
type Nodes struct {
	m *ebpf.Map
}

// NewNodes wraps the loaded node map (instance.Maps.Nodes).
func NewNodes(m *ebpf.Map) *Nodes {
	return &Nodes{m: m}
}

// Put records node name at ip.
func (n *Nodes) Put(ip netip.Addr, name string) error {
	k, err := ipv4Key(ip)
	if err != nil {
		return err
	}
	var v bpf.HostroutingNodeEntry
	if len(name) == 0 || len(name) >= len(v.Name) {
		return fmt.Errorf("node name %q: want 1 to %d bytes", name, len(v.Name)-1)
	}
	putString(v.Name[:], name)
	if err := n.m.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write node %s: %w", ip, mapErr(err, n.m))
	}
	return nil
}

// Delete forgets the node at ip, or returns ErrNotFound.
func (n *Nodes) Delete(ip netip.Addr) error {
	k, err := ipv4Key(ip)
	if err != nil {
		return err
	}
	if err := n.m.Delete(k); err != nil {
		return fmt.Errorf("delete node %s: %w", ip, mapErr(err, n.m))
	}
	return nil
}

// All returns the nodes' names by node IP.
func (n *Nodes) All() (map[netip.Addr]string, error) {
	var (
		k   uint32
		v   bpf.HostroutingNodeEntry
		all = map[netip.Addr]string{}
	)
	it := n.m.Iterate()
	for it.Next(&k, &v) {
		all[ipv4Addr(k)] = getString(v.Name[:])
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return all, nil
}
