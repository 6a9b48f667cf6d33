package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// nativeCIDR holds every test cluster's pods.
var nativeCIDR = netip.MustParsePrefix("10.0.0.0/8")

// env is a test's world: a real API server and a kind-like cluster of
// node namespaces, each with a Node object.
type env struct {
	kube    *datapathtest.Kube
	client  kubernetes.Interface
	cluster *datapathtest.Cluster
}

// newEnv starts an API server and a cluster of n nodes, and writes a Node
// object for each: its InternalIP and its pod CIDR.
func newEnv(t testing.TB, n int) *env {
	t.Helper()
	datapathtest.RequireRoot(t)
	e := &env{kube: datapathtest.StartKube(t)}
	e.client = newClient(t, e.kube)
	if n > 0 {
		e.cluster = datapathtest.NewCluster(t, n)
		for _, node := range e.cluster.Nodes {
			e.putNode(t, node.Name, node.IP, node.PodCIDR)
		}
	}
	return e
}

// newClient returns an API client for the test, fast enough to write
// thousands of objects.
func newClient(t testing.TB, k *datapathtest.Kube) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 2000, 2000
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// putNode creates the Node name with pod CIDR podCIDR (none if invalid)
// and InternalIP ip.
func (e *env) putNode(t testing.TB, name string, ip netip.Addr, podCIDR netip.Prefix) {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if podCIDR.IsValid() {
		node.Spec.PodCIDR, node.Spec.PodCIDRs = podCIDR.String(), []string{podCIDR.String()}
	}
	node, err := e.client.CoreV1().Nodes().Create(t.Context(), node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	e.setNodeIP(t, node, ip)
}

// setNodeIP sets the InternalIP of node.
func (e *env) setNodeIP(t testing.TB, node *corev1.Node, ip netip.Addr) {
	t.Helper()
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}, {Type: corev1.NodeHostName, Address: node.Name}}
	if _, err := e.client.CoreV1().Nodes().UpdateStatus(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set address of node %s: %v", node.Name, err)
	}
}

// node returns the Node object name.
func (e *env) node(t testing.TB, name string) *corev1.Node {
	t.Helper()
	node, err := e.client.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return node
}

// running is an agent running in the test's process.
type running struct {
	*Agent
	cfg    Config
	cancel context.CancelFunc
	done   chan error
}

// agentConfig is the config of an agent on node n of e's cluster.
func (e *env) agentConfig(t testing.TB, n *datapathtest.Node, pinPath string) Config {
	return Config{
		Kubeconfig:        e.kube.Kubeconfig,
		NodeName:          n.Name,
		Netns:             n.Netns,
		PinPath:           pinPath,
		Devices:           []string{n.Device},
		NativeRoutingCIDR: nativeCIDR,
		Logger:            slog.New(slog.NewTextHandler(t.Output(), nil)).With("test", t.Name()),
	}
}

// newPinPath returns a pin path for a node's datapath, which t.Cleanup
// removes with all the node's attachments (after the agent stopped).
func newPinPath(t testing.TB, n *datapathtest.Node) string {
	t.Helper()
	pinPath := datapathtest.PinPath(t)
	t.Cleanup(func() {
		if err := datapath.Cleanup(datapath.Location{PinPath: pinPath, Netns: n.Netns}); err != nil {
			t.Errorf("clean up datapath of %s: %v", n.Name, err)
		}
	})
	return pinPath
}

// start runs an agent with cfg until stop or the end of the test, and
// waits until it has synced.
func start(t testing.TB, cfg Config) *running {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Agent: a, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	select {
	case <-a.Synced():
	case err := <-r.done:
		r.done <- err
		t.Fatalf("agent of %s ended before it synced: %v", cfg.NodeName, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("agent of %s did not sync within 60s", cfg.NodeName)
	}
	return r
}

// stop ends the agent, as a SIGTERM would, and checks that Run returned
// nil. Stopping it again does nothing.
func (r *running) stop(t testing.TB) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("agent of %s: %v", r.cfg.NodeName, err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("agent of %s did not stop within 30s", r.cfg.NodeName)
	}
}

