package topology_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/routing"
)

// TestWire builds a wire with two nodes, checks their devices, addresses
// and routes by pinging across, and that Close removes everything.
func TestWire(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	ctx := context.Background()
	prefix := uniquePrefix()
	var checked []string
	w, err := topology.NewWire(ctx, topology.Options{Prefix: prefix, MTU: 1400, Check: func(p string) error {
		checked = append(checked, p)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	var nodes []*topology.Node
	for i, name := range []string{"a", "b"} {
		n, err := w.AddNode(ctx, topology.NodeOptions{Name: name, Port: "port-" + name, IP: topology.NodeIP(i)})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	if err := w.WaitUp(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := nodes[0], nodes[1]
	if w.NetnsName != prefix+"-wire" || a.NetnsName != prefix+"-a" || a.Name != "a" || a.Device != "eth0" || b.IP.String() != "172.18.0.3" {
		t.Errorf("wire %s, nodes %+v %+v", w.NetnsName, a, b)
	}
	if want := []string{w.Netns, a.Netns, b.Netns}; !slices.Equal(checked, want) {
		t.Errorf("Check saw %v, want %v", checked, want)
	}
	for _, c := range []struct{ netns, dev, want string }{
		{a.NetnsName, "eth0", "mtu 1400 "}, {w.NetnsName, "port-a", "master br0 "}, {w.NetnsName, "br0", "state UP"},
	} {
		out, err := exec.Command("ip", "-n", c.netns, "-o", "link", "show", c.dev).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%s %s: %v %s, want %q", c.netns, c.dev, err, out, c.want)
		}
	}
	opts := netcheck.PingOptions{Count: 2, Timeout: 3 * time.Second}
	if err := netcheck.PingAll(ctx, a.Netns, b.IP, opts); err != nil {
		t.Errorf("node a to b: %v", err)
	}
	if err := netcheck.PingAll(ctx, b.Netns, topology.Gateway.Addr(), opts); err != nil {
		t.Errorf("node b to the gateway: %v", err)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, w.Netns, a.Netns, b.Netns)
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestWireCheckRefuses checks that a namespace Check refuses fails the call
// that made it, and that nothing is left behind.
func TestWireCheckRefuses(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	ctx := context.Background()
	refused := errors.New("refused")
	prefix := uniquePrefix()
	if _, err := topology.NewWire(ctx, topology.Options{Prefix: prefix, Check: func(string) error { return refused }}); !errors.Is(err, refused) {
		t.Errorf("NewWire: %v, want %v", err, refused)
	}
	checkGone(t, filepath.Join(routing.NetnsDir, prefix+"-wire"))

	w, err := topology.NewWire(ctx, topology.Options{Prefix: prefix, Check: func(p string) error {
		if strings.HasSuffix(p, "-b") {
			return refused
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.AddNode(ctx, topology.NodeOptions{Name: "b", Port: "port-b", IP: topology.NodeIP(0)}); !errors.Is(err, refused) {
		t.Errorf("AddNode: %v, want %v", err, refused)
	}
	if len(w.Nodes) != 0 {
		t.Errorf("nodes %v after a failed AddNode", w.Nodes)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, w.Netns, filepath.Join(routing.NetnsDir, prefix+"-b"))

	if _, err := topology.NewNetns(canceled(), prefix+"-c", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("NewNetns with an ended context: %v", err)
	}
	checkGone(t, filepath.Join(routing.NetnsDir, prefix+"-c"))
}

func uniquePrefix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "hr-" + hex.EncodeToString(b) + "-topo"
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func checkGone(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s remains (%v)", p, err)
		}
	}
}
