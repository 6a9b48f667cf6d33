// Command bench measures pod-to-pod and pod-to-service throughput and
// request/response rates with host routing, side by side with the
// kernel's legacy routing (and kube-proxy) and the limit the topology
// allows, the way the Cilium CNI benchmark does.
//
// Scenarios and modes, each built in network namespaces of its own:
//
//   - same-node pod → pod: bpf (host routing, bpf_redirect_peer), fallback
//     (bpf_redirect to the destination's host veth, Disable.RedirectPeer),
//     legacy (no datapath: ptp-style /32 routes through the node's stack,
//     with conntrack tracking the flows and kube-proxy's iptables rules for
//     5000 services loaded) and limit (a veth pair straight between the
//     two pods, no node in between);
//   - cross-node pod → pod over a bridge, like kind nodes on the docker
//     bridge: bpf (bpf_fib_lookup + bpf_redirect_neigh out of the node,
//     bpf_redirect_peer into the pod), legacy (routes between the nodes,
//     iptables rules and conntrack on both) and limit (node-to-node over
//     the same wire);
//   - same-node pod → ClusterIP service (10.96.0.10, the server pod its
//     one backend, on each test's port): direct (host routing, the client
//     dials the server pod's own IP: the baseline), tc-lb (the client
//     dials the ClusterIP, DNATed at its host veth by the datapath's tc
//     load balancer with BPF conntrack), socket-lb (the datapath's socket
//     load balancer on a cgroup of the run's own, hr-bench-<random>-*
//     below the cgroup2 mount, which the client processes start in: the
//     socket is connected to the backend at connect(), no packet is
//     translated), kube-proxy (no datapath: the node's stack with
//     kube-proxy's rules for 5000 other services and the measured one
//     last in KUBE-SERVICES, DNAT in PREROUTING and conntrack) and limit
//     (the two pods on a veth pair). The three BPF modes hold the same
//     services in their maps as kube-proxy's rules.
//
// Tests: TCP_STREAM with iperf3, TCP_RR and TCP_CRR with this binary's own
// rr-client and rr-server (blocking sockets, one transaction at a time),
// the same tools in every mode, the client pinned to one CPU and the
// server to another. Each round runs every test in every mode in turn
// (A B C D, A B C D, ...); the tables give the median, minimum and maximum
// over the rounds and the median's ratio to the medians of the scenario's
// reference modes: the limit's and legacy's, or for services the limit's,
// direct's (what translating the ClusterIP costs) and kube-proxy's.
// One more pass with the kernel's BPF statistics on (BPF_ENABLE_STATS,
// held only while it runs) shows what the programs cost.
//
// It is its own module (the chart's gonum/plot stays out of the SDK's
// module graph). Run it as root, from the repository root:
//
//	cd examples/bench && go run .        # 5 rounds of 3s tests, about 11 minutes
//	cd examples/bench && go run . --scenarios service --tests TCP_RR,TCP_CRR
//	cd examples/bench && go run . --tests TCP_RR,TCP_CRR --server-cpu 0   # client and server on one CPU
//	cd examples/bench && go run . --rounds 1 --duration 1s --scenarios same-node --tests TCP_RR
//	cd examples/bench && go run . --replot bench.json --png /tmp/bench.png   # tables and chart again
//
// The machine's root network namespace is never changed: everything lives
// in namespaces named hr-bench-<random>-*, pinned under
// /sys/fs/bpf/hostrouting-bench-<random>-*, with socket-lb's cgroup
// hr-bench-<random>-* (the only cgroup anything attaches to or moves
// into), and is removed at the end, on failure and on Ctrl-C; the run
// fails if anything is left.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// options configure one run.
type options struct {
	Rounds    int           `json:"rounds"`
	Duration  time.Duration `json:"duration"` // per test; iperf3 rounds it to whole seconds
	Warmup    time.Duration `json:"warmup"`   // before TCP_RR and TCP_CRR measure
	Scenarios []string      `json:"scenarios"`
	Modes     []string      `json:"modes"`
	Tests     []string      `json:"tests"`
	Services  int           `json:"services"` // kube-proxy services in legacy and kube-proxy, BPF services in the service scenario
	Size      int           `json:"size"`     // TCP_RR and TCP_CRR message bytes
	ClientCPU int           `json:"client_cpu"`
	ServerCPU int           `json:"server_cpu"`
	BPFStats  bool          `json:"bpf_stats"`
	PNG       string        `json:"-"`
	JSON      string        `json:"-"`
	ID        string        `json:"-"` // names the namespaces and pins; default random
	Exe       string        `json:"-"` // the binary that serves rr-server and rr-client; default this one
	Command   string        `json:"-"` // as the output quotes it
}

