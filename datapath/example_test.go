package datapath_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/examples/policy"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// The examples run under go test, as root: each builds its nodes and pods
// in throwaway network namespaces (exampleCluster) and pins below a fresh
// directory of /sys/fs/bpf, and removes all of it when it returns, also on
// failure. The machine's own network namespace is never changed.

// ExampleNew is the snippet at the top of README.md, line for line
// (TestREADMESnippet keeps them the same): start host routing on a node,
// route to another node's pods, put a pod on the datapath and ask its
// status.
func ExampleNew() {
	// Throwaway namespaces: this node ("control-plane", eth0 172.18.0.2/16)
	// and a worker (172.18.0.3) on one wire, and a pod's namespace.
	c := newExampleCluster()
	defer c.Close()
	pinPath, nodeNetns, podNetns := c.PinPath, c.Node.Netns, c.NewPodNetns("pod")
	workerIP, workerPodCIDR := c.Worker.IP, netip.MustParsePrefix("10.0.1.0/24")
	podIP := netip.MustParseAddr("10.0.0.10")

	start := func() error {
		dp, err := datapath.New(datapath.Config{
			PinPath:           pinPath,                             // a new directory below /sys/fs/bpf
			Netns:             nodeNetns,                           // the node's netns; "" for the caller's own
			Devices:           []string{"eth0"},                    // toward other nodes
			NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8"), // every node's pods
		})
		if err != nil {
			return err
		}
		defer dp.Close() // leaves it running (pinned): a restarted agent adopts it
		if err := dp.UpsertNode(datapath.Node{Name: "worker", IP: workerIP, PodCIDRs: []netip.Prefix{workerPodCIDR}}); err != nil {
			return err
		}
		// The pod's veth: routing.SetupVeth, or your CNI's (such as ptp).
		veth, err := routing.SetupVeth(routing.VethConfig{HostNetns: nodeNetns, HostIfName: "lxc1a2b3c",
			PodNetns: podNetns, Addr: netip.PrefixFrom(podIP, 32)})
		if err != nil {
			return err
		}
		ep, err := dp.AddEndpoint(datapath.Endpoint{IfName: veth.HostIfName, IP: podIP, MAC: veth.PodMAC})
		if err != nil {
			return err
		}
		st, err := dp.Status() // fmt.Print(st) prints all of it, as `cilium status` does
		if err != nil {
			return err
		}
		fmt.Printf("Host Routing: %s, endpoint %s (ID %d) on %s\n", st.HostRouting, ep.IP, ep.ID, veth.HostIfName)
		return nil
	}
	if err := start(); err != nil {
		fmt.Println(err)
	}
	// Output:
	// Host Routing: BPF, endpoint 10.0.0.10 (ID 1) on lxc1a2b3c
}

// Two pods on one node, wired ptp-like by routing.SetupVeth, talk through
// the datapath: bpf_redirect_peer moves their packets.
func ExampleDatapath_AddEndpoint() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()

	var pods []*datapathtest.Pod
	for _, pod := range []struct {
		name string
		ip   netip.Addr
	}{{"a", netip.MustParseAddr("10.0.0.10")}, {"b", netip.MustParseAddr("10.0.0.11")}} {
		podNetns := c.NewPodNetns(pod.name)
		veth, err := routing.SetupVeth(routing.VethConfig{HostNetns: c.Node.Netns, HostIfName: "lxc" + pod.name,
			PodNetns: podNetns, Addr: netip.PrefixFrom(pod.ip, 32)})
		if err != nil {
			fmt.Println(err)
			return
		}
		ep, err := dp.AddEndpoint(datapath.Endpoint{IfName: veth.HostIfName, IP: pod.ip, MAC: veth.PodMAC})
		if err != nil {
			fmt.Println(err)
			return
		}
		// The endpoint as `hrctl endpoint list` prints it, less the
		// ifindex and MACs, which differ from run to run.
		fmt.Println(strings.Join(strings.Fields(ep.String())[:3], " "))
		pods = append(pods, c.Pod(pod.name, podNetns, veth.HostIfName))
	}

	a, b := pods[0], pods[1]
	replies, err := a.Ping(b.IP, 3, 5*time.Second)
	fmt.Printf("ping %s → %s: %d of 3 replies %v\n", a.IP, b.IP, replies, err)
	m, err := dp.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("delivered with bpf_redirect_peer:", m.Total(maps.MetricForwardPeer).Packets >= 6)
	// Output:
	// 10.0.0.10:0 id=1 flags=0x0000
	// 10.0.0.11:0 id=2 flags=0x0000
	// ping 10.0.0.10 → 10.0.0.11: 3 of 3 replies <nil>
	// delivered with bpf_redirect_peer: true
}

