package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// peer is one end of the load: a namespace and, for the server, the
// address it listens on.
type peer struct {
	NetnsName string     // name under /var/run/netns
	Path      string     // path of the namespace
	IP        netip.Addr // the address the server listens on and the client connects to
}

// loadConfig is how every test runs, the same in every mode.
type loadConfig struct {
	Exe       string // this binary, re-executed for rr-server and rr-client
	ClientCPU int
	ServerCPU int
	Duration  time.Duration
	Warmup    time.Duration // of TCP_RR and TCP_CRR, not measured
	Size      int           // TCP_RR and TCP_CRR request and response bytes
	Forbid    []string      // namespaces the subcommands refuse to run in, as netnsID formats them
}

// The servers' ports.
const (
	portStream = 5201
	portRR     = 12865
	portCRR    = 12866
)

// measured is what one test measured.
type measured struct {
	Value   float64 // bits/s for TCP_STREAM, transactions/s otherwise
	Seconds float64 // measured time
	Slowest float64 // seconds the slowest transaction took; 0 for TCP_STREAM
}

// runTest runs test from s's client to its server: the client dials
// s.target() from s.Cgroup, the server listens on s.Server.IP.
func runTest(ctx context.Context, cfg loadConfig, test string, s *setup) (measured, error) {
	switch test {
	case testStream:
		return runStream(ctx, cfg, s)
	case testRR:
		return runRR(ctx, cfg, false, s)
	case testCRR:
		return runRR(ctx, cfg, true, s)
	}
	return measured{}, fmt.Errorf("unknown test %q", test)
}

// inCgroup makes cmd start in the cgroup v2 directory dir (clone3 with
// CLONE_INTO_CGROUP: the process and its children are in it from their
// first instruction), unless dir is empty. The returned function closes
// the directory; call it once cmd has started.
func inCgroup(cmd *exec.Cmd, dir string) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	return func() { f.Close() }, nil
}

// streamSeconds is the duration iperf3 runs: it takes whole seconds.
func streamSeconds(d time.Duration) int {
	return max(1, int(math.Round(d.Seconds())))
}

