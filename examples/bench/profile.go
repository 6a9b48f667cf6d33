package main

import (
	"cmp"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// progStat is what one BPF program ran during a test: the kernel's run
// count and run time (BPF_ENABLE_STATS, as bpftool prog show reports
// run_cnt and run_time_ns).
type progStat struct {
	Program     string `json:"program"` // "node1/from_netdev"
	Runs        uint64 `json:"runs"`
	Nanoseconds uint64 `json:"nanoseconds"`
}

// profile is one test of a mode with BPF programs, run once more with the
// kernel's BPF statistics on.
type profile struct {
	Scenario string     `json:"scenario"`
	Mode     string     `json:"mode"`
	Test     string     `json:"test"`
	Value    float64    `json:"value"` // the rate with statistics on
	Seconds  float64    `json:"seconds"`
	Programs []progStat `json:"programs"`
}

// readProgStats reads the run counters of every program pinned below the
// pin directories, named by program, prefixed by node when there are
// several. The tail-call stage arrays pinned next to them (hr_calls_*)
// are maps and are skipped: a tail call bypasses the kernel's run
// accounting, so the stages' time is already in the entry program's.
func readProgStats(pins []string) (map[string]progStat, error) {
	stats := map[string]progStat{}
	for i, pin := range pins {
		paths, err := filepath.Glob(filepath.Join(pin, "progs", "*"))
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			prog, err := ebpf.LoadPinnedProgram(p, &ebpf.LoadPinOptions{ReadOnly: true})
			if err != nil {
				if m, merr := ebpf.LoadPinnedMap(p, &ebpf.LoadPinOptions{ReadOnly: true}); merr == nil {
					m.Close()
					continue
				}
				return nil, fmt.Errorf("open %s: %w", p, err)
			}
			st, err := prog.Stats()
			prog.Close()
			if err != nil {
				return nil, fmt.Errorf("stats of %s: %w", p, err)
			}
			name := filepath.Base(p)
			if len(pins) > 1 {
				name = fmt.Sprintf("node%d/%s", i+1, name)
			}
			stats[name] = progStat{Program: name, Runs: st.RunCount, Nanoseconds: uint64(st.Runtime.Nanoseconds())}
		}
	}
	return stats, nil
}

// progDeltas returns what ran between before and after, busiest first,
// leaving out the programs that did not run.
func progDeltas(before, after map[string]progStat) []progStat {
	var d []progStat
	for name, a := range after {
		b := before[name]
		if a.Runs > b.Runs {
			d = append(d, progStat{Program: name, Runs: a.Runs - b.Runs, Nanoseconds: a.Nanoseconds - b.Nanoseconds})
		}
	}
	slices.SortFunc(d, func(x, y progStat) int {
		return cmp.Or(cmp.Compare(y.Nanoseconds, x.Nanoseconds), cmp.Compare(x.Program, y.Program))
	})
	return d
}

// totals sums the programs' runs and run time. Programs reached by tail
// call (the datapath's stages, an ingress policy) count inside the tc
// program that was attached, so only the tc programs add up.
func (p profile) totals() (runs, ns uint64) {
	for _, s := range p.Programs {
		if isTCProgram(s.Program) {
			runs += s.Runs
			ns += s.Nanoseconds
		}
	}
	return runs, ns
}

func isTCProgram(name string) bool {
	base := name[strings.LastIndex(name, "/")+1:]
	return slices.Contains([]string{"from_container", "to_container", "from_netdev", "to_netdev"}, base)
}

// writeProfiles writes the table of where BPF time went: per test and
// mode, the programs' runs per transaction (or per second for
// TCP_STREAM), their mean run time and their share of the wall time.
func writeProfiles(w io.Writer, profiles []profile) {
	if len(profiles) == 0 {
		return
	}
	fmt.Fprintf(w, "| Scenario | Mode | Test | Rate, stats on | BPF runs per trans | BPF ns per trans | BPF time ÷ wall time | Programs (runs/s × mean ns) |\n")
	fmt.Fprintf(w, "|---|---|---|---:|---:|---:|---:|---|\n")
	for _, p := range profiles {
		runs, ns := p.totals()
		perTrans, nsPerTrans := "–", "–"
		if p.Test != testStream && p.Value > 0 {
			trans := p.Value * p.Seconds
			perTrans = fmt.Sprintf("%.1f", float64(runs)/trans)
			nsPerTrans = fmt.Sprintf("%.0f", float64(ns)/trans)
		}
		share := "–"
		if p.Seconds > 0 {
			share = fmt.Sprintf("%.1f%%", 100*float64(ns)/(p.Seconds*1e9))
		}
		var progs []string
		for _, s := range p.Programs {
			if s.Runs == 0 || p.Seconds <= 0 {
				continue
			}
			progs = append(progs, fmt.Sprintf("%s %s/s × %.0f ns", s.Program, si(float64(s.Runs)/p.Seconds), float64(s.Nanoseconds)/float64(s.Runs)))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s %s | %s | %s | %s | %s |\n", p.Scenario, p.Mode, p.Test,
			formatValue(p.Test, p.Value), unit(p.Test), perTrans, nsPerTrans, share, strings.Join(progs, "; "))
	}
}

// si formats v with a k or M suffix.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
