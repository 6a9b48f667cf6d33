// Command hrctl inspects a hostrouting node through its pin directory, as
// `cilium status` and `cilium bpf endpoint list` inspect a Cilium node, and
// manages the node's routes to other nodes. It runs inside the node's
// network namespace and adopts the pinned datapath with datapath.Open,
// which never loads or attaches programs: status and endpoint commands
// only read; node add and node del change the direct routes to other
// nodes' pod CIDRs (datapath.UpsertNode, datapath.DeleteNode).
//
// Usage:
//
//	hrctl [--pin-path DIR] [--json] status
//	hrctl [--pin-path DIR] [--json] endpoint list
//	hrctl [--pin-path DIR] [--json] endpoint stats
//	hrctl [--pin-path DIR] node add --name N --ip IP --pod-cidr CIDR[,CIDR...]
//	hrctl [--pin-path DIR] node del --name N
//	hrctl [--pin-path DIR] [--json] node list
//
// Flags may also follow the command; --pod-cidr may repeat. node add is
// idempotent and converges the node on exactly the pod CIDRs given. Exit
// codes: 0 on success, 1 when the node cannot be read or refuses a change,
// 2 on a usage error.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// options are hrctl's flags: pinPath and json for every command, node for
// the node commands that take it.
type options struct {
	pinPath string
	json    bool
	node    datapath.Node
}

// command is one hrctl command; add new ones (service list) to commands.
type command struct {
	name    string // the words naming it: "endpoint list"
	args    string // its own flags, for usage: "--name N"
	summary string
	// flags registers the command's own flags; nil for none.
	flags func(fs *flag.FlagSet, o *options)
	// check validates them after parsing: its error is a usage error.
	check func(o *options) error
	run   func(dp *datapath.Datapath, o options, w io.Writer) error
}

var commands = []command{
	{name: "status", summary: "host routing mode, kernel features, devices, endpoints and node-wide counters", run: status},
	{name: "endpoint list", summary: "the endpoint map, as `cilium bpf endpoint list` prints it", run: endpointList},
	{name: "endpoint stats", summary: "per-endpoint packet and byte counters", run: endpointStats},
	{name: "node add", args: "--name N --ip IP --pod-cidr CIDR[,CIDR...]",
		summary: "add or update another node: route its pod CIDRs via its IP",
		flags:   nodeAddFlags, check: nodeAddCheck, run: nodeAdd},
	{name: "node del", args: "--name N", summary: "remove another node and its routes",
		flags: nodeNameFlag, check: nodeNameCheck, run: nodeDel},
	{name: "node list", summary: "the other nodes: name, IP, pod CIDRs", run: nodeList},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs hrctl with args and returns its exit code.
func run(args []string, stdout, stderr io.Writer) int {
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
	if err := flags.Parse(rest); err != nil { // flags after the command
		return exitCode(err)
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "hrctl %s: unexpected argument %q\n", cmd.name, flags.Arg(0))
		flags.Usage()
		return 2
	}
	if cmd.check != nil {
		if err := cmd.check(&opts); err != nil {
			fmt.Fprintf(stderr, "hrctl %s: %v\n", cmd.name, err)
			flags.Usage()
			return 2
		}
	}

	dp, err := open(opts.pinPath)
	if err == nil {
		err = cmd.run(dp, opts, stdout)
		dp.Close()
	}
	if err != nil {
		// One line, also for errors that join several.
		fmt.Fprintf(stderr, "hrctl: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 1
	}
	return 0
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
	case errors.Is(err, loader.ErrNoNode):
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
	IP      netip.Addr
	ID      uint16
	Flags   maps.EndpointFlags
	IfIndex int
	MAC     string
	NodeMAC string
}

func toJSON(ep maps.Endpoint) endpointJSON {
	return endpointJSON{ep.IP, ep.ID, ep.Flags, ep.IfIndex, ep.MAC.String(), ep.NodeMAC.String()}
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
