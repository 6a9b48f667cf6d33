package datapath_test

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/nat"
)

// TestClosedHandle: after Close every method of a Datapath but Close
// returns an error wrapping ErrClosed, and nothing else: no nil GC or
// maps to panic on later. A second Close is no error.
func TestClosedHandle(t *testing.T) {
	node, a, _, dp := twoPods(t, datapath.Config{})
	c := node.AddPod(t, "c", ipC)
	pin := pinPathOf(t, dp)
	early, err := dp.GC(nat.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dp.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	svc := datapath.Service{Frontend: netip.MustParseAddrPort("10.96.0.1:80"), Protocol: datapath.TCP,
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(a.IP, 80)}}}
	other := datapath.Node{Name: "n", IP: netip.MustParseAddr("172.18.0.9"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}}
	calls := map[string]func() error{
		"GC": func() error {
			if gc, err := dp.GC(nat.Options{}); gc != nil || err != nil {
				return errors.Join(err, errors.New("got a GC"))
			}
			_, err := dp.GC(nat.Options{})
			return err
		},
		"PolicyMapReplacements": func() error {
			m, err := dp.PolicyMapReplacements()
			if m != nil {
				return errors.Join(err, errors.New("got maps"))
			}
			return err
		},
		"AddEndpoint":         func() error { _, err := dp.AddEndpoint(c.Endpoint()); return err },
		"RemoveEndpoint":      func() error { return dp.RemoveEndpoint(a.IP) },
		"EndpointByContainer": func() error { _, err := dp.EndpointByContainer("container", ""); return err },
		"Endpoints":           func() error { _, err := dp.Endpoints(); return err },
		"Endpoint":            func() error { _, err := dp.Endpoint(a.IP); return err },
		"EndpointStats":       func() error { _, err := dp.EndpointStats(a.IP); return err },
		"Attached":            func() error { _, err := dp.Attached(a.IP, datapath.FromContainer); return err },
		"DeviceAttached":      func() error { _, err := dp.DeviceAttached(a.HostIfIndex, datapath.FromNetdev); return err },
		"Devices":             func() error { _, err := dp.Devices(); return err },
		"Metrics":             func() error { _, err := dp.Metrics(); return err },
		"SetMonitor":          func() error { return dp.SetMonitor(datapath.MonitorDrops, 0) },
		"MonitorSettings":     func() error { _, _, err := dp.MonitorSettings(); return err },
		"OpenMonitor":         func() error { _, err := dp.OpenMonitor(); return err },
		"UpsertNode":          func() error { return dp.UpsertNode(other) },
		"DeleteNode":          func() error { return dp.DeleteNode(other.Name) },
		"Nodes":               func() error { _, err := dp.Nodes(); return err },
		"SetIngressPolicy":    func() error { return dp.SetIngressPolicy(a.IP, nil) },
		"ClearIngressPolicy":  func() error { return dp.ClearIngressPolicy(a.IP) },
		"UpsertService":       func() error { _, err := dp.UpsertService(svc); return err },
		"UpsertServices":      func() error { _, err := dp.UpsertServices([]datapath.Service{svc}); return err },
		"DeleteService":       func() error { return dp.DeleteService(1) },
		"Services":            func() error { _, err := dp.Services(); return err },
		"SetSocketLB":         func() error { return dp.SetSocketLB("") },
		"Status":              func() error { _, err := dp.Status(); return err },
		"MapUsage":            func() error { _, err := dp.MapUsage(); return err },
		"Remove":              func() error { return dp.Remove() },
	}
	// Every exported method is in the table.
	typ := reflect.TypeFor[*datapath.Datapath]()
	for i := range typ.NumMethod() {
		if name := typ.Method(i).Name; name != "Close" && calls[name] == nil {
			t.Errorf("method %s is not tested after Close", name)
		}
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for name := range calls {
			if !yield(name) {
				return
			}
		}
	})
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if err := calls[name](); !errors.Is(err, datapath.ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		})
	}
	// A GC made before Close fails its passes, and panics nowhere.
	if _, err := early.Collect(); err == nil {
		t.Error("a GC made before Close collected after it")
	}
	// The node runs on: a new handle has its endpoints.
	again := node.NewDatapath(t, datapath.Config{PinPath: pin})
	assertEndpoints(t, again, ipA, ipB)
}
