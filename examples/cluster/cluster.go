package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/examples/agent/agent"
	"github.com/hostrouting/hostrouting/internal/kube"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// The seeds' cluster: kind's node names, Cilium's native routing CIDR,
// the web DaemonSet's NodePort.
var (
	nodeNames     = []string{"kind-control-plane", "kind-worker", "kind-worker2"}
	nativeRouting = netip.MustParsePrefix("10.0.0.0/8")
)

const (
	nodePort = 32000
	webPort  = 8080 // the web pods' containerPort
)

// cluster is what the demo made, for its steps and its teardown.
type cluster struct {
	id       string
	out, log io.Writer
	undo     []func() error // run in reverse by teardown

	dir        string // the API server's directory, the nodes' CNI files
	client     kubernetes.Interface
	kubeconfig string
	wire       *topology.Wire
	nodes      []*node
	client0    pod // the client pod on the first node
	web        []pod
	clusterIP  netip.Addr
}

// node is one node of the cluster.
type node struct {
	name    string
	ip      netip.Addr
	podCIDR netip.Prefix
	netns   string // name under /var/run/netns
	path    string
	pinPath string
	netconf string // the agent's CNI configuration directory
	varLib  string // mounted on /var/lib for cnitool: libcni's cache and host-local's leases
}

// pod is a pod cnitool added.
type pod struct {
	name  string
	netns string
	path  string
	ip    netip.Addr
	node  *node
}

func (c *cluster) pinPrefix() string {
	return filepath.Join(loader.DefaultBPFFS, "hostrouting-cluster-"+c.id+"-")
}

func (c *cluster) teardown() error {
	var errs []error
	for i := len(c.undo) - 1; i >= 0; i-- {
		errs = append(errs, c.undo[i]())
	}
	c.undo = nil
	return errors.Join(errs...)
}

// startAPIServer runs etcd and kube-apiserver on 127.0.0.1, building
// them first if need be.
func (c *cluster) startAPIServer(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "hr-cluster-"+c.id+"-")
	if err != nil {
		return err
	}
	c.dir = dir
	c.undo = append(c.undo, func() error { return os.RemoveAll(dir) })
	if _, err := kube.Build(ctx); err != nil {
		return err
	}
	srv, err := kube.Start(ctx, filepath.Join(dir, "kube"), kube.Options{})
	if err != nil {
		return err
	}
	c.undo = append(c.undo, srv.Stop)
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		return err
	}
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	c.kubeconfig = srv.Kubeconfig
	fmt.Fprintf(c.out, "API server: %s (etcd and kube-apiserver v1.37 on loopback)\n", srv.URL)
	return nil
}

// makeNodes makes the wire and the nodes' namespaces, and their Node
// objects with pod CIDRs and InternalIPs, as kubeadm and the node IPAM
// controller would leave them.
func (c *cluster) makeNodes(ctx context.Context) error {
	var err error
	prefix := "hr-cluster-" + c.id
	if c.wire, err = topology.NewWire(ctx, topology.Options{Prefix: prefix}); err != nil {
		return err
	}
	c.undo = append(c.undo, c.wire.Close)
	for i, name := range nodeNames {
		n := &node{name: name, ip: topology.NodeIP(i),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24),
			pinPath: c.pinPrefix() + name, netconf: filepath.Join(c.dir, name, "net.d"),
			varLib: filepath.Join(c.dir, name, "varlib")}
		if err := os.MkdirAll(n.varLib, 0o700); err != nil {
			return err
		}
		tn, err := c.wire.AddNode(ctx, topology.NodeOptions{Name: name, Port: fmt.Sprintf("veth%d", i), IP: n.ip})
		if err != nil {
			return err
		}
		n.netns, n.path = tn.NetnsName, tn.Netns
		c.nodes = append(c.nodes, n)

		obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.NodeSpec{PodCIDR: n.podCIDR.String(), PodCIDRs: []string{n.podCIDR.String()}}}
		if obj, err = c.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip.String()}}
		if _, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("node %s status: %w", name, err)
		}
		fmt.Fprintf(c.out, "Node %-18s InternalIP %s podCIDR %s\n", name, n.ip, n.podCIDR)
	}
	return c.wire.WaitUp(ctx)
}

