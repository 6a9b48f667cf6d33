package datapath_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// serviceTables reads the frontend entries (every scope) and the backends
// of dp's node, as the maps hold them.
func serviceTables(t *testing.T, dp *datapath.Datapath) ([]maps.ServiceEntry, map[uint32]maps.Backend) {
	t.Helper()
	node, err := instance.Open(pinPathOf(t, dp))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	s := tables.NewServices(tables.ServiceMaps{Services: node.Maps.Services, Backends: node.Maps.Backends, On: node.Maps.ServicesOn})
	entries, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	backends, err := s.Backends()
	if err != nil {
		t.Fatal(err)
	}
	return entries, backends
}

// TestServiceRefusedAddrs: frontends and backends no service may have are
// refused with ErrInvalidService naming them, and leave nothing behind;
// in a batch, one of them keeps the others out too.
func TestServiceRefusedAddrs(t *testing.T) {
	_, a, b, dp := twoPods(t, datapath.Config{})
	vip := netip.MustParseAddrPort("10.96.0.1:443")
	be := datapath.Backend{Addr: netip.AddrPortFrom(b.IP, 80)}
	svc := func(front string, typ datapath.ServiceType, backends ...string) datapath.Service {
		s := datapath.Service{Frontend: netip.MustParseAddrPort(front), Protocol: datapath.TCP, Type: typ, Backends: []datapath.Backend{be}}
		for _, addr := range backends {
			s.Backends = append(s.Backends, datapath.Backend{Addr: netip.MustParseAddrPort(addr)})
		}
		return s
	}
	podFrontend := svc(netip.AddrPortFrom(a.IP, 80).String(), datapath.ClusterIP)
	for _, c := range []struct {
		name string
		svc  datapath.Service
		want string
	}{
		{"broadcast frontend", svc("255.255.255.255:80", datapath.ClusterIP), "frontend 255.255.255.255:80 is the broadcast address"},
		{"broadcast external IP", svc("255.255.255.255:80", datapath.ExternalIP), "frontend 255.255.255.255:80 is the broadcast address"},
		{"multicast frontend", svc("224.0.0.1:80", datapath.ClusterIP), "frontend 224.0.0.1:80 is a multicast address"},
		{"multicast external IP", svc("239.1.2.3:53", datapath.ExternalIP), "frontend 239.1.2.3:53 is a multicast address"},
		{"loopback frontend", svc("127.0.0.1:80", datapath.ClusterIP), "frontend 127.0.0.1:80 is a loopback address"},
		{"loopback NodePort", svc("127.0.0.1:30080", datapath.NodePort), "frontend 127.0.0.1:30080 is a loopback address"},
		{"unspecified ClusterIP", svc("0.0.0.0:80", datapath.ClusterIP), "frontend 0.0.0.0:80: address 0.0.0.0 stands for every node address, for a NodePort only"},
		{"unspecified external IP", svc("0.0.0.0:80", datapath.ExternalIP), "frontend 0.0.0.0:80: address 0.0.0.0"},
		{"pod IP frontend", podFrontend, fmt.Sprintf("frontend %s:80 is the address of an endpoint (a pod) of this node", a.IP)},
		{"loopback backend", svc(vip.String(), datapath.ClusterIP, "127.0.0.1:8080"), "backend 127.0.0.1:8080 is a loopback address"},
		{"unspecified backend", svc(vip.String(), datapath.ClusterIP, "0.0.0.0:8080"), "backend 0.0.0.0:8080 is the unspecified address"},
		{"multicast backend", svc(vip.String(), datapath.ClusterIP, "224.0.0.5:8080"), "backend 224.0.0.5:8080 is a multicast address"},
		{"broadcast backend", svc(vip.String(), datapath.ClusterIP, "255.255.255.255:8080"), "backend 255.255.255.255:8080 is the broadcast address"},
		{"backend is the frontend", svc(vip.String(), datapath.ClusterIP, vip.String()), "backend 10.96.0.1:443 is the service's own frontend"},
		{"NodePort backend is the frontend", svc("172.18.0.2:30080", datapath.NodePort, "172.18.0.2:30080"), "backend 172.18.0.2:30080 is the service's own frontend"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := dp.UpsertService(c.svc)
			if !errors.Is(err, datapath.ErrInvalidService) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("UpsertService(%v): %v; want ErrInvalidService saying %q", c.svc, err, c.want)
			}
			// With a good service before it in a batch: neither is put.
			good := datapath.Service{Frontend: netip.MustParseAddrPort("10.96.0.2:80"), Protocol: datapath.TCP, Backends: []datapath.Backend{be}}
			if _, err := dp.UpsertServices([]datapath.Service{good, c.svc}); !errors.Is(err, datapath.ErrInvalidService) {
				t.Errorf("UpsertServices with it second: %v, want ErrInvalidService", err)
			}
			if entries, backends := serviceTables(t, dp); len(entries) != 0 || len(backends) != 0 {
				t.Errorf("after the refusal: entries %v, backends %v; want none", entries, backends)
			}
		})
	}
	// The forms that are fine: a NodePort on every node address (0.0.0.0),
	// a backend on the frontend's address at another port.
	for _, s := range []datapath.Service{svc("0.0.0.0:30080", datapath.NodePort), svc(vip.String(), datapath.ClusterIP, "10.96.0.1:8443")} {
		if _, err := dp.UpsertService(s); err != nil {
			t.Errorf("UpsertService(%v): %v", s, err)
		}
	}
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
}

