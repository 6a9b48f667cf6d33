package instance_test

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/routing"
)

// TestDestroyUDPSockets: the connected UDP sockets of a namespace whose
// peer is a backend that went are destroyed (a blocked read returns
// ECONNABORTED), others are not, and those of other namespaces neither.
func TestDestroyUDPSockets(t *testing.T) {
	datapathtest.RequireRoot(t)
	node := datapathtest.NewNode(t, "sockterm")
	other := datapathtest.NewNode(t, "sockterm-other")
	for _, n := range []*datapathtest.Node{node, other} {
		n.Exec(t, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
		n.Exec(t, "ip", "addr", "add", "192.0.2.2/24", "dev", "d0")
		n.Exec(t, "ip", "link", "set", "d0", "up")
	}
	gone, stays := netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("192.0.2.54:53")
	dial := func(n *datapathtest.Node, dst netip.AddrPort) net.Conn {
		var c net.Conn
		if err := routing.Do(n.Netns, func() (err error) {
			c, err = net.Dial("udp4", dst.String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	toGone, toStays, elsewhere := dial(node, gone), dial(node, stays), dial(other, gone)
	results := make(chan error, 3)
	for _, c := range []net.Conn{toGone, toStays, elsewhere} {
		go func() {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err := c.Read(make([]byte, 16))
			results <- err
		}()
	}
	n, err := instance.DestroyUDPSockets(node.Netns, []netip.AddrPort{gone})
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d sockets destroyed, want 1", n)
	}
	var aborted, timedOut int
	for range 3 {
		switch err := <-results; {
		case errors.Is(err, syscall.ECONNABORTED):
			aborted++
		case errors.Is(err, syscall.ETIMEDOUT) || isTimeout(err):
			timedOut++
		default:
			t.Errorf("read: %v", err)
		}
	}
	if aborted != 1 || timedOut != 2 {
		t.Errorf("%d reads aborted, %d timed out: want the socket to the gone backend aborted, the 2 others waiting", aborted, timedOut)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
