// Package agent is a reference node agent for the hostrouting datapath:
// what kube-proxy and the routing half of a CNI agent do on a node,
// driven by the Kubernetes API through client-go's shared informers.
//
// On its node it
//
//   - routes every other Node's pod CIDRs (spec.podCIDRs, IPv4) via its
//     InternalIP (datapath.UpsertNode), and removes the routes of Nodes that
//     go (DeleteNode);
//   - programs every Service with its EndpointSlices as datapath services,
//     one per port and frontend (ClusterIP, NodePort, external IP), as
//     kube-proxy would: headless services and those labelled
//     service.kubernetes.io/service-proxy-name are left out, ready endpoints
//     take new flows whatever their terminating condition, serving and
//     terminating ones keep the flows they have (and take new ones where a
//     traffic policy has no ready endpoint, Cluster and Local each on its
//     own), externalTrafficPolicy and internalTrafficPolicy Local with the
//     endpoints whose nodeName is the agent's node, topology hints
//     (forNodes, forZones: trafficDistribution) for the Node's zone,
//     sessionAffinity ClientIP;
//   - writes the node's CNI configuration, a chained conflist of ptp,
//     host-local with the Node's pod CIDR and the hostrouting plugin;
//   - serves /healthz as kube-proxy does and, if asked, /metrics.
//
// What the datapath cannot express (IPv6, SCTP) is left out with a log
// line and a Warning event on the Service; the rest is programmed. After a
// restart the agent adopts the pinned datapath, lists the API, and then
// removes what the API no longer has and updates what changed: services
// that did not change keep their IDs and backends, so their flows go on.
// When the API server is unreachable client-go retries with backoff while
// the datapath keeps forwarding as last programmed. The agent never removes
// the datapath: on exit it only closes its handles.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/nat"
)

// Config configures an Agent.
type Config struct {
	// Kubeconfig is the path of a kubeconfig file; empty for the
	// in-cluster config of a pod.
	Kubeconfig string
	// NodeName is the name of the agent's own Node object.
	NodeName string
	// Netns is the node's network namespace (a path such as
	// /var/run/netns/node1); empty for the agent's own.
	Netns string
	// PinPath is the node's datapath directory on bpffs; default
	// loader.DefaultPinPath.
	PinPath string
	// Devices are the node's devices toward other nodes (eth0).
	Devices []string
	// NativeRoutingCIDR holds the pods of all nodes (10.0.0.0/8).
	NativeRoutingCIDR netip.Prefix
	// CgroupPath is the cgroup v2 directory whose sockets get socket-level
	// load balancing; empty for none (the tc load balancer serves all).
	CgroupPath string
	// CNIConfDir is where the agent writes 05-hostrouting.conflist once
	// its Node has a pod CIDR; empty for none.
	CNIConfDir string
	// MTU is the pods' MTU in the CNI configuration; 0 takes that of the
	// first device.
	MTU int
	// MaxFlows sizes the node's conntrack and NAT tables at its first
	// load (instance.Options.MaxFlows; loader.FlowsForMemory sizes them by
	// a share of memory); 0 takes the running node's, or the loader's
	// default.
	MaxFlows uint32
	// MaxServices sizes the node's service tables at its first load
	// (instance.Options.MaxServices): how many datapath services the node
	// holds, one per Service port and ClusterIP, NodePort or external IP;
	// 0 takes the running node's, or the loader's default.
	MaxServices uint32
	// ServiceCIDR is the API server's --service-cluster-ip-range: an
	// address in it that no Service has, or a port its Service lacks, is
	// rejected (datapath.Config.ServiceCIDR); invalid for none.
	ServiceCIDR netip.Prefix
	// Healthz is the address /healthz and /livez are served on
	// (127.0.0.1:10256); empty for none.
	Healthz string
	// HealthzTimeout is how long a change may wait to reach the datapath,
	// queued or failing, before /healthz, /livez and the Services' health
	// checks say the agent is unhealthy; default DefaultHealthzTimeout.
	HealthzTimeout time.Duration
	// Metrics is the address /metrics is served on; empty for none.
	Metrics string
	// Logger gets the agent's log lines; default slog.Default().
	Logger *slog.Logger
}

