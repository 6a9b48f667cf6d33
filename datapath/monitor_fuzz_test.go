package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/maps"
)

// encodeEvent is parseEvent's inverse: the perf record the datapath
// writes for e (struct monitor_event, then the packet's first bytes; or
// struct monitor_xlate), as bpf/lib/common.h lays them out.
func encodeEvent(e Event) []byte {
	raw := make([]byte, eventHeaderLen, eventXlateLen)
	binary.NativeEndian.PutUint64(raw[0:], uint64(e.Time))
	binary.NativeEndian.PutUint32(raw[8:], uint32(e.IfIndex))
	binary.NativeEndian.PutUint32(raw[12:], uint32(e.Len))
	binary.NativeEndian.PutUint16(raw[18:], e.Endpoint)
	raw[20], raw[21] = byte(e.Direction), byte(e.Reason)
	x := e.Translation
	if x == nil {
		raw[22] = eventDecision
		binary.NativeEndian.PutUint16(raw[16:], uint16(len(e.Data)))
		return append(raw, e.Data...)
	}
	raw[22] = eventXlate
	raw = binary.NativeEndian.AppendUint16(raw, x.Service)
	raw = append(raw, byte(x.Protocol), byte(x.CT))
	for _, t := range []Tuple{x.From, x.To} {
		src, dst := t.Src.Addr().As4(), t.Dst.Addr().As4()
		raw = append(append(raw, src[:]...), dst[:]...)
		raw = binary.BigEndian.AppendUint16(raw, t.Src.Port())
		raw = binary.BigEndian.AppendUint16(raw, t.Dst.Port())
	}
	return raw
}

// monitorSeeds are events as the datapath sends them, and records it
// never should: too short, of an unknown type, claiming more packet bytes
// than they carry.
func monitorSeeds() [][]byte {
	ap := netip.MustParseAddrPort
	ping := make([]byte, 98) // an ICMP echo request from its Ethernet header on
	copy(ping, []byte{0xc6, 0x6d, 0x95, 0xcd, 0x34, 0xa2, 0x2a, 0x0a, 0xd9, 0x17, 0x44, 0x22, 0x08, 0x00, 0x45})
	forward := encodeEvent(Event{Time: 1234567 * time.Second, IfIndex: 5, Len: 98, Endpoint: 1,
		Direction: maps.FromContainer, Reason: maps.MetricForwardPeer, Data: ping})
	drop := encodeEvent(Event{Time: time.Second, IfIndex: 7, Len: 1500, Endpoint: 2,
		Direction: maps.FromContainer, Reason: maps.MetricDropSpoofed, Data: ping[:64]})
	dnat := encodeEvent(Event{Time: 42, IfIndex: 5, Direction: maps.FromContainer, Reason: maps.MetricXlateDNAT,
		Translation: &Translation{Protocol: maps.TCP, CT: CTNew, Service: 1,
			From: Tuple{ap("10.0.0.10:40000"), ap("10.96.0.10:80")}, To: Tuple{ap("10.0.0.10:40000"), ap("10.0.0.21:8080")}}})
	snat := encodeEvent(Event{Time: 43, IfIndex: 2, Direction: maps.ToNetdev, Reason: maps.MetricXlateSNAT,
		Translation: &Translation{Protocol: maps.ICMP, CT: CTReply,
			From: Tuple{ap("10.0.0.10:31755"), ap("172.18.0.1:31755")}, To: Tuple{ap("172.18.0.2:33671"), ap("172.18.0.1:31755")}}})

	unknownType := append([]byte(nil), forward...)
	unknownType[22] = 7
	overclaim := append([]byte(nil), forward[:eventHeaderLen+10]...)
	padded := append(append([]byte(nil), forward...), 0, 0, 0, 0) // perf pads samples to 8 bytes
	return [][]byte{
		forward, drop, dnat, snat, padded,
		nil, forward[:eventHeaderLen-1], forward[:eventHeaderLen], dnat[:eventXlateLen-1],
		unknownType, overclaim,
	}
}

// FuzzParseEvent checks the monitor's decoder of perf records: it never
// panics, refuses exactly the records the datapath cannot have written
// (with an error naming them), and what it accepts encodes back to the
// bytes it read.
func FuzzParseEvent(f *testing.F) {
	for i, raw := range monitorSeeds() {
		f.Add(raw, i%2)
	}
	f.Fuzz(func(t *testing.T, raw []byte, cpu int) {
		e, err := parseEvent(raw, cpu)

		var want string // why raw must be refused; "" if it must not
		switch {
		case len(raw) < eventHeaderLen:
			want = "monitor event of"
		case raw[22] == eventXlate && len(raw) < eventXlateLen:
			want = "translation event of"
		case raw[22] != eventDecision && raw[22] != eventXlate:
			want = "monitor event of type"
		case raw[22] == eventDecision && int(binary.NativeEndian.Uint16(raw[16:])) > len(raw)-eventHeaderLen:
			want = "packet bytes"
		}
		if want != "" {
			if err == nil {
				t.Fatalf("parseEvent(% x) = %+v, want an error (%s)", raw, e, want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("parseEvent(% x): error %q does not say %q", raw, err, want)
			}
			if !reflect.DeepEqual(e, Event{}) {
				t.Errorf("parseEvent(% x) failed with %v but returned %+v", raw, err, e)
			}
			return
		}
		if err != nil {
			t.Fatalf("parseEvent(% x): %v", raw, err)
		}
		if e.CPU != cpu {
			t.Errorf("CPU %d, want %d", e.CPU, cpu)
		}

		// Encoded again, the event is the record, but for what the
		// decoder skips: the header's pad byte, a translation's cap_len,
		// and whatever follows the struct (a translation carries no
		// packet; perf pads a record to 8 bytes).
		back := encodeEvent(e)
		got, in := bytes.Clone(back), bytes.Clone(raw[:len(back)])
		got[23], in[23] = 0, 0
		if e.Translation != nil {
			if len(e.Data) != 0 {
				t.Errorf("translation with %d packet bytes", len(e.Data))
			}
			copy(got[16:18], []byte{0, 0})
			copy(in[16:18], []byte{0, 0})
		}
		if !bytes.Equal(got, in) {
			t.Errorf("event %+v encodes to\n% x\nread from\n% x", e, got, in)
		}
		again, err := parseEvent(back, cpu)
		if err != nil || !reflect.DeepEqual(again, e) {
			t.Errorf("event %+v encoded and decoded again: %+v, %v", e, again, err)
		}

		// What hrctl monitor prints of any event.
		s := e.String()
		if e.Translation != nil && len(e.Steps()) != 2 {
			t.Errorf("translation %q: %d steps, want 2", s, len(e.Steps()))
		}
		if e.Translation == nil && e.Steps() != nil {
			t.Errorf("decision %q has steps %q", s, e.Steps())
		}
		if e.IsDrop() != strings.HasPrefix(s, "xx drop") && e.Translation == nil {
			t.Errorf("IsDrop %v for %q", e.IsDrop(), s)
		}
	})
}
