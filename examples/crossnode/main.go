// Command crossnode shows eBPF host routing between pods on different nodes
// with native routing: plain routed packets, no tunnel.
//
// It builds a small kind-like cluster: a "wire" namespace holding the bridge
// br0 (the docker bridge, 172.18.0.1/16) and three node namespaces whose
// eth0 hangs on it as 172.18.0.2, .3 and .4, owning the pod CIDRs
// 10.0.0.0/24, 10.0.1.0/24 and 10.0.2.0/24. Every node runs a datapath on
// eth0 with the native routing CIDR 10.0.0.0/8 and routes the other nodes'
// pod CIDRs directly to them (UpsertNode, Cilium's autoDirectNodeRoutes).
// Pod A (10.0.0.10) lives on node1, pod B (10.0.1.10) on node2.
//
// The demo pings A→B and B→A with real ICMP echoes and echoes a few KB over
// TCP from A to B, then prints what the devices of both nodes saw. A packet
// leaving a pod enters its lxc device, where from-container looks up the
// route with bpf_fib_lookup and sends it out of eth0 with bpf_redirect_neigh;
// on the other node from-netdev on eth0 puts it into the destination pod
// with bpf_redirect_peer. So each lxc carries only what its own pod sends,
// never what arrives for it, and neither node's netfilter FORWARD chain
// counts a packet. The demo checks these claims and fails if they do not
// hold. Then it removes everything it made.
//
// Run it as root:
//
//	go run ./examples/crossnode             # bpf_redirect_neigh + bpf_redirect_peer
//	go run ./examples/crossnode --fallback  # bpf_redirect only: the destination's lxc transmits
//	go run ./examples/crossnode --keep      # leave it up to inspect
//
// The machine's root network namespace is never changed: everything lives
// in namespaces named hr-crossnode-<random>-*, and each node's BPF objects
// are pinned under /sys/fs/bpf/hostrouting-crossnode-<random>-<node>.
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
	Fallback bool   // bpf_fib_lookup + bpf_redirect only (Disable.RedirectPeer and .RedirectNeigh)
	Keep     bool   // leave everything up after a successful run
	Count    int    // echo requests each way; default 5
	ID       string // names the namespaces and pin directories; default random
}

func main() {
	var opts options
	flag.BoolVar(&opts.Fallback, "fallback", false, "disable bpf_redirect_peer and bpf_redirect_neigh: forward with bpf_fib_lookup + bpf_redirect and deliver through the pods' host devices")
	flag.BoolVar(&opts.Keep, "keep", false, "leave the cluster up and print how to inspect and remove it")
	flag.IntVar(&opts.Count, "count", 5, "echo requests each way")
	flag.Parse()
	if flag.NArg() > 0 || opts.Count < 1 || opts.Count > 1000 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "crossnode:", err)
		os.Exit(1)
	}
}

// The pods' addressing, as in a kind cluster running Cilium with
// ipv4NativeRoutingCIDR=10.0.0.0/8; the nodes are on the wire's
// 172.18.0.0/16 (topology.Gateway).
var nativeRouting = netip.MustParsePrefix("10.0.0.0/8")

// node is one node of the demo's cluster.
type node struct {
	name    string     // "node1"
	ip      netip.Addr // eth0's address
	podCIDR netip.Prefix
	netns   string // name under /var/run/netns
	path    string // path of the namespace
	pinPath string
	dp      *datapath.Datapath
}

// pod is one pod of the demo.
type pod struct {
	name   string // "A"
	ip     netip.Addr
	node   *node
	hostIf string // the node-side device
	netns  string // name under /var/run/netns
	path   string // path of the namespace
	veth   *routing.Veth
}