// TestServicePodIPFrontend: a pod's address, on this node or inside
// another node's pod CIDR, is refused as a frontend (it would take the
// pod's traffic), and pods keep reaching each other.
func TestServicePodIPFrontend(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n1 := cn.cluster.Nodes[1]
	port := cn.b.ServeTCPEcho(t)
	for _, c := range []struct {
		front netip.AddrPort
		want  string
	}{
		{netip.AddrPortFrom(cn.a.IP, port), "is the address of an endpoint (a pod) of this node"},
		{netip.AddrPortFrom(cn.b.IP, port), fmt.Sprintf("is inside pod CIDR %s of node %s", n1.PodCIDR, n1.Name)},
		{netip.AddrPortFrom(n1.PodIP(99), 80), fmt.Sprintf("is inside pod CIDR %s of node %s", n1.PodCIDR, n1.Name)},
	} {
		for _, typ := range []datapath.ServiceType{datapath.ClusterIP, datapath.ExternalIP} {
			s := datapath.Service{Frontend: c.front, Protocol: datapath.TCP, Type: typ,
				Backends: []datapath.Backend{{Addr: netip.MustParseAddrPort("192.0.2.1:80")}}}
			_, err := cn.dps[0].UpsertService(s)
			if !errors.Is(err, datapath.ErrInvalidService) || !strings.Contains(err.Error(), c.front.String()+" "+c.want) {
				t.Errorf("%s frontend %s: %v; want ErrInvalidService saying %q", typ, c.front, err, c.want)
			}
		}
	}
	if entries, backends := serviceTables(t, cn.dps[0]); len(entries) != 0 || len(backends) != 0 {
		t.Errorf("after the refusals: entries %v, backends %v; want none", entries, backends)
	}
	cn.a.MustTCPEcho(t, cn.b.IP, port)
}

// TestServiceMaxServices: MaxServices counts services: 64 hold 64
// services of 4 backends each. A process adopting the node takes its
// MaxServices, and refuses another.
func TestServiceMaxServices(t *testing.T) {
	node, a, b, dp := twoPods(t, datapath.Config{MaxServices: 64})
	svcs := make([]datapath.Service, 64)
	for i := range svcs {
		svcs[i] = datapath.Service{Frontend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)}), 80), Protocol: datapath.TCP}
		for j := range 4 {
			svcs[i].Backends = append(svcs[i].Backends, datapath.Backend{Addr: netip.AddrPortFrom(b.IP, uint16(8000+4*i+j))})
		}
	}
	// Half in one batch, the others one by one.
	if _, err := dp.UpsertServices(svcs[:32]); err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs[32:] {
		if _, err := dp.UpsertService(s); err != nil {
			t.Fatal(err)
		}
	}
	got, err := dp.Services()
	if err != nil || len(got) != 64 {
		t.Fatalf("%d services (%v), want 64", len(got), err)
	}
	if _, backends := serviceTables(t, dp); len(backends) != 256 {
		t.Errorf("%d backends, want 256", len(backends))
	}
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))

	pin := pinPathOf(t, dp)
	for _, n := range []uint32{0, 64} {
		again, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, MaxServices: n})
		if err != nil {
			t.Fatalf("adopt with MaxServices %d: %v", n, err)
		}
		again.Close()
	}
	if _, err := datapath.New(datapath.Config{PinPath: pin, Netns: node.Netns, MaxServices: 65}); err == nil ||
		!strings.Contains(err.Error(), "MaxServices 65: the node at "+pin+" was made with 64") {
		t.Errorf("adopt with MaxServices 65: %v, want an error saying the node was made with 64", err)
	}
}

