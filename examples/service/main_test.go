package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/leakcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// TestMain lets the test binary be the demo's pod processes, as the demo
// binary is (childMain).
func TestMain(m *testing.M) {
	if code, ok := childMain(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// names are how the demo names its namespaces and pin directories.
var names = leakcheck.Names{Netns: "hr-service-", Pins: filepath.Join(loader.DefaultBPFFS, "hostrouting-service-")}

// start is names.Start that also ends, should the run's own teardown
// fail, the run's processes and removes its cgroup: before Start's safety
// net deletes the namespaces.
func start(t *testing.T) *leakcheck.Run {
	t.Helper()
	r := names.Start(t)
	t.Cleanup(func() {
		for _, pid := range runProcesses(r.ID) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if root, err := cgroup2Root(); err == nil {
			removeCgroup(filepath.Join(root, "hr-service-"+r.ID))
		}
	})
	return r
}

// TestService runs the demo with and without socket LB and checks its
// claims from its output: who answered, what the client's socket was
// connected to, the service list, the empty greps; and that it left
// nothing behind.
func TestService(t *testing.T) {
	datapathtest.RequireRoot(t)
	for _, socketLB := range []bool{true, false} {
		name := map[bool]string{true: "SocketLB", false: "TCLB"}[socketLB]
		t.Run(name, func(t *testing.T) {
			r := start(t)
			opts := options{SocketLB: socketLB, Count: 2, ID: r.ID}
			var out bytes.Buffer
			err := run(context.Background(), opts, &out)
			t.Logf("output:\n%s", &out)
			if err != nil {
				t.Fatal(err)
			}
			checkGone(t, r)

			rows := requestRows(t, out.String())
			if want := 2*opts.Count + 4*opts.Count; len(rows) < want {
				t.Errorf("%d request rows, want at least %d", len(rows), want)
			}
			backends := map[string]string{"web-control-plane": "10.0.0.10", "web-worker": "10.0.1.10", "web-worker2": "10.0.2.10"}
			seen := map[string]bool{}
			nodePorts := map[string]int{}
			for _, row := range rows {
				url, socket, answered, saw := row[2], row[3], row[4], row[5]
				ip, ok := backends[answered]
				if !ok {
					t.Errorf("row %q: not answered by a web pod", row)
					continue
				}
				if url != "http://10.96.0.100:80/" {
					nodePorts[url]++
					if socket != strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/") {
						t.Errorf("row %q: a NodePort's socket peer is the NodePort", row)
					}
					continue
				}
				seen[answered] = true
				if want := map[bool]string{true: ip + ":80", false: "10.96.0.100:80"}[socketLB]; socket != want {
					t.Errorf("row %q: socket peer %s, want %s", row, socket, want)
				}
				if !strings.HasPrefix(saw, "10.0.2.20:") {
					t.Errorf("row %q: the backend saw %s, want pod net's address", row, saw)
				}
			}
			if len(seen) != 3 {
				t.Errorf("the ClusterIP was answered by %v, want all three backends", seen)
			}
			for url, n := range map[string]int{"http://172.18.0.2:32000/": 2 * opts.Count, "http://172.18.0.3:32000/": opts.Count, "http://172.18.0.4:32000/": opts.Count} {
				if nodePorts[url] != n {
					t.Errorf("%d requests to %s, want %d", nodePorts[url], url, n)
				}
			}
			for _, want := range []string{
				"ID   Frontend                   Service Type Backend\n" +
					"1    10.96.0.100:80/TCP         ClusterIP    1 => 10.0.0.10:80/TCP (active)\n" +
					"                                             2 => 10.0.1.10:80/TCP (active)\n" +
					"                                             3 => 10.0.2.10:80/TCP (active)\n" +
					"2    172.18.0.2:32000/TCP       NodePort     1 => 10.0.0.10:80/TCP (active)\n" +
					"                                             2 => 10.0.1.10:80/TCP (active)\n" +
					"                                             3 => 10.0.2.10:80/TCP (active)\n",
				"  web    NodePort  10.96.0.100  <none>       80:32000/TCP\n",
				"All claims hold",
				"Removed everything",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
			// Every node: both greps find nothing, and conntrack has the
			// control ping (nf_conntrack is on) and no TCP flow.
			for _, n := range nodeNames {
				ns := "hr-service-" + r.ID + "-" + n
				for _, grep := range []string{
					"$ ip netns exec " + ns + " iptables-save | grep -E '32000|10\\.96\\.0\\.100'\n    nothing\n",
					"$ ip netns exec " + ns + " conntrack -L | grep -E 'port=32000\\b|=10\\.96\\.0\\.100\\b'\n    nothing\n    (conntrack -L: 1 flow, 0 of them TCP:)\n      icmp ",
				} {
					if !strings.Contains(out.String(), grep) {
						t.Errorf("output lacks %q", grep)
					}
				}
			}
		})
	}
}

// requestRows returns the rows of the request table: #, client, URL,
// socket peer, answered by, backend saw.
func requestRows(t *testing.T, out string) [][]string {
	t.Helper()
	var rows [][]string
	in := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "#":
			in = true
		case in && len(f) == 0:
			return rows
		case in:
			if f[1] == "net" && len(f) > 2 && f[2] == "(worker2)" { // "net (worker2)"
				f = append(f[:1], f[2:]...)
				f[1] = "net"
			}
			if len(f) != 6 {
				t.Fatalf("request row %q: %d columns, want 6", line, len(f))
			}
			rows = append(rows, f)
		}
	}
	t.Fatal("no request table in the output")
	return nil
}

