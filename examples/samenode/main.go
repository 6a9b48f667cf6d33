// Command samenode shows eBPF host routing between two pods on one node.
//
// It builds a node network namespace with two pods, A (10.0.0.10) and B
// (10.0.0.11), wired by veth pairs lxcA and lxcB with /32 addresses and the
// gateway 169.254.1.1, puts both on a datapath, pings A→B and B→A with real
// ICMP echoes and prints what the host-side devices saw: with
// bpf_redirect_peer an echo request enters on the sender's lxc and lands
// directly in the destination pod, so the destination's lxc never
// transmits it. The demo checks that claim and fails if it does not hold.
// Then it removes everything it made.
//
// Run it as root:
//
//	go run ./examples/samenode             # bpf_redirect_peer
//	go run ./examples/samenode --fallback  # bpf_redirect: packets cross both veths
//	go run ./examples/samenode --keep      # leave it up to inspect
//
// The machine's root network namespace is never changed: everything lives
// in namespaces named hr-samenode-<random>-*, and the BPF objects are pinned
// under /sys/fs/bpf/hostrouting-samenode-<random>.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

// options configure one run of the demo.
type options struct {
	Fallback bool   // deliver with bpf_redirect through the host device (Disable.RedirectPeer)
	Keep     bool   // leave everything up after a successful run
	Count    int    // echo requests each way; default 5
	ID       string // names the namespaces and pin directory; default random
}

func main() {
	var opts options
	flag.BoolVar(&opts.Fallback, "fallback", false, "deliver with bpf_redirect to the destination's host device instead of bpf_redirect_peer")
	flag.BoolVar(&opts.Keep, "keep", false, "leave the node and pods up and print how to inspect and remove them")
	flag.IntVar(&opts.Count, "count", 5, "echo requests each way")
	flag.Parse()
	if flag.NArg() > 0 || opts.Count < 1 || opts.Count > 1000 {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "samenode:", err)
		os.Exit(1)
	}
}

// pod is one pod of the demo.
type pod struct {
	name   string // "A"
	ip     netip.Addr
	hostIf string // the node-side device
	netns  string // name under /var/run/netns
	path   string // path of the namespace
	veth   *routing.Veth
}

// counts are a host-side device's packet counters.
type counts struct{ rx, tx uint64 }

// run builds the node and pods, pings, prints and checks the counters, and
// removes everything unless opts.Keep — always when it fails or ctx ends.
func run(ctx context.Context, opts options, out io.Writer) (err error) {
	if opts.Count <= 0 {
		opts.Count = 5
	}
	if opts.ID == "" {
		b := make([]byte, 4)
		rand.Read(b)
		opts.ID = hex.EncodeToString(b)
	}
	prefix := "hr-samenode-" + opts.ID
	pinPath := filepath.Join(loader.DefaultBPFFS, "hostrouting-samenode-"+opts.ID)

	// Teardown runs what was set up in reverse, also on failure.
	var undo []func() error
	kept := false
	defer func() {
		if kept {
			return
		}
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i]())
		}
		if terr := errors.Join(errs...); terr != nil {
			err = errors.Join(err, fmt.Errorf("teardown: %w", terr))
		} else if len(undo) > 0 {
			fmt.Fprintf(out, "\nRemoved everything: the datapath and %s, the veths, the namespaces %s-*.\n", pinPath, prefix)
		}
	}()
	newNetns := func(name string) (string, error) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		path, err := routing.CreateNetns(name)
		if err != nil {
			return "", err
		}
		undo = append(undo, func() error { return routing.DeleteNetns(name) })
		return path, routing.DisableIPv6(path)
	}

	node, err := newNetns(prefix + "-node")
	if err != nil {
		return err
	}
	if err := routing.EnableForwarding(node); err != nil {
		return err
	}
	pods := []*pod{
		{name: "A", ip: netip.MustParseAddr("10.0.0.10"), hostIf: "lxcA", netns: prefix + "-a"},
		{name: "B", ip: netip.MustParseAddr("10.0.0.11"), hostIf: "lxcB", netns: prefix + "-b"},
	}
	for _, p := range pods {
		if p.path, err = newNetns(p.netns); err != nil {
			return err
		}
		p.veth, err = routing.SetupVeth(routing.VethConfig{
			HostNetns: node, HostIfName: p.hostIf, PodNetns: p.path, Addr: netip.PrefixFrom(p.ip, 32),
		})
		if err != nil {
			return err
		}
		undo = append(undo, func() error { return routing.DeleteVeth(node, p.hostIf) })
	}

	if err := ctx.Err(); err != nil {
		return err
	}
	undo = append(undo, func() error { return os.RemoveAll(pinPath) }) // should New fail halfway
	dp, err := datapath.New(datapath.Config{PinPath: pinPath, Netns: node, Disable: loader.Disable{RedirectPeer: opts.Fallback}})
	if err != nil {
		return err
	}
	undo = append(undo, dp.Remove)
	for _, p := range pods {
		if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: p.hostIf, IP: p.ip, MAC: p.veth.PodMAC}); err != nil {
			return err
		}
	}

	fmt.Fprintf(out, "Same-node host routing with %s\n", modeName(opts))
	fmt.Fprintf(out, "Node netns %s, pin path %s\n", prefix+"-node", pinPath)
	for _, p := range pods {
		fmt.Fprintf(out, "  pod %s %-10s netns %s  eth0 %s <-> %s (ifindex %d, %s)\n",
			p.name, p.ip, p.netns, p.veth.PodMAC, p.hostIf, p.veth.HostIfIndex, p.veth.HostMAC)
	}
	deltas, err := measure(ctx, out, node, pods, opts.Count)
	if err != nil {
		return err
	}
	if err := report(out, dp, pods, deltas, opts); err != nil {
		return err
	}
	if err := checkClaim(pods, deltas, opts); err != nil {
		return err
	}
	if opts.Keep {
		kept = true
		printKept(out, prefix, pinPath)
		return dp.Close()
	}
	return nil
}

