// Package embedder is a module of its own, outside hostrouting's, that
// uses hostrouting as an outside CNI would: it imports datapath and
// datapathtest only, and its tests check that this costs it no module
// beyond cilium/ebpf, netlink, netns and x/sys (and what they need).
package embedder

import (
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// TestEmbedder: a node datapath, two pods, a ClusterIP and real traffic,
// as README and go doc show it.
func TestEmbedder(t *testing.T) {
	node := datapathtest.NewNode(t, "embedder")
	dp := node.NewDatapath(t, datapath.Config{})
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))
	a.AddEndpoint(t, dp)
	b.AddEndpoint(t, dp)
	a.MustPing(t, b.IP)
	port := b.ServeTCPEcho(t)
	vip := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.10"), 80)
	if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP,
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(b.IP, port)}}}); err != nil {
		t.Fatal(err)
	}
	a.MustTCPEcho(t, vip.Addr(), vip.Port())
}

// The modules hostrouting's own go.mod may bring an embedder: the four it
// is built on, and the two of theirs that Go's module graph pruning keeps
// listed there.
var hostroutingRequires = []string{
	"github.com/cilium/ebpf", "github.com/vishvananda/netlink", "github.com/vishvananda/netns",
	"golang.org/x/sys", "golang.org/x/net", "golang.org/x/sync",
}

// TestModuleGraph: hostrouting requires nothing but hostroutingRequires,
// no module of the tools and examples (Kubernetes, Prometheus, gopacket,
// CNI) reaches this module's graph, and the packages this test binary
// links come from hostrouting, cilium/ebpf, netlink, netns and x/sys only.
func TestModuleGraph(t *testing.T) {
	graph := goCmd(t, "mod", "graph")
	var requires []string
	for _, line := range strings.Split(graph, "\n") {
		from, to, ok := strings.Cut(line, " ")
		if ok && strings.HasPrefix(from, "github.com/hostrouting/hostrouting@") {
			if mod, _, _ := strings.Cut(to, "@"); mod != "go" && mod != "toolchain" {
				requires = append(requires, mod)
			}
		}
	}
	for _, mod := range requires {
		if !slices.Contains(hostroutingRequires, mod) {
			t.Errorf("hostrouting requires %s: want only %v", mod, hostroutingRequires)
		}
	}
	all := goCmd(t, "list", "-m", "all")
	for _, heavy := range []string{"k8s.io/", "github.com/prometheus/", "github.com/google/gopacket", "github.com/containernetworking/"} {
		if strings.Contains(all, heavy) {
			t.Errorf("go list -m all names %s…:\n%s", heavy, all)
		}
	}
	t.Logf("go list -m all: %d modules", strings.Count(all, "\n"))
	linked := goCmd(t, "list", "-deps", "-test", "-f", "{{if .Module}}{{.Module.Path}}{{end}}", ".")
	for _, mod := range strings.Fields(linked) {
		switch mod {
		case "example.com/embedder", "github.com/hostrouting/hostrouting", "github.com/cilium/ebpf",
			"github.com/vishvananda/netlink", "github.com/vishvananda/netns", "golang.org/x/sys":
		default:
			t.Errorf("the test binary links a package of %s", mod)
		}
	}
}

func goCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}