// TestServiceTableFull: a service the tables have no room for is refused
// with ErrServiceTableFull (and ErrMapFull) naming it, and leaves nothing
// behind, whichever table lacks room and whether it is new or grows; the
// services before it in a batch stay, and services that fit still go in.
func TestServiceTableFull(t *testing.T) {
	// MaxServices 8: 72 frontend table entries, 64 backends.
	_, a, b, dp := twoPods(t, datapath.Config{MaxServices: 8})
	remote := func(i int) datapath.Backend {
		return datapath.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 9, byte(i)}), 80)}
	}
	var full []datapath.Service // 7 services of 8 backends: 63 entries, 56 backends
	for i := range 7 {
		s := datapath.Service{Frontend: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(i + 1)}), 80), Protocol: datapath.TCP}
		for j := range 8 {
			s.Backends = append(s.Backends, remote(8*i+j+1))
		}
		full = append(full, s)
	}
	if _, err := dp.UpsertServices(full); err != nil {
		t.Fatal(err)
	}
	entriesBefore, backendsBefore := serviceTables(t, dp)
	before, err := dp.Services()
	if err != nil {
		t.Fatal(err)
	}
	unchanged := func(what string) {
		t.Helper()
		after, err := dp.Services()
		entries, backends := serviceTables(t, dp)
		if err != nil || fmt.Sprint(after) != fmt.Sprint(before) || fmt.Sprint(entries) != fmt.Sprint(entriesBefore) ||
			fmt.Sprint(backends) != fmt.Sprint(backendsBefore) {
			t.Errorf("after %s: services\n%v\nentries %v\nbackends %v\nwant them as before (%v)", what, after, entries, backends, err)
		}
	}

	// A NodePort with externalTrafficPolicy Local: its external entry
	// (3 local backends) and internal one (all 6), 4 + 7 entries, where 9
	// are free: the internal entry alone would fit.
	np := datapath.Service{Frontend: netip.MustParseAddrPort("0.0.0.0:30080"), Protocol: datapath.TCP, Type: datapath.NodePort, ExternalTrafficPolicyLocal: true}
	for _, be := range []netip.AddrPort{netip.AddrPortFrom(a.IP, 80), netip.AddrPortFrom(b.IP, 80), netip.AddrPortFrom(b.IP, 81)} {
		np.Backends = append(np.Backends, datapath.Backend{Addr: be})
	}
	np.Backends = append(np.Backends, remote(100), remote(101), remote(102))
	// Nine backends new to the node, where 8 are free.
	many := datapath.Service{Frontend: netip.MustParseAddrPort("10.96.0.100:80"), Protocol: datapath.TCP}
	for i := range 9 {
		many.Backends = append(many.Backends, remote(200+i))
	}
	// An existing service grown beyond the room.
	grown := full[0]
	for i := range 10 {
		grown.Backends = append(grown.Backends, remote(9+i)) // other services' backends
	}
	small := datapath.Service{Frontend: netip.MustParseAddrPort("10.96.0.101:80"), Protocol: datapath.TCP, Backends: []datapath.Backend{remote(1)}}
	for _, c := range []struct {
		name  string
		batch []datapath.Service
		want  string
	}{
		{"two scopes", []datapath.Service{np}, "upsert service 0.0.0.0:30080/TCP: service table full: map full: frontend table"},
		{"backends", []datapath.Service{many}, "upsert service 10.96.0.100:80/TCP: service table full: map full: backend table"},
		{"grown", []datapath.Service{grown}, "upsert service 10.96.0.1:80/TCP: service table full: map full: frontend table"},
		{"batch", []datapath.Service{full[1], np}, "upsert service 0.0.0.0:30080/TCP: service table full"},
	} {
		_, err := dp.UpsertServices(c.batch)
		if !errors.Is(err, datapath.ErrServiceTableFull) || !errors.Is(err, datapath.ErrMapFull) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want ErrServiceTableFull saying %q", c.name, err, c.want)
		}
		unchanged(c.name)
	}
	// What fits still goes in: a small service (a backend it shares), then
	// the full table refuses one more.
	if _, err := dp.UpsertService(small); err != nil {
		t.Fatalf("a service that fits: %v", err)
	}
	tooMany := small
	tooMany.Frontend = netip.MustParseAddrPort("10.96.0.102:80")
	tooMany.Backends = append(tooMany.Backends, remote(2), remote(3), remote(4), remote(5), remote(6), remote(7), remote(8))
	if _, err := dp.UpsertService(tooMany); !errors.Is(err, datapath.ErrServiceTableFull) {
		t.Errorf("a service of 8 backends with 7 entries free: %v, want ErrServiceTableFull", err)
	}
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
}
