package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// TestSamenode runs the demo in both modes and checks its claims on the
// destination's host-side TX counter.
func TestSamenode(t *testing.T) {
	datapathtest.RequireRoot(t)
	for _, fallback := range []bool{false, true} {
		name := map[bool]string{false: "RedirectPeer", true: "Fallback"}[fallback]
		t.Run(name, func(t *testing.T) {
			opts := options{Fallback: fallback, Count: 4, ID: testID(t)}
			root := rootState(t)
			var out bytes.Buffer
			err := run(context.Background(), opts, &out)
			t.Logf("output:\n%s", &out)
			if err != nil {
				t.Fatal(err)
			}
			checkGone(t, opts.ID)
			if after := rootState(t); after != root {
				t.Errorf("root netns changed:\nbefore %s\nafter  %s", root, after)
			}

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
	opts := options{ID: testID(t)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := cancelOn{cancel: cancel, text: []byte("Pinging")}
	err := run(ctx, opts, &w)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("run: %v, want context.Canceled", err)
	}
	checkGone(t, opts.ID)
}

// cancelOn is a writer that calls cancel once text is written to it.
type cancelOn struct {
	bytes.Buffer
	cancel func()
	text   []byte
}

func (w *cancelOn) Write(p []byte) (int, error) {
	if bytes.Contains(p, w.text) {
		w.cancel()
	}
	return w.Buffer.Write(p)
}

// testID returns a run ID and removes whatever the run leaves behind in
// t.Cleanup, as a safety net.
func testID(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	id := "t" + hex.EncodeToString(b)
	t.Cleanup(func() {
		os.RemoveAll(pinPathOf(id))
		for _, ns := range netnsNames(id) {
			routing.DeleteNetns(ns)
		}
	})
	return id
}

func pinPathOf(id string) string {
	return filepath.Join(loader.DefaultBPFFS, "hostrouting-samenode-"+id)
}

func netnsNames(id string) []string {
	p := "hr-samenode-" + id
	return []string{p + "-node", p + "-a", p + "-b"}
}

// checkGone fails the test if a namespace or the pin directory of run id
// remains.
func checkGone(t *testing.T, id string) {
	t.Helper()
	for _, p := range append([]string{pinPathOf(id)}, netnsNames(id)...) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(routing.NetnsDir, p)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s remains after the demo", p)
		}
	}
}

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

// rootState sums up what the demo must not change in the root netns.
func rootState(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, i := range ifs {
		b.WriteString(i.Name + " ")
	}
	for _, key := range []string{"ipv4/ip_forward", "ipv4/conf/all/rp_filter", "ipv4/conf/default/rp_filter", "ipv6/conf/all/disable_ipv6", "ipv6/conf/default/disable_ipv6"} {
		v, _ := os.ReadFile("/proc/sys/net/" + key)
		b.WriteString(key + "=" + strings.TrimSpace(string(v)) + " ")
	}
	return b.String()
}
