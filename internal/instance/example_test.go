package instance_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// The examples run under go test, as root. Each is a node of its own: a
// network namespace it makes ("hr-ex<PID>-...") and a pin directory
// below /sys/fs/bpf ("hrtest-ex<PID>-..."; Load mounts the bpf filesystem
// there first if nothing is), both removed when it returns, also on
// failure. The machine's own network namespace is never changed.

// A node's datapath, loaded once: a second Load of the same pin path, by
// this process or another (an agent restarting, a CNI plugin's next ADD),
// adopts what the first pinned. Remove tears it down.
func ExampleLoad() {
	nsName := fmt.Sprintf("hr-ex%d-load", os.Getpid())
	netns, err := routing.CreateNetns(nsName)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer routing.DeleteNetns(nsName)
	pinPath := filepath.Join(loader.DefaultBPFFS, fmt.Sprintf("hrtest-ex%d-load", os.Getpid()))
	defer os.RemoveAll(pinPath) // what an example that failed half-way left

	node, err := instance.Load(instance.Options{PinPath: pinPath, Netns: netns, MaxEndpoints: 64})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("loaded: adopted %v, endpoint IDs 1 to %d\n", node.Adopted, node.MaxEndpoints)

	again, err := instance.Load(instance.Options{PinPath: pinPath, Netns: netns})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("loaded again: adopted %v, endpoint IDs 1 to %d\n", again.Adopted, again.MaxEndpoints)
	again.Close() // this process's handles go; the pinned datapath stays

	pins, err := instance.ReadPinDir(pinPath)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("pinned: the node's own only %v, none missing %v\n", len(pins.Others) == 0, len(pins.Missing) == 0)

	if err := node.Remove(); err != nil {
		fmt.Println(err)
		return
	}
	_, err = os.Stat(pinPath)
	fmt.Println("removed:", os.IsNotExist(err))
	// Output:
	// loaded: adopted false, endpoint IDs 1 to 64
	// loaded again: adopted true, endpoint IDs 1 to 64
	// pinned: the node's own only true, none missing true
	// removed: true
}

// A tool that inspects a running node (hrctl) opens it: nothing is loaded,
// mounted or changed, and a pin path without a node is an error.
func ExampleOpen() {
	nsName := fmt.Sprintf("hr-ex%d-open", os.Getpid())
	netns, err := routing.CreateNetns(nsName)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer routing.DeleteNetns(nsName)
	pinPath := filepath.Join(loader.DefaultBPFFS, fmt.Sprintf("hrtest-ex%d-open", os.Getpid()))
	defer os.RemoveAll(pinPath)

	// The agent's side: load, and leave the datapath running.
	node, err := instance.Load(instance.Options{PinPath: pinPath, Netns: netns, MaxEndpoints: 64,
		NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	if err != nil {
		fmt.Println(err)
		return
	}
	node.Close()

	// The tool's side.
	open, err := instance.Open(pinPath)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("native routing CIDR:", open.NativeRoutingCIDR)
	sizes, err := open.MapSizes()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, m := range sizes {
		if m.Name == "hr_endpoints" || m.Name == "hr_policy" {
			fmt.Printf("%s: %s of %d entries\n", m.Name, m.Type, m.MaxEntries)
		}
	}

	if err := open.Remove(); err != nil {
		fmt.Println(err)
		return
	}
	_, err = instance.Open(pinPath)
	fmt.Println("after Remove:", err != nil)
	// Output:
	// native routing CIDR: 10.0.0.0/8
	// hr_endpoints: Hash of 64 entries
	// hr_policy: ProgramArray of 65 entries
	// after Remove: true
}

// The datapath's programs on a pod's host-side device: from-container on
// tc ingress (what the pod sends), to-container on tc egress (what the
// node's stack delivers into it). The datapath package does this, and
// fills the endpoint maps, in AddEndpoint.
func ExampleInstance_Attach() {
	var names []string
	defer func() {
		for _, name := range names {
			routing.DeleteNetns(name) // the pod's devices, and what is attached to them, go with it
		}
	}()
	newNetns := func(role string) string {
		name := fmt.Sprintf("hr-ex%d-%s", os.Getpid(), role)
		path, err := routing.CreateNetns(name)
		if err != nil {
			panic(err) // fails the example, once the deferred cleanup ran
		}
		names = append(names, name)
		return path
	}
	nodeNetns, podNetns := newNetns("attach-node"), newNetns("attach-pod")
	veth, err := routing.SetupVeth(routing.VethConfig{HostNetns: nodeNetns, HostIfName: "lxc1a2b3c", PodNetns: podNetns,
		Addr: netip.MustParsePrefix("10.0.0.10/32")})
	if err != nil {
		fmt.Println(err)
		return
	}
	pinPath := filepath.Join(loader.DefaultBPFFS, fmt.Sprintf("hrtest-ex%d-attach", os.Getpid()))
	defer os.RemoveAll(pinPath)
	node, err := instance.Load(instance.Options{PinPath: pinPath, Netns: nodeNetns, MaxEndpoints: 64})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Remove()

	for _, p := range []loader.Program{loader.FromContainer, loader.ToContainer} {
		if err := node.Attach(nodeNetns, veth.HostIfIndex, p); err != nil {
			fmt.Println(err)
			return
		}
		// Attaching again keeps one attachment.
		if err := node.Attach(nodeNetns, veth.HostIfIndex, p); err != nil {
			fmt.Println(err)
			return
		}
		on, err := node.Attached(nodeNetns, veth.HostIfIndex, p)
		fmt.Printf("%v on %s: %v %v\n", p, veth.HostIfName, on, err)
	}
	if err := node.Detach(nodeNetns, veth.HostIfIndex, loader.FromContainer); err != nil {
		fmt.Println(err)
		return
	}
	on, err := node.Attached(nodeNetns, veth.HostIfIndex, loader.FromContainer)
	fmt.Printf("after Detach: %v %v\n", on, err)
	// Output:
	// from-container on lxc1a2b3c: true <nil>
	// to-container on lxc1a2b3c: true <nil>
	// after Detach: false <nil>
}
