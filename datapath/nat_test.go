package datapath_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// TestTranslationTables: a service flow and a masqueraded flow leave the
// conntrack and source NAT entries they should, with expiry times on the
// clock the Go side reads; the GC keeps them while they live, cuts them
// by a bound, and FlushEndpoint removes a pod's.
func TestTranslationTables(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	client, backend := cn.a, cn.b
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	beAddr := nameServer(t, backend)
	id, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: []datapath.Backend{{Addr: beAddr}}})
	if err != nil {
		t.Fatal(err)
	}
	outside := netip.AddrPortFrom(cn.cluster.Gateway, 9000)
	outsideHost(t, cn.cluster.Wire, outside)

	st, err := cn.dps[0].Status()
	if err != nil {
		t.Fatal(err)
	}
	node, err := instance.Open(st.PinPath)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	ct, snat := tables.NewConntrack(node.Maps.ConntrackTables()...), tables.NewSNAT(node.Maps.SNATTables()...)

	traffic := func() {
		t.Helper()
		if name, err := askName(client.Netns, "tcp4", vip); err != nil || name != "b" {
			t.Fatalf("TCP to %s: %q, %v", vip, name, err)
		}
		for _, proto := range []string{"tcp4", "udp4"} {
			if peer, err := seenAs(client.Netns, proto, outside); err != nil || !strings.HasPrefix(peer, n0.IP.String()+":") {
				t.Fatalf("%s to %s: seen as %q, %v; want node %s", proto, outside, peer, err, n0.IP)
			}
		}
		client.MustPing(t, cn.cluster.Gateway) // masqueraded by identifier
	}
	traffic()

	// The service flow: client → frontend, and the backend's reply.
	involving := func() (cts []maps.CTEntry, nats []maps.SNATEntry) {
		t.Helper()
		all, err := ct.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range all {
			if e.Src.Addr() == client.IP || e.Dst.Addr() == client.IP {
				cts = append(cts, e)
			}
		}
		allNAT, err := snat.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range allNAT {
			if e.Src.Addr() == client.IP || e.To.Addr() == client.IP {
				nats = append(nats, e)
			}
		}
		return cts, nats
	}
	cts, nats := involving()
	var svc, reply *maps.CTEntry
	for i, e := range cts {
		t.Logf("conntrack: %s (%s left)", e, e.Remaining)
		switch {
		case e.Dir == maps.CTService && e.Dst == vip:
			svc = &cts[i]
		case e.Dir == maps.CTReply && e.Src == beAddr:
			reply = &cts[i]
		}
		if e.Remaining <= 0 || e.Remaining > nat.DatapathTimeouts.TCPEstablished ||
			e.Flags&maps.CTClosing != 0 && e.Remaining > nat.DatapathTimeouts.TCPClosing {
			t.Errorf("%s: %s left, out of the datapath's timeouts (clock mismatch?)", e, e.Remaining)
		}
	}
	if svc == nil || reply == nil {
		t.Fatalf("conntrack lacks the service flow's entries: %v", cts)
	}
	if svc.RevNAT != id || svc.BackendID == 0 || reply.BackendID != svc.BackendID || reply.Dst != svc.Src ||
		svc.Packets == 0 || svc.Flags&maps.CTSeenReply == 0 {
		t.Errorf("service flow entries:\n%s\n%s", svc, reply)
	}
	if want := "TCP SVC " + svc.Src.String() + " -> " + vip.String() + " expires="; !strings.HasPrefix(svc.String(), want) {
		t.Errorf("String %q, want it to start %q", svc, want)
	}
	// The masqueraded flows: each an OUT entry and its IN.
	outs, echoes := 0, 0
	byKey := map[maps.SNATKey]maps.SNATEntry{}
	for _, e := range nats {
		byKey[e.Key()] = e
	}
	for _, e := range nats {
		t.Logf("NAT: %s (%s left)", e, e.Remaining)
		switch {
		case e.Dir == maps.NATOut && e.Dst == outside:
			outs++
		case e.Dir == maps.NATOut && e.Proto == maps.ICMP && e.Dst.Addr() == cn.cluster.Gateway:
			echoes++
			if !strings.HasPrefix(e.String(), "ICMP OUT ") {
				t.Errorf("String %q, want ICMP OUT …", e)
			}
		default:
			continue
		}
		in, ok := byKey[e.Reverse()]
		if e.To.Addr() != n0.IP || !ok || in.To != e.Src || e.Host || e.Remaining <= 0 {
			t.Errorf("masquerade entries: %s and its IN %s (found %v)", e, in, ok)
		}
	}
	if outs != 2 || echoes != 1 {
		t.Errorf("%d masqueraded flows to %s and %d echoes to %s in the NAT table, want TCP and UDP, and one",
			outs, outside, echoes, cn.cluster.Gateway)
	}

	// The GC keeps live entries.
	gc := nat.NewGC(ct, snat, nat.Options{})
	if _, err := gc.Collect(); err != nil {
		t.Fatal(err)
	}
	if c, n := involving(); len(c) != len(cts) || len(n) != len(nats) {
		t.Errorf("a pass over live entries left %d of %d conntrack and %d of %d NAT entries", len(c), len(cts), len(n), len(nats))
	}

	// The pod goes: its entries go.
	if n, err := gc.FlushEndpoint(client.IP); err != nil || n < len(cts)+len(nats) {
		t.Errorf("FlushEndpoint: %d, %v; want at least %d", n, err, len(cts)+len(nats))
	}
	if c, n := involving(); len(c)+len(n) != 0 {
		t.Errorf("after FlushEndpoint: %v %v", c, n)
	}
	traffic() // the flows start afresh

	// Bounds: the closed flows' entries (closing: the service flow's, and
	// the TCP masquerade flow's, marked both ways by its FINs) and the UDP
	// and ICMP flows' go after a second.
	time.Sleep(2500 * time.Millisecond)
	cut := nat.NewGC(ct, snat, nat.Options{Timeouts: nat.Timeouts{TCPClosing: time.Second, Other: time.Second}})
	pass, err := cut.Collect()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pass with 1s bounds: %+v", pass)
	c, n := involving()
	if len(c) != 0 {
		t.Errorf("conntrack after a pass with a 1s closing bound: %v", c)
	}
	if len(n) != 0 || pass.Conntrack.Capped == 0 || pass.SNAT.Capped == 0 {
		t.Errorf("after the pass: NAT %v, pass %+v; want every entry capped", n, pass)
	}
}
