package datapath_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// TestHostNetworkBackend: a ClusterIP whose backend is a host-network
// endpoint, nodeIP:port in a node's own network namespace (the API server
// behind kubernetes.default, any hostNetwork DaemonSet), answers over TCP
// and UDP a pod of that node — whose request the stack delivers locally
// and whose reply the stack sends into the pod, translated back on its
// way in — and a pod of the other node, from the ClusterIP. Before, the
// pod on the backend's node timed out: its replies came from nodeIP:port.
func TestHostNetworkBackend(t *testing.T) {
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	backend := netip.AddrPortFrom(n0.IP, 6443)
	datapathtest.ServeName(t, n0.Netns, backend, "node0")
	vip := netip.MustParseAddrPort("10.96.0.1:443")
	for _, dp := range cn.dps {
		for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
			if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: proto, Backends: []datapath.Backend{{Addr: backend}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, client := range []*datapathtest.Pod{cn.a, cn.b} {
		for _, proto := range []string{"tcp4", "udp4"} {
			for range 3 {
				a, err := datapathtest.AskName(client.Netns, proto, vip)
				if err != nil || a.Name != "node0" || a.Peer != vip.String() {
					t.Fatalf("%s from pod %s to %s (backend %s): %q from %s, %v", proto, client.Name, vip, backend, a.Name, a.Peer, err)
				}
				// The pod of the other node leaves masqueraded: the
				// node's address is outside the native routing CIDR.
				if client == cn.a && !strings.HasPrefix(a.Client, client.IP.String()+":") {
					t.Errorf("%s from pod %s: the backend saw %s, want the pod's own address", proto, client.Name, a.Client)
				}
			}
		}
	}
}