// Agent keeps one node's datapath in line with the Kubernetes API. Make it
// with New, run it with Run.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	client kubernetes.Interface
	synced chan struct{} // closed once the first full sync is done

	mu sync.Mutex // guards dp for the HTTP handlers
	dp *datapath.Datapath

	health        proxyHealth   // the agent's own, as kube-proxy's /healthz
	serviceHealth serviceHealth // the Services' healthCheckNodePorts

	// Owned by Run's worker goroutine.
	queue      workqueue.TypedRateLimitingInterface[item]
	informers  *informers
	events     record.EventRecorder
	programmed map[string]map[frontendKey]datapath.Service // by service (namespace/name), as put on the datapath
	owners     map[uint16]frontendKey                      // the frontend of each service ID the agent put
	nodes      map[string]datapath.Node                    // other nodes as put on the datapath
	warned     map[string]string                           // the last problem logged per object, to log it once
	cniWritten []byte                                      // the CNI configuration last written
	lastZone   string                                      // the node's zone the services were last translated for

	failing      map[string]error // the Services the datapath did not take, and why: owned by the worker
	unprogrammed string           // why /healthz fails while services fail to program: guarded by mu
	metrics      agentMetrics
}

// item is a unit of work: a Node or a Service (with its EndpointSlices),
// by name.
type item struct {
	kind string // kindNode or kindService
	key  string // name, or namespace/name
}

const (
	kindNode    = "node"
	kindService = "service"
)

// New checks cfg and returns an agent for it; nothing is contacted or
// loaded before Run.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("no node name")
	}
	if cfg.PinPath == "" {
		cfg.PinPath = loader.DefaultPinPath
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HealthzTimeout == 0 {
		cfg.HealthzTimeout = DefaultHealthzTimeout
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %q: %w", cfg.Kubeconfig, err)
	}
	restCfg.UserAgent = "hostrouting-agent"
	log := cfg.Logger.With("node", cfg.NodeName)
	restCfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &apiLogger{next: rt, log: log} })
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("make API client: %w", err)
	}
	return &Agent{cfg: cfg, log: log, client: client, synced: make(chan struct{}), metrics: newAgentMetrics()}, nil
}

// Synced is closed once the agent has brought the datapath in line with
// the API for the first time.
func (a *Agent) Synced() <-chan struct{} { return a.synced }

// Run loads or adopts the node's datapath, serves /healthz and /metrics,
// and keeps the datapath in line with the API until ctx ends. It returns
// an error only if it cannot start; an unreachable API server is waited
// for. On return the datapath keeps running as last programmed. Run is
// called once per Agent.
func (a *Agent) Run(ctx context.Context) error {
	dp, err := datapath.New(datapath.Config{
		PinPath:           a.cfg.PinPath,
		Netns:             a.cfg.Netns,
		Devices:           a.cfg.Devices,
		NativeRoutingCIDR: a.cfg.NativeRoutingCIDR,
		CgroupPath:        a.cfg.CgroupPath,
		MaxFlows:          a.cfg.MaxFlows,
		MaxServices:       a.cfg.MaxServices,
		ServiceCIDR:       a.cfg.ServiceCIDR,
	})
	if err != nil {
		return fmt.Errorf("start datapath: %w", err)
	}
	defer dp.Close()
	gc, err := dp.GC(nat.Options{})
	if err != nil {
		return err
	}
	defer gc.Start(30 * time.Second)()
	a.mu.Lock()
	a.dp = dp
	a.mu.Unlock()

	var servers sync.WaitGroup
	defer servers.Wait() // after cancel, which stops them
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.serve(ctx, &servers); err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	a.events = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "hostrouting-agent", Host: a.cfg.NodeName})

	a.queue = trackedQueue{workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[item](time.Second, 2*time.Minute)), &a.health}
	defer a.queue.ShutDown()
	defer a.serviceHealth.closeAll()
	a.programmed = map[string]map[frontendKey]datapath.Service{}
	a.owners = map[uint16]frontendKey{}
	a.nodes = map[string]datapath.Node{}
	a.warned = map[string]string{}
	a.failing = map[string]error{}
	a.informers, err = a.startInformers(ctx)
	if err != nil {
		return err
	}
	defer a.informers.shutdown()

	a.log.Info("waiting for the API", "pinPath", a.cfg.PinPath)
	if !a.informers.waitForSync(ctx) {
		return nil // ctx ended first
	}
	if err := a.adopt(); err != nil {
		return err
	}
	go func() { <-ctx.Done(); a.queue.ShutDown() }()
	for a.work() {
	}
	return nil
}

