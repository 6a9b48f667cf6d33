package datapath_test

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// cloneServices returns a deep copy of svcs.
func cloneServices(svcs []datapath.Service) []datapath.Service {
	out := slices.Clone(svcs)
	for i := range out {
		out[i].Backends = slices.Clone(out[i].Backends)
	}
	return out
}

// sameServices fails the test unless svcs are as want.
func sameServices(t *testing.T, svcs, want []datapath.Service) {
	t.Helper()
	if reflect.DeepEqual(svcs, want) {
		return
	}
	brief := func(svcs []datapath.Service) string {
		var b strings.Builder
		for _, s := range svcs {
			fmt.Fprintf(&b, "[ID %d, Type %q, %s, %d backends] ", s.ID, s.Type, s.Frontend, len(s.Backends))
		}
		return b.String()
	}
	t.Errorf("UpsertServices changed its input:\n%s\nwant\n%s", brief(svcs), brief(want))
}

// TestUpsertServicesInputAndIDs: UpsertServices leaves the caller's slice
// as it was (no Type or ID filled in), and after a partial failure returns
// the IDs of the services it put.
func TestUpsertServicesInputAndIDs(t *testing.T) {
	// MaxServices 8: room for 64 backends.
	_, a, b, dp := twoPods(t, datapath.Config{MaxServices: 8})
	svc := func(front string, backends ...netip.AddrPort) datapath.Service {
		s := datapath.Service{Frontend: netip.MustParseAddrPort(front), Protocol: datapath.TCP}
		for _, be := range backends {
			s.Backends = append(s.Backends, datapath.Backend{Addr: be})
		}
		return s
	}
	port := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(b.IP, p) }
	batch := []datapath.Service{svc("10.96.0.1:80", port(80)), svc("10.96.0.2:80", port(81))}
	want := cloneServices(batch)
	ids, err := dp.UpsertServices(batch)
	if err != nil {
		t.Fatal(err)
	}
	sameServices(t, batch, want)
	idOf := func(front string) uint16 {
		t.Helper()
		listed, err := dp.Services()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range listed {
			if s.Frontend.String() == front {
				return s.ID
			}
		}
		return 0
	}
	if want := []uint16{idOf("10.96.0.1:80"), idOf("10.96.0.2:80")}; !slices.Equal(ids, want) || want[0] == 0 || want[1] == 0 {
		t.Errorf("IDs %v, want %v", ids, want)
	}

	// Two that fit, one with more backends than the table has room for,
	// one that would fit after it.
	var many []netip.AddrPort
	for i := range 70 {
		many = append(many, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 9, byte(i + 1)}), 80))
	}
	batch = []datapath.Service{svc("10.96.0.3:80", port(82)), svc("10.96.0.4:80", port(83)), svc("10.96.0.5:80", many...), svc("10.96.0.6:80", port(84))}
	want = cloneServices(batch)
	ids, err = dp.UpsertServices(batch)
	if !errors.Is(err, datapath.ErrServiceTableFull) {
		t.Fatalf("a service of 70 backends with room for 64: %v, want ErrServiceTableFull", err)
	}
	sameServices(t, batch, want)
	if want := []uint16{idOf("10.96.0.3:80"), idOf("10.96.0.4:80")}; !slices.Equal(ids, want) || want[0] == 0 || want[1] == 0 {
		t.Errorf("IDs after a partial failure %v, want those of the two services put, %v", ids, want)
	}
	if idOf("10.96.0.5:80") != 0 || idOf("10.96.0.6:80") != 0 {
		t.Error("the services from the one in error on were put")
	}
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
}

// TestAddEndpointRefusesHostMAC: a pod MAC that is its host device's own
// (every frame would be dropped as spoofed) is refused, naming both.
func TestAddEndpointRefusesHostMAC(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", ipA)
	b := node.AddPod(t, "b", ipB)
	dp := node.NewDatapath(t, datapath.Config{})
	ep := a.Endpoint()
	ep.MAC = a.HostMAC
	_, err := dp.AddEndpoint(ep)
	if !errors.Is(err, datapath.ErrInvalidEndpoint) || !strings.Contains(err.Error(), a.HostMAC.String()) ||
		!strings.Contains(err.Error(), a.HostIf) {
		t.Fatalf("AddEndpoint with the host device's MAC: %v, want ErrInvalidEndpoint naming the MAC and %s", err, a.HostIf)
	}
	assertEndpoints(t, dp)
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
}
