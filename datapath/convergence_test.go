package datapath_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// reloadEnv makes the test binary a process that reloads a node with the
// datapath.Config in the variable (JSON) and exits: the process the
// convergence test kills half-way.
const reloadEnv = "HOSTROUTING_TEST_RELOAD"

func TestMain(m *testing.M) {
	if ask := os.Getenv(askEnv); ask != "" {
		os.Exit(askMain(ask))
	}
	if conf := os.Getenv(reloadEnv); conf != "" {
		var cfg datapath.Config
		if err := json.Unmarshal([]byte(conf), &cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		dp, err := datapath.New(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		dp.Close()
		os.Exit(0)
	}
	os.Exit(datapathtest.RunPrivileged(m))
}

// startReload starts a process that reloads the node with cfg.
func startReload(t *testing.T, cfg datapath.Config) *exec.Cmd {
	t.Helper()
	conf, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), reloadEnv+"="+string(conf))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// runsCurrent fails t unless the endpoint's host device runs exactly the
// node's current from-container and to-container, in the node's attach
// mode, and nothing of an earlier load.
func runsCurrent(t *testing.T, dp *datapath.Datapath, node *datapathtest.Node, p *datapathtest.Pod) {
	t.Helper()
	for _, prog := range []datapath.Program{datapath.FromContainer, datapath.ToContainer} {
		if ok, err := dp.Attached(p.IP, prog); err != nil || !ok {
			t.Errorf("%s on %s: current program attached %v, err %v", prog, p.HostIf, ok, err)
		}
	}
	st, err := dp.Status()
	if err != nil {
		t.Fatal(err)
	}
	var tcx, filters int
	err = node.Do(func() error {
		for _, attach := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: p.HostIfIndex, Attach: attach})
			if err != nil {
				return err
			}
			tcx += len(res.Programs)
		}
		dev, err := netlink.LinkByIndex(p.HostIfIndex)
		if err != nil {
			return err
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(dev, parent)
			if err != nil && st.AttachMode == "tcx" {
				continue // no clsact qdisc at all
			}
			filters += len(fs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool][2]int{true: {2, 0}, false: {0, 2}}[st.AttachMode == "tcx"]; tcx != want[0] || filters != want[1] {
		t.Errorf("%s in mode %s: %d tcx programs and %d clsact filters, want %d and %d", p.HostIf, st.AttachMode, tcx, filters, want[0], want[1])
	}
}

// TestReloadKilledHalfWayConverges kills processes that reload a node with
// 30 pods (switching tcx ↔ clsact and the native routing CIDR) at random
// points with SIGKILL; after each, one AddEndpoint of a new pod leaves
// every endpoint running the pinned programs, and no stages of earlier
// loads pinned.
func TestReloadKilledHalfWayConverges(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	cfgs := []datapath.Config{
		{Netns: node.Netns, PinPath: datapathtest.PinPath(t)},
		{Disable: loader.Disable{TCX: true}},
		{NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")},
		{Disable: loader.Disable{TCX: true}, NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/16")},
	}
	for i := range cfgs[1:] {
		cfgs[i+1].Netns, cfgs[i+1].PinPath = cfgs[0].Netns, cfgs[0].PinPath
	}
	dp := node.NewDatapath(t, cfgs[0])
	var pods []*datapathtest.Pod
	for i := range 30 {
		p := node.AddPod(t, fmt.Sprintf("p%d", i), netip.AddrFrom4([4]byte{10, 0, 1, byte(10 + i)}))
		p.AddEndpoint(t, dp)
		pods = append(pods, p)
	}

	const rounds = 8
	interrupted := 0
	for round := range rounds {
		cfg := cfgs[1+round%3]
		child := startReload(t, cfg)
		time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		child.Process.Signal(syscall.SIGKILL)
		child.Wait()

		probe, err := instance.Open(cfg.PinPath)
		if err != nil {
			t.Fatalf("round %d: open the node after the kill: %v", round, err)
		}
		if r, _ := probe.Renewing(); r {
			interrupted++
		}
		probe.Close()

		// One ADD, through the first process's handle, completes the
		// switch. The pod gets a second round of its own device.
		extra := node.AddPod(t, fmt.Sprintf("x%d", round), netip.AddrFrom4([4]byte{10, 0, 2, byte(10 + round)}))
		extra.AddEndpoint(t, dp)
		pods = append(pods, extra)
		for _, p := range pods {
			runsCurrent(t, dp, node, p)
		}
		if stages, _ := filepath.Glob(filepath.Join(cfg.PinPath, "progs", "hr_calls_*")); len(stages) != 1 {
			t.Errorf("round %d: stage pins %v, want the current load's only", round, stages)
		}
		if t.Failed() {
			t.Fatalf("round %d (killed with the renewal %s): endpoints do not all run the pinned programs",
				round, map[bool]string{true: "unfinished", false: "done or not begun"}[interrupted > 0])
		}
	}
	t.Logf("%d of %d reloads were killed with attachments still to renew; every one converged on the next AddEndpoint", interrupted, rounds)
	pods[0].MustPing(t, pods[len(pods)-1].IP)
}

// TestRemovedMapPinIsRepaired removes a map pin by hand: the next call
// pins the map the programs still run again (same map, same endpoints),
// and a pin no program uses gives an error naming it and the fix.
func TestRemovedMapPinIsRepaired(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{})
	pin := pinPathOf(t, dp)
	mapID := func() ebpf.MapID {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pin, "hr_endpoints"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		info, _ := m.Info()
		id, _ := info.ID()
		return id
	}
	before := mapID()
	if err := os.Remove(filepath.Join(pin, "hr_endpoints")); err != nil {
		t.Fatal(err)
	}
	again, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns})
	if err != nil {
		t.Fatalf("New after hr_endpoints was unpinned: %v", err)
	}
	defer again.Close()
	if after := mapID(); after != before {
		t.Errorf("hr_endpoints is map %d after the repair, the programs run %d", after, before)
	}
	if eps, err := again.Endpoints(); err != nil || len(eps) != 2 {
		t.Errorf("endpoints after the repair: %v, %v; want both", eps, err)
	}
	c := node.AddPod(t, "c", ipC)
	c.AddEndpoint(t, again)
	c.MustPing(t, a.IP)
	a.MustPing(t, b.IP)

	if err := os.Remove(filepath.Join(pin, "hr_nodes")); err != nil {
		t.Fatal(err)
	}
	_, err = datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns})
	if !errors.Is(err, loader.ErrPartialPins) || !strings.Contains(err.Error(), "hr_nodes") || !strings.Contains(err.Error(), "hrctl --pin-path "+pin+" cleanup") {
		t.Errorf("New without hr_nodes: %v, want ErrPartialPins naming hr_nodes and the fix", err)
	}

	// The fix: what is left goes, pods fall back to the kernel's routing,
	// and a new node starts on the same pin path.
	if err := datapath.Cleanup(datapath.Location{PinPath: pin, Netns: node.Netns}); err != nil {
		t.Fatalf("Cleanup of the partial node: %v", err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path after Cleanup: %v, want it gone", err)
	}
	for _, p := range []*datapathtest.Pod{a, b, c} {
		if ingress := node.Exec(t, "tc", "filter", "show", "dev", p.HostIf, "ingress"); strings.Contains(ingress, "bpf") {
			t.Errorf("%s after Cleanup: %s", p.HostIf, ingress)
		}
	}
	a.MustPing(t, b.IP)
	fresh := node.NewDatapath(t, datapath.Config{PinPath: pin})
	a.AddEndpoint(t, fresh)
}