// phases are the two ping directions, as source and destination indexes
// into the pods.
var phases = [][2]int{{0, 1}, {1, 0}}

func modeName(opts options) string {
	if opts.Fallback {
		return "bpf_redirect to the host device (--fallback)"
	}
	return "bpf_redirect_peer"
}

// measure pings in both directions and returns, per phase and per pod, how
// the counters of the pod's host-side device moved.
func measure(ctx context.Context, out io.Writer, node string, pods []*pod, count int) ([][2]counts, error) {
	// One echo each way first, so that both pods know the gateway's MAC and
	// no ARP exchange shows up in the counters.
	for _, ph := range phases {
		if err := pingAll(ctx, pods[ph[0]], pods[ph[1]], 1); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	fmt.Fprintf(out, "\nPinging with %d ICMP echo requests each way (after one warm-up echo each way):\n", count)
	deltas := make([][2]counts, len(phases))
	for i, ph := range phases {
		before, err := linkCounts(node, pods)
		if err != nil {
			return nil, err
		}
		if err := pingAll(ctx, pods[ph[0]], pods[ph[1]], count); err != nil {
			return nil, err
		}
		after, err := linkCounts(node, pods)
		if err != nil {
			return nil, err
		}
		for j := range pods {
			deltas[i][j] = counts{after[j].rx - before[j].rx, after[j].tx - before[j].tx}
		}
		fmt.Fprintf(out, "  %s → %s: %d/%d replies\n", pods[ph[0]].name, pods[ph[1]].name, count, count)
	}
	return deltas, nil
}

// report prints the device counters with what they show, the endpoint
// counters, the status and the endpoint list.
func report(out io.Writer, dp *datapath.Datapath, pods []*pod, deltas [][2]counts, opts options) error {
	fmt.Fprintf(out, "\nHost-side device packets (netlink link statistics in the node netns, deltas):\n")
	fmt.Fprintf(out, "             lxcA (pod A)     lxcB (pod B)\n")
	fmt.Fprintf(out, "             %6s %6s    %6s %6s\n", "RX", "TX", "RX", "TX")
	for i, ph := range phases {
		d := deltas[i]
		fmt.Fprintf(out, "  %s → %s      %6d %6d    %6d %6d\n", pods[ph[0]].name, pods[ph[1]].name, d[0].rx, d[0].tx, d[1].rx, d[1].tx)
	}
	if opts.Fallback {
		fmt.Fprintln(out, "Echo requests entered on the sender's lxc (RX) and bpf_redirect sent them out of the\n"+
			"destination's lxc (TX), across its veth into the pod; replies did the same the other way:\n"+
			"every packet crosses both host-side devices.")
	} else {
		fmt.Fprintln(out, "Echo requests entered on the sender's lxc (RX) and bpf_redirect_peer put them straight into\n"+
			"the destination pod's netns: the destination's lxc transmitted none of them (TX 0). Replies took\n"+
			"the same shortcut back, so each lxc device sees only half of the ICMP exchange: what its own pod\n"+
			"sends (as tcpdump on the lxc devices of a kind node running Cilium shows).")
	}

	fmt.Fprintln(out, "\nEndpoint counters (dp.EndpointStats, since AddEndpoint, warm-up included):")
	for _, p := range pods {
		s, err := dp.EndpointStats(p.ip)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  %-10s from %3d packets %6d bytes   to %3d packets %6d bytes   drop %d\n",
			p.ip, s.FromPackets, s.FromBytes, s.ToPackets, s.ToBytes, s.DropPackets)
	}

	st, err := dp.Status()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\n%sDatapath Counters:\n", st)
	st.Metrics.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
		fmt.Fprintf(out, "  %-15s %-17s %10d packets %12d bytes\n", d.String()+":", m, c.Packets, c.Bytes)
	})
	eps, err := dp.Endpoints()
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\nEndpoint list:")
	for _, ep := range eps {
		fmt.Fprintln(out, ep)
	}
	return nil
}

