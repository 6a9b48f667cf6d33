package datapathtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/routing"
)

// PingOptions tune Pod.PingWith and Node.PingWith. The zero value sends 3
// echo requests of 56 bytes, 10ms apart, and waits at most 2s in all.
type PingOptions struct {
	Count    int           // echo requests to send
	Interval time.Duration // between requests
	Timeout  time.Duration // bound on the whole exchange
	Size     int           // payload bytes after the ICMP header
	TTL      int           // IP TTL of the requests; 0 is the kernel default
}

// Ping sends count ICMP echo requests from the pod to dst and returns how
// many matching replies arrived within timeout. Lost replies are not an
// error; err reports only what kept the exchange from running.
func (p *Pod) Ping(dst netip.Addr, count int, timeout time.Duration) (received int, err error) {
	return p.PingWith(dst, PingOptions{Count: count, Timeout: timeout})
}

// MustPing pings dst 3 times and fails the test unless all replies arrive
// within 2s.
func (p *Pod) MustPing(t testing.TB, dst netip.Addr) {
	t.Helper()
	mustPing(t, "pod "+p.Name, dst, p.Ping)
}

// PingWith is Ping with options. It uses a raw ICMP socket opened in the
// pod and counts the echo replies from dst that carry its own identifier,
// a sequence number it sent, an intact payload and a valid checksum.
func (p *Pod) PingWith(dst netip.Addr, opts PingOptions) (received int, err error) {
	return ping(p.Netns, "pod "+p.Name, dst, opts)
}

// Ping is Pod.Ping from the node's own namespace: for node-to-node checks
// over a Cluster's wire.
func (n *Node) Ping(dst netip.Addr, count int, timeout time.Duration) (received int, err error) {
	return n.PingWith(dst, PingOptions{Count: count, Timeout: timeout})
}

// MustPing is Pod.MustPing from the node's own namespace.
func (n *Node) MustPing(t testing.TB, dst netip.Addr) {
	t.Helper()
	mustPing(t, "node "+n.Name, dst, n.Ping)
}

// PingWith is Pod.PingWith from the node's own namespace.
func (n *Node) PingWith(dst netip.Addr, opts PingOptions) (received int, err error) {
	return ping(n.Netns, "node "+n.Name, dst, opts)
}

func mustPing(t testing.TB, who string, dst netip.Addr, ping func(netip.Addr, int, time.Duration) (int, error)) {
	t.Helper()
	const count = 3
	received, err := ping(dst, count, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if received != count {
		t.Fatalf("ping %s from %s: %d of %d replies", dst, who, received, count)
	}
}

// ping runs the echo exchange from the namespace at nsPath; who names the
// sender in errors.
func ping(nsPath, who string, dst netip.Addr, opts PingOptions) (received int, err error) {
	opts = opts.withDefaults()
	fail := func(step string, err error) (int, error) {
		return received, fmt.Errorf("ping %s from %s: %s: %w", dst, who, step, err)
	}
	if !dst.Is4() {
		return fail("check destination", errors.New("only IPv4 is supported yet"))
	}
	var conn *net.IPConn
	err = routing.Do(nsPath, func() (err error) {
		conn, err = net.ListenIP("ip4:icmp", nil)
		return err
	})
	if err != nil {
		return fail("open ICMP socket", err)
	}
	defer conn.Close()
	if opts.TTL > 0 {
		if err := setTTL(conn, opts.TTL); err != nil {
			return fail("set TTL", err)
		}
	}

	id := uint16(rand.Uint32())
	payload := make([]byte, opts.Size)
	for i := range payload {
		payload[i] = byte(i)
	}
	seen := make([]bool, opts.Count)
	buf := make([]byte, 65536)
	deadline := time.Now().Add(opts.Timeout)
	next := time.Now()
	for sent := 0; received < opts.Count && time.Now().Before(deadline); {
		if sent < opts.Count && !time.Now().Before(next) {
			req := echoRequest(id, uint16(sent), payload)
			if _, err := conn.WriteToIP(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
				return fail("send", err)
			}
			sent++
			next = next.Add(opts.Interval)
		}
		wait := deadline
		if sent < opts.Count && next.Before(wait) {
			wait = next
		}
		conn.SetReadDeadline(wait)
		n, from, err := conn.ReadFromIP(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return fail("receive", err)
		}
		seq, ok := echoReply(buf[:n], id, payload)
		if src, _ := netip.AddrFromSlice(from.IP); ok && src.Unmap() == dst && int(seq) < sent && !seen[seq] {
			seen[seq] = true
			received++
		}
	}
	return received, nil
}

func (o PingOptions) withDefaults() PingOptions {
	if o.Count <= 0 {
		o.Count = 3
	}
	if o.Interval <= 0 {
		o.Interval = 10 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Size <= 0 {
		o.Size = 56
	}
	return o
}

func setTTL(conn *net.IPConn, ttl int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
	})
	return errors.Join(err, serr)
}

