package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/routing"
)

// DefaultHealthzTimeout is how long a change may wait to reach the
// datapath before /healthz and /livez answer 503: kube-proxy's
// 2 × --sync-period (30 s).
const DefaultHealthzTimeout = time.Minute

// toBeDeletedTaint is the taint the cluster autoscaler puts on a Node it
// is about to delete: load balancers should drain it.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// proxyHealth is the agent's own health as kube-proxy reckons its
// proxier's (pkg/proxy/healthcheck/proxy_health.go): unhealthy once a
// change has waited longer than the healthz timeout to reach the
// datapath, queued or failing, counted from the end of the first batch
// (an agent starting on 10000 Services is not restarted by a liveness
// probe for taking long); and whether its Node may take load balancer
// traffic. The zero value is healthy and eligible.
type proxyHealth struct {
	mu           sync.Mutex
	lastUpdated  time.Time // when no change was left waiting
	pendingSince time.Time // when the oldest change still waiting was queued; zero for none
	started      bool      // the first batch is done: healthy before, however long it takes
	ineligible   bool      // the Node is being deleted or tainted toBeDeletedTaint
	seenNode     bool      // the Node was seen: gone means deleted

	failing map[item]bool // items whose last sync failed for a reason of the node's: the worker's
}

// queued notes that a change was queued.
func (h *proxyHealth) queued() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pendingSince.IsZero() {
		h.pendingSince = time.Now()
	}
}

// synced notes how a batch went: with none of the items failing (a
// Service the datapath refuses as invalid is the API's to mend, not a
// change waiting), the changes queued so far reached the datapath, and
// those queued meanwhile (more) wait from now.
func (h *proxyHealth) synced(batch []item, failed map[item]error, more bool) {
	if h.failing == nil {
		h.failing = map[item]bool{}
	}
	for _, it := range batch {
		err, ok := failed[it]
		if ok && failReason(err) != reasonInvalid {
			h.failing[it] = true
		} else {
			delete(h.failing, it)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	if !h.started { // what failed waits from now, as kube-proxy's first sync queues nothing
		h.started, h.pendingSince = true, now
	}
	if len(h.failing) > 0 {
		return
	}
	h.lastUpdated, h.pendingSince = now, time.Time{}
	if more {
		h.pendingSince = h.lastUpdated
	}
}

// syncNode notes the agent's own Node (nil once gone): not eligible for
// load balancer traffic while it is being deleted or tainted
// toBeDeletedTaint, as kube-proxy's SyncNode.
func (h *proxyHealth) syncNode(node *corev1.Node) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case node == nil:
		h.ineligible = h.seenNode
		return
	case !node.DeletionTimestamp.IsZero():
		h.ineligible = true
	default:
		h.ineligible = false
		for _, t := range node.Spec.Taints {
			h.ineligible = h.ineligible || t.Key == toBeDeletedTaint
		}
	}
	h.seenNode = true
}

// proxyState is what proxyHealth says at a time.
type proxyState struct {
	healthy      bool          // no change has waited longer than the timeout
	pending      time.Duration // how long the oldest change has waited
	lastUpdated  time.Time
	nodeEligible bool
}

func (h *proxyHealth) state(now time.Time, timeout time.Duration) proxyState {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := proxyState{healthy: true, lastUpdated: h.lastUpdated, nodeEligible: !h.ineligible}
	if h.started && !h.pendingSince.IsZero() {
		s.pending = now.Sub(h.pendingSince)
		s.healthy = s.pending < timeout
	}
	return s
}

// trackedQueue is the agent's work queue noting in proxyHealth when
// changes are queued.
type trackedQueue struct {
	workqueue.TypedRateLimitingInterface[item]
	health *proxyHealth
}

func (q trackedQueue) Add(it item) {
	q.health.queued()
	q.TypedRateLimitingInterface.Add(it)
}

// syncHealth brings the health servers in line with a processed batch:
// the agent's own Node's eligibility and address, and the health check
// of every Service of the batch that the datapath took.
func (a *Agent) syncHealth(batch []item, failed map[item]error) {
	if slices.Contains(batch, item{kindNode, a.cfg.NodeName}) { // first: the Services listen at its address
		node, err := a.informers.nodes.Get(a.cfg.NodeName)
		if err != nil {
			node = nil // gone
		}
		a.health.syncNode(node)
		a.serviceHealth.setNodeIP(a, primaryIP(node))
	}
	for _, it := range batch {
		if _, ok := failed[it]; it.kind == kindService && !ok {
			a.syncHealthCheck(it.key)
		}
	}
	a.serviceHealth.retry(a)
}

