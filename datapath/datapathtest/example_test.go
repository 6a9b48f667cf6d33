package datapathtest_test

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// The fixtures are for tests: each example is the body of a test as an
// embedder writes it, func(t testing.TB), run by runTest as `go test`
// would run it. Everything the fixtures make (network namespaces, veths,
// pin directories below /sys/fs/bpf) goes in t.Cleanup, also when the
// test fails; the machine's own network namespace is never changed.

// Two pods on one node, and host routing between them: their packets
// move by bpf_redirect_peer, past the node's stack, so the kernel's
// FORWARD chain never sees them.
func ExampleNewNode() {
	runTest(func(t testing.TB) { // func TestPodToPod(t *testing.T) {
		node := datapathtest.NewNode(t, "node1")
		a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
		b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))
		forwarded := node.CountForward(t)

		dp := node.NewDatapath(t, datapath.Config{}) // a fresh pin path, the node's netns
		for _, p := range []*datapathtest.Pod{a, b} {
			ep := p.AddEndpoint(t, dp)
			fmt.Printf("pod %s: endpoint %s ID %d\n", p.Name, ep.IP, ep.ID)
		}

		received, err := a.Ping(b.IP, 3, 2*time.Second)
		fmt.Printf("ping %s → %s: %d of 3 replies %v\n", a.IP, b.IP, received, err)
		port := b.ServeTCPEcho(t)
		err = a.TCPEcho(b.IP, port, []byte("hello"), 5*time.Second)
		fmt.Printf("TCP echo %s → %s: %v\n", a.IP, b.IP, err)
		fmt.Println("forwarded by the node's stack:", forwarded())
	})
	// Output:
	// pod a: endpoint 10.0.0.1 ID 1
	// pod b: endpoint 10.0.0.2 ID 2
	// ping 10.0.0.1 → 10.0.0.2: 3 of 3 replies <nil>
	// TCP echo 10.0.0.1 → 10.0.0.2: <nil>
	// forwarded by the node's stack: 0
}

// Two kind-like nodes on one wire, host routing on the first: its pod's
// packets for the worker's pods leave by bpf_fib_lookup and
// bpf_redirect_neigh, to the route the datapath made for the worker's pod
// CIDR. The worker has no datapath; its kernel routes the replies back.
func ExampleNewCluster() {
	runTest(func(t testing.TB) {
		c := datapathtest.NewCluster(t, 2)
		cp, worker := c.Nodes[0], c.Nodes[1]
		for _, n := range c.Nodes {
			fmt.Printf("node %s: %s %s, pods from %s\n", n.Name, n.Device, n.IP, n.PodCIDR)
		}
		a := cp.AddPod(t, "a", cp.PodIP(10))
		w := worker.AddPod(t, "w", worker.PodIP(10))

		dp := cp.NewDatapath(t, datapath.Config{Devices: []string{cp.Device}, NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
		a.AddEndpoint(t, dp)
		if err := dp.UpsertNode(datapath.Node{Name: worker.Name, IP: worker.IP, PodCIDRs: []netip.Prefix{worker.PodCIDR}}); err != nil {
			t.Fatal(err)
		}
		if err := routing.UpsertNodeRoutes(worker.Netns, worker.Device, cp.IP, []netip.Prefix{cp.PodCIDR}); err != nil {
			t.Fatal(err)
		}

		received, err := a.Ping(w.IP, 3, 5*time.Second)
		fmt.Printf("ping %s → %s: %d of 3 replies %v\n", a.IP, w.IP, received, err)
	})
	// Output:
	// node control-plane: eth0 172.18.0.2, pods from 10.0.0.0/24
	// node worker: eth0 172.18.0.3, pods from 10.0.1.0/24
	// ping 10.0.0.10 → 10.0.1.10: 3 of 3 replies <nil>
}

// A pod that the code under test wires itself, here Calico-style with
// routing.SetupVeth (no address on the node's side, so nothing but the
// datapath's ARP responder answers the pod for its gateway), becomes a
// Pod with WrapPod, for the traffic helpers. Whoever wired it removes it.
func ExampleNode_WrapPod() {
	runTest(func(t testing.TB) {
		node := datapathtest.NewNode(t, "node1")
		dp := node.NewDatapath(t, datapath.Config{})
		var pods []*datapathtest.Pod
		for _, p := range []struct {
			name, hostIf string
			ip           netip.Addr
		}{{"a", "cali1a2b3c", netip.MustParseAddr("10.0.0.1")}, {"b", "cali4d5e6f", netip.MustParseAddr("10.0.0.2")}} {
			// What a CNI plugin under test would do.
			_, podNetns := datapathtest.NewNetns(t, p.name)
			veth, err := routing.SetupVeth(routing.VethConfig{HostNetns: node.Netns, HostIfName: p.hostIf, PodNetns: podNetns,
				Addr: netip.PrefixFrom(p.ip, 32), NoHostAddress: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { routing.DeleteVeth(node.Netns, veth.HostIfName) })
			if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: veth.HostIfName, IP: p.ip, MAC: veth.PodMAC, ARPResponder: true}); err != nil {
				t.Fatal(err)
			}

			pod := node.WrapPod(t, p.name, podNetns, "eth0", p.hostIf)
			fmt.Printf("pod %s: %s on %s\n", pod.Name, pod.IP, pod.HostIf)
			pods = append(pods, pod)
		}
		received, err := pods[0].Ping(pods[1].IP, 3, 2*time.Second)
		fmt.Printf("ping %s → %s: %d of 3 replies %v\n", pods[0].IP, pods[1].IP, received, err)
	})
	// Output:
	// pod a: 10.0.0.1 on cali1a2b3c
	// pod b: 10.0.0.2 on cali4d5e6f
	// ping 10.0.0.1 → 10.0.0.2: 3 of 3 replies <nil>
}

// runTest runs body as `go test` runs a test: on a goroutine of its own,
// which t.FailNow and t.SkipNow end, then its cleanups, last first. It
// prints what failed, so that the example fails with it. An Example gets
// no *testing.T; in a test, pass yours.
func runTest(body func(t testing.TB)) {
	t := &exampleT{}
	run := func(f func()) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			f()
		}()
		<-done
	}
	run(func() { body(t) })
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			break
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		run(f)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.failed:
		fmt.Printf("FAIL\n%s", t.log.String())
	case t.skipped:
		fmt.Printf("SKIP\n%s", t.log.String())
	}
}