// TestStaleHandles: a handle whose node another process reloaded attaches
// the new programs; one whose node was removed fails with ErrRemoved and
// makes nothing again; one that was closed fails with ErrClosed.
func TestStaleHandles(t *testing.T) {
	node, a, b, first := twoPods(t, datapath.Config{})
	pin := pinPathOf(t, first)
	second, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, Disable: loader.Disable{TCX: true}})
	if err != nil {
		t.Fatal(err)
	}
	c := node.AddPod(t, "c", ipC)
	c.AddEndpoint(t, first) // through the handle of the old programs
	for _, p := range []*datapathtest.Pod{a, b, c} {
		runsCurrent(t, second, node, p)
	}
	c.MustPing(t, a.IP)

	if err := second.Remove(); err != nil {
		t.Fatal(err)
	}
	d := node.AddPod(t, "d", netip.MustParseAddr("10.0.0.13"))
	if _, err := first.AddEndpoint(d.Endpoint()); !errors.Is(err, datapath.ErrRemoved) {
		t.Errorf("AddEndpoint on a removed node: %v, want ErrRemoved", err)
	}
	if err := first.UpsertNode(datapath.Node{Name: "n", IP: netip.MustParseAddr("172.18.0.9"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}); !errors.Is(err, datapath.ErrRemoved) {
		t.Errorf("UpsertNode on a removed node: %v, want ErrRemoved", err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path after calls on a removed node: %v, want it gone", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Endpoints(); !errors.Is(err, datapath.ErrClosed) {
		t.Errorf("Endpoints after Close: %v, want ErrClosed", err)
	}
	if _, err := first.AddEndpoint(d.Endpoint()); !errors.Is(err, datapath.ErrClosed) {
		t.Errorf("AddEndpoint after Close: %v, want ErrClosed", err)
	}
}

// TestStaleEndpointGivesWay: an endpoint whose pod device is gone (a DEL
// that never came) does not block its address, ID or container: a new
// pod with the same address is added in its place.
func TestStaleEndpointGivesWay(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	dp := node.NewDatapath(t, datapath.Config{})
	a := node.AddPod(t, "a", ipA)
	ep := a.Endpoint()
	ep.ContainerID, ep.PodIfName = "c0ffee", "eth0"
	first, err := dp.AddEndpoint(ep)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dp.EndpointByContainer("c0ffee", "eth0"); err != nil || got.IP != ipA {
		t.Errorf("EndpointByContainer: %v, %v", got, err)
	}
	if err := routing.DeleteVeth(node.Netns, a.HostIf); err != nil {
		t.Fatal(err)
	}
	again := node.AddPod(t, "a2", ipA)
	got, err := dp.AddEndpoint(datapath.Endpoint{IfName: again.HostIf, IP: ipA, MAC: again.MAC, ID: first.ID})
	if err != nil {
		t.Fatalf("AddEndpoint in place of a stale endpoint: %v", err)
	}
	if got.IfIndex != again.HostIfIndex || got.ID != first.ID {
		t.Errorf("endpoint %v, want ID %d on ifindex %d", got, first.ID, again.HostIfIndex)
	}
	if _, err := dp.EndpointByContainer("c0ffee", ""); !errors.Is(err, datapath.ErrNotFound) {
		t.Errorf("the stale endpoint's container is still known: %v", err)
	}
	b := node.AddPod(t, "b", ipB)
	b.AddEndpoint(t, dp)
	b.MustPing(t, ipA)

	// A live endpoint still blocks its address.
	c := node.AddPod(t, "c", ipC)
	if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: c.HostIf, IP: ipA, MAC: c.MAC}); !errors.Is(err, datapath.ErrEndpointExists) {
		t.Errorf("AddEndpoint with a live endpoint's address: %v, want ErrEndpointExists", err)
	}
}

