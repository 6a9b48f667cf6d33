package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/leakcheck"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// TestCrossnode runs the demo in both modes and checks its claims from its
// output: the lxc TX counters, the FORWARD chains, the status lines.
func TestCrossnode(t *testing.T) {
	datapathtest.RequireRoot(t)
	for _, fallback := range []bool{false, true} {
		name := map[bool]string{false: "RedirectPeer", true: "Fallback"}[fallback]
		t.Run(name, func(t *testing.T) {
			r := names.Start(t)
			opts := options{Fallback: fallback, Count: 4, ID: r.ID}
			var out bytes.Buffer
			err := run(context.Background(), opts, &out)
			t.Logf("output:\n%s", &out)
			if err != nil {
				t.Fatal(err)
			}
			r.Check(t)

			// The first table is node1's: lxcA RX TX, eth0 RX TX; the
			// second node2's: eth0 RX TX, lxcB RX TX.
			for _, ph := range phases {
				rows := tableRows(t, &out, ph.name)
				for _, tx := range []struct {
					lxc string
					n   uint64
				}{{"lxcA", rows[0][1]}, {"lxcB", rows[1][3]}} {
					if !fallback && tx.n != 0 {
						t.Errorf("%s: %s TX delta %d, want 0 with bpf_redirect_peer", ph.name, tx.lxc, tx.n)
					}
					if fallback && tx.n < ph.minPackets(opts.Count) {
						t.Errorf("%s: %s TX delta %d, want at least %d with the fallback", ph.name, tx.lxc, tx.n, ph.minPackets(opts.Count))
					}
				}
			}
			for _, node := range []string{"node1", "node2"} {
				if want := "  " + node + ": 0 packets during the exchange"; !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
			for _, want := range []string{
				"Devices:          [eth0 172.18.0.2 (Direct Routing)]\n",
				"Devices:          [eth0 172.18.0.3 (Direct Routing)]\n",
				"Devices:          [eth0 172.18.0.4 (Direct Routing)]\n",
				"Native Routing:   10.0.0.0/8\n",
				"node1:\nHost Routing:     ",
				"  node2 172.18.0.3 10.0.1.0/24\n  node3 172.18.0.4 10.0.2.0/24\n",
				"  node1 172.18.0.2 10.0.0.0/24\n  node2 172.18.0.3 10.0.1.0/24\n",
				"Removed everything",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
		})
	}
}

// TestCrossnodeCheckClaims checks that the demo notices when a claim
// fails.
func TestCrossnodeCheckClaims(t *testing.T) {
	const count = 5
	// A measurement as each mode should give it: every pod's sends on its
	// lxc (RX) and on both eth0s, the lxc TX as the mode says.
	good := func(fallback bool) *measurement {
		m := &measurement{count: count}
		for _, ph := range phases {
			n := ph.minPackets(count)
			var d [numDevs]counts
			for i := range 2 {
				d[lxcOf[i]] = counts{rx: n}
				if fallback {
					d[lxcOf[i]].tx = n
				}
				d[eth0Of[i]] = counts{rx: n, tx: n}
			}
			m.deltas = append(m.deltas, d)
		}
		for i := range 2 {
			m.metrics[i] = new(maps.MetricTable)
			out, in := maps.MetricForwardNeigh, maps.MetricForwardPeer
			if fallback {
				out, in = maps.MetricForwardFIB, maps.MetricForwardRedirect
			}
			m.metrics[i][maps.FromContainer][out].Packets = 2*count + 3
			m.metrics[i][maps.FromNetdev][in].Packets = 2*count + 3
		}
		return m
	}
	for _, c := range []struct {
		name     string
		fallback bool
		change   func(*measurement)
		ok       bool
	}{
		{"peer", false, func(*measurement) {}, true},
		{"fallback", true, func(*measurement) {}, true},
		{"lxcB transmitted A's requests", false, func(m *measurement) { m.deltas[0][devLxcB].tx = count }, false},
		{"lxcA transmitted TCP", false, func(m *measurement) { m.deltas[2][devLxcA].tx = 1 }, false},
		{"fallback lxcA transmitted nothing", true, func(m *measurement) { m.deltas[1][devLxcA].tx = 0 }, false},
		{"node2 forwarded by the stack", false, func(m *measurement) { m.forward[1].during = 1 }, false},
		{"warm-up forwarded by the stack", true, func(m *measurement) { m.forward[0].total = 1 }, true},
		{"a reply lost on eth0", false, func(m *measurement) { m.deltas[1][devEth0A].rx = count - 1 }, false},
		{"pod A's sends not on lxcA", false, func(m *measurement) { m.deltas[0][devLxcA].rx = 0 }, false},
		{"delivered with bpf_redirect", false, func(m *measurement) {
			m.metrics[0][maps.FromNetdev][maps.MetricForwardRedirect].Packets = 1
		}, false},
		{"bpf_redirect_neigh despite fallback", true, func(m *measurement) {
			m.metrics[1][maps.FromContainer][maps.MetricForwardNeigh].Packets = 1
		}, false},
		{"forwarded by the stack, not the datapath", false, func(m *measurement) {
			m.metrics[1][maps.FromContainer][maps.MetricForwardNeigh].Packets = 0
		}, false},
		{"bpf_fib_lookup + bpf_redirect counts as forwarding", false, func(m *measurement) {
			m.metrics[1][maps.FromContainer][maps.MetricForwardFIB].Packets = 3
			m.metrics[1][maps.FromContainer][maps.MetricForwardNeigh].Packets = 2 * count
		}, true},
	} {
		m := good(c.fallback)
		c.change(m)
		err := checkClaims(m, options{Fallback: c.fallback, Count: count})
		if (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok %v", c.name, err, c.ok)
		}
	}
}

// TestCrossnodeCancel stops the demo as Ctrl-C would, just before the
// pings, and checks that it still removes everything.
func TestCrossnodeCancel(t *testing.T) {
	datapathtest.RequireRoot(t)
	names.CheckInterrupt(t, "Pinging", func(ctx context.Context, id string, out io.Writer) error {
		return run(ctx, options{ID: id}, out)
	})
}

// TestCrossnodeKeep leaves the cluster up, checks that it is there and
// that the printed removal command removes all of it.
func TestCrossnodeKeep(t *testing.T) {
	datapathtest.RequireRoot(t)
	r := names.Start(t)
	opts := options{Keep: true, Count: 1, ID: r.ID}
	var out bytes.Buffer
	err := run(context.Background(), opts, &out)
	t.Logf("output:\n%s", &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(pinPathsOf(opts.ID), netnsNames(opts.ID)...) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(routing.NetnsDir, p)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("--keep: %v", err)
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
	r.Check(t)
}

// names are how the demo names its namespaces and pin directories.
var names = leakcheck.Names{Netns: "hr-crossnode-", Pins: filepath.Join(loader.DefaultBPFFS, "hostrouting-crossnode-")}

// pinPathsOf and netnsNames list what run id makes: what --keep leaves.
func pinPathsOf(id string) []string {
	var paths []string
	for _, n := range []string{"node1", "node2", "node3"} {
		paths = append(paths, names.Pins+id+"-"+n)
	}
	return paths
}

func netnsNames(id string) []string {
	p := "hr-crossnode-" + id
	return []string{p + "-wire", p + "-node1", p + "-node2", p + "-node3", p + "-a", p + "-b"}
}

// tableRows returns the counters of phase's row in the two device tables,
// node1's first.
func tableRows(t *testing.T, out *bytes.Buffer, phase string) [][4]uint64 {
	t.Helper()
	var rows [][4]uint64
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) != 8 || strings.Join(f[:4], " ") != strings.Join(strings.Fields(phase), " ") {
			continue
		}
		var row [4]uint64
		for i := range row {
			n, err := strconv.ParseUint(f[4+i], 10, 64)
			if err != nil {
				t.Fatalf("row %q: %v", line, err)
			}
			row[i] = n
		}
		rows = append(rows, row)
	}
	if len(rows) != 2 {
		t.Fatalf("%d counter rows for %s, want 2 (node1's and node2's)", len(rows), phase)
	}
	return rows
}
