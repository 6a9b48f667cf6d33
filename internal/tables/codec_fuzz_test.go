package tables

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// The fuzz targets here feed the decoders of raw map entries (the structs
// of bpf/lib/*.h as the kernel hands them over) random bytes, and check
// that what they make of them encodes back to the same bytes through this
// package's encoders. Where the encoder is a writer (Conntrack.Put,
// SNAT.Put, Services.Put, WriteGCStatus), the round trip goes through a
// map of the datapath's own spec, made for the test and never pinned; the
// process needs CAP_BPF for that (without it, only the in-memory checks
// run, unless HOSTROUTING_REQUIRE_PRIVILEGED=1 makes that a failure).

// fromBytes decodes raw into a T, as the kernel lays a struct out: raw is
// cut or zero-padded to its size first, so that every input is an entry.
func fromBytes[T any](t *testing.T, raw []byte) T {
	t.Helper()
	var v T
	buf := make([]byte, binary.Size(v))
	copy(buf, raw)
	if _, err := binary.Decode(buf, binary.NativeEndian, &v); err != nil {
		t.Fatalf("decode %T: %v", v, err)
	}
	return v
}

// toBytes encodes v as the kernel lays it out.
func toBytes(t *testing.T, v any) []byte {
	t.Helper()
	b, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil {
		t.Fatalf("encode %T: %v", v, err)
	}
	return b
}

// specMap makes a map of the datapath's named map spec with at most max
// entries, unpinned, closed by f's cleanup; nil where the process may not
// create BPF maps.
func specMap(f *testing.F, name string, max uint32) *ebpf.Map {
	f.Helper()
	spec, err := bpf.LoadHostrouting()
	if err != nil {
		f.Fatal(err)
	}
	ms, ok := spec.Maps[name]
	if !ok {
		f.Fatalf("no map %s in the datapath's object", name)
	}
	ms = ms.Copy()
	ms.Pinning, ms.MaxEntries = ebpf.PinNone, max
	m, err := ebpf.NewMap(ms)
	if errors.Is(err, os.ErrPermission) && os.Getenv("HOSTROUTING_REQUIRE_PRIVILEGED") != "1" {
		return nil
	}
	if err != nil {
		f.Fatalf("create %s: %v", name, err)
	}
	f.Cleanup(func() { m.Close() })
	return m
}

// ctSeeds are conntrack entries as the datapath writes them: a service
// flow, its reply with the frontend, and an inbound flow's.
func ctSeeds(t testing.TB) (keys, vals [][]byte) {
	ap := netip.MustParseAddrPort
	for _, e := range []maps.CTEntry{
		{Dir: maps.CTService, Proto: maps.TCP, Src: ap("10.0.0.1:41234"), Dst: ap("10.96.0.10:80"), Expires: 21590, BackendID: 3, RevNAT: 1,
			Flags: maps.CTSeenReply | maps.CTEstablished | maps.CTSeq, SeqEnd: 0xdeadbeef, Packets: 12},
		{Dir: maps.CTReply, Proto: maps.UDP, Src: ap("10.0.1.5:53"), Dst: ap("10.0.0.1:41234"), Expires: 60, BackendID: 3, RevNAT: 1,
			Frontend: ap("10.96.0.10:53"), Flags: maps.CTSeenReply | maps.CTClosing, Packets: 1},
		{Dir: maps.CTInbound, Proto: maps.ICMP, Src: ap("10.0.0.7:31755"), Dst: ap("203.0.113.9:31755"), Expires: 7, Flags: 0x100},
	} {
		k, err := ctKey(e.Key())
		if err != nil {
			t.Fatal(err)
		}
		v := bpf.HostroutingCtEntry{BackendId: e.BackendID, RevNatIndex: e.RevNAT, Packets: e.Packets}
		v.St.Expires, v.St.Flags, v.St.SeqEnd = e.Expires, uint16(e.Flags), e.SeqEnd
		if e.Frontend.IsValid() {
			v.NatAddr, v.NatPort = addrKey(e.Frontend.Addr()), htons(e.Frontend.Port())
		}
		kb, _ := binary.Append(nil, binary.NativeEndian, k)
		vb, _ := binary.Append(nil, binary.NativeEndian, v)
		keys, vals = append(keys, kb), append(vals, vb)
	}
	return keys, vals
}

