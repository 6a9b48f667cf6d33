// Command service runs the seeds' NodePort demo: kube-proxy replacement by
// the hostrouting datapath, with no kube-proxy, no iptables rule and no
// nf_conntrack entry for the service.
//
// It builds a kind-like cluster of three nodes, control-plane, worker and
// worker2: a "wire" namespace holding the bridge br0 (the docker bridge,
// 172.18.0.1/16) and node namespaces whose eth0 hangs on it as 172.18.0.2,
// .3 and .4, owning the pod CIDRs 10.0.0.0/24, 10.0.1.0/24 and
// 10.0.2.0/24. Every node runs the datapath on eth0 with the native routing
// CIDR 10.0.0.0/8 and BPF masquerade, routing the other nodes' pod CIDRs
// directly (UpsertNode). Then, as the seeds' cni-demo.yaml:
//
//   - a DaemonSet "web": one pod per node (web-control-plane 10.0.0.10,
//     web-worker 10.0.1.10, web-worker2 10.0.2.10), each a process of this
//     program in the pod's namespace serving HTTP on port 80 with its name,
//     its address and the client's address as it saw it;
//   - a Service "web" of type NodePort: the ClusterIP 10.96.0.100:80 and
//     nodePort 32000, which in the datapath, as `cilium service list`
//     shows, is a service of its own on every node address (ID per
//     frontend), all with the three pods as backends;
//   - a client pod "net" on worker2 (`kubectl run net`).
//
// The client pod requests the ClusterIP until each backend has answered and
// the NodePort of another node (control-plane's 172.18.0.2:32000, as the
// seed's `kubectl exec net -- curl 172.18.0.2:32000`); a client on the wire
// requests the NodePort of every node. The client pod's processes are in a
// cgroup with socket-level load balancing (as Cilium's kube-proxy
// replacement has it), so their sockets connect to the backend itself: the
// kernel's socket table shows the backend where getpeername shows the
// ClusterIP. The demo prints who answered each request and whom the
// backend saw as the client, control-plane's services in the shape of
// `cilium service list`, and what `iptables-save` and `conntrack -L` in
// every node's namespace have for 32000 and the ClusterIP: nothing, though
// kube-proxy's conntrack rule in each node's FORWARD chain turns
// nf_conntrack on there (a control ping from the wire shows up in it). It
// checks these claims and fails if one does not hold, then removes
// everything it made.
//
// Run it as root (it uses ip, iptables-save and conntrack):
//
//	go run ./examples/service                  # socket LB for the client pod
//	go run ./examples/service --socket-lb=false # the tc load balancer only
//	go run ./examples/service --keep           # leave it up to poke around
//
// The machine's root network namespace is never changed: everything lives
// in namespaces named hr-service-<random>-*, each node's BPF objects are
// pinned under /sys/fs/bpf/hostrouting-service-<random>-<node>, and the
// socket-LB cgroup is a child hr-service-<random> of the cgroup2 root that
// holds only the client pod's requests.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// options configure one run of the demo.
type options struct {
	Keep     bool   // leave everything up after a successful run
	SocketLB bool   // the client pod's requests in a cgroup with socket LB
	Count    int    // requests to each NodePort; the ClusterIP gets at least twice as many
	ID       string // names the namespaces, pin directories and cgroup; default random
}

