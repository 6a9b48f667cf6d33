package datapathtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/routing"
)

// RequireRoot skips the test unless it runs as root, since the fixtures
// create network namespaces. With HOSTROUTING_REQUIRE_PRIVILEGED=1 in the
// environment it fails the test instead, so that CI cannot pass by skipping.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const reason = "needs root: creates network namespaces"
	if os.Getenv("HOSTROUTING_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal(reason + " (HOSTROUTING_REQUIRE_PRIVILEGED=1)")
	}
	t.Skip(reason)
}

// RunPrivileged runs a package's tests and examples (call it from
// TestMain: os.Exit(datapathtest.RunPrivileged(m))). An Example cannot
// skip as RequireRoot does, so without root, unless
// HOSTROUTING_REQUIRE_PRIVILEGED=1, the package's Example functions are
// left out of the run.
func RunPrivileged(m *testing.M) int {
	flag.Parse()
	if os.Geteuid() != 0 && os.Getenv("HOSTROUTING_REQUIRE_PRIVILEGED") != "1" {
		skip := "^Example"
		if s := flag.Lookup("test.skip").Value.String(); s != "" {
			skip = s + "|" + skip
		}
		flag.Set("test.skip", skip)
	}
	return m.Run()
}

// Node is a node's network namespace: pods hang off it by veth pairs and it
// forwards between them. A node made by NewNode has no other devices; one
// of a Cluster also has Device on the wire, addressed IP, and owns PodCIDR.
type Node struct {
	Name      string // as given to NewNode
	NetnsName string // name under /var/run/netns, for `ip netns exec`
	Netns     string // path of the namespace

	Device  string       // the node's NIC on the wire, "eth0"; "" outside a Cluster
	IP      netip.Addr   // Device's address, 172.18.0.(2+i) for Cluster node i
	PodCIDR netip.Prefix // 10.0.i.0/24 for Cluster node i: address its pods from it

	wire     string // path of the Cluster's wire namespace
	wirePort string // the bridge port there that is Device's peer
}

// NewNode creates a node namespace with lo up, IPv4 forwarding on and
// rp_filter off (routing.EnableForwarding). t.Cleanup deletes it.
func NewNode(t testing.TB, name string) *Node {
	t.Helper()
	RequireRoot(t)
	nsName, path := NewNetns(t, name)
	if err := routing.EnableForwarding(path); err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	return &Node{Name: name, NetnsName: nsName, Netns: path}
}

// Name prefixes of what the fixtures make outside the test's own
// directories, so that what a killed test left behind is found by its
// name (this repository's CI looks for "hrtest" pins). An embedder's tests
// may set them to names of their own, once, before any test starts (in
// TestMain): then their leftovers are told from others' on a shared
// machine. A prefix must not contain "/".
var (
	// NetnsPrefix begins the name of every network namespace under
	// routing.NetnsDir: NetnsPrefix+"<random>-<name>" (NewNode, NewNetns,
	// AddPod, AddHost), NetnsPrefix+"<random>-wire" (NewCluster).
	NetnsPrefix = "hr-"
	// DirPrefix begins the name of every directory made below
	// /sys/fs/bpf (PinPath) and the cgroup2 mount (NewCgroup):
	// DirPrefix+"<random>".
	DirPrefix = "hrtest-"
)

// prefixed returns prefix followed by n random bytes in hex, failing the
// test if prefix is no prefix of a file name.
func prefixed(t testing.TB, what, prefix string, n int) string {
	t.Helper()
	if strings.Contains(prefix, "/") || strings.ContainsRune(prefix, 0) {
		t.Fatalf("datapathtest.%s %q: want a prefix of a file name (no \"/\")", what, prefix)
	}
	return prefix + randomHex(n)
}