// FuzzConntrackEntry: any hr_ct4_* entry decodes (ctEntryOf) without
// panicking into a CTEntry whose key encodes back to the key's bytes, and
// which Conntrack.Put writes back as the value's bytes (but for padding,
// and a NAT port without a NAT address, which means no frontend) and
// Lookup reads as the same CTEntry.
func FuzzConntrackEntry(f *testing.F) {
	keys, vals := ctSeeds(f)
	for i := range keys {
		f.Add(keys[i], vals[i], uint32(21000))
	}
	f.Add([]byte{}, []byte{}, uint32(0))
	f.Add(bytes.Repeat([]byte{0xff}, 16), bytes.Repeat([]byte{0xff}, 32), ^uint32(0))
	m := specMap(f, "hr_ct4_tcp", 1)
	f.Fuzz(func(t *testing.T, key, val []byte, now uint32) {
		k := fromBytes[bpf.HostroutingCt4Key](t, key)
		v := fromBytes[bpf.HostroutingCtEntry](t, val)
		e := ctEntryOf(&k, &v, now)

		if e.Key() != ctKeyOf(&k) {
			t.Errorf("entry key %v, key %v", e.Key(), ctKeyOf(&k))
		}
		back, err := ctKey(e.Key())
		if err != nil {
			t.Fatalf("key %v of a decoded entry: %v", e.Key(), err)
		}
		want := k
		want.Pad = 0 // not part of the key the programs build
		if back != want {
			t.Errorf("key %+v decodes to %v, encodes back to %+v", k, e.Key(), back)
		}
		if e.Remaining != maps.Remaining(v.St.Expires, now) || e.Remaining != time.Duration(int64(v.St.Expires)-int64(now))*time.Second {
			t.Errorf("expires %d at %d: remaining %v", v.St.Expires, now, e.Remaining)
		}
		if e.Frontend.IsValid() != (v.NatAddr != 0) || e.Frontend.IsValid() && !e.Frontend.Addr().Is4() {
			t.Errorf("NAT address %#x gives frontend %v", v.NatAddr, e.Frontend)
		}
		if s := e.String(); !strings.HasPrefix(s, e.Key().String()+" ") || strings.Contains(s, "Frontend=") != e.Frontend.IsValid() {
			t.Errorf("entry %+v prints as %q", e, s)
		}
		if m == nil {
			return
		}

		ct := NewConntrack(m)
		if err := ct.Put(e); err != nil {
			t.Fatalf("Put(%v): %v", e, err)
		}
		defer ct.Delete(e.Key())
		var got bpf.HostroutingCtEntry
		if err := m.Lookup(back, &got); err != nil {
			t.Fatalf("entry %v written, not found: %v", e, err)
		}
		canon := v
		canon.St.Pad = 0
		if canon.NatAddr == 0 {
			canon.NatPort = 0
		}
		if got != canon {
			t.Errorf("entry written as\n% x\nread from\n% x", toBytes(t, got), toBytes(t, canon))
		}
		read, err := ct.Lookup(e.Key())
		if err != nil {
			t.Fatalf("Lookup(%v): %v", e.Key(), err)
		}
		read.Remaining = e.Remaining // read at another second
		if read != e {
			t.Errorf("Put(%+v), Lookup gives %+v", e, read)
		}
	})
}

