package agent

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
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
// and its EndpointSlices make on node (none for a Service that is gone),
// the Service, and what of it the datapath cannot express.
func (a *Agent) desired(name string, node nodeView) (map[frontendKey]datapath.Service, *corev1.Service, []string) {
	ns, n, _ := cache.SplitMetaNamespaceKey(name) // from our own keys
	svc, err := a.informers.services.Services(ns).Get(n)
	if err != nil {
		return nil, nil, nil // not in the cache: gone, or not ours
	}
	want, problems := frontends(svc, a.informers.endpointSlices(name), node)
	return want, svc, problems
}

// nodeView returns the agent's node as the translation of Services reads
// it: its name, its zone as the Node object has it now, and the datapath's
// endpoints.
func (a *Agent) nodeView() (nodeView, error) {
	v := nodeView{name: a.cfg.NodeName, zone: a.zone(), pods: map[netip.Addr]bool{}}
	eps, err := a.dp.Endpoints()
	if err != nil {
		return v, fmt.Errorf("list datapath endpoints: %w", err)
	}
	for _, ep := range eps {
		v.pods[ep.IP] = true
	}
	return v, nil
}

// zone returns the zone of the agent's Node (its topology.kubernetes.io/zone
// label), "" if it has none.
func (a *Agent) zone() string {
	node, err := a.informers.nodes.Get(a.cfg.NodeName)
	if err != nil {
		return ""
	}
	return node.Labels[corev1.LabelTopologyZone]
}

// frontends translates svc with the EndpointSlices of its endpoints into
// datapath services, one per port and frontend, as kube-proxy programs
// them, and says what it left out.
func frontends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, node nodeView) (map[frontendKey]datapath.Service, []string) {
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
	// Load balancer IPs, as kube-proxy: those of ipMode VIP (the default),
	// not those where the load balancer proxies (ipMode Proxy), whose
	// traffic reaches a NodePort instead. Only sources in
	// loadBalancerSourceRanges reach them.
	var ingress []string
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP != "" && ptr.Deref(in.IPMode, corev1.LoadBalancerIPModeVIP) == corev1.LoadBalancerIPModeVIP {
			ingress = append(ingress, in.IP)
		}
	}
	lbIPs := addrs("load balancer IP", ingress)
	var sourceRanges []netip.Prefix
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("load balancer source range %q: %v", r, err))
		case p.Addr().Is4():
			sourceRanges = append(sourceRanges, p.Masked())
		}
	}
	sourceRanges = normalized(datapath.Service{SourceRanges: sourceRanges}).SourceRanges

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
	etpLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	itpLocal := ptr.Deref(svc.Spec.InternalTrafficPolicy, "") == corev1.ServiceInternalTrafficPolicyLocal

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
		// The traffic policies this port uses, as kube-proxy's ServicePort.
		external := port.NodePort != 0 || len(svc.Spec.ExternalIPs) > 0 || len(svc.Status.LoadBalancer.Ingress) > 0
		externalLocal := external && etpLocal
		usesCluster := !itpLocal || external && !externalLocal
		usesLocal := itpLocal || externalLocal
		endpoints := endpointsOf(eps, port, node.name)
		cluster, local := categorize(endpoints, usesCluster, usesLocal, node)
		add := func(typ datapath.ServiceType, ip netip.Addr, p int32) {
			s := datapath.Service{Protocol: proto, SessionAffinity: affinity, Type: typ, Frontend: netip.AddrPortFrom(ip, uint16(p))}
			// The node's own traffic to an external frontend takes the
			// cluster endpoints, those of kube-proxy's "short-circuit"
			// of locally originated traffic, where the port uses them.
			ext, in := pick(externalLocal, local, cluster), pick(usesCluster, cluster, local)
			if typ == datapath.ClusterIP {
				ext, in = nil, pick(itpLocal, local, cluster)
			}
			if got, exact := program(&s, endpoints, ext, in, externalLocal, itpLocal, node.pods); !exact {
				problems = append(problems, fmt.Sprintf("port %q %s %s: the datapath cannot give the node's own traffic other backends than traffic from outside here: it gets %s, not %s",
					port.Name, typ, s.Frontend, addrList(got), addrList(in)))
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
		for _, ip := range lbIPs {
			add(datapath.ExternalIP, ip, port.Port)
			k := frontendKey{name, port.Name, datapath.ExternalIP, ip}
			lb := want[k]
			lb.SourceRanges = sourceRanges
			want[k] = lb
		}
	}
	return want, problems
}

// nodeView is what the translation reads of the agent's own node, as
// kube-proxy reads it: the Node's name (an endpoint is local when its
// EndpointSlice nodeName is this one), its zone (the
// topology.kubernetes.io/zone label, for topology hints), and the
// addresses of the datapath's endpoints, which the datapath takes for its
// local backends.
type nodeView struct {
	name, zone string
	pods       map[netip.Addr]bool
}

