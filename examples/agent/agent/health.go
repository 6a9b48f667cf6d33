package agent

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/workqueue"
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

// syncHealth notes the agent's own Node's eligibility from a processed
// batch.
func (a *Agent) syncHealth(batch []item, _ map[item]error) {
	for _, it := range batch {
		if it.kind == kindNode && it.key == a.cfg.NodeName {
			node, err := a.informers.nodes.Get(it.key)
			if err != nil {
				node = nil // gone
			}
			a.health.syncNode(node)
		}
	}
}