// startAgents runs an agent per node until teardown, and waits for each
// to have synced with the API and written its CNI configuration.
func (c *cluster) startAgents(ctx context.Context) error {
	log := slog.New(slog.NewTextHandler(c.log, nil))
	for _, n := range c.nodes {
		a, err := agent.New(agent.Config{
			Kubeconfig: c.kubeconfig, NodeName: n.name, Netns: n.path, PinPath: n.pinPath,
			Devices: []string{"eth0"}, NativeRoutingCIDR: nativeRouting, CNIConfDir: n.netconf,
			Logger: log.With("node", n.name),
		})
		if err != nil {
			return fmt.Errorf("agent on %s: %w", n.name, err)
		}
		actx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		c.undo = append(c.undo, func() error { return datapath.Cleanup(datapath.Location{PinPath: n.pinPath, Netns: n.path}) }, func() error {
			cancel()
			return <-done
		})
		select {
		case <-a.Synced():
		case err := <-done:
			return fmt.Errorf("agent on %s: %w", n.name, err)
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := waitFile(ctx, filepath.Join(n.netconf, agent.CNIConfFile)); err != nil {
			return fmt.Errorf("agent on %s: %w", n.name, err)
		}
	}
	fmt.Fprintf(c.out, "Agents: one per node, each wrote %s\n", agent.CNIConfFile)
	return nil
}

// addPods adds a web pod on every node and a client pod on the first,
// with cnitool and the agents' CNI configuration, and starts the web
// servers.
func (c *cluster) addPods(ctx context.Context) error {
	tool, plugins, err := cniTools(ctx, c.dir)
	if err != nil {
		return err
	}
	add := func(name string, n *node) (pod, error) {
		p := pod{name: name, netns: "hr-cluster-" + c.id + "-" + name, node: n}
		if p.path, err = topology.NewNetns(ctx, p.netns, nil); err != nil {
			return p, err
		}
		c.undo = append(c.undo, func() error { return routing.DeleteNetns(p.netns) })
		res, err := cnitool(n, tool, plugins, "add", p.path)
		if err != nil {
			return p, fmt.Errorf("add pod %s: %w", name, err)
		}
		c.undo = append(c.undo, func() error {
			_, err := cnitool(n, tool, plugins, "del", p.path)
			return err
		})
		var result struct{ IPs []struct{ Address string } }
		if err := json.Unmarshal(res, &result); err != nil || len(result.IPs) == 0 {
			return p, fmt.Errorf("pod %s: CNI result %s: %v", name, res, err)
		}
		prefix, err := netip.ParsePrefix(result.IPs[0].Address)
		p.ip = prefix.Addr()
		fmt.Fprintf(c.out, "Pod %-28s %-10s on %s (cnitool add, network %q)\n", p.name, p.ip, n.name, "hostrouting")
		return p, err
	}
	for _, n := range c.nodes {
		p, err := add("web-"+n.name, n)
		if err != nil {
			return err
		}
		if err := c.serve(p); err != nil {
			return err
		}
		c.web = append(c.web, p)
	}
	c.client0, err = add("client", c.nodes[0])
	return err
}

// serve runs an HTTP server in pod p on webPort that answers with its name.
func (c *cluster) serve(p pod) error {
	var ln net.Listener
	err := routing.Do(p.path, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", webPort))
		return err
	})
	if err != nil {
		return fmt.Errorf("web server in %s: %w", p.name, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s (%s)\n", p.name, p.ip)
	})}
	go srv.Serve(ln)
	c.undo = append(c.undo, srv.Close)
	return nil
}

// createService creates the seeds' NodePort service and, as the
// EndpointSlice controller would, its slice of the web pods.
func (c *cluster) createService(ctx context.Context) error {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromInt32(webPort), NodePort: nodePort}}}}
	svc, err := c.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create service: %w", err)
	}
	if c.clusterIP, err = netip.ParseAddr(svc.Spec.ClusterIP); err != nil {
		return fmt.Errorf("service ClusterIP %q: %w", svc.Spec.ClusterIP, err)
	}
	ready, name, port, proto := true, "http", int32(webPort), corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, p := range c.web {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &p.node.name})
	}
	if _, err := c.client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create endpoint slice: %w", err)
	}
	fmt.Fprintf(c.out, "Service default/web: ClusterIP %s:80, NodePort %d, 3 endpoints (port %d)\n", c.clusterIP, nodePort, webPort)
	return nil
}