func defaultOptions() options {
	return options{
		Rounds: 5, Duration: 3 * time.Second, Warmup: 200 * time.Millisecond,
		Scenarios: scenarioNames(), Modes: allModes, Tests: allTests,
		Services: 5000, Size: 1, ClientCPU: 0, ServerCPU: 1, BPFStats: true, PNG: "bench.png",
	}
}

func scenarioNames() []string {
	var n []string
	for _, sc := range scenarios {
		n = append(n, sc.Name)
	}
	return n
}

func main() {
	if code, ok := runSubcommand(os.Args[1:]); ok {
		os.Exit(code)
	}
	opts := defaultOptions()
	list := func(p *[]string) func(string) error {
		return func(s string) error { *p = strings.Split(s, ","); return nil }
	}
	flag.IntVar(&opts.Rounds, "rounds", opts.Rounds, "rounds; each runs every test in every mode once")
	flag.DurationVar(&opts.Duration, "duration", opts.Duration, "length of each test (TCP_STREAM: whole seconds, at least 1)")
	flag.DurationVar(&opts.Warmup, "warmup", opts.Warmup, "unmeasured start of each TCP_RR and TCP_CRR test")
	flag.Func("scenarios", "comma-separated scenarios (default "+strings.Join(opts.Scenarios, ",")+")", list(&opts.Scenarios))
	flag.Func("modes", "comma-separated modes (default "+strings.Join(opts.Modes, ",")+")", list(&opts.Modes))
	flag.Func("tests", "comma-separated tests (default "+strings.Join(opts.Tests, ",")+")", list(&opts.Tests))
	flag.IntVar(&opts.Services, "services", opts.Services, "services in the iptables of legacy and kube-proxy nodes (and the service scenario's BPF maps)")
	flag.IntVar(&opts.Size, "size", opts.Size, "TCP_RR and TCP_CRR request and response bytes")
	flag.IntVar(&opts.ClientCPU, "client-cpu", opts.ClientCPU, "CPU the client runs on")
	flag.IntVar(&opts.ServerCPU, "server-cpu", opts.ServerCPU, "CPU the server runs on")
	flag.BoolVar(&opts.BPFStats, "bpf-stats", opts.BPFStats, "one more pass of the BPF modes with the kernel's BPF statistics on")
	flag.StringVar(&opts.PNG, "png", opts.PNG, "write the chart to this PNG file (empty: none)")
	flag.StringVar(&opts.JSON, "json", opts.JSON, "write the raw results to this JSON file (empty: none)")
	replotFrom := flag.String("replot", "", "measure nothing: print the tables and write the chart (--png) of the raw results in this JSON file")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	opts.Command = strings.Join(append([]string{"cd examples/bench && go run ."}, os.Args[1:]...), " ")

	if *replotFrom != "" {
		if err := replot(*replotFrom, opts, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	_, err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// results are a run's raw results, as --json writes them.
type results struct {
	Command  string    `json:"command"`
	Machine  machine   `json:"machine"`
	Options  options   `json:"options"`
	Samples  []sample  `json:"samples"`
	Profiles []profile `json:"profiles,omitempty"`

	sums []scenarioSummary
}

// machine is what the run ran on.
type machine struct {
	CPUs     int     `json:"cpus"`
	Model    string  `json:"model"`
	Kernel   string  `json:"kernel"`
	MemGiB   float64 `json:"mem_gib"`
	Go       string  `json:"go"`
	Iperf3   string  `json:"iperf3"`
	Iptables string  `json:"iptables"`
	// LoadBefore and LoadAfter are /proc/loadavg when the run started and
	// ended: other work on the machine shows there.
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

// validate checks opts and fills in defaults.
func (o *options) validate() error {
	if o.Rounds < 1 || o.Rounds > 100 {
		return fmt.Errorf("--rounds %d: want 1 to 100", o.Rounds)
	}
	if o.Duration < 100*time.Millisecond || o.Duration > 5*time.Minute {
		return fmt.Errorf("--duration %s: want 100ms to 5m", o.Duration)
	}
	if o.Warmup < 0 || o.Warmup > time.Minute {
		return fmt.Errorf("--warmup %s: want 0 to 1m", o.Warmup)
	}
	if o.Services < 0 || o.Services > 30000 {
		return fmt.Errorf("--services %d: want 0 to 30000", o.Services)
	}
	if o.Size < 1 || o.Size > 65536 {
		return fmt.Errorf("--size %d: want 1 to 65536", o.Size)
	}
	var known []string
	for _, sc := range scenarios {
		known = append(known, sc.Name)
	}
	for _, l := range []struct {
		flag  string
		vals  []string
		known []string
	}{{"--scenarios", o.Scenarios, known}, {"--modes", o.Modes, allModes}, {"--tests", o.Tests, allTests}} {
		if len(l.vals) == 0 {
			return fmt.Errorf("%s: none given", l.flag)
		}
		for _, v := range l.vals {
			if !slices.Contains(l.known, v) {
				return fmt.Errorf("%s: unknown %q, want some of %s", l.flag, v, strings.Join(l.known, ","))
			}
		}
	}
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		return fmt.Errorf("read CPU affinity: %w", err)
	}
	for _, c := range []int{o.ClientCPU, o.ServerCPU} {
		if c < 0 || c >= 1024 || !cpus.IsSet(c) {
			return fmt.Errorf("CPU %d is not one this process may run on", c)
		}
	}
	if o.ID == "" {
		b := make([]byte, 4)
		rand.Read(b)
		o.ID = hex.EncodeToString(b)
	}
	if o.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this binary to run rr-server and rr-client: %w", err)
		}
		o.Exe = exe
	}
	if o.Command == "" {
		o.Command = "cd examples/bench && go run ."
	}
	return nil
}

// selected returns the scenarios and, for each, the modes opts select.
func (o *options) selected() []*scenario {
	var scs []*scenario
	for _, sc := range scenarios {
		if !slices.Contains(o.Scenarios, sc.Name) {
			continue
		}
		modes := slices.DeleteFunc(slices.Clone(sc.Modes), func(m string) bool { return !slices.Contains(o.Modes, m) })
		if len(modes) > 0 {
			c := *sc
			c.Modes = modes
			scs = append(scs, &c)
		}
	}
	return scs
}

// run builds each scenario, runs the rounds and the BPF statistics pass,
// tears the scenario down, and finally prints the tables and writes the
// chart and raw results. It refuses to run unless root, and fails if
// anything it made is left.
func run(ctx context.Context, opts options, out io.Writer) (res *results, err error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("must run as root: it creates network namespaces (and changes nothing outside them)")
	}
	scs := opts.selected()
	if len(scs) == 0 {
		return nil, errors.New("no scenario has the modes selected")
	}
	tools := []string{"ip", "taskset"}
	if slices.Contains(opts.Tests, testStream) {
		tools = append(tools, "iperf3")
	}
	if slices.Contains(opts.Modes, modeLegacy) || slices.Contains(opts.Modes, modeKubeProxy) {
		tools = append(tools, "iptables", "iptables-restore")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return nil, fmt.Errorf("%s is needed: %w", t, err)
		}
	}
	defer func() {
		if left := leftovers(opts.ID); len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("left behind: %s", strings.Join(left, " ")))
		}
	}()

	res = &results{Command: opts.Command, Machine: describeMachine(), Options: opts}
	cfg := loadConfig{Exe: opts.Exe, ClientCPU: opts.ClientCPU, ServerCPU: opts.ServerCPU, Duration: opts.Duration, Warmup: opts.Warmup, Size: opts.Size}
	forbidden, err := forbiddenNetns()
	if err != nil {
		return nil, err
	}
	for _, st := range forbidden {
		cfg.Forbid = append(cfg.Forbid, netnsID(st))
	}
	fmt.Fprintf(out, "Benchmark %s: %d round(s) of %s per test; client on CPU %d, server on CPU %d; namespaces %s%s-*; load average %s\n",
		opts.ID, opts.Rounds, opts.Duration, opts.ClientCPU, opts.ServerCPU, netnsPrefix, opts.ID, res.Machine.LoadBefore)
	for _, sc := range scs {
		if err := runScenario(ctx, opts, cfg, sc, res, out); err != nil {
			return nil, fmt.Errorf("%s: %w", sc.Name, err)
		}
	}

	res.Machine.LoadAfter = loadAvg()
	if err := report(out, res, scs, opts); err != nil {
		return nil, err
	}
	return res, nil
}

