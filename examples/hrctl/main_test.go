package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/nat"
	"github.com/hostrouting/hostrouting/routing"
)

// buildHrctl builds the hrctl binary into a temporary directory.
func buildHrctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hrctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// hrctl runs the binary, its stdin /dev/null, and returns its stdout,
// stderr and exit code.
func hrctl(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return hrctlWith(t, nil, bin, args...)
}

// hrctlWith runs the binary with stdin (nil for /dev/null; an *os.File,
// such as a terminal, is passed as it is). It fails the test if the binary
// runs longer than a minute: waiting for an answer it should not ask.
func hrctlWith(t *testing.T, stdin io.Reader, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("run hrctl %v: %v (waiting for input?); stdout:\n%s", args, ctx.Err(), out.String())
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run hrctl %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestHrctlUsage(t *testing.T) {
	bin := buildHrctl(t)
	for _, args := range [][]string{nil, {"bogus"}, {"endpoint"}, {"status", "extra"}, {"--no-such-flag", "status"},
		{"node"}, {"--name", "x", "node", "del"}, {"endpoint", "get"}, {"endpoint", "delete"}, {"cleanup", "extra"},
		{"endpoint", "list", "10.0.0.10"}} {
		_, stderr, code := hrctl(t, bin, args...)
		if code != 2 || !strings.Contains(stderr, "Usage: hrctl") {
			t.Errorf("hrctl %v: exit %d, want 2 and usage; stderr:\n%s", args, code, stderr)
		}
	}
}

// TestHrctlNodeUsage checks that bad node input is a usage error naming
// the flag, found before any node is opened (the pin path is missing).
func TestHrctlNodeUsage(t *testing.T) {
	bin := buildHrctl(t)
	pin := filepath.Join(loader.DefaultBPFFS, "hrctl-missing-"+randomHex(6))
	ok := []string{"--name", "worker", "--ip", "172.18.0.3", "--pod-cidr", "10.0.1.0/24"}
	without := func(flag string) []string {
		i := slices.Index(ok, flag)
		return slices.Delete(slices.Clone(ok), i, i+2)
	}
	with := func(flag, value string) []string {
		args := slices.Clone(ok)
		args[slices.Index(args, flag)+1] = value
		return args
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append([]string{"node", "add"}, without("--name")...), "missing --name"},
		{append([]string{"node", "add"}, without("--ip")...), "missing --ip"},
		{append([]string{"node", "add"}, without("--pod-cidr")...), "missing --pod-cidr"},
		{append([]string{"node", "add"}, with("--ip", "172.18.0.300")...), "-ip: not an IP address"},
		{append([]string{"node", "add"}, with("--ip", "")...), "-ip: not an IP address"},
		{append([]string{"node", "add"}, with("--pod-cidr", "10.0.1.0/33")...), `-pod-cidr: "10.0.1.0/33" is not a CIDR`},
		{append([]string{"node", "add"}, with("--pod-cidr", "10.0.1.0/24,")...), `-pod-cidr: "" is not a CIDR`},
		{append([]string{"node", "add"}, with("--pod-cidr", "10.0.1.7/24")...), "-pod-cidr: 10.0.1.7/24 has host bits set (did you mean 10.0.1.0/24?)"},
		{[]string{"node", "del"}, "missing --name"},
		{[]string{"node", "del", "--ip", "172.18.0.3"}, "flag provided but not defined: -ip"},
		{[]string{"node", "list", "--name", "worker"}, "flag provided but not defined: -name"},
	} {
		stdout, stderr, code := hrctl(t, bin, append([]string{"--pin-path", pin}, tc.args...)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "Usage: hrctl") {
			t.Errorf("hrctl %v: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and usage saying %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
}

// TestHrctlBadPinPath checks the one-line errors for pin paths that hold no
// node.
func TestHrctlBadPinPath(t *testing.T) {
	bin := buildHrctl(t)
	paths := map[string]string{
		filepath.Join(loader.DefaultBPFFS, "hrctl-missing-"+randomHex(6)): "does not exist",
		t.TempDir(): "not on a bpf filesystem",
	}
	if os.Geteuid() == 0 { // an empty directory on bpffs
		dir := filepath.Join(loader.DefaultBPFFS, "hrctl-empty-"+randomHex(6))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(dir) })
		paths[dir] = "not a hostrouting node"
	}
	for path, want := range paths {
		for _, cmd := range [][]string{{"status"}, {"endpoint", "list"}} {
			stdout, stderr, code := hrctl(t, bin, append([]string{"--pin-path", path}, cmd...)...)
			if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 ||
				!strings.Contains(stderr, path) || !strings.Contains(stderr, want) {
				t.Errorf("hrctl --pin-path %s %v: exit %d, stdout %q, stderr %q; want exit 1 and one line naming the path and %q",
					path, cmd, code, stdout, stderr, want)
			}
		}
	}
}

// TestHrctlNode reads a node with two endpoints.
func TestHrctlNode(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	node := datapathtest.NewNode(t, "hrctl")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.10"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.11"))
	pin := datapathtest.PinPath(t)
	dp := node.NewDatapath(t, datapath.Config{PinPath: pin})
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
	gc, err := dp.GC(nat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gc.Collect(); err != nil { // an agent's GC pass, as status reports it
		t.Fatal(err)
	}

	stdout, stderr, code := hrctl(t, bin, "--pin-path", pin, "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"Host Routing:     BPF\n", "Endpoints:        2\n", "Pin Path:         " + pin + "\n",
		"  from-container: forward-peer", "BPF Maps:         ", "Kernel:           " + kernelRelease(t) + "\n",
		"Monitor:          off\n", "Conntrack GC:     1 passes, the last "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
		}
	}
	stdout, stderr, code = hrctl(t, bin, "--pin-path", pin, "status", "--verbose")
	for _, want := range []string{"Kernel Features:\n  bpf_redirect_peer:   Enabled\n", "  tcx:                 Enabled\n",
		"  hr_endpoints ", "2 of     1024 entries    0.2%\n"} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Errorf("status --verbose: exit %d, stderr %q, lacks %q:\n%s", code, stderr, want, stdout)
		}
	}

	eps, err := dp.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, ep := range eps {
		want.WriteString(ep.String() + "\n")
	}
	stdout, stderr, code = hrctl(t, bin, "--pin-path", pin, "endpoint", "list")
	if code != 0 || stdout != want.String() {
		t.Errorf("endpoint list: exit %d, stderr %q, got\n%swant\n%s", code, stderr, stdout, want.String())
	}

	stdout, stderr, code = hrctl(t, bin, "endpoint", "stats", "--pin-path", pin)
	if code != 0 || len(strings.Split(strings.TrimSpace(stdout), "\n")) != 3 {
		t.Errorf("endpoint stats: exit %d, stderr %q, want a header and 2 lines:\n%s", code, stderr, stdout)
	}

	stdout, stderr, code = hrctl(t, bin, "--pin-path", pin, "status", "--json")
	var s struct {
		HostRouting string
		Endpoints   int
		Metrics     map[string]map[string]struct{ Packets, Bytes uint64 }
		GC          struct{ Runs uint64 }
		Kernel      string
	}
	if err := json.Unmarshal([]byte(stdout), &s); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, stderr %q, %v:\n%s", code, stderr, err, stdout)
	}
	if s.HostRouting != datapath.HostRoutingBPF || s.Endpoints != 2 || s.Metrics["from-container"]["forward-peer"].Packets == 0 ||
		s.GC.Runs != 1 || s.Kernel != kernelRelease(t) {
		t.Errorf("status --json: %+v, want BPF, 2 endpoints, forward-peer counted, 1 GC pass, the kernel", s)
	}
}

// kernelRelease is uname -r.
func kernelRelease(t *testing.T) string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// hrctlIn runs the binary inside the named netns, as hrctl runs on a node.
func hrctlIn(t *testing.T, bin, netns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return hrctlInWith(t, nil, bin, netns, args...)
}

// hrctlInWith is hrctlIn with stdin, as hrctlWith.
func hrctlInWith(t *testing.T, stdin io.Reader, bin, netns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return hrctlWith(t, stdin, "ip", append([]string{"netns", "exec", netns, bin}, args...)...)
}

