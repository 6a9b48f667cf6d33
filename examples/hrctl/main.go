// Command hrctl inspects a hostrouting node through its pin directory, as
// `cilium status` and `cilium bpf endpoint list` inspect a Cilium node,
// manages the node's routes to other nodes and its services, and removes
// endpoints and whole nodes left behind. It runs inside the node's network
// namespace and adopts the pinned datapath with datapath.Open, which never
// loads or attaches programs: status, endpoint list, stats and get, service
// list, ct list and nat list only read; node add and node del change the
// direct routes to other nodes' pod CIDRs (datapath.UpsertNode,
// datapath.DeleteNode); socket-lb moves socket-level load balancing
// (datapath.SetSocketLB); service update and service delete change the
// node's services (datapath.UpsertService, datapath.DeleteService), as
// `cilium service update` and `cilium service delete` do; ct flush removes
// conntrack entries, as `cilium bpf ct flush` does; endpoint delete takes
// an endpoint off the node (datapath.RemoveEndpoint), for a pod that is
// gone without its CNI DEL; cleanup removes the node, as `cilium-dbg
// cleanup` does (datapath.Cleanup), also one that no longer opens.
//
// Usage:
//
//	hrctl [--pin-path DIR] [--json] status [--verbose]
//	hrctl [--pin-path DIR] [--json] endpoint list
//	hrctl [--pin-path DIR] [--json] endpoint stats
//	hrctl [--pin-path DIR] [--json] endpoint get IP
//	hrctl [--pin-path DIR] endpoint delete IP
//	hrctl [--pin-path DIR] node add --name N --ip IP --pod-cidr CIDR[,CIDR...]
//	hrctl [--pin-path DIR] node del --name N
//	hrctl [--pin-path DIR] [--json] node list
//	hrctl [--pin-path DIR] [--json] service list
//	hrctl [--pin-path DIR] [--json] service update [--id N] --frontend IP:PORT --backends IP:PORT[,IP:PORT...]
//	      [--type ClusterIP|NodePort|ExternalIP] [--protocol tcp|udp] [--local] [--internal-local] [--affinity DURATION]
//	      [--terminating IP:PORT[,IP:PORT...]]
//	hrctl [--pin-path DIR] service delete --id N
//	hrctl [--pin-path DIR] [--json] monitor [--type all|drop|trace] [--aggregate none|connection] [--from ID] [--pcap FILE] [--capture N] [--count N] [-v]
//	hrctl [--pin-path DIR] [--json] metrics
//	hrctl [--pin-path DIR] [--json] map list
//	hrctl [--pin-path DIR] serve-metrics --listen ADDR [--endpoints]
//	hrctl [--pin-path DIR] socket-lb --cgroup DIR | --off
//	hrctl [--pin-path DIR] [--json] ct list
//	hrctl [--pin-path DIR] [--json] ct flush [--ip IP]
//	hrctl [--pin-path DIR] [--json] nat list
//	hrctl [--pin-path DIR] cleanup [-f|--force]
//
// Flags may also follow the command and its argument; --pod-cidr,
// --backends and --terminating may repeat. node add is idempotent and
// converges the node on exactly the pod CIDRs given. service update
// creates the service, or replaces the one with its --id or frontend (ID 0
// or no --id picks the lowest free ID), and prints its ID; --local is
// externalTrafficPolicy Local (NodePort and ExternalIP services only),
// --internal-local internalTrafficPolicy Local,
// --affinity sessionAffinity ClientIP with that timeout, --terminating
// names those of --backends that keep their flows and take no new ones.
// node add refuses a pod CIDR holding an endpoint of this node (its own
// pods are no other node's). socket-lb
// puts socket-level load balancing on a cgroup v2 directory (the
// cgroup2 root, e.g. /sys/fs/cgroup, for the whole node), moving it from
// the one it was on, or takes it off (--off). monitor turns the node's
// event reports on (every decision, drops only, or per connection with
// --aggregate connection; -v adds conntrack and LB steps), prints them until
// interrupted or --count events, with --pcap writes their packets for
// tcpdump -r — those host routing moves past tcpdump on the veths — and
// puts the reports back as they were (--json: an object per event and
// line). metrics prints the
// datapath's counters by reason and direction, map list each map's fill
// level and memory; serve-metrics serves them to Prometheus (package
// datapath/metrics) until interrupted. ct flush
// removes every conntrack entry, or with --ip those whose tuple has that
// address, and prints how many; the source NAT table stays. cleanup lists
// what it removes and, when stdin is a terminal and --force is not given,
// asks before it removes anything; it leaves whatever the node did not
// make, and finding no node is not an error. Exit codes: 0 on success, 1
// when the node cannot be read or refuses a change (or cleanup is
// declined), 2 on a usage error.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/metrics"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// options are hrctl's flags: pinPath and json for every command, node for
// the node commands that take it, ip for the endpoint commands' argument
// and ct flush's --ip, force for cleanup, svc for service update and
// delete, cgroup and off for socket-lb.
type options struct {
	pinPath string
	json    bool
	node    datapath.Node
	ip      netip.Addr
	force   bool
	svc     datapath.Service
	idSet   bool             // --id was given
	term    []netip.AddrPort // service update --terminating
	cgroup  string           // socket-lb --cgroup
	off     bool             // socket-lb --off
	listen  string           // serve-metrics --listen
	perEP   bool             // serve-metrics --endpoints
	verbose bool             // status --verbose
	mon     monitorOptions
}

// command is one hrctl command; add new ones to commands.
type command struct {
	name    string // the words naming it: "endpoint list"
	args    string // its argument and own flags, for usage: "--name N", "IP"
	summary string
	// flags registers the command's own flags; nil for none.
	flags func(fs *flag.FlagSet, o *options)
	// arg parses the command's one argument, named first in args ("IP"):
	// its error is a usage error. nil for a command without one.
	arg func(s string, o *options) error
	// check validates them after parsing: its error is a usage error.
	check func(o *options) error
	// run runs the command on the node at --pin-path, opened for it.
	run func(dp *datapath.Datapath, o options, w io.Writer) error
	// runMaps, in place of run, runs a command on the node's maps: the
	// conntrack and NAT commands, which the datapath API does not cover.
	runMaps func(m instance.Maps, o options, w io.Writer) error
	// runAt, in place of run, runs a command that opens the node itself:
	// cleanup, which must also work on a node that does not open.
	runAt func(o options, s stdio) error
}