// runStream runs iperf3: the server once (-1) in the server's namespace,
// the client in the client's (and cgroup), each pinned with -A, and
// returns the bits per second the receiver counted.
func runStream(ctx context.Context, cfg loadConfig, s *setup) (measured, error) {
	client, server := s.Client, s.Server
	secs := streamSeconds(cfg.Duration)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	port := strconv.Itoa(portStream)

	srv := exec.CommandContext(ctx, "ip", "netns", "exec", server.NetnsName,
		"iperf3", "-s", "-1", "-A", strconv.Itoa(cfg.ServerCPU), "-B", server.IP.String(), "-p", port)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return measured{}, fmt.Errorf("start iperf3 server: %w", err)
	}
	stop := stopper(srv, 5*time.Second)
	defer stop()
	if err := waitListening(ctx, srv.Process.Pid, server.Path, portStream); err != nil {
		return measured{}, fmt.Errorf("iperf3 server: %w\n%s", err, &srvOut)
	}

	cli := exec.CommandContext(ctx, "ip", "netns", "exec", client.NetnsName,
		"iperf3", "-c", s.target().String(), "-p", port, "-A", strconv.Itoa(cfg.ClientCPU), "-t", strconv.Itoa(secs), "-J")
	var stderr bytes.Buffer
	cli.Stderr = &stderr
	done, err := inCgroup(cli, s.Cgroup)
	if err != nil {
		return measured{}, err
	}
	out, err := cli.Output()
	done()
	if ctx.Err() != nil {
		return measured{}, context.Cause(ctx)
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Seconds       float64 `json:"seconds"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &r); jerr != nil || r.Error != "" || err != nil {
		return measured{}, fmt.Errorf("iperf3 client: %v %s\n%s%s", errors.Join(err, jerr), r.Error, &stderr, &srvOut)
	}
	if err := stop(); err != nil {
		return measured{}, fmt.Errorf("iperf3 server: %w\n%s", err, &srvOut)
	}
	return measured{Value: r.End.SumReceived.BitsPerSecond, Seconds: r.End.SumReceived.Seconds}, nil
}

// runRR runs this binary's rr-server in the server's namespace and
// rr-client in the client's (and cgroup), each pinned with taskset, and
// returns the client's transactions per second.
func runRR(ctx context.Context, cfg loadConfig, crr bool, s *setup) (measured, error) {
	client, server := s.Client, s.Server
	ctx, cancel := context.WithTimeout(ctx, cfg.Warmup+cfg.Duration+30*time.Second)
	defer cancel()
	port := portRR
	if crr {
		port = portCRR
	}
	common := []string{"-size", strconv.Itoa(cfg.Size)}
	if crr {
		common = append(common, "-crr")
	}
	for _, f := range cfg.Forbid {
		common = append(common, "-forbid-netns", f)
	}

	srvArgs := append([]string{"netns", "exec", server.NetnsName, "taskset", "-c", strconv.Itoa(cfg.ServerCPU),
		cfg.Exe, "rr-server", "-addr", netip.AddrPortFrom(server.IP, uint16(port)).String(),
		"-timeout", (cfg.Warmup + cfg.Duration + 60*time.Second).String()}, common...)
	srv := exec.CommandContext(ctx, "ip", srvArgs...)
	var srvErr bytes.Buffer
	srv.Stderr = &srvErr
	pipe, err := srv.StdoutPipe()
	if err != nil {
		return measured{}, err
	}
	if err := srv.Start(); err != nil {
		return measured{}, fmt.Errorf("start rr-server: %w", err)
	}
	stop := stopper(srv, 0)
	defer stop()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(pipe).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "listening" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			stop()
			return measured{}, fmt.Errorf("rr-server: %w\n%s", err, &srvErr)
		}
	case <-time.After(10 * time.Second):
		stop()
		return measured{}, fmt.Errorf("rr-server did not listen within 10s\n%s", &srvErr)
	case <-ctx.Done():
		return measured{}, context.Cause(ctx)
	}

	cliArgs := append([]string{"netns", "exec", client.NetnsName, "taskset", "-c", strconv.Itoa(cfg.ClientCPU),
		cfg.Exe, "rr-client", "-addr", netip.AddrPortFrom(s.target(), uint16(port)).String(),
		"-duration", cfg.Duration.String(), "-warmup", cfg.Warmup.String()}, common...)
	cli := exec.CommandContext(ctx, "ip", cliArgs...)
	var cliErr bytes.Buffer
	cli.Stderr = &cliErr
	done, err := inCgroup(cli, s.Cgroup)
	if err != nil {
		return measured{}, err
	}
	out, err := cli.Output()
	done()
	if ctx.Err() != nil {
		return measured{}, context.Cause(ctx)
	}
	var r rrResult
	if jerr := json.Unmarshal(out, &r); err != nil || jerr != nil || r.Seconds <= 0 {
		return measured{}, fmt.Errorf("rr-client: %v\n%s%s", errors.Join(err, jerr), &cliErr, &srvErr)
	}
	return measured{Value: float64(r.Transactions) / r.Seconds, Seconds: r.Seconds, Slowest: r.MaxSeconds}, nil
}

// stopper returns a function that waits up to grace for cmd, a child this
// process started, to exit, then kills it by its PID and waits for it;
// calling it again returns the first result. An exit the kill caused is
// not an error.
func stopper(cmd *exec.Cmd, grace time.Duration) func() error {
	var done bool
	var err error
	return func() error {
		if done {
			return err
		}
		done = true
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err = <-exited:
			return err
		case <-time.After(grace):
		}
		cmd.Process.Kill()
		<-exited
		return nil
	}
}

// waitListening waits until the process pid, inside the namespace at
// nsPath, listens on TCP port: for servers that say nothing when ready.
// It reads the process's own /proc/PID/net/tcp only once the process has
// entered the namespace, so a listener elsewhere cannot fool it.
func waitListening(ctx context.Context, pid int, nsPath string, port int) error {
	var want unix.Stat_t
	if err := unix.Stat(nsPath, &want); err != nil {
		return err
	}
	suffix := fmt.Sprintf(":%04X", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			tcp, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
			if err == nil {
				for _, line := range strings.Split(string(tcp), "\n")[1:] {
					f := strings.Fields(line)
					if len(f) > 3 && strings.HasSuffix(f[1], suffix) && f[3] == "0A" { // TCP_LISTEN
						return nil
					}
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on port %d after 10s", port)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