// TestHrctlNodeCommands adds, lists and deletes another node on node 0 of
// a two-node cluster, running hrctl inside node 0's netns.
func TestHrctlNodeCommands(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	c := datapathtest.NewCluster(t, 2)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	pin := datapathtest.PinPath(t)
	dp := n0.NewDatapath(t, datapath.Config{PinPath: pin, Devices: []string{n0.Device},
		NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	node := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		return hrctlIn(t, bin, n0.NetnsName, append([]string{"--pin-path", pin}, args...)...)
	}
	mustNode := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := node(args...)
		if code != 0 || stderr != "" {
			t.Fatalf("hrctl %v: exit %d, stderr %q", args, code, stderr)
		}
		return stdout
	}
	routes := func() string {
		t.Helper()
		out, err := exec.Command("ip", "-n", n0.NetnsName, "route", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("ip route: %v\n%s", err, out)
		}
		return string(out)
	}

	status := mustNode("status")
	for _, want := range []string{
		fmt.Sprintf("Devices:          [%s %s (Direct Routing)]\n", n0.Device, n0.IP),
		"Native Routing:   10.0.0.0/8\n",
		"Pin Path:         " + pin + "\n",
	} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
	if out := mustNode("node", "list"); out != "" {
		t.Errorf("node list without nodes: %q, want nothing", out)
	}
	if out := mustNode("node", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("node list --json without nodes: %q, want []", out)
	}

	// node add twice: one node, one route.
	wantRoute := fmt.Sprintf("%s via %s dev %s ", n1.PodCIDR, n1.IP, n0.Device)
	add := []string{"node", "add", "--name", n1.Name, "--ip", n1.IP.String(), "--pod-cidr", n1.PodCIDR.String()}
	for i := range 2 {
		if out := mustNode(add...); out != "" {
			t.Errorf("node add #%d printed %q, want nothing", i+1, out)
		}
		if got := strings.Count(routes(), wantRoute); got != 1 {
			t.Errorf("after node add #%d: %d routes %q, want 1:\n%s", i+1, got, wantRoute, routes())
		}
	}
	wantLine := fmt.Sprintf("%s %s %s\n", n1.Name, n1.IP, n1.PodCIDR)
	if out := mustNode("node", "list"); out != wantLine {
		t.Errorf("node list: %q, want %q", out, wantLine)
	}
	if nodes, err := dp.Nodes(); err != nil || len(nodes) != 1 || nodes[0].String()+"\n" != wantLine {
		t.Errorf("datapath's nodes: %v (err %v), want %q", nodes, err, wantLine)
	}

	// More pod CIDRs, comma-separated and repeated; then back to one: node
	// add converges on the CIDRs given.
	mustNode("node", "add", "--name", n1.Name, "--ip", n1.IP.String(),
		"--pod-cidr", n1.PodCIDR.String()+",10.0.101.0/24", "--pod-cidr", "10.0.102.0/24")
	var listed []datapath.Node
	if err := json.Unmarshal([]byte(mustNode("--json", "node", "list")), &listed); err != nil {
		t.Fatal(err)
	}
	wantCIDRs := []netip.Prefix{n1.PodCIDR, netip.MustParsePrefix("10.0.101.0/24"), netip.MustParsePrefix("10.0.102.0/24")}
	if len(listed) != 1 || listed[0].Name != n1.Name || listed[0].IP != n1.IP || !slices.Equal(listed[0].PodCIDRs, wantCIDRs) {
		t.Errorf("node list --json: %+v, want %s %s %v", listed, n1.Name, n1.IP, wantCIDRs)
	}
	mustNode(add...)
	if r := routes(); strings.Contains(r, "10.0.101.0/24") || strings.Contains(r, "10.0.102.0/24") || !strings.Contains(r, wantRoute) {
		t.Errorf("routes after node add with %s only:\n%s", n1.PodCIDR, r)
	}

	// What the datapath refuses: exit 1, one line. The node's own pod
	// CIDR, which holds an endpoint of the node, is no other node's.
	own := n0.AddPod(t, "own", n0.PodIP(10))
	own.AddEndpoint(t, dp)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--name", "self", "--ip", "172.18.0.9", "--pod-cidr", n0.PodCIDR.String()},
			fmt.Sprintf("pod CIDR %s holds endpoint %s of this node: it is this node's own, not node self's", n0.PodCIDR, own.IP)},
		{[]string{"--name", n1.Name, "--ip", n1.IP.String(), "--pod-cidr", n1.PodCIDR.String() + ",10.0.0.0/23"},
			fmt.Sprintf("pod CIDR 10.0.0.0/23 holds endpoint %s of this node", own.IP)},
		{[]string{"--name", "far", "--ip", "192.168.7.7", "--pod-cidr", "10.0.9.0/24"}, "not on a subnet"},
		{[]string{"--name", "other", "--ip", "172.18.0.9", "--pod-cidr", "10.0.1.128/25"}, "overlaps"},
		{[]string{"--name", "other", "--ip", n1.IP.String(), "--pod-cidr", "10.0.9.0/24"}, "belongs to node " + n1.Name},
		// The datapath picks lo as the device toward the node's own IP and
		// says the IP is not on lo's subnet: refused, if not in those words.
		{[]string{"--name", "self", "--ip", n0.IP.String(), "--pod-cidr", "10.0.9.0/24"}, "node IP " + n0.IP.String()},
		{[]string{"--name", "v6", "--ip", "fd00::3", "--pod-cidr", "10.0.9.0/24"}, "IPv4"},
	} {
		stdout, stderr, code := node(append([]string{"node", "add"}, tc.args...)...)
		if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("node add %v: exit %d, stdout %q, stderr %q; want exit 1 and one line saying %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	if out := mustNode("node", "list"); out != wantLine {
		t.Errorf("node list after refused adds: %q, want %q", out, wantLine)
	}

	// node del removes the node and its route; a second time it is unknown.
	mustNode("node", "del", "--name", n1.Name)
	if r := routes(); strings.Contains(r, n1.PodCIDR.String()) {
		t.Errorf("route to %s after node del:\n%s", n1.PodCIDR, r)
	}
	if out := mustNode("node", "list"); out != "" {
		t.Errorf("node list after node del: %q, want nothing", out)
	}
	stdout, stderr, code := node("node", "del", "--name", n1.Name)
	if code != 1 || stdout != "" || stderr != fmt.Sprintf("hrctl: no node named %q (see hrctl node list)\n", n1.Name) {
		t.Errorf("node del of an unknown node: exit %d, stdout %q, stderr %q; want exit 1 and one line", code, stdout, stderr)
	}
}

// TestHrctlHelp checks that -h lists every command with its argument.
func TestHrctlHelp(t *testing.T) {
	bin := buildHrctl(t)
	stdout, stderr, code := hrctl(t, bin, "-h")
	if code != 0 || stdout != "" {
		t.Fatalf("hrctl -h: exit %d, stdout %q; want 0 and usage on stderr", code, stdout)
	}
	for _, c := range commands {
		if !strings.Contains(stderr, "  "+strings.TrimSpace(c.name+" "+c.args)) {
			t.Errorf("hrctl -h lacks %q %q:\n%s", c.name, c.args, stderr)
		}
	}
	for _, want := range []string{"endpoint get IP", "endpoint delete IP", "cleanup [-f|--force]", "  service list ",
		"  service update [--id N] --frontend IP:PORT --backends IP:PORT[,IP:PORT...] [--type ClusterIP|NodePort|ExternalIP] [--protocol tcp|udp] [--local] [--internal-local] [--affinity DURATION]",
		"  service delete --id N\n", "  socket-lb --cgroup DIR | --off", "  ct list ", "  ct flush [--ip IP]\n", "  nat list "} {
		if !strings.Contains(stderr, want) {
			t.Errorf("hrctl -h lacks %q:\n%s", want, stderr)
		}
	}
	_, stderr, code = hrctl(t, bin, "cleanup", "-h")
	if code != 0 || !strings.Contains(stderr, "Usage: hrctl [flags] cleanup [-f|--force]") || !strings.Contains(stderr, "-force") {
		t.Errorf("hrctl cleanup -h: exit %d:\n%s", code, stderr)
	}
}