var commands = []command{
	{name: "status", args: "[--verbose]",
		summary: "host routing mode, kernel features, devices, endpoints, monitor, conntrack GC, maps and node-wide counters",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.BoolVar(&o.verbose, "verbose", false, "a line per kernel feature and per map")
		},
		run: status},
	{name: "endpoint list", summary: "the endpoint map, as `cilium bpf endpoint list` prints it", run: endpointList},
	{name: "endpoint stats", summary: "per-endpoint packet and byte counters", run: endpointStats},
	{name: "endpoint get", args: "IP", summary: "one endpoint: its map entry, container, pod interface and host device",
		arg: endpointArg, run: endpointGet},
	{name: "endpoint delete", args: "IP",
		summary: "take an endpoint off the node (its pod is gone): map entries, counters, policy, attachments",
		arg:     endpointArg, run: endpointDelete},
	{name: "node add", args: "--name N --ip IP --pod-cidr CIDR[,CIDR...]",
		summary: "add or update another node: route its pod CIDRs via its IP",
		flags:   nodeAddFlags, check: nodeAddCheck, run: nodeAdd},
	{name: "node del", args: "--name N", summary: "remove another node and its routes",
		flags: nodeNameFlag, check: nodeNameCheck, run: nodeDel},
	{name: "node list", summary: "the other nodes: name, IP, pod CIDRs", run: nodeList},
	{name: "service list", summary: "the services, as `cilium service list` prints them", run: serviceList},
	{name: "service update",
		args: "[--id N] --frontend IP:PORT --backends IP:PORT[,IP:PORT...] [--type ClusterIP|NodePort|ExternalIP] " +
			"[--protocol tcp|udp] [--local] [--internal-local] [--affinity DURATION] [--terminating IP:PORT[,IP:PORT...]]",
		summary: "create a service, or replace the one with its ID or frontend, and print its ID (ID 0 or none picks one)",
		flags:   serviceUpdateFlags, check: serviceUpdateCheck, run: serviceUpdate},
	{name: "service delete", args: "--id N", summary: "remove a service; its flows end",
		flags: serviceIDFlag, check: serviceDeleteCheck, run: serviceDelete},
	{name: "monitor", args: "[--type all|drop|trace] [--aggregate none|connection] [--from ID] [--pcap FILE] [--capture N] [--count N] [-v]",
		summary: "print the datapath's decisions on packets as they happen, as `cilium monitor` does (and write the packets as pcap)",
		flags:   monitorFlags, check: monitorCheck, run: monitor},
	{name: "metrics", summary: "the datapath's counters by reason and direction, as `cilium bpf metrics list` prints them",
		run: metricsList},
	{name: "map list", summary: "the node's maps: type, entries, fill level (pressure) and memory", run: mapList},
	{name: "serve-metrics", args: "--listen ADDR [--endpoints]",
		summary: "serve the node's counters to Prometheus at http://ADDR/metrics until interrupted",
		flags:   serveMetricsFlags, check: serveMetricsCheck, run: serveMetrics},
	{name: "socket-lb", args: "--cgroup DIR | --off",
		summary: "put socket-level load balancing on a cgroup v2 directory (moving it), or take it off",
		flags:   socketLBFlags, check: socketLBCheck, run: socketLB},
	{name: "ct list", summary: "the conntrack table of translated flows, as `cilium bpf ct list global` prints it",
		runMaps: ctList},
	{name: "ct flush", args: "[--ip IP]",
		summary: "remove every conntrack entry, or those whose source or destination is IP, and print how many",
		flags:   ctFlushFlags, runMaps: ctFlush},
	{name: "nat list", summary: "the source NAT table (BPF masquerade), as `cilium bpf nat list` prints it",
		runMaps: natList},
	{name: "cleanup", args: "[-f|--force]",
		summary: "remove the node at --pin-path, also one that no longer opens (asks first on a terminal)",
		flags:   cleanupFlags, runAt: cleanup},
}

// stdio are hrctl's standard streams.
type stdio struct {
	in          io.Reader
	out, err    io.Writer
	interactive bool // in is a terminal: cleanup asks before it removes
}

func main() {
	os.Exit(run(os.Args[1:], stdio{os.Stdin, os.Stdout, os.Stderr, isTerminal(os.Stdin)}))
}

