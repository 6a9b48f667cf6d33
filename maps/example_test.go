package maps_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// TestMain leaves the examples out without root (outside CI, which
// requires privileged tests), as the tests skip: examples cannot.
func TestMain(m *testing.M) {
	os.Exit(datapathtest.RunPrivileged(m))
}

// The types of this package are what the datapath hands out: its
// endpoints as Endpoint (with their EndpointFlags), its counters as a
// MetricTable. The node here is made for the example, as an agent would
// make it with package datapath: two pods on a node of their own (network
// namespaces named "hr-ex<PID>-..."), a ClusterIP service with one of them
// as its backend, and a TCP connection from the other through it.
// Everything is removed when the example returns, also on failure.
func Example() {
	pid := os.Getpid()
	var undo []func() error
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](); err != nil {
				fmt.Println("cleanup:", err)
			}
		}
	}()
	newNetns := func(role string) string {
		name := fmt.Sprintf("hr-ex%d-maps-%s", pid, role)
		path, err := routing.CreateNetns(name)
		if err != nil {
			panic(err) // fails the example, once the deferred cleanup ran
		}
		undo = append(undo, func() error { return routing.DeleteNetns(name) })
		return path
	}

	nodeNetns := newNetns("node")
	pinPath := filepath.Join(loader.DefaultBPFFS, fmt.Sprintf("hrtest-ex%d-maps", pid))
	dp, err := datapath.New(datapath.Config{PinPath: pinPath, Netns: nodeNetns})
	if err != nil {
		fmt.Println(err)
		return
	}
	undo = append(undo, dp.Remove)
	pods := map[string]string{} // IP → pod netns
	for i, ip := range []string{"10.0.0.10", "10.0.0.21"} {
		podNetns := newNetns(fmt.Sprint("pod", i))
		veth, err := routing.SetupVeth(routing.VethConfig{HostNetns: nodeNetns, HostIfName: fmt.Sprint("lxc", i),
			PodNetns: podNetns, Addr: netip.PrefixFrom(netip.MustParseAddr(ip), 32)})
		if err != nil {
			fmt.Println(err)
			return
		}
		if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: veth.HostIfName, IP: netip.MustParseAddr(ip), MAC: veth.PodMAC}); err != nil {
			fmt.Println(err)
			return
		}
		pods[ip] = podNetns
	}
	_, err = dp.UpsertService(datapath.Service{Frontend: netip.MustParseAddrPort("10.96.0.10:80"), Protocol: datapath.TCP,
		Backends: []datapath.Backend{{Addr: netip.MustParseAddrPort("10.0.0.21:8080")}}})
	if err != nil {
		fmt.Println(err)
		return
	}

	eps, err := dp.Endpoints()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, ep := range eps { // ifindexes and MACs differ from run to run
		fmt.Printf("endpoint %s id=%d service backend: %v\n", ep.IP, ep.ID, ep.ServiceBackend)
	}

	before, err := dp.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}
	// A server in the backend pod, and a client in the other that dials
	// the service.
	var ln net.Listener
	if err := routing.Do(pods["10.0.0.21"], func() (err error) { ln, err = net.Listen("tcp4", "10.0.0.21:8080"); return err }); err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	err = routing.Do(pods["10.0.0.10"], func() error {
		c, err := net.DialTimeout("tcp4", "10.96.0.10:80", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		fmt.Printf("client got %q from 10.96.0.10:80\n", b)
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	after, err := dp.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}

	// What the connection did, by the counters it moved.
	delta := after.Sub(before)
	for _, m := range []maps.Metric{maps.MetricXlateDNAT, maps.MetricXlateRevDNAT, maps.MetricForwardPeer} {
		fmt.Printf("%s: %v\n", m, delta.Total(m).Packets > 0)
	}
	var drops uint64
	delta.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
		if m.IsDrop() {
			drops += c.Packets
		}
	})
	fmt.Println("dropped:", drops)
	// Output:
	// endpoint 10.0.0.10 id=1 service backend: false
	// endpoint 10.0.0.21 id=2 service backend: true
	// client got "hello" from 10.96.0.10:80
	// xlate-dnat: true
	// xlate-rev-dnat: true
	// forward-peer: true
	// dropped: 0
}

// An endpoint prints as a line of `cilium bpf endpoint list`.
func ExampleEndpoint_String() {
	mac, _ := net.ParseMAC("c6:6d:95:cd:34:a2")
	nodeMAC, _ := net.ParseMAC("2a:0a:d9:17:44:22")
	ep := maps.Endpoint{IP: netip.MustParseAddr("10.0.0.85"), IfIndex: 34, ID: 1445,
		Flags: maps.EndpointARPResponder, MAC: mac, NodeMAC: nodeMAC}
	fmt.Println(ep)
	// Output:
	// 10.0.0.85:0 id=1445 flags=0x0001 ifindex=34 mac=C6:6D:95:CD:34:A2 nodemac=2A:0A:D9:17:44:22
}

// Conntrack flags print as Cilium prints them.
func ExampleCTFlags_String() {
	fmt.Println(maps.CTSeenReply | maps.CTEstablished)
	fmt.Println(maps.CTFlags(0))
	// Output:
	// [ SeenReply Established ]
	// [ ]
}

// The two entries of a masqueraded flow point at each other: the pod's
// packets leave from the node's address and port (OUT), their replies are
// translated back to the pod (IN).
func ExampleSNATEntry_Reverse() {
	out := maps.SNATEntry{Dir: maps.NATOut, Proto: maps.TCP,
		Src: netip.MustParseAddrPort("10.0.0.5:40000"), Dst: netip.MustParseAddrPort("172.18.0.1:9000"),
		To: netip.MustParseAddrPort("172.18.0.2:33388")}
	in := maps.SNATEntry{Dir: maps.NATIn, Proto: maps.TCP,
		Src: netip.MustParseAddrPort("172.18.0.1:9000"), Dst: netip.MustParseAddrPort("172.18.0.2:33388"),
		To: netip.MustParseAddrPort("10.0.0.5:40000")}
	fmt.Println(out)
	fmt.Println(in)
	fmt.Println(out.Reverse() == in.Key(), in.Reverse() == out.Key())
	// Output:
	// TCP OUT 10.0.0.5:40000 -> 172.18.0.1:9000 XLATE_SRC 172.18.0.2:33388 expires=0
	// TCP IN 172.18.0.1:9000 -> 172.18.0.2:33388 XLATE_DST 10.0.0.5:40000 expires=0
	// true true
}
