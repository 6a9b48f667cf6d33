package nat_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// loadTables loads a node's datapath (nothing attached) for a fresh
// namespace and pin path, and returns its conntrack and source NAT
// tables; t.Cleanup removes the node.
func loadTables(t testing.TB) (*tables.Conntrack, *tables.SNAT) {
	t.Helper()
	node := datapathtest.NewNode(t, "gc")
	n, err := instance.Load(instance.Options{PinPath: datapathtest.PinPath(t), Netns: node.Netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Remove(); err != nil {
			t.Errorf("remove node: %v", err)
		}
	})
	return tables.NewConntrack(n.Maps.ConntrackTables()...), tables.NewSNAT(n.Maps.SNATTables()...)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

const hour = 3600

func ctKeys(t *testing.T, ct *tables.Conntrack) []maps.CTKey {
	t.Helper()
	all, err := ct.List()
	if err != nil {
		t.Fatal(err)
	}
	var keys []maps.CTKey
	for _, e := range all {
		keys = append(keys, e.Key())
	}
	slices.SortFunc(keys, func(a, b maps.CTKey) int { return strings.Compare(a.String(), b.String()) })
	return keys
}

func snatKeys(t *testing.T, s *tables.SNAT) []maps.SNATKey {
	t.Helper()
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var keys []maps.SNATKey
	for _, e := range all {
		keys = append(keys, e.Key())
	}
	slices.SortFunc(keys, func(a, b maps.SNATKey) int { return strings.Compare(a.String(), b.String()) })
	return keys
}

func put[E interface{ Key() K }, K any](t *testing.T, put func(E) error, entries ...E) {
	t.Helper()
	for _, e := range entries {
		if err := put(e); err != nil {
			t.Fatal(err)
		}
	}
}

// natPair returns a translated flow's two source NAT entries, both
// expiring at expires.
func natPair(proto maps.Protocol, pod, remote, node string, outExpires, inExpires uint32) (out, in maps.SNATEntry) {
	// Established: a reply went by, as for the timeouts' classes of a
	// flow the tests call established.
	out = maps.SNATEntry{Dir: maps.NATOut, Proto: proto, Src: ap(pod), Dst: ap(remote), To: ap(node), Expires: outExpires, Established: true}
	in = maps.SNATEntry{Dir: maps.NATIn, Proto: proto, Src: ap(remote), Dst: ap(node), To: ap(pod), Expires: inExpires, Established: true}
	return out, in
}

// TestCollect writes entries that are live, expired, and past a Timeouts
// bound, and checks that one pass removes exactly the garbage.
func TestCollect(t *testing.T) {
	ct, snat := loadTables(t)
	now := maps.MonotonicSeconds()
	svc := func(src string, proto maps.Protocol, flags maps.CTFlags, expires uint32) maps.CTEntry {
		return maps.CTEntry{Dir: maps.CTService, Proto: proto, Src: ap(src), Dst: ap("10.96.0.10:80"),
			Expires: expires, BackendID: 3, RevNAT: 1, Flags: flags}
	}
	// Live: within the datapath's expiry and the bounds.
	keep := []maps.CTEntry{
		svc("10.0.0.1:1001", maps.TCP, maps.CTSeenReply, now+21600-600),  // last packet 10m ago
		svc("10.0.0.1:1002", maps.TCP, maps.CTSeenReply, now+21600-1800), // last packet 30m ago, bound 1h
		svc("10.0.0.1:1003", maps.TCP, 0, now+58),                        // SYN 2s ago, bound 5s
		svc("10.0.0.1:1004", maps.TCP, maps.CTSeenReply|maps.CTClosing, now+5),
		svc("10.0.0.1:1005", maps.UDP, 0, now+59),
		{Dir: maps.CTInbound, Proto: maps.UDP, Src: ap("10.0.0.7:53"), Dst: ap("203.0.113.9:5000"), Expires: now + 30},
	}
	// Expired by the datapath's expiry.
	expired := []maps.CTEntry{
		svc("10.0.0.2:2001", maps.TCP, maps.CTSeenReply, now-5),
		svc("10.0.0.2:2002", maps.UDP, 0, now-2),
		{Dir: maps.CTReply, Proto: maps.TCP, Src: ap("10.0.1.5:8080"), Dst: ap("10.0.0.2:2001"), Expires: now - 100, BackendID: 3, RevNAT: 1},
	}
	// Live by the datapath, past a bound.
	capped := []maps.CTEntry{
		svc("10.0.0.3:3001", maps.TCP, maps.CTSeenReply, now+21600-2*hour), // last packet 2h ago, bound 1h
		svc("10.0.0.3:3002", maps.TCP, 0, now+50),                          // SYN 10s ago, bound 5s
	}
	put(t, ct.Put, slices.Concat(keep, expired, capped)...)

	pairLiveOut, pairLiveIn := natPair(maps.UDP, "10.0.0.5:4001", "1.1.1.1:53", "172.18.0.2:40001", now-10, now+30)
	pairDeadOut, pairDeadIn := natPair(maps.UDP, "10.0.0.5:4002", "1.1.1.1:53", "172.18.0.2:40002", now-10, now-20)
	pairCapOut, pairCapIn := natPair(maps.TCP, "10.0.0.5:4003", "1.1.1.1:443", "172.18.0.2:40003", now+21600-2*hour, now+21600-3*hour)
	pairOldOut, pairOldIn := natPair(maps.TCP, "10.0.0.5:4004", "1.1.1.1:443", "172.18.0.2:40004", now+21600-1800, now+21600-1800)
	pairClosingOut, pairClosingIn := natPair(maps.TCP, "10.0.0.5:4005", "1.1.1.1:443", "172.18.0.2:40005", now+8, now+8)
	pairClosingOut.Closing, pairClosingIn.Closing = true, true // a FIN went by: the closing bound
	orphan, _ := natPair(maps.UDP, "10.0.0.5:4006", "1.1.1.1:53", "172.18.0.2:40006", now-1, 0)
	hostDead := maps.SNATEntry{Dir: maps.NATIn, Proto: maps.TCP, Src: ap("1.1.1.1:443"), Dst: ap("172.18.0.2:50001"), To: ap("172.18.0.2:50001"), Expires: now - 3, Host: true}
	hostLive := maps.SNATEntry{Dir: maps.NATIn, Proto: maps.TCP, Src: ap("1.1.1.1:443"), Dst: ap("172.18.0.2:50002"), To: ap("172.18.0.2:50002"), Expires: now + 21600 - 60, Host: true}
	natKeep := []maps.SNATEntry{pairLiveOut, pairLiveIn, pairOldOut, pairOldIn, pairClosingOut, pairClosingIn, hostLive}
	natGone := []maps.SNATEntry{pairDeadOut, pairDeadIn, orphan, hostDead}
	natCapped := []maps.SNATEntry{pairCapOut, pairCapIn}
	put(t, snat.Put, slices.Concat(natKeep, natGone, natCapped)...)

	gc := nat.NewGC(ct, snat, nat.Options{Timeouts: nat.Timeouts{TCPEstablished: time.Hour, TCPSYN: 5 * time.Second}})
	if got := gc.Timeouts(); got.TCPClosing != 10*time.Second || got.Other != time.Minute || got.TCPEstablished != time.Hour {
		t.Errorf("Timeouts with defaults: %+v", got)
	}
	pass, err := gc.Collect()
	if err != nil {
		t.Fatal(err)
	}

	var wantCT []maps.CTKey
	for _, e := range keep {
		wantCT = append(wantCT, e.Key())
	}
	slices.SortFunc(wantCT, func(a, b maps.CTKey) int { return strings.Compare(a.String(), b.String()) })
	if got := ctKeys(t, ct); !slices.Equal(got, wantCT) {
		t.Errorf("conntrack after Collect:\n got %v\nwant %v", got, wantCT)
	}
	var wantNAT []maps.SNATKey
	for _, e := range natKeep {
		wantNAT = append(wantNAT, e.Key())
	}
	slices.SortFunc(wantNAT, func(a, b maps.SNATKey) int { return strings.Compare(a.String(), b.String()) })
	if got := snatKeys(t, snat); !slices.Equal(got, wantNAT) {
		t.Errorf("NAT after Collect:\n got %v\nwant %v", got, wantNAT)
	}

	wantPass := nat.TableStats{Scanned: 11, Removed: 5, Capped: 2}
	if pass.Runs != 1 || pass.Conntrack != wantPass || pass.LastError != nil || pass.LastRun.IsZero() {
		t.Errorf("pass: %+v, want conntrack %+v", pass, wantPass)
	}
	if want := (nat.TableStats{Scanned: 13, Removed: 6, Capped: 2}); pass.SNAT != want {
		t.Errorf("pass: NAT %+v, want %+v", pass.SNAT, want)
	}
	// A second pass finds nothing; the totals add up.
	if pass, err := gc.Collect(); err != nil || pass.Conntrack.Removed+pass.SNAT.Removed != 0 {
		t.Errorf("second pass: %+v, %v", pass, err)
	}
	st := gc.Stats()
	if st.Runs != 2 || st.Conntrack.Scanned != 11+6 || st.Conntrack.Removed != 5 || st.SNAT.Removed != 6 || st.Errors != 0 {
		t.Errorf("totals: %+v", st)
	}

	// Default bounds are the datapath's: nothing live is cut.
	put(t, ct.Put, capped...)
	if pass, err := nat.NewGC(ct, nil, nat.Options{}).Collect(); err != nil || pass.Conntrack.Removed != 0 {
		t.Errorf("default bounds removed %d entries (%v), want none", pass.Conntrack.Removed, err)
	}
}

func TestFlush(t *testing.T) {
	ct, snat := loadTables(t)
	now := maps.MonotonicSeconds()
	pod := netip.MustParseAddr("10.0.0.5")
	ctPod := []maps.CTEntry{
		{Dir: maps.CTService, Proto: maps.TCP, Src: ap("10.0.0.5:1000"), Dst: ap("10.96.0.10:80"), Expires: now + 100, BackendID: 7, RevNAT: 1},
		{Dir: maps.CTReply, Proto: maps.TCP, Src: ap("10.0.0.5:8080"), Dst: ap("10.0.0.9:2000"), Expires: now + 100, BackendID: 3, RevNAT: 1},
		{Dir: maps.CTInbound, Proto: maps.UDP, Src: ap("10.0.0.5:53"), Dst: ap("203.0.113.9:5000"), Expires: now + 100},
	}
	ctOther := []maps.CTEntry{
		{Dir: maps.CTService, Proto: maps.TCP, Src: ap("10.0.0.9:2000"), Dst: ap("10.96.0.10:80"), Expires: now + 100, BackendID: 3, RevNAT: 1},
		{Dir: maps.CTService, Proto: maps.TCP, Src: ap("10.0.0.9:2001"), Dst: ap("10.96.0.10:80"), Expires: now + 100, BackendID: 4, RevNAT: 1},
		{Dir: maps.CTInbound, Proto: maps.UDP, Src: ap("10.0.0.55:53"), Dst: ap("203.0.113.9:5000"), Expires: now + 100, BackendID: 3},
	}
	put(t, ct.Put, slices.Concat(ctPod, ctOther)...)
	out, in := natPair(maps.TCP, "10.0.0.5:4000", "1.1.1.1:443", "172.18.0.2:40000", now+100, now+100)
	otherOut, otherIn := natPair(maps.TCP, "10.0.0.6:4000", "1.1.1.1:443", "172.18.0.2:40001", now+100, now+100)
	put(t, snat.Put, out, in, otherOut, otherIn)

	gc := nat.NewGC(ct, snat, nat.Options{})
	n, err := gc.FlushEndpoint(pod)
	if err != nil || n != 5 {
		t.Fatalf("FlushEndpoint: %d, %v; want 5 removed", n, err)
	}
	var want []maps.CTKey
	for _, e := range ctOther {
		want = append(want, e.Key())
	}
	slices.SortFunc(want, func(a, b maps.CTKey) int { return strings.Compare(a.String(), b.String()) })
	if got := ctKeys(t, ct); !slices.Equal(got, want) {
		t.Errorf("conntrack after FlushEndpoint:\n got %v\nwant %v", got, want)
	}
	if got := snatKeys(t, snat); len(got) != 2 || !slices.Contains(got, otherOut.Key()) || !slices.Contains(got, otherIn.Key()) {
		t.Errorf("NAT after FlushEndpoint: %v", got)
	}
	if n, err := gc.FlushEndpoint(pod); err != nil || n != 0 {
		t.Errorf("second FlushEndpoint: %d, %v", n, err)
	}

	// Backend 3's service flow goes; the inbound entry that happens to
	// carry a 3 stays.
	if n, err := gc.FlushBackend(3); err != nil || n != 1 {
		t.Errorf("FlushBackend: %d, %v; want 1", n, err)
	}
	if got := ctKeys(t, ct); len(got) != 2 || slices.Contains(got, ctOther[0].Key()) {
		t.Errorf("conntrack after FlushBackend: %v", got)
	}
	st := gc.Stats()
	if st.Conntrack.Flushed != 4 || st.SNAT.Flushed != 2 || st.Runs != 0 {
		t.Errorf("stats after flushes: %+v", st)
	}
}

func TestGCLoop(t *testing.T) {
	ct, snat := loadTables(t)
	var passes atomic.Int64
	gc := nat.NewGC(ct, snat, nat.Options{OnPass: func(nat.Stats) { passes.Add(1) }})
	stale := func(port uint16) maps.CTEntry {
		return maps.CTEntry{Dir: maps.CTService, Proto: maps.UDP, Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port),
			Dst: ap("10.96.0.10:53"), Expires: maps.MonotonicSeconds() - 5}
	}
	put(t, ct.Put, stale(1))
	stop := gc.Start(20 * time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for gc.Stats().Runs < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	put(t, ct.Put, stale(2))
	for len(ctKeys(t, ct)) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if left := ctKeys(t, ct); len(left) > 0 {
		t.Fatalf("the loop left %v", left)
	}
	st := gc.Stats()
	if st.Runs < 3 || st.Conntrack.Removed != 2 || st.LastError != nil || int64(st.Runs) != passes.Load() {
		t.Errorf("stats: %+v, OnPass called %d times", st, passes.Load())
	}
	// Stopped: no more passes.
	put(t, ct.Put, stale(3))
	time.Sleep(100 * time.Millisecond)
	if gc.Stats().Runs != st.Runs || len(ctKeys(t, ct)) != 1 {
		t.Errorf("after stop: %d runs (had %d), entries %v", gc.Stats().Runs, st.Runs, ctKeys(t, ct))
	}

	// Run returns when its context ends; an ended one makes no pass.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	gc.Run(ctx, 10*time.Millisecond)
	if n := gc.Stats().Runs - st.Runs; n < 2 {
		t.Errorf("Run for 100ms every 10ms: %d passes", n)
	}
	runs := gc.Stats().Runs
	gc.Run(ctx, time.Millisecond)
	if gc.Stats().Runs != runs {
		t.Error("Run with an ended context made a pass")
	}
}
