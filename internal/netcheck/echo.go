package netcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// Server is an echo server listening in a network namespace, made by
// ServeTCPEcho or ServeUDPEcho.
type Server struct {
	addr  netip.AddrPort
	close func() error
}

// Addr returns the address the server listens on: its port, and the
// unspecified address 0.0.0.0 where it listens on all of them.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Close stops the server: it closes the listening socket and every
// connection still open, and returns once the server's goroutines are done.
func (s *Server) Close() error { return s.close() }

// ServeTCPEcho listens on addr in the namespace at nsPath and echoes
// whatever each connection sends, closing a connection once its client has
// closed its sending side and all was echoed. An addr without an address
// means all of the namespace's IPv4 addresses, port 0 a random port.
func ServeTCPEcho(nsPath string, addr netip.AddrPort) (*Server, error) {
	var ln net.Listener
	err := inNetns(nsPath, func() (err error) {
		ln, err = net.Listen(network("tcp", addr.Addr()), listenAddr(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("serve tcp echo: listen: %w", err)
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
				return // closed by Close
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
	return &Server{
		addr: addrPort(ln.Addr().(*net.TCPAddr).AddrPort()),
		close: sync.OnceValue(func() error {
			err := ln.Close()
			mu.Lock()
			closed = true
			for c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
			return err
		}),
	}, nil
}

// ServeUDPEcho listens on addr in the namespace at nsPath and sends every
// datagram back to its sender. addr means what it does for ServeTCPEcho.
func ServeUDPEcho(nsPath string, addr netip.AddrPort) (*Server, error) {
	var conn net.PacketConn
	err := inNetns(nsPath, func() (err error) {
		conn, err = net.ListenPacket(network("udp", addr.Addr()), listenAddr(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("serve udp echo: listen: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed by Close
			}
			conn.WriteTo(buf[:n], from)
		}
	})
	return &Server{
		addr: addrPort(conn.LocalAddr().(*net.UDPAddr).AddrPort()),
		close: sync.OnceValue(func() error {
			err := conn.Close()
			wg.Wait()
			return err
		}),
	}, nil
}

// TCPEcho connects from the namespace at nsPath to dst, sends payload,
// closes its sending side and checks that the same bytes come back, and
// nothing more, before the server closes the connection (as ServeTCPEcho
// does): all within timeout, and as long as ctx lasts.
func TCPEcho(ctx context.Context, nsPath string, dst netip.AddrPort, payload []byte, timeout time.Duration) error {
	fail := func(step string, err error) error {
		return fmt.Errorf("tcp echo %s: %s: %w", dst, step, ctxErr(ctx, err))
	}
	deadline := time.Now().Add(timeout)
	dialCtx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var c net.Conn
	err := inNetns(nsPath, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(dialCtx, network("tcp", dst.Addr()), dst.String())
		return err
	})
	if err != nil {
		return fail("connect", err)
	}
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	c.SetDeadline(deadline)

	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	got, rerr := io.ReadAll(io.LimitReader(c, int64(len(payload))+1))
	c.Close() // ends the writer, should it still be blocked
	werr := <-sent
	if rerr != nil {
		return fail("receive", rerr)
	}
	if err := compare(got, payload); err != nil {
		return fmt.Errorf("tcp echo %s: %w", dst, err)
	}
	if werr != nil {
		return fail("send", werr)
	}
	return nil
}

// UDPEcho sends payload from the namespace at nsPath to dst until the same
// bytes come back from there, resending every 200ms: for at most timeout,
// and as long as ctx lasts.
func UDPEcho(ctx context.Context, nsPath string, dst netip.AddrPort, payload []byte, timeout time.Duration) error {
	fail := func(step string, err error) error {
		return fmt.Errorf("udp echo %s: %s: %w", dst, step, ctxErr(ctx, err))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("udp echo %s: %w", dst, err)
	}
	var c *net.UDPConn
	err := inNetns(nsPath, func() (err error) {
		c, err = net.DialUDP(network("udp", dst.Addr()), nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		return fail("connect", err)
	}
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	got := make([]byte, len(payload)+1)
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		if _, err := c.Write(payload); err != nil {
			return fail("send", err)
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
			return fail("receive", err)
		}
		if err := compare(got[:n], payload); err != nil {
			return fmt.Errorf("udp echo %s: %w", dst, err)
		}
		return nil
	}
	return fmt.Errorf("udp echo %s: no echo within %s", dst, timeout)
}

// compare checks that got is what was sent.
func compare(got, sent []byte) error {
	switch {
	case len(got) != len(sent):
		return fmt.Errorf("%d bytes came back, %d were sent", len(got), len(sent))
	case !bytes.Equal(got, sent):
		return errors.New("what came back differs from what was sent")
	}
	return nil
}

// Payload returns n bytes to echo, byte i being i*7 mod 256: shifted,
// reordered or truncated echoes of it differ from it.
func Payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// network returns "tcp4" or "udp4" for an IPv4 or no address, else "tcp6"
// or "udp6".
func network(proto string, a netip.Addr) string {
	if a.IsValid() && !a.Is4() && !a.Is4In6() {
		return proto + "6"
	}
	return proto + "4"
}

// listenAddr formats addr for net.Listen: ":port" for no address.
func listenAddr(addr netip.AddrPort) string {
	if !addr.Addr().IsValid() {
		return fmt.Sprintf(":%d", addr.Port())
	}
	return addr.String()
}

// addrPort unmaps the address of a bound IPv4 socket.
func addrPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