// TestHrctlEndpointUsage checks that a missing or bad IP is a usage error,
// found before any node is opened (the pin path is missing).
func TestHrctlEndpointUsage(t *testing.T) {
	bin := buildHrctl(t)
	pin := filepath.Join(loader.DefaultBPFFS, "hrctl-missing-"+randomHex(6))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"endpoint", "get"}, "hrctl endpoint get: missing IP"},
		{[]string{"endpoint", "delete"}, "hrctl endpoint delete: missing IP"},
		{[]string{"endpoint", "delete", "--json"}, "hrctl endpoint delete: missing IP"},
		{[]string{"endpoint", "delete", "10.0.0.300"}, `"10.0.0.300" is not an endpoint's IP address`},
		{[]string{"endpoint", "get", "pod-a"}, `"pod-a" is not an endpoint's IP address`},
		{[]string{"endpoint", "delete", "10.0.0.0/24"}, `"10.0.0.0/24" is not an endpoint's IP address`},
		{[]string{"endpoint", "delete", "fe80::1%eth0"}, `"fe80::1%eth0" is not an endpoint's IP address`},
		{[]string{"endpoint", "get", "10.0.0.10", "10.0.0.11"}, `unexpected argument "10.0.0.11"`},
		{[]string{"endpoint", "get", "10.0.0.10", "--json", "extra"}, `unexpected argument "extra"`},
		{[]string{"endpoint", "delete", "10.0.0.10", "--force"}, "flag provided but not defined: -force"},
		{[]string{"cleanup", "--name", "x"}, "flag provided but not defined: -name"},
	} {
		stdout, stderr, code := hrctl(t, bin, append([]string{"--pin-path", pin}, tc.args...)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "Usage: hrctl") {
			t.Errorf("hrctl %v: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and usage saying %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	// Well-formed: the flags may follow the IP, and "--" ends them; the
	// missing node is then the error.
	for _, args := range [][]string{{"endpoint", "get", "10.0.0.10", "--json"}, {"endpoint", "delete", "--", "10.0.0.10"},
		{"endpoint", "get", "fd00::10"}, {"endpoint", "get", "::ffff:10.0.0.10"}} {
		stdout, stderr, code := hrctl(t, bin, append([]string{"--pin-path", pin}, args...)...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, "does not exist") {
			t.Errorf("hrctl %v: exit %d, stdout %q, stderr %q; want exit 1: the pin path does not exist", args, code, stdout, stderr)
		}
	}
}

// bpfOn returns what BPF the device with index ifindex in node carries: the
// programs on its tcx hooks, and `tc filter show` of its clsact hooks.
func bpfOn(t *testing.T, node *datapathtest.Node, ifname string, ifindex int) (tcx int, filters string) {
	t.Helper()
	err := node.Do(func() error {
		for _, attach := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
			if errors.Is(err, ebpf.ErrNotSupported) {
				continue // no tcx: clsact only
			}
			if err != nil {
				return fmt.Errorf("tcx query %s: %w", ifname, err)
			}
			tcx += len(res.Programs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, hook := range []string{"ingress", "egress"} {
		filters += node.Exec(t, "tc", "filter", "show", "dev", ifname, hook)
	}
	return tcx, filters
}

// hasBPF tells whether the device carries any BPF program, tcx or clsact.
func hasBPF(t *testing.T, node *datapathtest.Node, ifname string, ifindex int) bool {
	t.Helper()
	tcx, filters := bpfOn(t, node, ifname, ifindex)
	return tcx > 0 || strings.Contains(filters, "bpf")
}

// TestHrctlEndpointCommands gets and deletes endpoints inside the node's
// netns: one with a container, one without, one whose pod is gone.
func TestHrctlEndpointCommands(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	node := datapathtest.NewNode(t, "hrctl")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.10"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.11"))
	c := node.AddPod(t, "c", netip.MustParseAddr("10.0.0.12"))
	pin := datapathtest.PinPath(t)
	dp := node.NewDatapath(t, datapath.Config{PinPath: pin})
	withContainer := a.Endpoint()
	withContainer.ContainerID, withContainer.PodIfName = "c0ffee", "eth0"
	epA, err := dp.AddEndpoint(withContainer)
	if err != nil {
		t.Fatal(err)
	}
	epB := b.AddEndpoint(t, dp)
	epC := c.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		return hrctlIn(t, bin, node.NetnsName, append([]string{"--pin-path", pin}, args...)...)
	}
	mustRun := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := run(args...)
		if code != 0 || stderr != "" {
			t.Fatalf("hrctl %v: exit %d, stderr %q", args, code, stderr)
		}
		return stdout
	}
	type getJSON struct {
		IP                     netip.Addr
		ID                     uint16
		IfIndex                int
		MAC, NodeMAC           string
		ContainerID, PodIfName string
		HostDevice             string
		HostDeviceGone         bool
	}
	getJSONOf := func(ip netip.Addr) getJSON {
		t.Helper()
		var got getJSON
		out := mustRun("endpoint", "get", ip.String(), "--json")
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("endpoint get %s --json: %v\n%s", ip, err, out)
		}
		return got
	}

	// get: the endpoint list line, then who it belongs to and its device.
	want := epA.String() + "\nContainer ID:     c0ffee\nPod Interface:    eth0\nHost Device:      " + a.HostIf + "\n"
	if out := mustRun("endpoint", "get", a.IP.String()); out != want {
		t.Errorf("endpoint get %s:\n%swant\n%s", a.IP, out, want)
	}
	want = epB.String() + "\nHost Device:      " + b.HostIf + "\n"
	if out := mustRun("endpoint", "get", b.IP.String()); out != want {
		t.Errorf("endpoint get %s (no container recorded):\n%swant\n%s", b.IP, out, want)
	}
	wantJSON := getJSON{IP: a.IP, ID: epA.ID, IfIndex: a.HostIfIndex, MAC: a.MAC.String(), NodeMAC: a.HostMAC.String(),
		ContainerID: "c0ffee", PodIfName: "eth0", HostDevice: a.HostIf}
	if got := getJSONOf(a.IP); got != wantJSON {
		t.Errorf("endpoint get %s --json: %+v, want %+v", a.IP, got, wantJSON)
	}

	// Unknown endpoints: exit 1 and one line naming the address.
	unknown := netip.MustParseAddr("10.0.0.99")
	for _, cmd := range []string{"get", "delete"} {
		stdout, stderr, code := run("endpoint", cmd, unknown.String())
		if wantErr := "hrctl: no endpoint 10.0.0.99 (see hrctl endpoint list)\n"; code != 1 || stdout != "" || stderr != wantErr {
			t.Errorf("endpoint %s %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", cmd, unknown, code, stdout, stderr, wantErr)
		}
	}

	// delete: the endpoint goes from the maps and its device; the others
	// stay. A second time it is unknown.
	if !hasBPF(t, node, b.HostIf, b.HostIfIndex) {
		t.Fatalf("%s carries no BPF before endpoint delete", b.HostIf)
	}
	if out := mustRun("endpoint", "delete", b.IP.String()); out != "" {
		t.Errorf("endpoint delete printed %q, want nothing", out)
	}
	if ep, err := dp.Endpoint(b.IP); !errors.Is(err, datapath.ErrNotFound) {
		t.Errorf("endpoint %s after endpoint delete: %v, err %v; want ErrNotFound", b.IP, ep, err)
	}
	if tcx, filters := bpfOn(t, node, b.HostIf, b.HostIfIndex); tcx != 0 || strings.Contains(filters, "bpf") {
		t.Errorf("%s after endpoint delete: %d tcx programs, filters:\n%s", b.HostIf, tcx, filters)
	}
	if !hasBPF(t, node, a.HostIf, a.HostIfIndex) {
		t.Errorf("%s lost its programs when %s was deleted", a.HostIf, b.IP)
	}
	if out := mustRun("endpoint", "list"); out != epA.String()+"\n"+epC.String()+"\n" {
		t.Errorf("endpoint list after endpoint delete:\n%s", out)
	}
	stdout, stderr, code := run("endpoint", "delete", b.IP.String())
	if code != 1 || stdout != "" || stderr != "hrctl: no endpoint 10.0.0.11 (see hrctl endpoint list)\n" {
		t.Errorf("second endpoint delete: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// A leftover: c's pod and device are gone, its endpoint is not.
	if err := routing.DeleteVeth(node.Netns, c.HostIf); err != nil {
		t.Fatal(err)
	}
	out := mustRun("endpoint", "get", c.IP.String())
	if !strings.HasPrefix(out, epC.String()+"\n") || !strings.Contains(out, "Host Device:      gone") ||
		!strings.Contains(out, "hrctl endpoint delete "+c.IP.String()) {
		t.Errorf("endpoint get of a leftover:\n%s", out)
	}
	if got := getJSONOf(c.IP); !got.HostDeviceGone || got.HostDevice != "" || got.ID != epC.ID {
		t.Errorf("endpoint get --json of a leftover: %+v, want HostDeviceGone", got)
	}
	mustRun("endpoint", "delete", c.IP.String())
	if eps, err := dp.Endpoints(); err != nil || len(eps) != 1 || eps[0].IP != a.IP {
		t.Errorf("endpoints after deleting the leftover: %v, %v; want %s only", eps, err, a.IP)
	}
	// The endpoint that stayed still routes.
	b.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
}

// TestHrctlCleanup removes a healthy node of a cluster (endpoints, a
// device, a route to the other node) from inside its netns: stdin is a
// pipe, not a terminal, so cleanup asks nothing, even with "n" waiting in
// it. A pin that is not the node's survives, and a second cleanup finds
// nothing to clean.
func TestHrctlCleanup(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	c := datapathtest.NewCluster(t, 2)
	n0, n1 := c.Nodes[0], c.Nodes[1]
	a := n0.AddPod(t, "a", n0.PodIP(10))
	b := n0.AddPod(t, "b", n0.PodIP(11))
	pin := datapathtest.PinPath(t)
	dp := n0.NewDatapath(t, datapath.Config{PinPath: pin, Devices: []string{n0.Device},
		NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	if err := dp.UpsertNode(datapath.Node{Name: n1.Name, IP: n1.IP, PodCIDRs: []netip.Prefix{n1.PodCIDR}}); err != nil {
		t.Fatal(err)
	}
	a.MustPing(t, b.IP)
	devices, err := dp.Devices()
	if err != nil || len(devices) != 1 {
		t.Fatalf("devices: %v, %v", devices, err)
	}
	foreign := pinForeign(t, pin)
	type dev struct {
		name    string
		ifindex int
	}
	devs := []dev{{a.HostIf, a.HostIfIndex}, {b.HostIf, b.HostIfIndex}, {n0.Device, devices[0]}}
	for _, d := range devs {
		if !hasBPF(t, n0, d.name, d.ifindex) {
			t.Fatalf("%s carries no BPF before cleanup", d.name)
		}
	}
	routes := func() string {
		return n0.Exec(t, "ip", "route", "show", "proto", "200")
	}
	if !strings.Contains(routes(), n1.PodCIDR.String()) {
		t.Fatalf("no route to %s before cleanup:\n%s", n1.PodCIDR, routes())
	}

	stdout, stderr, code := hrctlInWith(t, strings.NewReader("n\n"), bin, n0.NetnsName, "--pin-path", pin, "cleanup")
	if code != 0 || stderr != "" {
		t.Fatalf("cleanup: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	for _, want := range []string{
		"This removes the hostrouting node at " + pin + ":\n",
		"  Pin Path:         " + pin + " (",
		"  Endpoints:        2 ",
		fmt.Sprintf("  Devices:          [%s %s]\n", n0.Device, n0.IP),
		"  Node Routes:      to 1 other node (hrctl node list)\n",
		"It leaves what the node did not make: foreign\n",
		"Removed the hostrouting node at " + pin + ".\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("cleanup output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "[y/N]") {
		t.Errorf("cleanup with stdin not a terminal asked:\n%s", stdout)
	}
	checkCleaned(t, pin, foreign)
	for _, d := range devs {
		if tcx, filters := bpfOn(t, n0, d.name, d.ifindex); tcx != 0 || strings.Contains(filters, "bpf") {
			t.Errorf("%s after cleanup: %d tcx programs, filters:\n%s", d.name, tcx, filters)
		}
	}
	if r := routes(); r != "" {
		t.Errorf("node routes after cleanup:\n%s", r)
	}
	a.MustPing(t, b.IP) // by the kernel's routing

	// Nothing left to clean: exit 0, and the foreign pin still stays.
	stdout, stderr, code = hrctlIn(t, bin, n0.NetnsName, "--pin-path", pin, "cleanup")
	if code != 0 || stderr != "" || !strings.Contains(stdout, "nothing to clean") || !strings.Contains(stdout, "foreign") {
		t.Errorf("second cleanup: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	checkCleaned(t, pin, foreign)
	missing := filepath.Join(loader.DefaultBPFFS, "hrctl-missing-"+randomHex(6))
	stdout, stderr, code = hrctlIn(t, bin, n0.NetnsName, "--pin-path", missing, "cleanup")
	if code != 0 || stderr != "" || stdout != "No hostrouting node at "+missing+": nothing to clean.\n" {
		t.Errorf("cleanup of a missing pin path: exit %d, stderr %q, stdout %q", code, stderr, stdout)
	}
}

// pinForeign pins a map that is not the node's in its pin directory.
func pinForeign(t *testing.T, pin string) string {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "foreign", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	path := filepath.Join(pin, "foreign")
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkCleaned fails t unless the pin directory holds the foreign pin
// and nothing else, and that pin still opens.
func checkCleaned(t *testing.T, pin, foreign string) {
	t.Helper()
	entries, err := os.ReadDir(pin)
	if err != nil {
		t.Fatalf("pin path after cleanup: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"foreign"}) {
		t.Errorf("pin path after cleanup holds %v, want the foreign pin only", names)
	}
	m, err := ebpf.LoadPinnedMap(foreign, nil)
	if err != nil {
		t.Fatalf("foreign pin after cleanup: %v", err)
	}
	m.Close()
}

// TestHrctlCleanupBroken removes nodes that no longer open: one whose
// hr_nodes pin was removed by hand (loader.ErrPartialPins), and one whose
// every map pin was. status explains what is wrong and the fix; cleanup,
// stdin /dev/null, asks nothing and removes the rest; a foreign pin stays;
// a new datapath starts at the same pin path.
func TestHrctlCleanupBroken(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	partial := []string{"holds an incomplete hostrouting node: hr_nodes was removed by hand, and no running program uses it"}
	for _, tc := range []struct {
		name    string
		disable loader.Disable
		remove  []string // map pins removed by hand
		status  []string // what status says
	}{
		{"hr_nodes", loader.Disable{}, []string{"hr_nodes"}, partial},
		{"hr_nodes clsact", loader.Disable{TCX: true}, []string{"hr_nodes"}, partial},
		{"all maps", loader.Disable{}, nil, []string{"holds what is left of a hostrouting node (", "but none of its maps"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := datapathtest.NewNode(t, "hrctl")
			a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.10"))
			b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.11"))
			pin := datapathtest.PinPath(t)
			dp := node.NewDatapath(t, datapath.Config{PinPath: pin, Disable: tc.disable})
			a.AddEndpoint(t, dp)
			b.AddEndpoint(t, dp)
			a.MustPing(t, b.IP)
			dp.Close()
			if tc.disable.TCX {
				if tcx, filters := bpfOn(t, node, a.HostIf, a.HostIfIndex); tcx != 0 || !strings.Contains(filters, "bpf") {
					t.Fatalf("%s in clsact mode: %d tcx programs, filters:\n%s", a.HostIf, tcx, filters)
				}
			}
			if !hasBPF(t, node, a.HostIf, a.HostIfIndex) {
				t.Fatalf("%s carries no BPF before cleanup", a.HostIf)
			}
			foreign := pinForeign(t, pin)
			if tc.remove == nil { // every map the node pinned
				dir, err := instance.ReadPinDir(pin)
				if err != nil {
					t.Fatal(err)
				}
				for _, name := range dir.Own {
					if !strings.HasSuffix(name, "/") {
						tc.remove = append(tc.remove, name)
					}
				}
			}
			for _, name := range tc.remove {
				if err := os.Remove(filepath.Join(pin, name)); err != nil {
					t.Fatal(err)
				}
			}
			run := func(stdin io.Reader, args ...string) (stdout, stderr string, code int) {
				t.Helper()
				return hrctlInWith(t, stdin, bin, node.NetnsName, append([]string{"--pin-path", pin}, args...)...)
			}

			fix := "`hrctl --pin-path " + pin + " cleanup`"
			for _, cmd := range [][]string{{"status"}, {"endpoint", "list"}} {
				stdout, stderr, code := run(nil, cmd...)
				if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "hrctl: pin path "+pin+" ") ||
					!strings.Contains(stderr, fix) || strings.Contains(stderr, "/proc/") {
					t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 and one line naming the pin path and the fix %s",
						cmd, code, stdout, stderr, fix)
				}
				for _, want := range tc.status {
					if !strings.Contains(stderr, want) {
						t.Errorf("%v: %q lacks %q", cmd, stderr, want)
					}
				}
			}

			stdout, stderr, code := run(nil, "cleanup")
			if code != 0 || stderr != "" {
				t.Fatalf("cleanup: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
			}
			for _, want := range []string{
				"This removes what is left of the hostrouting node at " + pin + ", which does not open:\n",
				"; missing: " + strings.Join(tc.remove, ", ") + ")\n",
				"It leaves what the node did not make: foreign\n",
				"Removed the hostrouting node at " + pin + ".\n",
			} {
				if !strings.Contains(stdout, want) {
					t.Errorf("cleanup output lacks %q:\n%s", want, stdout)
				}
			}
			if strings.Contains(stdout, "[y/N]") || strings.Contains(stdout, "/proc/") {
				t.Errorf("cleanup with stdin /dev/null asked, or named the pin path as hrctl reaches it:\n%s", stdout)
			}
			checkCleaned(t, pin, foreign)
			// Without hr_info, instance.Cleanup cannot tell the node's clsact
			// filters from others' and leaves them; tcx links are pinned.
			filtersKnown := !slices.Contains(tc.remove, "hr_info")
			for _, p := range []*datapathtest.Pod{a, b} {
				tcx, filters := bpfOn(t, node, p.HostIf, p.HostIfIndex)
				if tcx != 0 || (filtersKnown && strings.Contains(filters, "bpf")) {
					t.Errorf("%s after cleanup: %d tcx programs, filters:\n%s", p.HostIf, tcx, filters)
				}
			}
			a.MustPing(t, b.IP)

			// The operator's pin must go before a node starts there again.
			if err := os.Remove(foreign); err != nil {
				t.Fatal(err)
			}
			fresh := node.NewDatapath(t, datapath.Config{PinPath: pin})
			a.AddEndpoint(t, fresh)
			b.AddEndpoint(t, fresh)
			a.MustPing(t, b.IP)
			if out, stderr, code := run(nil, "status"); code != 0 || !strings.Contains(out, "Endpoints:        2\n") {
				t.Errorf("status of the new node: exit %d, stderr %q:\n%s", code, stderr, out)
			}
		})
	}
}

// TestConfirm checks the answers cleanup takes for yes.
func TestConfirm(t *testing.T) {
	for in, want := range map[string]bool{
		"y\n": true, "Y\n": true, "yes\n": true, "YES\r\n": true, " y \n": true, "y": true,
		"n\n": false, "\n": false, "": false, "no\n": false, "yess\n": false, "x\ny\n": false,
	} {
		var out bytes.Buffer
		if got := confirm(strings.NewReader(in), &out, "Remove it?"); got != want {
			t.Errorf("confirm(%q) = %v, want %v", in, got, want)
		}
		if !strings.HasPrefix(out.String(), "Remove it? [y/N] ") {
			t.Errorf("confirm(%q) asked %q", in, out.String())
		}
	}
}

// TestCleanupAsksOnlyATerminal runs cleanup in-process with an injected
// stdin on a pin path without a node (nothing to remove, so nothing to
// ask) and on one that is not on bpffs (refused before asking): no input
// is read either way.
func TestCleanupAsksOnlyATerminal(t *testing.T) {
	missing := filepath.Join(loader.DefaultBPFFS, "hrctl-missing-"+randomHex(6))
	for _, tc := range []struct {
		pin  string
		code int
		want string
	}{
		{missing, 0, "No hostrouting node at " + missing + ": nothing to clean.\n"},
		{t.TempDir(), 1, ""},
	} {
		in := strings.NewReader("y\n")
		var out, errOut bytes.Buffer
		code := run([]string{"--pin-path", tc.pin, "cleanup"}, stdio{in: in, out: &out, err: &errOut, interactive: true})
		if code != tc.code || out.String() != tc.want || in.Len() != 2 {
			t.Errorf("cleanup of %s: exit %d, stdout %q, stderr %q, %d bytes of stdin left; want exit %d, %q, stdin unread",
				tc.pin, code, out.String(), errOut.String(), in.Len(), tc.code, tc.want)
		}
	}
}

// openPTY opens a pseudo-terminal pair, closed in t.Cleanup, or skips.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pseudo-terminal number: %v", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { slave.Close() })
	return master, slave
}

// TestHrctlCleanupTerminal runs cleanup with stdin a terminal: it asks,
// "n" keeps the node (exit 1), "y" removes it; --force and -f ask nothing.
func TestHrctlCleanupTerminal(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	node := datapathtest.NewNode(t, "hrctl")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.10"))
	start := func() string {
		t.Helper()
		pin := datapathtest.PinPath(t)
		dp := node.NewDatapath(t, datapath.Config{PinPath: pin})
		a.AddEndpoint(t, dp)
		dp.Close()
		return pin
	}
	onTerminal := func(answer, pin string, args ...string) (stdout, stderr string, code int) {
		t.Helper()
		master, slave := openPTY(t)
		if _, err := master.WriteString(answer); err != nil {
			t.Fatal(err)
		}
		return hrctlInWith(t, slave, bin, node.NetnsName, append([]string{"--pin-path", pin, "cleanup"}, args...)...)
	}
	gone := func(pin string) bool {
		_, err := os.Stat(pin)
		return errors.Is(err, os.ErrNotExist)
	}

	pin := start()
	stdout, stderr, code := onTerminal("n\n", pin)
	if code != 1 || !strings.Contains(stdout, "Endpoints:        1 ") || !strings.HasSuffix(stdout, "Remove it? [y/N] ") ||
		stderr != "hrctl: cleanup declined: nothing removed\n" {
		t.Errorf("cleanup answered n: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	if gone(pin) || !hasBPF(t, node, a.HostIf, a.HostIfIndex) {
		t.Fatalf("cleanup answered n removed the node")
	}
	if _, stderr, code := hrctlIn(t, bin, node.NetnsName, "--pin-path", pin, "status"); code != 0 {
		t.Errorf("status after cleanup answered n: exit %d, %s", code, stderr)
	}
	stdout, stderr, code = onTerminal("y\n", pin)
	if code != 0 || stderr != "" || !strings.Contains(stdout, "Remove it? [y/N] Removed the hostrouting node at "+pin+".\n") {
		t.Errorf("cleanup answered y: exit %d, stderr %q, stdout:\n%s", code, stderr, stdout)
	}
	if !gone(pin) || hasBPF(t, node, a.HostIf, a.HostIfIndex) {
		t.Errorf("cleanup answered y left the node")
	}

	for _, force := range []string{"--force", "-f"} {
		pin := start()
		stdout, stderr, code := onTerminal("", pin, force) // nothing to read: asking would hang
		if code != 0 || stderr != "" || strings.Contains(stdout, "[y/N]") || !strings.Contains(stdout, "Removed the hostrouting node") {
			t.Errorf("cleanup %s on a terminal: exit %d, stderr %q, stdout:\n%s", force, code, stderr, stdout)
		}
		if !gone(pin) {
			t.Errorf("cleanup %s left the node", force)
		}
	}
}

// TestHrctlServiceUsage checks that bad service, conntrack and NAT input
// is a usage error naming the flag, found before any node is opened (the
// pin path is missing).
func TestHrctlServiceUsage(t *testing.T) {
	bin := buildHrctl(t)
	pin := filepath.Join(loader.DefaultBPFFS, "hrctl-missing-"+randomHex(6))
	ok := []string{"--frontend", "10.96.0.10:80", "--backends", "10.0.0.11:8080,10.0.0.12:8080"}
	with := func(args ...string) []string {
		return append(append([]string{"service", "update"}, ok...), args...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"service", "update", "--backends", "10.0.0.11:8080"}, "hrctl service update: missing --frontend"},
		{[]string{"service", "update", "--frontend", "10.96.0.10:80"}, "hrctl service update: missing --backends"},
		{[]string{"service", "update", "--frontend", "10.96.0.10", "--backends", "10.0.0.11:8080"}, `-frontend: "10.96.0.10" is not an IP:PORT`},
		{[]string{"service", "update", "--frontend", "10.96.0.10:0", "--backends", "10.0.0.11:8080"}, "-frontend: 10.96.0.10:0: port 0"},
		{[]string{"service", "update", "--frontend", "[fd00::10]:80", "--backends", "10.0.0.11:8080"}, "-frontend: [fd00::10]:80: want an IPv4 address"},
		{[]string{"service", "update", "--frontend", "10.96.0.10:80", "--backends", "10.0.0.11:8080,pod-b:80"}, `-backends: "pod-b:80" is not an IP:PORT`},
		{[]string{"service", "update", "--frontend", "10.96.0.10:80", "--backends", "10.0.0.11:8080,"}, `-backends: "" is not an IP:PORT`},
		{[]string{"service", "update", "--frontend", "10.96.0.10:80", "--backends", "10.0.0.11:70000"}, `-backends: "10.0.0.11:70000" is not an IP:PORT`},
		{with("--terminating", "10.0.0.13"), `-terminating: "10.0.0.13" is not an IP:PORT`},
		{with("--type", "LoadBalancer"), `-type: unknown service type "LoadBalancer": want ClusterIP, NodePort or ExternalIP`},
		{with("--protocol", "sctp"), `-protocol: unknown protocol "sctp": want tcp or udp`},
		{with("--affinity", "10800"), `-affinity: "10800" is not a duration such as 3h`},
		{with("--affinity", "-1s"), "-affinity: -1s: want 0 (none) to 18h12m15s"},
		{with("--affinity", "19h"), "-affinity: 19h0m0s: want 0 (none) to 18h12m15s"},
		{with("--affinity", "1.5s"), "-affinity: 1.5s: want whole seconds"},
		{with("--id", "65536"), `-id: "65536" is not a service ID from 0 to 65535`},
		{with("--id", "web"), `-id: "web" is not a service ID`},
		{with("--local"), "--local (externalTrafficPolicy Local) is for NodePort and ExternalIP services, not ClusterIP"},
		{with("--backends", "10.0.0.12:8080", "--type", "NodePort"), "backend 10.0.0.12:8080 given twice"},
		{with("--terminating", "10.0.0.13:8080"), "--terminating 10.0.0.13:8080 is not one of --backends"},
		{with("--terminating", "10.0.0.12:8080,10.0.0.11:80"), "--terminating 10.0.0.11:80 is not one of --backends"},
		{[]string{"service", "update", "--frontend", "10.96.0.10:80", "--terminating", "10.0.0.11:8080"}, "missing --backends"},
		{with("extra"), `unexpected argument "extra"`},
		{[]string{"service", "delete"}, "hrctl service delete: missing --id"},
		{[]string{"service", "delete", "--id", "0"}, "--id 0: service IDs run from 1 to 65535"},
		{[]string{"service", "delete", "--id", "1", "--frontend", "10.96.0.10:80"}, "flag provided but not defined: -frontend"},
		{[]string{"service", "list", "--id", "1"}, "flag provided but not defined: -id"},
		{[]string{"service", "list", "all"}, `unexpected argument "all"`},
		{[]string{"service"}, `unknown command "service"`},
		{[]string{"ct", "list", "global"}, `unexpected argument "global"`},
		{[]string{"ct", "list", "--ip", "10.0.0.10"}, "flag provided but not defined: -ip"},
		{[]string{"ct", "flush", "--ip", "pod-a"}, `-ip: "pod-a" is not an IPv4 address`},
		{[]string{"ct", "flush", "--ip", "fd00::10"}, `-ip: "fd00::10" is not an IPv4 address`},
		{[]string{"nat", "list", "--ip", "10.0.0.10"}, "flag provided but not defined: -ip"},
		{[]string{"nat"}, `unknown command "nat"`},
	} {
		stdout, stderr, code := hrctl(t, bin, append([]string{"--pin-path", pin}, tc.args...)...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "Usage: hrctl") {
			t.Errorf("hrctl %v: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and usage saying %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	// Well-formed, in any order and case: the missing node is the error.
	for _, args := range [][]string{
		with("--type", "nodeport", "--protocol", "UDP", "--local", "--internal-local", "--affinity", "3h", "--terminating", "10.0.0.12:8080", "--id", "0"),
		{"service", "update", "--backends", "10.0.0.11:8080", "--backends", "10.0.0.12:8080", "--frontend", "10.96.0.10:80", "--type", "ExternalIPs", "--json"},
		{"service", "update", "--frontend", "10.96.0.10:80", "--terminating", "10.0.0.11:8080", "--backends", "10.0.0.11:8080"},
		{"service", "delete", "--id", "65535"}, {"service", "list", "--json"},
		{"ct", "list"}, {"ct", "flush"}, {"ct", "flush", "--ip", "::ffff:10.0.0.10"}, {"nat", "list", "--json"},
	} {
		stdout, stderr, code := hrctl(t, bin, append([]string{"--pin-path", pin}, args...)...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, "does not exist") {
			t.Errorf("hrctl %v: exit %d, stdout %q, stderr %q; want exit 1: the pin path does not exist", args, code, stdout, stderr)
		}
	}
}

// TestHrctlServices runs the service, conntrack and NAT commands inside a
// node's netns: a pod reaches a ClusterIP made with service update over
// TCP and UDP, whose flows ct list shows and ct flush removes; a pod
// reaches a host outside the native routing CIDR, masqueraded, whose flow
// nat list shows; service delete removes a service.
func TestHrctlServices(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	c := datapathtest.NewCluster(t, 1)
	n0 := c.Nodes[0]
	client := n0.AddPod(t, "client", n0.PodIP(10))
	backend := n0.AddPod(t, "backend", n0.PodIP(11))
	pin := datapathtest.PinPath(t)
	dp := n0.NewDatapath(t, datapath.Config{PinPath: pin, Devices: []string{n0.Device},
		NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	client.AddEndpoint(t, dp)
	backend.AddEndpoint(t, dp)
	tcpBackend := netip.AddrPortFrom(backend.IP, backend.ServeTCPEcho(t))
	udpBackend := netip.AddrPortFrom(backend.IP, backend.ServeUDPEcho(t))
	node, err := instance.Open(pin) // the tables, as the test sees them
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ct, snat := tables.NewConntrack(node.Maps.ConntrackTables()...), tables.NewSNAT(node.Maps.SNATTables()...)

	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		return hrctlIn(t, bin, n0.NetnsName, append([]string{"--pin-path", pin}, args...)...)
	}
	mustRun := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := run(args...)
		if code != 0 || stderr != "" {
			t.Fatalf("hrctl %v: exit %d, stderr %q", args, code, stderr)
		}
		return stdout
	}
	const header = "ID   Frontend                   Service Type Backend\n"
	wantList := func() string {
		t.Helper()
		svcs, err := dp.Services()
		if err != nil {
			t.Fatal(err)
		}
		want := header
		for _, s := range svcs {
			want += s.String() + "\n"
		}
		return want
	}

	if out := mustRun("service", "list"); out != header {
		t.Errorf("service list without services:\n%q, want the header %q", out, header)
	}
	if out := mustRun("service", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("service list --json without services: %q, want []", out)
	}
	if out := mustRun("ct", "list"); out != "" {
		t.Errorf("ct list before any translated flow: %q, want nothing", out)
	}

	// update: a new service gets the lowest free ID; its frontend again
	// (no --id) is the same service; --id picks one.
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	for i := range 2 {
		if out := mustRun("service", "update", "--frontend", vip.String(), "--backends", tcpBackend.String()); out != "1\n" {
			t.Errorf("service update #%d printed %q, want the ID 1", i+1, out)
		}
	}
	dns := netip.MustParseAddrPort("10.96.0.10:53")
	if out := mustRun("service", "update", "--id", "5", "--frontend", dns.String(), "--protocol", "udp", "--backends", udpBackend.String()); out != "5\n" {
		t.Errorf("service update --id 5 printed %q, want 5", out)
	}
	nodePort := netip.AddrPortFrom(n0.IP, 30080)
	terminating := netip.MustParseAddrPort("10.0.0.99:8080")
	var created struct{ ID uint16 }
	out := mustRun("--json", "service", "update", "--id", "0", "--frontend", nodePort.String(), "--type", "NodePort",
		"--local", "--internal-local", "--affinity", "3h", "--backends", tcpBackend.String()+","+terminating.String(), "--terminating", terminating.String())
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.ID != 2 {
		t.Errorf("service update --json: %v, %q; want ID 2", err, out)
	}
	svcs, err := dp.Services()
	if err != nil || len(svcs) != 3 {
		t.Fatalf("services: %v, %v; want 3", svcs, err)
	}
	np := svcs[1]
	wantNP := datapath.Service{ID: 2, Frontend: nodePort, Protocol: datapath.TCP, Type: datapath.NodePort, ExternalTrafficPolicyLocal: true,
		SessionAffinity: 3 * time.Hour, Backends: []datapath.Backend{{Addr: tcpBackend}, {Addr: terminating, State: datapath.BackendTerminating}}}
	if np.String() != wantNP.String() || !np.ExternalTrafficPolicyLocal || !np.InternalTrafficPolicyLocal || np.SessionAffinity != 3*time.Hour {
		t.Errorf("the NodePort service: %+v, want %+v", np, wantNP)
	}
	list := mustRun("service", "list")
	if want := wantList(); list != want {
		t.Errorf("service list:\n%swant\n%s", list, want)
	}
	// The seed's row shape, a line per backend.
	for _, want := range []string{
		fmt.Sprintf("1    10.96.0.10:80/TCP          ClusterIP    1 => %s/TCP (active)\n", tcpBackend),
		fmt.Sprintf("5    10.96.0.10:53/UDP          ClusterIP    1 => %s/UDP (active)\n", udpBackend),
		fmt.Sprintf("2    %-26s NodePort     1 => %s/TCP (active)\n%s 2 => %s/TCP (terminating)\n",
			nodePort.String()+"/TCP", tcpBackend, strings.Repeat(" ", 44), terminating),
	} {
		if !strings.Contains(list, want) {
			t.Errorf("service list lacks %q:\n%s", want, list)
		}
	}
	var listed []struct {
		ID             uint16
		Frontend       netip.AddrPort
		Protocol, Type string
		Backends       []struct {
			Addr  netip.AddrPort
			State string
		}
		ExternalTrafficPolicyLocal bool
		SessionAffinitySeconds     int
	}
	if err := json.Unmarshal([]byte(mustRun("service", "list", "--json")), &listed); err != nil || len(listed) != 3 {
		t.Fatalf("service list --json: %v, %d services", err, len(listed))
	}
	if l := listed[1]; l.ID != 2 || l.Frontend != nodePort || l.Protocol != "TCP" || l.Type != "NodePort" || !l.ExternalTrafficPolicyLocal ||
		l.SessionAffinitySeconds != 10800 || len(l.Backends) != 2 || l.Backends[1].Addr != terminating || l.Backends[1].State != "terminating" {
		t.Errorf("service list --json, the NodePort service: %+v", l)
	}

	// Traffic to the ClusterIP: ct list shows each flow's SVC and REPLY
	// entries, as the tables hold them.
	client.MustTCPEcho(t, vip.Addr(), vip.Port())
	client.MustUDPEcho(t, dns.Addr(), dns.Port())
	ctLines := lines(mustRun("ct", "list"))
	checkKeys(t, "ct list", ctLines, func() ([]string, error) {
		entries, err := ct.List()
		var keys []string
		for _, e := range entries {
			keys = append(keys, e.Key().String())
		}
		return keys, err
	})
	for _, want := range []struct{ prefix, contains string }{
		{fmt.Sprintf("TCP SVC %s:", client.IP), fmt.Sprintf(" -> %s expires=", vip)},
		{fmt.Sprintf("TCP REPLY %s -> %s:", tcpBackend, client.IP), " RevNAT=1 "},
		{fmt.Sprintf("UDP SVC %s:", client.IP), fmt.Sprintf(" -> %s expires=", dns)},
		{fmt.Sprintf("UDP REPLY %s -> %s:", udpBackend, client.IP), " RevNAT=5 "},
	} {
		if !slices.ContainsFunc(ctLines, func(l string) bool {
			return strings.HasPrefix(l, want.prefix) && strings.Contains(l, want.contains) && strings.Contains(l, "[ SeenReply")
		}) {
			t.Errorf("ct list lacks a line %q...%q, seen reply:\n%s", want.prefix, want.contains, strings.Join(ctLines, "\n"))
		}
	}
	type ctRow struct {
		Proto, Dir string
		Src, Dst   netip.AddrPort
		RevNAT     uint16
		BackendID  uint32
		Flags      []string
	}
	var ctJSON []ctRow
	if err := json.Unmarshal([]byte(mustRun("ct", "list", "--json")), &ctJSON); err != nil || len(ctJSON) != len(ctLines) {
		t.Fatalf("ct list --json: %v, %d entries; want %d", err, len(ctJSON), len(ctLines))
	}
	if !slices.ContainsFunc(ctJSON, func(e ctRow) bool {
		return e.Proto == "TCP" && e.Dir == "SVC" && e.Src.Addr() == client.IP && e.Dst == vip && e.RevNAT == 1 &&
			e.BackendID != 0 && slices.Contains(e.Flags, "SeenReply")
	}) {
		t.Errorf("ct list --json lacks the TCP service flow:\n%+v", ctJSON)
	}

	// ct flush: of an address no flow has, nothing; then everything.
	if out := mustRun("ct", "flush", "--ip", "10.0.0.99"); out != "Flushed 0 entries of 10.0.0.99 from the conntrack table\n" {
		t.Errorf("ct flush --ip 10.0.0.99: %q", out)
	}
	if out, want := mustRun("ct", "flush"), fmt.Sprintf("Flushed %d entries from the conntrack table\n", len(ctLines)); out != want {
		t.Errorf("ct flush: %q, want %q", out, want)
	}
	if out := mustRun("ct", "list"); out != "" {
		t.Errorf("ct list after ct flush:\n%s", out)
	}
	if entries, err := ct.List(); err != nil || len(entries) != 0 {
		t.Errorf("conntrack after ct flush: %v, %v; want none", entries, err)
	}
	// The service still works, a new flow; flushing the client's address
	// removes its entries.
	client.MustTCPEcho(t, vip.Addr(), vip.Port())
	n := len(lines(mustRun("ct", "list")))
	if n < 2 {
		t.Errorf("ct list after a new flow: %d entries, want its SVC and REPLY", n)
	}
	if out, want := mustRun("ct", "flush", "--ip", client.IP.String()), fmt.Sprintf("Flushed %d entries of %s from the conntrack table\n", n, client.IP); out != want {
		t.Errorf("ct flush --ip %s: %q, want %q", client.IP, out, want)
	}
	if out := mustRun("--json", "ct", "flush"); strings.Join(strings.Fields(out), "") != `{"Flushed":0}` {
		t.Errorf("ct flush --json of an empty table: %q", out)
	}

	// Masquerade: the client reaches the wire's gateway, outside the
	// native routing CIDR, with the node's address.
	outside, err := netcheck.ServeTCPEcho(c.Wire, netip.AddrPortFrom(c.Gateway, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outside.Close() })
	client.MustTCPEcho(t, c.Gateway, outside.Addr().Port())
	natLines := lines(mustRun("nat", "list"))
	checkKeys(t, "nat list", natLines, func() ([]string, error) {
		entries, err := snat.List()
		var keys []string
		for _, e := range entries {
			keys = append(keys, e.Key().String())
		}
		return keys, err
	})
	var outLine string
	for _, l := range natLines {
		if strings.HasPrefix(l, fmt.Sprintf("TCP OUT %s:", client.IP)) && strings.Contains(l, fmt.Sprintf(" -> %s XLATE_SRC %s:", outside.Addr(), n0.IP)) {
			outLine = l
		}
	}
	if outLine == "" {
		t.Fatalf("nat list lacks the client's OUT entry to %s translated to %s:\n%s", outside.Addr(), n0.IP, strings.Join(natLines, "\n"))
	}
	f := strings.Fields(outLine) // TCP OUT src -> dst XLATE_SRC to expires=N
	if wantIn := fmt.Sprintf("TCP IN %s -> %s XLATE_DST %s expires=", f[4], f[6], f[2]); !slices.ContainsFunc(natLines, func(l string) bool {
		return strings.HasPrefix(l, wantIn)
	}) {
		t.Errorf("nat list lacks the reply's IN entry %q...:\n%s", wantIn, strings.Join(natLines, "\n"))
	}
	type natRow struct {
		Proto, Dir   string
		Src, Dst, To netip.AddrPort
	}
	var natJSON []natRow
	if err := json.Unmarshal([]byte(mustRun("nat", "list", "--json")), &natJSON); err != nil || len(natJSON) != len(natLines) {
		t.Fatalf("nat list --json: %v, %d entries; want %d", err, len(natJSON), len(natLines))
	}
	if !slices.ContainsFunc(natJSON, func(e natRow) bool {
		return e.Proto == "TCP" && e.Dir == "OUT" && e.Src.Addr() == client.IP && e.Dst == outside.Addr() && e.To.Addr() == n0.IP
	}) {
		t.Errorf("nat list --json lacks the client's OUT entry:\n%+v", natJSON)
	}

	// What the datapath refuses: exit 1, one line.
	stdout, stderr, code := run("service", "update", "--id", "7", "--frontend", dns.String(), "--protocol", "udp", "--backends", udpBackend.String())
	if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "is service 5's") {
		t.Errorf("service update of service 5's frontend under ID 7: exit %d, stdout %q, stderr %q; want exit 1 and one line", code, stdout, stderr)
	}

	// delete: the service goes, its frontend is not answered; a second
	// time it is unknown.
	if out := mustRun("service", "delete", "--id", "1"); out != "" {
		t.Errorf("service delete printed %q, want nothing", out)
	}
	if svcs, err := dp.Services(); err != nil || len(svcs) != 2 || svcs[0].ID != 2 || svcs[1].ID != 5 {
		t.Errorf("services after service delete --id 1: %v, %v; want 2 and 5", svcs, err)
	}
	if out, want := mustRun("service", "list"), wantList(); out != want {
		t.Errorf("service list after service delete:\n%swant\n%s", out, want)
	}
	if err := client.TCPEcho(vip.Addr(), vip.Port(), []byte("ping"), time.Second); err == nil {
		t.Errorf("TCP to the deleted service's frontend %s was answered", vip)
	}
	stdout, stderr, code = run("service", "delete", "--id", "1")
	if code != 1 || stdout != "" || stderr != "hrctl: no service with ID 1 (see hrctl service list)\n" {
		t.Errorf("service delete of an unknown ID: exit %d, stdout %q, stderr %q; want exit 1 and one line", code, stdout, stderr)
	}
}

// lines splits command output into its lines.
func lines(out string) []string {
	if out == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

// checkKeys checks that the output lines of cmd begin with the keys of the
// table's entries, each once: that it listed the whole table as read
// (expiries and counters may move in between).
func checkKeys(t *testing.T, cmd string, lines []string, read func() ([]string, error)) {
	t.Helper()
	keys, err := read()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Errorf("%s: line %q is not an entry", cmd, l)
			continue
		}
		got = append(got, strings.Join(f[:5], " "))
	}
	slices.Sort(got)
	slices.Sort(keys)
	if !slices.Equal(got, keys) {
		t.Errorf("%s lists\n%s\nthe table holds\n%s", cmd, strings.Join(got, "\n"), strings.Join(keys, "\n"))
	}
}

// TestHrctlSocketLB: socket-lb puts socket-level load balancing on a
// cgroup (bpftool sees the hooks there, status says Enabled) and takes it
// off again; bad input is refused with the reason.
func TestHrctlSocketLB(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	c := datapathtest.NewCluster(t, 1)
	n0 := c.Nodes[0]
	pin := datapathtest.PinPath(t)
	n0.NewDatapath(t, datapath.Config{PinPath: pin, Devices: []string{n0.Device}, NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	cgroup := datapathtest.NewCgroup(t)
	run := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		return hrctlIn(t, bin, n0.NetnsName, append([]string{"--pin-path", pin}, args...)...)
	}
	hooked := func() bool {
		t.Helper()
		out, err := exec.Command("bpftool", "cgroup", "show", cgroup).CombinedOutput()
		if err != nil {
			t.Fatalf("bpftool cgroup show %s: %v\n%s", cgroup, err, out)
		}
		return strings.Contains(string(out), "sock4_connect")
	}
	for _, step := range []struct {
		args   []string
		hooked bool
		status string
	}{
		{[]string{"socket-lb", "--cgroup", cgroup}, true, "Socket LB: Enabled"},
		{[]string{"socket-lb", "--off"}, false, "Socket LB: Disabled"},
	} {
		if stdout, stderr, code := run(step.args...); code != 0 || stdout != "" || stderr != "" {
			t.Fatalf("hrctl %v: exit %d, stdout %q, stderr %q", step.args, code, stdout, stderr)
		}
		if hooked() != step.hooked {
			t.Errorf("after hrctl %v: socket LB hooks on %s: %v, want %v", step.args, cgroup, !step.hooked, step.hooked)
		}
		if status, _, _ := run("status"); !strings.Contains(status, step.status) {
			t.Errorf("after hrctl %v: status does not say %q:\n%s", step.args, step.status, status)
		}
	}
	for _, bad := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"socket-lb"}, 2, "missing --cgroup or --off"},
		{[]string{"socket-lb", "--cgroup", cgroup, "--off"}, 2, "--cgroup and --off: give one"},
		{[]string{"socket-lb", "--cgroup", "relative/dir"}, 1, `socket LB cgroup "relative/dir": must be an absolute path`},
		{[]string{"socket-lb", "--cgroup", t.TempDir()}, 1, "not a cgroup v2 directory"},
	} {
		if _, stderr, code := run(bad.args...); code != bad.code || !strings.Contains(stderr, bad.want) {
			t.Errorf("hrctl %v: exit %d, stderr %q; want exit %d saying %q", bad.args, code, stderr, bad.code, bad.want)
		}
	}
	if hooked() {
		t.Error("a refused socket-lb left hooks on the cgroup")
	}
}

// TestHrctlMetrics: after pod-to-pod pings, metrics lists the
// bpf_redirect_peer deliveries, map list the two endpoints in
// hr_endpoints, and serve-metrics serves them to a Prometheus scrape
// (curl inside the node's namespace) until SIGTERM ends it cleanly.
func TestHrctlMetrics(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	c := datapathtest.NewCluster(t, 1)
	n0 := c.Nodes[0]
	a, b := n0.AddPod(t, "a", n0.PodIP(10)), n0.AddPod(t, "b", n0.PodIP(11))
	pin := datapathtest.PinPath(t)
	dp := n0.NewDatapath(t, datapath.Config{PinPath: pin, MaxEndpoints: 64})
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
	run := func(args ...string) string {
		t.Helper()
		stdout, stderr, code := hrctlIn(t, bin, n0.NetnsName, append([]string{"--pin-path", pin}, args...)...)
		if code != 0 || stderr != "" {
			t.Fatalf("hrctl %v: exit %d, stderr %q", args, code, stderr)
		}
		return stdout
	}
	if out := run("metrics"); !regexp.MustCompile(`(?m)^forward-peer\s+from-container\s+[1-9]\d*\s+\d+$`).MatchString(out) {
		t.Errorf("hrctl metrics has no forward-peer line for from-container:\n%s", out)
	}
	if out := run("map", "list"); !regexp.MustCompile(`(?m)^hr_endpoints\s+Hash\s+2\s+64\s+3\.1%\s+\d+$`).MatchString(out) {
		t.Errorf("hrctl map list: hr_endpoints not at 2 of 64 entries:\n%s", out)
	}

	cmd := exec.Command("ip", "netns", "exec", n0.NetnsName, bin, "--pin-path", pin, "serve-metrics", "--listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	url, ok := strings.CutPrefix(strings.TrimSpace(line), "serving ")
	if err != nil || !ok {
		t.Fatalf("serve-metrics said %q, %v; stderr %s", line, err, stderr.String())
	}
	body := n0.Exec(t, "curl", "-sf", url)
	for _, want := range []string{`hostrouting_forward_count_total{direction="from_container",path="redirect_peer"}`,
		`hostrouting_bpf_map_entries{map_name="hr_endpoints"} 2`, "hostrouting_endpoints 2"} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape of %s lacks %q:\n%s", url, want, body)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("serve-metrics after SIGTERM: %v; stderr %s", err, stderr.String())
	}
}

// TestHrctlMonitor: monitor prints a pod-to-pod ping's decisions in the
// shape of `cilium monitor` and a spoofed datagram's drop with --type
// drop; the packets it writes with --pcap are read back by tcpdump -r;
// on exit the node's monitor is off again.
func TestHrctlMonitor(t *testing.T) {
	datapathtest.RequireRoot(t)
	bin := buildHrctl(t)
	c := datapathtest.NewCluster(t, 1)
	n0 := c.Nodes[0]
	a, b := n0.AddPod(t, "a", n0.PodIP(10)), n0.AddPod(t, "b", n0.PodIP(11))
	pin := datapathtest.PinPath(t)
	dp := n0.NewDatapath(t, datapath.Config{PinPath: pin})
	epA := a.AddEndpoint(t, dp)
	epB := b.AddEndpoint(t, dp)
	pcap := filepath.Join(t.TempDir(), "trace.pcap")

	// start runs hrctl monitor with args while traffic runs, until it
	// has printed count lines (0: until SIGTERM, once the traffic is
	// done); it returns its output.
	start := func(traffic func(), count int, args ...string) string {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", n0.NetnsName, bin, "--pin-path", pin, "monitor",
			"--count", strconv.Itoa(count)}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for level, _, _ := dp.MonitorSettings(); level == datapath.MonitorOff && time.Now().Before(deadline); level, _, _ = dp.MonitorSettings() {
			time.Sleep(20 * time.Millisecond)
		}
		traffic()
		wait := 10 * time.Second
		if count == 0 {
			wait = 500 * time.Millisecond
		}
		timer := time.AfterFunc(wait, func() { cmd.Process.Signal(syscall.SIGTERM) })
		defer timer.Stop()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("hrctl monitor %v: %v\n%s%s", args, err, out.String(), errOut.String())
		}
		return out.String()
	}

	out := start(func() { a.MustPing(t, b.IP) }, 0, "--type", "trace", "--from", strconv.Itoa(int(epA.ID)), "--pcap", pcap)
	// As cilium monitor: a delivery names the endpoint it enters.
	want := regexp.MustCompile(fmt.Sprintf(`(?m)^-> endpoint %d flow %s -> %s ICMPv4 EchoRequest, forward-peer \(from-container, ifindex \d+\)$`, epB.ID, a.IP, b.IP))
	if n := len(want.FindAllString(out, -1)); n != 3 {
		t.Errorf("hrctl monitor --type trace --from %d: %d echo request lines, want 3:\n%s", epA.ID, n, out)
	}
	dump, err := exec.Command("tcpdump", "-n", "-r", pcap).CombinedOutput()
	if err != nil || strings.Count(string(dump), fmt.Sprintf("%s > %s: ICMP echo request", a.IP, b.IP)) != 3 {
		t.Errorf("tcpdump -r of monitor's pcap: %v, want the 3 echo requests:\n%s", err, dump)
	}

	// A connection to a service, per connection and verbose: the
	// conntrack and load-balancing steps of its first packet, its SYN;
	// none of its data segments.
	port := b.ServeTCPEcho(t)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	id, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP,
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(b.IP, port)}}})
	if err != nil {
		t.Fatal(err)
	}
	out = start(func() { a.MustTCPEcho(t, vip.Addr(), vip.Port()) }, 0, "--aggregate", "connection", "-v")
	for _, want := range []string{
		fmt.Sprintf(`(?m)^CT verdict: New, revnat=%d\nService backend %s:%d selected for %s:\d+ -> %s TCP$`, id, b.IP, port, a.IP, vip),
		fmt.Sprintf(`(?m)^-> endpoint %d flow %s:\d+ -> %s:%d TCP SYN, forward-peer \(from-container`, epB.ID, a.IP, b.IP, port),
		`(?m)^CT verdict: Reply, revnat=\d+\nReverse NAT `,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("hrctl monitor --aggregate connection -v lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "TCP ACK PSH") {
		t.Errorf("hrctl monitor --aggregate connection -v reports data segments:\n%s", out)
	}

	spoof := netip.MustParseAddr("10.0.0.99")
	out = start(func() {
		if err := a.Do(func() error { return sendFrom(spoof, b.IP) }); err != nil {
			t.Fatal(err)
		}
	}, 1, "--type", "drop")
	if want := fmt.Sprintf("xx drop (drop-spoofed) flow %s:9 -> %s:9 UDP to endpoint %d", spoof, b.IP, epA.ID); !strings.HasPrefix(out, want) {
		t.Errorf("hrctl monitor --type drop:\n%s\nwant a line starting %q", out, want)
	}
	out = start(func() {
		if err := a.Do(func() error { return sendFrom(spoof, b.IP) }); err != nil {
			t.Fatal(err)
		}
	}, 1, "--json", "--type", "drop")
	var ev struct {
		Endpoint                   uint16
		Drop                       bool
		Direction, Reason, Summary string
		Data                       []byte
	}
	if err := json.Unmarshal([]byte(out), &ev); err != nil || ev.Endpoint != epA.ID || !ev.Drop || ev.Direction != "from-container" ||
		ev.Reason != "drop-spoofed" || ev.Summary != fmt.Sprintf("%s:9 -> %s:9 UDP", spoof, b.IP) || len(ev.Data) < 34 {
		t.Errorf("hrctl monitor --json: %v, %+v from\n%s", err, ev, out)
	}
	if level, _, err := dp.MonitorSettings(); err != nil || level != datapath.MonitorOff {
		t.Errorf("after hrctl monitor the node's monitor is %v (%v), want off", level, err)
	}

	// While an agent reads the node's events, hrctl monitor says so
	// rather than taking them from it.
	mon, err := dp.OpenMonitor()
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()
	if _, stderr, code := hrctlIn(t, bin, n0.NetnsName, "--pin-path", pin, "monitor", "--count", "1"); code != 1 ||
		!strings.Contains(stderr, "the node's events have a reader already") {
		t.Errorf("hrctl monitor beside another reader: exit %d, %q; want 1 and why", code, stderr)
	}
}

// sendFrom sends a UDP datagram to dst port 9 from src, an address this
// namespace does not own (a transparent socket).
func sendFrom(src, dst netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4(), Port: 9}); err != nil {
		return err
	}
	return unix.Sendto(fd, []byte("spoofed"), 0, &unix.SockaddrInet4{Addr: dst.As4(), Port: 9})
}
