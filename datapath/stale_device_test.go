package datapath_test

import (
	"errors"
	"fmt"
	"net"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// calicoMAC is the one MAC Calico gives every host-side veth.
var calicoMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// calicoVeth wires a new pod namespace to node with a veth whose node end
// is name, with index ifindex (0 for the kernel's choice) and calicoMAC,
// as `ip link add NAME index N address ee:ee:ee:ee:ee:ee` makes it. It
// returns the node end's index and the MAC of the pod's eth0.
func calicoVeth(t *testing.T, node *datapathtest.Node, name string, ifindex int) (int, net.HardwareAddr) {
	t.Helper()
	podNs, podPath := datapathtest.NewNetns(t, name)
	args := []string{"-n", node.NetnsName, "link", "add", name}
	if ifindex != 0 {
		args = append(args, "index", fmt.Sprint(ifindex))
	}
	args = append(args, "address", calicoMAC.String(), "type", "veth", "peer", "name", "eth0", "netns", podNs)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	host := linkAttrs(t, node.Netns, name)
	if ifindex != 0 && host.Index != ifindex || host.HardwareAddr.String() != calicoMAC.String() {
		t.Fatalf("%s: ifindex %d MAC %s, want %d and %s", name, host.Index, host.HardwareAddr, ifindex, calicoMAC)
	}
	return host.Index, linkAttrs(t, podPath, "eth0").HardwareAddr
}

func linkAttrs(t *testing.T, nsPath, name string) *netlink.LinkAttrs {
	t.Helper()
	h, err := routing.Handle(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs()
}

// TestStaleEndpointSameMAC: a pod's host device deleted without a DEL and
// made again for another pod with the same index, name and MAC (Calico
// gives every host-side veth ee:ee:ee:ee:ee:ee) is a new device: the old
// endpoint gives way to the new pod, and a reload does not put the old
// endpoint's programs on the new device. A live endpoint with the same MAC
// still blocks its address, and a reload still renews it. Both attach
// modes, and a reload from one to the other.
func TestStaleEndpointSameMAC(t *testing.T) {
	for _, tc := range []struct {
		name          string
		first, second loader.Disable
	}{
		{"tcx then clsact", loader.Disable{}, loader.Disable{TCX: true}},
		{"clsact then tcx", loader.Disable{TCX: true}, loader.Disable{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := datapathtest.NewNode(t, "node")
			first := node.NewDatapath(t, datapath.Config{Disable: tc.first})
			const ifindex = 4242
			index, macA := calicoVeth(t, node, "cali-a", ifindex)
			a, err := first.AddEndpoint(datapath.Endpoint{IfName: "cali-a", IP: ipA, MAC: macA, ARPResponder: true})
			if err != nil {
				t.Fatal(err)
			}
			if a.IfIndex != index {
				t.Fatalf("endpoint on ifindex %d, want %d", a.IfIndex, index)
			}
			_, macC := calicoVeth(t, node, "cali-c", 0)
			if _, err := first.AddEndpoint(datapath.Endpoint{IfName: "cali-c", IP: ipC, MAC: macC, ARPResponder: true}); err != nil {
				t.Fatal(err)
			}

			// Pod a goes without a DEL; pod b's device takes its place.
			if err := routing.DeleteVeth(node.Netns, "cali-a"); err != nil {
				t.Fatal(err)
			}
			_, macB := calicoVeth(t, node, "cali-a", ifindex)

			// A reload renews every endpoint's attachments: c's, not a's
			// on b's device.
			second, err := datapath.New(datapath.Config{PinPath: pinPathOf(t, first), Netns: node.Netns, Disable: tc.second})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { second.Close() })
			for _, p := range []datapath.Program{datapath.FromContainer, datapath.ToContainer} {
				if ok, err := second.Attached(ipA, p); err != nil || ok {
					t.Errorf("after a reload, %s of the stale endpoint %s runs on the device that took its place: %v, %v", p, ipA, ok, err)
				}
				if ok, err := second.Attached(ipC, p); err != nil || !ok {
					t.Errorf("after a reload, %s of the live endpoint %s: attached %v, %v", p, ipC, ok, err)
				}
			}

			b, err := second.AddEndpoint(datapath.Endpoint{IfName: "cali-a", IP: ipB, MAC: macB, ARPResponder: true})
			if err != nil {
				t.Fatalf("AddEndpoint on the device that took a stale endpoint's place: %v", err)
			}
			if b.IfIndex != ifindex {
				t.Errorf("endpoint %s on ifindex %d, want %d", ipB, b.IfIndex, ifindex)
			}
			if _, err := second.Endpoint(ipA); !errors.Is(err, datapath.ErrNotFound) {
				t.Errorf("the stale endpoint %s is still there: %v", ipA, err)
			}
			for _, p := range []datapath.Program{datapath.FromContainer, datapath.ToContainer} {
				if ok, err := second.Attached(ipB, p); err != nil || !ok {
					t.Errorf("%s of %s: attached %v, %v", p, ipB, ok, err)
				}
			}

			// Live endpoints, with the same MAC, still hold their address
			// and device.
			_, macD := calicoVeth(t, node, "cali-d", 0)
			if _, err := second.AddEndpoint(datapath.Endpoint{IfName: "cali-d", IP: ipC, MAC: macD}); !errors.Is(err, datapath.ErrEndpointExists) {
				t.Errorf("AddEndpoint with a live endpoint's address: %v, want ErrEndpointExists", err)
			}
			if _, err := second.AddEndpoint(datapath.Endpoint{IfName: "cali-a", IP: ipA, MAC: macB}); !errors.Is(err, datapath.ErrEndpointExists) {
				t.Errorf("AddEndpoint on a live endpoint's device: %v, want ErrEndpointExists", err)
			}
		})
	}
}
