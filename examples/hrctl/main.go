// Command hrctl inspects a hostrouting node through its pin directory, as
// `cilium status` and `cilium bpf endpoint list` inspect a Cilium node. It
// adopts the pinned programs and maps with loader.Open and only reads them:
// it never loads, attaches or changes anything.
//
// Usage:
//
//	hrctl [--pin-path DIR] [--json] status
//	hrctl [--pin-path DIR] [--json] endpoint list
//	hrctl [--pin-path DIR] [--json] endpoint stats
//
// Flags may also follow the command. Exit codes: 0 on success, 1 when the
// node cannot be read, 2 on a usage error.
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
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// options are hrctl's flags, shared by every command.
type options struct {
	pinPath string
	json    bool
}

// command is one hrctl command; add new ones (node list, service list) to
// commands.
type command struct {
	name    string // the words naming it: "endpoint list"
	summary string
	run     func(node *loader.Node, opts options, w io.Writer) error
}

var commands = []command{
	{"status", "host routing mode, kernel features, endpoints and node-wide counters", status},
	{"endpoint list", "the endpoint map, as `cilium bpf endpoint list` prints it", endpointList},
	{"endpoint stats", "per-endpoint packet and byte counters", endpointStats},
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
	flags.Usage = func() { usage(flags) }

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
	if err := flags.Parse(rest); err != nil { // flags after the command
		return exitCode(err)
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "hrctl %s: unexpected argument %q\n", cmd.name, flags.Arg(0))
		flags.Usage()
		return 2
	}

	node, err := open(opts.pinPath)
	if err == nil {
		err = cmd.run(node, opts, stdout)
		node.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "hrctl: %v\n", err)
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

func usage(flags *flag.FlagSet) {
	w := flags.Output()
	fmt.Fprintf(w, "Usage: hrctl [flags] COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nFlags:\n")
	flags.PrintDefaults()
}

// open adopts the node pinned at pinPath, explaining in one line why not.
func open(pinPath string) (*loader.Node, error) {
	node, err := loader.Open(pinPath)
	switch {
	case err == nil:
		return node, nil
	case errors.Is(err, loader.ErrNotBPFFS):
		return nil, fmt.Errorf("pin path %s is not on a bpf filesystem: not a hostrouting node", pinPath)
	case errors.Is(err, fs.ErrNotExist) && !exists(pinPath):
		return nil, fmt.Errorf("pin path %s does not exist: no hostrouting node there (see --pin-path)", pinPath)
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("pin path %s is not a hostrouting node: %v", pinPath, err)
	}
	return nil, fmt.Errorf("pin path %s: %v", pinPath, err)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// status prints the node's datapath.Status and its node-wide counters.
func status(node *loader.Node, opts options, w io.Writer) error {
	eps, err := maps.NewEndpoints(node.Maps.Endpoints).List()
	if err != nil {
		return err
	}
	metrics, err := maps.NewMetrics(node.Maps.Metrics).All()
	if err != nil {
		return err
	}
	s := datapath.StatusOf(node, len(eps), metrics)
	if opts.json {
		named := map[string]maps.Counter{}
		for i, c := range metrics {
			named[maps.Metric(i).String()] = c
		}
		// Metrics by name, in place of the Status's list indexed by Metric.
		return writeJSON(w, struct {
			datapath.Status
			Metrics map[string]maps.Counter
		}{s, named})
	}
	fmt.Fprint(w, s)
	fmt.Fprintln(w, "Datapath Counters:")
	for i, c := range metrics {
		fmt.Fprintf(w, "  %-18s %10d packets %12d bytes\n", maps.Metric(i).String()+":", c.Packets, c.Bytes)
	}
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
func endpointList(node *loader.Node, opts options, w io.Writer) error {
	eps, err := maps.NewEndpoints(node.Maps.Endpoints).List()
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
func endpointStats(node *loader.Node, opts options, w io.Writer) error {
	eps, err := maps.NewEndpoints(node.Maps.Endpoints).List()
	if err != nil {
		return err
	}
	stats := maps.NewStats(node.Maps.EndpointStats)
	type row struct {
		endpointJSON
		maps.EndpointStats
	}
	rows := []row{}
	for _, ep := range eps {
		s, err := stats.Get(ep.IfIndex)
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

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