// primaryIP is the first IPv4 InternalIP of node, the address kube-proxy
// in nftables mode serves health checks on (--nodeport-addresses
// primary); invalid for none.
func primaryIP(node *corev1.Node) netip.Addr {
	if node == nil {
		return netip.Addr{}
	}
	for _, addr := range node.Status.Addresses {
		if ip, err := netip.ParseAddr(addr.Address); addr.Type == corev1.NodeInternalIP && err == nil && ip.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

// syncHealthCheck opens, moves or closes the health check of the Service
// namespace/name and sets its count of local endpoints.
func (a *Agent) syncHealthCheck(name string) {
	ns, n, _ := cache.SplitMetaNamespaceKey(name)
	svc, err := a.informers.services.Services(ns).Get(n)
	port := uint16(0)
	if err == nil && svc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && svc.Spec.HealthCheckNodePort > 0 {
		port = uint16(svc.Spec.HealthCheckNodePort)
	}
	a.serviceHealth.sync(a, name, port, localReadyEndpoints(a.informers.endpointSlices(name), a.cfg.NodeName))
}

// localReadyEndpoints counts the addresses of the ready endpoints on node
// among eps, as kube-proxy's LocalReadyEndpoints: IPv4 slices, ports with
// a name and a number, ready (nil counts as ready, terminating or not),
// nodeName the node's; an address is counted once whatever its ports.
// Serving but not ready endpoints are not counted, so a load balancer
// drains a node whose endpoints all terminate.
func localReadyEndpoints(eps []*discoveryv1.EndpointSlice, node string) int {
	type portKey struct {
		name  string
		proto corev1.Protocol
		addr  netip.AddrPort
	}
	// By service port and endpoint, as kube-proxy's cache: an endpoint in
	// two slices (moving between them) is the one not terminating.
	seen := map[portKey]discoveryv1.Endpoint{}
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, p := range es.Ports {
			if p.Name == nil || p.Port == nil || *p.Port == 0 {
				continue
			}
			for _, ep := range es.Endpoints {
				if len(ep.Addresses) == 0 {
					continue
				}
				ip, err := netip.ParseAddr(ep.Addresses[0])
				if err != nil {
					continue
				}
				k := portKey{*p.Name, ptr.Deref(p.Protocol, corev1.ProtocolTCP), netip.AddrPortFrom(ip, uint16(*p.Port))}
				if _, ok := seen[k]; !ok || !ptr.Deref(ep.Conditions.Terminating, false) {
					seen[k] = ep
				}
			}
		}
	}
	local := map[netip.Addr]bool{}
	for k, ep := range seen {
		if ptr.Deref(ep.Conditions.Ready, true) && node != "" && ptr.Deref(ep.NodeName, "") == node {
			local[k.addr.Addr()] = true
		}
	}
	return len(local)
}

// serviceHealth serves the health checks of Services with
// externalTrafficPolicy Local behind load balancers, as kube-proxy's
// service health server (pkg/proxy/healthcheck/service_health.go): on
// spec.healthCheckNodePort of the node's primary address, in the node's
// network namespace, any GET answers 200 where the node has a ready
// endpoint of the Service and the agent is healthy, 503 otherwise, with
// the count in a JSON body. Its listeners are the worker's to open and
// close; its handlers read the counts under mu.
type serviceHealth struct {
	mu       sync.Mutex
	nodeIP   netip.Addr
	services map[string]*healthCheck // by namespace/name
}

// healthCheck is the health check of one Service.
type healthCheck struct {
	port    uint16
	local   int            // ready endpoints on the node
	servers []*http.Server // none while it could not listen (retried)
}

// sync sets the health check of Service name: on port (0 for none), with
// local endpoints on the node.
func (s *serviceHealth) sync(a *Agent, name string, port uint16, local int) {
	s.mu.Lock()
	hc := s.services[name]
	if hc != nil && hc.port == port {
		hc.local = local
		s.mu.Unlock()
		return
	}
	if s.services == nil {
		s.services = map[string]*healthCheck{}
	}
	delete(s.services, name)
	if port != 0 {
		s.services[name] = &healthCheck{port: port, local: local}
	}
	ip := s.nodeIP
	s.mu.Unlock()
	if hc != nil {
		a.log.Info("closing health check", "service", name, "port", hc.port)
		hc.close()
	}
	if port != 0 {
		a.log.Info("opening health check", "service", name, "port", port, "localEndpoints", local)
		s.listen(a, name, ip)
	}
}

// setNodeIP moves every health check to the node's address ip (none if
// invalid).
func (s *serviceHealth) setNodeIP(a *Agent, ip netip.Addr) {
	s.mu.Lock()
	if s.nodeIP == ip {
		s.mu.Unlock()
		return
	}
	s.nodeIP = ip
	var names []string
	for name, hc := range s.services {
		hc.close()
		names = append(names, name)
	}
	s.mu.Unlock()
	a.log.Info("health checks on the node's address", "ip", ip, "services", len(names))
	for _, name := range names {
		s.listen(a, name, ip)
	}
}

// retry listens for the health checks that could not.
func (s *serviceHealth) retry(a *Agent) {
	s.mu.Lock()
	var names []string
	for name, hc := range s.services {
		if len(hc.servers) == 0 {
			names = append(names, name)
		}
	}
	ip := s.nodeIP
	s.mu.Unlock()
	for _, name := range names {
		s.listen(a, name, ip)
	}
}

// closeAll closes every health check.
func (s *serviceHealth) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, hc := range s.services {
		hc.close()
	}
	s.services = nil
}

