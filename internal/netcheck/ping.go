package netcheck

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLost is wrapped by PingAll's error when echo requests went unanswered.
var ErrLost = errors.New("echo requests unanswered")

// PingOptions tune Ping. The zero value sends 3 echo requests of 56 bytes,
// 10ms apart, and waits at most 2s in all.
type PingOptions struct {
	Count    int           // echo requests to send
	Interval time.Duration // between requests
	Timeout  time.Duration // bound on the whole exchange
	Size     int           // payload bytes after the ICMP header
	TTL      int           // IP TTL of the requests; 0 is the kernel default
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

// Ping sends ICMP echo requests from the namespace at nsPath to the IPv4
// address dst and returns how many matching replies arrived within
// opts.Timeout. It uses a raw socket opened in the namespace, so no ping
// binary is needed, and counts only the replies from dst that carry its
// own identifier, a sequence number it sent, an intact payload and a valid
// checksum, each once.
//
// Lost replies are not an error; err reports what kept the exchange from
// running, or ctx's error should ctx end first.
func Ping(ctx context.Context, nsPath string, dst netip.Addr, opts PingOptions) (received int, err error) {
	opts = opts.withDefaults()
	fail := func(step string, err error) (int, error) {
		return received, fmt.Errorf("ping %s: %s: %w", dst, step, ctxErr(ctx, err))
	}
	if !dst.Is4() {
		return fail("check destination", errors.New("only IPv4 is supported"))
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("ping %s: %w", dst, err)
	}
	var conn *net.IPConn
	err = inNetns(nsPath, func() (err error) {
		conn, err = net.ListenIP("ip4:icmp", nil)
		return err
	})
	if err != nil {
		return fail("open ICMP socket", err)
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.Close() })()
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
	to := &net.IPAddr{IP: dst.AsSlice()}
	seen := make([]bool, opts.Count)
	buf := make([]byte, 65536)
	deadline := time.Now().Add(opts.Timeout)
	next := time.Now()
	for sent := 0; received < opts.Count && time.Now().Before(deadline); {
		if sent < opts.Count && !time.Now().Before(next) {
			if _, err := conn.WriteToIP(echoRequest(id, uint16(sent), payload), to); err != nil {
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
		n, from, err := conn.ReadFromIP(buf) // the IPv4 header is stripped
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

// PingAll is Ping that fails unless every echo request is answered; the
// error then wraps ErrLost.
func PingAll(ctx context.Context, nsPath string, dst netip.Addr, opts PingOptions) error {
	opts = opts.withDefaults()
	received, err := Ping(ctx, nsPath, dst, opts)
	if err != nil {
		return err
	}
	if received != opts.Count {
		return fmt.Errorf("ping %s: %d of %d answered within %s: %w", dst, received, opts.Count, opts.Timeout, ErrLost)
	}
	return nil
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
