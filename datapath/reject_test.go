package datapath_test

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// dialOutcome dials dst over network ("tcp4" or "udp4") from the network
// namespace at netns and returns how long it took to fail, and why: for
// UDP a connected socket sends a datagram and reads the ICMP error the
// datapath answers it with. A second is the most it waits.
func dialOutcome(netns, network string, dst netip.AddrPort) (time.Duration, error) {
	var took time.Duration
	err := routing.Do(netns, func() error {
		start := time.Now()
		defer func() { took = time.Since(start) }()
		c, err := net.DialTimeout(network, dst.String(), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if network == "tcp4" {
			return errors.New("connected")
		}
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("hello?")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 64))
		return err
	})
	return took, err
}

// checkRefused fails t unless dialling dst from netns fails with
// ECONNREFUSED within 100 ms.
func checkRefused(t *testing.T, what, netns, network string, dst netip.AddrPort) {
	t.Helper()
	took, err := dialOutcome(netns, network, dst)
	if !errors.Is(err, syscall.ECONNREFUSED) || took > 100*time.Millisecond {
		t.Errorf("%s: %s to %s: %v after %v, want ECONNREFUSED within 100ms", what, network, dst, err, took)
	}
}

// TestRejectNoBackend (kube-proxy e2e "should be rejected when no
// endpoints exist", "...for a Service with only terminating endpoints"):
// a pod's connect() to a ClusterIP without usable backends (none, or only
// a terminating one), to a port its service lacks and to an unallocated
// address of the service CIDR fails with ECONNREFUSED at once, over TCP
// and UDP; so does a client on the wire dialling such a NodePort. Before,
// each of them hung until its connect timeout (about 2 minutes for TCP).
func TestRejectNoBackend(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16")})
	n0 := cn.cluster.Nodes[0]
	empty := netip.MustParseAddrPort("10.96.0.20:80")
	terminating := netip.MustParseAddrPort("10.96.0.21:80")
	nodePort := netip.AddrPortFrom(n0.IP, 30090)
	backend := nameServer(t, cn.b)
	for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		for _, s := range []datapath.Service{
			{Frontend: empty, Protocol: proto},
			{Frontend: terminating, Protocol: proto, Backends: []datapath.Backend{{Addr: backend, State: datapath.BackendTerminating}}},
			{Frontend: nodePort, Protocol: proto, Type: datapath.NodePort},
		} {
			if _, err := cn.dps[0].UpsertService(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	before := metricsNow(t, cn.dps[0]).Total(maps.MetricReject)
	for _, network := range []string{"tcp4", "udp4"} {
		checkRefused(t, "no backend", cn.a.Netns, network, empty)
		checkRefused(t, "a terminating backend only", cn.a.Netns, network, terminating)
		checkRefused(t, "a port the service lacks", cn.a.Netns, network, netip.AddrPortFrom(empty.Addr(), 81))
		checkRefused(t, "an unallocated ClusterIP", cn.a.Netns, network, netip.MustParseAddrPort("10.96.7.7:80"))
		checkRefused(t, "a NodePort without backends, from the wire", cn.cluster.Wire, network, nodePort)
	}
	if got := metricsNow(t, cn.dps[0]).Total(maps.MetricReject).Packets - before.Packets; got < 10 {
		t.Errorf("the datapath rejected %d packets, want the 10 refusals' (no socket LB here)", got)
	}
}

// TestRejectNoBackendSocketLB: a socket that socket LB serves is refused
// at connect() (TCP) or send (UDP) with ECONNREFUSED, before any packet.
func TestRejectNoBackendSocketLB(t *testing.T) {
	cgroup := datapathtest.NewCgroup(t)
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{CgroupPath: cgroup,
		ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16")})
	empty := netip.MustParseAddrPort("10.96.0.20:80")
	for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
		if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: empty, Protocol: proto}); err != nil {
			t.Fatal(err)
		}
	}
	before := metricsNow(t, cn.dps[0]).Total(maps.MetricReject)
	for _, network := range []string{"tcp4", "udp4"} {
		for _, dst := range []netip.AddrPort{empty, netip.MustParseAddrPort("10.96.7.7:80")} {
			if got, _ := askFromCgroup(t, cgroup, cn.a.Netns, "refused-"+network, dst); got != "refused" {
				t.Errorf("socket LB, %s to %s: %s, want refused within 100ms", network, dst, got)
			}
		}
	}
	// Refused at the socket: no packet left for the tc load balancer to
	// reject.
	if after := metricsNow(t, cn.dps[0]).Total(maps.MetricReject); after != before {
		t.Errorf("the tc load balancer rejected %d packets: want the sockets refused before any packet", after.Packets-before.Packets)
	}
}

