package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/internal/leakcheck"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/internal/topology"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// Names of everything a run makes: namespaces hr-bench-<id>-* and pin
// directories /sys/fs/bpf/hostrouting-bench-<id>-*; names finds them.
const netnsPrefix = "hr-bench-"

var (
	pinPrefix = filepath.Join(loader.DefaultBPFFS, "hostrouting-bench-")
	names     = leakcheck.Names{Netns: netnsPrefix, Pins: pinPrefix}
)

// The addressing: pods in 10.0.0.0/8, nodes on a wire 172.18.0.0/16 as in
// a kind cluster on the docker bridge (topology.Gateway). They exist only
// in the run's namespaces.
var nativeRouting = netip.MustParsePrefix("10.0.0.0/8")

// lab makes namespaces and pin directories named for one run and removes
// them again in reverse order. It refuses to work in a namespace that is
// the machine's root one or the one the benchmark was started in.
type lab struct {
	ctx       context.Context
	id        string         // the run's ID
	forbidden []unix.Stat_t  // netns files never to work in
	undo      []func() error // run in reverse by close
	wire      *topology.Wire // the cross-node scenario's, made by its first mode
}

func newLab(ctx context.Context, id string) (*lab, error) {
	forbidden, err := forbiddenNetns()
	if err != nil {
		return nil, err
	}
	return &lab{ctx: ctx, id: id, forbidden: forbidden}, nil
}

// initialNetns is the network namespace the process started in, read
// before any thread could move: later, /proc/self/ns/net (the main
// thread's) need not be it any more.
var initialNetns, initialNetnsErr = func() (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Stat("/proc/thread-self/ns/net", &st)
	return st, err
}()

// forbiddenNetns returns the network namespaces the benchmark must never
// work in: the one it started in (the root one when run plainly) and PID
// 1's where this process may see it.
func forbiddenNetns() ([]unix.Stat_t, error) {
	if initialNetnsErr != nil {
		return nil, fmt.Errorf("stat own netns: %w", initialNetnsErr)
	}
	ns := []unix.Stat_t{initialNetns}
	var st unix.Stat_t
	err := unix.Stat("/proc/1/ns/net", &st)
	switch {
	case err == nil:
		ns = append(ns, st)
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		// Hidden from us: the namespace we started in stands for it.
	default:
		return nil, fmt.Errorf("stat /proc/1/ns/net: %w", err)
	}
	return ns, nil
}

// netnsID formats a namespace file's identity for the subcommands'
// -forbid-netns.
func netnsID(st unix.Stat_t) string { return fmt.Sprintf("%d:%d", st.Dev, st.Ino) }

// close removes everything made, the last first, and returns the errors.
func (l *lab) close() error {
	var errs []error
	for i := len(l.undo) - 1; i >= 0; i-- {
		errs = append(errs, l.undo[i]())
	}
	l.undo = nil
	return errors.Join(errs...)
}

// netns makes the namespace hr-bench-<id>-name with lo up and IPv6 off and
// checks that it is a namespace of its own.
func (l *lab) netns(name string) (peer, error) {
	nsName := netnsPrefix + l.id + "-" + name
	path, err := topology.NewNetns(l.ctx, nsName, l.guard)
	if err != nil {
		return peer{}, err
	}
	l.undo = append(l.undo, func() error { return routing.DeleteNetns(nsName) })
	return peer{NetnsName: nsName, Path: path}, nil
}

