package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// tcpEcho listens on a TCP port in the namespace at dstNetns, connects to it
// as dst from the namespace at srcNetns, sends size bytes and checks that
// the same bytes come back, all within five seconds.
func tcpEcho(ctx context.Context, srcNetns, dstNetns string, dst netip.Addr, size int) error {
	var ln net.Listener
	err := routing.Do(dstNetns, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	})
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(c, c)
		served <- err
	}()

	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var c net.Conn
	err = routing.Do(srcNetns, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp4", ln.Addr().String())
		return err
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)

	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	got, err := io.ReadAll(c)
	if ctx.Err() != nil && (err != nil || len(got) < size) {
		return ctx.Err()
	}
	if err := errors.Join(err, <-sent, <-served); err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("%d bytes came back, not the %d sent", len(got), size)
	}
	return nil
}
