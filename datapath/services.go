package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// ServiceType is how a service frontend is reached, as `cilium service
// list` names it.
type ServiceType string

// Service types.
const (
	ClusterIP  ServiceType = "ClusterIP"
	NodePort   ServiceType = "NodePort"
	ExternalIP ServiceType = "ExternalIPs"
)

// Names of the maps package for services.
type (
	// Protocol is a service's L4 protocol (maps.Protocol).
	Protocol = maps.Protocol
	// BackendState is a backend's (maps.BackendState).
	BackendState = maps.BackendState
)

// Service protocols and backend states.
const (
	TCP                = maps.TCP
	UDP                = maps.UDP
	BackendActive      = maps.BackendActive
	BackendTerminating = maps.BackendTerminating
	BackendMaintenance = maps.BackendMaintenance
)

// Service is one frontend of a Kubernetes service and its backends, as a
// row of `cilium service list`: a ClusterIP, an external IP, or a node
// address with a nodePort, each a Service of its own.
type Service struct {
	// ID names the service in the datapath (Cilium's service ID, the
	// reverse NAT index of its replies); 0 picks the lowest free one.
	ID uint16
	// Frontend is the address and port clients connect to. For a
	// NodePort, address 0.0.0.0 stands for every address of the node's
	// devices (Cilium's surrogate frontend); replies come from the one
	// the client dialled.
	Frontend netip.AddrPort
	// Protocol is TCP or UDP.
	Protocol Protocol
	// Type says how the frontend is reached. Default ClusterIP.
	Type ServiceType
	// Backends take the service's flows: active ones new flows,
	// terminating and maintenance ones only those they have.
	Backends []Backend
	// ExternalTrafficPolicyLocal sends traffic from outside the node
	// (NodePort, external IPs) to local backends only, keeping the
	// client's source address.
	ExternalTrafficPolicyLocal bool
	// InternalTrafficPolicyLocal sends the node's own pods' traffic to
	// local backends only.
	InternalTrafficPolicyLocal bool
	// SessionAffinity keeps a client on its backend for this long after
	// its last packet (sessionAffinity ClientIP); 0 for none.
	SessionAffinity time.Duration
}

// Backend is a service backend.
type Backend struct {
	Addr  netip.AddrPort
	State BackendState
}

// ErrServiceExists is returned by UpsertService for a frontend that
// another service has.
var ErrServiceExists = errors.New("service exists")

// String formats s as a `cilium service list` row:
// "1    10.96.0.10:53/UDP    ClusterIP    1 => 10.0.1.5:53/UDP (active)".
func (s Service) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-4d %-26s %-12s", s.ID, fmt.Sprintf("%s/%s", s.Frontend, s.Protocol), s.Type)
	for i, be := range s.Backends {
		if i > 0 {
			b.WriteString("\n" + strings.Repeat(" ", 4+1+26+1+12))
		}
		fmt.Fprintf(&b, " %d => %s/%s (%s)", i+1, be.Addr, s.Protocol, be.State)
	}
	return b.String()
}

func (s *Service) check() error {
	if s.Type == "" {
		s.Type = ClusterIP
	}
	switch {
	case !s.Frontend.Addr().Is4():
		return fmt.Errorf("frontend %s: want an IPv4 address", s.Frontend)
	case s.Frontend.Port() == 0:
		return fmt.Errorf("frontend %s: port 0", s.Frontend)
	case s.Frontend.Addr().IsUnspecified() && s.Type != NodePort:
		return fmt.Errorf("frontend %s: address 0.0.0.0 stands for every node address, for a NodePort only", s.Frontend)
	case s.Protocol != TCP && s.Protocol != UDP:
		return fmt.Errorf("frontend %s: protocol %s, want TCP or UDP", s.Frontend, s.Protocol)
	case !slices.Contains([]ServiceType{ClusterIP, NodePort, ExternalIP}, s.Type):
		return fmt.Errorf("frontend %s: unknown service type %q", s.Frontend, s.Type)
	case s.SessionAffinity < 0 || s.SessionAffinity > 0xffff*time.Second:
		return fmt.Errorf("frontend %s: session affinity %s, want 0 to %s", s.Frontend, s.SessionAffinity, 0xffff*time.Second)
	}
	seen := map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		switch {
		case !b.Addr.Addr().Is4() || b.Addr.Port() == 0:
			return fmt.Errorf("backend %s: want an IPv4 address and a port", b.Addr)
		case seen[b.Addr]:
			return fmt.Errorf("backend %s twice", b.Addr)
		case b.State > BackendMaintenance:
			return fmt.Errorf("backend %s: unknown state %d", b.Addr, b.State)
		}
		seen[b.Addr] = true
	}
	return nil
}

