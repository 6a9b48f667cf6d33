package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	for _, args := range [][]string{nil, {"bogus"}, {"endpoint"}, {"status", "extra"}, {"--no-such-flag", "status"}} {
		_, stderr, code := hrctl(t, bin, args...)
		if code != 2 || !strings.Contains(stderr, "Usage: hrctl") {
			t.Errorf("hrctl %v: exit %d, want 2 and usage; stderr:\n%s", args, code, stderr)
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
	for _, want := range []string{"Host Routing:     BPF\n", "Endpoints:        2\n", "Pin Path:         " + pin + "\n", "  forward-peer:"} {
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
		Metrics     map[string]struct{ Packets, Bytes uint64 }
	}
	if err := json.Unmarshal([]byte(stdout), &s); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, stderr %q, %v:\n%s", code, stderr, err, stdout)
	}
	if s.HostRouting != datapath.HostRoutingBPF || s.Endpoints != 2 || s.Metrics["forward-peer"].Packets == 0 {
		t.Errorf("status --json: %+v, want BPF, 2 endpoints, forward-peer counted", s)
	}
}
