package netcheck

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// TCP flags as they sit in byte 13 of a TCP header.
const (
	TCPFin uint8 = 0x01
	TCPSyn uint8 = 0x02
	TCPRst uint8 = 0x04
	TCPPsh uint8 = 0x08
	TCPAck uint8 = 0x10
)

// TCPSegment is a TCP segment (no options) in an option-less IPv4 packet,
// as a raw socket sends it: any source, any flags and sequence numbers.
type TCPSegment struct {
	Src, Dst netip.AddrPort
	Flags    uint8 // TCPSyn|TCPAck...
	Seq, Ack uint32
	Window   uint16 // 0 means 64240
	Payload  []byte
}

// Marshal returns the IPv4 packet carrying s, checksums included.
func (s TCPSegment) Marshal() []byte {
	win := s.Window
	if win == 0 {
		win = 64240
	}
	l4 := make([]byte, 20, 20+len(s.Payload))
	binary.BigEndian.PutUint16(l4[0:], s.Src.Port())
	binary.BigEndian.PutUint16(l4[2:], s.Dst.Port())
	binary.BigEndian.PutUint32(l4[4:], s.Seq)
	binary.BigEndian.PutUint32(l4[8:], s.Ack)
	l4[12] = 5 << 4
	l4[13] = s.Flags
	binary.BigEndian.PutUint16(l4[14:], win)
	l4 = append(l4, s.Payload...)
	return ipv4Packet(s.Src.Addr(), s.Dst.Addr(), unix.IPPROTO_TCP, l4, 16)
}

// UDPDatagram is a UDP datagram in an option-less IPv4 packet.
type UDPDatagram struct {
	Src, Dst netip.AddrPort
	Payload  []byte
}

// Marshal returns the IPv4 packet carrying d, checksums included.
func (d UDPDatagram) Marshal() []byte {
	l4 := make([]byte, 8, 8+len(d.Payload))
	binary.BigEndian.PutUint16(l4[0:], d.Src.Port())
	binary.BigEndian.PutUint16(l4[2:], d.Dst.Port())
	binary.BigEndian.PutUint16(l4[4:], uint16(8+len(d.Payload)))
	l4 = append(l4, d.Payload...)
	return ipv4Packet(d.Src.Addr(), d.Dst.Addr(), unix.IPPROTO_UDP, l4, 6)
}

// ipv4Packet wraps l4 (of protocol proto, its checksum at csumOff) in an
// IPv4 header from src to dst with DF set, and fills in both checksums.
func ipv4Packet(src, dst netip.Addr, proto byte, l4 []byte, csumOff int) []byte {
	s, d := src.As4(), dst.As4()
	pseudo := make([]byte, 12, 12+len(l4))
	copy(pseudo[0:], s[:])
	copy(pseudo[4:], d[:])
	pseudo[9] = proto
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(l4)))
	sum := checksum(append(pseudo, l4...))
	if sum == 0 && proto == unix.IPPROTO_UDP {
		sum = 0xffff // 0 would mean no checksum
	}
	binary.BigEndian.PutUint16(l4[csumOff:], sum)

	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(b[6:], 0x4000) // DF
	b[8] = 64
	b[9] = proto
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], checksum(b))
	return append(b, l4...)
}

// RawIPv4 sends IPv4 packets built by the caller, header and all (a raw
// socket of IPPROTO_RAW, which implies IP_HDRINCL), from the namespace it
// was opened in: packets no socket would send, such as spoofed sources or
// segments out of any connection. The kernel routes each by its
// destination and sends it as it is (it fills in only a zero IP ID).
type RawIPv4 struct {
	fd int
}

// OpenRawIPv4 opens a RawIPv4 in the namespace at nsPath. Close it.
func OpenRawIPv4(nsPath string) (*RawIPv4, error) {
	var fd int
	err := inNetns(nsPath, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open raw IPv4 socket: %w", err)
	}
	return &RawIPv4{fd: fd}, nil
}

// Send sends one IPv4 packet (as Marshal builds them). A full device
// queue (ENOBUFS) is retried for up to a second.
func (r *RawIPv4) Send(pkt []byte) error {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return errors.New("send raw: not an IPv4 packet")
	}
	to := &unix.SockaddrInet4{Addr: [4]byte(pkt[16:20])}
	for deadline := time.Now().Add(time.Second); ; {
		err := unix.Sendto(r.fd, pkt, 0, to)
		if !errors.Is(err, unix.ENOBUFS) || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("send raw to %s: %w", netip.AddrFrom4(to.Addr), err)
			}
			return nil
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Close closes the socket.
func (r *RawIPv4) Close() error { return unix.Close(r.fd) }

// FloodOptions bound a Flood.
type FloodOptions struct {
	// Count is how many packets to send.
	Count int
	// Rate is at most how many packets a second; 0 means 20000.
	Rate int
	// Timeout bounds the whole flood; 0 means 30s. A flood cut short by
	// it returns how many it sent and context.DeadlineExceeded.
	Timeout time.Duration
}

// Flood sends opts.Count packets, pkt(0), pkt(1)..., from the namespace at
// nsPath with a RawIPv4, paced to opts.Rate, for at most opts.Timeout and
// as long as ctx lasts. It returns how many packets it sent.
func Flood(ctx context.Context, nsPath string, opts FloodOptions, pkt func(i int) []byte) (sent int, err error) {
	if opts.Rate <= 0 {
		opts.Rate = 20000
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	r, err := OpenRawIPv4(nsPath)
	if err != nil {
		return 0, fmt.Errorf("flood: %w", err)
	}
	defer r.Close()
	const burst = 64
	start := time.Now()
	for sent < opts.Count {
		if err := ctx.Err(); err != nil {
			return sent, fmt.Errorf("flood: %d of %d sent: %w", sent, opts.Count, err)
		}
		for end := min(sent+burst, opts.Count); sent < end; sent++ {
			if err := r.Send(pkt(sent)); err != nil {
				return sent, fmt.Errorf("flood: packet %d: %w", sent, err)
			}
		}
		// Pace: packet n is due at start + n/rate.
		if due := start.Add(time.Duration(sent) * time.Second / time.Duration(opts.Rate)); time.Until(due) > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(time.Until(due)):
			}
		}
	}
	return sent, nil
}