// FuzzSNATEntry: any hr_snat4_* entry decodes (snatEntryOf) into an
// SNATEntry whose key encodes back to the key's bytes and whose flags
// match the raw ones; Reverse pairs it with the entry the datapath makes
// with it; SNAT.Put writes what Lookup reads back as the same entry.
func FuzzSNATEntry(f *testing.F) {
	ap := netip.MustParseAddrPort
	for _, e := range []maps.SNATEntry{
		{Dir: maps.NATOut, Proto: maps.TCP, Src: ap("10.0.0.5:40000"), Dst: ap("172.18.0.1:9000"), To: ap("172.18.0.2:33388"), Expires: 3045, Established: true},
		{Dir: maps.NATIn, Proto: maps.TCP, Src: ap("172.18.0.1:9000"), Dst: ap("172.18.0.2:33388"), To: ap("10.0.0.5:40000"), Expires: 3045, Closing: true},
		{Dir: maps.NATIn, Proto: maps.UDP, Src: ap("172.18.0.1:53"), Dst: ap("172.18.0.2:51000"), To: ap("172.18.0.2:51000"), Expires: 9, Host: true},
		{Dir: maps.NATOut, Proto: maps.ICMP, Src: ap("10.0.0.10:31755"), Dst: ap("172.18.0.1:31755"), To: ap("172.18.0.2:33671"), Expires: 2870},
	} {
		k, err := snatKey(e.Key())
		if err != nil {
			f.Fatal(err)
		}
		v := bpf.HostroutingNat4Entry{ToAddr: addrKey(e.To.Addr()), ToPort: htons(e.To.Port())}
		v.St.Expires = e.Expires
		if e.Established {
			v.St.Flags = natFlagEstablished | uint16(maps.CTSeenReply)
		}
		if e.Closing {
			v.St.Flags |= natFlagClosing
		}
		if e.Host {
			v.St.Flags |= natFlagHost
		}
		kb, _ := binary.Append(nil, binary.NativeEndian, k)
		vb, _ := binary.Append(nil, binary.NativeEndian, v)
		f.Add(kb, vb, uint32(3000))
	}
	f.Add([]byte{}, []byte{}, uint32(0))
	m := specMap(f, "hr_snat4_tcp", 1)
	f.Fuzz(func(t *testing.T, key, val []byte, now uint32) {
		k := fromBytes[bpf.HostroutingCt4Key](t, key)
		v := fromBytes[bpf.HostroutingNat4Entry](t, val)
		e := snatEntryOf(&k, &v, now)

		back, err := snatKey(e.Key())
		if err != nil {
			t.Fatalf("key %v of a decoded entry: %v", e.Key(), err)
		}
		want := k
		want.Pad = 0
		if back != want {
			t.Errorf("key %+v decodes to %v, encodes back to %+v", k, e.Key(), back)
		}
		if e.Host != (v.St.Flags&natFlagHost != 0) || e.Closing != (v.St.Flags&natFlagClosing != 0) ||
			e.Established != (v.St.Flags&natFlagEstablished != 0) || uint16(e.Flags) != v.St.Flags {
			t.Errorf("flags %#04x decode to %+v", v.St.Flags, e)
		}
		if e.Remaining != maps.Remaining(v.St.Expires, now) {
			t.Errorf("expires %d at %d: remaining %v", v.St.Expires, now, e.Remaining)
		}
		_ = e.String()

		// The pair the datapath makes with an outgoing entry points back
		// at it (an ICMP echo's identifier is both of its "ports").
		if r := e.Reverse(); e.Dir == maps.NATOut && !e.Host && (e.Proto != maps.ICMP || e.Src.Port() == e.Dst.Port()) {
			pair := maps.SNATEntry{Dir: r.Dir, Proto: r.Proto, Src: r.Src, Dst: r.Dst, To: e.Src}
			if r.Dir != maps.NATIn || pair.Reverse() != e.Key() {
				t.Errorf("%v pairs with %v, which pairs with %v", e, pair, pair.Reverse())
			}
		} else if e.Host && r != (maps.SNATKey{}) {
			t.Errorf("host entry %v pairs with %v", e, r)
		}
		if m == nil {
			return
		}

		s := NewSNAT(m)
		if err := s.Put(e); err != nil {
			t.Fatalf("Put(%v): %v", e, err)
		}
		defer s.Delete(e.Key())
		read, err := s.Lookup(e.Key())
		if err != nil {
			t.Fatalf("Lookup(%v): %v", e.Key(), err)
		}
		// Put writes the flags it knows, and SeenReply with Established.
		wantFlags := maps.CTFlags(v.St.Flags) & (maps.CTFlags(natFlagHost) | maps.CTClosing | maps.CTEstablished)
		if e.Established {
			wantFlags |= maps.CTSeenReply
		}
		read.Remaining = e.Remaining
		e.Flags = wantFlags
		if read != e {
			t.Errorf("Put(%+v), Lookup gives %+v", e, read)
		}
	})
}

