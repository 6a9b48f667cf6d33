// Package datapathtest builds throwaway network topologies for tests: nodes
// and pods, each in its own network namespace, wired with the same veth and
// ptp-like addressing a CNI using hostrouting sets up, plus helpers that send
// real traffic between them and read counters.
//
// Everything is made in namespaces with unique names ("hr-<random>-<name>";
// see NetnsPrefix) and removed by t.Cleanup, also when the test fails. The
// machine's root network namespace is never changed. The fixtures need
// root; call RequireRoot (NewNode does) to skip otherwise, or set
// HOSTROUTING_REQUIRE_PRIVILEGED=1 to make that a failure.
//
// A pod that the code under test wires itself (a CNI plugin, plain `ip`
// commands, routing.SetupVeth with other options) becomes a Pod with
// Node.WrapPod, or Node.LookupPod where there is no testing.T; the Pod
// helpers then work on it, and removing it stays with whoever made it.
//
// StartKube runs a real Kubernetes API server (etcd and kube-apiserver on
// 127.0.0.1, no controllers) for a test, built once from source the first
// time (see `make kube-bin`), for agents driven by the Kubernetes API.
//
// A test of two pods on one node:
//
//	func TestPodToPod(t *testing.T) {
//		node := datapathtest.NewNode(t, "node1")
//		a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
//		b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))
//
//		a.MustPing(t, b.IP)
//		port := b.ServeTCPEcho(t)
//		if err := a.TCPEcho(b.IP, port, []byte("hello"), time.Second); err != nil {
//			t.Fatal(err)
//		}
//	}
package datapathtest