func main() {
	if code, ok := childMain(); ok {
		os.Exit(code)
	}
	opts := options{SocketLB: true}
	flag.BoolVar(&opts.Keep, "keep", false, "leave the cluster, its pods and services up and print how to poke at them and how to remove them")
	flag.BoolVar(&opts.SocketLB, "socket-lb", true, "run the client pod's requests in a cgroup with socket-level load balancing (Cilium's default with kube-proxy replacement); false leaves them to the tc load balancer")
	flag.IntVar(&opts.Count, "count", 3, "requests to each NodePort; the ClusterIP gets at least twice as many, and more until every backend has answered")
	flag.Parse()
	if flag.NArg() > 0 || opts.Count < 1 || opts.Count > 100 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

// The cluster's addressing: kind's nodes on the wire's 172.18.0.0/16
// (topology.Gateway), pods in the native routing CIDR as Cilium's
// ipv4NativeRoutingCIDR=10.0.0.0/8, and the service of the seeds'
// cni-demo.yaml.
var (
	nativeRouting = netip.MustParsePrefix("10.0.0.0/8")
	clusterIP     = netip.MustParseAddrPort("10.96.0.100:80")
)

const (
	nodePort   = 32000
	targetPort = 80
	// maxClusterIPRequests bounds the requests to the ClusterIP: with
	// three backends picked at random, all answer within 30 but for a
	// chance of 2e-5.
	maxClusterIPRequests = 30
)

// nodeNames are the nodes, as kind names a cluster of a control plane and
// two workers (without the cluster's name in front).
var nodeNames = []string{"control-plane", "worker", "worker2"}

// clientNode is the index of the node the client pod "net" runs on, and
// targetNode that of the node whose NodePort it requests.
const (
	clientNode = 2
	targetNode = 0
)

// node is one node of the demo's cluster.
type node struct {
	name    string     // "worker2"
	ip      netip.Addr // eth0's address
	podCIDR netip.Prefix
	netns   string // name under /var/run/netns
	path    string // path of the namespace
	pinPath string
	dp      *datapath.Datapath
}

// pod is one pod of the demo.
type pod struct {
	name   string // "web-worker2"
	ip     netip.Addr
	node   *node
	hostIf string // the node-side device
	netns  string // name under /var/run/netns
	path   string // path of the namespace
	veth   *routing.Veth
	server *server // the web pods' HTTP server
}

// cluster is what run made.
type cluster struct {
	prefix string // of every namespace's name
	wire   *topology.Wire
	nodes  []*node
	web    []*pod // one per node, in the nodes' order
	client *pod   // "net"
	cgroup string // the socket-LB cgroup; "" without
}

// newCluster lays out the cluster of run id: the nodes and pods, their
// names and addresses, nothing made yet.
func newCluster(id string) *cluster {
	c := &cluster{prefix: "hr-service-" + id}
	for i, name := range nodeNames {
		n := &node{
			name:    name,
			ip:      topology.NodeIP(i),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24),
			netns:   c.prefix + "-" + name,
			pinPath: pinPrefix(id) + "-" + name,
		}
		c.nodes = append(c.nodes, n)
		c.web = append(c.web, &pod{name: "web-" + name, ip: podIP(i, 10), node: n, hostIf: "lxcweb", netns: c.prefix + "-web-" + name})
	}
	c.client = &pod{name: "net", ip: podIP(clientNode, 20), node: c.nodes[clientNode], hostIf: "lxcnet", netns: c.prefix + "-net"}
	return c
}

// pods returns the web pods and the client.
func (c *cluster) pods() []*pod {
	return append(append([]*pod{}, c.web...), c.client)
}