// TestServiceCheckClaims checks that the demo notices when a claim fails.
func TestServiceCheckClaims(t *testing.T) {
	c := newCluster("x")
	c.wire = &topology.Wire{NetnsName: c.prefix + "-wire"}
	cp, w2 := c.nodes[0], c.nodes[2]
	nodePortOf := func(n *node) netip.AddrPort { return netip.AddrPortFrom(n.ip, nodePort) }
	answer := func(req request, backend *pod, saw netip.Addr) result {
		socket := req.url
		if req.node == nil && req.cgroup != "" {
			socket = netip.AddrPortFrom(backend.ip, targetPort)
		}
		return result{request: req, backend: backend, saw: netip.AddrPortFrom(saw, 40000), socket: socket, peer: req.url}
	}
	// A run as it should go, with socket LB or without.
	good := func(socketLB bool) ([]result, []datapath.Service, []netfilter) {
		pod := request{client: "net", url: clusterIP}
		if socketLB {
			pod.cgroup = "/sys/fs/cgroup/x"
		}
		var rs []result
		for _, w := range c.web {
			rs = append(rs, answer(pod, w, c.client.ip))
		}
		rs = append(rs, answer(pod, c.web[1], c.client.ip))
		pod.url, pod.node = nodePortOf(cp), cp
		rs = append(rs, answer(pod, c.web[0], w2.ip), answer(pod, c.web[2], cp.ip))
		for _, n := range c.nodes {
			wire := request{client: "wire", url: nodePortOf(n), node: n}
			for _, w := range c.web[:2] {
				saw := n.ip
				if w.node == n {
					saw = topology.Gateway.Addr()
				}
				rs = append(rs, answer(wire, w, saw))
			}
		}
		var backends []datapath.Backend
		for _, w := range c.web {
			backends = append(backends, datapath.Backend{Addr: netip.AddrPortFrom(w.ip, targetPort)})
		}
		svcs := []datapath.Service{
			{ID: 1, Frontend: clusterIP, Protocol: datapath.TCP, Type: datapath.ClusterIP, Backends: backends},
			{ID: 2, Frontend: nodePortOf(cp), Protocol: datapath.TCP, Type: datapath.NodePort, Backends: backends},
		}
		var nfs []netfilter
		for _, n := range c.nodes {
			nfs = append(nfs, netfilter{node: n, rules: []string{"*filter", kubeProxyRule, "COMMIT"}, flows: []string{"icmp ..."}, controlFlow: true})
		}
		return rs, svcs, nfs
	}
	for _, tc := range []struct {
		name     string
		socketLB bool
		change   func([]result, []datapath.Service, []netfilter) ([]result, []datapath.Service, []netfilter)
		ok       bool
	}{
		{"socket LB", true, nil, true},
		{"tc LB", false, nil, true},
		{"a request failed", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[5].err = errors.New("connection refused")
			return rs, s, n
		}, false},
		{"a backend never answered the ClusterIP", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[2] = answer(rs[2].request, c.web[0], c.client.ip)
			return rs, s, n
		}, false},
		{"too few ClusterIP requests", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			return rs[1:], s, n
		}, false},
		{"a NodePort request missing", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			return rs[:len(rs)-1], s, n
		}, false},
		{"socket LB did not translate", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[0].socket = clusterIP
			return rs, s, n
		}, false},
		{"tc LB connected to a backend", false, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[0].socket = netip.AddrPortFrom(rs[0].backend.ip, targetPort)
			return rs, s, n
		}, false},
		{"getpeername showed the backend", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[0].peer = rs[0].socket
			return rs, s, n
		}, false},
		{"the ClusterIP's backend saw a masqueraded client", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[1].saw = netip.AddrPortFrom(w2.ip, 40000)
			return rs, s, n
		}, false},
		{"pod to NodePort not masqueraded", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[4].saw = netip.AddrPortFrom(c.client.ip, 40000)
			return rs, s, n
		}, false},
		{"remote backend saw the wire client", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			rs[7].saw = netip.AddrPortFrom(topology.Gateway.Addr(), 40000)
			return rs, s, n
		}, false},
		{"a service missing", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			return rs, s[:1], n
		}, false},
		{"another node's NodePort listed", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			s[1].Frontend = nodePortOf(w2)
			return rs, s, n
		}, false},
		{"iptables has the service", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			n[1].ruleMatches = []string{"-A KUBE-NODEPORTS -p tcp --dport 32000 -j KUBE-EXT-X"}
			return rs, s, n
		}, false},
		{"not the node's iptables", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			n[0].rules = nil
			return rs, s, n
		}, false},
		{"conntrack has the service", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			n[2].flowMatches = []string{"tcp 6 117 TIME_WAIT src=10.0.2.20 dst=172.18.0.2 sport=4000 dport=32000"}
			return rs, s, n
		}, false},
		{"conntrack has a TCP flow", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			n[2].tcpFlows = 1
			return rs, s, n
		}, false},
		{"conntrack is off", true, func(rs []result, s []datapath.Service, n []netfilter) ([]result, []datapath.Service, []netfilter) {
			n[0].controlFlow = false
			return rs, s, n
		}, false},
	} {
		rs, svcs, nfs := good(tc.socketLB)
		if tc.change != nil {
			rs, svcs, nfs = tc.change(rs, svcs, nfs)
		}
		err := checkClaims(c, options{SocketLB: tc.socketLB, Count: 2}, rs, svcs, nfs)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

// TestServiceCancel stops the demo as Ctrl-C would, just before the
// requests, and checks that it still removes everything.
func TestServiceCancel(t *testing.T) {
	datapathtest.RequireRoot(t)
	var id string
	names.CheckInterrupt(t, "Requests", func(ctx context.Context, runID string, out io.Writer) error {
		id = runID
		return run(ctx, options{SocketLB: true, ID: runID}, out)
	})
	t.Cleanup(func() { // before the namespaces go, should the run's teardown fail
		for _, pid := range runProcesses(id) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	checkNoProcesses(t, id)
	checkNoCgroup(t, id)
}

// TestServiceKeep leaves the cluster up, checks that the service still
// answers, and that the printed removal command removes all of it.
func TestServiceKeep(t *testing.T) {
	datapathtest.RequireRoot(t)
	r := start(t)
	opts := options{Keep: true, SocketLB: true, Count: 1, ID: r.ID}
	var out bytes.Buffer
	err := run(context.Background(), opts, &out)
	t.Logf("output:\n%s", &out)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(opts.ID)
	c.wire = &topology.Wire{NetnsName: c.prefix + "-wire"}
	for _, p := range append(pinPaths(c), netnsNames(c)...) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(routing.NetnsDir, p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("--keep: %v", err)
		}
	}
	if pids := runProcesses(opts.ID); len(pids) != len(c.web) {
		t.Errorf("--keep: processes %v of the run live on, want the %d web pods' servers", pids, len(c.web))
	}
	// The web pods still serve, the datapaths still balance.
	for _, req := range []request{
		{client: "net", netns: c.client.netns, url: clusterIP},
		{client: "wire", netns: c.wire.NetnsName, url: netip.AddrPortFrom(c.nodes[1].ip, nodePort), node: c.nodes[1]},
	} {
		if res := req.do(context.Background(), c); res.err != nil {
			t.Errorf("after --keep, %s → %s: %v", req.client, req.url, res.err)
		}
	}

	_, remove, ok := strings.Cut(out.String(), "Remove it with:\n")
	if !ok {
		t.Fatal("output lacks the removal command")
	}
	remove = strings.TrimSpace(remove)
	if o, err := exec.Command("sh", "-c", remove).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", remove, err, o)
	}
	checkGone(t, r)
}

// checkGone fails t for whatever run r left behind: namespaces, pins,
// a changed root namespace, the cgroup, processes.
func checkGone(t *testing.T, r *leakcheck.Run) {
	t.Helper()
	r.Check(t)
	checkNoCgroup(t, r.ID)
	checkNoProcesses(t, r.ID)
}

func checkNoCgroup(t *testing.T, id string) {
	t.Helper()
	root, err := cgroup2Root()
	if err != nil {
		return // socket LB could not have run
	}
	if _, err := os.Stat(filepath.Join(root, "hr-service-"+id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cgroup of run %s remains (%v)", id, err)
	}
}

// checkNoProcesses fails t if a process of run id lives on (a killed one
// may take a moment to go).
func checkNoProcesses(t *testing.T, id string) {
	t.Helper()
	var left []int
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if left = runProcesses(id); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, pid := range left {
		t.Errorf("process %d of run %s lives on", pid, id)
	}
}

// runProcesses returns the processes of run id: those with its runEnv.
func runProcesses(id string) []int {
	mark := []byte(runEnv + "=hr-service-" + id + "\x00")
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		if env, err := os.ReadFile(p); err == nil && bytes.Contains(env, mark) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// pinPaths and netnsNames list what a run makes: what --keep leaves.
func pinPaths(c *cluster) []string {
	var paths []string
	for _, n := range c.nodes {
		paths = append(paths, n.pinPath)
	}
	return paths
}

func netnsNames(c *cluster) []string {
	ns := []string{c.wire.NetnsName}
	for _, n := range c.nodes {
		ns = append(ns, n.netns)
	}
	for _, p := range c.pods() {
		ns = append(ns, p.netns)
	}
	return ns
}
