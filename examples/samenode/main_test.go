package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/leakcheck"
	"github.com/hostrouting/hostrouting/loader"
)

// TestSamenode runs the demo in both modes and checks its claims on the
// destination's host-side TX counter.
func TestSamenode(t *testing.T) {
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

			// Rows "A → B  rxA txA  rxB txB": the destination is B, then A.
			destTX := map[string]uint64{"A → B": column(t, &out, "A → B", 4), "B → A": column(t, &out, "B → A", 2)}
			for phase, tx := range destTX {
				if !fallback && tx != 0 {
					t.Errorf("%s: destination's lxc TX delta %d, want 0 with bpf_redirect_peer", phase, tx)
				}
				if fallback && tx < uint64(opts.Count) {
					t.Errorf("%s: destination's lxc TX delta %d, want at least %d with the fallback", phase, tx, opts.Count)
				}
			}
			for _, want := range []string{"Host Routing:     ", "Endpoints:        2\n", "10.0.0.10:0 id=", "10.0.0.11:0 id=", "Removed everything"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
		})
	}
}

// TestSamenodeCheckClaim checks that the demo notices when its claim fails.
func TestSamenodeCheckClaim(t *testing.T) {
	pods := []*pod{{name: "A", hostIf: "lxcA"}, {name: "B", hostIf: "lxcB"}}
	peer := [][2]counts{{{5, 0}, {5, 0}}, {{5, 0}, {5, 0}}}    // bpf_redirect_peer
	crossed := [][2]counts{{{5, 5}, {5, 5}}, {{5, 5}, {5, 5}}} // bpf_redirect
	leaked := [][2]counts{{{5, 0}, {5, 5}}, {{5, 0}, {5, 0}}}  // A's requests left through lxcB
	for _, c := range []struct {
		fallback bool
		deltas   [][2]counts
		ok       bool
	}{{false, peer, true}, {false, leaked, false}, {false, crossed, false}, {true, crossed, true}, {true, peer, false}} {
		err := checkClaim(pods, c.deltas, options{Fallback: c.fallback, Count: 5})
		if (err == nil) != c.ok {
			t.Errorf("fallback %v, deltas %v: %v, want ok %v", c.fallback, c.deltas, err, c.ok)
		}
	}
}

// TestSamenodeCancel stops the demo as Ctrl-C would, just before the
// pings, and checks that it still removes everything.
func TestSamenodeCancel(t *testing.T) {
	datapathtest.RequireRoot(t)
	names.CheckInterrupt(t, "Pinging", func(ctx context.Context, id string, out io.Writer) error {
		return run(ctx, options{ID: id}, out)
	})
}

// names are how the demo names its namespaces and pin directory.
var names = leakcheck.Names{Netns: "hr-samenode-", Pins: filepath.Join(loader.DefaultBPFFS, "hostrouting-samenode-")}

// column returns field i of the counter table's row for phase ("A → B"):
// 1 and 2 are lxcA's RX and TX, 3 and 4 lxcB's.
func column(t *testing.T, out *bytes.Buffer, phase string, i int) uint64 {
	t.Helper()
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 7 && strings.Join(f[:3], " ") == phase {
			n, err := strconv.ParseUint(f[2+i], 10, 64)
			if err != nil {
				t.Fatalf("row %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no counter row for %s", phase)
	return 0
}
