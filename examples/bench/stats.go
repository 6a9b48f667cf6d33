package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// The tests, as netperf names them.
const (
	testStream = "TCP_STREAM"
	testRR     = "TCP_RR"
	testCRR    = "TCP_CRR"
)

var allTests = []string{testStream, testRR, testCRR}

// The modes a scenario compares. Every scenario has a limit; the ratios in
// the tables divide by the medians of the scenario's reference modes
// (scenario.Refs).
const (
	modeBPF      = "bpf"
	modeFallback = "fallback"
	modeLegacy   = "legacy"
	modeLimit    = "limit"
	// The service scenario's modes.
	modeDirect    = "direct"
	modeTCLB      = "tc-lb"
	modeSocketLB  = "socket-lb"
	modeKubeProxy = "kube-proxy"
)

// allModes are every scenario's modes, as --modes takes them.
var allModes = []string{modeBPF, modeFallback, modeLegacy, modeDirect, modeTCLB, modeSocketLB, modeKubeProxy, modeLimit}

// sample is one measurement: one test in one mode of one scenario, in one
// round.
type sample struct {
	Scenario string  `json:"scenario"`
	Mode     string  `json:"mode"`
	Test     string  `json:"test"`
	Round    int     `json:"round"`
	Value    float64 `json:"value"` // bits/s for TCP_STREAM, transactions/s otherwise
	Seconds  float64 `json:"seconds"`
	Slowest  float64 `json:"slowest_seconds,omitempty"` // the slowest transaction of TCP_RR and TCP_CRR
}

// summary sums up the samples of one test and mode.
type summary struct {
	N                int
	Median, Min, Max float64
}

// summarize returns the median, minimum and maximum of vals; the median of
// an even count is the mean of the middle two.
func summarize(vals []float64) summary {
	if len(vals) == 0 {
		return summary{}
	}
	s := slices.Clone(vals)
	slices.Sort(s)
	n := len(s)
	m := s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return summary{N: n, Median: m, Min: s[0], Max: s[n-1]}
}

// ratio returns a/b, or false when b is not a positive number.
func ratio(a, b float64) (float64, bool) {
	if b <= 0 || a < 0 {
		return 0, false
	}
	return a / b, true
}

// scenarioSummary holds the summaries of one scenario by test and mode.
type scenarioSummary struct {
	Scenario string
	Tests    []string // in table order
	Modes    []string
	Refs     []string              // the modes the table's ratio columns divide by
	Cells    map[[2]string]summary // [test, mode]
}

// summarizeScenario groups the samples of scenario by test and mode, in
// the order given; the table's ratio columns divide by the modes refs.
func summarizeScenario(samples []sample, scenario string, tests, modes, refs []string) scenarioSummary {
	vals := map[[2]string][]float64{}
	for _, s := range samples {
		if s.Scenario == scenario {
			k := [2]string{s.Test, s.Mode}
			vals[k] = append(vals[k], s.Value)
		}
	}
	ss := scenarioSummary{Scenario: scenario, Refs: refs, Cells: map[[2]string]summary{}}
	for _, t := range tests {
		for _, m := range modes {
			if v, ok := vals[[2]string{t, m}]; ok {
				ss.Cells[[2]string{t, m}] = summarize(v)
				if !slices.Contains(ss.Tests, t) {
					ss.Tests = append(ss.Tests, t)
				}
				if !slices.Contains(ss.Modes, m) {
					ss.Modes = append(ss.Modes, m)
				}
			}
		}
	}
	// Keep the given mode order even if a test lacks some modes.
	slices.SortStableFunc(ss.Modes, func(a, b string) int { return slices.Index(modes, a) - slices.Index(modes, b) })
	return ss
}

// ratioTo returns the median of test in mode divided by the median in ref.
func (ss scenarioSummary) ratioTo(test, mode, ref string) (float64, bool) {
	a, ok1 := ss.Cells[[2]string{test, mode}]
	b, ok2 := ss.Cells[[2]string{test, ref}]
	if !ok1 || !ok2 {
		return 0, false
	}
	return ratio(a.Median, b.Median)
}

// unit names what a test's values count, as the tables show them.
func unit(test string) string {
	if test == testStream {
		return "Gbit/s"
	}
	return "trans/s"
}

// formatValue formats v (bits/s or transactions/s) in the table's unit.
func formatValue(test string, v float64) string {
	if test == testStream {
		return strconv.FormatFloat(v/1e9, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func formatRatio(r float64, ok bool) string {
	if !ok {
		return "–"
	}
	return strconv.FormatFloat(r, 'f', 2, 64)
}

// writeTable writes the scenario's markdown table: a row per test and
// mode with the median, minimum and maximum over the rounds and the
// median's ratio to the median of each of the scenario's reference modes
// (ss.Refs: the limit and legacy, or for services the limit, direct and
// kube-proxy), a column each.
func writeTable(w io.Writer, ss scenarioSummary) {
	fmt.Fprintf(w, "| Test | Mode | Median | Min | Max |")
	for _, r := range ss.Refs {
		fmt.Fprintf(w, " ÷ %s |", r)
	}
	fmt.Fprintf(w, "\n|---|---|---:|---:|---:|%s\n", strings.Repeat("---:|", len(ss.Refs)))
	for _, t := range ss.Tests {
		for _, m := range ss.Modes {
			c, ok := ss.Cells[[2]string{t, m}]
			if !ok {
				continue
			}
			fmt.Fprintf(w, "| %s (%s) | %s | %s | %s | %s |", t, unit(t), m,
				formatValue(t, c.Median), formatValue(t, c.Min), formatValue(t, c.Max))
			for _, r := range ss.Refs {
				fmt.Fprintf(w, " %s |", formatRatio(ss.ratioTo(t, m, r)))
			}
			fmt.Fprintln(w)
		}
	}
}

// target is one of issue 4's targets: the median of Test in Mode over its
// median in Ref should be at least Min.
type target struct {
	Scenario, Test, Mode, Ref string
	Min                       float64
}

var targets = []target{
	{scenarioSameNode, testStream, modeBPF, modeLimit, 0.97},
	{scenarioSameNode, testRR, modeBPF, modeLegacy, 1.25},
	{scenarioCrossNode, testStream, modeBPF, modeLimit, 0.97},
	{scenarioCrossNode, testRR, modeBPF, modeLimit, 0.97},
}

// writeTargets lists the measured ratios next to the targets, without
// judging runs that lack a mode.
func writeTargets(w io.Writer, sums []scenarioSummary) {
	var rows []string
	for _, tg := range targets {
		for _, ss := range sums {
			if ss.Scenario != tg.Scenario {
				continue
			}
			r, ok := ss.ratioTo(tg.Test, tg.Mode, tg.Ref)
			if !ok {
				continue
			}
			verdict := "below"
			if r >= tg.Min {
				verdict = "met"
			}
			rows = append(rows, fmt.Sprintf("| %s %s %s ÷ %s | %.2f | ≥ %.2f | %s |", tg.Scenario, tg.Test, tg.Mode, tg.Ref, r, tg.Min, verdict))
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "| Ratio of medians | Measured | Target | |\n|---|---:|---:|---|\n%s\n", strings.Join(rows, "\n"))
}
