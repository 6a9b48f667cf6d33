package routing_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// The examples run under go test, as root: each makes the network
// namespaces it needs, named after the test process ("hr-ex<PID>-..."),
// and deletes them when it returns, also on failure. The machine's own
// network namespace is never changed.

// TestMain leaves the examples out without root (outside CI, which
// requires privileged tests), as the tests skip: examples cannot.
func TestMain(m *testing.M) {
	os.Exit(datapathtest.RunPrivileged(m))
}

// A pod's network namespace, as `ip netns add` makes it: a file under
// /var/run/netns that holds a namespace of its own, with nothing in it but
// its loopback device (down).
func ExampleCreateNetns() {
	name := fmt.Sprintf("hr-ex%d-pod", os.Getpid())
	path, err := routing.CreateNetns(name)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer routing.DeleteNetns(name)

	pod, err := routing.Netns(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	self, err := routing.Netns("") // this process's
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("under", filepath.Dir(path)+":", filepath.Base(path) == name)
	fmt.Println("a namespace of its own:", pod != self)

	h, err := routing.Handle(path) // netlink, working inside the pod
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, l := range links {
		fmt.Println("device:", l.Attrs().Name, l.Attrs().OperState)
	}

	if err := routing.DeleteNetns(name); err != nil {
		fmt.Println(err)
		return
	}
	_, err = os.Stat(path)
	fmt.Println("after DeleteNetns:", os.IsNotExist(err))
	// Output:
	// under /var/run/netns: true
	// a namespace of its own: true
	// device: lo down
	// after DeleteNetns: true
}

// Sockets belong to the namespace of the thread that opens them: Do runs a
// function on a thread inside a namespace, and what it opens there stays
// there, to be used from any goroutine afterwards. Here a server listens
// on the loopback device of a namespace the example makes, which the
// caller's own 127.0.0.1 does not reach.
func ExampleDo() {
	name := fmt.Sprintf("hr-ex%d-do", os.Getpid())
	path, err := routing.CreateNetns(name)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer routing.DeleteNetns(name)
	h, err := routing.Handle(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		fmt.Println(err)
		return
	}

	var ln net.Listener
	err = routing.Do(path, func() error {
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() { // accepts in the namespace, from the caller's thread
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello from the namespace\n"))
			c.Close()
		}
	}()

	err = routing.Do(path, func() error {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		fmt.Print("inside: ", string(buf[:n]))
		return err
	})
	if err != nil {
		fmt.Println(err)
	}
	// Output:
	// inside: hello from the namespace
}

// A pod wired ptp-like, as the CNI ptp plugin and datapath.AddEndpoint
// expect it: the pod's only route is via the link-local gateway
// 169.254.1.1, which the node's end of the veth carries, so the pod
// never needs to know the node's own addresses.
func ExampleSetupVeth() {
	var names []string
	defer func() {
		for _, name := range names {
			routing.DeleteNetns(name) // the veth goes with its namespaces
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
	node, pod := newNetns("node"), newNetns("pod")

	veth, err := routing.SetupVeth(routing.VethConfig{
		HostNetns:  node,
		HostIfName: "lxc1a2b3c",
		PodNetns:   pod,
		Addr:       netip.MustParsePrefix("10.0.0.10/32"),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("node side %s, pod side %s\n", veth.HostIfName, veth.PodIfName)

	for _, side := range []struct{ name, netns, dev string }{{"node", node, veth.HostIfName}, {"pod", pod, veth.PodIfName}} {
		h, err := routing.Handle(side.netns)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer h.Close()
		link, err := h.LinkByName(side.dev)
		if err != nil {
			fmt.Println(err)
			return
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, a := range addrs {
			fmt.Printf("%s: address %s\n", side.name, a.IPNet)
		}
		routes, err := h.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			fmt.Println(err)
			return
		}
		var lines []string
		for _, r := range routes {
			switch {
			case r.Dst == nil || r.Dst.String() == "0.0.0.0/0":
				lines = append(lines, fmt.Sprintf("%s: route default via %s", side.name, r.Gw))
			case r.Gw == nil:
				lines = append(lines, fmt.Sprintf("%s: route %s scope %s", side.name, r.Dst, r.Scope))
			}
		}
		slices.Sort(lines)
		for _, l := range lines {
			fmt.Println(l)
		}
	}

	if err := routing.DeleteVeth(node, veth.HostIfName); err != nil {
		fmt.Println(err)
		return
	}
	h, err := routing.Handle(pod)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	_, err = h.LinkByName(veth.PodIfName)
	fmt.Println("pod side after DeleteVeth:", err)
	// Output:
	// node side lxc1a2b3c, pod side eth0
	// node: address 169.254.1.1/32
	// node: route 10.0.0.10/32 scope link
	// pod: address 10.0.0.10/32
	// pod: route 169.254.1.1/32 scope link
	// pod: route default via 169.254.1.1
	// pod side after DeleteVeth: Link not found
}

// The direct routes to another node's pods, as an agent makes them for
// every node it learns of: the pod CIDRs via that node's address on the
// device they share (here a veth pair standing in for the node's NIC and
// its wire).
// Repeating the call with other CIDRs converges on them.
func ExampleUpsertNodeRoutes() {
	name := fmt.Sprintf("hr-ex%d-node", os.Getpid())
	node, err := routing.CreateNetns(name)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer routing.DeleteNetns(name)
	h, err := routing.Handle(node)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	eth0 := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "wire"}
	addr, _ := netlink.ParseAddr("172.18.0.2/16")
	if err := h.LinkAdd(eth0); err != nil {
		fmt.Println(err)
		return
	}
	wire, err := h.LinkByName("wire")
	if err == nil {
		err = h.AddrAdd(eth0, addr)
	}
	if err == nil {
		err = h.LinkSetUp(eth0)
	}
	if err == nil {
		err = h.LinkSetUp(wire)
	}
	if err != nil {
		fmt.Println(err)
		return
	}

	worker := netip.MustParseAddr("172.18.0.3")
	for _, cidrs := range [][]netip.Prefix{
		{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.2.0/24")},
		{netip.MustParsePrefix("10.0.2.0/24")}, // 10.0.1.0/24 went to another node
	} {
		if err := routing.UpsertNodeRoutes(node, "eth0", worker, cidrs); err != nil {
			fmt.Println(err)
			return
		}
		routes, err := routing.NodeRoutes(node)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(routes)
	}
	// Refused before anything changes: the worker's address must be on
	// eth0's subnet.
	err = routing.UpsertNodeRoutes(node, "eth0", netip.MustParseAddr("192.0.2.1"), []netip.Prefix{netip.MustParsePrefix("10.0.3.0/24")})
	fmt.Println("off-subnet node refused:", err != nil)

	if err := routing.DeleteNodeRoutes(node, "eth0", worker); err != nil {
		fmt.Println(err)
		return
	}
	routes, err := routing.NodeRoutes(node)
	fmt.Println("after DeleteNodeRoutes:", routes, err)
	// Output:
	// map[172.18.0.3:[10.0.1.0/24 10.0.2.0/24]]
	// map[172.18.0.3:[10.0.2.0/24]]
	// off-subnet node refused: true
	// after DeleteNodeRoutes: map[] <nil>
}