// adopt reads what the datapath has before the first sync: services with
// the frontend of a service port the API has keep their ID (and are not
// touched if unchanged); the other services are deleted; nodes are queued
// so that those the API no longer has go.
func (a *Agent) adopt() error {
	svcs, err := a.dp.Services()
	if err != nil {
		return fmt.Errorf("list datapath services: %w", err)
	}
	nodes, err := a.dp.Nodes()
	if err != nil {
		return fmt.Errorf("list datapath nodes: %w", err)
	}
	node, err := a.nodeView()
	if err != nil {
		return err
	}
	a.lastZone = node.zone
	have := map[frontend]datapath.Service{}
	for _, s := range svcs {
		have[frontend{s.Frontend, s.Protocol}] = normalized(s)
	}
	for _, name := range a.informers.serviceNames() {
		want, _, _ := a.desired(name, node)
		for key, s := range want {
			f := frontend{s.Frontend, s.Protocol}
			if old, ok := have[f]; ok {
				a.record(key, old)
				delete(have, f)
			}
		}
	}
	for _, s := range have {
		a.log.Info("deleting service the API no longer has", "id", s.ID, "frontend", s.Frontend, "protocol", s.Protocol)
		if err := a.dp.DeleteService(s.ID); err != nil && !errors.Is(err, datapath.ErrNotFound) {
			return fmt.Errorf("delete service %d: %w", s.ID, err)
		}
	}
	for _, n := range nodes {
		a.nodes[n.Name] = n
		a.queue.Add(item{kindNode, n.Name})
	}
	return nil
}

// work processes what is queued, in one batch, and tells whether to go on.
func (a *Agent) work() bool {
	first, shutdown := a.queue.Get()
	if shutdown {
		return false
	}
	batch := []item{first}
	for a.queue.Len() > 0 {
		it, shutdown := a.queue.Get()
		if shutdown {
			break
		}
		batch = append(batch, it)
	}
	start := time.Now()
	failed := a.process(batch)
	for _, it := range batch {
		if err, ok := failed[it]; ok {
			a.log.Error("sync failed, will retry", "kind", it.kind, "name", it.key, "err", err)
			a.queue.AddRateLimited(it)
		} else {
			a.queue.Forget(it)
		}
		a.queue.Done(it)
	}
	a.health.synced(batch, failed, a.queue.Len() > 0)
	select {
	case <-a.synced:
		a.log.Debug("synced", "items", len(batch), "failed", len(failed), "took", time.Since(start))
	default:
		a.log.Info("datapath in line with the API", "items", len(batch), "took", time.Since(start).Round(time.Millisecond))
		close(a.synced)
	}
	return true
}

// process brings the datapath in line with the API for the items of a
// batch and returns the errors of those that failed.
func (a *Agent) process(batch []item) map[item]error {
	failed := map[item]error{}
	var services []string
	for _, it := range batch {
		switch it.kind {
		case kindNode:
			if err := a.syncNode(it.key); err != nil {
				failed[it] = err
			}
		case kindService:
			services = append(services, it.key)
		}
	}
	failedServices := a.syncServices(services)
	for _, name := range services {
		a.serviceSynced(name, failedServices[name])
	}
	for name, err := range failedServices {
		failed[item{kindService, name}] = err
	}
	a.publishHealth()
	a.syncHealth(batch, failed)
	return failed
}

// warn logs problem for the object named key, and sends it as a Warning
// event on obj if not nil, unless it is the problem last logged for key;
// an empty problem forgets it.
func (a *Agent) warn(key string, obj *corev1.Service, problem string) {
	if a.warned[key] == problem {
		return
	}
	if problem == "" {
		delete(a.warned, key)
		return
	}
	a.warned[key] = problem
	a.log.Warn("not programmed: "+problem, "object", key)
	if obj != nil {
		a.events.Event(obj, corev1.EventTypeWarning, "HostroutingUnsupported", problem)
	}
}

// apiLogger logs when the API server stops answering and when it answers
// again, once each: client-go's informers retry quietly, with backoff.
type apiLogger struct {
	next http.RoundTripper
	log  *slog.Logger
	down atomic.Bool
}

func (l *apiLogger) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	switch {
	case err != nil && req.Context().Err() == nil && !l.down.Swap(true):
		l.log.Warn("API server unreachable; retrying with backoff, the datapath keeps forwarding as programmed", "err", err)
	case err == nil && l.down.Swap(false):
		l.log.Info("API server answers again")
	}
	return resp, err
}