// Calico-style pods have no gateway address on the host side
// (routing.VethConfig.NoHostAddress): nothing answers their ARP for
// 169.254.1.1 unless the datapath does, so their endpoints need
// ARPResponder. Without it every packet they send is lost, silently.
func ExampleDatapath_AddEndpoint_arpResponder() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()

	a := c.AddPod(c.Node, "a", netip.MustParseAddr("10.0.0.10"), true)
	b := c.AddPod(c.Node, "b", netip.MustParseAddr("10.0.0.11"), true)
	for _, p := range []*datapathtest.Pod{a, b} {
		ep, err := dp.AddEndpoint(datapath.Endpoint{IfName: p.HostIf, IP: p.IP, MAC: p.MAC, ARPResponder: true})
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(strings.Join(strings.Fields(ep.String())[:3], " "))
	}
	replies, err := a.Ping(b.IP, 3, 5*time.Second)
	fmt.Printf("ping %s → %s: %d of 3 replies %v\n", a.IP, b.IP, replies, err)
	m, err := dp.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ARP answered by the datapath:", m.Total(maps.MetricARPReply).Packets > 0)
	// Output:
	// 10.0.0.10:0 id=1 flags=0x0001
	// 10.0.0.11:0 id=2 flags=0x0001
	// ping 10.0.0.10 → 10.0.0.11: 3 of 3 replies <nil>
	// ARP answered by the datapath: true
}

// Pods on other nodes are reached by direct routes to their nodes: a pod's
// packets for them leave by bpf_fib_lookup and bpf_redirect_neigh out of
// eth0. Here the worker has no datapath; its kernel routes the replies back.
func ExampleDatapath_UpsertNode() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns,
		Devices: []string{"eth0"}, NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()
	a := c.AddPod(c.Node, "a", netip.MustParseAddr("10.0.0.10"), false)
	if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: a.HostIf, IP: a.IP, MAC: a.MAC}); err != nil {
		fmt.Println(err)
		return
	}
	w := c.AddPod(c.Worker, "w", netip.MustParseAddr("10.0.1.10"), false)

	err = dp.UpsertNode(datapath.Node{Name: "worker", IP: c.Worker.IP, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}})
	if err != nil {
		fmt.Println(err)
		return
	}
	nodes, err := dp.Nodes()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, n := range nodes {
		fmt.Println(n) // as `hrctl node list` prints it
	}
	// The worker's way back, as its own agent would make it.
	if err := routing.UpsertNodeRoutes(c.Worker.Netns, "eth0", c.Node.IP, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}); err != nil {
		fmt.Println(err)
		return
	}
	replies, err := a.Ping(w.IP, 3, 5*time.Second)
	fmt.Printf("ping %s → %s: %d of 3 replies %v\n", a.IP, w.IP, replies, err)
	m, err := dp.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("left by bpf_redirect_neigh:", m.Total(maps.MetricForwardNeigh).Packets >= 3)

	if err := dp.DeleteNode("worker"); err != nil {
		fmt.Println(err)
		return
	}
	replies, err = a.Ping(w.IP, 1, 300*time.Millisecond)
	fmt.Printf("after DeleteNode: %d of 1 replies %v\n", replies, err)
	// Output:
	// worker 172.18.0.3 10.0.1.0/24
	// ping 10.0.0.10 → 10.0.1.10: 3 of 3 replies <nil>
	// left by bpf_redirect_neigh: true
	// after DeleteNode: 0 of 1 replies <nil>
}