// openDatapath adopts the datapath that an agent runs at pinPath on node
// n, for the test to look at (and to add pods to, as a CNI would).
func openDatapath(t testing.TB, n *datapathtest.Node, pinPath string) *datapath.Datapath {
	t.Helper()
	dp, err := datapath.Open(datapath.Location{PinPath: pinPath, Netns: n.Netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// eventually retries f every 20ms until it returns nil, failing the test
// with its last error after timeout.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// findService returns the service of dp with frontend front and protocol
// proto.
func findService(dp *datapath.Datapath, front netip.AddrPort, proto datapath.Protocol) (datapath.Service, error) {
	svcs, err := dp.Services()
	if err != nil {
		return datapath.Service{}, err
	}
	for _, s := range svcs {
		if s.Frontend == front && s.Protocol == proto {
			return normalized(s), nil
		}
	}
	return datapath.Service{}, fmt.Errorf("no service %s/%s among %d", front, proto, len(svcs))
}

// wantBackends waits until dp's service front/proto has the backends want
// (sorted), in the states given.
func wantBackends(t testing.TB, dp *datapath.Datapath, front netip.AddrPort, proto datapath.Protocol, want ...datapath.Backend) datapath.Service {
	t.Helper()
	var s datapath.Service
	eventually(t, 10*time.Second, func() (err error) {
		if s, err = findService(dp, front, proto); err != nil {
			return err
		}
		if !slices.Equal(s.Backends, want) {
			return fmt.Errorf("service %s/%s has backends %v, want %v", front, proto, s.Backends, want)
		}
		return nil
	})
	return s
}

// noService waits until dp has no service front/proto.
func noService(t testing.TB, dp *datapath.Datapath, front netip.AddrPort, proto datapath.Protocol) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		if s, err := findService(dp, front, proto); err == nil {
			return fmt.Errorf("service %v still there", s)
		}
		return nil
	})
}

// service is a Service of namespace default with cluster IP ip and ports.
func service(name, ip string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault},
		Spec:       corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports},
	}
}

// port is a service port name: port/proto to target.
func port(name string, proto corev1.Protocol, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: port, TargetPort: intstr.FromInt32(target)}
}

// endpointSlice is the EndpointSlice name of service svc with ports and
// endpoints.
func endpointSlice(svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   eps,
	}
}

// slicePort is an EndpointSlice port.
func slicePort(name string, proto corev1.Protocol, port uint16) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Protocol: ptr.To(proto), Port: ptr.To(int32(port))}
}

// endpoint is a ready endpoint at ip.
func endpoint(ip netip.Addr) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}
}

// terminating is a serving, terminating endpoint at ip.
func terminating(ip netip.Addr) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{ip.String()},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}}
}

// create writes objects to the API: Services and EndpointSlices.
func (e *env) create(t testing.TB, objs ...any) {
	t.Helper()
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			_, err = e.client.CoreV1().Services(o.Namespace).Create(t.Context(), o, metav1.CreateOptions{})
		case *discoveryv1.EndpointSlice:
			_, err = e.client.DiscoveryV1().EndpointSlices(o.Namespace).Create(t.Context(), o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("cannot create a %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// updateSlice replaces the endpoints of EndpointSlice name.
func (e *env) updateSlice(t testing.TB, name string, eps ...discoveryv1.Endpoint) {
	t.Helper()
	s, err := e.client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints = eps
	if _, err := e.client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// deleteService deletes Service name of namespace default.
func (e *env) deleteService(t testing.TB, name string) {
	t.Helper()
	if err := e.client.CoreV1().Services(metav1.NamespaceDefault).Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// nameServer serves p's name on TCP and UDP port 8080 of its address
// (datapathtest's ServeName).
func nameServer(t testing.TB, p *datapathtest.Pod) netip.AddrPort { return p.ServeName(t, 8080) }

// ask connects from the namespace at nsPath to dst over proto ("tcp4" or
// "udp4") and returns the name of the backend that answered and the
// client address it saw.
func ask(nsPath, proto string, dst netip.AddrPort) (name, client string, err error) {
	a, err := datapathtest.AskName(nsPath, proto, dst)
	return a.Name, a.Client, err
}

// answeredBy asks dst n times from nsPath and counts who answered; a
// request that fails fails the test.
func answeredBy(t testing.TB, nsPath, proto string, dst netip.AddrPort, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		name, _, err := ask(nsPath, proto, dst)
		if err != nil {
			t.Fatalf("%s to %s: %v", proto, dst, err)
		}
		seen[name]++
	}
	return seen
}

// echoConn is a long-lived TCP connection from a pod to an echo server.
type echoConn struct{ net.Conn }

// dialEcho connects from the namespace at nsPath to dst.
func dialEcho(t testing.TB, nsPath string, dst netip.AddrPort) echoConn {
	t.Helper()
	var c net.Conn
	err := routing.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout("tcp4", dst.String(), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s: %v", dst, err)
	}
	t.Cleanup(func() { c.Close() })
	return echoConn{c}
}

// check sends msg and expects it back within 2s.
func (c echoConn) check(msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo " + string(buf) + ", want " + msg)
	}
	return nil
}