// sliceEndpoint is an endpoint of a service port as kube-proxy's
// EndpointSlice cache reads it.
type sliceEndpoint struct {
	addr                        netip.AddrPort
	ready, serving, terminating bool // nil conditions: ready and serving, not terminating
	local                       bool // its nodeName is the agent's node
	zones, nodes                []string
}

// endpointsOf returns the endpoints of the service port in its IPv4
// EndpointSlices (the slice port of the same name and protocol, the first
// address of each endpoint), sorted. An endpoint in two slices while it
// moves counts once: a local one first, as in kube-proxy, then a ready one.
func endpointsOf(eps []*discoveryv1.EndpointSlice, port corev1.ServicePort, node string) []sliceEndpoint {
	byAddr := map[netip.AddrPort]sliceEndpoint{}
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, p := range es.Ports {
			if ptr.Deref(p.Name, "") != port.Name || ptr.Deref(p.Protocol, corev1.ProtocolTCP) != cmp.Or(port.Protocol, corev1.ProtocolTCP) || ptr.Deref(p.Port, 0) == 0 {
				continue
			}
			for _, ep := range es.Endpoints {
				if len(ep.Addresses) == 0 {
					continue
				}
				ip, err := netip.ParseAddr(ep.Addresses[0])
				if err != nil || !ip.Is4() {
					continue
				}
				e := sliceEndpoint{
					addr:        netip.AddrPortFrom(ip, uint16(*p.Port)),
					ready:       ptr.Deref(ep.Conditions.Ready, true),
					serving:     ptr.Deref(ep.Conditions.Serving, true),
					terminating: ptr.Deref(ep.Conditions.Terminating, false),
					local:       node != "" && ptr.Deref(ep.NodeName, "") == node,
				}
				if h := ep.Hints; h != nil {
					for _, z := range h.ForZones {
						e.zones = append(e.zones, z.Name)
					}
					for _, n := range h.ForNodes {
						e.nodes = append(e.nodes, n.Name)
					}
				}
				old, seen := byAddr[e.addr]
				if !seen || e.local && !old.local || e.local == old.local && e.ready && !old.ready {
					byAddr[e.addr] = e
				}
			}
		}
	}
	out := slices.Collect(maps.Values(byAddr))
	slices.SortFunc(out, func(a, b sliceEndpoint) int { return a.addr.Compare(b.addr) })
	return out
}

// Topology modes, as kube-proxy names them.
const (
	preferSameZone = corev1.ServiceTrafficDistributionPreferSameZone
	preferSameNode = corev1.ServiceTrafficDistributionPreferSameNode
)

// topologyMode returns how the hints of the ready endpoints narrow the
// cluster endpoints on node, as kube-proxy's topologyModeFromHints: to
// those hinted for the node when every ready endpoint has a node hint and
// one is for the node; else to those hinted for its zone when every ready
// endpoint has a zone hint and one is for the zone; else not at all ("").
// trafficDistribution reaches kube-proxy, and the agent, as these hints,
// which the EndpointSlice controller writes.
func topologyMode(eps []sliceEndpoint, node nodeView) string {
	ready, allNode, forNode, allZone, forZone := false, true, false, true, false
	for _, ep := range eps {
		if !ep.ready {
			continue
		}
		ready = true
		allNode = allNode && len(ep.nodes) > 0
		forNode = forNode || slices.Contains(ep.nodes, node.name)
		allZone = allZone && len(ep.zones) > 0
		forZone = forZone || slices.Contains(ep.zones, node.zone)
	}
	switch {
	case !ready:
		return ""
	case allNode && forNode:
		return preferSameNode
	case allZone && forZone:
		return preferSameZone
	}
	return ""
}

// categorize returns the endpoints that take new flows under each traffic
// policy the service port uses, as kube-proxy's CategorizeEndpoints:
// under Cluster the ready ones the topology hints leave, under Local the
// ready local ones; each falls back on its own to its serving and
// terminating endpoints when it has no ready one. A policy not used gets
// nil.
func categorize(eps []sliceEndpoint, usesCluster, usesLocal bool, node nodeView) (cluster, local map[netip.AddrPort]bool) {
	filter := func(f func(sliceEndpoint) bool) map[netip.AddrPort]bool {
		out := map[netip.AddrPort]bool{}
		for _, ep := range eps {
			if f(ep) {
				out[ep.addr] = true
			}
		}
		return out
	}
	fallback := func(ep sliceEndpoint) bool { return ep.serving && ep.terminating }
	if usesCluster {
		mode := topologyMode(eps, node)
		cluster = filter(func(ep sliceEndpoint) bool {
			switch mode {
			case preferSameNode:
				return ep.ready && slices.Contains(ep.nodes, node.name)
			case preferSameZone:
				return ep.ready && slices.Contains(ep.zones, node.zone)
			}
			return ep.ready
		})
		if len(cluster) == 0 {
			cluster = filter(fallback)
		}
	}
	if usesLocal {
		local = filter(func(ep sliceEndpoint) bool { return ep.local && ep.ready })
		if len(local) == 0 {
			local = filter(func(ep sliceEndpoint) bool { return ep.local && fallback(ep) })
		}
	}
	return cluster, local
}

