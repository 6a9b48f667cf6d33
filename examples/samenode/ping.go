package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/hostrouting/hostrouting/routing"
)

// ping sends count ICMP echo requests from the network namespace at nsPath
// to dst, one at a time, each waiting up to a second for its reply, and
// returns how many were answered. It uses a raw socket opened inside the
// namespace, so no ping binary is needed.
func ping(ctx context.Context, nsPath string, dst netip.Addr, count int) (received int, err error) {
	var conn *net.IPConn
	err = routing.Do(nsPath, func() (err error) {
		conn, err = net.ListenIP("ip4:icmp", nil)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("open ICMP socket: %w", err)
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.Close() })()

	fail := func(step string, err error) (int, error) {
		if ctx.Err() != nil { // the socket was closed for it
			return received, ctx.Err()
		}
		return received, fmt.Errorf("%s: %w", step, err)
	}
	id := uint16(rand.Uint32())
	to := &net.IPAddr{IP: dst.AsSlice()}
	buf := make([]byte, 1500)
	for seq := range uint16(count) {
		if err := ctx.Err(); err != nil {
			return received, err
		}
		if _, err := conn.WriteToIP(echoRequest(id, seq), to); err != nil {
			return fail("send echo request", err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, from, err := conn.ReadFromIP(buf) // the IPv4 header is stripped
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // lost
			}
			if err != nil {
				return fail("receive", err)
			}
			if from.IP.Equal(to.IP) && isEchoReply(buf[:n], id, seq) {
				received++
				break
			}
		}
	}
	return received, nil
}

const payloadSize = 56 // as ping(8)

func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 8+payloadSize)
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	for i := range payloadSize {
		b[8+i] = byte(i)
	}
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

func isEchoReply(b []byte, id, seq uint16) bool {
	return len(b) == 8+payloadSize && b[0] == 0 && b[1] == 0 && checksum(b) == 0 &&
		binary.BigEndian.Uint16(b[4:]) == id && binary.BigEndian.Uint16(b[6:]) == seq
}

// checksum is the Internet checksum (RFC 1071); over a message with a
// correct checksum it is 0.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