// report prints the tables of res and writes its chart (opts.PNG) and raw
// results (opts.JSON).
func report(out io.Writer, res *results, scs []*scenario, opts options) error {
	o := res.Options
	placement := fmt.Sprintf("client CPU %d, server CPU %d", o.ClientCPU, o.ServerCPU)
	if o.ClientCPU == o.ServerCPU {
		placement = fmt.Sprintf("client and server on CPU %d", o.ClientCPU)
	}
	res.sums = nil
	titles, labels := map[string]string{}, map[string]map[string]string{}
	for _, sc := range scs {
		labels[sc.Name] = sc.Labels
		ss := summarizeScenario(res.Samples, sc.Name, allTests, sc.Modes, sc.Refs)
		if len(ss.Tests) == 0 {
			continue
		}
		res.sums = append(res.sums, ss)
		titles[sc.Name] = sc.Title + ", " + placement
		fmt.Fprintf(out, "\n### %s, %s\n\n", sc.Title, placement)
		writeTable(out, ss)
		fmt.Fprintln(out)
		names := sc.modeNames(o.Services)
		for _, m := range ss.Modes {
			fmt.Fprintf(out, "- %s\n", names[m])
		}
	}
	var tg strings.Builder
	if writeTargets(&tg, res.sums); tg.Len() > 0 { // none for a run of the service scenario alone
		fmt.Fprintf(out, "\n### Targets (issue 4)\n\n%s", &tg)
	}
	fmt.Fprintf(out, "\nLoad average (1, 5, 15 min, runnable/threads) before the run: %s; after: %s\n", res.Machine.LoadBefore, res.Machine.LoadAfter)
	if len(res.Profiles) > 0 {
		fmt.Fprintf(out, "\n### BPF run time (one more pass with BPF_ENABLE_STATS)\n\n")
		writeProfiles(out, res.Profiles)
	}
	if opts.PNG != "" {
		if err := writeChart(opts.PNG, res.sums, titles, labels); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		fmt.Fprintf(out, "\nChart: %s\n", opts.PNG)
	}
	if opts.JSON != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(opts.JSON, append(b, '\n'), 0o644)
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", opts.JSON, err)
		}
		fmt.Fprintf(out, "Raw results: %s\n", opts.JSON)
	}
	return nil
}