// program sets the backends and traffic policy flags of s, a datapath
// service with its frontend, protocol and type, so that traffic from
// outside the node goes to the endpoints external names and the node's
// own traffic (its pods and sockets; all of a ClusterIP's) to those
// internal names; the other serving endpoints keep the flows they have
// (terminating). The datapath takes its own endpoints (pods) for the local
// backends of a policy flag, and has one list of active backends for both
// scopes: program sets the flags as the Service has them where that gives
// both sets, else none, with the agent's own choice of backends. Where no
// flags and list give both (a host-network endpoint on the node, or its
// own endpoints terminating while others are ready, under
// externalTrafficPolicy Local) program gives the set from outside, which
// load balancers and their health checks rely on, and returns what the
// node's own traffic gets instead of internal, exact false.
func program(s *datapath.Service, eps []sliceEndpoint, external, internal map[netip.AddrPort]bool, externalLocal, internalLocal bool, pods map[netip.Addr]bool) (got map[netip.AddrPort]bool, exact bool) {
	if s.Type == datapath.ClusterIP {
		external, externalLocal = internal, false
	} else {
		internalLocal = false // the node's own traffic to an external frontend: kube-proxy's cluster endpoints where the service has them
	}
	with := func(active map[netip.AddrPort]bool, extLocal, intLocal bool) datapath.Service {
		c := *s
		c.Backends = nil
		for _, ep := range eps {
			switch {
			case active[ep.addr]:
				c.Backends = append(c.Backends, datapath.Backend{Addr: ep.addr})
			case ep.ready || ep.serving && ep.terminating: // usable elsewhere: keeps its flows
				c.Backends = append(c.Backends, datapath.Backend{Addr: ep.addr, State: datapath.BackendTerminating})
			}
		}
		c.ExternalTrafficPolicyLocal, c.InternalTrafficPolicyLocal = extLocal, intLocal
		return c
	}
	union := maps.Clone(external)
	maps.Copy(union, internal)
	candidates := []datapath.Service{
		with(union, externalLocal, internalLocal), // the flags as the Service has them
		with(external, false, false),              // the agent's own choice of local endpoints
	}
	for _, c := range candidates {
		if ext, in := scopes(c, pods); maps.Equal(ext, external) && maps.Equal(in, internal) {
			*s = c
			return in, true
		}
	}
	for _, c := range candidates {
		if ext, in := scopes(c, pods); maps.Equal(ext, external) {
			*s = c
			return in, false
		}
	}
	*s = candidates[0]
	_, in := scopes(candidates[0], pods)
	return in, false
}

// pick is local if localOnly, else all.
func pick[T any](localOnly bool, local, all T) T {
	if localOnly {
		return local
	}
	return all
}

// addrList formats a set of backends, sorted: "[10.0.0.1:80 10.0.0.2:80]".
func addrList(set map[netip.AddrPort]bool) string {
	out := slices.SortedFunc(maps.Keys(set), netip.AddrPort.Compare)
	return fmt.Sprint(out)
}

// scopes returns the backends that the datapath gives new flows from
// outside the node and from the node itself, for s with the local
// backends pods.
func scopes(s datapath.Service, pods map[netip.Addr]bool) (external, internal map[netip.AddrPort]bool) {
	all, local := map[netip.AddrPort]bool{}, map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		if b.State == datapath.BackendActive {
			all[b.Addr] = true
			if pods[b.Addr.Addr()] {
				local[b.Addr] = true
			}
		}
	}
	external, internal = all, all
	if s.ExternalTrafficPolicyLocal && s.Type != datapath.ClusterIP {
		external = local
	}
	if s.InternalTrafficPolicyLocal {
		internal = local
	}
	if s.Type == datapath.ClusterIP {
		external = internal
	}
	return external, internal
}

// normalized is s with its backends sorted, as backends sorts them, and
// its source ranges as the datapath lists them: sorted, each once.
func normalized(s datapath.Service) datapath.Service {
	s.Backends = slices.Clone(s.Backends)
	slices.SortFunc(s.Backends, func(a, b datapath.Backend) int { return a.Addr.Compare(b.Addr) })
	if len(s.SourceRanges) > 0 {
		s.SourceRanges = slices.Clone(s.SourceRanges)
		slices.SortFunc(s.SourceRanges, func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) })
		s.SourceRanges = slices.Compact(s.SourceRanges)
	}
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
	if len(names) == 0 {
		return failed
	}
	node, err := a.nodeView()
	if err != nil {
		for _, name := range names {
			failed[name] = err
		}
		return failed
	}
	var puts []datapath.Service
	var keys []frontendKey
	for _, name := range names {
		want, svc, problems := a.desired(name, node)
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
