package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// deployDir holds the manifests a cluster applies.
const deployDir = "../deploy"

// rbacAuthz is how a real cluster's kube-apiserver authorizes (kubeadm's
// and kind's default).
const rbacAuthz = "Node,RBAC"

// manifests returns the objects of every YAML file in deploy/.
func manifests(t testing.TB) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(deployDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", deployDir, err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for {
			var o unstructured.Unstructured
			if err := dec.Decode(&o.Object); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(o.Object) > 0 {
				objs = append(objs, &o)
			}
		}
	}
	return objs
}

// applier applies objects with server-side apply, as `kubectl apply
// --server-side` does.
type applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t testing.TB, k *datapathtest.Kube) *applier {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}
}

// apply applies o; dryRun makes it metav1.DryRunAll: validated, admitted
// and authorized as for real, stored nowhere.
func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s %s: %w", gvk.Kind, o.GetName(), err)
	}
	opts := metav1.ApplyOptions{FieldManager: "hostrouting-test", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = a.dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Apply(ctx, o.GetName(), o, opts)
	if err != nil {
		return fmt.Errorf("apply %s %s: %w", gvk.Kind, o.GetName(), err)
	}
	return nil
}

// TestDeployDryRun applies every manifest of deploy/ with server-side
// dry-run on a kube-apiserver authorizing with Node,RBAC: the API server
// validates and admits them as a cluster would; with client-go's
// server-side apply, and with `kubectl apply --dry-run=server -f deploy/`
// where kubectl is installed. It also proves the reason
// the DaemonSet's agent is privileged: the same DaemonSet with the agent
// unprivileged is refused for its Bidirectional bpffs mount.
func TestDeployDryRun(t *testing.T) {
	k := datapathtest.StartKubeWith(t, datapathtest.KubeOptions{Authorization: rbacAuthz})
	a := newApplier(t, k)
	kinds := map[string]bool{}
	var ds *unstructured.Unstructured
	for _, o := range manifests(t) {
		kinds[o.GetKind()] = true
		if err := a.apply(t.Context(), o, true); err != nil {
			t.Error(err)
		}
		if o.GetKind() == "DaemonSet" {
			ds = o
		}
	}
	for _, kind := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"} {
		if !kinds[kind] {
			t.Errorf("deploy/ has no %s", kind)
		}
	}
	t.Run("kubectl", func(t *testing.T) {
		kubectl, err := exec.LookPath("kubectl")
		if err != nil {
			t.Skip("no kubectl")
		}
		out, err := exec.CommandContext(t.Context(), kubectl, "--kubeconfig", k.Kubeconfig,
			"apply", "--dry-run=server", "-f", deployDir).CombinedOutput()
		if err != nil {
			t.Errorf("kubectl apply --dry-run=server: %v\n%s", err, out)
		}
		t.Logf("%s", out)
	})
	if ds == nil {
		return
	}
	unprivileged := ds.DeepCopy()
	containers, _, _ := unstructured.NestedSlice(unprivileged.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		if err := unstructured.SetNestedField(c.(map[string]any), false, "securityContext", "privileged"); err != nil {
			t.Fatal(err)
		}
	}
	if err := unstructured.SetNestedSlice(unprivileged.Object, containers, "spec", "template", "spec", "containers"); err != nil {
		t.Fatal(err)
	}
	err := a.apply(t.Context(), unprivileged, true)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "Bidirectional") {
		t.Errorf("unprivileged DaemonSet: %v, want Invalid for the Bidirectional mount", err)
	}
}

