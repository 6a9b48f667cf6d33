package instance_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
)

var netipA = netip.MustParseAddr("10.0.0.10")

func TestLoadAdoptClose(t *testing.T) {
	datapathtest.RequireRoot(t)
	pin := datapathtest.PinPath(t)
	first, err := instance.Load(instance.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	if first.Adopted {
		t.Error("first load on an empty pin path says Adopted")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"hr_endpoints", "hr_ep_stats", "hr_metrics", "hr_info", "progs/from_container", "progs/to_container"} {
		if _, err := os.Stat(filepath.Join(pin, name)); err != nil {
			t.Errorf("after Close: %v", err)
		}
	}

	second, err := instance.Load(instance.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	if !second.Adopted || renewing(t, second) {
		t.Errorf("same code and config: Adopted %v renewing %v, want adopted", second.Adopted, renewing(t, second))
	}
	second.Close()

	third, err := instance.Load(instance.Options{PinPath: pin, Disable: loader.Disable{RedirectPeer: true}})
	if err != nil {
		t.Fatal(err)
	}
	if third.Adopted || !renewing(t, third) || third.Features.RedirectPeer.Enabled {
		t.Errorf("other config: Adopted %v renewing %v peer %v, want a reload", third.Adopted, renewing(t, third), third.Features.RedirectPeer)
	}
	if err := third.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Remove, %s: %v", pin, err)
	}
	if _, err := instance.Open(pin); err == nil {
		t.Error("Open of a removed node succeeded")
	}
}

func TestAttachIsIdempotent(t *testing.T) {
	for _, mode := range []loader.Disable{{}, {TCX: true}} {
		node := datapathtest.NewNode(t, "node")
		pod := node.AddPod(t, "a", netipA)
		n, err := instance.Load(instance.Options{PinPath: datapathtest.PinPath(t), Disable: mode})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Remove() })
		for range 3 {
			for _, p := range []loader.Program{loader.FromContainer, loader.ToContainer} {
				if err := n.Attach(node.Netns, pod.HostIfIndex, p); err != nil {
					t.Fatal(err)
				}
			}
		}
		assertAttached(t, n, node.Netns, pod.HostIfIndex, true)
		ingress := node.Exec(t, "tc", "filter", "show", "dev", pod.HostIf, "ingress")
		links, _ := filepath.Glob(filepath.Join(n.PinPath, "links", "*"))
		if mode.TCX {
			if c := strings.Count(ingress, "hostrouting_from_container"); c != 1 || len(links) != 0 {
				t.Errorf("clsact: %d from_container filters, %d tcx links: want 1, 0\n%s", c, len(links), ingress)
			}
		} else if len(links) != 2 || strings.Contains(ingress, "from_container") {
			t.Errorf("tcx: %d links %v, filters %q: want 2 links, no filter", len(links), links, ingress)
		}
		for _, p := range []loader.Program{loader.FromContainer, loader.ToContainer} {
			if err := n.Detach(node.Netns, pod.HostIfIndex, p); err != nil {
				t.Fatal(err)
			}
			if err := n.Detach(node.Netns, pod.HostIfIndex, p); err != nil {
				t.Fatalf("second detach: %v", err)
			}
		}
		assertAttached(t, n, node.Netns, pod.HostIfIndex, false)
		ingress = node.Exec(t, "tc", "filter", "show", "dev", pod.HostIf, "ingress")
		links, _ = filepath.Glob(filepath.Join(n.PinPath, "links", "*"))
		if len(links) != 0 || strings.Contains(ingress, "from_container") {
			t.Errorf("after detach: links %v, filters %q", links, ingress)
		}
	}
}

func assertAttached(t *testing.T, n *instance.Instance, nsPath string, ifindex int, want bool) {
	t.Helper()
	for _, p := range []loader.Program{loader.FromContainer, loader.ToContainer} {
		got, err := n.Attached(nsPath, ifindex, p)
		if err != nil || got != want {
			t.Errorf("Attached(%s) = %v, %v: want %v", p, got, err, want)
		}
	}
}

func TestAttachToMissingDevice(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	n, err := instance.Load(instance.Options{PinPath: datapathtest.PinPath(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Remove() })
	err = n.Attach(node.Netns, 4242, loader.FromContainer)
	if err == nil || !strings.Contains(err.Error(), "attach from-container to ifindex 4242") {
		t.Fatalf("attach to a missing device: %v", err)
	}
	if links, _ := filepath.Glob(filepath.Join(n.PinPath, "links", "*")); len(links) != 0 {
		t.Errorf("failed attach left links: %v", links)
	}
}

func TestPinPathMustBeOnBPFFS(t *testing.T) {
	datapathtest.RequireRoot(t)
	dir := t.TempDir()
	for _, pin := range []string{dir, filepath.Join(dir, "sub", "node"), "relative/path"} {
		if _, err := instance.Load(instance.Options{PinPath: pin}); err == nil {
			t.Errorf("Load(%q) succeeded", pin)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("failed loads left %d entries in %s", len(entries), dir)
	}
	if _, err := instance.Open(dir); !errors.Is(err, loader.ErrNotBPFFS) {
		t.Errorf("Open(%s) = %v, want ErrNotBPFFS", dir, err)
	}
	empty := datapathtest.PinPath(t)
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := instance.Open(empty); !errors.Is(err, loader.ErrNoNode) {
		t.Errorf("Open(empty bpffs dir) = %v, want ErrNoNode", err)
	}
}

// renewing tells whether n's attachments still wait for renewal.
func renewing(t *testing.T, n *instance.Instance) bool {
	t.Helper()
	r, err := n.Renewing()
	if err != nil {
		t.Fatal(err)
	}
	return r
}
