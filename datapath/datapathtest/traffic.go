package datapathtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/internal/netcheck"
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
	mustPing(t, p.Netns, "pod "+p.Name, dst)
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
	mustPing(t, n.Netns, "node "+n.Name, dst)
}

// PingWith is Pod.PingWith from the node's own namespace.
func (n *Node) PingWith(dst netip.Addr, opts PingOptions) (received int, err error) {
	return ping(n.Netns, "node "+n.Name, dst, opts)
}

// ping runs netcheck.Ping from the namespace at nsPath; who names the
// sender in errors.
func ping(nsPath, who string, dst netip.Addr, opts PingOptions) (received int, err error) {
	received, err = netcheck.Ping(context.Background(), nsPath, dst, netcheck.PingOptions(opts))
	if err != nil {
		return received, fmt.Errorf("%s: %w", who, err)
	}
	return received, nil
}

func mustPing(t testing.TB, nsPath, who string, dst netip.Addr) {
	t.Helper()
	if err := netcheck.PingAll(context.Background(), nsPath, dst, netcheck.PingOptions{Count: 3, Timeout: 2 * time.Second}); err != nil {
		t.Fatalf("%s: %v", who, err)
	}
}

// ServeTCPEcho listens on a random TCP port on all of the pod's addresses and
// echoes whatever each connection sends. t.Cleanup stops it and closes its
// connections.
func (p *Pod) ServeTCPEcho(t testing.TB) (port uint16) {
	t.Helper()
	s, err := netcheck.ServeTCPEcho(p.Netns, netip.AddrPort{})
	return p.serve(t, s, err)
}

// ServeUDPEcho listens on a random UDP port on all of the pod's addresses and
// sends every datagram back to its sender. t.Cleanup stops it.
func (p *Pod) ServeUDPEcho(t testing.TB) (port uint16) {
	t.Helper()
	s, err := netcheck.ServeUDPEcho(p.Netns, netip.AddrPort{})
	return p.serve(t, s, err)
}

// serve fails the test on err, else closes s in t.Cleanup and returns its
// port.
func (p *Pod) serve(t testing.TB, s *netcheck.Server, err error) (port uint16) {
	t.Helper()
	if err != nil {
		t.Fatalf("pod %s: %v", p.Name, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("cleanup: pod %s: %v", p.Name, err)
		}
	})
	return s.Addr().Port()
}

// TCPEcho connects from the pod to dst:port, sends payload and checks that
// the same bytes come back, all within timeout. It closes its sending side
// once payload is sent and expects the server to close the connection once
// it has echoed everything, as ServeTCPEcho does.
func (p *Pod) TCPEcho(dst netip.Addr, port uint16, payload []byte, timeout time.Duration) error {
	err := netcheck.TCPEcho(context.Background(), p.Netns, netip.AddrPortFrom(dst, port), payload, timeout)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.Name, err)
	}
	return nil
}

// MustTCPEcho runs TCPEcho with 16 KiB (more than one segment) and a 5s
// timeout and fails the test on error.
func (p *Pod) MustTCPEcho(t testing.TB, dst netip.Addr, port uint16) {
	t.Helper()
	if err := p.TCPEcho(dst, port, netcheck.Payload(16<<10), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// UDPEcho sends payload from the pod to dst:port until the same bytes come
// back from there, resending every 200ms, for at most timeout.
func (p *Pod) UDPEcho(dst netip.Addr, port uint16, payload []byte, timeout time.Duration) error {
	err := netcheck.UDPEcho(context.Background(), p.Netns, netip.AddrPortFrom(dst, port), payload, timeout)
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.Name, err)
	}
	return nil
}

// MustUDPEcho runs UDPEcho with 1000 bytes and a 5s timeout and fails the
// test on error.
func (p *Pod) MustUDPEcho(t testing.TB, dst netip.Addr, port uint16) {
	t.Helper()
	if err := p.UDPEcho(dst, port, netcheck.Payload(1000), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// ServeName serves the pod's name on TCP and UDP port of its address until
// t ends (see the function ServeName) and returns that address.
func (p *Pod) ServeName(t testing.TB, port uint16) netip.AddrPort {
	t.Helper()
	addr := netip.AddrPortFrom(p.IP, port)
	ServeName(t, p.Netns, addr, p.Name)
	return addr
}

// ServeName serves name on TCP and UDP addr in the namespace at nsPath
// until t ends: a backend (or an outside host) that says who answered,
// and whom: every TCP connection and every datagram gets "NAME CLIENT"
// ("b 10.0.0.10:40000", the client as the server sees it). AskName reads
// it.
func ServeName(t testing.TB, nsPath string, addr netip.AddrPort, name string) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := routing.Do(nsPath, func() (err error) {
		if ln, err = net.Listen("tcp4", addr.String()); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("serve %s on %s: %v", name, addr, err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(name + " " + c.RemoteAddr().String()))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name+" "+from.String()), from)
		}
	}()
}

// NameAnswer is what AskName heard.
type NameAnswer struct {
	Name   string // the pod that answered (ServeName)
	Client string // the client's address as that pod saw it
	Peer   string // whom the client's socket was connected to (getpeername)
}

// AskName connects from the namespace at nsPath (a pod's or a node's) to
// dst over proto ("tcp4" or "udp4") and returns the answer of a ServeName
// server. A UDP socket is connected to dst, so it takes only replies that
// come from dst.
func AskName(nsPath, proto string, dst netip.AddrPort) (NameAnswer, error) {
	var c net.Conn
	err := routing.Do(nsPath, func() (err error) {
		c, err = net.DialTimeout(proto, dst.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return NameAnswer{}, err
	}
	defer c.Close()
	a := NameAnswer{Peer: c.RemoteAddr().String()}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	var b []byte
	if proto == "udp4" {
		if _, err := c.Write([]byte("who")); err != nil {
			return a, err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return a, err
		}
		b = buf[:n]
	} else if b, err = io.ReadAll(c); err != nil {
		return a, err
	}
	var ok bool
	if a.Name, a.Client, ok = strings.Cut(string(b), " "); !ok {
		return a, fmt.Errorf("answer %q from %s: not a ServeName server's", b, dst)
	}
	return a, nil
}