// FuzzEndpointInfo: any hr_endpoints entry decodes (endpointOf) into an
// Endpoint that infoOf, the encoder of Endpoints.Put, turns back into the
// same bytes, or refuses with an error naming the endpoint: exactly the
// entries no Put can have written (ifindex 0, ID 0, an IPv4-mapped IPv6
// address).
func FuzzEndpointInfo(f *testing.F) {
	mac, _ := net.ParseMAC("c6:6d:95:cd:34:a2")
	nodeMAC, _ := net.ParseMAC("2a:0a:d9:17:44:22")
	for _, ep := range []maps.Endpoint{
		{IP: netip.MustParseAddr("10.0.0.85"), IfIndex: 34, ID: 1445, MAC: mac, NodeMAC: nodeMAC},
		{IP: netip.MustParseAddr("10.0.0.86"), IPv6: netip.MustParseAddr("fd00::86"), IfIndex: 35, ID: 2,
			Flags: maps.EndpointARPResponder | maps.EndpointPolicy | maps.EndpointLBBackend, MAC: mac, NodeMAC: nodeMAC},
	} {
		v, err := infoOf(ep)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := binary.Append(nil, binary.NativeEndian, v)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		v := fromBytes[bpf.HostroutingEndpointInfo](t, raw)
		ep := endpointOf(v)
		if !ep.IP.Is4() || len(ep.MAC) != 6 || len(ep.NodeMAC) != 6 || ep.IPv6.IsValid() && !ep.IPv6.Is6() {
			t.Fatalf("%+v decodes to %+v", v, ep)
		}
		if uint16(ep.Flags) != v.Flags {
			t.Errorf("flags %#04x decode to %#04x", v.Flags, uint16(ep.Flags))
		}
		_ = ep.String()

		back, err := infoOf(ep)
		refuse := v.Ifindex == 0 || v.Id == 0 || ep.IPv6.Is4In6()
		switch {
		case refuse && err == nil:
			t.Fatalf("endpoint %+v from %+v: infoOf accepts it", ep, v)
		case refuse && !strings.Contains(err.Error(), "endpoint"):
			t.Errorf("endpoint %+v: error %q does not name it", ep, err)
		case !refuse && err != nil:
			t.Fatalf("endpoint %+v from %+v: %v", ep, v, err)
		case !refuse && back != v:
			t.Errorf("entry\n% x\nencodes back as\n% x", toBytes(t, v), toBytes(t, back))
		}

		// Who the endpoint belongs to: strings in fixed C arrays.
		var meta bpf.HostroutingEndpointMeta
		id := string(raw)
		if len(id) < len(meta.ContainerId) {
			putString(meta.ContainerId[:], id)
			want, _, _ := strings.Cut(id, "\x00")
			if got := getString(meta.ContainerId[:]); got != want {
				t.Errorf("container ID %q reads back as %q", id, got)
			}
		}
	})
}

// FuzzServiceEntry: any hr_lb4_services key decodes (frontendOf) into a
// Frontend that encodes back to it (lbKey, slot aside); Services.Put of
// an entry for it with any backends, Entry and List read the entry back,
// Delete removes every slot; a frontend that is no IPv4 address is
// refused, naming it.
func FuzzServiceEntry(f *testing.F) {
	front, _ := lbKey(maps.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: maps.TCP}, 0)
	fb, _ := binary.Append(nil, binary.NativeEndian, front)
	ids := binary.NativeEndian.AppendUint32(binary.NativeEndian.AppendUint32(nil, 1), 2)
	f.Add(fb, ids, uint8(1), uint16(1), uint16(maps.ServiceAffinity|maps.ServiceMaglev), uint16(10800))
	f.Add(fb, []byte{}, uint8(0), uint16(7), uint16(0), uint16(0))
	f.Add([]byte{}, bytes.Repeat([]byte{0xff}, 40), uint8(3), uint16(0xffff), uint16(0xffff), uint16(0xffff))
	var sm ServiceMaps
	if sm.Services = specMap(f, "hr_lb4_services", 512); sm.Services != nil {
		sm.Backends = specMap(f, "hr_lb4_backends", 16)
		sm.On = specMap(f, "hr_lb_on", 1)
		sm.ClusterIPs = specMap(f, "hr_cluster_ips", 16)
	}
	f.Fuzz(func(t *testing.T, key, backends []byte, active uint8, revNAT, flags, affinity uint16) {
		k := fromBytes[bpf.HostroutingLb4Key](t, key)
		fe := frontendOf(k)
		back, err := lbKey(fe, k.BackendSlot)
		want := k
		want.Pad = 0
		if err != nil || back != want {
			t.Fatalf("key %+v decodes to %v, encodes back to %+v, %v", k, fe, back, err)
		}
		if s := fe.String(); strings.HasSuffix(s, "/i") != (fe.Scope == maps.ScopeInternal) {
			t.Errorf("frontend %+v prints as %q", fe, s)
		}
		v6 := maps.Frontend{Addr: netip.AddrPortFrom(netip.AddrFrom16(fe.Addr.Addr().As16()), fe.Addr.Port()), Proto: fe.Proto}
		if _, err := lbKey(v6, 0); err == nil || !strings.Contains(err.Error(), v6.Addr.String()) {
			t.Errorf("lbKey(%v): %v, want an error naming it", v6, err)
		}
		if sm.Services == nil {
			return
		}

		e := maps.ServiceEntry{Frontend: fe, RevNAT: revNAT, Flags: maps.ServiceFlags(flags), AffinityTimeout: affinity}
		var slots []uint32
		for b := backends; len(b) >= 4 && len(slots) < 64; b = b[4:] {
			slots = append(slots, binary.NativeEndian.Uint32(b))
		}
		n := min(int(active), len(slots))
		if n > 0 {
			e.Backends = slots[:n]
		}
		if len(slots) > n {
			e.Inactive = slots[n:]
		}
		s := NewServices(sm)
		if err := s.Put(e); err != nil {
			t.Fatalf("Put(%+v): %v", e, err)
		}
		got, err := s.Entry(fe)
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("Put(%+v), Entry gives %+v, %v", e, got, err)
		}
		list, err := s.List()
		if err != nil || len(list) != 1 || !reflect.DeepEqual(list[0], e) {
			t.Errorf("Put(%+v), List gives %+v, %v", e, list, err)
		}
		if err := s.Delete(fe); err != nil {
			t.Fatalf("Delete(%v): %v", fe, err)
		}
		if _, err := s.Entry(fe); !errors.Is(err, maps.ErrNotFound) {
			t.Errorf("Entry after Delete: %v, want ErrNotFound", err)
		}
		var rest []bpf.HostroutingLb4Key
		var (
			kk bpf.HostroutingLb4Key
			vv bpf.HostroutingLb4Service
		)
		for it := sm.Services.Iterate(); it.Next(&kk, &vv); {
			rest = append(rest, kk)
		}
		if len(rest) > 0 {
			t.Errorf("Delete(%v) left %d slots: %+v", fe, len(rest), rest)
		}
	})
}

