package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/build"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// debianCNI is where Debian's containernetworking-plugins puts ptp and
// host-local.
const debianCNI = "/usr/lib/cni"

func TestTwoPods(t *testing.T) {
	t.Run("tcx", func(t *testing.T) { testTwoPods(t, nil) })
	t.Run("clsact", func(t *testing.T) { testTwoPods(t, map[string]any{"disable": map[string]any{"tcx": true}}) })
}

func testTwoPods(t *testing.T, hr map[string]any) {
	n := newTestNode(t, hr)
	a, b := n.mustAdd(t, "a"), n.mustAdd(t, "b")

	for _, p := range []*datapathtest.Pod{a, b} {
		if err := n.check(p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	node := n.open(t)
	eps, err := endpointTable(node).List()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 2 {
		t.Fatalf("endpoints: %v, want 2", eps)
	}
	for _, p := range []*datapathtest.Pod{a, b} {
		n.checkEndpoint(t, node, p)
	}

	// Let both pods resolve their gateway: the node answers ARP on the
	// host devices, the only thing they may transmit.
	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	txA, txB := n.txPackets(t, a), n.txPackets(t, b)
	metrics := tables.NewMetrics(node.Maps.Metrics)
	peer, err := metrics.Get(maps.FromContainer, maps.MetricForwardPeer)
	if err != nil {
		t.Fatal(err)
	}
	const pings = 10
	for _, p := range [][2]*datapathtest.Pod{{a, b}, {b, a}} {
		if got, err := p[0].Ping(p[1].IP, pings, 5*time.Second); err != nil || got != pings {
			t.Fatalf("ping %s → %s: %d of %d replies, err %v", p[0].Name, p[1].Name, got, pings, err)
		}
		p[0].MustTCPEcho(t, p[1].IP, p[1].ServeTCPEcho(t))
	}
	if d := n.txPackets(t, b) - txB; d != 0 {
		t.Errorf("%s (b's host veth) transmitted %d packets: want 0, bpf_redirect_peer delivers past it", b.HostIf, d)
	}
	if d := n.txPackets(t, a) - txA; d != 0 {
		t.Errorf("%s (a's host veth) transmitted %d packets: want 0", a.HostIf, d)
	}
	if after, err := metrics.Get(maps.FromContainer, maps.MetricForwardPeer); err != nil || after.Packets-peer.Packets < 4*pings {
		t.Errorf("forward-peer metric moved by %d (err %v): want at least %d", after.Packets-peer.Packets, err, 4*pings)
	}

	// CHECK sees a program missing from the host veth.
	if err := node.Detach(n.Netns, a.HostIfIndex, loader.ToContainer); err != nil {
		t.Fatal(err)
	}
	if err := n.check(a); err == nil || !strings.Contains(err.Error(), "hostrouting: to-container is not attached to "+a.HostIf) {
		t.Errorf("CHECK %s without to-container: %v, want an error naming it", a.Name, err)
	}
	if err := node.Attach(n.Netns, a.HostIfIndex, loader.ToContainer); err != nil {
		t.Fatal(err)
	}
	if err := n.check(a); err != nil {
		t.Errorf("CHECK %s after re-attaching: %v", a.Name, err)
	}

	// DEL twice through cnitool: a is gone from the maps and its links.
	for i := range 2 {
		if err := n.del(a); err != nil {
			t.Fatalf("DEL %s #%d: %v", a.Name, i+1, err)
		}
	}
	n.checkGone(t, node, a)
	if err := n.check(b); err != nil {
		t.Errorf("CHECK %s after DEL of %s: %v", b.Name, a.Name, err)
	}

	// DEL without prevResult (the runtime lost its cache): the plugin
	// finds b's address inside the pod and detaches from its veth, which
	// ptp has not deleted yet.
	if got := n.attached(t, b); got != 2 {
		t.Fatalf("%d programs attached to %s before DEL, want 2", got, b.HostIf)
	}
	out, err := n.plugin("DEL", b.Netns, n.hostroutingConf())
	if err != nil {
		t.Fatalf("DEL %s without prevResult: %v\n%s", b.Name, err, out)
	}
	n.checkGone(t, node, b)
	if got := n.attached(t, b); got != 0 {
		t.Errorf("%d programs attached to %s after DEL, want none", got, b.HostIf)
	}
	if err := n.del(b); err != nil {
		t.Fatalf("DEL %s: %v", b.Name, err)
	}
}

func TestCNIVersion040(t *testing.T) {
	n := newTestNode(t, nil)
	n.writeConflist(t, "0.4.0")
	a, b := n.mustAdd(t, "a"), n.mustAdd(t, "b")
	for _, p := range []*datapathtest.Pod{a, b} {
		if err := n.check(p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	a.MustPing(t, b.IP)
	node := n.open(t)
	if err := n.del(a); err != nil {
		t.Fatalf("DEL %s: %v", a.Name, err)
	}
	n.checkGone(t, node, a)
}

func TestAddReadsMACInPod(t *testing.T) {
	n := newTestNode(t, nil)
	p := n.mustAdd(t, "a")
	if out, err := n.plugin("DEL", p.Netns, n.hostroutingConf()); err != nil {
		t.Fatalf("DEL: %v\n%s", err, out)
	}
	// A prevResult without MACs: the plugin reads the pod's inside the pod.
	conf := n.hostroutingConf()
	conf["prevResult"] = map[string]any{
		"cniVersion": "1.0.0",
		"interfaces": []any{
			map[string]any{"name": p.HostIf},
			map[string]any{"name": "eth0", "sandbox": p.Netns},
		},
		"ips": []any{map[string]any{"address": p.IP.String() + "/24", "interface": 1}},
	}
	if out, err := n.plugin("ADD", p.Netns, conf); err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	n.checkEndpoint(t, n.open(t), p)
}

func TestDelAfterFailedAdd(t *testing.T) {
	for _, tc := range []struct {
		name    string
		conf    map[string]any
		wantErr string
	}{
		{"pin path not on bpffs", map[string]any{"pinPath": "TEMPDIR"}, "not on a bpf filesystem"},
		{"BPF host routing required", map[string]any{
			"requireBPFHostRouting": true,
			"disable":               map[string]any{"redirectPeer": true},
		}, "BPF host routing not possible"},
		{"bad nativeRoutingCIDR", map[string]any{"nativeRoutingCIDR": "10.0.0.0/33"},
			`nativeRoutingCIDR "10.0.0.0/33" is not a CIDR`},
		{"nativeRoutingCIDR with host bits", map[string]any{"nativeRoutingCIDR": "10.1.2.3/8"},
			"nativeRoutingCIDR 10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)"},
		{"missing device", map[string]any{"device": "hr-nodev", "nativeRoutingCIDR": "10.0.0.0/8"},
			`device "hr-nodev": no such device in the node's network namespace`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.conf["pinPath"] == "TEMPDIR" {
				tc.conf["pinPath"] = t.TempDir()
			}
			n := newTestNode(t, tc.conf)
			p := n.newPod(t, "a")
			out, err := n.cnitool("add", "hrtest", p.Netns)
			if err == nil {
				t.Fatalf("ADD succeeded:\n%s", out)
			}
			if msg := err.Error(); !strings.Contains(msg, "hostrouting: ") || !strings.Contains(msg, tc.wantErr) {
				t.Errorf("ADD error %q: want a hostrouting error saying %q", msg, tc.wantErr)
			}
			t.Logf("ADD failed as it should: %v", err)
			if err := n.del(p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			// Nothing was made in the pin path: an empty temp dir, or no
			// directory at all below /sys/fs/bpf.
			if entries, err := os.ReadDir(n.pinPath); len(entries) != 0 || err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin path %s after failed ADD and DEL: %v, err %v; want nothing", n.pinPath, entries, err)
			}
			if _, err := os.Stat(n.pinPath); strings.HasPrefix(n.pinPath, loader.DefaultBPFFS+"/") && err == nil {
				t.Errorf("pin path %s exists after failed ADD and DEL: DEL must not load a datapath", n.pinPath)
			}
		})
	}
}

func TestDelWithoutDatapath(t *testing.T) {
	n := newTestNode(t, nil)
	p := n.newPod(t, "a")
	// No ADD ever ran: DEL finds nothing, in a pod netns without eth0 or
	// with no pod netns at all, and must not load a datapath.
	for _, netns := range []string{p.Netns, p.Netns + "-missing"} {
		if out, err := n.plugin("DEL", netns, n.hostroutingConf()); err != nil {
			t.Fatalf("DEL: %v\n%s", err, out)
		}
	}
	if _, err := os.Stat(n.pinPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path %s after DEL: %v, want it absent", n.pinPath, err)
	}
}

// parallelPods is how many pods TestParallelAdds adds at once:
// go test -run TestParallelAdds ./examples/cni-hostrouting -args -parallel-pods=50
var parallelPods = flag.Int("parallel-pods", 20, "pods that TestParallelAdds adds at once, on a fresh node")

func TestParallelAdds(t *testing.T) {
	pods := *parallelPods
	n := newTestNode(t, nil)
	all := make([]*datapathtest.Pod, pods)
	for i := range all {
		all[i] = n.newPod(t, fmt.Sprintf("p%d", i))
	}
	if _, err := os.Stat(n.pinPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin path %s exists before the first ADD", n.pinPath)
	}
	errs := make([]error, pods)
	var wg sync.WaitGroup
	start := time.Now()
	for i, p := range all {
		wg.Go(func() { errs[i] = n.add(p) })
	}
	wg.Wait()
	t.Logf("%d parallel ADDs (cnitool: ptp, host-local, hostrouting) on a fresh node: %s", pods, time.Since(start).Round(time.Millisecond))
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	node := n.open(t)
	eps, err := endpointTable(node).List()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint16]bool{}
	for _, ep := range eps {
		ids[ep.ID] = true
	}
	if len(eps) != pods || len(ids) != pods {
		t.Fatalf("%d endpoints with %d distinct IDs, want %d: %v", len(eps), len(ids), pods, eps)
	}
	for _, p := range all {
		n.checkEndpoint(t, node, p)
	}

	var mu sync.Mutex
	var lost []string
	for _, src := range all {
		for _, dst := range all {
			if src == dst {
				continue
			}
			wg.Go(func() {
				got, err := src.PingWith(dst.IP, datapathtest.PingOptions{Count: 1, Timeout: 5 * time.Second})
				if err != nil || got != 1 {
					mu.Lock()
					lost = append(lost, fmt.Sprintf("%s → %s (%v)", src.Name, dst.Name, err))
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(lost) > 0 {
		t.Errorf("%d of %d pings unanswered: %s", len(lost), pods*(pods-1), strings.Join(lost, ", "))
	}
}

func TestAddWithoutPrevResult(t *testing.T) {
	out, err := runPlugin(t, "ADD", "/var/run/netns/hr-missing", map[string]any{
		"cniVersion": "1.0.0", "name": "hrtest", "type": "hostrouting",
	})
	if err == nil {
		t.Fatalf("ADD without prevResult succeeded:\n%s", out)
	}
	var cerr types.Error
	if err := json.Unmarshal(out, &cerr); err != nil {
		t.Fatalf("stdout is no CNI error: %v\n%s", err, out)
	}
	if cerr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cerr.Msg, "hostrouting: no prevResult") {
		t.Errorf("error %+v: want code %d and a message about prevResult", cerr, types.ErrInvalidNetworkConfig)
	}
}

func TestVersion(t *testing.T) {
	out, err := runPlugin(t, "VERSION", "", map[string]any{"cniVersion": "1.0.0"})
	if err != nil {
		t.Fatalf("VERSION: %v\n%s", err, out)
	}
	var v struct{ SupportedVersions []string }
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0.4.0", "1.0.0"} {
		if !slices.Contains(v.SupportedVersions, want) {
			t.Errorf("supported versions %v lack %s", v.SupportedVersions, want)
		}
	}
}

// testNode is a node netns in which cnitool runs the conflist "hrtest":
// ptp with host-local IPAM, then hostrouting.
type testNode struct {
	*datapathtest.Node
	pinPath string
	subnet  netip.Prefix   // host-local's subnet
	hrConf  map[string]any // the hostrouting entry of the conflist
	plugins string         // holds the built hostrouting binary
	netconf string         // NETCONFPATH
	varLib  string         // mounted on /var/lib for cnitool: libcni's cache
	ipam    string         // host-local's dataDir
	tool    string         // cnitool
}

// newTestNode makes a node with a conflist whose hostrouting entry has
// the keys of hr, and a fresh pin path unless hr names one. Its pods take
// addresses from 10.0.0.0/24.
func newTestNode(t *testing.T, hr map[string]any) *testNode {
	t.Helper()
	requireCNI(t)
	return newTestNodeOn(t, datapathtest.NewNode(t, "node"), netip.MustParsePrefix("10.0.0.0/24"), hr)
}

// newTestNodeOn is newTestNode on an existing node, such as one of a
// datapathtest.Cluster, whose pods take addresses from subnet.
func newTestNodeOn(t *testing.T, node *datapathtest.Node, subnet netip.Prefix, hr map[string]any) *testNode {
	t.Helper()
	n := &testNode{Node: node, subnet: subnet, tool: requireCNI(t), plugins: buildPlugin(t),
		hrConf: map[string]any{"type": "hostrouting"}}
	for k, v := range hr {
		n.hrConf[k] = v
	}
	if _, ok := n.hrConf["pinPath"]; !ok {
		n.hrConf["pinPath"] = datapathtest.PinPath(t)
	}
	n.pinPath = n.hrConf["pinPath"].(string)

	tmp := t.TempDir()
	n.netconf, n.varLib, n.ipam = filepath.Join(tmp, "net.d"), filepath.Join(tmp, "varlib"), filepath.Join(tmp, "ipam")
	for _, dir := range []string{n.netconf, n.varLib} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	n.writeConflist(t, "1.0.0")
	return n
}

// requireCNI skips the test unless it runs as root with cnitool, ptp and
// host-local at hand, and returns cnitool's path.
func requireCNI(t *testing.T) string {
	t.Helper()
	datapathtest.RequireRoot(t)
	tool := findCNITool(t)
	for _, p := range []string{"ptp", "host-local"} {
		if _, err := os.Stat(filepath.Join(debianCNI, p)); err != nil {
			requirePrivileged(t, fmt.Sprintf("needs the CNI plugin %s in %s (apt-get install containernetworking-plugins)", p, debianCNI))
		}
	}
	return tool
}

// writeConflist writes the conflist "hrtest" with the given cniVersion.
func (n *testNode) writeConflist(t *testing.T, cniVersion string) {
	t.Helper()
	n.writeConflistIn(t, n.netconf, cniVersion, n.ptpConf(), n.hrConf)
}

// ptpConf is ptp's entry in the conflist, with host-local IPAM.
func (n *testNode) ptpConf() map[string]any {
	return map[string]any{"type": "ptp", "ipMasq": false, "ipam": map[string]any{
		"type": "host-local", "subnet": n.subnet.String(), "dataDir": n.ipam,
		// ptp routes only the subnet into the pod without it.
		"routes": []any{map[string]any{"dst": "0.0.0.0/0"}},
	}}
}

// writeConflistIn writes the conflist "hrtest" of plugins into dir.
func (n *testNode) writeConflistIn(t *testing.T, dir, cniVersion string, plugins ...any) {
	t.Helper()
	conflist := map[string]any{"cniVersion": cniVersion, "name": "hrtest", "plugins": plugins}
	b, err := json.Marshal(conflist)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hrtest.conflist"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// hostroutingConf is the plugin's own netconf, as libcni hands it over
// without a prevResult.
func (n *testNode) hostroutingConf() map[string]any {
	conf := map[string]any{"cniVersion": "1.0.0", "name": "hrtest"}
	for k, v := range n.hrConf {
		conf[k] = v
	}
	return conf
}

// cnitool runs cnitool in the node netns. `ip netns exec` gives it a
// private mount namespace, where the test's own directory is mounted on
// /var/lib so that libcni keeps its result cache there.
func (n *testNode) cnitool(args ...string) ([]byte, error) {
	return n.cnitoolWith(n.netconf, nil, args...)
}

// cnitoolWith is cnitool with the conflists in netconf and env added.
func (n *testNode) cnitoolWith(netconf string, env []string, args ...string) ([]byte, error) {
	const script = `mount --bind "$0" /var/lib && exec "$@"`
	cmd := []string{"netns", "exec", n.NetnsName, "sh", "-c", script, n.varLib, n.tool}
	return run(exec.Command("ip", append(cmd, args...)...), nil,
		append([]string{"NETCONFPATH=" + netconf, "CNI_PATH=" + n.plugins + ":" + debianCNI}, env...)...)
}

// plugin runs the hostrouting binary alone in the node netns, for the pod
// at netns, with conf on stdin, as cnitool would: with the container ID
// cnitool gives that pod.
func (n *testNode) plugin(command, netns string, conf map[string]any) ([]byte, error) {
	return runPluginIn(n.NetnsName, n.plugins, command, netns, conf, "CNI_CONTAINERID="+cnitoolContainerID(netns))
}

// cnitoolContainerID is the CNI_CONTAINERID that cnitool passes for the
// pod at netns: a hash of the path.
func cnitoolContainerID(netns string) string {
	s := sha512.Sum512([]byte(netns))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// newPod makes a pod netns with lo up and IPv6 off, which t.Cleanup
// deletes. The pod's fields other than its names are set by add.
func (n *testNode) newPod(t *testing.T, name string) *datapathtest.Pod {
	t.Helper()
	nsName, path := datapathtest.NewNetns(t, name)
	return &datapathtest.Pod{Name: name, NetnsName: nsName, Netns: path, Node: n.Node}
}

// add runs ADD for pod p and fills in p from the result.
func (n *testNode) add(p *datapathtest.Pod) error {
	return n.addWith(p, nil)
}

// addWith is add with env added to cnitool's, such as CNI_ARGS.
func (n *testNode) addWith(p *datapathtest.Pod, env []string) error {
	out, err := n.cnitoolWith(n.netconf, env, "add", "hrtest", p.Netns)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", p.Name, err)
	}
	return n.fill(p, out)
}

// fill fills in pod p from out, the result of its ADD.
func (n *testNode) fill(p *datapathtest.Pod, out []byte) error {
	var res types100.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return fmt.Errorf("ADD %s: result: %w\n%s", p.Name, err, out)
	}
	if len(res.Interfaces) != 2 || len(res.IPs) != 1 {
		return fmt.Errorf("ADD %s: result not from ptp:\n%s", p.Name, out)
	}
	p.IP, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	p.HostIf = res.Interfaces[0].Name
	h, err := routing.Handle(n.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	host, err := h.LinkByName(p.HostIf)
	if err != nil {
		return fmt.Errorf("ADD %s: host veth: %w", p.Name, err)
	}
	p.HostIfIndex, p.HostMAC = host.Attrs().Index, host.Attrs().HardwareAddr
	// The pod's MAC as the pod sees it, not as ptp reported it.
	p.MAC, err = linkMAC(p.Netns, "eth0")
	return err
}

func (n *testNode) mustAdd(t *testing.T, name string) *datapathtest.Pod {
	t.Helper()
	p := n.newPod(t, name)
	if err := n.add(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func (n *testNode) del(p *datapathtest.Pod) error {
	_, err := n.cnitool("del", "hrtest", p.Netns)
	return err
}

func (n *testNode) check(p *datapathtest.Pod) error {
	_, err := n.cnitool("check", "hrtest", p.Netns)
	return err
}

// open opens the node's pinned datapath, closed by t.Cleanup.
func (n *testNode) open(t *testing.T) *instance.Instance {
	t.Helper()
	node, err := instance.Open(n.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	return node
}

// checkEndpoint checks p's entry in the endpoint map.
func (n *testNode) checkEndpoint(t *testing.T, node *instance.Instance, p *datapathtest.Pod) {
	t.Helper()
	ep, err := endpointTable(node).Lookup(p.IP)
	if err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
	if ep.IfIndex != p.HostIfIndex || !bytes.Equal(ep.MAC, p.MAC) || !bytes.Equal(ep.NodeMAC, p.HostMAC) {
		t.Errorf("pod %s: endpoint %v, want ifindex %d mac %s nodemac %s", p.Name, ep, p.HostIfIndex, p.MAC, p.HostMAC)
	}
}

// checkGone checks that nothing of p's endpoint is left: no map entry, no
// counters, no pinned links.
func (n *testNode) checkGone(t *testing.T, node *instance.Instance, p *datapathtest.Pod) {
	t.Helper()
	if ep, err := endpointTable(node).Lookup(p.IP); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("pod %s after DEL: endpoint %v, err %v; want not found", p.Name, ep, err)
	}
	if ep, err := endpointTable(node).LookupDevice(p.HostIfIndex); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("pod %s after DEL: endpoint of ifindex %d: %v, err %v; want not found", p.Name, p.HostIfIndex, ep, err)
	}
	links, _ := filepath.Glob(filepath.Join(n.pinPath, "links", fmt.Sprintf("*_%d_*", p.HostIfIndex)))
	if len(links) != 0 {
		t.Errorf("pod %s after DEL: pinned links %v remain", p.Name, links)
	}
}

// attached counts the BPF programs on the tc hooks of p's host veth, tcx
// and clsact alike.
func (n *testNode) attached(t *testing.T, p *datapathtest.Pod) int {
	t.Helper()
	count := 0
	err := n.Do(func() error {
		for _, attach := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: p.HostIfIndex, Attach: attach})
			if err != nil {
				return err
			}
			count += len(res.Programs)
		}
		dev, err := netlink.LinkByIndex(p.HostIfIndex)
		if err != nil {
			return err
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(dev, parent)
			if err != nil {
				return err
			}
			for _, f := range filters {
				if _, ok := f.(*netlink.BpfFilter); ok {
					count++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("programs on %s: %v", p.HostIf, err)
	}
	return count
}

func (n *testNode) txPackets(t *testing.T, p *datapathtest.Pod) uint64 {
	t.Helper()
	s, err := n.LinkStats(p.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	return s.TxPackets
}

// runPlugin builds the plugin and runs it in the test's own netns, for
// commands that fail or answer before touching any netns.
func runPlugin(t *testing.T, command, netns string, conf map[string]any) ([]byte, error) {
	return runPluginIn("", buildPlugin(t), command, netns, conf)
}

// runPluginIn runs the hostrouting binary in dir as the CNI runtime would,
// inside the named netns unless nsName is "", with env added (or put in
// place of the defaults).
func runPluginIn(nsName, dir, command, netns string, conf map[string]any, env ...string) ([]byte, error) {
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(dir, "hostrouting"))
	if nsName != "" {
		cmd = exec.Command("ip", "netns", "exec", nsName, cmd.Path)
	}
	return run(cmd, stdin, append([]string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=hrtest-" + command,
		"CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + dir}, env...)...)
}

// run runs cmd with stdin and env added to the test's environment, and
// returns its stdout; on failure the error holds stderr, or stdout if
// that is empty.
func run(cmd *exec.Cmd, stdin []byte, env ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd = exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg, _, _ := strings.Cut(stderr.String(), "\nUsage:") // cnitool's help
		if msg = strings.TrimSpace(msg); msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// buildPlugin builds the plugin as "hostrouting" into a directory shared by
// the tests of this run and returns the directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "hostrouting-cni-"); buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, "hostrouting"), ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// findCNITool finds cnitool in PATH or in GOPATH/bin.
func findCNITool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("cnitool"); err == nil {
		return p
	}
	p := filepath.Join(build.Default.GOPATH, "bin", "cnitool")
	if _, err := os.Stat(p); err != nil {
		requirePrivileged(t, "needs cnitool in PATH or "+p+" (go install github.com/containernetworking/cni/cnitool@v1.3.1)")
	}
	return p
}

// requirePrivileged skips the test for reason, or fails it when
// HOSTROUTING_REQUIRE_PRIVILEGED=1 forbids skipping.
func requirePrivileged(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("HOSTROUTING_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal(reason + " (HOSTROUTING_REQUIRE_PRIVILEGED=1)")
	}
	t.Skip(reason)
}

// endpointTable is the endpoint table of the node's maps.
func endpointTable(node *instance.Instance) *tables.Endpoints {
	return tables.NewEndpoints(tables.EndpointMaps{ByIPv4: node.Maps.Endpoints, ByIPv6: node.Maps.Endpoints6,
		ByDevice: node.Maps.Devices, Slots: node.Maps.DeviceSlots, Meta: node.Maps.EndpointMeta})
}
