package datapath_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// bigEcho answers every datagram to addr, in the namespace at netns, with
// size bytes: fragmented on the way back.
func bigEcho(t *testing.T, netns string, addr netip.AddrPort, size int) {
	t.Helper()
	var pc net.PacketConn
	if err := routing.Do(netns, func() (err error) {
		pc, err = net.ListenPacket("udp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(make([]byte, size), from)
		}
	}()
}

// askBig sends a datagram of size bytes from the namespace at netns to dst
// (fragmented on its way) and returns the size of the answer.
func askBig(netns string, dst netip.AddrPort, size int) (int, error) {
	var n int
	err := routing.Do(netns, func() error {
		c, err := net.Dial("udp4", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(make([]byte, size)); err != nil {
			return err
		}
		buf := make([]byte, 65536)
		n, err = c.Read(buf)
		return err
	})
	return n, err
}

// TestFragmentedUDPThroughServices: a 3000-byte UDP request to a ClusterIP
// and the backend's 3000-byte reply (large EDNS0 DNS answers, say), both
// fragmented, get through 5 of 5 times to a backend on the client's node
// and on the other; a pod's 3000-byte datagrams through BPF masquerade and
// back too. Before, 0 of 5 (5 of 5 to the pod's own address).
func TestFragmentedUDPThroughServices(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	local := n0.AddPod(t, "local", n0.PodIP(20))
	local.AddEndpoint(t, cn.dps[0])
	vip := netip.MustParseAddrPort("10.96.0.53:53")
	for _, be := range []*datapathtest.Pod{local, cn.b} {
		addr := netip.AddrPortFrom(be.IP, 5353)
		bigEcho(t, be.Netns, addr, 3000)
		if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.UDP,
			Backends: []datapath.Backend{{Addr: addr}}}); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if n, err := askBig(cn.a.Netns, vip, 3000); err != nil || n != 3000 {
				t.Errorf("backend %s, request %d: %d bytes back, %v; want 3000", be.Name, i, n, err)
			}
		}
	}
	outside := netip.AddrPortFrom(cn.cluster.Gateway, 9053)
	bigEcho(t, cn.cluster.Wire, outside, 3000)
	for i := range 5 {
		if n, err := askBig(cn.a.Netns, outside, 3000); err != nil || n != 3000 {
			t.Errorf("%s through masquerade, request %d: %d bytes back, %v; want 3000", outside, i, n, err)
		}
	}
}