// run builds the cluster, pods and services, sends the requests, prints
// and checks the claims, and removes everything unless opts.Keep — always
// when it fails or ctx ends.
func run(ctx context.Context, opts options, out io.Writer) (err error) {
	if opts.Count <= 0 {
		opts.Count = 3
	}
	if opts.ID == "" {
		b := make([]byte, 4)
		rand.Read(b)
		opts.ID = hex.EncodeToString(b)
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the demo runs %s in the nodes' namespaces: %w (apt-get install iproute2 iptables conntrack)", tool, err)
		}
	}
	c := newCluster(opts.ID)

	// Teardown runs what was set up in reverse, also on failure.
	var undo []func() error
	kept := false
	defer func() {
		if kept {
			return
		}
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		if terr := errors.Join(errs...); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		} else if len(undo) > 0 {
			cgroup := ""
			if c.cgroup != "" {
				cgroup = " the cgroup,"
			}
			fmt.Fprintf(out, "\nRemoved everything: the pods' servers, the datapaths and %s-*,%s the namespaces %s-*.\n",
				pinPrefix(opts.ID), cgroup, c.prefix)
		}
	}()

	if opts.SocketLB {
		root, err := cgroup2Root()
		if err != nil {
			return fmt.Errorf("socket LB needs a cgroup of its own (or run with --socket-lb=false): %w", err)
		}
		c.cgroup = filepath.Join(root, c.prefix)
		if err := os.Mkdir(c.cgroup, 0o755); err != nil {
			return fmt.Errorf("make the socket-LB cgroup: %w", err)
		}
		undo = append(undo, func() error { return removeCgroup(c.cgroup) })
	}

	// The wire: br0 as the docker bridge, with the nodes' gateway on it
	// and their eth0 hanging on it.
	c.wire, err = topology.NewWire(ctx, topology.Options{Prefix: c.prefix})
	if err != nil {
		return err
	}
	undo = append(undo, c.wire.Close)
	for i, n := range c.nodes {
		tn, err := c.wire.AddNode(ctx, topology.NodeOptions{Name: n.name, Port: fmt.Sprintf("veth-node%d", i), IP: n.ip})
		if err != nil {
			return err
		}
		n.netns, n.path = tn.NetnsName, tn.Netns
	}
	pods := c.pods()
	for _, p := range pods {
		if p.path, err = topology.NewNetns(ctx, p.netns, nil); err != nil {
			return err
		}
		undo = append(undo, func() error { return routing.DeleteNetns(p.netns) })
		p.veth, err = routing.SetupVeth(routing.VethConfig{
			HostNetns: p.node.path, HostIfName: p.hostIf, PodNetns: p.path, Addr: netip.PrefixFrom(p.ip, 32),
		})
		if err != nil {
			return err
		}
		undo = append(undo, func() error { return routing.DeleteVeth(p.node.path, p.hostIf) })
	}
	// Until the kernel's link watcher has brought a device up it drops
	// what is sent, and the first ARP request would cost a second.
	if err := c.wire.WaitUp(ctx); err != nil {
		return err
	}
	for _, p := range pods {
		if err := netcheck.WaitOperUp(ctx, p.node.path, p.hostIf, 5*time.Second); err != nil {
			return fmt.Errorf("%s: %w", p.node.name, err)
		}
		if err := netcheck.WaitOperUp(ctx, p.path, p.veth.PodIfName, 5*time.Second); err != nil {
			return fmt.Errorf("pod %s: %w", p.name, err)
		}
	}

	// The datapath on every node, each routing the others' pod CIDRs;
	// the client's node balances its pods' sockets in the cgroup.
	for i, n := range c.nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		undo = append(undo, func() error { return os.RemoveAll(n.pinPath) }) // should New fail halfway
		cfg := datapath.Config{
			PinPath:           n.pinPath,
			Netns:             n.path,
			Devices:           []string{"eth0"},
			NativeRoutingCIDR: nativeRouting,
		}
		if i == clientNode {
			cfg.CgroupPath = c.cgroup
		}
		n.dp, err = datapath.New(cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		undo = append(undo, n.dp.Remove)
	}
	for _, n := range c.nodes {
		for _, other := range c.nodes {
			if other == n {
				continue
			}
			err := n.dp.UpsertNode(datapath.Node{Name: other.name, IP: other.ip, PodCIDRs: []netip.Prefix{other.podCIDR}})
			if err != nil {
				return fmt.Errorf("%s: %w", n.name, err)
			}
		}
	}
	for _, p := range pods {
		if _, err := p.node.dp.AddEndpoint(datapath.Endpoint{IfName: p.hostIf, IP: p.ip, MAC: p.veth.PodMAC}); err != nil {
			return fmt.Errorf("%s: %w", p.node.name, err)
		}
	}
	// The INVALID-drop rule kube-proxy puts in KUBE-FORWARD, here in
	// FORWARD: its conntrack match turns nf_conntrack on in the node, so
	// that every flow the node's stack sees is tracked from now on, and a
	// translated flow that passed the stack half-way would be dropped.
	for _, n := range c.nodes {
		if _, err := nsCommand(ctx, n.netns, "iptables", append([]string{"-w"}, strings.Fields(kubeProxyRule)...)...); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}

	// The DaemonSet's pods serve; the service has them as backends.
	for _, p := range c.web {
		if p.server, err = startServer(ctx, c, p); err != nil {
			return fmt.Errorf("pod %s: %w", p.name, err)
		}
		undo = append(undo, p.server.stop)
	}
	var backends []datapath.Backend
	for _, p := range c.web {
		backends = append(backends, datapath.Backend{Addr: netip.AddrPortFrom(p.ip, targetPort)})
	}
	for _, n := range c.nodes {
		for _, svc := range []datapath.Service{
			{Frontend: clusterIP, Protocol: datapath.TCP, Type: datapath.ClusterIP, Backends: backends},
			{Frontend: netip.AddrPortFrom(n.ip, nodePort), Protocol: datapath.TCP, Type: datapath.NodePort, Backends: backends},
		} {
			if _, err := n.dp.UpsertService(svc); err != nil {
				return fmt.Errorf("%s: %w", n.name, err)
			}
		}
	}

	printCluster(out, c, opts)
	results, err := sendRequests(ctx, out, c, opts)
	if err != nil {
		return err
	}
	services, err := c.nodes[targetNode].dp.Services()
	if err != nil {
		return err
	}
	printServices(out, c.nodes[targetNode], services)
	nf, err := inspectNetfilter(ctx, out, c)
	if err != nil {
		return err
	}
	if err := checkClaims(c, opts, results, services, nf); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nAll claims hold: every request answered, every backend behind the ClusterIP, each backend saw the client it should, no iptables rule and no nf_conntrack entry for the service.\n")

	if opts.Keep {
		kept = true
		var errs []error
		for _, p := range c.web {
			errs = append(errs, p.server.keep())
		}
		for _, n := range c.nodes {
			errs = append(errs, n.dp.Close())
		}
		printKept(out, c, opts)
		return errors.Join(errs...)
	}
	return nil
}