// UpsertService puts s on the datapath, or updates the service with s's
// ID or frontend: packets to the frontend are translated to a backend at
// tc (and, for pods in the socket-LB cgroup, at connect time), their
// replies back, with the datapath's own conntrack: no iptables rule and no
// nf_conntrack entry. Established flows keep their backend while it is
// there. It returns the service's ID. On error nothing changes.
func (d *Datapath) UpsertService(s Service) (uint16, error) {
	if err := s.check(); err != nil {
		return 0, fmt.Errorf("upsert service: %w", err)
	}
	err := d.locked(func() error { return d.upsertService(&s) })
	if err != nil {
		return 0, fmt.Errorf("upsert service %s/%s: %w", s.Frontend, s.Protocol, err)
	}
	return s.ID, nil
}

func (d *Datapath) upsertService(s *Service) error {
	entries, err := d.services.List()
	if err != nil {
		return err
	}
	front := maps.Frontend{Addr: s.Frontend, Proto: s.Protocol}
	used := map[uint16]bool{}
	for _, e := range entries {
		used[e.RevNAT] = true
		if e.Frontend.Addr == front.Addr && e.Frontend.Proto == front.Proto && e.Frontend.Scope == maps.ScopeExternal {
			switch {
			case s.ID == 0:
				s.ID = e.RevNAT
			case s.ID != e.RevNAT:
				return fmt.Errorf("%w: frontend %s is service %d's", ErrServiceExists, front, e.RevNAT)
			}
		}
	}
	if s.ID == 0 {
		for id := uint16(1); id != 0 && s.ID == 0; id++ {
			if !used[id] {
				s.ID = id
			}
		}
		if s.ID == 0 {
			return fmt.Errorf("%w: all 65535 service IDs are in use", ErrMapFull)
		}
	}
	// The service's old frontend, if its ID moves to a new one.
	for _, e := range entries {
		if e.RevNAT == s.ID && (e.Frontend.Addr != front.Addr || e.Frontend.Proto != front.Proto) {
			if err := d.services.Delete(e.Frontend); err != nil {
				return err
			}
		}
	}

	ids, err := d.backendIDs(s)
	if err != nil {
		return err
	}
	locals, err := d.localAddrs()
	if err != nil {
		return err
	}
	var all, local, inactive []uint32
	for i, b := range s.Backends {
		switch {
		case b.State != BackendActive:
			inactive = append(inactive, ids[i])
		case locals[b.Addr.Addr()]:
			local = append(local, ids[i])
			fallthrough
		default:
			all = append(all, ids[i])
		}
	}
	entry := maps.ServiceEntry{Frontend: front, RevNAT: s.ID, Backends: all, Inactive: inactive}
	switch s.Type {
	case NodePort:
		entry.Flags |= maps.ServiceNodePort
	case ExternalIP:
		entry.Flags |= maps.ServiceExternal
	}
	if s.SessionAffinity > 0 {
		entry.Flags |= maps.ServiceAffinity
		entry.AffinityTimeout = uint16(s.SessionAffinity / time.Second)
	}
	// The scopes: traffic from outside takes the external entry, the
	// node's own (pods, sockets) the internal one where the policies
	// differ. A ClusterIP is reached from the node's own only.
	external := pick(s.ExternalTrafficPolicyLocal && s.Type != ClusterIP, local, all)
	internal := pick(s.InternalTrafficPolicyLocal, local, all)
	if s.Type == ClusterIP {
		external = internal
	}
	if s.ExternalTrafficPolicyLocal && s.Type != ClusterIP {
		entry.Flags |= maps.ServiceLocal
	}
	if !slices.Equal(external, internal) {
		inner := entry
		inner.Frontend.Scope = maps.ScopeInternal
		inner.Backends = internal
		if err := d.services.Put(inner); err != nil {
			return err
		}
		entry.Flags |= maps.ServiceTwoScopes
	} else if err := d.services.Delete(maps.Frontend{Addr: front.Addr, Proto: front.Proto, Scope: maps.ScopeInternal}); err != nil {
		return err
	}
	entry.Backends = external
	if err := d.putMaglev(s, &entry); err != nil {
		return err
	}
	if err := d.services.Put(entry); err != nil {
		return err
	}
	return d.sweepBackends()
}

// putMaglev gives entry, on a node that chooses backends by Maglev, the
// service's lookup table of its active backends (by name, "IP:port/TCP",
// the same on every node); on other nodes it makes sure there is none.
func (d *Datapath) putMaglev(s *Service, entry *maps.ServiceEntry) error {
	m := d.node.MaglevTableSize
	if m == 0 || len(entry.Backends) == 0 {
		err := d.node.Maps.Maglev.Delete(uint32(s.ID))
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete Maglev table: %w", err)
		}
		return nil
	}
	backends, err := d.services.Backends()
	if err != nil {
		return err
	}
	names := make([]string, len(entry.Backends))
	for i, id := range entry.Backends {
		names[i] = fmt.Sprintf("%s/%s", backends[id].Addr, s.Protocol)
	}
	slots := nat.Table(names, uint64(m))
	ids := make([]uint32, len(slots))
	for i, b := range slots {
		ids[i] = entry.Backends[b]
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4 * m, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("make Maglev table: %w", err)
	}
	defer inner.Close()
	if err := inner.Update(uint32(0), ids, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write Maglev table: %w", err)
	}
	if err := d.node.Maps.Maglev.Update(uint32(s.ID), inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("install Maglev table: %w", err)
	}
	entry.Flags |= maps.ServiceMaglev
	return nil
}