// isTerminal tells whether f is a terminal (not merely a character
// device: /dev/null is one too).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// run runs hrctl with args and returns its exit code.
func run(args []string, std stdio) int {
	stdout, stderr := std.out, std.err
	var opts options
	flags := flag.NewFlagSet("hrctl", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.StringVar(&opts.pinPath, "pin-path", loader.DefaultPinPath, "the node's pin `directory` on a bpf filesystem")
	flags.BoolVar(&opts.json, "json", false, "print JSON")
	flags.Usage = func() { usage(flags, nil) }

	if err := flags.Parse(args); err != nil {
		return exitCode(err)
	}
	cmd, rest := lookup(flags.Args())
	if cmd == nil {
		if flags.NArg() > 0 {
			fmt.Fprintf(stderr, "hrctl: unknown command %q\n", strings.Join(flags.Args(), " "))
		}
		flags.Usage()
		return 2
	}
	if cmd.flags != nil {
		cmd.flags(flags, &opts)
	}
	flags.Usage = func() { usage(flags, cmd) }
	positional, err := parseAfter(flags, rest) // flags after the command
	if err != nil {
		return exitCode(err)
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "hrctl %s: %s\n", cmd.name, fmt.Sprintf(format, a...))
		flags.Usage()
		return 2
	}
	if cmd.arg != nil {
		if len(positional) == 0 {
			return usageErr("missing %s", strings.Fields(cmd.args)[0])
		}
		if err := cmd.arg(positional[0], &opts); err != nil {
			return usageErr("%v", err)
		}
		positional = positional[1:]
	}
	if len(positional) > 0 {
		return usageErr("unexpected argument %q", positional[0])
	}
	if cmd.check != nil {
		if err := cmd.check(&opts); err != nil {
			return usageErr("%v", err)
		}
	}

	switch {
	case cmd.runAt != nil:
		err = cmd.runAt(opts, std)
	case cmd.runMaps != nil:
		var node *instance.Instance
		node, err = openNode(opts.pinPath)
		if err == nil {
			err = cmd.runMaps(node.Maps, opts, stdout)
			node.Close()
		}
	default:
		var dp *datapath.Datapath
		dp, err = open(opts.pinPath)
		if err == nil {
			err = cmd.run(dp, opts, stdout)
			dp.Close()
		}
	}
	if err != nil {
		// One line, also for errors that join several.
		fmt.Fprintf(stderr, "hrctl: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 1
	}
	return 0
}

// parseAfter parses the flags in args, which may come before, between and
// after the command's arguments (`endpoint get 10.0.0.10 --json`), and
// returns the arguments; everything after "--" is one.
func parseAfter(flags *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			return nil, err
		}
		rest := flags.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

func exitCode(parseErr error) int {
	if errors.Is(parseErr, flag.ErrHelp) {
		return 0
	}
	return 2
}

// lookup finds the command args begin with and returns it with the rest.
func lookup(args []string) (*command, []string) {
	for i := range commands {
		words := strings.Fields(commands[i].name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			return &commands[i], args[len(words):]
		}
	}
	return nil, nil
}

// usage prints hrctl's usage, or that of cmd if it is not nil.
func usage(flags *flag.FlagSet, cmd *command) {
	w := flags.Output()
	if cmd != nil {
		fmt.Fprintf(w, "Usage: hrctl [flags] %s %s\n\n%s.\n\nFlags:\n", cmd.name, cmd.args, cmd.summary)
		flags.PrintDefaults()
		return
	}
	fmt.Fprintf(w, "Usage: hrctl [flags] COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		if c.args != "" {
			fmt.Fprintf(w, "  %s %s\n  %-16s %s\n", c.name, c.args, "", c.summary)
			continue
		}
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nFlags:\n")
	flags.PrintDefaults()
}

// open adopts the datapath pinned at pinPath, explaining in one line why
// not. The datapath is the caller's netns's: hrctl runs in the node's.
func open(pinPath string) (*datapath.Datapath, error) {
	dp, err := datapath.Open(datapath.Location{PinPath: pinPath})
	if err != nil {
		return nil, openError(pinPath, err)
	}
	return dp, nil
}

// openNode opens the maps of the node pinned at pinPath, as open does the
// datapath: instance.Open, which loads and attaches nothing either.
func openNode(pinPath string) (*instance.Instance, error) {
	n, err := instance.Open(pinPath)
	if err != nil {
		return nil, openError(pinPath, err)
	}
	return n, nil
}

// openError explains in one line why the node at pinPath does not open.
func openError(pinPath string, err error) error {
	switch {
	case errors.Is(err, loader.ErrNotBPFFS):
		return fmt.Errorf("pin path %s is not on a bpf filesystem: not a hostrouting node", pinPath)
	case errors.Is(err, loader.ErrPartialPins):
		return partialNode(pinPath, err)
	case errors.Is(err, loader.ErrNoNode):
		if dir, err := instance.ReadPinDir(pinPath); err == nil && len(dir.Own) > 0 {
			return fmt.Errorf("pin path %s holds what is left of a hostrouting node (%s) but none of its maps: "+
				"remove it with `hrctl --pin-path %s cleanup`, then start the node again", pinPath, strings.Join(dir.Own, ", "), pinPath)
		}
		return fmt.Errorf("pin path %s is not a hostrouting node: %v", pinPath, err)
	case errors.Is(err, fs.ErrNotExist):
		// Not os.Stat: under `ip netns exec` the machine's bpffs is not
		// mounted in hrctl's view, and datapath.Open reaches it otherwise.
		return fmt.Errorf("pin path %s does not exist: no hostrouting node there (see --pin-path)", pinPath)
	}
	return fmt.Errorf("pin path %s: %v", pinPath, err)
}

// status prints the node's datapath.Status and its node-wide counters.
func status(dp *datapath.Datapath, opts options, w io.Writer) error {
	s, err := dp.Status()
	if err != nil {
		return err
	}
	// The pin path as given, not as this process reaches it: under `ip
	// netns exec` that is /proc/PID/root/..., gone when hrctl exits.
	s.PinPath = filepath.Clean(opts.pinPath)
	if opts.json {
		named := map[string]map[string]maps.Counter{}
		s.Metrics.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
			if named[d.String()] == nil {
				named[d.String()] = map[string]maps.Counter{}
			}
			named[d.String()][m.String()] = c
		})
		// Counters by direction and metric name (those that moved), in
		// place of the Status's table indexed by number.
		return writeJSON(w, struct {
			datapath.Status
			Metrics map[string]map[string]maps.Counter
		}{s, named})
	}
	if opts.verbose {
		fmt.Fprint(w, s.Verbose())
	} else {
		fmt.Fprint(w, s)
	}
	fmt.Fprintln(w, "Datapath Counters:")
	s.Metrics.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
		fmt.Fprintf(w, "  %-15s %-17s %10d packets %12d bytes\n", d.String()+":", m, c.Packets, c.Bytes)
	})
	return nil
}

// endpointJSON is a maps.Endpoint with its MACs as text.
type endpointJSON struct {
	IP          netip.Addr
	IPv6        netip.Addr `json:",omitzero"`
	ID          uint16
	Flags       maps.EndpointFlags // as `cilium bpf endpoint list` shows them
	IfIndex     int
	IfName      string `json:",omitempty"`
	MAC         string
	NodeMAC     string
	ContainerID string `json:",omitempty"`
	PodIfName   string `json:",omitempty"`
}

func toJSON(ep datapath.Endpoint) endpointJSON {
	return endpointJSON{ep.IP, ep.IPv6, ep.ID, ep.Flags(), ep.IfIndex, ep.IfName, ep.MAC.String(), ep.NodeMAC.String(),
		ep.ContainerID, ep.PodIfName}
}