// TestRBAC runs the agent as deploy/rbac.yaml's ServiceAccount, with a
// token of its own from the TokenRequest API, against a kube-apiserver
// authorizing with Node,RBAC: it syncs, programs a Service made after it
// synced (so its watches work, not only its lists), records a Warning
// event on it and, when the problem comes back, patches the event's count.
// Then, for each rule of the ClusterRole, and each verb of the events
// rule, the same run without it must fail: the role is the least that
// works.
func TestRBAC(t *testing.T) {
	datapathtest.RequireRoot(t)
	e := &env{kube: datapathtest.StartKubeWith(t, datapathtest.KubeOptions{Authorization: rbacAuthz})}
	e.client = newClient(t, e.kube)
	e.cluster = datapathtest.NewCluster(t, 1)
	n := e.cluster.Nodes[0]
	e.putNode(t, n.Name, n.IP, n.PodCIDR)

	a := newApplier(t, e.kube)
	var role *rbacv1.ClusterRole
	var sa *corev1.ServiceAccount
	for _, o := range manifests(t) {
		switch o.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding":
			if err := a.apply(t.Context(), o, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	role, err := e.client.RbacV1().ClusterRoles().Get(t.Context(), "hostrouting-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sa, err = e.client.CoreV1().ServiceAccounts("kube-system").Get(t.Context(), "hostrouting-agent", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := e.client.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(t.Context(), sa.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	kubeconfig := saKubeconfig(t, e.kube, tr.Status.Token)

	setRules := func(rules []rbacv1.PolicyRule) {
		t.Helper()
		r, err := e.client.RbacV1().ClusterRoles().Get(t.Context(), role.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r.Rules = rules
		if _, err := e.client.RbacV1().ClusterRoles().Update(t.Context(), r, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the authorizer's informer
	}

	run := 0
	works := func(t *testing.T) error {
		run++
		cfg := e.agentConfig(t, n, newPinPath(t, n))
		cfg.Kubeconfig = kubeconfig
		return agentWorks(t, e, cfg, fmt.Sprintf("rbac-%d", run))
	}
	if !t.Run("with deploy's ClusterRole", func(t *testing.T) {
		if err := works(t); err != nil {
			t.Fatalf("with deploy/rbac.yaml's ClusterRole: %v", err)
		}
	}) {
		t.FailNow()
	}
	fails := func(t *testing.T, name string, rules []rbacv1.PolicyRule) {
		setRules(rules)
		defer setRules(role.Rules)
		if err := works(t); err == nil {
			t.Errorf("the agent works without %s: the ClusterRole is not the least", name)
		} else {
			t.Logf("without %s: %v", name, err)
		}
	}
	without := func(name string, rules []rbacv1.PolicyRule) {
		t.Run("without "+name, func(t *testing.T) { fails(t, name, rules) })
	}
	for i, rule := range role.Rules {
		without(strings.Join(rule.Resources, ",")+" "+strings.Join(rule.Verbs, ","), slices.Delete(slices.Clone(role.Rules), i, i+1))
	}
	// list alone, as a client or server without watch-list does: the
	// informers' first list streams through a watch where both can
	// (client-go's WatchListClient, on by default), and list is the
	// fallback. With it off, the agent works and needs list.
	noWatchList := func(name string, f func(t *testing.T)) {
		t.Run(name+", no watch-list", func(t *testing.T) {
			prev := clientfeatures.FeatureGates()
			clientfeatures.ReplaceFeatureGates(withoutWatchList{prev})
			defer clientfeatures.ReplaceFeatureGates(prev)
			f(t)
		})
	}
	noWatchList("with deploy's ClusterRole", func(t *testing.T) {
		if err := works(t); err != nil {
			t.Fatalf("with deploy/rbac.yaml's ClusterRole: %v", err)
		}
	})
	for i, rule := range role.Rules {
		if !slices.Contains(rule.Verbs, "list") {
			continue
		}
		rules := slices.Clone(role.Rules)
		rules[i].Verbs = slices.DeleteFunc(slices.Clone(rule.Verbs), func(v string) bool { return v == "list" })
		name := strings.Join(rule.Resources, ",") + " list"
		noWatchList("without "+name, func(t *testing.T) { fails(t, name, rules) })
	}
	// Each verb of the events rule alone. Not so for watch: without it,
	// client-go lists again and again with a growing backoff (up to 30 s
	// between changes), which this test, with a change right after the
	// sync, cannot tell from a watch. An informer needs it.
	for i, rule := range role.Rules {
		if !slices.Contains(rule.Resources, "events") {
			continue
		}
		for j, verb := range rule.Verbs {
			rules := slices.Clone(role.Rules)
			rules[i].Verbs = slices.Delete(slices.Clone(rule.Verbs), j, j+1)
			without(strings.Join(rule.Resources, ",")+" "+verb, rules)
		}
	}
}

// saKubeconfig writes a kubeconfig for k with bearer token token.
func saKubeconfig(t testing.TB, k *datapathtest.Kube, token string) string {
	t.Helper()
	ca, err := os.ReadFile(k.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: %q, certificate-authority-data: %s}
users:
- name: u
  user: {token: %q}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`, k.URL, base64.StdEncoding.EncodeToString(ca), token)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// agentWorks runs an agent with cfg and returns nil if it syncs, programs
// Service name, created after the sync, with its endpoint, records the
// Warning event HostroutingUnsupported on it (its SCTP port), and counts
// the same problem again in that event (a patch).
func agentWorks(t *testing.T, e *env, cfg Config, name string) error {
	ag, err := New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("agent did not stop within 30s")
		}
	}()
	select {
	case <-ag.Synced():
	case err := <-done:
		done <- err
		return fmt.Errorf("agent ended before it synced: %v", err)
	case <-time.After(20 * time.Second):
		return errors.New("agent did not sync within 20s")
	}

	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: 90, TargetPort: intstr.FromInt32(9090)},
		}}}
	if svc, err = e.client.CoreV1().Services(svc.Namespace).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	backend := netip.MustParseAddr("10.9.9.9")
	e.create(t, endpointSlice(name, name+"-1", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}, endpoint(backend)))
	front := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	dp := openDatapath(t, e.cluster.Nodes[0], cfg.PinPath)
	if err := within(10*time.Second, func() error {
		s, err := findService(dp, front, datapath.TCP)
		if err == nil && !slices.ContainsFunc(s.Backends, func(b datapath.Backend) bool { return b.Addr == netip.AddrPortFrom(backend, 8080) }) {
			err = fmt.Errorf("service %s has backends %v", front, s.Backends)
		}
		return err
	}); err != nil {
		return fmt.Errorf("not programmed: %w", err)
	}
	eventCount := func(want int32) error {
		return within(10*time.Second, func() error {
			evs, err := e.client.CoreV1().Events(svc.Namespace).List(t.Context(), metav1.ListOptions{
				FieldSelector: "involvedObject.name=" + name + ",reason=HostroutingUnsupported"})
			if err != nil {
				t.Fatal(err)
			}
			if len(evs.Items) != 1 || evs.Items[0].Count != want {
				return fmt.Errorf("events HostroutingUnsupported on the Service: %d, want one of count %d", len(evs.Items), want)
			}
			return nil
		})
	}
	if err := eventCount(1); err != nil {
		return err
	}

	// The same problem again: the recorder patches the event's count.
	// Without the SCTP port (and with port 81, to see when the agent took
	// it), then with it again.
	setPorts := func(ports ...corev1.ServicePort) {
		s, err := e.client.CoreV1().Services(svc.Namespace).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Spec.Ports = ports
		if _, err := e.client.CoreV1().Services(svc.Namespace).Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	http81 := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(8080)}
	setPorts(http81)
	if err := within(10*time.Second, func() error {
		_, err := findService(dp, netip.AddrPortFrom(front.Addr(), 81), datapath.TCP)
		return err
	}); err != nil {
		return fmt.Errorf("port change not programmed: %w", err)
	}
	setPorts(http81, svc.Spec.Ports[1])
	return eventCount(2)
}

// within retries f every 50ms until it returns nil or timeout passes,
// then returns its last error.
func within(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// withoutWatchList are client-go's feature gates with WatchListClient off.
type withoutWatchList struct{ clientfeatures.Gates }

func (g withoutWatchList) Enabled(f clientfeatures.Feature) bool {
	return f != clientfeatures.WatchListClient && g.Gates.Enabled(f)
}