// Status says what `cilium status` would. Its attach mode, kernel
// features, pin path and map sizes depend on the kernel and the run; the
// example prints the lines that do not.
func ExampleDatapath_Status() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns,
		Devices: []string{"eth0"}, NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()
	a := c.AddPod(c.Node, "a", netip.MustParseAddr("10.0.0.10"), false)
	if _, err := dp.AddEndpoint(a.Endpoint()); err != nil {
		fmt.Println(err)
		return
	}

	st, err := dp.Status()
	if err != nil {
		fmt.Println(err)
		return
	}
	for line := range strings.Lines(st.String()) {
		for _, stable := range []string{"Host Routing:", "Devices:", "Native Routing:", "Endpoints:"} {
			if strings.HasPrefix(line, stable) {
				fmt.Print(line)
			}
		}
	}
	// Output:
	// Host Routing:     BPF
	// Devices:          [eth0 172.18.0.2 (Direct Routing)]
	// Native Routing:   10.0.0.0/8
	// Endpoints:        1
}

// An ingress policy written in C against bpf/include/hostrouting/policy.h
// (examples/policy, built with bpf2go) denies pod a's packets into pod b,
// until ClearIngressPolicy.
func ExampleDatapath_SetIngressPolicy() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()
	a := c.AddPod(c.Node, "a", netip.MustParseAddr("10.0.0.10"), false)
	b := c.AddPod(c.Node, "b", netip.MustParseAddr("10.0.0.11"), false)
	epA, err := dp.AddEndpoint(a.Endpoint())
	if err != nil {
		fmt.Println(err)
		return
	}
	epB, err := dp.AddEndpoint(b.Endpoint())
	if err != nil {
		fmt.Println(err)
		return
	}

	spec, err := policy.LoadPolicy()
	if err != nil {
		fmt.Println(err)
		return
	}
	replacements, err := dp.PolicyMapReplacements()
	if err != nil {
		fmt.Println(err)
		return
	}
	var objs policy.PolicyObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: replacements}); err != nil {
		fmt.Println(err)
		return
	}
	defer objs.Close() // the policy slot keeps its own reference
	if err := objs.Denied.Put(policy.PolicyPair{Endpoint: uint32(epB.ID), Source: uint32(epA.ID)}, uint8(1)); err != nil {
		fmt.Println(err)
		return
	}
	if err := dp.SetIngressPolicy(b.IP, objs.DenyListed); err != nil {
		fmt.Println(err)
		return
	}
	replies, err := a.Ping(b.IP, 3, time.Second)
	fmt.Printf("denied: %d of 3 replies %v\n", replies, err)

	if err := dp.ClearIngressPolicy(b.IP); err != nil {
		fmt.Println(err)
		return
	}
	replies, err = a.Ping(b.IP, 3, 5*time.Second)
	fmt.Printf("cleared: %d of 3 replies %v\n", replies, err)
	// Output:
	// denied: 0 of 3 replies <nil>
	// cleared: 3 of 3 replies <nil>
}