// FuzzGCStatus: whatever hr_gc holds, ReadGCStatus reads without error
// or panic; a status WriteGCStatus wrote reads back the same, its error
// cut to 95 bytes (and at a NUL byte).
func FuzzGCStatus(f *testing.F) {
	f.Add([]byte{}, time.Now().UnixNano(), int64(3*time.Millisecond), uint64(12), uint64(1), uint64(40), uint64(2), "list conntrack: interrupted")
	f.Add(bytes.Repeat([]byte{'x'}, 200), int64(-1), int64(-1), ^uint64(0), uint64(0), uint64(0), uint64(0), strings.Repeat("é", 60))
	m := specMap(f, "hr_gc", 1)
	f.Fuzz(func(t *testing.T, raw []byte, lastRun, lastDuration int64, runs, errs, ct, snat uint64, lastError string) {
		if m == nil {
			return // both ends are map accesses
		}
		v := fromBytes[bpf.HostroutingGcStatus](t, raw)
		if err := m.Put(uint32(0), v); err != nil {
			t.Fatal(err)
		}
		s, err := ReadGCStatus(m)
		if err != nil {
			t.Fatalf("ReadGCStatus of %+v: %v", v, err)
		}
		if len(s.LastError) > len(v.LastError) || strings.ContainsRune(s.LastError, 0) || s.Runs != v.Runs || s.LastRun.IsZero() != (v.LastRun == 0) {
			t.Errorf("%+v reads as %+v", v, s)
		}

		in := maps.GCStatus{LastDuration: time.Duration(lastDuration), Runs: runs, Errors: errs, CTRemoved: ct, SNATRemoved: snat, LastError: lastError}
		if lastRun != 0 { // 0 is no run: the epoch's first nanosecond reads back as none
			in.LastRun = time.Unix(0, lastRun)
		}
		if err := WriteGCStatus(m, in); err != nil {
			t.Fatalf("WriteGCStatus(%+v): %v", in, err)
		}
		out, err := ReadGCStatus(m)
		if err != nil {
			t.Fatal(err)
		}
		want := in
		want.LastError, _, _ = strings.Cut(lastError[:min(len(lastError), len(v.LastError)-1)], "\x00")
		if !out.LastRun.Equal(want.LastRun) {
			t.Errorf("last run %v reads back as %v", want.LastRun, out.LastRun)
		}
		out.LastRun, want.LastRun = time.Time{}, time.Time{}
		if out != want {
			t.Errorf("WriteGCStatus(%+v), ReadGCStatus gives %+v", want, out)
		}
	})
}