// listen opens the health check of Service name on ip, in the node's
// network namespace. A failure is logged and sent as a Warning event on
// the Service (kube-proxy's FailedToStartServiceHealthcheck) once; it is
// tried again after the next batch.
func (s *serviceHealth) listen(a *Agent, name string, ip netip.Addr) {
	if !ip.IsValid() {
		a.warn("healthcheck/"+name, nil, "no health check: the node has no IPv4 InternalIP yet")
		return
	}
	s.mu.Lock()
	hc := s.services[name]
	port := uint16(0)
	if hc != nil && len(hc.servers) == 0 {
		port = hc.port
	}
	s.mu.Unlock()
	if port == 0 {
		return // gone, or listening
	}
	addr := netip.AddrPortFrom(ip, port)
	var l net.Listener
	err := routing.Do(a.cfg.Netns, func() (err error) {
		l, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		ns, n, _ := cache.SplitMetaNamespaceKey(name)
		svc, _ := a.informers.services.Services(ns).Get(n)
		a.warnEvent("healthcheck/"+name, svc, "FailedToStartServiceHealthcheck",
			fmt.Sprintf("node %s failed to start health check on %s: %v", a.cfg.NodeName, addr, err))
		return
	}
	srv := &http.Server{Handler: s.handler(name, &a.health, a.cfg.HealthzTimeout), ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	if s.services[name] != hc || s.nodeIP != ip { // changed meanwhile: not the worker's own call
		s.mu.Unlock()
		l.Close()
		return
	}
	hc.servers = append(hc.servers, srv)
	s.mu.Unlock()
	a.warn("healthcheck/"+name, nil, "")
	go func(log *slog.Logger) {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Error("health check server failed", "service", name, "addr", addr, "err", err)
		}
	}(a.log)
}

func (hc *healthCheck) close() {
	for _, srv := range hc.servers {
		_ = srv.Close()
	}
	hc.servers = nil
}

// healthCheckBody is kube-proxy's answer on a healthCheckNodePort.
type healthCheckBody struct {
	Service struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"service"`
	LocalEndpoints      int  `json:"localEndpoints"`
	ServiceProxyHealthy bool `json:"serviceProxyHealthy"`
}

// handler answers the health check of Service name.
func (s *serviceHealth) handler(name string, health *proxyHealth, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		hc := s.services[name]
		var local int
		if hc != nil {
			local = hc.local
		}
		s.mu.Unlock()
		if hc == nil {
			http.Error(w, "no health check for "+name, http.StatusNotFound) // closed meanwhile
			return
		}
		var body healthCheckBody
		body.Service.Namespace, body.Service.Name, _ = cache.SplitMetaNamespaceKey(name)
		body.LocalEndpoints = local
		body.ServiceProxyHealthy = health.state(time.Now(), timeout).healthy
		b, _ := json.MarshalIndent(body, "", "\t") // plain fields
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(local))
		if local > 0 && body.ServiceProxyHealthy {
			w.WriteHeader(http.StatusOK)
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write(b)
	})
}

// warnEvent logs problem for the object named key and sends it as a
// Warning event with reason on obj if not nil, unless it is the problem
// last logged for key.
func (a *Agent) warnEvent(key string, obj *corev1.Service, reason, problem string) {
	if a.warned[key] == problem {
		return
	}
	a.warned[key] = problem
	a.log.Error(problem, "object", key)
	if obj != nil {
		a.events.Event(obj, corev1.EventTypeWarning, reason, problem)
	}
}