const (
	icmpEchoReply   = 0
	icmpEchoRequest = 8
)

func echoRequest(id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = icmpEchoRequest
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

// echoReply returns the sequence number of an ICMP message that is an intact
// echo reply to our identifier and payload.
func echoReply(b []byte, id uint16, payload []byte) (seq uint16, ok bool) {
	if len(b) < 8 || b[0] != icmpEchoReply || b[1] != 0 || checksum(b) != 0 ||
		binary.BigEndian.Uint16(b[4:]) != id || !bytes.Equal(b[8:], payload) {
		return 0, false
	}
	return binary.BigEndian.Uint16(b[6:]), true
}

// checksum is the Internet checksum (RFC 1071); over a message carrying a
// correct checksum it is 0.
func checksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(b[0])<<8 | uint32(b[1])
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ServeTCPEcho listens on a random TCP port on all of the pod's addresses and
// echoes whatever each connection sends. t.Cleanup stops it and closes its
// connections.
func (p *Pod) ServeTCPEcho(t testing.TB) (port uint16) {
	t.Helper()
	var ln net.Listener
	if err := p.Do(func() (err error) { ln, err = net.Listen("tcp4", ":0"); return err }); err != nil {
		t.Fatalf("pod %s: listen tcp: %v", p.Name, err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		closed bool
		conns  = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by cleanup
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				io.Copy(c, c)
				c.Close()
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TCPEcho connects from the pod to dst:port, sends payload and checks that
// the same bytes come back, all within timeout.
func (p *Pod) TCPEcho(dst netip.Addr, port uint16, payload []byte, timeout time.Duration) error {
	to := netip.AddrPortFrom(dst, port).String()
	deadline := time.Now().Add(timeout)
	var c net.Conn
	err := p.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", to, timeout)
		return err
	})
	if err != nil {
		return fmt.Errorf("tcp echo %s from pod %s: %w", to, p.Name, err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := c.Write(payload); err != nil {
		return fmt.Errorf("tcp echo %s from pod %s: send: %w", to, p.Name, err)
	}
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("tcp echo %s from pod %s: receive: %w", to, p.Name, err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("tcp echo %s from pod %s: echo differs from what was sent", to, p.Name)
	}
	return nil
}

// MustTCPEcho runs TCPEcho with 16 KiB (more than one segment) and a 5s
// timeout and fails the test on error.
func (p *Pod) MustTCPEcho(t testing.TB, dst netip.Addr, port uint16) {
	t.Helper()
	if err := p.TCPEcho(dst, port, testPayload(16<<10), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// ServeUDPEcho listens on a random UDP port on all of the pod's addresses and
// sends every datagram back to its sender. t.Cleanup stops it.
func (p *Pod) ServeUDPEcho(t testing.TB) (port uint16) {
	t.Helper()
	var conn net.PacketConn
	if err := p.Do(func() (err error) { conn, err = net.ListenPacket("udp4", ":0"); return err }); err != nil {
		t.Fatalf("pod %s: listen udp: %v", p.Name, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed by cleanup
			}
			conn.WriteTo(buf[:n], from)
		}
	})
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
	})
	return uint16(conn.LocalAddr().(*net.UDPAddr).Port)
}

// UDPEcho sends payload from the pod to dst:port until the same bytes come
// back from there, resending every 200ms, for at most timeout.
func (p *Pod) UDPEcho(dst netip.Addr, port uint16, payload []byte, timeout time.Duration) error {
	to := netip.AddrPortFrom(dst, port)
	var c *net.UDPConn
	err := p.Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		return err
	})
	if err != nil {
		return fmt.Errorf("udp echo %s from pod %s: %w", to, p.Name, err)
	}
	defer c.Close()
	got := make([]byte, len(payload)+1)
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		if _, err := c.Write(payload); err != nil {
			return fmt.Errorf("udp echo %s from pod %s: send: %w", to, p.Name, err)
		}
		wait := time.Now().Add(200 * time.Millisecond)
		if deadline.Before(wait) {
			wait = deadline
		}
		c.SetReadDeadline(wait)
		n, err := c.Read(got)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return fmt.Errorf("udp echo %s from pod %s: receive: %w", to, p.Name, err)
		}
		if !bytes.Equal(got[:n], payload) {
			return fmt.Errorf("udp echo %s from pod %s: echo differs from what was sent", to, p.Name)
		}
		return nil
	}
	return fmt.Errorf("udp echo %s from pod %s: no echo within %s", to, p.Name, timeout)
}

// MustUDPEcho runs UDPEcho with 1000 bytes and a 5s timeout and fails the
// test on error.
func (p *Pod) MustUDPEcho(t testing.TB, dst netip.Addr, port uint16) {
	t.Helper()
	if err := p.UDPEcho(dst, port, testPayload(1000), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func testPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}