// pinPrefix begins the pin directory of every node of run id.
func pinPrefix(id string) string {
	return filepath.Join(loader.DefaultBPFFS, "hostrouting-service-"+id)
}

// podIP returns 10.0.node.host, in node's pod CIDR.
func podIP(node int, host byte) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 0, byte(node), host})
}

// nsCommand runs name with args in the network namespace nsName (`ip
// netns exec`) and returns its output, stdout and stderr together; its
// error names the command and has the output.
func nsCommand(ctx context.Context, nsName, name string, args ...string) (string, error) {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	o, err := exec.CommandContext(tctx, "ip", append([]string{"netns", "exec", nsName, name}, args...)...).CombinedOutput()
	if err == nil {
		return string(o), nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return string(o), cerr
	}
	return string(o), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, o)
}

// printCluster describes the cluster as kubectl would.
func printCluster(out io.Writer, c *cluster, opts options) {
	fmt.Fprintf(out, "kube-proxy replacement by eBPF host routing: the seeds' NodePort demo\n")
	fmt.Fprintf(out, "Wire netns %s: br0 %s (the docker bridge the kind nodes hang on)\n", c.wire.NetnsName, topology.Gateway)
	fmt.Fprintf(out, "Nodes (datapath on eth0, native routing CIDR %s, BPF masquerade, direct routes to the other nodes' pod CIDRs):\n", nativeRouting)
	for _, n := range c.nodes {
		fmt.Fprintf(out, "  %-14s eth0 %-11s pod CIDR %-12s netns %s  pins %s\n", n.name, n.ip, n.podCIDR, n.netns, n.pinPath)
	}
	fmt.Fprintf(out, "\n$ kubectl get pods -o wide\n")
	fmt.Fprintf(out, "  %-18s %-10s %-14s %s\n", "NAME", "IP", "NODE", "NETNS")
	for _, p := range c.pods() {
		fmt.Fprintf(out, "  %-18s %-10s %-14s %s\n", p.name, p.ip, p.node.name, p.netns)
	}
	fmt.Fprintf(out, "\n$ kubectl get svc web\n")
	fmt.Fprintf(out, "  %-6s %-9s %-12s %-12s %s\n", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)")
	fmt.Fprintf(out, "  %-6s %-9s %-12s %-12s %d:%d/TCP\n", "web", "NodePort", clusterIP.Addr(), "<none>", clusterIP.Port(), nodePort)
	fmt.Fprintf(out, "Every node's datapath has the ClusterIP %s and its own address:%d, each with the three web pods' port %d as backends.\n",
		clusterIP, nodePort, targetPort)
	if opts.SocketLB {
		fmt.Fprintf(out, "Pod net's requests run in the cgroup %s, where %s's datapath balances sockets at connect time.\n", c.cgroup, c.client.node.name)
	} else {
		fmt.Fprintf(out, "No socket LB (--socket-lb=false): the tc load balancer on pod net's lxc translates its packets.\n")
	}
}