// endpointList prints one line per endpoint, as `cilium bpf endpoint list`.
func endpointList(dp *datapath.Datapath, opts options, w io.Writer) error {
	eps, err := dp.Endpoints()
	if err != nil {
		return err
	}
	if opts.json {
		out := []endpointJSON{}
		for _, ep := range eps {
			out = append(out, toJSON(ep))
		}
		return writeJSON(w, out)
	}
	for _, ep := range eps {
		fmt.Fprintln(w, ep)
	}
	return nil
}

// endpointStats prints each endpoint's counters: "from" is what the pod
// sent, "to" what was delivered into it.
func endpointStats(dp *datapath.Datapath, opts options, w io.Writer) error {
	eps, err := dp.Endpoints()
	if err != nil {
		return err
	}
	type row struct {
		endpointJSON
		maps.EndpointStats
	}
	rows := []row{}
	for _, ep := range eps {
		s, err := dp.EndpointStats(ep.IP)
		if errors.Is(err, maps.ErrNotFound) {
			continue // removed since listed
		}
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", ep.IP, err)
		}
		rows = append(rows, row{toJSON(ep), s})
	}
	if opts.json {
		return writeJSON(w, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "ENDPOINT\tID\tIFINDEX\tFROM-PACKETS\tFROM-BYTES\tTO-PACKETS\tTO-BYTES\tDROP-PACKETS\tDROP-BYTES\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", r.IP, r.ID, r.IfIndex,
			r.FromPackets, r.FromBytes, r.ToPackets, r.ToBytes, r.DropPackets, r.DropBytes)
	}
	return tw.Flush()
}

// endpointArg parses the IP of endpoint get and endpoint delete: an
// endpoint's IPv4 or IPv6 address.
func endpointArg(s string, o *options) error {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return fmt.Errorf("%q is not an endpoint's IP address such as 10.0.0.10", s)
	}
	o.ip = ip.Unmap()
	return nil
}

// noEndpoint explains an ErrNotFound for the endpoint with address ip.
func noEndpoint(ip netip.Addr) error {
	return fmt.Errorf("no endpoint %s (see hrctl endpoint list)", ip)
}

// endpointGet prints one endpoint: its `cilium bpf endpoint list` line,
// then who it belongs to, if recorded, and its host device.
func endpointGet(dp *datapath.Datapath, opts options, w io.Writer) error {
	ep, err := dp.Endpoint(opts.ip)
	if errors.Is(err, datapath.ErrNotFound) {
		return noEndpoint(opts.ip)
	}
	if err != nil {
		return err
	}
	dev := hostDevice(ep)
	if opts.json {
		return writeJSON(w, struct {
			endpointJSON
			HostDevice     string `json:",omitempty"`
			HostDeviceGone bool   // a pod's leftover: hrctl endpoint delete removes it
		}{toJSON(ep), dev, dev == ""})
	}
	fmt.Fprintln(w, ep)
	if ep.ContainerID != "" {
		fmt.Fprintf(w, "Container ID:     %s\n", ep.ContainerID)
	}
	if ep.PodIfName != "" {
		fmt.Fprintf(w, "Pod Interface:    %s\n", ep.PodIfName)
	}
	if dev == "" {
		fmt.Fprintf(w, "Host Device:      gone (no device with ifindex %d and nodemac here): a leftover, remove it with hrctl endpoint delete %s\n",
			ep.IfIndex, ep.IP)
	} else {
		fmt.Fprintf(w, "Host Device:      %s\n", dev)
	}
	return nil
}

// hostDevice names ep's host-side device in hrctl's network namespace, the
// node's, or returns "" if no device there has its ifindex and MAC: the pod
// is gone and its endpoint was left behind (a new device may reuse the
// index).
func hostDevice(ep datapath.Endpoint) string {
	ifc, err := net.InterfaceByIndex(ep.IfIndex)
	if err != nil || !bytes.Equal(ifc.HardwareAddr, ep.NodeMAC) {
		return ""
	}
	return ifc.Name
}

// endpointDelete takes the endpoint off the node: datapath.RemoveEndpoint.
func endpointDelete(dp *datapath.Datapath, opts options, w io.Writer) error {
	err := dp.RemoveEndpoint(opts.ip)
	if errors.Is(err, datapath.ErrNotFound) {
		return noEndpoint(opts.ip)
	}
	return err
}

// nodeNameFlag registers --name, of node add and node del.
func nodeNameFlag(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.node.Name, "name", "", "the other node's `name`, as the cluster knows it")
}

func nodeNameCheck(o *options) error {
	if o.node.Name == "" {
		return errors.New("missing --name")
	}
	return nil
}

// nodeAddFlags registers node add's flags; --ip and --pod-cidr are parsed
// as they come, so that a bad value is a usage error naming its flag.
func nodeAddFlags(fs *flag.FlagSet, o *options) {
	nodeNameFlag(fs, o)
	fs.Func("ip", "the other node's `IP` on a subnet of this node's device facing it", func(s string) error {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return errors.New("not an IP address")
		}
		o.node.IP = ip
		return nil
	})
	fs.Func("pod-cidr", "the other node's pod `CIDR`s, comma-separated; the flag may repeat", func(s string) error {
		for c := range strings.SplitSeq(s, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil {
				return fmt.Errorf("%q is not a CIDR such as 10.0.1.0/24", c)
			}
			if p.Masked() != p {
				return fmt.Errorf("%s has host bits set (did you mean %s?)", p, p.Masked())
			}
			o.node.PodCIDRs = append(o.node.PodCIDRs, p)
		}
		return nil
	})
}

func nodeAddCheck(o *options) error {
	if err := nodeNameCheck(o); err != nil {
		return err
	}
	switch {
	case !o.node.IP.IsValid():
		return errors.New("missing --ip")
	case len(o.node.PodCIDRs) == 0:
		return errors.New("missing --pod-cidr")
	}
	return nil
}

// nodeAdd routes the other node's pod CIDRs via its IP: datapath.UpsertNode.
// A pod CIDR that holds an endpoint of this node is this node's own:
// routing it away would cut its pods off.
func nodeAdd(dp *datapath.Datapath, opts options, w io.Writer) error {
	eps, err := dp.Endpoints()
	if err != nil {
		return err
	}
	for _, p := range opts.node.PodCIDRs {
		for _, ep := range eps {
			if p.Contains(ep.IP) {
				return fmt.Errorf("pod CIDR %s holds endpoint %s of this node: it is this node's own, not node %s's", p, ep.IP, opts.node.Name)
			}
		}
	}
	return dp.UpsertNode(opts.node)
}