// guard fails unless path is one of the run's namespaces and not the root
// namespace or the benchmark's own: every change goes through a path that
// passed it.
func (l *lab) guard(path string) error {
	if !strings.HasPrefix(path, filepath.Join(routing.NetnsDir, netnsPrefix+l.id)+"-") {
		return fmt.Errorf("refusing to work in %q: not one of this run's namespaces", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	for _, f := range l.forbidden {
		if st.Ino == f.Ino && st.Dev == f.Dev {
			return fmt.Errorf("refusing to work in %s: it is the root network namespace or the benchmark's own", path)
		}
	}
	return nil
}

// pinPath returns the pin directory hostrouting-bench-<id>-name and
// removes it on close, should the datapath's Remove not run.
func (l *lab) pinPath(name string) string {
	p := pinPrefix + l.id + "-" + name
	l.undo = append(l.undo, func() error { return os.RemoveAll(p) })
	return p
}

// newDatapath starts host routing in the namespace of n, pinned at the
// returned pin directory and removed on close.
func (l *lab) newDatapath(n peer, pinName string, cfg datapath.Config) (*datapath.Datapath, string, error) {
	if err := l.guard(n.Path); err != nil {
		return nil, "", err
	}
	if err := l.ctx.Err(); err != nil {
		return nil, "", err
	}
	cfg.PinPath, cfg.Netns = l.pinPath(pinName), n.Path
	dp, err := datapath.New(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("datapath in %s: %w", n.NetnsName, err)
	}
	l.undo = append(l.undo, dp.Remove)
	return dp, cfg.PinPath, nil
}

// iptablesRestore loads rules into the namespace n with `ip netns exec N
// iptables-restore`.
func (l *lab) iptablesRestore(n peer, rules string) error {
	if err := l.guard(n.Path); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.NetnsName, "iptables-restore", "-w")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore in %s: %w\n%s", n.NetnsName, err, out)
	}
	return nil
}