// A ClusterIP service with two backends on the node, in the datapath:
// pods connect to the frontend and reach a backend with no iptables rule
// or nf_conntrack entry (kube-proxy replacement); the service prints as a
// `cilium service list` row.
func ExampleDatapath_UpsertService() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns,
		Devices: []string{"eth0"}, NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()
	client := c.AddPod(c.Node, "client", netip.MustParseAddr("10.0.0.10"), false)
	pods := []*datapathtest.Pod{client}
	var backends []datapath.Backend
	for i, ip := range []string{"10.0.0.21", "10.0.0.22"} {
		b := c.AddPod(c.Node, fmt.Sprint("b", i), netip.MustParseAddr(ip), false)
		srv, err := netcheck.ServeTCPEcho(b.Netns, netip.AddrPortFrom(b.IP, 8080))
		if err != nil {
			fmt.Println(err)
			return
		}
		defer srv.Close()
		pods = append(pods, b)
		backends = append(backends, datapath.Backend{Addr: netip.AddrPortFrom(b.IP, 8080)})
	}
	for _, p := range pods {
		if _, err := dp.AddEndpoint(p.Endpoint()); err != nil {
			fmt.Println(err)
			return
		}
	}

	frontend := netip.MustParseAddrPort("10.96.0.10:80")
	id, err := dp.UpsertService(datapath.Service{Frontend: frontend, Protocol: datapath.TCP, Backends: backends})
	if err != nil {
		fmt.Println(err)
		return
	}
	svcs, err := dp.Services()
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(svcs[0])
	for range 4 {
		err = client.TCPEcho(frontend.Addr(), frontend.Port(), []byte("hello"), 5*time.Second)
		fmt.Println("echo through", frontend, err)
	}
	if err := dp.DeleteService(id); err != nil {
		fmt.Println(err)
		return
	}
	err = client.TCPEcho(frontend.Addr(), frontend.Port(), []byte("hello"), 300*time.Millisecond)
	fmt.Println("after DeleteService:", err != nil)
	// Output:
	// 1    10.96.0.10:80/TCP          ClusterIP    1 => 10.0.0.21:8080/TCP (active)
	//                                              2 => 10.0.0.22:8080/TCP (active)
	// echo through 10.96.0.10:80 <nil>
	// echo through 10.96.0.10:80 <nil>
	// echo through 10.96.0.10:80 <nil>
	// echo through 10.96.0.10:80 <nil>
	// after DeleteService: true
}

// The monitor shows what host routing does with a ping, which tcpdump on
// the destination's host veth would not see: each packet's decision,
// with its bytes.
func ExampleDatapath_OpenMonitor() {
	c := newExampleCluster()
	defer c.Close()
	dp, err := datapath.New(datapath.Config{PinPath: c.PinPath, Netns: c.Node.Netns})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer dp.Close()
	a := c.AddPod(c.Node, "a", netip.MustParseAddr("10.0.0.10"), false)
	b := c.AddPod(c.Node, "b", netip.MustParseAddr("10.0.0.11"), false)
	for _, p := range []*datapathtest.Pod{a, b} {
		if _, err := dp.AddEndpoint(p.Endpoint()); err != nil {
			fmt.Println(err)
			return
		}
	}
	mon, err := dp.OpenMonitor()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mon.Close()
	if err := dp.SetMonitor(datapath.MonitorAll, 0); err != nil {
		fmt.Println(err)
		return
	}
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		a.Ping(b.IP, 1, time.Second)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	seen := 0
	mon.Run(ctx, func(e datapath.Event) {
		if e.Reason != maps.MetricForwardPeer { // the ARP for the gateway
			return
		}
		fmt.Printf("%s %s, %d of %d bytes\n", e.Direction, e.Reason, len(e.Data), e.Len)
		if seen++; seen == 2 {
			cancel()
		}
	})
	<-pinged
	// Output:
	// from-container forward-peer, 98 of 98 bytes
	// from-container forward-peer, 98 of 98 bytes
}

// exampleCluster is the examples' throwaway world: two kind-like nodes on
// a wire (internal/topology), Node ("control-plane", eth0 172.18.0.2/16)
// and Worker (172.18.0.3), pod namespaces made with routing.CreateNetns,
// and a fresh pin path below /sys/fs/bpf. Close removes the datapath
// pinned there and every namespace. Its methods panic on error, which
// fails the example once its deferred Close has run.
type exampleCluster struct {
	PinPath      string
	Node, Worker *topology.Node

	prefix string
	wire   *topology.Wire
	undo   []func() error // run in reverse by Close, before the wire goes
}

func newExampleCluster() *exampleCluster {
	if os.Geteuid() != 0 {
		panic("the examples need root: they create network namespaces")
	}
	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	ctx := context.Background()
	w, err := topology.NewWire(ctx, topology.Options{Prefix: "hr-ex-" + id})
	if err != nil {
		panic(err)
	}
	c := &exampleCluster{PinPath: filepath.Join(loader.DefaultBPFFS, "hrexample-"+id), prefix: "hr-ex-" + id, wire: w}
	if c.Node, err = w.AddNode(ctx, topology.NodeOptions{Name: "control-plane", Port: "veth0", IP: topology.NodeIP(0)}); err == nil {
		c.Worker, err = w.AddNode(ctx, topology.NodeOptions{Name: "worker", Port: "veth1", IP: topology.NodeIP(1)})
	}
	if err == nil {
		err = w.WaitUp(ctx)
	}
	if err != nil {
		c.Close()
		panic(err)
	}
	return c
}

