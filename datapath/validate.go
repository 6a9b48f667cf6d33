package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

var (
	// ErrInvalidService is wrapped by the error of UpsertService and
	// UpsertServices for a service that makes no sense, naming what is
	// wrong: a frontend or backend address no service may have (such as a
	// broadcast, multicast, loopback or unspecified one), a backend that
	// is its own frontend, a frontend that is a pod's address.
	ErrInvalidService = errors.New("invalid service")
	// ErrServiceTableFull is wrapped by the error of UpsertService and
	// UpsertServices when the node's service tables have no room for a
	// service (Config.MaxServices sizes them). It wraps ErrMapFull.
	ErrServiceTableFull = fmt.Errorf("service table full: %w", ErrMapFull)
)

// broadcast is the limited broadcast address.
var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// badAddr says why no frontend or backend may have address a, or "".
func badAddr(a netip.Addr) string {
	switch {
	case a == broadcast:
		return "the broadcast address"
	case a.IsMulticast():
		return "a multicast address"
	case a.IsLoopback():
		return "a loopback address"
	case a.IsUnspecified():
		return "the unspecified address"
	}
	return ""
}

// invalid returns an error wrapping ErrInvalidService.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidService, fmt.Sprintf(format, args...))
}

// refuse checks s against what the node has: a frontend that is the
// address of one of the node's endpoints, or inside another node's pod
// CIDRs, would take the traffic meant for that pod.
func (st *serviceState) refuse(s *Service) error {
	addr := s.Frontend.Addr()
	if st.locals[addr] {
		return invalid("frontend %s is the address of an endpoint (a pod) of this node", s.Frontend)
	}
	for _, n := range st.nodes {
		for _, p := range n.PodCIDRs {
			if p.Contains(addr) {
				return invalid("frontend %s is inside pod CIDR %s of node %s", s.Frontend, p, n.Name)
			}
		}
	}
	return nil
}

// room checks that the service tables hold s once it is written as
// upsertService writes it: its backends new to the node first, then the
// entries of the service's other frontends go, then its internal scope's
// entry and its external one take their place (each, if it grows, at
// its new size; if it shrinks, at its old size until written).
func (d *Datapath) room(st *serviceState, s *Service, front maps.Frontend, external, internal int) error {
	var added int
	seen := map[backendKey]bool{}
	for _, b := range s.Backends {
		key := backendKey{b.Addr, s.Protocol}
		if _, ok := st.byAddr[key]; !ok && !seen[key] {
			added++
		}
		seen[key] = true
	}
	if n, limit := len(st.backends)+added, int(d.node.Maps.Backends.MaxEntries()); n > limit {
		return fmt.Errorf("%w: backend table: %d backends and %d new, room for %d (MaxServices %d)",
			ErrServiceTableFull, len(st.backends), added, limit, d.maxServices())
	}
	inner := maps.Frontend{Addr: front.Addr, Proto: front.Proto, Scope: maps.ScopeInternal}
	used := st.used
	for _, f := range st.frontends[s.ID] {
		if f != front && f != inner {
			used -= st.entries[f]
		}
	}
	used += internal - st.entries[inner]
	peak := used
	used += external - st.entries[front]
	peak = max(peak, used)
	if limit := int(d.node.Maps.Services.MaxEntries()); peak > limit {
		return fmt.Errorf("%w: frontend table: %d entries, room for %d; the service needs %d (an entry and one per backend, per scope) (MaxServices %d)",
			ErrServiceTableFull, st.used, limit, external+internal, d.maxServices())
	}
	return nil
}

// maxServices is the node's MaxServices (Config.MaxServices).
func (d *Datapath) maxServices() uint32 {
	return d.node.Maps.Backends.MaxEntries() / loader.ServiceBackendSlots
}
