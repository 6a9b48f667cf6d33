package instance_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
)

// firstLoadEnv makes the test binary a process that makes a node's first
// load and exits (TestMain): "PIN_PATH NETNS".
const firstLoadEnv = "HOSTROUTING_TEST_FIRST_LOAD"

// TestMain runs the tests, or, with firstLoadEnv set, is the process
// TestFirstLoadKilledConverges kills.
func TestMain(m *testing.M) {
	arg := os.Getenv(firstLoadEnv)
	if arg == "" {
		os.Exit(datapathtest.RunPrivileged(m))
	}
	pin, netns, _ := strings.Cut(arg, " ")
	if _, err := instance.Load(instance.Options{PinPath: pin, Netns: netns}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// firstLoad is a process that makes the first load of a node at pin in
// the network namespace at netns.
func firstLoad(pin, netns string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), firstLoadEnv+"="+pin+" "+netns)
	return cmd
}

// TestFirstLoadKilledConverges kills processes making a node's first load
// (a CNI ADD on a fresh node) with SIGKILL at random points; after each,
// one Load succeeds, and its programs attach, detach and go with Remove.
func TestFirstLoadKilledConverges(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	pod := node.AddPod(t, "a", netipA)

	// Spread the kills over a whole first load, as long as it takes here.
	pin := datapathtest.PinPath(t)
	start := time.Now()
	if out, err := firstLoad(pin, node.Netns).CombinedOutput(); err != nil {
		t.Fatalf("first load: %v\n%s", err, out)
	}
	whole := time.Since(start)
	useAndRemove(t, node, pod, instance.Options{PinPath: pin, Netns: node.Netns})

	const rounds = 10
	var halfWay int
	for round := range rounds {
		pin := datapathtest.PinPath(t)
		child := firstLoad(pin, node.Netns)
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(rand.N(whole + whole/5))
		child.Process.Signal(syscall.SIGKILL)
		child.Wait()

		probe, err := instance.Open(pin)
		if err == nil {
			probe.Close()
		} else if d, _ := instance.ReadPinDir(pin); len(d.Own) > 0 {
			halfWay++ // pins, but no node
		}
		useAndRemove(t, node, pod, instance.Options{PinPath: pin, Netns: node.Netns})
		if t.Failed() {
			t.Fatalf("round %d: the node did not recover from its first load killed after %s", round, whole)
		}
	}
	t.Logf("a first load takes %s; %d of %d killed half-way, every one loaded afresh by the next Load", whole.Round(time.Millisecond), halfWay, rounds)
}

// TestAbandonedFirstLoadConverges leaves pin directories as a first load
// killed half-way does (hr_info pinned, never written; some maps, or
// everything but the commit): Open sees no node, and the next Load starts
// over and makes a node that works.
func TestAbandonedFirstLoadConverges(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	pod := node.AddPod(t, "a", netipA)
	opts := func(pin string) instance.Options { return instance.Options{PinPath: pin, Netns: node.Netns} }

	t.Run("some maps", func(t *testing.T) {
		pin := datapathtest.PinPath(t)
		if err := os.MkdirAll(filepath.Join(pin, "progs"), 0o700); err != nil {
			t.Fatal(err)
		}
		spec, err := bpf.LoadHostrouting()
		if err != nil {
			t.Fatal(err)
		}
		// hr_endpoints of another size than Load makes: starting over
		// must make it anew, not adopt it.
		spec.Maps[bpf.HostroutingMapHrEndpoints].MaxEntries = 7
		for _, name := range []string{bpf.HostroutingMapHrInfo, bpf.HostroutingMapHrEndpoints, bpf.HostroutingMapHrLb4Affinity} {
			m, err := ebpf.NewMapWithOptions(spec.Maps[name], ebpf.MapOptions{PinPath: pin})
			if err != nil {
				t.Fatalf("pin %s: %v", name, err)
			}
			m.Close()
		}
		assertNoNode(t, pin)
		n := useAndRemove(t, node, pod, opts(pin))
		if got := n.Maps.Endpoints.MaxEntries(); got != loader.DefaultMaxEndpoints {
			t.Errorf("hr_endpoints has %d entries: the abandoned load's map was adopted", got)
		}
	})

	t.Run("all but the commit", func(t *testing.T) {
		pin := datapathtest.PinPath(t)
		n, err := instance.Load(opts(pin))
		if err != nil {
			t.Fatal(err)
		}
		n.Close()
		info, err := ebpf.LoadPinnedMap(filepath.Join(pin, bpf.HostroutingMapHrInfo), nil)
		if err != nil {
			t.Fatal(err)
		}
		err = info.Put(uint32(0), make([]byte, info.ValueSize())) // as before the load wrote it
		info.Close()
		if err != nil {
			t.Fatal(err)
		}
		assertNoNode(t, pin)
		useAndRemove(t, node, pod, opts(pin))
	})
}

// assertNoNode fails t unless Open finds no node at pin.
func assertNoNode(t *testing.T, pin string) {
	t.Helper()
	if n, err := instance.Open(pin); !errors.Is(err, loader.ErrNoNode) {
		if err == nil {
			n.Close()
		}
		t.Errorf("Open of an uncommitted first load: %v, want ErrNoNode", err)
	}
}

// useAndRemove loads the node with opts, attaches and detaches its pod
// programs on the pod's device, and removes it, leaving nothing at the
// pin path. It returns the removed node.
func useAndRemove(t *testing.T, node *datapathtest.Node, pod *datapathtest.Pod, opts instance.Options) *instance.Instance {
	t.Helper()
	n, err := instance.Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	programs := []loader.Program{loader.FromContainer, loader.ToContainer}
	for _, p := range programs {
		if err := n.Attach(node.Netns, pod.HostIfIndex, p); err != nil {
			n.Remove()
			t.Fatal(err)
		}
	}
	assertAttached(t, n, node.Netns, pod.HostIfIndex, true)
	for _, p := range programs {
		if err := n.Detach(node.Netns, pod.HostIfIndex, p); err != nil {
			t.Error(err)
		}
	}
	assertAttached(t, n, node.Netns, pod.HostIfIndex, false)
	if err := n.Remove(); err != nil {
		t.Errorf("Remove: %v", err)
	}
	if _, err := os.Stat(opts.PinPath); !errors.Is(err, os.ErrNotExist) {
		d, _ := instance.ReadPinDir(opts.PinPath)
		t.Errorf("after Remove, %s: %v (holds %v)", opts.PinPath, err, d)
	}
	return n
}