// clusterIPTable reads the ClusterIP addresses dp's node rejects the
// other ports of.
func clusterIPTable(t *testing.T, dp *datapath.Datapath) map[netip.Addr]bool {
	t.Helper()
	node, err := instance.Open(pinPathOf(t, dp))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	got, err := tables.NewServices(tables.ServiceMaps{ClusterIPs: node.Maps.ClusterIPs}).ClusterIPs()
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestRejectWrongPort: without a service CIDR in Config, a ClusterIP on a
// port or protocol its services lack is refused all the same (as
// kube-proxy's REJECT rules and Cilium's wildcard frontends do), via the
// tc load balancer and via socket LB; NodePorts and external IPs are not
// ClusterIPs (a node address's other ports are the node's own). Before,
// such a packet left by the default route and its sender hung. Deleting
// the last service at an address takes the address out.
func TestRejectWrongPort(t *testing.T) {
	cgroup := datapathtest.NewCgroup(t)
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	backend := nameServer(t, cn.b)
	vip := netip.MustParseAddrPort("10.96.0.30:53")
	var ids []uint16
	for _, s := range []datapath.Service{
		{Frontend: vip, Protocol: datapath.UDP, Backends: []datapath.Backend{{Addr: backend}}},
		{Frontend: netip.AddrPortFrom(vip.Addr(), 80), Protocol: datapath.TCP},
		{Frontend: netip.AddrPortFrom(n0.IP, 30091), Protocol: datapath.TCP, Type: datapath.NodePort},
		{Frontend: netip.MustParseAddrPort("198.51.100.9:80"), Protocol: datapath.TCP, Type: datapath.ExternalIP},
	} {
		id, err := cn.dps[0].UpsertService(s)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if got := clusterIPTable(t, cn.dps[0]); len(got) != 1 || !got[vip.Addr()] {
		t.Fatalf("ClusterIP table %v, want only %s", got, vip.Addr())
	}
	wrong := netip.AddrPortFrom(vip.Addr(), 8080)
	for _, network := range []string{"tcp4", "udp4"} {
		checkRefused(t, "tc: a port the ClusterIP lacks", cn.a.Netns, network, wrong)
	}
	checkRefused(t, "tc: TCP to a UDP-only port", cn.a.Netns, "tcp4", vip)
	for _, network := range []string{"tcp4", "udp4"} {
		if got, _ := askFromCgroup(t, cgroup, cn.a.Netns, "refused-"+network, wrong); got != "refused" {
			t.Errorf("no socket LB yet, %s to %s: %s, want refused by tc", network, wrong, got)
		}
	}
	if err := cn.dps[0].SetSocketLB(cgroup); err != nil {
		t.Fatal(err)
	}
	before := metricsNow(t, cn.dps[0]).Total(maps.MetricReject)
	for _, network := range []string{"tcp4", "udp4"} {
		if got, _ := askFromCgroup(t, cgroup, cn.a.Netns, "refused-"+network, wrong); got != "refused" {
			t.Errorf("socket LB, %s to %s: %s, want refused", network, wrong, got)
		}
	}
	if after := metricsNow(t, cn.dps[0]).Total(maps.MetricReject); after != before {
		t.Errorf("the tc load balancer rejected %d packets: want the sockets refused before any packet", after.Packets-before.Packets)
	}
	// The address stays while a service has it.
	if err := cn.dps[0].DeleteService(ids[1]); err != nil {
		t.Fatal(err)
	}
	if got := clusterIPTable(t, cn.dps[0]); !got[vip.Addr()] {
		t.Errorf("ClusterIP table %v after deleting one of its services, want %s", got, vip.Addr())
	}
	if err := cn.dps[0].DeleteService(ids[0]); err != nil {
		t.Fatal(err)
	}
	if got := clusterIPTable(t, cn.dps[0]); len(got) != 0 {
		t.Errorf("ClusterIP table %v after deleting its last service, want empty", got)
	}
}