// exampleT is the part of testing.TB that the fixtures use; the rest
// (the embedded nil TB) panics.
type exampleT struct {
	testing.TB

	mu       sync.Mutex
	log      strings.Builder
	cleanups []func()
	failed   bool
	skipped  bool
}

func (t *exampleT) Name() string { return "Example" }
func (t *exampleT) Helper()      {}

func (t *exampleT) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *exampleT) Log(args ...any)              { t.logf("%s", fmt.Sprintln(args...)) }
func (t *exampleT) Logf(f string, args ...any)   { t.logf(f, args...) }
func (t *exampleT) Error(args ...any)            { t.Log(args...); t.Fail() }
func (t *exampleT) Errorf(f string, args ...any) { t.Logf(f, args...); t.Fail() }
func (t *exampleT) Fatal(args ...any)            { t.Log(args...); t.FailNow() }
func (t *exampleT) Fatalf(f string, args ...any) { t.Logf(f, args...); t.FailNow() }
func (t *exampleT) Skip(args ...any)             { t.Log(args...); t.SkipNow() }
func (t *exampleT) Skipf(f string, args ...any)  { t.Logf(f, args...); t.SkipNow() }

func (t *exampleT) Fail() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = true
}

func (t *exampleT) FailNow() {
	t.Fail()
	runtime.Goexit()
}

func (t *exampleT) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *exampleT) SkipNow() {
	t.mu.Lock()
	t.skipped = true
	t.mu.Unlock()
	runtime.Goexit()
}

func (t *exampleT) Skipped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.skipped
}

func (t *exampleT) TempDir() string {
	dir, err := os.MkdirTemp("", "hrexample-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (t *exampleT) logf(f string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(&t.log, "    "+strings.TrimSuffix(f, "\n")+"\n", args...)
}

// TestMain leaves the examples out without root (outside CI, which
// requires privileged tests), as the tests skip: examples cannot.
func TestMain(m *testing.M) {
	os.Exit(datapathtest.RunPrivileged(m))
}
