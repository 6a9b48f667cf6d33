package datapath_test

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
)

// maglevTable returns the value size of service id's Maglev table in the
// node at pin (4 bytes a slot), 0 if it has none.
func maglevTable(t *testing.T, pin string, id uint16) uint32 {
	t.Helper()
	node, err := instance.Open(pin)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	var inner *ebpf.Map
	if err := node.Maps.Maglev.Lookup(uint32(id), &inner); err != nil {
		return 0
	}
	defer inner.Close()
	info, err := inner.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ValueSize
}

// TestConfigReplaceAndMaglevOnline: a running node takes a new Maglev
// table size in place (it needed Remove, and so downtime, before): its
// services get tables of the new size and a pod reaches them throughout;
// zero fields keep the running node's config, unless Replace says the
// config is the whole of it, which clears the native routing CIDR and
// service CIDR and turns Maglev off.
func TestConfigReplaceAndMaglevOnline(t *testing.T) {
	node := datapathtest.NewNode(t, "replace")
	first := node.NewDatapath(t, datapath.Config{NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8"),
		ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12"), MaglevTableSize: 251})
	pin := pinPathOf(t, first)
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))
	a.AddEndpoint(t, first)
	b.AddEndpoint(t, first)
	port := b.ServeTCPEcho(t)
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	id, err := first.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP,
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(b.IP, port)}}})
	if err != nil {
		t.Fatal(err)
	}
	a.MustTCPEcho(t, vip.Addr(), vip.Port())
	if got := maglevTable(t, pin, id); got != 4*251 {
		t.Fatalf("Maglev table of %d bytes, want 4 × 251", got)
	}

	again, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, MaglevTableSize: 509})
	if err != nil {
		t.Fatalf("a new Maglev size on a running node: %v", err)
	}
	defer again.Close()
	if got := maglevTable(t, pin, id); got != 4*509 {
		t.Errorf("after the reload: Maglev table of %d bytes, want 4 × 509", got)
	}
	a.MustTCPEcho(t, vip.Addr(), vip.Port())
	st, err := again.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.NativeRoutingCIDR != netip.MustParsePrefix("10.0.0.0/8") {
		t.Errorf("a zero NativeRoutingCIDR without Replace: %s, want the running node's kept", st.NativeRoutingCIDR)
	}

	replaced, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	defer replaced.Close()
	if st, err = replaced.Status(); err != nil {
		t.Fatal(err)
	}
	if st.NativeRoutingCIDR.IsValid() || st.BackendSelection != "Random" {
		t.Errorf("Replace with zero fields: native routing CIDR %s, backends %s; want none and Random", st.NativeRoutingCIDR, st.BackendSelection)
	}
	if got := maglevTable(t, pin, id); got != 0 {
		t.Errorf("Maglev off: the service still has a table of %d bytes", got)
	}
	a.MustTCPEcho(t, vip.Addr(), vip.Port())
	// The service CIDR went with Replace: an unallocated address in it is
	// no longer refused (it leaves by the stack, nowhere here).
	if _, err := dialOutcome(a.Netns, "tcp4", netip.MustParseAddrPort("10.96.7.7:80")); errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("an address of the old service CIDR refused after Replace: %v", err)
	}
}
