package tables_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// translationNode loads a node's datapath (no devices, nothing attached)
// for a fresh namespace and pin path; t.Cleanup removes both.
func translationNode(t testing.TB) *instance.Instance {
	t.Helper()
	node := datapathtest.NewNode(t, "ct")
	n, err := instance.Load(instance.Options{PinPath: datapathtest.PinPath(t), Netns: node.Netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Remove(); err != nil {
			t.Errorf("remove node: %v", err)
		}
	})
	return n
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestConntrackPutListDelete(t *testing.T) {
	n := translationNode(t)
	ct := tables.NewConntrack(n.Maps.ConntrackTables()...)
	now := maps.MonotonicSeconds()
	entries := []maps.CTEntry{
		{Dir: maps.CTService, Proto: maps.TCP, Src: ap("10.0.0.1:41234"), Dst: ap("10.96.0.10:80"),
			Expires: now + 21590, BackendID: 3, RevNAT: 1, Flags: maps.CTSeenReply, Packets: 12},
		{Dir: maps.CTReply, Proto: maps.TCP, Src: ap("10.0.1.5:8080"), Dst: ap("10.0.0.1:41234"),
			Expires: now + 21590, BackendID: 3, RevNAT: 1, Flags: maps.CTSeenReply, Packets: 11},
		{Dir: maps.CTInbound, Proto: maps.UDP, Src: ap("10.0.0.7:53"), Dst: ap("203.0.113.9:51000"),
			Expires: now - 5, Packets: 1},
	}
	for _, e := range entries {
		if err := ct.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ct.List()
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[maps.CTKey]maps.CTEntry{}
	for _, e := range got {
		byKey[e.Key()] = e
	}
	if len(got) != len(entries) {
		t.Fatalf("List: %d entries, want %d: %v", len(got), len(entries), got)
	}
	for _, want := range entries {
		e, ok := byKey[want.Key()]
		if !ok {
			t.Fatalf("List lacks %s", want.Key())
		}
		rem := e.Remaining
		e.Remaining = 0
		if e != want {
			t.Errorf("List:\n got %s\nwant %s", e, want)
		}
		wantRem := time.Duration(int64(want.Expires)-int64(now)) * time.Second
		if rem > wantRem || rem < wantRem-2*time.Second {
			t.Errorf("%s: Remaining %s, want about %s", want.Key(), rem, wantRem)
		}
	}
	if e := byKey[entries[2].Key()]; e.Remaining >= 0 {
		t.Errorf("expired entry: Remaining %s, want negative", e.Remaining)
	}

	if e, err := ct.Lookup(entries[0].Key()); err != nil || e.BackendID != 3 {
		t.Errorf("Lookup: %v, %v", e, err)
	}
	if err := ct.Delete(entries[0].Key()); err != nil {
		t.Fatal(err)
	}
	if err := ct.Delete(entries[0].Key()); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if _, err := ct.Lookup(entries[0].Key()); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Lookup of a deleted entry: %v, want ErrNotFound", err)
	}
	// Gone keys are skipped, the others deleted.
	n2, err := ct.DeleteKeys([]maps.CTKey{entries[0].Key(), entries[1].Key(), entries[0].Key(), entries[2].Key()})
	if err != nil || n2 != 2 {
		t.Errorf("DeleteKeys: %d, %v; want 2 removed", n2, err)
	}
	if left, err := ct.List(); err != nil || len(left) != 0 {
		t.Errorf("after DeleteKeys: %v, %v", left, err)
	}
	if err := ct.Put(maps.CTEntry{Dir: maps.CTService, Proto: maps.TCP, Src: ap("[fd00::1]:1"), Dst: ap("10.0.0.1:1")}); err == nil {
		t.Error("Put of an IPv6 tuple succeeded")
	}
}

// TestConntrackListMany reads more entries than one batch holds, and
// deletes them in one call.
func TestConntrackListMany(t *testing.T) {
	n := translationNode(t)
	ct := tables.NewConntrack(n.Maps.ConntrackTables()...)
	const count = 3*tables.DefaultBatchSize + 17
	var keys []maps.CTKey
	for i := range count {
		e := maps.CTEntry{Dir: maps.CTService, Proto: maps.UDP,
			Src:     netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), uint16(1000+i)),
			Dst:     ap("10.96.0.10:53"),
			Expires: uint32(i), BackendID: uint32(i)}
		if err := ct.Put(e); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, e.Key())
	}
	got, err := ct.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != count {
		t.Fatalf("List: %d entries, want %d", len(got), count)
	}
	seen := make([]bool, count)
	for _, e := range got {
		i := int(e.BackendID)
		if seen[i] || e.Expires != uint32(i) || e.Src.Port() != uint16(1000+i) {
			t.Fatalf("List: entry %s twice or wrong", e)
		}
		seen[i] = true
	}
	removed, err := ct.DeleteKeys(keys)
	if err != nil || removed != count {
		t.Fatalf("DeleteKeys: %d, %v; want %d", removed, err, count)
	}
	if left, _ := ct.List(); len(left) != 0 {
		t.Errorf("after DeleteKeys: %d entries left", len(left))
	}
}

func TestSNATPutListDelete(t *testing.T) {
	n := translationNode(t)
	snat := tables.NewSNAT(n.Maps.SNATTables()...)
	now := maps.MonotonicSeconds()
	out := maps.SNATEntry{Dir: maps.NATOut, Proto: maps.TCP, Src: ap("10.0.0.5:40000"), Dst: ap("172.18.0.1:9000"),
		To: ap("172.18.0.2:33388"), Expires: now + 3045}
	in := maps.SNATEntry{Dir: maps.NATIn, Proto: maps.TCP, Src: ap("172.18.0.1:9000"), Dst: ap("172.18.0.2:33388"),
		To: ap("10.0.0.5:40000"), Expires: now + 3045}
	host := maps.SNATEntry{Dir: maps.NATIn, Proto: maps.UDP, Src: ap("172.18.0.1:53"), Dst: ap("172.18.0.2:51000"),
		To: ap("172.18.0.2:51000"), Expires: now - 1, Host: true}
	if out.Reverse() != in.Key() || in.Reverse() != out.Key() || host.Reverse() != (maps.SNATKey{}) {
		t.Errorf("Reverse: %v %v %v", out.Reverse(), in.Reverse(), host.Reverse())
	}
	for _, e := range []maps.SNATEntry{out, in, host} {
		if err := snat.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := snat.List()
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i].Remaining, got[i].Flags = 0, 0
	}
	slices.SortFunc(got, func(a, b maps.SNATEntry) int { return a.Src.Compare(b.Src) })
	want := []maps.SNATEntry{out, in, host}
	slices.SortFunc(want, func(a, b maps.SNATEntry) int { return a.Src.Compare(b.Src) })
	if !slices.Equal(got, want) {
		t.Errorf("List:\n got %v\nwant %v", got, want)
	}
	if e, err := snat.Lookup(host.Key()); err != nil || !e.Host || e.Remaining >= 0 {
		t.Errorf("Lookup of the host entry: %v, %v", e, err)
	}
	if err := snat.Delete(out.Key()); err != nil {
		t.Fatal(err)
	}
	if err := snat.Delete(out.Key()); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if removed, err := snat.DeleteKeys([]maps.SNATKey{out.Key(), in.Key(), host.Key()}); err != nil || removed != 2 {
		t.Errorf("DeleteKeys: %d, %v; want 2", removed, err)
	}
	if left, _ := snat.List(); len(left) != 0 {
		t.Errorf("after DeleteKeys: %v", left)
	}
}