// curl asks the ClusterIP from the client pod n times, and each node's
// NodePort from outside (the wire, as a client on kind's docker network),
// printing the answers; every curl must be answered.
func (c *cluster) curl(ctx context.Context, n int) error {
	ask := func(netns, url string) (string, error) {
		var out []byte
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			out, err = exec.CommandContext(ctx, "ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "2", url).CombinedOutput()
			if err == nil {
				return strings.TrimSpace(string(out)), nil
			}
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
		}
		return "", fmt.Errorf("curl %s in %s: %v: %s", url, netns, err, out)
	}
	fmt.Fprintf(c.out, "\nCurling\nFrom pod client (%s):\n", c.client0.ip)
	seen := map[string]bool{}
	for range n {
		url := fmt.Sprintf("http://%s/", c.clusterIP)
		answer, err := ask(c.client0.netns, url)
		if err != nil {
			return err
		}
		seen[answer] = true
		fmt.Fprintf(c.out, "  curl %s  →  %s\n", url, answer)
	}
	fmt.Fprintf(c.out, "From outside the cluster (the wire, %s):\n", topology.Gateway.Addr())
	for _, nd := range c.nodes {
		url := fmt.Sprintf("http://%s:%d/", nd.ip, nodePort)
		answer, err := ask(c.wire.NetnsName, url)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "  curl %s  →  %s\n", url, answer)
	}
	dp, err := datapath.Open(datapath.Location{PinPath: c.nodes[0].pinPath, Netns: c.nodes[0].path})
	if err != nil {
		return err
	}
	defer dp.Close()
	svcs, err := dp.Services()
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "\n%s's services (hrctl service list):\n", c.nodes[0].name)
	for _, s := range svcs {
		fmt.Fprintf(c.out, "  %s\n", s)
	}
	fmt.Fprintf(c.out, "%d of 3 web pods answered the ClusterIP in %d requests\n", len(seen), n)
	return nil
}

// waitFile waits up to 10 s for path to exist.
func waitFile(ctx context.Context, path string) error {
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := os.Stat(path)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// cniTools finds cnitool and builds the hostrouting plugin into dir; it
// returns cnitool's path and the CNI_PATH to run the conflist with.
func cniTools(ctx context.Context, dir string) (tool, cniPath string, err error) {
	if tool, err = exec.LookPath("cnitool"); err != nil {
		gopath, gerr := exec.CommandContext(ctx, "go", "env", "GOPATH").Output()
		tool = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "cnitool")
		if _, serr := os.Stat(tool); gerr != nil || serr != nil {
			return "", "", fmt.Errorf("cnitool not found (go install github.com/containernetworking/cni/cnitool@v1.3.1): %w", err)
		}
	}
	plugins := filepath.Join(dir, "plugins")
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(plugins, "hostrouting"),
		"github.com/hostrouting/hostrouting/examples/cni-hostrouting")
	if out, err := build.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("build the hostrouting CNI plugin: %v\n%s", err, out)
	}
	return tool, plugins + ":/usr/lib/cni", nil
}

// cnitool runs cnitool add or del for the pod at podNetns in node n's
// namespace, with the agent's configuration and libcni's state in a
// directory of the demo's own, and returns its output.
func cnitool(n *node, tool, cniPath, command, podNetns string) ([]byte, error) {
	const script = `mount --bind "$0" /var/lib && exec "$@"`
	cmd := exec.Command("ip", "netns", "exec", n.netns, "sh", "-c", script, n.varLib, tool, command, "hostrouting", podNetns)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+n.netconf, "CNI_PATH="+cniPath)
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		err = fmt.Errorf("cnitool %s: %w: %s%s", command, err, out, ee.Stderr)
	}
	return out, err
}
