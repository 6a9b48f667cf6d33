package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/instance"
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
	// SourceRanges, if any, are the only sources that reach a NodePort or
	// external IP frontend (loadBalancerSourceRanges): packets from others
	// are dropped (counted as drop-source-range), from the wire and from
	// pods alike. Socket LB leaves such a frontend to the tc load
	// balancer, which sees the source.
	SourceRanges []netip.Prefix
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

// check refuses, with ErrInvalidService, what s cannot be on any node.
func (s *Service) check() error {
	if s.Type == "" {
		s.Type = ClusterIP
	}
	addr := s.Frontend.Addr()
	switch {
	case !addr.Is4():
		return invalid("frontend %s: want an IPv4 address", s.Frontend)
	case s.Frontend.Port() == 0:
		return invalid("frontend %s: port 0", s.Frontend)
	case addr.IsUnspecified() && s.Type != NodePort:
		return invalid("frontend %s: address 0.0.0.0 stands for every node address, for a NodePort only", s.Frontend)
	case badAddr(addr) != "" && !addr.IsUnspecified():
		return invalid("frontend %s is %s", s.Frontend, badAddr(addr))
	case s.Protocol != TCP && s.Protocol != UDP:
		return invalid("frontend %s: protocol %s, want TCP or UDP", s.Frontend, s.Protocol)
	case !slices.Contains([]ServiceType{ClusterIP, NodePort, ExternalIP}, s.Type):
		return invalid("frontend %s: unknown service type %q", s.Frontend, s.Type)
	case s.SessionAffinity < 0 || s.SessionAffinity > 0xffff*time.Second:
		return invalid("frontend %s: session affinity %s, want 0 to %s", s.Frontend, s.SessionAffinity, 0xffff*time.Second)
	case len(s.SourceRanges) > 0 && s.Type == ClusterIP:
		return invalid("frontend %s: source ranges are for a NodePort or an external IP, not a ClusterIP", s.Frontend)
	}
	ranges := make([]netip.Prefix, 0, len(s.SourceRanges))
	for _, p := range s.SourceRanges {
		if !p.IsValid() || !p.Addr().Is4() {
			return invalid("frontend %s: source range %s: want an IPv4 prefix such as 192.0.2.0/24", s.Frontend, p)
		}
		if p = p.Masked(); !slices.Contains(ranges, p) {
			ranges = append(ranges, p)
		}
	}
	s.SourceRanges = ranges
	seen := map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		switch {
		case !b.Addr.Addr().Is4() || b.Addr.Port() == 0:
			return invalid("backend %s: want an IPv4 address and a port", b.Addr)
		case badAddr(b.Addr.Addr()) != "":
			return invalid("backend %s is %s", b.Addr, badAddr(b.Addr.Addr()))
		case b.Addr == s.Frontend:
			return invalid("backend %s is the service's own frontend", b.Addr)
		case seen[b.Addr]:
			return invalid("backend %s twice", b.Addr)
		case b.State > BackendMaintenance:
			return invalid("backend %s: unknown state %d", b.Addr, b.State)
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
// there. It returns the service's ID. On error nothing changes: a service
// that makes no sense is refused with an error wrapping
// ErrInvalidService (which says what it refuses), and one the
// node's service tables have no room for with one wrapping
// ErrServiceTableFull.
func (d *Datapath) UpsertService(s Service) (uint16, error) {
	ids, err := d.UpsertServices([]Service{s})
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// UpsertServices is UpsertService for many services at once, reading the
// node's service tables once: for an agent that starts with thousands.
// It returns their IDs, ids[i] of svcs[i], and leaves svcs as it is.
// If one of svcs is invalid, it puts none; otherwise it stops at the
// first service in error (such as one the tables have no room for),
// after putting those before it, and leaving nothing of that one: with
// the error it returns the IDs of the services it put, svcs[:len(ids)].
func (d *Datapath) UpsertServices(svcs []Service) (ids []uint16, err error) {
	svcs = slices.Clone(svcs) // check and upsertService fill in Type and ID
	for i := range svcs {
		if err := svcs[i].check(); err != nil {
			return nil, fmt.Errorf("upsert service %s/%s: %w", svcs[i].Frontend, svcs[i].Protocol, err)
		}
	}
	ids = make([]uint16, 0, len(svcs))
	err = d.locked(func() error {
		st, err := d.readServices()
		if err != nil {
			return err
		}
		if st.nodes, err = d.listNodes(); err != nil {
			return err
		}
		for i := range svcs {
			if err := st.refuse(&svcs[i]); err != nil {
				return fmt.Errorf("upsert service %s/%s: %w", svcs[i].Frontend, svcs[i].Protocol, err)
			}
		}
		for i := range svcs {
			if err := d.upsertService(st, &svcs[i]); err != nil {
				if errors.Is(err, ErrMapFull) && !errors.Is(err, ErrServiceTableFull) {
					err = fmt.Errorf("%w: %w", ErrServiceTableFull, err)
				}
				// Backends written for it alone go again.
				return errors.Join(fmt.Errorf("upsert service %s/%s: %w", svcs[i].Frontend, svcs[i].Protocol, err), d.sweepBackends(st))
			}
			ids = append(ids, svcs[i].ID)
		}
		return d.sweepBackends(st)
	})
	if len(ids) == 0 {
		ids = nil
	}
	return ids, err
}

// serviceState is what the node's service tables hold, read once per
// change and kept up to date by it.
type serviceState struct {
	frontends map[uint16][]maps.Frontend // by service ID, every scope
	owner     map[maps.Frontend]uint16   // the service ID of each frontend
	entries   map[maps.Frontend]int      // the frontend table entries of each: its own and its slots
	used      int                        // the frontend table's entries
	clusterIP map[netip.Addr]int         // the ClusterIP frontends at each address
	ranged    map[uint16]bool            // services that have had source ranges (their flag) since the read
	backends  map[uint32]maps.Backend
	byAddr    map[backendKey]uint32
	named     map[uint32]int // how many frontends name each backend
	locals    map[netip.Addr]bool
	next      uint32 // the lowest backend ID that may be free
	nodes     []Node // the other nodes, for UpsertServices
}

type backendKey struct {
	addr  netip.AddrPort
	proto Protocol
}

func (d *Datapath) readServices() (*serviceState, error) {
	entries, err := d.services.List()
	if err != nil {
		return nil, err
	}
	backends, err := d.services.Backends()
	if err != nil {
		return nil, err
	}
	locals, err := d.localAddrs()
	if err != nil {
		return nil, err
	}
	st := &serviceState{frontends: map[uint16][]maps.Frontend{}, owner: map[maps.Frontend]uint16{}, entries: map[maps.Frontend]int{}, clusterIP: map[netip.Addr]int{}, ranged: map[uint16]bool{},
		backends: backends, byAddr: map[backendKey]uint32{}, named: map[uint32]int{}, locals: locals, next: 1}
	for _, e := range entries {
		st.add(e)
	}
	for id, b := range backends {
		st.byAddr[backendKey{b.Addr, b.Proto}] = id
	}
	return st, nil
}

func (st *serviceState) add(e maps.ServiceEntry) {
	st.frontends[e.RevNAT] = append(st.frontends[e.RevNAT], e.Frontend)
	st.owner[e.Frontend] = e.RevNAT
	st.entries[e.Frontend] = 1 + len(e.Backends) + len(e.Inactive)
	st.used += st.entries[e.Frontend]
	if isClusterIP(e.Flags) {
		st.clusterIP[e.Frontend.Addr.Addr()]++
	}
	if e.Flags&maps.ServiceSourceRanges != 0 {
		st.ranged[e.RevNAT] = true
	}
	for _, id := range append(e.Backends, e.Inactive...) {
		st.named[id]++
	}
}

// put writes entry e over the frontend's old one (a packet sees the old
// entry or the new).
// A failed write leaves the old entry in the map and in st.
func (d *Datapath) put(st *serviceState, e maps.ServiceEntry) error {
	old, err := d.services.Entry(e.Frontend)
	had := err == nil
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if err := st.forget(d, e.Frontend); err != nil {
		return err
	}
	if err := d.services.Put(e); err != nil {
		if had {
			st.add(old)
		}
		return err
	}
	st.add(e)
	return nil
}

// drop deletes the entry of frontend f, if there is one.
func (d *Datapath) drop(st *serviceState, f maps.Frontend) error {
	if _, ok := st.owner[f]; !ok {
		return nil
	}
	if err := st.forget(d, f); err != nil {
		return err
	}
	return d.services.Delete(f)
}

// forget takes frontend f's entry, as the map holds it, out of st.
func (st *serviceState) forget(d *Datapath, f maps.Frontend) error {
	id, ok := st.owner[f]
	if !ok {
		return nil
	}
	old, err := d.services.Entry(f)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	for _, b := range append(old.Backends, old.Inactive...) {
		st.named[b]--
	}
	if err == nil && isClusterIP(old.Flags) {
		if st.clusterIP[f.Addr.Addr()]--; st.clusterIP[f.Addr.Addr()] <= 0 {
			delete(st.clusterIP, f.Addr.Addr())
		}
	}
	delete(st.owner, f)
	st.used -= st.entries[f]
	delete(st.entries, f)
	st.frontends[id] = slices.DeleteFunc(st.frontends[id], func(x maps.Frontend) bool { return x == f })
	if len(st.frontends[id]) == 0 {
		delete(st.frontends, id)
	}
	return nil
}

func (d *Datapath) upsertService(st *serviceState, s *Service) (err error) {
	front := maps.Frontend{Addr: s.Frontend, Proto: s.Protocol}
	inner := maps.Frontend{Addr: front.Addr, Proto: front.Proto, Scope: maps.ScopeInternal}
	switch id, ok := st.owner[front]; {
	case ok && s.ID == 0:
		s.ID = id
	case ok && s.ID != id:
		return fmt.Errorf("%w: frontend %s is service %d's", ErrServiceExists, front, id)
	}
	if s.ID == 0 {
		for id := uint16(1); id != 0 && s.ID == 0; id++ {
			if _, used := st.frontends[id]; !used {
				s.ID = id
			}
		}
		if s.ID == 0 {
			return fmt.Errorf("%w: all 65535 service IDs are in use", ErrServiceTableFull)
		}
	}

	// The backends each scope's entry names, by index in s.Backends. The
	// scopes: traffic from outside takes the external entry, the node's
	// own (pods, sockets) the internal one where the policies differ. A
	// ClusterIP is reached from the node's own only.
	var all, local, inactive []int
	for i, b := range s.Backends {
		switch {
		case b.State != BackendActive:
			inactive = append(inactive, i)
		case st.locals[b.Addr.Addr()]:
			local = append(local, i)
			fallthrough
		default:
			all = append(all, i)
		}
	}
	external := pick(s.ExternalTrafficPolicyLocal && s.Type != ClusterIP, local, all)
	internal := pick(s.InternalTrafficPolicyLocal, local, all)
	if s.Type == ClusterIP {
		external = internal
	}
	twoScopes := !slices.Equal(external, internal)
	innerSize := 0
	if twoScopes {
		innerSize = 1 + len(internal) + len(inactive)
	}
	if err := d.room(st, s, front, 1+len(external)+len(inactive), innerSize); err != nil {
		return err
	}
	if _, had := st.frontends[s.ID]; !had {
		defer func() {
			if err != nil { // a new service: nothing of it stays
				err = errors.Join(err, d.drop(st, inner), d.drop(st, front), d.deleteMaglev(s.ID))
			}
		}()
	}

	// The service's old frontend, if its ID moves to a new one.
	for _, f := range slices.Clone(st.frontends[s.ID]) {
		if f.Addr != front.Addr || f.Proto != front.Proto {
			if err := d.drop(st, f); err != nil {
				return err
			}
		}
	}
	ids, err := d.backendIDs(st, s)
	if err != nil {
		return err
	}
	idsOf := func(indexes []int) []uint32 {
		out := make([]uint32, len(indexes))
		for j, i := range indexes {
			out[j] = ids[i]
		}
		return out
	}
	entry := maps.ServiceEntry{Frontend: front, RevNAT: s.ID, Inactive: idsOf(inactive)}
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
	if s.ExternalTrafficPolicyLocal && s.Type != ClusterIP {
		entry.Flags |= maps.ServiceLocal
	}
	if s.InternalTrafficPolicyLocal {
		entry.Flags |= maps.ServiceInternalLocal
	}
	if len(s.SourceRanges) > 0 {
		entry.Flags |= maps.ServiceSourceRanges
	}
	// The ranges are there before the flag that has them checked, and go
	// after it.
	for _, p := range s.SourceRanges {
		if err := d.services.PutSourceRange(s.ID, p); err != nil {
			return err
		}
	}
	if twoScopes {
		e := entry
		e.Frontend, e.Backends = inner, idsOf(internal)
		if err := d.put(st, e); err != nil {
			return err
		}
		entry.Flags |= maps.ServiceTwoScopes
	} else if err := d.drop(st, inner); err != nil {
		return err
	}
	entry.Backends = idsOf(external)
	if err := d.putMaglev(s, &entry, st); err != nil {
		return err
	}
	if err := d.put(st, entry); err != nil {
		return err
	}
	if !st.ranged[s.ID] {
		return nil // no ranges, before or now: the trie holds none of it
	}
	return d.pruneSourceRanges(s.ID, s.SourceRanges)
}

// pruneSourceRanges deletes the source ranges of service id that keep
// are not.
func (d *Datapath) pruneSourceRanges(id uint16, keep []netip.Prefix) error {
	all, err := d.services.SourceRanges()
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range all[id] {
		if !slices.Contains(keep, p) {
			errs = append(errs, d.services.DeleteSourceRange(id, p))
		}
	}
	return errors.Join(errs...)
}

// putMaglev gives entry, on a node that chooses backends by Maglev, the
// service's lookup table of its active backends (by name, "IP:port/TCP",
// the same on every node); on other nodes it makes sure there is none.
func (d *Datapath) putMaglev(s *Service, entry *maps.ServiceEntry, st *serviceState) error {
	m := d.node.MaglevTableSize
	if m == 0 || len(entry.Backends) == 0 {
		return d.deleteMaglev(s.ID)
	}
	names := make([]string, len(entry.Backends))
	for i, id := range entry.Backends {
		names[i] = fmt.Sprintf("%s/%s", st.backends[id].Addr, s.Protocol)
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

// reprogramMaglev gives every service the Maglev table the node's
// MaglevTableSize asks for (none without Maglev), and the flag that has
// the programs use it.
func (d *Datapath) reprogramMaglev() error {
	st, err := d.readServices()
	if err != nil {
		return err
	}
	entries, err := d.services.List()
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Frontend.Scope != maps.ScopeExternal {
			continue
		}
		if d.maglevCurrent(e) {
			continue
		}
		want := e
		want.Flags &^= maps.ServiceMaglev
		if err := d.putMaglev(&Service{ID: e.RevNAT, Protocol: e.Frontend.Proto}, &want, st); err != nil {
			return fmt.Errorf("service %d: %w", e.RevNAT, err)
		}
		if want.Flags != e.Flags {
			if err := d.put(st, want); err != nil {
				return err
			}
		}
	}
	return nil
}

// maglevCurrent tells whether e's Maglev table is what the node's
// MaglevTableSize asks for: none without Maglev (or backends), else one of
// that size; a reload that changes neither then rewrites nothing.
func (d *Datapath) maglevCurrent(e maps.ServiceEntry) bool {
	m := d.node.MaglevTableSize
	if m == 0 || len(e.Backends) == 0 {
		return e.Flags&maps.ServiceMaglev == 0
	}
	if e.Flags&maps.ServiceMaglev == 0 {
		return false
	}
	var inner *ebpf.Map
	if err := d.node.Maps.Maglev.Lookup(uint32(e.RevNAT), &inner); err != nil {
		return false
	}
	defer inner.Close()
	info, err := inner.Info()
	return err == nil && info.ValueSize == 4*m
}

// deleteMaglev deletes the Maglev table of service id, if it has one.
func (d *Datapath) deleteMaglev(id uint16) error {
	err := d.node.Maps.Maglev.Delete(uint32(id))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete Maglev table: %w", err)
	}
	return nil
}

func pick[T any](localOnly bool, local, all []T) []T {
	if localOnly {
		return local
	}
	return all
}

// backendIDs returns the IDs of s's backends, writing them (and their
// states) to the backend map: an address, port and protocol keeps its ID
// across services.
func (d *Datapath) backendIDs(st *serviceState, s *Service) ([]uint32, error) {
	ids := make([]uint32, len(s.Backends))
	var changed []maps.Backend
	for i, b := range s.Backends {
		key := backendKey{b.Addr, s.Protocol}
		id, ok := st.byAddr[key]
		if !ok {
			for ; st.backends[st.next].ID != 0; st.next++ {
			}
			id = st.next
			st.byAddr[key] = id
		}
		be := maps.Backend{ID: id, Addr: b.Addr, Proto: s.Protocol, State: b.State}
		if st.backends[id] != be {
			changed = append(changed, be)
			st.backends[id] = be
		}
		ids[i] = id
	}
	if err := d.services.PutBackends(changed); err != nil {
		return nil, err
	}
	return ids, nil
}

// sweepBackends deletes backends no frontend names any more (their flows
// flushed: IDs are reused; with socket LB, the node's connected UDP
// sockets to them destroyed), and sets the backend flag of the local
// endpoints that are backends (their replies are translated back),
// clearing it on those that are not.
func (d *Datapath) sweepBackends(st *serviceState) error {
	addrs := map[netip.Addr]bool{}
	errs := []error{d.syncClusterIPs(st)}
	var udp []netip.AddrPort
	for id, b := range st.backends {
		if st.named[id] > 0 {
			addrs[b.Addr.Addr()] = true
			continue
		}
		_, flushErr := d.flows.FlushBackend(id)
		errs = append(errs, d.services.DeleteBackend(id), flushErr)
		delete(st.backends, id)
		delete(st.byAddr, backendKey{b.Addr, b.Proto})
		st.next = min(st.next, id)
		if b.Proto == maps.UDP {
			udp = append(udp, b.Addr)
		}
	}
	// Sockets socket LB pointed at a backend that went would send into
	// the void: destroyed, they see an error and connect again (Linux ≥
	// 6.5; on older kernels they stay, as before).
	if len(udp) > 0 && d.node.CgroupAttached() {
		if _, err := instance.DestroyUDPSockets(d.cfg.Netns, udp); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, err)
		}
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

// syncClusterIPs makes the ClusterIP table hold the addresses of the
// ClusterIP frontends in st, so that their other ports are rejected.
func (d *Datapath) syncClusterIPs(st *serviceState) error {
	have, err := d.services.ClusterIPs()
	if err != nil {
		return err
	}
	var errs []error
	for a := range st.clusterIP {
		if !have[a] {
			errs = append(errs, d.services.PutClusterIP(a))
		}
	}
	for a := range have {
		if st.clusterIP[a] == 0 {
			errs = append(errs, d.services.DeleteClusterIP(a))
		}
	}
	return errors.Join(errs...)
}

func isClusterIP(f maps.ServiceFlags) bool {
	return f&(maps.ServiceNodePort|maps.ServiceExternal) == 0
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
		st, err := d.readServices()
		if err != nil {
			return err
		}
		fronts, ok := st.frontends[id]
		if !ok {
			return ErrNotFound
		}
		var errs []error
		for _, f := range slices.Clone(fronts) {
			errs = append(errs, d.drop(st, f))
		}
		errs = append(errs, d.sweepBackends(st), d.deleteMaglev(id))
		if st.ranged[id] {
			errs = append(errs, d.pruneSourceRanges(id, nil))
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
		ranges, err := d.services.SourceRanges()
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Frontend.Scope != maps.ScopeExternal {
				continue
			}
			s := Service{ID: e.RevNAT, Frontend: e.Frontend.Addr, Protocol: e.Frontend.Proto, Type: ClusterIP,
				ExternalTrafficPolicyLocal: e.Flags&maps.ServiceLocal != 0,
				InternalTrafficPolicyLocal: e.Flags&maps.ServiceInternalLocal != 0,
				SessionAffinity:            time.Duration(e.AffinityTimeout) * time.Second}
			if e.Flags&maps.ServiceSourceRanges != 0 {
				s.SourceRanges = ranges[e.RevNAT]
			}
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

// SetSocketLB puts socket-level load balancing on the cgroup v2 directory
// at cgroupPath, as Config.CgroupPath does at New, moving it from the
// cgroup it was on; "" takes it off, leaving the node's pods and processes
// to the tc load balancer. Sockets connected meanwhile keep their backend.
func (d *Datapath) SetSocketLB(cgroupPath string) error {
	if cgroupPath != "" {
		if err := instance.CheckCgroup(cgroupPath); err != nil {
			return err
		}
	}
	return d.locked(func() error {
		if cgroupPath == "" {
			return d.node.DetachCgroup()
		}
		return d.node.AttachCgroup(cgroupPath)
	})
}
