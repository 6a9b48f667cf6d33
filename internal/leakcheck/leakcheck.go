// Package leakcheck checks that a run of an example or the benchmark leaves
// nothing behind: no network namespace or BPF pin directory of its own and
// no change to the root network namespace. It serves their tests, and the
// benchmark's own final check, and is not a public API.
package leakcheck

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/routing"
)

// Names say how a program names what it makes for a run with ID id:
// namespaces Netns+id and Netns+id+"-*" under routing.NetnsDir, pin
// directories Pins+id and Pins+id+"-*".
type Names struct {
	Netns string // such as "hr-samenode-"
	Pins  string // a path, such as "/sys/fs/bpf/hostrouting-samenode-"
}

// Leftovers returns the paths of the namespaces and pin directories of run
// id that exist: after a run, what it left behind.
func (n Names) Leftovers(id string) []string {
	return append(n.netns(id), n.pins(id)...)
}

func (n Names) netns(id string) []string {
	return glob(filepath.Join(routing.NetnsDir, n.Netns+id))
}

func (n Names) pins(id string) []string { return glob(n.Pins + id) }

// glob returns the paths p and p-* that exist.
func glob(p string) []string {
	var found []string
	for _, pattern := range []string{p, p + "-*"} {
		m, _ := filepath.Glob(pattern) // the only error is a malformed pattern, and an ID has no meta characters
		found = append(found, m...)
	}
	return found
}

// Run is one run under watch, made by Names.Start.
type Run struct {
	ID string // "t" and 8 random hex digits: give it to the program

	names Names
	root  string // rootState before the run
}

// Start begins a run: it picks the run's ID, reads the state of the root
// network namespace, and removes in t.Cleanup whatever namespace or pin
// directory the run leaves behind, as a safety net under the run's own
// teardown.
func (n Names) Start(t testing.TB) *Run {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	r := &Run{ID: "t" + hex.EncodeToString(b), names: n}
	t.Cleanup(func() {
		for _, p := range n.pins(r.ID) {
			os.RemoveAll(p)
		}
		for _, p := range n.netns(r.ID) {
			routing.DeleteNetns(filepath.Base(p))
		}
	})
	r.root = rootState(t)
	return r
}

// Check fails t for each namespace or pin directory of the run that
// remains, and if the root network namespace changed since Start.
func (r *Run) Check(t testing.TB) {
	t.Helper()
	r.checkGone(t)
	if after := rootState(t); after != r.root {
		t.Errorf("root netns changed:\nbefore %s\nafter  %s", r.root, after)
	}
}

func (r *Run) checkGone(t testing.TB) {
	t.Helper()
	for _, p := range r.names.Leftovers(r.ID) {
		t.Errorf("%s remains after the run", p)
	}
}

// CheckInterrupt starts a run and calls run with its ID and a context it
// cancels once run writes text to out, as Ctrl-C would at that point. It
// fails t unless run returns context.Canceled, and for each namespace or
// pin directory of the run that remains.
func (n Names) CheckInterrupt(t testing.TB, text string, run func(ctx context.Context, id string, out io.Writer) error) {
	t.Helper()
	r := n.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &cancelOn{cancel: cancel, text: []byte(text)}
	if err := run(ctx, r.ID, w); !errors.Is(err, context.Canceled) {
		t.Errorf("run: %v, want context.Canceled\n%s", err, &w.Buffer)
	}
	r.checkGone(t)
}

// rootState sums up what a run must not change in the root network
// namespace, read from the caller's, which a test's goroutine is in: the
// names of its devices, the forwarding, rp_filter and disable_ipv6
// sysctls, and the iptables rules of the filter and nat tables (not their
// counters, which move with the machine's traffic) where iptables is
// installed.
func rootState(t testing.TB) string {
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
	if _, err := exec.LookPath("iptables"); errors.Is(err, exec.ErrNotFound) {
		b.WriteString("iptables not installed")
		return b.String()
	}
	for _, table := range []string{"filter", "nat"} {
		rules, err := exec.Command("iptables", "-w", "-t", table, "-S").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables -t %s -S: %v\n%s", table, err, rules)
		}
		b.WriteString(strings.ReplaceAll(string(rules), "\n", "; "))
	}
	return b.String()
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
