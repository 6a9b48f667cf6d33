package instance_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// arpProbe is an ARP probe (sender IP 0.0.0.0) as a pod sends it: the
// from-container stage for ARP passes it to the stack.
var arpProbe = []byte{
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x08, 0x06,
	0, 1, 0x08, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 1, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 10, 0, 0, 1,
}

// runProbe runs prog on arpProbe and returns its verdict.
func runProbe(t *testing.T, prog *ebpf.Program) uint32 {
	t.Helper()
	verdict, err := prog.Run(&ebpf.RunOptions{Data: arpProbe})
	if err != nil {
		t.Fatal(err)
	}
	return verdict
}

// TestStagesOutliveReload checks that programs of an earlier load keep
// their tail-call stages while a reload renews attachments, and lose them
// (a counted drop, never an unchecked pass) once CommitRenewal says every
// attachment moved.
func TestStagesOutliveReload(t *testing.T) {
	datapathtest.RequireRoot(t)
	pin := datapathtest.PinPath(t)
	first, err := instance.Load(instance.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	old := first.Program(loader.FromContainer)
	if v := runProbe(t, old); v != 0 {
		t.Fatalf("first load: verdict %d for an ARP probe, want TC_ACT_OK", v)
	}

	second, err := instance.Load(instance.Options{PinPath: pin, Disable: loader.Disable{RedirectPeer: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { second.Remove() })
	defer first.Close()
	stages, _ := filepath.Glob(filepath.Join(pin, "progs", "hr_calls_*"))
	if !renewing(t, second) || len(stages) != 2 {
		t.Fatalf("reload: renewing %v, stage pins %v: want both loads' stages", renewing(t, second), stages)
	}
	if v := runProbe(t, old); v != 0 {
		t.Errorf("old program during the reload: verdict %d, want TC_ACT_OK (its stages kept)", v)
	}

	if err := second.CommitRenewal(); err != nil {
		t.Fatal(err)
	}
	stages, _ = filepath.Glob(filepath.Join(pin, "progs", "hr_calls_*"))
	if len(stages) != 1 {
		t.Errorf("after CommitRenewal: stage pins %v, want the current load's only", stages)
	}
	if v := runProbe(t, second.Program(loader.FromContainer)); v != 0 {
		t.Errorf("new program: verdict %d, want TC_ACT_OK", v)
	}
	metrics := tables.NewMetrics(second.Maps.Metrics)
	before, err := metrics.Get(maps.FromContainer, maps.MetricDropTailCall)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel empties an unpinned program array in a work item.
	deadline := time.Now().Add(5 * time.Second)
	v := runProbe(t, old)
	for ; v == 0 && time.Now().Before(deadline); v = runProbe(t, old) {
		time.Sleep(10 * time.Millisecond)
	}
	if v != 2 {
		t.Errorf("old program after CommitRenewal: verdict %d, want TC_ACT_SHOT (stage gone)", v)
	}
	if after, _ := metrics.Get(maps.FromContainer, maps.MetricDropTailCall); after.Packets != before.Packets+1 {
		t.Errorf("drop-tail-call moved by %d, want 1", after.Packets-before.Packets)
	}
}

// TestMapSizes reports every map with the memory the kernel charges: the
// per-CPU counters grow with the endpoint limit.
func TestMapSizes(t *testing.T) {
	datapathtest.RequireRoot(t)
	memory := map[uint32]uint64{}
	for _, limit := range []uint32{64, 4096} {
		n, err := instance.Load(instance.Options{PinPath: datapathtest.PinPath(t), MaxEndpoints: limit})
		if err != nil {
			t.Fatal(err)
		}
		sizes, err := n.MapSizes()
		n.Remove()
		if err != nil {
			t.Fatal(err)
		}
		if len(sizes) != 33 {
			t.Errorf("%d maps reported: %+v", len(sizes), sizes)
		}
		for _, s := range sizes {
			// An LPM trie is charged per entry: an empty one takes 0.
			if s.Memory == 0 && s.Type != ebpf.LPMTrie || s.MaxEntries == 0 {
				t.Errorf("map %+v: no size", s)
			}
			if limit == 64 {
				t.Logf("%-16s %-10s %8d entries %10d bytes", s.Name, s.Type, s.MaxEntries, s.Memory)
			}
			if s.Name == "hr_ep_stats" {
				if s.MaxEntries != limit+1 {
					t.Errorf("hr_ep_stats has %d entries, want %d", s.MaxEntries, limit+1)
				}
				memory[limit] = s.Memory
			}
		}
	}
	// 48 bytes × CPUs per entry: 4032 more entries.
	cpus := uint64(ebpf.MustPossibleCPU())
	if grew := memory[4096] - memory[64]; grew < 4032*48*cpus {
		t.Errorf("hr_ep_stats grew by %d bytes from 64 to 4096 endpoints, want at least %d", grew, 4032*48*cpus)
	}
}

// TestRemoveLeavesNothing: Remove unpins every map, program and stage a
// load pinned, so that the pin directory goes.
func TestRemoveLeavesNothing(t *testing.T) {
	datapathtest.RequireRoot(t)
	pin := datapathtest.PinPath(t)
	n, err := instance.Load(instance.Options{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Remove(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(pin, "*")); len(left) != 0 {
		t.Errorf("Remove left %v", left)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path after Remove: %v", err)
	}
}

// TestFlowsForMemory: table sizes by a share of memory, bounded, and a
// clear error for a share that is none.
func TestFlowsForMemory(t *testing.T) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	mem := float64(si.Totalram) * float64(si.Unit)
	got, err := loader.FlowsForMemory(0.0025)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint32(mem * 0.0025 / loader.FlowEntryBytes); got != max(want, 16384) {
		t.Errorf("FlowsForMemory(0.0025) = %d with %.0f bytes of memory, want %d", got, mem, want)
	}
	if got, _ := loader.FlowsForMemory(1e-12); got != 16384 {
		t.Errorf("FlowsForMemory(1e-12) = %d, want the least, 16384", got)
	}
	for _, bad := range []float64{0, -1, 1, 2} {
		if _, err := loader.FlowsForMemory(bad); err == nil || !strings.Contains(err.Error(), "ratio") {
			t.Errorf("FlowsForMemory(%v): %v, want an error naming the ratio", bad, err)
		}
	}
}