// TestPinPathOwnership: the bpffs root and a directory of someone else's
// are refused as pin paths, and Remove leaves what it did not make.
func TestPinPathOwnership(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	if _, err := datapath.New(datapath.Config{PinPath: loader.DefaultBPFFS, Netns: node.Netns}); !errors.Is(err, loader.ErrForeignPinPath) {
		t.Fatalf("pin path %s: %v, want ErrForeignPinPath", loader.DefaultBPFFS, err)
	}

	foreign := datapathtest.PinPath(t)
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	tenant, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tenant.Close()
	if err := tenant.Pin(filepath.Join(foreign, "tenant")); err != nil {
		t.Fatal(err)
	}
	if _, err := datapath.New(datapath.Config{PinPath: foreign, Netns: node.Netns}); !errors.Is(err, loader.ErrForeignPinPath) || !strings.Contains(err.Error(), "tenant") {
		t.Errorf("pin path of another tenant: %v, want ErrForeignPinPath naming its pin", err)
	}

	pin := datapathtest.PinPath(t)
	dp, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(foreign, "tenant"), filepath.Join(pin, "tenant")); err != nil {
		t.Fatal(err)
	}
	if err := dp.Remove(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(pin)
	if len(entries) != 1 || entries[0].Name() != "tenant" {
		t.Errorf("after Remove, %s holds %v: want the tenant's pin alone", pin, entries)
	}
}