// NewNetns creates a bare, uniquely named namespace with lo up and IPv6
// off, deleted by t.Cleanup: for a pod whose veth a CNI plugin under test
// makes.
func NewNetns(t testing.TB, name string) (nsName, path string) {
	t.Helper()
	nsName = prefixed(t, "NetnsPrefix", NetnsPrefix, 4) + "-" + name
	path, err := topology.NewNetns(context.Background(), nsName, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := routing.DeleteNetns(nsName); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return nsName, path
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Do runs fn inside the node's namespace (see routing.Do).
func (n *Node) Do(fn func() error) error {
	return routing.Do(n.Netns, fn)
}

// LinkStats returns the counters of the device ifname in the node.
func (n *Node) LinkStats(ifname string) (*netlink.LinkStatistics, error) {
	h, err := routing.Handle(n.Netns)
	if err != nil {
		return nil, fmt.Errorf("node %s: link stats of %q: %w", n.Name, ifname, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("node %s: link stats of %q: %w", n.Name, ifname, err)
	}
	return link.Attrs().Statistics, nil
}

// Exec runs a command inside the node's namespace (`ip netns exec`) and
// returns its combined output. It fails the test if the command fails or
// runs longer than 30 seconds.
func (n *Node) Exec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (n *Node) exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.NetnsName}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("node %s: %s: %w\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// CountForward inserts a rule that only counts at the head of the node's
// filter FORWARD chain and returns a reader of its packet counter. Traffic
// the kernel forwards between pods moves it; traffic a BPF program
// redirects past the stack does not. The reader fails the test on error, so
// call it from the test's goroutine. t.Cleanup removes the rule.
func (n *Node) CountForward(t testing.TB) func() uint64 {
	t.Helper()
	c, err := netcheck.CountForward(context.Background(), n.Netns, "hostrouting-test-"+randomHex(4))
	if err != nil {
		t.Fatalf("node %s: %v", n.Name, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("cleanup: node %s: %v", n.Name, err)
		}
	})
	return func() uint64 {
		t.Helper()
		packets, err := c.Packets(context.Background())
		if err != nil {
			t.Fatalf("node %s: %v", n.Name, err)
		}
		return packets
	}
}

// Pod is a pod's network namespace, attached to its node by a veth pair.
type Pod struct {
	Name        string // as given to AddPod
	NetnsName   string // name under /var/run/netns
	Netns       string // path of the namespace
	IP          netip.Addr
	MAC         net.HardwareAddr // of the pod's eth0
	HostIf      string           // node-side veth device
	HostIfIndex int
	HostMAC     net.HardwareAddr
	Node        *Node
	// ARPResponder is what Endpoint asks of the datapath: to answer the
	// pod's ARP requests, as a pod whose host-side device has no IPv4
	// address (Calico-style) needs, for no one else answers for its
	// gateway. LookupPod sets it for such a pod.
	ARPResponder bool
}

// AddPod creates a pod namespace and wires it to the node with
// routing.SetupVeth: eth0 with addr/32, default route via
// routing.DefaultGateway, and a node-side device named "lxc" plus a hash of
// the pod's namespace name. t.Cleanup removes the veth and the namespace.
func (n *Node) AddPod(t testing.TB, name string, addr netip.Addr) *Pod {
	t.Helper()
	nsName, path := NewNetns(t, n.Name+"-"+name)
	sum := sha256.Sum256([]byte(nsName))
	hostIf := "lxc" + hex.EncodeToString(sum[:6])
	v, err := routing.SetupVeth(routing.VethConfig{
		HostNetns:  n.Netns,
		HostIfName: hostIf,
		PodNetns:   path,
		Addr:       netip.PrefixFrom(addr, addr.BitLen()),
	})
	if err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := routing.DeleteVeth(n.Netns, hostIf); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	for _, end := range []struct{ netns, ifname string }{{n.Netns, hostIf}, {path, v.PodIfName}} {
		if err := waitOperUp(end.netns, end.ifname); err != nil {
			t.Fatalf("pod %s: %v", name, err)
		}
	}
	return &Pod{
		Name:        name,
		NetnsName:   nsName,
		Netns:       path,
		IP:          addr,
		MAC:         v.PodMAC,
		HostIf:      v.HostIfName,
		HostIfIndex: v.HostIfIndex,
		HostMAC:     v.HostMAC,
		Node:        n,
	}
}

// waitOperUp waits up to 5s for the device to be operationally up, so that
// the first packets sent are not lost (see netcheck.WaitOperUp).
func waitOperUp(nsPath, ifname string) error {
	return netcheck.WaitOperUp(context.Background(), nsPath, ifname, 5*time.Second)
}

// Do runs fn inside the pod's namespace (see routing.Do). Sockets fn opens
// belong to the pod and can be used from any goroutine afterwards.
func (p *Pod) Do(fn func() error) error {
	return routing.Do(p.Netns, fn)
}
