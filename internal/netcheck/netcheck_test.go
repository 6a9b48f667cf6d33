package netcheck_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/routing"
)

// twoPods returns two pods on one node, which the kernel forwards between.
func twoPods(t *testing.T) (node *datapathtest.Node, a, b *datapathtest.Pod) {
	t.Helper()
	node = datapathtest.NewNode(t, "node")
	a = node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	b = node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))
	return node, a, b
}

func TestPing(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	_, a, b := twoPods(t)
	ctx := context.Background()

	if err := netcheck.PingAll(ctx, a.Netns, b.IP, netcheck.PingOptions{Count: 5}); err != nil {
		t.Error(err)
	}
	missing := netip.MustParseAddr("10.0.0.99")
	err := netcheck.PingAll(ctx, a.Netns, missing, netcheck.PingOptions{Count: 2, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, netcheck.ErrLost) {
		t.Errorf("PingAll of a missing pod: %v, want ErrLost", err)
	}

	// Ending ctx ends the exchange at once, whatever its timeout.
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	got, err := netcheck.Ping(ctx, a.Netns, missing, netcheck.PingOptions{Count: 2, Timeout: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) || got != 0 {
		t.Errorf("Ping until ctx ends: %d replies, %v; want 0, context.DeadlineExceeded", got, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Ping took %s after ctx ended", d)
	}
	if _, err := netcheck.Ping(ctx, a.Netns, b.IP, netcheck.PingOptions{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Ping with ctx ended: %v, want context.DeadlineExceeded", err)
	}
}

func TestEcho(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	_, a, b := twoPods(t)
	ctx := context.Background()

	tcp, err := netcheck.ServeTCPEcho(b.Netns, netip.AddrPortFrom(b.IP, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if tcp.Addr().Addr() != b.IP || tcp.Addr().Port() == 0 {
		t.Errorf("TCP server address %s", tcp.Addr())
	}
	// More than the sockets buffer before anyone reads.
	if err := netcheck.TCPEcho(ctx, a.Netns, tcp.Addr(), netcheck.Payload(4<<20), 10*time.Second); err != nil {
		t.Error(err)
	}
	if err := netcheck.TCPEcho(ctx, a.Netns, tcp.Addr(), nil, 5*time.Second); err != nil {
		t.Errorf("empty TCP echo: %v", err)
	}

	udp, err := netcheck.ServeUDPEcho(b.Netns, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if !udp.Addr().Addr().IsUnspecified() {
		t.Errorf("UDP server on all addresses listens on %s", udp.Addr())
	}
	dst := netip.AddrPortFrom(b.IP, udp.Addr().Port())
	if err := netcheck.UDPEcho(ctx, a.Netns, dst, netcheck.Payload(1400), 5*time.Second); err != nil {
		t.Error(err)
	}

	// Close ends the connections still open, and the servers stay closed.
	var idle net.Conn
	err = routing.Do(a.Netns, func() (err error) {
		idle, err = net.DialTimeout("tcp4", tcp.Addr().String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// An echo first: the server has taken the connection (one still in
	// the listen queue would be reset by Close, not ended).
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(idle, make([]byte, 1)); err != nil {
		t.Fatalf("echo on the idle connection: %v", err)
	}
	for _, s := range []*netcheck.Server{tcp, udp} {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("idle connection after Close: read %d bytes, %v; want EOF", n, err)
	}
	if err := netcheck.TCPEcho(ctx, a.Netns, tcp.Addr(), []byte("x"), time.Second); err == nil {
		t.Error("TCP echo after Close succeeded")
	}
	if err := netcheck.UDPEcho(ctx, a.Netns, dst, []byte("x"), time.Second); err == nil {
		t.Error("UDP echo after Close succeeded")
	}
}

func TestCountForward(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node, a, b := twoPods(t)
	ctx := context.Background()

	c, err := netcheck.CountForward(ctx, node.Netns, "")
	if err != nil {
		t.Fatal(err)
	}
	if out := node.Exec(t, "iptables", "-w", "-S", "FORWARD", "1"); !strings.Contains(out, c.Comment()) {
		t.Errorf("rule %s not at the head of FORWARD:\n%s", c.Comment(), out)
	}
	before, err := c.Packets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.MustPing(t, b.IP)
	after, err := c.Packets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 6 {
		t.Errorf("counter moved by %d over 3 forwarded echoes and replies, want 6", after-before)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Packets(ctx); err == nil {
		t.Error("Packets after Close succeeded")
	}
	if out := node.Exec(t, "iptables", "-w", "-S", "FORWARD"); strings.Contains(out, c.Comment()) {
		t.Errorf("rule %s left after Close:\n%s", c.Comment(), out)
	}
}

func TestWaitOperUp(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	h, err := routing.Handle(node.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "v0"
	v0 := &netlink.Veth{LinkAttrs: attrs, PeerName: "v1"}
	if err := h.LinkAdd(v0); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(v0); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Its peer down, v0 never comes up.
	if err := netcheck.WaitOperUp(ctx, node.Netns, "v0", 100*time.Millisecond); err == nil {
		t.Error("v0 up with its peer down")
	}
	if err := netcheck.WaitOperUp(ctx, node.Netns, "v9", time.Second); err == nil {
		t.Error("a missing device came up")
	}
	v1, err := h.LinkByName("v1")
	if err == nil {
		err = h.LinkSetUp(v1)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, ifname := range []string{"v0", "v1"} {
		if err := netcheck.WaitOperUp(ctx, node.Netns, ifname, 5*time.Second); err != nil {
			t.Error(err)
		}
	}
}