// TestOneNodePerNetnsAndDevice: a pin path belongs to one network
// namespace, and a device runs one node instance's programs.
func TestOneNodePerNetnsAndDevice(t *testing.T) {
	for _, mode := range []loader.Disable{{}, {TCX: true}} {
		t.Run(fmt.Sprintf("tcx=%v", !mode.TCX), func(t *testing.T) {
			node := datapathtest.NewNode(t, "node")
			other := datapathtest.NewNode(t, "other")
			a := node.AddPod(t, "a", ipA)
			first := node.NewDatapath(t, datapath.Config{Disable: mode})
			a.AddEndpoint(t, first)
			pin := pinPathOf(t, first)
			if _, err := datapath.New(datapath.Config{PinPath: pin, Netns: other.Netns, Disable: mode}); !errors.Is(err, loader.ErrOtherNetns) {
				t.Errorf("the node's pin path from another netns: %v, want ErrOtherNetns", err)
			}
			second := node.NewDatapath(t, datapath.Config{Disable: mode})
			if _, err := second.AddEndpoint(a.Endpoint()); !errors.Is(err, loader.ErrOtherInstance) {
				t.Errorf("a second instance on the same device: %v, want ErrOtherInstance", err)
			}
			a.MustPing(t, a.IP)
		})
	}
}

// TestNodeDeviceQdiscRemoved: in clsact mode the clsact qdisc the node
// made on its device goes with Remove; one that was there before stays.
func TestNodeDeviceQdiscRemoved(t *testing.T) {
	for _, preexisting := range []bool{false, true} {
		t.Run(fmt.Sprintf("preexisting=%v", preexisting), func(t *testing.T) {
			cluster := datapathtest.NewCluster(t, 1)
			n := cluster.Nodes[0]
			if preexisting {
				n.Exec(t, "tc", "qdisc", "add", "dev", n.Device, "clsact")
			}
			dp, err := datapath.New(datapath.Config{PinPath: datapathtest.PinPath(t), Netns: n.Netns,
				Devices: []string{n.Device}, Disable: loader.Disable{TCX: true}})
			if err != nil {
				t.Fatal(err)
			}
			if q := n.Exec(t, "tc", "qdisc", "show", "dev", n.Device); !strings.Contains(q, "clsact") {
				t.Fatalf("no clsact qdisc on %s: %s", n.Device, q)
			}
			if err := dp.Remove(); err != nil {
				t.Fatal(err)
			}
			if q := n.Exec(t, "tc", "qdisc", "show", "dev", n.Device); strings.Contains(q, "clsact") != preexisting {
				t.Errorf("after Remove: %q; want clsact %v", q, preexisting)
			}
		})
	}
}

// TestAdoptionTakesRunningSizes: a node made with another endpoint limit
// is adopted with MaxEndpoints 0, and refused with a different one.
func TestAdoptionTakesRunningSizes(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	dp := node.NewDatapath(t, datapath.Config{MaxEndpoints: 64})
	pin := pinPathOf(t, dp)
	adopted, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns})
	if err != nil {
		t.Fatalf("adopt a node of 64 endpoints with MaxEndpoints 0: %v", err)
	}
	adopted.Close()
	if _, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, MaxEndpoints: 128}); err == nil || !strings.Contains(err.Error(), "made with 64") {
		t.Errorf("MaxEndpoints 128 on a node of 64: %v, want an error naming both", err)
	}
}