// nodeDel removes the other node called --name: datapath.DeleteNode.
func nodeDel(dp *datapath.Datapath, opts options, w io.Writer) error {
	err := dp.DeleteNode(opts.node.Name)
	if errors.Is(err, maps.ErrNotFound) {
		return fmt.Errorf("no node named %q (see hrctl node list)", opts.node.Name)
	}
	return err
}

// nodeList prints one line per other node: "node2 172.18.0.3 10.0.1.0/24".
func nodeList(dp *datapath.Datapath, opts options, w io.Writer) error {
	nodes, err := dp.Nodes()
	if err != nil {
		return err
	}
	if opts.json {
		if nodes == nil {
			nodes = []datapath.Node{}
		}
		return writeJSON(w, nodes)
	}
	for _, n := range nodes {
		fmt.Fprintln(w, n)
	}
	return nil
}

// serviceHeader is the header of service list, over the columns of
// datapath.Service.String.
var serviceHeader = fmt.Sprintf("%-4s %-26s %-12s %s", "ID", "Frontend", "Service Type", "Backend")

// serviceJSON is a datapath.Service with its protocol, states and session
// affinity as text and seconds.
type serviceJSON struct {
	ID                         uint16
	Frontend                   netip.AddrPort
	Protocol                   string
	Type                       datapath.ServiceType
	Backends                   []backendJSON
	ExternalTrafficPolicyLocal bool
	SessionAffinitySeconds     int64 `json:",omitempty"`
}

type backendJSON struct {
	Addr  netip.AddrPort
	State string
}

// serviceList prints the services as `cilium service list`: a header, then
// each service's row, a line per backend.
func serviceList(dp *datapath.Datapath, opts options, w io.Writer) error {
	svcs, err := dp.Services()
	if err != nil {
		return err
	}
	if opts.json {
		out := []serviceJSON{}
		for _, s := range svcs {
			j := serviceJSON{ID: s.ID, Frontend: s.Frontend, Protocol: s.Protocol.String(), Type: s.Type,
				Backends: []backendJSON{}, ExternalTrafficPolicyLocal: s.ExternalTrafficPolicyLocal,
				SessionAffinitySeconds: int64(s.SessionAffinity / time.Second)}
			for _, b := range s.Backends {
				j.Backends = append(j.Backends, backendJSON{b.Addr, b.State.String()})
			}
			out = append(out, j)
		}
		return writeJSON(w, out)
	}
	fmt.Fprintln(w, serviceHeader)
	for _, s := range svcs {
		fmt.Fprintln(w, s)
	}
	return nil
}

// serviceIDFlag registers --id, of service update and service delete.
func serviceIDFlag(fs *flag.FlagSet, o *options) {
	fs.Func("id", "the service's `ID`, 1 to 65535 (service update: 0 picks the lowest free one)", func(s string) error {
		id, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return fmt.Errorf("%q is not a service ID from 0 to 65535", s)
		}
		o.svc.ID, o.idSet = uint16(id), true
		return nil
	})
}

// parseAddrPort parses a frontend's or backend's IPv4 address and port.
func parseAddrPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP:PORT such as 10.96.0.10:80", s)
	case !ap.Addr().Unmap().Is4():
		return netip.AddrPort{}, fmt.Errorf("%s: want an IPv4 address", ap)
	case ap.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("%s: port 0", ap)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// backendsFlag parses a comma-separated list of active backends.
func backendsFlag(o *options) func(string) error {
	return func(s string) error {
		for b := range strings.SplitSeq(s, ",") {
			ap, err := parseAddrPort(b)
			if err != nil {
				return err
			}
			o.svc.Backends = append(o.svc.Backends, datapath.Backend{Addr: ap})
		}
		return nil
	}
}

// serviceTypes are the names --type takes, in lower case.
var serviceTypes = map[string]datapath.ServiceType{
	"clusterip": datapath.ClusterIP, "nodeport": datapath.NodePort,
	"externalip": datapath.ExternalIP, "externalips": datapath.ExternalIP,
}

// serviceUpdateFlags registers service update's flags, parsed as they
// come, so that a bad value is a usage error naming its flag.
func serviceUpdateFlags(fs *flag.FlagSet, o *options) {
	serviceIDFlag(fs, o)
	o.svc.Protocol, o.svc.Type = datapath.TCP, datapath.ClusterIP
	fs.Func("frontend", "the `IP:PORT` clients connect to: a ClusterIP, a node IP with its nodePort, an external IP", func(s string) error {
		ap, err := parseAddrPort(s)
		o.svc.Frontend = ap
		return err
	})
	fs.Func("backends", "the backends' `IP:PORT`s, comma-separated; the flag may repeat", backendsFlag(o))
	fs.Func("terminating", "those of --backends that keep their flows but take no new ones, `IP:PORT`s as --backends", func(s string) error {
		for b := range strings.SplitSeq(s, ",") {
			ap, err := parseAddrPort(b)
			if err != nil {
				return err
			}
			o.term = append(o.term, ap)
		}
		return nil
	})
	fs.Func("type", "the service `type`: ClusterIP (default), NodePort or ExternalIP", func(s string) error {
		t, ok := serviceTypes[strings.ToLower(s)]
		if !ok {
			return fmt.Errorf("unknown service type %q: want ClusterIP, NodePort or ExternalIP", s)
		}
		o.svc.Type = t
		return nil
	})
	fs.Func("protocol", "the `protocol`: tcp (default) or udp", func(s string) error {
		switch strings.ToLower(s) {
		case "tcp":
			o.svc.Protocol = datapath.TCP
		case "udp":
			o.svc.Protocol = datapath.UDP
		default:
			return fmt.Errorf("unknown protocol %q: want tcp or udp", s)
		}
		return nil
	})
	fs.BoolVar(&o.svc.ExternalTrafficPolicyLocal, "local",
		false, "externalTrafficPolicy Local: traffic from outside the node goes to its own backends only and keeps its source (NodePort, ExternalIP)")
	fs.BoolVar(&o.svc.InternalTrafficPolicyLocal, "internal-local",
		false, "internalTrafficPolicy Local: the node's own pods and processes go to its own backends only")
	fs.Func("affinity", "sessionAffinity ClientIP: keep a client on its backend for `DURATION` after its last packet (e.g. 3h; at most 65535s)", func(s string) error {
		d, err := time.ParseDuration(s)
		switch {
		case err != nil:
			return fmt.Errorf("%q is not a duration such as 3h or 10800s", s)
		case d < 0 || d > 0xffff*time.Second:
			return fmt.Errorf("%s: want 0 (none) to %s", d, 0xffff*time.Second)
		case d%time.Second != 0:
			return fmt.Errorf("%s: want whole seconds", d)
		}
		o.svc.SessionAffinity = d
		return nil
	})
}

