package agent

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/datapath"
)

// frontendKey names one datapath service: a port of a Kubernetes Service
// reached one way. The agent keeps the datapath's service ID of each, so
// that updates reuse it.
type frontendKey struct {
	service string               // namespace/name
	port    string               // the port's name ("" for a service's only port)
	typ     datapath.ServiceType // ClusterIP, NodePort or ExternalIP
	addr    netip.Addr           // the cluster or external IP; 0.0.0.0 for a NodePort
}

func (k frontendKey) String() string {
	return fmt.Sprintf("%s port %q %s %s", k.service, k.port, k.typ, k.addr)
}

// frontend is what the datapath knows a service by.
type frontend struct {
	addr  netip.AddrPort
	proto datapath.Protocol
}

// maxAffinity is the longest session affinity the datapath keeps.
const maxAffinity = 0xffff * time.Second

// desired returns the datapath services that the Service namespace/name
// and its EndpointSlices make (none for a Service that is gone), the
// Service, and what of it the datapath cannot express.
func (a *Agent) desired(name string) (map[frontendKey]datapath.Service, *corev1.Service, []string) {
	ns, n, _ := cache.SplitMetaNamespaceKey(name) // from our own keys
	svc, err := a.informers.services.Services(ns).Get(n)
	if err != nil {
		return nil, nil, nil // not in the cache: gone, or not ours
	}
	want, problems := frontends(svc, a.informers.endpointSlices(name))
	return want, svc, problems
}

// frontends translates svc with the EndpointSlices of its endpoints into
// datapath services, one per port and frontend, as kube-proxy programs
// them, and says what it left out.
func frontends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice) (map[frontendKey]datapath.Service, []string) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return nil, nil
	}
	var problems []string
	addrs := func(what string, ips []string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ips {
			switch ip, err := netip.ParseAddr(s); {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s %q: %v", what, s, err))
			case !ip.Is4():
				problems = append(problems, fmt.Sprintf("%s %s: IPv6 is not supported", what, ip))
			default:
				out = append(out, ip)
			}
		}
		return out
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	clusterIPs := addrs("cluster IP", ips)
	externalIPs := addrs("external IP", svc.Spec.ExternalIPs)

	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = time.Duration(corev1.DefaultClientIPServiceAffinitySeconds) * time.Second
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
		if affinity > maxAffinity {
			problems = append(problems, fmt.Sprintf("session affinity of %s cut to %s", affinity, maxAffinity))
			affinity = maxAffinity
		}
	}
	externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	internalLocal := ptr.Deref(svc.Spec.InternalTrafficPolicy, "") == corev1.ServiceInternalTrafficPolicyLocal

	name := svc.Namespace + "/" + svc.Name
	want := map[frontendKey]datapath.Service{}
	for _, port := range svc.Spec.Ports {
		var proto datapath.Protocol
		switch cmp.Or(port.Protocol, corev1.ProtocolTCP) {
		case corev1.ProtocolTCP:
			proto = datapath.TCP
		case corev1.ProtocolUDP:
			proto = datapath.UDP
		default:
			problems = append(problems, fmt.Sprintf("port %q: protocol %s is not supported", port.Name, port.Protocol))
			continue
		}
		base := datapath.Service{Protocol: proto, Backends: backends(eps, port), SessionAffinity: affinity}
		add := func(typ datapath.ServiceType, ip netip.Addr, p int32) {
			s := base
			s.Type, s.Frontend = typ, netip.AddrPortFrom(ip, uint16(p))
			if typ == datapath.ClusterIP {
				s.InternalTrafficPolicyLocal = internalLocal
			} else {
				s.ExternalTrafficPolicyLocal = externalLocal
			}
			want[frontendKey{name, port.Name, typ, ip}] = s
		}
		for _, ip := range clusterIPs {
			add(datapath.ClusterIP, ip, port.Port)
		}
		if port.NodePort != 0 {
			add(datapath.NodePort, netip.IPv4Unspecified(), port.NodePort)
		}
		for _, ip := range externalIPs {
			add(datapath.ExternalIP, ip, port.Port)
		}
	}
	return want, problems
}

