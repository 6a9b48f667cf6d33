package maps

import (
	"fmt"
	"net/netip"
)

// Protocol is a frontend's or backend's L4 protocol.
type Protocol uint8

// The protocols services carry.
const (
	TCP Protocol = 6
	UDP Protocol = 17
)

// String names p as Kubernetes does: "TCP".
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Scope of a frontend entry (enum lb_scope): with externalTrafficPolicy
// Local, ScopeExternal holds the local backends and ScopeInternal all.
type Scope uint8

// Frontend scopes.
const (
	ScopeExternal Scope = 0
	ScopeInternal Scope = 1
)

// ServiceFlags are a frontend's switches (enum lb_flag).
type ServiceFlags uint16

// Service flags.
const (
	ServiceNodePort  ServiceFlags = 1 << 0 // frontend is a node address:nodePort
	ServiceExternal  ServiceFlags = 1 << 1 // frontend is an external IP
	ServiceLocal     ServiceFlags = 1 << 2 // externalTrafficPolicy Local
	ServiceTwoScopes ServiceFlags = 1 << 3 // has a ScopeInternal entry too
	ServiceAffinity  ServiceFlags = 1 << 4 // sessionAffinity ClientIP
	ServiceMaglev    ServiceFlags = 1 << 5 // backends chosen by Maglev
	// ServiceInternalLocal records internalTrafficPolicy Local, which the
	// scopes' backends carry out.
	ServiceInternalLocal ServiceFlags = 1 << 6
	// ServiceSourceRanges: only sources in the service's source ranges
	// reach it (loadBalancerSourceRanges).
	ServiceSourceRanges ServiceFlags = 1 << 7
)

// Frontend is where a service is reached.
type Frontend struct {
	Addr  netip.AddrPort
	Proto Protocol
	Scope Scope
}

// String formats f as `cilium service list` does: "10.96.0.10:53/UDP".
func (f Frontend) String() string {
	s := fmt.Sprintf("%s/%s", f.Addr, f.Proto)
	if f.Scope == ScopeInternal {
		s += "/i"
	}
	return s
}

// ServiceEntry is a frontend's entry: the backends in its slots, in
// order, and what replies are translated back with.
type ServiceEntry struct {
	Frontend        Frontend
	RevNAT          uint16 // the service's ID (reverse NAT index)
	Flags           ServiceFlags
	AffinityTimeout uint16   // seconds, with ServiceAffinity
	Backends        []uint32 // active backend IDs, slots 1..len: new flows pick among them
	Inactive        []uint32 // terminating or in maintenance, in the slots after: never picked
}

// BackendState is a backend's (enum lb_backend_state).
type BackendState uint8

// Backend states: only active backends take new flows; the others keep
// the flows they have.
const (
	BackendActive      BackendState = 0
	BackendTerminating BackendState = 1
	BackendMaintenance BackendState = 2
)

// String names s as `cilium service list` does: "active".
func (s BackendState) String() string {
	switch s {
	case BackendActive:
		return "active"
	case BackendTerminating:
		return "terminating"
	case BackendMaintenance:
		return "maintenance"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Backend is a service backend, known by ID in the frontends' slots.
type Backend struct {
	ID    uint32
	Addr  netip.AddrPort
	Proto Protocol
	State BackendState
}