// loadKubeProxy loads a kube-proxy rule set of services services, and
// the measured ones last (see kubeProxyRules), into node and checks that
// it is there.
func (l *lab) loadKubeProxy(node peer, services int, measured []kubeService) error {
	if err := l.iptablesRestore(node, kubeProxyRules(services, nativeRouting.String(), measured)); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(l.ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", node.NetnsName, "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES").CombinedOutput()
	if err != nil {
		return fmt.Errorf("list KUBE-SERVICES in %s: %w\n%s", node.NetnsName, err, out)
	}
	if n, want := strings.Count(string(out), "-A KUBE-SERVICES "), services+len(measured)+1; n != want {
		return fmt.Errorf("%s: KUBE-SERVICES has %d rules, want %d", node.NetnsName, n, want)
	}
	return nil
}

// conntrackCount reads nf_conntrack_count in the namespace n: how many
// flows conntrack tracks there.
func conntrackCount(n peer) (int, error) {
	var b []byte
	err := routing.Do(n.Path, func() (err error) {
		b, err = os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("%s: read nf_conntrack_count: %w", n.NetnsName, err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// addrUp puts addr on the device ifname in the namespace at nsPath and sets
// it up.
func addrUp(nsPath, ifname string, addr netip.Prefix) error {
	h, err := routing.Handle(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err == nil {
		err = h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}})
	}
	if err == nil {
		err = h.LinkSetUp(link)
	}
	if err != nil {
		return fmt.Errorf("set up %s with %s: %w", ifname, addr, err)
	}
	return nil
}

// vethBetween connects a and b with a veth pair, each end named eth0 and
// addressed on one subnet: the limit of same-node pod-to-pod, without a
// node in between.
func (l *lab) vethBetween(a, b peer, aAddr, bAddr netip.Prefix) error {
	for _, p := range []peer{a, b} {
		if err := l.guard(p.Path); err != nil {
			return err
		}
	}
	bNs, err := netns.GetFromPath(b.Path)
	if err != nil {
		return fmt.Errorf("open %s: %w", b.NetnsName, err)
	}
	defer bNs.Close()
	h, err := routing.Handle(a.Path)
	if err != nil {
		return err
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = "eth0", 1500
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(bNs)}); err != nil {
		return fmt.Errorf("veth between %s and %s: %w", a.NetnsName, b.NetnsName, err)
	}
	if err := addrUp(a.Path, "eth0", aAddr); err != nil {
		return err
	}
	return addrUp(b.Path, "eth0", bAddr)
}

// newWire makes the cross-node scenario's wire, hr-bench-<id>-cross-wire,
// whose nodes are namespaces hr-bench-<id>-cross-<name>; close removes it
// with its nodes.
func (l *lab) newWire() (*topology.Wire, error) {
	w, err := topology.NewWire(l.ctx, topology.Options{Prefix: netnsPrefix + l.id + "-cross", Check: l.guard})
	if err != nil {
		return nil, err
	}
	l.undo = append(l.undo, w.Close)
	return w, nil
}

// pod makes the pod namespace name with the address ip, wired to node by a
// veth pair (routing.SetupVeth: ptp-like /32 and a route in the node).
func (l *lab) pod(node peer, name, hostIf string, ip netip.Addr) (peer, *routing.Veth, error) {
	p, err := l.netns(name)
	if err != nil {
		return peer{}, nil, err
	}
	if err := l.guard(node.Path); err != nil {
		return peer{}, nil, err
	}
	veth, err := routing.SetupVeth(routing.VethConfig{HostNetns: node.Path, HostIfName: hostIf, PodNetns: p.Path, Addr: netip.PrefixFrom(ip, 32)})
	if err != nil {
		return peer{}, nil, err
	}
	p.IP = ip
	return p, veth, nil
}

// cgroup makes the cgroup v2 directory hr-bench-<id>-name below the
// cgroup2 mount, for the socket load balancer and the client processes it
// balances (never the machine's root cgroup), and removes it on close,
// once the processes started into it have exited.
func (l *lab) cgroup(name string) (string, error) {
	root, err := loader.Cgroup2Root()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, netnsPrefix+l.id+"-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", fmt.Errorf("make cgroup: %w", err)
	}
	l.undo = append(l.undo, func() error { return removeCgroup(dir) })
	return dir, nil
}

// removeCgroup removes the cgroup dir, waiting up to 5s for the processes
// in it to be gone (a client killed on failure may still be exiting).
func removeCgroup(dir string) error {
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leftovers returns what the run id left behind: its namespaces, pin
// directories and cgroups.
func leftovers(id string) []string {
	left := names.Leftovers(id)
	if root, err := loader.Cgroup2Root(); err == nil {
		m, _ := filepath.Glob(filepath.Join(root, netnsPrefix+id+"-*"))
		left = append(left, m...)
	}
	return left
}

// node makes a node namespace with forwarding on and rp_filter off.
func (l *lab) node(name string) (peer, error) {
	n, err := l.netns(name)
	if err != nil {
		return peer{}, err
	}
	return n, routing.EnableForwarding(n.Path)
}

// waitUp waits until each device, given as namespace path and name, is
// operationally up, so no first packet is lost.
func (l *lab) waitUp(devs ...[2]string) error {
	for _, d := range devs {
		if err := netcheck.WaitOperUp(l.ctx, d[0], d[1], 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// setup is one mode of a scenario, built and ready for the load.
type setup struct {
	Scenario, Mode string
	Client, Server peer
	// Target is the address the client dials, such as a service's
	// ClusterIP; the zero value dials Server.IP.
	Target netip.Addr
	// Cgroup is the cgroup v2 directory the client's processes start in
	// (the socket load balancer's); empty leaves them in the benchmark's.
	Cgroup    string
	Pins      []string // pin directories of the datapaths on the path, for BPF stats
	dps       []*datapath.Datapath
	ctNodes   []peer       // nodes whose conntrack must track the flows (legacy)
	pathCheck func() error // after the connectivity check: did the packets take the mode's path?
}

// target returns the address the client dials.
func (s *setup) target() netip.Addr {
	if s.Target.IsValid() {
		return s.Target
	}
	return s.Server.IP
}

// check pings from client to server and checks the path the packets took;
// with a Target, it then runs a short TCP_RR to it as the load will (from
// the Cgroup) before pathCheck looks at how the mode translated it.
func (s *setup) check(ctx context.Context, cfg loadConfig) error {
	before, err := s.metrics()
	if err != nil {
		return err
	}
	if err := netcheck.PingAll(ctx, s.Client.Path, s.Server.IP, netcheck.PingOptions{Count: 3, Timeout: 5 * time.Second}); err != nil {
		return fmt.Errorf("%s %s: ping %s → %s: %w", s.Scenario, s.Mode, s.Client.NetnsName, s.Server.IP, err)
	}
	after, err := s.metrics()
	if err != nil {
		return err
	}
	for i := range s.dps {
		after[i] = after[i].Sub(before[i])
	}
	if err := s.checkPath(after); err != nil {
		return fmt.Errorf("%s %s: %w", s.Scenario, s.Mode, err)
	}
	if s.Target.IsValid() {
		cfg.Duration, cfg.Warmup = 200*time.Millisecond, 0
		m, err := runTest(ctx, cfg, testRR, s)
		if err == nil && m.Value <= 0 {
			err = errors.New("no transaction")
		}
		if err != nil {
			return fmt.Errorf("%s %s: TCP_RR %s → %s: %w", s.Scenario, s.Mode, s.Client.NetnsName, s.Target, err)
		}
	}
	if s.pathCheck != nil {
		if err := s.pathCheck(); err != nil {
			return fmt.Errorf("%s %s: %w", s.Scenario, s.Mode, err)
		}
	}
	for _, n := range s.ctNodes {
		c, err := conntrackCount(n)
		if err != nil {
			return err
		}
		if c == 0 {
			return fmt.Errorf("%s %s: conntrack tracks no flow in %s", s.Scenario, s.Mode, n.NetnsName)
		}
	}
	return nil
}

func (s *setup) metrics() ([]*maps.MetricTable, error) {
	var all []*maps.MetricTable
	for _, dp := range s.dps {
		m, err := dp.Metrics()
		if err != nil {
			return nil, err
		}
		all = append(all, m)
	}
	return all, nil
}

// checkPath checks, from the datapaths' counter deltas of three echo
// requests and replies, that they took the mode's path: bpf_redirect_peer
// into the pods with host routing, bpf_redirect to the host device with
// the fallback, bpf_fib_lookup out of the node across nodes.
func (s *setup) checkPath(d []*maps.MetricTable) error {
	const least = 3
	c := func(i int, m maps.Metric) uint64 { return d[i].Total(m).Packets }
	switch {
	case (s.Mode == modeBPF || s.Scenario == scenarioService) && len(d) == 1:
		if c(0, maps.MetricForwardPeer) < 2*least {
			return fmt.Errorf("forward-peer counted %d packets, want at least %d", c(0, maps.MetricForwardPeer), 2*least)
		}
	case s.Mode == modeFallback && len(d) == 1:
		if c(0, maps.MetricForwardRedirect) < 2*least || c(0, maps.MetricForwardPeer) != 0 {
			return fmt.Errorf("forward-redirect counted %d and forward-peer %d packets, want at least %d and 0",
				c(0, maps.MetricForwardRedirect), c(0, maps.MetricForwardPeer), 2*least)
		}
	case s.Mode == modeFallback && len(d) == 2:
		for i := range d {
			if c(i, maps.MetricForwardFIB) < least || c(i, maps.MetricForwardNeigh) != 0 || c(i, maps.MetricForwardPeer) < least {
				return fmt.Errorf("node%d forwarded %d packets with bpf_fib_lookup + bpf_redirect and %d with bpf_redirect_neigh, delivered %d with bpf_redirect_peer: want at least %d, 0, at least %d",
					i+1, c(i, maps.MetricForwardFIB), c(i, maps.MetricForwardNeigh), c(i, maps.MetricForwardPeer), least, least)
			}
		}
	case s.Mode == modeBPF && len(d) == 2:
		for i := range d {
			out := c(i, maps.MetricForwardFIB) + c(i, maps.MetricForwardNeigh)
			if out < least || c(i, maps.MetricForwardPeer) < least {
				return fmt.Errorf("node%d forwarded %d packets with bpf_fib_lookup and delivered %d with bpf_redirect_peer, want at least %d each",
					i+1, out, c(i, maps.MetricForwardPeer), least)
			}
		}
	}
	return nil
}
