package leakcheck_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/leakcheck"
	"github.com/hostrouting/hostrouting/routing"
)

// TestLeftovers checks which pin directories count as a run's: the ID
// alone or followed by "-".
func TestLeftovers(t *testing.T) {
	dir := t.TempDir()
	names := leakcheck.Names{Netns: "hr-leakcheck-test-", Pins: filepath.Join(dir, "pins-")}
	if left := names.Leftovers("t1"); len(left) != 0 {
		t.Errorf("leftovers %v in an empty directory", left)
	}
	for _, d := range []string{"pins-t1", "pins-t1-node1", "pins-t12", "pins-t2-node1"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{filepath.Join(dir, "pins-t1"), filepath.Join(dir, "pins-t1-node1")}
	if left := names.Leftovers("t1"); !slices.Equal(left, want) {
		t.Errorf("leftovers %v, want %v", left, want)
	}
}

// TestRun runs a fake program that makes a namespace and a pin directory
// and removes them when its context ends, as the examples do on Ctrl-C.
func TestRun(t *testing.T) {
	datapathtest.RequireRoot(t)
	names := leakcheck.Names{Netns: "hr-leakcheck-", Pins: filepath.Join(t.TempDir(), "pins-")}
	var id string
	names.CheckInterrupt(t, "stop here", func(ctx context.Context, runID string, out io.Writer) error {
		id = runID
		if _, err := routing.CreateNetns(names.Netns + id + "-node"); err != nil {
			return err
		}
		defer routing.DeleteNetns(names.Netns + id + "-node")
		if err := os.Mkdir(names.Pins+id, 0o755); err != nil {
			return err
		}
		defer os.Remove(names.Pins + id)
		if left := names.Leftovers(id); len(left) != 2 {
			return fmt.Errorf("leftovers %v while running, want the namespace and the pin directory", left)
		}
		fmt.Fprintln(out, "made everything; stop here")
		return ctx.Err()
	})
	if id == "" {
		t.Fatal("CheckInterrupt did not call run")
	}
	if left := names.Leftovers(id); len(left) != 0 {
		t.Errorf("leftovers %v after the run", left)
	}

	r := names.Start(t)
	r.Check(t)
	if r.ID == id || len(r.ID) != 9 {
		t.Errorf("run IDs %q and %q", id, r.ID)
	}
}
