package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
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

// hrctl runs the binary and returns its stdout, stderr and exit code.
func hrctl(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
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
		{"node"}, {"--name", "x", "node", "del"}} {
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

	stdout, stderr, code := hrctl(t, bin, "--pin-path", pin, "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"Host Routing:     BPF\n", "Endpoints:        2\n", "Pin Path:         " + pin + "\n", "  from-container: forward-peer", "BPF Maps:         "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("status lacks %q:\n%s", want, stdout)
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
	}
	if err := json.Unmarshal([]byte(stdout), &s); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, stderr %q, %v:\n%s", code, stderr, err, stdout)
	}
	if s.HostRouting != datapath.HostRoutingBPF || s.Endpoints != 2 || s.Metrics["from-container"]["forward-peer"].Packets == 0 {
		t.Errorf("status --json: %+v, want BPF, 2 endpoints, forward-peer counted", s)
	}
}

// hrctlIn runs the binary inside the named netns, as hrctl runs on a node.
func hrctlIn(t *testing.T, bin, netns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return hrctl(t, "ip", append([]string{"netns", "exec", netns, bin}, args...)...)
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

	// What the datapath refuses: exit 1, one line.
	for _, tc := range []struct {
		args []string
		want string
	}{
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
