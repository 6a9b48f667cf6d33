package netcheck

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestEchoReply(t *testing.T) {
	payload := Payload(56)
	reply := echoRequest(0x1234, 7, payload)
	if checksum(reply) != 0 {
		t.Fatalf("checksum over a request: %#x, want 0", checksum(reply))
	}
	if _, ok := echoReply(reply, 0x1234, payload); ok {
		t.Error("a request taken for a reply")
	}
	reply[0] = icmpEchoReply
	reply[2], reply[3] = 0, 0
	sum := checksum(reply)
	reply[2], reply[3] = byte(sum>>8), byte(sum)
	if seq, ok := echoReply(reply, 0x1234, payload); !ok || seq != 7 {
		t.Errorf("echoReply: seq %d, ok %v; want 7, true", seq, ok)
	}
	if _, ok := echoReply(reply, 0x4321, payload); ok {
		t.Error("a reply to another identifier accepted")
	}
	reply[len(reply)-1]++
	if _, ok := echoReply(reply, 0x1234, payload); ok {
		t.Error("a reply with a bad checksum accepted")
	}
	if got := checksum([]byte{0xff}); got != 0x00ff {
		t.Errorf("checksum of an odd byte: %#x, want 0x00ff", got)
	}
}

func TestCompare(t *testing.T) {
	p := Payload(300)
	if p[1] != 7 || p[37] != 37*7%256 {
		t.Errorf("payload pattern: % x", p[:8])
	}
	if err := compare(p, Payload(300)); err != nil {
		t.Error(err)
	}
	if err := compare(p[:299], p); err == nil {
		t.Error("a short echo accepted")
	}
	q := Payload(300)
	q[0], q[1] = q[1], q[0]
	if err := compare(q, p); err == nil {
		t.Error("a reordered echo accepted")
	}
}

// TestNoNetns checks that no probe runs in the caller's own namespace when
// given no path: the root namespace must never be touched.
func TestNoNetns(t *testing.T) {
	ctx := context.Background()
	dst := netip.MustParseAddrPort("10.0.0.1:9")
	_, pingErr := Ping(ctx, "", dst.Addr(), PingOptions{})
	_, tcpServeErr := ServeTCPEcho("", netip.AddrPort{})
	_, udpServeErr := ServeUDPEcho("", netip.AddrPort{})
	_, forwardErr := CountForward(ctx, "", "")
	for name, err := range map[string]error{
		"Ping":         pingErr,
		"TCPEcho":      TCPEcho(ctx, "", dst, []byte("x"), time.Second),
		"UDPEcho":      UDPEcho(ctx, "", dst, []byte("x"), time.Second),
		"ServeTCPEcho": tcpServeErr,
		"ServeUDPEcho": udpServeErr,
		"CountForward": forwardErr,
		"WaitOperUp":   WaitOperUp(ctx, "", "lo", time.Second),
	} {
		if !errors.Is(err, errNoNetns) {
			t.Errorf("%s with no netns: %v, want %v", name, err, errNoNetns)
		}
	}
}