// printKept tells how to poke at what --keep left running and how to
// remove it.
func printKept(out io.Writer, c *cluster, opts options) {
	cp, w2 := c.nodes[targetNode], c.nodes[clientNode]
	var pids []string
	for _, p := range c.web {
		pids = append(pids, fmt.Sprint(p.server.pid()))
	}
	remove := []string{"kill " + strings.Join(pids, " "), "rm -r " + pinPrefix(opts.ID) + "-*"}
	if c.cgroup != "" {
		remove = append(remove, "rmdir "+c.cgroup)
	}
	for _, p := range c.pods() {
		remove = append(remove, "ip netns del "+p.netns)
	}
	for _, n := range c.nodes {
		remove = append(remove, "ip netns del "+n.netns)
	}
	remove = append(remove, "ip netns del "+c.wire.NetnsName)

	fmt.Fprintf(out, "\nLeft running (--keep): the web pods' HTTP servers are processes %s. Poke at it with:\n", strings.Join(pids, " "))
	fmt.Fprintf(out, "  ip netns exec %s curl -s http://%s/   # from pod net, by the tc load balancer (your shell is in no socket-LB cgroup)\n", c.client.netns, clusterIP)
	if c.cgroup != "" {
		fmt.Fprintf(out, "  sh -c 'echo $$ >%s/cgroup.procs && exec ip netns exec %s curl -s http://%s/'   # by socket LB\n", c.cgroup, c.client.netns, clusterIP)
	}
	fmt.Fprintf(out, "  ip netns exec %s tcpdump -ni eth0 tcp   # meanwhile: the SYN's destination\n", c.client.netns)
	fmt.Fprintf(out, "  ip netns exec %s curl -s http://%s:%d/   # a NodePort from the wire\n", c.wire.NetnsName, cp.ip, nodePort)
	fmt.Fprintf(out, "  ip netns exec %s iptables-save | grep -E '%s'\n", w2.netns, iptablesPattern)
	fmt.Fprintf(out, "  ip netns exec %s conntrack -L | grep -E '%s'\n", w2.netns, conntrackPattern)
	fmt.Fprintf(out, "  ip netns exec %s go -C examples/hrctl run . --pin-path %s status\n", w2.netns, w2.pinPath)
	fmt.Fprintf(out, "  ls -R %s   # maps, programs, links (cgroup_* for socket LB)\n", w2.pinPath)
	fmt.Fprintf(out, "Remove it with:\n  %s\n", strings.Join(remove, " && "))
}