// NewPodNetns makes a pod's namespace, IPv6 off, and returns its path.
func (c *exampleCluster) NewPodNetns(name string) string {
	nsName := c.prefix + "-pod-" + name
	path, err := routing.CreateNetns(nsName)
	if err != nil {
		panic(err)
	}
	c.undo = append(c.undo, func() error { return routing.DeleteNetns(nsName) })
	if err := routing.DisableIPv6(path); err != nil {
		panic(err)
	}
	return path
}

// Pod describes a pod wired to Node for the traffic helpers
// (datapathtest.Node.LookupPod).
func (c *exampleCluster) Pod(name, podNetns, hostIf string) *datapathtest.Pod {
	return c.pod(c.Node, name, podNetns, hostIf)
}

func (c *exampleCluster) pod(node *topology.Node, name, podNetns, hostIf string) *datapathtest.Pod {
	n := &datapathtest.Node{Name: node.Name, NetnsName: node.NetnsName, Netns: node.Netns}
	p, err := n.LookupPod(name, podNetns, "eth0", hostIf)
	if err != nil {
		panic(err)
	}
	return p
}

// AddPod makes a pod with address ip on node, wired by routing.SetupVeth
// (Calico-style with noHostAddress) to the host device "lxc"+name.
func (c *exampleCluster) AddPod(node *topology.Node, name string, ip netip.Addr, noHostAddress bool) *datapathtest.Pod {
	path := c.NewPodNetns(name)
	hostIf := "lxc" + name
	_, err := routing.SetupVeth(routing.VethConfig{HostNetns: node.Netns, HostIfName: hostIf, PodNetns: path,
		Addr: netip.PrefixFrom(ip, 32), NoHostAddress: noHostAddress})
	if err != nil {
		panic(err)
	}
	c.undo = append(c.undo, func() error { return routing.DeleteVeth(node.Netns, hostIf) })
	return c.pod(node, name, path, hostIf)
}

// Close removes the datapath, the pods and the namespaces, and prints what
// it could not remove, so that the example fails.
func (c *exampleCluster) Close() {
	errs := []error{datapath.Cleanup(datapath.Location{PinPath: c.PinPath, Netns: c.Node.Netns})}
	for i := len(c.undo) - 1; i >= 0; i-- {
		errs = append(errs, c.undo[i]())
	}
	errs = append(errs, c.wire.Close())
	if _, err := os.Stat(c.PinPath); !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("pin path %s left behind (%v)", c.PinPath, err), os.RemoveAll(c.PinPath))
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Println("cleanup:", err)
	}
}

// TestREADMESnippet checks that the Go snippet at the top of README.md is
// ExampleNew's, line for line, so that it compiles and runs.
func TestREADMESnippet(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, snippet, ok := strings.Cut(string(readme), "```go\n")
	snippet, _, ok2 := strings.Cut(snippet, "```")
	if !ok || !ok2 {
		t.Fatal("README.md has no ```go snippet")
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for s := bufio.NewScanner(strings.NewReader(string(src))); s.Scan(); {
		lines = append(lines, s.Text())
	}
	want := strings.Split(strings.TrimSuffix(snippet, "\n"), "\n")
	// The snippet sits in ExampleNew's start func, indented by two tabs.
	for i, l := range lines {
		if l != "\t\t"+want[0] {
			continue
		}
		for j, w := range want {
			if w != "" {
				w = "\t\t" + w
			}
			if i+j >= len(lines) || lines[i+j] != w {
				t.Fatalf("README.md's snippet differs from ExampleNew at its line %d:\nREADME:  %q\nexample: %q", j+1, w, lines[min(i+j, len(lines)-1)])
			}
		}
		return
	}
	t.Fatalf("README.md's snippet does not begin with a line of ExampleNew: %q", want[0])
}