func pick(localOnly bool, local, all []uint32) []uint32 {
	if localOnly {
		return local
	}
	return all
}

// backendIDs returns the IDs of s's backends, writing them (and their
// states) to the backend map: an address, port and protocol keeps its ID
// across services.
func (d *Datapath) backendIDs(s *Service) ([]uint32, error) {
	existing, err := d.services.Backends()
	if err != nil {
		return nil, err
	}
	byAddr := map[netip.AddrPort]uint32{}
	for id, b := range existing {
		if b.Proto == s.Protocol {
			byAddr[b.Addr] = id
		}
	}
	ids := make([]uint32, len(s.Backends))
	next := uint32(1)
	for i, b := range s.Backends {
		id, ok := byAddr[b.Addr]
		if !ok {
			for ; existing[next].ID != 0; next++ {
			}
			id = next
			existing[id] = maps.Backend{ID: id}
		}
		if err := d.services.PutBackend(maps.Backend{ID: id, Addr: b.Addr, Proto: s.Protocol, State: b.State}); err != nil {
			return nil, err
		}
		ids[i] = id
	}
	return ids, nil
}

// sweepBackends deletes backends no frontend names any more, and sets the
// backend flag of the local endpoints that are backends (their replies
// are translated back), clearing it on those that are not.
func (d *Datapath) sweepBackends() error {
	entries, err := d.services.List()
	if err != nil {
		return err
	}
	backends, err := d.services.Backends()
	if err != nil {
		return err
	}
	named := map[uint32]bool{}
	addrs := map[netip.Addr]bool{}
	for _, e := range entries {
		for _, id := range append(e.Backends, e.Inactive...) {
			named[id] = true
		}
	}
	var errs []error
	for id, b := range backends {
		if !named[id] {
			// Its ID is reused: its flows must not go to the next one.
			_, flushErr := d.flows.FlushBackend(id)
			errs = append(errs, d.services.DeleteBackend(id), flushErr)
			continue
		}
		addrs[b.Addr.Addr()] = true
	}
	eps, err := d.endpoints.List()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, ep := range eps {
		want := ep.Flags &^ maps.EndpointLBBackend
		if addrs[ep.IP] {
			want |= maps.EndpointLBBackend
		}
		if want != ep.Flags {
			ep.Flags = want
			errs = append(errs, d.endpoints.Put(ep))
		}
	}
	return errors.Join(errs...)
}

// localAddrs returns the addresses of the node's endpoints.
func (d *Datapath) localAddrs() (map[netip.Addr]bool, error) {
	eps, err := d.endpoints.List()
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]bool{}
	for _, ep := range eps {
		m[ep.IP] = true
	}
	return m, nil
}

// DeleteService removes the service with ID id: its frontend, and its
// backends unless another service has them. Flows to it end.
func (d *Datapath) DeleteService(id uint16) error {
	err := d.locked(func() error {
		entries, err := d.services.List()
		if err != nil {
			return err
		}
		found := false
		var errs []error
		for _, e := range entries {
			if e.RevNAT == id {
				found = true
				errs = append(errs, d.services.Delete(e.Frontend))
			}
		}
		if !found {
			return ErrNotFound
		}
		errs = append(errs, d.sweepBackends())
		if err := d.node.Maps.Maglev.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("delete service %d: %w", id, err)
	}
	return nil
}

// Services lists the node's services, ordered by ID.
func (d *Datapath) Services() ([]Service, error) {
	var out []Service
	err := d.read(func() error {
		entries, err := d.services.List()
		if err != nil {
			return err
		}
		backends, err := d.services.Backends()
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Frontend.Scope != maps.ScopeExternal {
				continue
			}
			s := Service{ID: e.RevNAT, Frontend: e.Frontend.Addr, Protocol: e.Frontend.Proto, Type: ClusterIP,
				ExternalTrafficPolicyLocal: e.Flags&maps.ServiceLocal != 0,
				SessionAffinity:            time.Duration(e.AffinityTimeout) * time.Second}
			switch {
			case e.Flags&maps.ServiceNodePort != 0:
				s.Type = NodePort
			case e.Flags&maps.ServiceExternal != 0:
				s.Type = ExternalIP
			}
			for _, id := range append(e.Backends, e.Inactive...) {
				b := backends[id]
				s.Backends = append(s.Backends, Backend{Addr: b.Addr, State: b.State})
			}
			out = append(out, s)
		}
		slices.SortFunc(out, func(a, b Service) int { return int(a.ID) - int(b.ID) })
		return nil
	})
	return out, err
}
