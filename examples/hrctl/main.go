// Command hrctl inspects a hostrouting node through its pin directory, as
// `cilium status` and `cilium bpf endpoint list` inspect a Cilium node,
// manages the node's routes to other nodes, and removes endpoints and
// whole nodes left behind. It runs inside the node's network namespace and
// adopts the pinned datapath with datapath.Open, which never loads or
// attaches programs: status, endpoint list, stats and get only read; node
// add and node del change the direct routes to other nodes' pod CIDRs
// (datapath.UpsertNode, datapath.DeleteNode); endpoint delete takes an
// endpoint off the node (datapath.RemoveEndpoint), for a pod that is gone
// without its CNI DEL; cleanup removes the node, as `cilium-dbg cleanup`
// does (datapath.Cleanup), also one that no longer opens.
//
// Usage:
//
//	hrctl [--pin-path DIR] [--json] status
//	hrctl [--pin-path DIR] [--json] endpoint list
//	hrctl [--pin-path DIR] [--json] endpoint stats
//	hrctl [--pin-path DIR] [--json] endpoint get IP
//	hrctl [--pin-path DIR] endpoint delete IP
//	hrctl [--pin-path DIR] node add --name N --ip IP --pod-cidr CIDR[,CIDR...]
//	hrctl [--pin-path DIR] node del --name N
//	hrctl [--pin-path DIR] [--json] node list
//	hrctl [--pin-path DIR] cleanup [-f|--force]
//
// Flags may also follow the command and its argument; --pod-cidr may
// repeat. node add is idempotent and converges the node on exactly the pod
// CIDRs given. cleanup lists what it removes and, when stdin is a
// terminal and --force is not given, asks before it removes anything; it
// leaves whatever the node did not make, and finding no node is not an
// error. Exit codes: 0 on success, 1 when the node cannot be read or
// refuses a change (or cleanup is declined), 2 on a usage error.
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
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// options are hrctl's flags: pinPath and json for every command, node for
// the node commands that take it, ip for the endpoint commands' argument,
// force for cleanup.
type options struct {
	pinPath string
	json    bool
	node    datapath.Node
	ip      netip.Addr
	force   bool
}

// command is one hrctl command; add new ones (service list) to commands.
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
	// runAt, in place of run, runs a command that opens the node itself:
	// cleanup, which must also work on a node that does not open.
	runAt func(o options, s stdio) error
}

var commands = []command{
	{name: "status", summary: "host routing mode, kernel features, devices, endpoints and node-wide counters", run: status},
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

	if cmd.runAt != nil {
		err = cmd.runAt(opts, std)
	} else {
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
	dp, err := datapath.Open(pinPath, "")
	switch {
	case err == nil:
		return dp, nil
	case errors.Is(err, loader.ErrNotBPFFS):
		return nil, fmt.Errorf("pin path %s is not on a bpf filesystem: not a hostrouting node", pinPath)
	case errors.Is(err, loader.ErrPartialPins):
		return nil, partialNode(pinPath, err)
	case errors.Is(err, loader.ErrNoNode):
		if dir, err := loader.ReadPinDir(pinPath); err == nil && len(dir.Own) > 0 {
			return nil, fmt.Errorf("pin path %s holds what is left of a hostrouting node (%s) but none of its maps: "+
				"remove it with `hrctl --pin-path %s cleanup`, then start the node again", pinPath, strings.Join(dir.Own, ", "), pinPath)
		}
		return nil, fmt.Errorf("pin path %s is not a hostrouting node: %v", pinPath, err)
	case errors.Is(err, fs.ErrNotExist):
		// Not os.Stat: under `ip netns exec` the machine's bpffs is not
		// mounted in hrctl's view, and datapath.Open reaches it otherwise.
		return nil, fmt.Errorf("pin path %s does not exist: no hostrouting node there (see --pin-path)", pinPath)
	}
	return nil, fmt.Errorf("pin path %s: %v", pinPath, err)
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
	fmt.Fprint(w, s)
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
	Flags       maps.EndpointFlags
	IfIndex     int
	MAC         string
	NodeMAC     string
	ContainerID string `json:",omitempty"`
	PodIfName   string `json:",omitempty"`
}

func toJSON(ep maps.Endpoint) endpointJSON {
	return endpointJSON{ep.IP, ep.IPv6, ep.ID, ep.Flags, ep.IfIndex, ep.MAC.String(), ep.NodeMAC.String(),
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
func hostDevice(ep maps.Endpoint) string {
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
func nodeAdd(dp *datapath.Datapath, opts options, w io.Writer) error {
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
	dp, openErr := datapath.Open(pinPath, "")
	switch {
	case openErr == nil:
	case errors.Is(openErr, loader.ErrNotBPFFS):
		return fmt.Errorf("pin path %s is not on a bpf filesystem: not a hostrouting node (see --pin-path)", pinPath)
	case errors.Is(openErr, fs.ErrNotExist):
		fmt.Fprintf(w, "No hostrouting node at %s: nothing to clean.\n", pinPath)
		return nil
	}
	dir, dirErr := loader.ReadPinDir(pinPath)
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
	if err := datapath.Cleanup(pinPath, ""); err != nil {
		if errors.Is(err, loader.ErrForeignPinPath) {
			return fmt.Errorf("refused: %w", err)
		}
		return err
	}
	fmt.Fprintf(w, "Removed the hostrouting node at %s.\n", pinPath)
	return nil
}

// describeNode lists what cleanup removes of a node that opens.
func describeNode(w io.Writer, dp *datapath.Datapath, pinPath string, dir loader.PinDir, dirErr error) {
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
func describeLeftovers(w io.Writer, pinPath string, openErr error, dir loader.PinDir, dirErr error) {
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
	if dir, dirErr := loader.ReadPinDir(pinPath); dirErr == nil {
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