func serviceUpdateCheck(o *options) error {
	s := &o.svc
	switch {
	case !s.Frontend.IsValid():
		return errors.New("missing --frontend")
	case len(s.Backends) == 0:
		return errors.New("missing --backends")
	case s.ExternalTrafficPolicyLocal && s.Type == datapath.ClusterIP:
		return errors.New("--local (externalTrafficPolicy Local) is for NodePort and ExternalIP services, not ClusterIP")
	}
	seen := map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		if seen[b.Addr] {
			return fmt.Errorf("backend %s given twice", b.Addr)
		}
		seen[b.Addr] = true
	}
	for _, t := range o.term {
		i := slices.IndexFunc(s.Backends, func(b datapath.Backend) bool { return b.Addr == t })
		if i < 0 {
			return fmt.Errorf("--terminating %s is not one of --backends", t)
		}
		s.Backends[i].State = datapath.BackendTerminating
	}
	return nil
}

// serviceUpdate creates or replaces the service: datapath.UpsertService.
func serviceUpdate(dp *datapath.Datapath, opts options, w io.Writer) error {
	id, err := dp.UpsertService(opts.svc)
	if err != nil {
		return err
	}
	if opts.json {
		return writeJSON(w, struct{ ID uint16 }{id})
	}
	fmt.Fprintln(w, id)
	return nil
}

func serviceDeleteCheck(o *options) error {
	switch {
	case !o.idSet:
		return errors.New("missing --id")
	case o.svc.ID == 0:
		return errors.New("--id 0: service IDs run from 1 to 65535")
	}
	return nil
}

// serviceDelete removes the service with --id: datapath.DeleteService.
func serviceDelete(dp *datapath.Datapath, opts options, w io.Writer) error {
	err := dp.DeleteService(opts.svc.ID)
	if errors.Is(err, datapath.ErrNotFound) {
		return fmt.Errorf("no service with ID %d (see hrctl service list)", opts.svc.ID)
	}
	return err
}

// metricsList prints every counter that moved, a line per reason and
// direction: "forward-peer  from-container  12  1176".
func metricsList(dp *datapath.Datapath, opts options, w io.Writer) error {
	t, err := dp.Metrics()
	if err != nil {
		return err
	}
	type row struct {
		Reason, Direction string
		maps.Counter
	}
	rows := []row{}
	t.Each(func(d maps.Direction, m maps.Metric, c maps.Counter) {
		rows = append(rows, row{m.String(), d.String(), c})
	})
	if opts.json {
		return writeJSON(w, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REASON\tDIRECTION\tPACKETS\tBYTES")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", r.Reason, r.Direction, r.Packets, r.Bytes)
	}
	return tw.Flush()
}

// mapList prints the node's maps with their fill levels.
func mapList(dp *datapath.Datapath, opts options, w io.Writer) error {
	sizes, err := dp.MapUsage()
	if err != nil {
		return err
	}
	if opts.json {
		type row struct {
			Name                string
			Type                string
			Entries, MaxEntries uint32
			Pressure            float64
			Memory              uint64
		}
		rows := []row{}
		for _, s := range sizes {
			rows = append(rows, row{s.Name, s.Type.String(), s.Entries, s.MaxEntries, s.Pressure(), s.Memory})
		}
		return writeJSON(w, rows)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTYPE\tENTRIES\tMAX\tFILL\tMEMORY")
	for _, s := range sizes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f%%\t%d\n", s.Name, s.Type, s.Entries, s.MaxEntries, 100*s.Pressure(), s.Memory)
	}
	return tw.Flush()
}

func serveMetricsFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.listen, "listen", "", "the `ADDR` (host:port) to serve /metrics on, e.g. 127.0.0.1:9962")
	fs.BoolVar(&o.perEP, "endpoints", false, "add per-endpoint counters (6 series per endpoint)")
}

func serveMetricsCheck(o *options) error {
	if o.listen == "" {
		return errors.New("missing --listen")
	}
	return nil
}

// serveMetrics serves the node's collector (package datapath/metrics) on
// --listen until SIGINT or SIGTERM.
func serveMetrics(dp *datapath.Datapath, opts options, w io.Writer) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewCollector(dp, metrics.Options{Endpoints: opts.perEP}))
	ln, err := net.Listen("tcp", opts.listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(w, "serving http://%s/metrics\n", ln.Addr())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(stop)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-stop:
		return srv.Close()
	}
}

func socketLBFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.cgroup, "cgroup", "", "the cgroup v2 `directory` whose sockets get a backend at connect time")
	fs.BoolVar(&o.off, "off", false, "take socket LB off its cgroup")
}

func socketLBCheck(o *options) error {
	switch {
	case o.cgroup == "" && !o.off:
		return errors.New("missing --cgroup or --off")
	case o.cgroup != "" && o.off:
		return errors.New("--cgroup and --off: give one")
	}
	return nil
}

// socketLB puts socket LB on --cgroup or takes it off: datapath.SetSocketLB.
func socketLB(dp *datapath.Datapath, opts options, w io.Writer) error {
	return dp.SetSocketLB(opts.cgroup)
}

// ctJSON is a maps.CTEntry with its direction, protocol and flags as text.
type ctJSON struct {
	Proto            string
	Dir              string
	Src, Dst         netip.AddrPort
	Expires          uint32
	RemainingSeconds int64
	RevNAT           uint16
	BackendID        uint32
	Flags            []string
	Packets          uint64
}