// backends returns the backends of the service port from its IPv4
// EndpointSlices (the slice port of the same name and protocol), sorted:
// ready endpoints are active; serving and terminating ones keep the flows
// they have, and take new ones too when no endpoint is ready, as in
// kube-proxy; the others are left out.
func backends(eps []*discoveryv1.EndpointSlice, port corev1.ServicePort) []datapath.Backend {
	states := map[netip.AddrPort]datapath.BackendState{}
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, p := range es.Ports {
			if ptr.Deref(p.Name, "") != port.Name || ptr.Deref(p.Protocol, corev1.ProtocolTCP) != cmp.Or(port.Protocol, corev1.ProtocolTCP) || p.Port == nil {
				continue
			}
			for _, ep := range es.Endpoints {
				ready := ptr.Deref(ep.Conditions.Ready, true)
				serving := ptr.Deref(ep.Conditions.Serving, true)
				terminating := ptr.Deref(ep.Conditions.Terminating, false)
				state := datapath.BackendActive
				switch {
				case ready && !terminating:
				case serving && terminating:
					state = datapath.BackendTerminating
				default:
					continue
				}
				if len(ep.Addresses) == 0 {
					continue
				}
				ip, err := netip.ParseAddr(ep.Addresses[0])
				if err != nil || !ip.Is4() {
					continue
				}
				addr := netip.AddrPortFrom(ip, uint16(*p.Port))
				if old, seen := states[addr]; !seen || state < old { // in two slices while it moves
					states[addr] = state
				}
			}
		}
	}
	ready := false
	for _, s := range states {
		ready = ready || s == datapath.BackendActive
	}
	out := make([]datapath.Backend, 0, len(states))
	for addr, s := range states {
		if !ready {
			s = datapath.BackendActive // only terminating ones left: they take new flows
		}
		out = append(out, datapath.Backend{Addr: addr, State: s})
	}
	slices.SortFunc(out, func(a, b datapath.Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}

// normalized is s with its backends sorted, as backends sorts them.
func normalized(s datapath.Service) datapath.Service {
	s.Backends = slices.Clone(s.Backends)
	slices.SortFunc(s.Backends, func(a, b datapath.Backend) int { return a.Addr.Compare(b.Addr) })
	return s
}

// same tells whether a and b, normalized, are the same service.
func same(a, b datapath.Service) bool {
	eq := slices.Equal(a.Backends, b.Backends)
	a.Backends, b.Backends = nil, nil
	return eq && reflect.DeepEqual(a, b)
}

// syncServices brings the datapath services of the named Services in line
// with the API: deletes first (they free frontends), then every new or
// changed one in one batch. It returns the errors by Service.
func (a *Agent) syncServices(names []string) map[string]error {
	failed := map[string]error{}
	var puts []datapath.Service
	var keys []frontendKey
	for _, name := range names {
		want, svc, problems := a.desired(name)
		a.warn(kindService+"/"+name, svc, strings.Join(problems, "; "))
		for key, s := range a.programmed[name] {
			if _, ok := want[key]; ok {
				continue
			}
			if err := a.dp.DeleteService(s.ID); err != nil && !errors.Is(err, datapath.ErrNotFound) {
				failed[name] = fmt.Errorf("%s: %w", key, err)
				continue
			}
			a.forget(key)
		}
		for key, s := range want {
			old, ok := a.programmed[name][key]
			if s.ID = old.ID; ok && same(old, s) {
				continue
			}
			puts, keys = append(puts, s), append(keys, key)
		}
	}
	if len(puts) == 0 {
		return failed
	}
	ids, err := a.dp.UpsertServices(puts)
	if err != nil { // find those in error, one by one; the others go on
		ids = make([]uint16, len(puts))
		for i, s := range puts {
			if ids[i], err = a.dp.UpsertService(s); err != nil {
				failed[keys[i].service] = fmt.Errorf("upsert service %s: %w", keys[i], err)
			}
		}
	}
	for i, key := range keys {
		if ids[i] != 0 {
			puts[i].ID = ids[i]
			a.record(key, puts[i])
		}
	}
	return failed
}

// record notes that the datapath has s for key. Another key whose frontend
// s took over (a Service deleted while its successor came) loses it.
func (a *Agent) record(key frontendKey, s datapath.Service) {
	if other, ok := a.owners[s.ID]; ok && other != key {
		delete(a.programmed[other.service], other)
	}
	a.owners[s.ID] = key
	if a.programmed[key.service] == nil {
		a.programmed[key.service] = map[frontendKey]datapath.Service{}
	}
	a.programmed[key.service][key] = s
}

// forget notes that the datapath no longer has key.
func (a *Agent) forget(key frontendKey) {
	delete(a.owners, a.programmed[key.service][key].ID)
	delete(a.programmed[key.service], key)
	if len(a.programmed[key.service]) == 0 {
		delete(a.programmed, key.service)
	}
}