// replot prints the tables and writes the chart of the raw results a run
// wrote with --json, without measuring anything.
func replot(path string, opts options, out io.Writer) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	opts.JSON = "" // already there
	return report(out, &res, scenarios, opts)
}

// runScenario builds sc's modes, checks each path, runs the rounds and the
// statistics pass and removes everything again.
func runScenario(ctx context.Context, opts options, cfg loadConfig, sc *scenario, res *results, out io.Writer) (err error) {
	l, err := newLab(ctx, opts.ID)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", cerr))
		}
	}()
	var setups []*setup
	for _, m := range sc.Modes {
		start := time.Now()
		s, err := sc.build(l, m, opts.Services)
		if err != nil {
			return fmt.Errorf("build %s: %w", m, err)
		}
		if err := s.check(ctx, cfg); err != nil {
			return err
		}
		via := ""
		if s.Target.IsValid() {
			via = " via " + s.Target.String()
		}
		fmt.Fprintf(out, "%s %s: built and checked in %s (%s → %s %s%s)\n", sc.Name, m, time.Since(start).Round(time.Millisecond), s.Client.NetnsName, s.Server.NetnsName, s.Server.IP, via)
		setups = append(setups, s)
	}

	for r := 1; r <= opts.Rounds; r++ {
		for _, t := range opts.Tests {
			for _, s := range setups {
				m, err := runTest(ctx, cfg, t, s)
				if err != nil {
					return fmt.Errorf("round %d %s %s: %w", r, t, s.Mode, err)
				}
				res.Samples = append(res.Samples, sample{Scenario: sc.Name, Mode: s.Mode, Test: t, Round: r, Value: m.Value, Seconds: m.Seconds, Slowest: m.Slowest})
				slow := ""
				if m.Slowest > 0.1 {
					slow = fmt.Sprintf(" (slowest transaction %.2fs)", m.Slowest)
				}
				fmt.Fprintf(out, "%s round %d/%d %-10s %-8s %12s %s%s\n", sc.Name, r, opts.Rounds, t, s.Mode, formatValue(t, m.Value), unit(t), slow)
			}
		}
	}

	if !opts.BPFStats {
		return nil
	}
	var profiled []*setup
	for _, s := range setups {
		if len(s.Pins) > 0 {
			profiled = append(profiled, s)
		}
	}
	if len(profiled) == 0 {
		return nil
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		fmt.Fprintf(out, "%s: no BPF statistics pass: %v\n", sc.Name, err)
		return nil
	}
	defer stats.Close()
	for _, t := range opts.Tests {
		for _, s := range profiled {
			before, err := readProgStats(s.Pins)
			if err != nil {
				return err
			}
			m, err := runTest(ctx, cfg, t, s)
			if err != nil {
				return fmt.Errorf("BPF statistics pass %s %s: %w", t, s.Mode, err)
			}
			after, err := readProgStats(s.Pins)
			if err != nil {
				return err
			}
			p := profile{Scenario: sc.Name, Mode: s.Mode, Test: t, Value: m.Value, Seconds: m.Seconds, Programs: progDeltas(before, after)}
			res.Profiles = append(res.Profiles, p)
			runs, ns := p.totals()
			fmt.Fprintf(out, "%s BPF stats %-10s %-8s %12s %s, %d program runs, %.1f ms in BPF\n", sc.Name, t, s.Mode, formatValue(t, m.Value), unit(t), runs, float64(ns)/1e6)
		}
	}
	return nil
}

func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				m.MemGiB = float64(int(kb/1024/1024*10)) / 10
			}
		}
	}
	for _, t := range []struct {
		to   *string
		args []string
	}{{&m.Iperf3, []string{"iperf3", "--version"}}, {&m.Iptables, []string{"iptables", "--version"}}} {
		if b, err := exec.Command(t.args[0], t.args[1:]...).Output(); err == nil {
			*t.to, _, _ = strings.Cut(strings.TrimSpace(string(b)), "\n")
		}
	}
	m.LoadBefore = loadAvg()
	return m
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}