// protoName names p as conntrack and NAT lines do: "TCP", "UDP", "ICMP".
func protoName(p maps.Protocol) string {
	if p == maps.ICMP {
		return "ICMP"
	}
	return p.String()
}

// compareTuples orders entries by protocol, direction, source and
// destination: list output that does not follow the map's hash order.
func compareTuples(p1, p2 maps.Protocol, d1, d2 uint8, s1, s2, t1, t2 netip.AddrPort) int {
	if c := int(p1) - int(p2); c != 0 {
		return c
	}
	if c := int(d1) - int(d2); c != 0 {
		return c
	}
	if c := s1.Compare(s2); c != 0 {
		return c
	}
	return t1.Compare(t2)
}

// ctList prints the conntrack table as `cilium bpf ct list global`: a
// line per entry (maps.CTEntry.String).
func ctList(m instance.Maps, opts options, w io.Writer) error {
	entries, err := tables.NewConntrack(m.ConntrackTables()...).List()
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b maps.CTEntry) int {
		return compareTuples(a.Proto, b.Proto, uint8(a.Dir), uint8(b.Dir), a.Src, b.Src, a.Dst, b.Dst)
	})
	if opts.json {
		out := []ctJSON{}
		for _, e := range entries {
			flags := []string{}
			if e.Flags&maps.CTSeenReply != 0 {
				flags = append(flags, "SeenReply")
			}
			if e.Flags&maps.CTClosing != 0 {
				flags = append(flags, "Closing")
			}
			out = append(out, ctJSON{Proto: protoName(e.Proto), Dir: e.Dir.String(),
				Src: e.Src, Dst: e.Dst, Expires: e.Expires, RemainingSeconds: int64(e.Remaining / time.Second),
				RevNAT: e.RevNAT, BackendID: e.BackendID, Flags: flags, Packets: e.Packets})
		}
		return writeJSON(w, out)
	}
	for _, e := range entries {
		fmt.Fprintln(w, e)
	}
	return nil
}

// ctFlushFlags registers ct flush's --ip.
func ctFlushFlags(fs *flag.FlagSet, o *options) {
	fs.Func("ip", "remove only the entries whose source or destination is this IPv4 `address` (a pod's, for one)", func(s string) error {
		ip, err := netip.ParseAddr(s)
		if err != nil || !ip.Unmap().Is4() {
			return fmt.Errorf("%q is not an IPv4 address such as 10.0.0.10", s)
		}
		o.ip = ip.Unmap()
		return nil
	})
}

// ctFlush removes the conntrack entries, all or those of --ip (with the
// GC's FlushEndpoint, on the conntrack table only), and says how many.
// Flows whose entries go start again as new ones with their next packet.
func ctFlush(m instance.Maps, opts options, w io.Writer) error {
	ct := tables.NewConntrack(m.ConntrackTables()...)
	var (
		n   int
		err error
	)
	if opts.ip.IsValid() {
		n, err = nat.NewGC(ct, nil, nat.Options{}).FlushEndpoint(opts.ip)
	} else {
		var entries []maps.CTEntry
		if entries, err = ct.List(); err == nil {
			keys := make([]maps.CTKey, len(entries))
			for i, e := range entries {
				keys[i] = e.Key()
			}
			n, err = ct.DeleteKeys(keys)
		}
	}
	if err != nil {
		return fmt.Errorf("flush conntrack (%s removed): %w", nEntries(n), err)
	}
	switch {
	case opts.json:
		return writeJSON(w, struct{ Flushed int }{n})
	case opts.ip.IsValid():
		fmt.Fprintf(w, "Flushed %s of %s from the conntrack table\n", nEntries(n), opts.ip)
	default:
		fmt.Fprintf(w, "Flushed %s from the conntrack table\n", nEntries(n))
	}
	return nil
}

// nEntries is "1 entry", "2 entries".
func nEntries(n int) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}

// natJSON is a maps.SNATEntry with its direction and protocol as text.
type natJSON struct {
	Proto            string
	Dir              string
	Src, Dst, To     netip.AddrPort
	Expires          uint32
	RemainingSeconds int64
	Host             bool `json:",omitempty"`
	Closing          bool `json:",omitempty"`
}