// checkClaim checks the demo's own claim on the destination's lxc TX
// counter: none of the echo requests went through it with
// bpf_redirect_peer, all of them did with the fallback.
func checkClaim(pods []*pod, deltas [][2]counts, opts options) error {
	for i, ph := range phases {
		src, dst := pods[ph[0]], pods[ph[1]]
		tx := deltas[i][ph[1]].tx
		switch {
		case !opts.Fallback && tx != 0:
			return fmt.Errorf("claim failed: %s transmitted %d packets while %s pinged %s: the echo requests went through the destination's host-side veth",
				dst.hostIf, tx, src.name, dst.name)
		case opts.Fallback && tx < uint64(opts.Count):
			return fmt.Errorf("claim failed: %s transmitted only %d packets while %s sent %d echo requests to %s through it",
				dst.hostIf, tx, src.name, opts.Count, dst.name)
		}
	}
	return nil
}

// pingAll pings dst from src count times, allowing a second per echo, and
// fails unless every one is answered.
func pingAll(ctx context.Context, src, dst *pod, count int) error {
	opts := netcheck.PingOptions{Count: count, Timeout: time.Duration(count+1) * time.Second}
	if err := netcheck.PingAll(ctx, src.path, dst.ip, opts); err != nil {
		return fmt.Errorf("%s → %s: %w", src.name, dst.name, err)
	}
	return nil
}

// linkCounts reads the packet counters of each pod's host-side device.
func linkCounts(node string, pods []*pod) ([]counts, error) {
	h, err := routing.Handle(node)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var c []counts
	for _, p := range pods {
		l, err := h.LinkByName(p.hostIf)
		if err != nil {
			return nil, fmt.Errorf("read counters of %s: %w", p.hostIf, err)
		}
		s := l.Attrs().Statistics
		c = append(c, counts{s.RxPackets, s.TxPackets})
	}
	return c, nil
}

// printKept tells how to look at what --keep left running and how to
// remove it.
func printKept(out io.Writer, prefix, pinPath string) {
	node := prefix + "-node"
	fmt.Fprintf(out, `
Left running (--keep). Inspect it with:
  ip netns exec %[1]s ip -s link show lxcB
  ip netns exec %[1]s tcpdump -ni lxcB         # and meanwhile, a TCP SYN from pod A to B:
  ip netns exec %[3]s-a bash -c 'echo >/dev/tcp/10.0.0.11/80'   # lxcB shows B's RST, never A's SYN
  ls -R %[2]s     # maps, programs, one tcx link per device and program
  bpftool link show pinned %[2]s/links/<name>
  go -C examples/hrctl run . --pin-path %[2]s status
  go -C examples/hrctl run . --pin-path %[2]s endpoint list
  go -C examples/hrctl run . --pin-path %[2]s endpoint stats
  bpftool prog show pinned %[2]s/progs/from_container
  bpftool map dump pinned %[2]s/hr_endpoints
Remove it with:
  rm -r %[2]s && ip netns del %[1]s && ip netns del %[3]s-a && ip netns del %[3]s-b
`, node, pinPath, prefix)
}