// run builds the cluster and pods, pings and echoes across, prints and
// checks the counters, and removes everything unless opts.Keep — always when
// it fails or ctx ends.
func run(ctx context.Context, opts options, out io.Writer) (err error) {
	if opts.Count <= 0 {
		opts.Count = 5
	}
	if opts.ID == "" {
		b := make([]byte, 4)
		rand.Read(b)
		opts.ID = hex.EncodeToString(b)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return fmt.Errorf("the demo counts the nodes' netfilter FORWARD chains with iptables: %w", err)
	}
	prefix := "hr-crossnode-" + opts.ID

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
			fmt.Fprintf(out, "\nRemoved everything: the datapaths and %s-*, the veths, the namespaces %s-*.\n",
				filepath.Join(loader.DefaultBPFFS, "hostrouting-crossnode-"+opts.ID), prefix)
		}
	}()

	// The wire: br0 as the docker bridge, with the nodes' gateway on it
	// and their eth0 hanging on it.
	wire, err := topology.NewWire(ctx, topology.Options{Prefix: prefix})
	if err != nil {
		return err
	}
	undo = append(undo, wire.Close)
	var nodes []*node
	for i := range 3 {
		n := &node{
			name:    fmt.Sprintf("node%d", i+1),
			ip:      topology.NodeIP(i),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24),
			pinPath: filepath.Join(loader.DefaultBPFFS, fmt.Sprintf("hostrouting-crossnode-%s-node%d", opts.ID, i+1)),
		}
		tn, err := wire.AddNode(ctx, topology.NodeOptions{Name: n.name, Port: "veth-" + n.name, IP: n.ip})
		if err != nil {
			return err
		}
		n.netns, n.path = tn.NetnsName, tn.Netns
		nodes = append(nodes, n)
	}

	pods := []*pod{
		{name: "A", ip: netip.MustParseAddr("10.0.0.10"), node: nodes[0], hostIf: "lxcA", netns: prefix + "-a"},
		{name: "B", ip: netip.MustParseAddr("10.0.1.10"), node: nodes[1], hostIf: "lxcB", netns: prefix + "-b"},
	}
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
	if err := wire.WaitUp(ctx); err != nil {
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

	// Host routing on every node, each routing the others' pod CIDRs.
	for _, n := range nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		undo = append(undo, func() error { return os.RemoveAll(n.pinPath) }) // should New fail halfway
		n.dp, err = datapath.New(datapath.Config{
			PinPath:           n.pinPath,
			Netns:             n.path,
			Devices:           []string{"eth0"},
			NativeRoutingCIDR: nativeRouting,
			Disable:           loader.Disable{RedirectPeer: opts.Fallback, RedirectNeigh: opts.Fallback},
		})
		if err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
		undo = append(undo, n.dp.Remove)
	}
	for _, n := range nodes {
		for _, other := range nodes {
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

	fmt.Fprintf(out, "Cross-node host routing with %s\n", modeName(opts))
	fmt.Fprintf(out, "Wire netns %s: br0 %s (the docker bridge the kind nodes hang on)\n", wire.NetnsName, topology.Gateway)
	for _, n := range nodes {
		fmt.Fprintf(out, "  %s  eth0 %s  pod CIDR %s  netns %s  pins %s\n", n.name, n.ip, n.podCIDR, n.netns, n.pinPath)
		for _, p := range pods {
			if p.node == n {
				fmt.Fprintf(out, "         pod %s %s  netns %s  eth0 %s <-> %s (ifindex %d, %s)\n",
					p.name, p.ip, p.netns, p.veth.PodMAC, p.hostIf, p.veth.HostIfIndex, p.veth.HostMAC)
			}
		}
	}
	fmt.Fprintf(out, "Every node routes the others' pod CIDRs directly (UpsertNode): `podCIDR via nodeIP dev eth0 proto 200`.\n")

	m, err := measure(ctx, out, pods, opts)
	if err != nil {
		return err
	}
	if err := report(out, nodes, pods, m, opts); err != nil {
		return err
	}
	if err := checkClaims(m, opts); err != nil {
		return err
	}
	if opts.Keep {
		kept = true
		printKept(out, prefix, nodes, pods)
		var errs []error
		for _, n := range nodes {
			errs = append(errs, n.dp.Close())
		}
		return errors.Join(errs...)
	}
	return nil
}

func modeName(opts options) string {
	if opts.Fallback {
		return "bpf_fib_lookup + bpf_redirect only (--fallback): no bpf_redirect_neigh, no bpf_redirect_peer"
	}
	return "bpf_fib_lookup + bpf_redirect(_neigh) out of the node, bpf_redirect_peer into the pod"
}

// printKept tells how to look at what --keep left running and how to
// remove it.
func printKept(out io.Writer, prefix string, nodes []*node, pods []*pod) {
	n1, n2 := nodes[0], nodes[1]
	var del []string
	for _, p := range pods {
		del = append(del, "ip netns del "+p.netns)
	}
	for _, n := range nodes {
		del = append(del, "ip netns del "+n.netns)
	}
	del = append(del, "ip netns del "+prefix+"-wire")
	fmt.Fprintf(out, `
Left running (--keep). Inspect it with:
  ip netns exec %[1]s tcpdump -ni lxcB tcp    # and meanwhile, a TCP SYN from pod A to B:
  ip netns exec %[3]s bash -c 'echo >/dev/tcp/10.0.1.10/80'   # lxcB shows B's RST, never A's SYN
  ip netns exec %[1]s tcpdump -ni eth0 tcp    # eth0 carries both
  ip netns exec %[2]s ip route show proto 200   # direct routes to the other nodes' pod CIDRs
  ip netns exec %[2]s ip neigh show dev eth0    # managed neighbour entries of the next hops
  ip netns exec %[2]s iptables -w -x -v -n -L FORWARD
  ls -R %[4]s   # maps, programs, one tcx link per device and program
  bpftool link show pinned %[4]s/links/<name>
  ip netns exec %[2]s go -C examples/hrctl run . --pin-path %[4]s status
  ip netns exec %[2]s go -C examples/hrctl run . --pin-path %[4]s node list
  ip netns exec %[1]s go -C examples/hrctl run . --pin-path %[5]s endpoint list
  ip netns exec %[1]s go -C examples/hrctl run . --pin-path %[5]s endpoint stats
Remove it with:
  rm -r %[6]s-node* && %[7]s
`, n2.netns, n1.netns, pods[0].netns, n1.pinPath, n2.pinPath,
		strings.TrimSuffix(n1.pinPath, "-node1"), strings.Join(del, " && "))
}