// natList prints the source NAT table as `cilium bpf nat list`: a line per
// entry (maps.SNATEntry.String), a translated flow's OUT and IN.
func natList(m instance.Maps, opts options, w io.Writer) error {
	entries, err := tables.NewSNAT(m.SNATTables()...).List()
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b maps.SNATEntry) int {
		return compareTuples(a.Proto, b.Proto, uint8(a.Dir), uint8(b.Dir), a.Src, b.Src, a.Dst, b.Dst)
	})
	if opts.json {
		out := []natJSON{}
		for _, e := range entries {
			out = append(out, natJSON{Proto: protoName(e.Proto), Dir: e.Dir.String(),
				Src: e.Src, Dst: e.Dst, To: e.To, Expires: e.Expires, RemainingSeconds: int64(e.Remaining / time.Second),
				Host: e.Host, Closing: e.Closing})
		}
		return writeJSON(w, out)
	}
	for _, e := range entries {
		fmt.Fprintln(w, e)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// cleanupFlags registers cleanup's -f and --force.
func cleanupFlags(fs *flag.FlagSet, o *options) {
	const help = "remove without asking, also when stdin is a terminal"
	fs.BoolVar(&o.force, "force", false, help)
	fs.BoolVar(&o.force, "f", false, help+" (short for --force)")
}

// errDeclined is cleanup's error when the operator says no.
var errDeclined = errors.New("cleanup declined: nothing removed")

// cleanup removes the node at --pin-path with datapath.Cleanup, as
// `cilium-dbg cleanup` removes Cilium's state: what a node that opens
// holds (endpoints, devices, routes to other nodes) and what is left of
// one that does not. It lists what goes and what stays, and asks first
// when stdin is a terminal, unless --force. No node there is not an error.
func cleanup(opts options, std stdio) error {
	pinPath := filepath.Clean(opts.pinPath)
	w := std.out
	dp, openErr := datapath.Open(datapath.Location{PinPath: pinPath})
	switch {
	case openErr == nil:
	case errors.Is(openErr, loader.ErrNotBPFFS):
		return fmt.Errorf("pin path %s is not on a bpf filesystem: not a hostrouting node (see --pin-path)", pinPath)
	case errors.Is(openErr, fs.ErrNotExist):
		fmt.Fprintf(w, "No hostrouting node at %s: nothing to clean.\n", pinPath)
		return nil
	}
	dir, dirErr := instance.ReadPinDir(pinPath)
	if openErr != nil && dirErr == nil && len(dir.Own) == 0 {
		fmt.Fprintf(w, "No hostrouting node at %s: nothing to clean.\n", pinPath)
		if len(dir.Others) > 0 {
			fmt.Fprintf(w, "It holds %s, which hrctl leaves.\n", strings.Join(dir.Others, ", "))
		}
		return nil
	}

	if openErr == nil {
		fmt.Fprintf(w, "This removes the hostrouting node at %s:\n", pinPath)
		describeNode(w, dp, pinPath, dir, dirErr)
		dp.Close()
	} else {
		fmt.Fprintf(w, "This removes what is left of the hostrouting node at %s, which does not open:\n", pinPath)
		describeLeftovers(w, pinPath, openErr, dir, dirErr)
	}
	if len(dir.Others) > 0 {
		fmt.Fprintf(w, "It leaves what the node did not make: %s\n", strings.Join(dir.Others, ", "))
	}
	if std.interactive && !opts.force && !confirm(std.in, w, "Remove it?") {
		return errDeclined
	}
	if err := datapath.Cleanup(datapath.Location{PinPath: pinPath}); err != nil {
		if errors.Is(err, loader.ErrForeignPinPath) {
			return fmt.Errorf("refused: %w", err)
		}
		return err
	}
	fmt.Fprintf(w, "Removed the hostrouting node at %s.\n", pinPath)
	return nil
}

// describeNode lists what cleanup removes of a node that opens.
func describeNode(w io.Writer, dp *datapath.Datapath, pinPath string, dir instance.PinDir, dirErr error) {
	pins := ""
	if dirErr == nil {
		pins = " (" + strings.Join(dir.Own, ", ") + ")"
	}
	fmt.Fprintf(w, "  Pin Path:         %s%s\n", pinPath, pins)
	if s, err := dp.Status(); err != nil {
		fmt.Fprintf(w, "  Endpoints:        unknown (%v)\n", err)
	} else {
		fmt.Fprintf(w, "  Endpoints:        %d (their pods fall back to the kernel's routing)\n", s.Endpoints)
		if len(s.Devices) > 0 {
			devs := make([]string, len(s.Devices))
			for i, d := range s.Devices {
				devs[i] = strings.TrimSpace(d.Name + " " + ipString(d.IP))
			}
			fmt.Fprintf(w, "  Devices:          [%s]\n", strings.Join(devs, ", "))
		} else {
			fmt.Fprintf(w, "  Devices:          none\n")
		}
	}
	if nodes, err := dp.Nodes(); err != nil {
		fmt.Fprintf(w, "  Node Routes:      unknown (%v)\n", err)
	} else {
		fmt.Fprintf(w, "  Node Routes:      to %s (hrctl node list)\n", plural(len(nodes), "other node"))
	}
}

// describeLeftovers lists what cleanup removes of a node that does not
// open: what its pin directory holds; its programs wherever they are
// attached in this network namespace; its routes.
func describeLeftovers(w io.Writer, pinPath string, openErr error, dir instance.PinDir, dirErr error) {
	if dirErr != nil {
		fmt.Fprintf(w, "  Pin Path:         %s (%s)\n", pinPath, oneLine(openErr))
	} else {
		missing := ""
		if m := dir.Missing; len(m) > 0 {
			missing = "; missing: " + strings.Join(m, ", ")
		}
		fmt.Fprintf(w, "  Pin Path:         %s (left: %s%s)\n", pinPath, strings.Join(dir.Own, ", "), missing)
		if !errors.Is(openErr, loader.ErrPartialPins) && !errors.Is(openErr, loader.ErrNoNode) {
			fmt.Fprintf(w, "  Why:              %s\n", oneLine(openErr))
		}
	}
	fmt.Fprintf(w, "  Endpoints:        unknown (the node does not open): the node's programs go from every device of this network namespace\n")
	fmt.Fprintf(w, "  Devices:          likewise\n")
	fmt.Fprintf(w, "  Node Routes:      every route to another node's pod CIDRs (ip route show proto 200)\n")
}

func ipString(ip netip.Addr) string {
	if !ip.IsValid() {
		return ""
	}
	return ip.String()
}

// oneLine is err's text on one line, with pin paths as the operator names
// them: not as hrctl reaches them under `ip netns exec`.
func oneLine(err error) string {
	return procRoot.ReplaceAllString(strings.ReplaceAll(err.Error(), "\n", "; "), "")
}

var procRoot = regexp.MustCompile(`/proc/[0-9]+/root(` + regexp.QuoteMeta(loader.DefaultBPFFS) + `)`)

// plural is "1 other node", "2 other nodes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// confirm asks question on w and reads the answer from r: yes for "y" or
// "yes" in any case; no for anything else, an empty line or no answer.
func confirm(r io.Reader, w io.Writer, question string) bool {
	fmt.Fprintf(w, "%s [y/N] ", question)
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		fmt.Fprintln(w)
		return false
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

// partialNode explains a node some of whose map pins were removed by hand
// (loader.ErrPartialPins): which, and the fix, with the pin path as the
// operator gave it.
func partialNode(pinPath string, err error) error {
	missing := "map pins were removed by hand that no running program uses"
	if dir, dirErr := instance.ReadPinDir(pinPath); dirErr == nil {
		switch m := dir.Missing; len(m) {
		case 0:
		case 1:
			missing = m[0] + " was removed by hand, and no running program uses it to pin it again"
		default:
			missing = strings.Join(m, ", ") + " were removed by hand, and no running program uses them to pin them again"
		}
	}
	return fmt.Errorf("pin path %s holds an incomplete hostrouting node: %s; remove what is left with `hrctl --pin-path %s cleanup`, then start the node again",
		pinPath, missing, pinPath)
}
