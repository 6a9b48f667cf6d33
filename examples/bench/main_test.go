package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// TestMain lets the test binary serve as rr-server and rr-client, as the
// bench binary does: the smoke test re-executes it inside the namespaces.
func TestMain(m *testing.M) {
	if code, ok := runSubcommand(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestSmoke runs every scenario, mode and test once, briefly, and checks
// that each measured something, that the tables, chart and raw results
// come out, and that nothing is left behind or changed in the root netns.
func TestSmoke(t *testing.T) {
	datapathtest.RequireRoot(t)
	requireTool(t, "iperf3")
	dir := t.TempDir()
	opts := defaultOptions()
	opts.Rounds, opts.Duration, opts.Warmup = 1, 300*time.Millisecond, 50*time.Millisecond
	opts.PNG, opts.JSON = filepath.Join(dir, "bench.png"), filepath.Join(dir, "bench.json")
	r := names.Start(t)
	opts.ID = r.ID
	var out bytes.Buffer
	start := time.Now()
	res, err := run(context.Background(), opts, &out)
	t.Logf("run took %s; output:\n%s", time.Since(start).Round(time.Millisecond), &out)
	if err != nil {
		t.Fatal(err)
	}
	r.Check(t)
	if left := leftovers(opts.ID); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	for _, sc := range scenarios {
		for _, m := range sc.Modes {
			for _, test := range allTests {
				i := slices.IndexFunc(res.Samples, func(s sample) bool { return s.Scenario == sc.Name && s.Mode == m && s.Test == test })
				if i < 0 {
					t.Errorf("%s %s %s: no sample", sc.Name, m, test)
				} else if s := res.Samples[i]; s.Value <= 0 || s.Seconds <= 0 {
					t.Errorf("%s %s %s: measured %v in %vs", sc.Name, m, test, s.Value, s.Seconds)
				}
			}
		}
	}
	for _, want := range []string{
		"### Same-node pod → pod, client CPU 0, server CPU 1\n\n| Test | Mode | Median | Min | Max | ÷ limit | ÷ legacy |\n",
		"| TCP_STREAM (Gbit/s) | limit |", "| TCP_CRR (trans/s) | fallback |",
		"### Cross-node pod → pod, client CPU 0, server CPU 1\n\n", "| TCP_RR (trans/s) | legacy |",
		"| same-node TCP_RR bpf ÷ legacy |", "| cross-node TCP_STREAM bpf ÷ limit |",
		"### BPF run time", "| cross-node | bpf | TCP_RR |", "node2/from_netdev",
		"### Same-node pod → ClusterIP service, client CPU 0, server CPU 1\n\n| Test | Mode | Median | Min | Max | ÷ limit | ÷ direct | ÷ kube-proxy |\n",
		"| TCP_CRR (trans/s) | socket-lb |", "| TCP_RR (trans/s) | kube-proxy |", "service tc-lb: built and checked", "via 10.96.0.10)",
		"| service | tc-lb | TCP_CRR |", "| service | socket-lb | TCP_RR |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Every BPF mode ran its programs in the statistics pass.
	for _, p := range res.Profiles {
		if runs, ns := p.totals(); runs == 0 || ns == 0 {
			t.Errorf("%s %s %s: BPF statistics show %d runs, %d ns", p.Scenario, p.Mode, p.Test, runs, ns)
		}
	}
	if len(res.Profiles) != 7*len(allTests) { // bpf and fallback, same-node and cross-node; direct, tc-lb and socket-lb
		t.Errorf("%d BPF statistics rows, want %d", len(res.Profiles), 7*len(allTests))
	}

	f, err := os.Open(opts.PNG)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cfg, err := png.DecodeConfig(f); err != nil || cfg.Width < 500 || cfg.Height < 200 {
		t.Errorf("chart: %v, %dx%d", err, cfg.Width, cfg.Height)
	}
	b, err := os.ReadFile(opts.JSON)
	if err != nil {
		t.Fatal(err)
	}
	var raw results
	if err := json.Unmarshal(b, &raw); err != nil || len(raw.Samples) != len(res.Samples) || raw.Machine.CPUs == 0 {
		t.Errorf("raw results: %v, %d samples, want %d", err, len(raw.Samples), len(res.Samples))
	}
}

// TestCancel stops a run as Ctrl-C would, once the rounds have begun, and
// checks that everything is still removed.
func TestCancel(t *testing.T) {
	datapathtest.RequireRoot(t)
	opts := defaultOptions()
	opts.Scenarios, opts.Tests = []string{scenarioCrossNode}, []string{testRR}
	opts.Rounds, opts.Duration, opts.PNG = 3, time.Second, ""
	names.CheckInterrupt(t, "round 1/3", func(ctx context.Context, id string, out io.Writer) error {
		opts.ID = id
		_, err := run(ctx, opts, out)
		return err
	})
}

// TestRefuseRootNetns checks that the load refuses to run in the
// namespace the benchmark starts in, and that the lab refuses paths that
// are not the run's namespaces.
func TestRefuseRootNetns(t *testing.T) {
	forbidden, err := forbiddenNetns()
	if err != nil {
		t.Fatal(err)
	}
	var own []string
	for _, st := range forbidden {
		own = append(own, netnsID(st))
	}
	if err := refuseRootNetns(own); err == nil {
		t.Error("refuseRootNetns: nil in the test's own netns")
	}
	if os.Geteuid() == 0 { // the subcommand, as the benchmark runs it, but here
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(exe, "rr-server", "-addr", "127.0.0.1:1", "-timeout", "5s", "-forbid-netns", own[0]).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "refusing to run") {
			t.Errorf("rr-server in the test's netns: %v\n%s", err, out)
		}
	}

	l := &lab{ctx: context.Background(), id: "t0", forbidden: forbidden}
	for _, p := range []string{"", "/proc/self/ns/net", "/var/run/netns/other", filepath.Join(routing.NetnsDir, netnsPrefix+"t0-../x")} {
		if err := l.guard(p); err == nil {
			t.Errorf("guard(%q): nil", p)
		}
	}
}

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want summary
	}{
		{nil, summary{}},
		{[]float64{3}, summary{N: 1, Median: 3, Min: 3, Max: 3}},
		{[]float64{5, 1, 3}, summary{N: 3, Median: 3, Min: 1, Max: 5}},
		{[]float64{4, 1, 3, 10}, summary{N: 4, Median: 3.5, Min: 1, Max: 10}},
		{[]float64{2, 2, 9, 1, 2}, summary{N: 5, Median: 2, Min: 1, Max: 9}},
	} {
		in := slices.Clone(c.in)
		if got := summarize(c.in); got != c.want {
			t.Errorf("summarize(%v) = %+v, want %+v", c.in, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("summarize changed its input to %v", c.in)
		}
	}
	if _, ok := ratio(1, 0); ok {
		t.Error("ratio(1, 0) ok")
	}
	if r, ok := ratio(3, 4); !ok || r != 0.75 {
		t.Errorf("ratio(3, 4) = %v, %v", r, ok)
	}
}

// testSamples are two rounds of a run without fallback, and one TCP_CRR
// without a limit.
func testSamples() []sample {
	var s []sample
	add := func(test, mode string, vals ...float64) {
		for i, v := range vals {
			s = append(s, sample{Scenario: scenarioSameNode, Test: test, Mode: mode, Round: i + 1, Value: v, Seconds: 1})
		}
	}
	add(testStream, modeLimit, 40e9, 38e9)
	add(testStream, modeBPF, 39e9, 37e9)
	add(testStream, modeLegacy, 30e9, 31e9)
	add(testRR, modeBPF, 50000, 52000, 51000)
	add(testRR, modeLegacy, 40000, 40000, 40800)
	add(testRR, modeLimit, 51000, 51000, 51000)
	add(testCRR, modeBPF, 10000)
	s = append(s, sample{Scenario: scenarioCrossNode, Test: testRR, Mode: modeBPF, Value: 1})
	return s
}

func TestWriteTable(t *testing.T) {
	ss := summarizeScenario(testSamples(), scenarioSameNode, allTests, []string{modeBPF, modeFallback, modeLegacy, modeLimit}, []string{modeLimit, modeLegacy})
	if !slices.Equal(ss.Modes, []string{modeBPF, modeLegacy, modeLimit}) || !slices.Equal(ss.Tests, allTests) {
		t.Fatalf("modes %v, tests %v", ss.Modes, ss.Tests)
	}
	var b bytes.Buffer
	writeTable(&b, ss)
	want := `| Test | Mode | Median | Min | Max | ÷ limit | ÷ legacy |
|---|---|---:|---:|---:|---:|---:|
| TCP_STREAM (Gbit/s) | bpf | 38.00 | 37.00 | 39.00 | 0.97 | 1.25 |
| TCP_STREAM (Gbit/s) | legacy | 30.50 | 30.00 | 31.00 | 0.78 | 1.00 |
| TCP_STREAM (Gbit/s) | limit | 39.00 | 38.00 | 40.00 | 1.00 | 1.28 |
| TCP_RR (trans/s) | bpf | 51000 | 50000 | 52000 | 1.00 | 1.27 |
| TCP_RR (trans/s) | legacy | 40000 | 40000 | 40800 | 0.78 | 1.00 |
| TCP_RR (trans/s) | limit | 51000 | 51000 | 51000 | 1.00 | 1.27 |
| TCP_CRR (trans/s) | bpf | 10000 | 10000 | 10000 | – | – |
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", &b, want)
	}

	// The service scenario's columns: ÷ limit, ÷ direct, ÷ kube-proxy.
	b.Reset()
	svc := []sample{
		{Scenario: scenarioService, Test: testRR, Mode: modeDirect, Value: 40000},
		{Scenario: scenarioService, Test: testRR, Mode: modeTCLB, Value: 36000},
		{Scenario: scenarioService, Test: testRR, Mode: modeKubeProxy, Value: 30000},
		{Scenario: scenarioService, Test: testRR, Mode: modeLimit, Value: 50000},
	}
	writeTable(&b, summarizeScenario(svc, scenarioService, allTests, serviceScenario.Modes, serviceScenario.Refs))
	for _, want := range []string{
		"| Test | Mode | Median | Min | Max | ÷ limit | ÷ direct | ÷ kube-proxy |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
		"| TCP_RR (trans/s) | tc-lb | 36000 | 36000 | 36000 | 0.72 | 0.90 | 1.20 |\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("service table:\n%s\nlacks:\n%s", &b, want)
		}
	}

	b.Reset()
	writeTargets(&b, []scenarioSummary{ss})
	wantTargets := `| Ratio of medians | Measured | Target | |
|---|---:|---:|---|
| same-node TCP_STREAM bpf ÷ limit | 0.97 | ≥ 0.97 | met |
| same-node TCP_RR bpf ÷ legacy | 1.27 | ≥ 1.25 | met |
`
	if b.String() != wantTargets {
		t.Errorf("targets:\n%s\nwant:\n%s", &b, wantTargets)
	}
}

func TestWriteProfiles(t *testing.T) {
	p := profile{Scenario: scenarioCrossNode, Mode: modeBPF, Test: testRR, Value: 1000, Seconds: 2, Programs: []progStat{
		{Program: "node1/from_container", Runs: 2000, Nanoseconds: 6_000_000},
		{Program: "node2/from_netdev", Runs: 2000, Nanoseconds: 4_000_000},
		{Program: "node1/hr_ingress_policy", Runs: 2000, Nanoseconds: 50_000}, // inside its caller's time
	}}
	if runs, ns := p.totals(); runs != 4000 || ns != 10_000_000 {
		t.Errorf("totals %d runs, %d ns; want 4000, 10000000", runs, ns)
	}
	var b bytes.Buffer
	writeProfiles(&b, []profile{p})
	want := "| cross-node | bpf | TCP_RR | 1000 trans/s | 2.0 | 5000 | 0.5% | node1/from_container 1.0k/s × 3000 ns; node2/from_netdev 1.0k/s × 2000 ns; node1/hr_ingress_policy 1.0k/s × 25 ns |\n"
	if !strings.HasSuffix(b.String(), want) {
		t.Errorf("profiles:\n%s\nwant a row:\n%s", &b, want)
	}
	d := progDeltas(map[string]progStat{"a": {Program: "a", Runs: 5, Nanoseconds: 50}, "b": {Program: "b", Runs: 1, Nanoseconds: 1}},
		map[string]progStat{"a": {Program: "a", Runs: 7, Nanoseconds: 90}, "b": {Program: "b", Runs: 1, Nanoseconds: 1}, "c": {Program: "c", Runs: 1, Nanoseconds: 100}})
	if fmt.Sprint(d) != "[{c 1 100} {a 2 40}]" {
		t.Errorf("progDeltas = %v", d)
	}
}

// TestReplot prints the tables and draws the chart again from raw results.
func TestReplot(t *testing.T) {
	dir := t.TempDir()
	res := results{Options: defaultOptions(), Samples: testSamples()}
	res.Options.ServerCPU = 0
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "bench.json")
	if err := os.WriteFile(raw, b, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := defaultOptions()
	opts.PNG = filepath.Join(dir, "bench.png")
	var out bytes.Buffer
	if err := replot(raw, opts, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"### Same-node pod → pod, client and server on CPU 0\n",
		"| TCP_RR (trans/s) | bpf | 51000 | 50000 | 52000 | 1.00 | 1.27 |\n",
		"### Cross-node pod → pod, client and server on CPU 0\n",
		"| same-node TCP_RR bpf ÷ legacy | 1.27 | ≥ 1.25 | met |",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, &out)
		}
	}
	f, err := os.Open(opts.PNG)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.DecodeConfig(f); err != nil {
		t.Errorf("chart: %v", err)
	}
}

func TestKubeProxyRules(t *testing.T) {
	const services = 300
	measured := measuredService(netip.MustParseAddr("10.0.0.11"))
	rules := kubeProxyRules(services, "10.0.0.0/8", measured)
	if n := strings.Count(rules, "\n-A KUBE-SERVICES "); n != services+len(measured)+1 {
		t.Errorf("%d KUBE-SERVICES rules, want %d", n, services+len(measured)+1)
	}
	// The measured service comes last, before only the NodePort rule: a
	// new connection to it walks every other service's rule first.
	var svcRules []string
	for _, line := range strings.Split(rules, "\n") {
		if strings.HasPrefix(line, "-A KUBE-SERVICES ") {
			svcRules = append(svcRules, line)
		}
	}
	for i, m := range measured {
		want := fmt.Sprintf("-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport %d -j %s",
			m.Frontend.Addr(), m.Name, m.Frontend.Port(), chainName("KUBE-SVC-", m.Name))
		if got := svcRules[services+i]; got != want {
			t.Errorf("KUBE-SERVICES rule %d: %s, want %s", services+i, got, want)
		}
		if dnat := fmt.Sprintf("-j DNAT --to-destination 10.0.0.11:%d\n", m.Frontend.Port()); !strings.Contains(rules, dnat) {
			t.Errorf("rules lack %q", dnat)
		}
	}
	if last := svcRules[len(svcRules)-1]; !strings.Contains(last, "-j KUBE-NODEPORTS") {
		t.Errorf("last KUBE-SERVICES rule: %s, want the NodePort rule", last)
	}
	if n := strings.Count(rules, "COMMIT\n"); n != 2 {
		t.Errorf("%d COMMITs, want 2", n)
	}
	chains := map[string]bool{}
	ips := map[string]bool{} // frontends, address:port
	for _, line := range strings.Split(rules, "\n") {
		if strings.HasPrefix(line, ":KUBE-SVC-") || strings.HasPrefix(line, ":KUBE-SEP-") {
			if chains[line] {
				t.Errorf("chain declared twice: %s", line)
			}
			chains[line] = true
		}
		if f := strings.Fields(line); len(f) > 3 && f[1] == "KUBE-SERVICES" && f[2] == "-d" {
			ip, _, _ := strings.Cut(f[3], "/")
			frontend := ip
			if i := slices.Index(f, "--dport"); i > 0 && i+1 < len(f) {
				frontend += ":" + f[i+1]
			}
			if ips[frontend] || !strings.HasPrefix(ip, "10.96.") || net.ParseIP(ip) == nil {
				t.Errorf("service frontend %s repeated or outside 10.96.0.0/16", frontend)
			}
			ips[frontend] = true
		}
	}
	if want := services + len(measured); len(ips) != want {
		t.Errorf("%d service frontends, want %d", len(ips), want)
	}
	if want := 3*services + 2*len(measured); len(chains) != want { // a KUBE-SVC and a KUBE-SEP per endpoint
		t.Errorf("%d service chains, want %d", len(chains), want)
	}
	for _, want := range []string{"--ctstate RELATED,ESTABLISHED -j ACCEPT", "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES", "-j DNAT --to-destination 10.244."} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q", want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*options)
		ok     bool
	}{
		{"defaults", func(*options) {}, true},
		{"unknown test", func(o *options) { o.Tests = []string{"UDP_RR"} }, false},
		{"unknown scenario", func(o *options) { o.Scenarios = []string{"nodeport"} }, false},
		{"unknown mode", func(o *options) { o.Modes = []string{"ipvs"} }, false},
		{"no modes", func(o *options) { o.Modes = nil }, false},
		{"zero rounds", func(o *options) { o.Rounds = 0 }, false},
		{"tiny duration", func(o *options) { o.Duration = time.Millisecond }, false},
		{"CPU out of reach", func(o *options) { o.ServerCPU = 4096 }, false},
	} {
		o := defaultOptions()
		c.change(&o)
		if err := o.validate(); (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok %v", c.name, err, c.ok)
		}
	}
	o := defaultOptions()
	o.Scenarios, o.Modes = []string{scenarioCrossNode, scenarioSameNode}, []string{modeFallback, modeLimit}
	var got []string
	for _, sc := range o.selected() {
		got = append(got, sc.Name+":"+strings.Join(sc.Modes, ","))
	}
	if want := []string{"same-node:fallback,limit", "cross-node:fallback,limit"}; !slices.Equal(got, want) {
		t.Errorf("selected %v, want %v", got, want)
	}
	o = defaultOptions()
	o.Modes = []string{modeLimit, modeTCLB}
	got = nil
	for _, sc := range o.selected() {
		got = append(got, sc.Name+":"+strings.Join(sc.Modes, ","))
	}
	if want := []string{"same-node:limit", "cross-node:limit", "service:tc-lb,limit"}; !slices.Equal(got, want) {
		t.Errorf("selected %v, want %v", got, want)
	}
}

// requireTool skips the test when a tool it drives is missing, or fails it
// with HOSTROUTING_REQUIRE_PRIVILEGED=1 (as CI sets it).
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("HOSTROUTING_REQUIRE_PRIVILEGED") == "1" {
			t.Fatalf("%s is needed (apt-get install %s): %v", name, name, err)
		}
		t.Skipf("%s is needed: %v", name, err)
	}
}
