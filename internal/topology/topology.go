// Package topology builds the network of a kind-like cluster in network
// namespaces: a "wire" namespace holding the bridge br0 with 172.18.0.1/16,
// like the docker bridge kind's nodes hang on, and node namespaces whose
// eth0 is a veth with its peer on br0. It serves datapathtest's Cluster,
// the examples and the benchmark and is not a public API.
//
// Everything is made in namespaces of its own, named by the caller's
// unique prefix; nothing changes in the caller's namespace. Wire.Close
// removes all of it.
package topology

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/hostrouting/hostrouting/internal/netcheck"
	"github.com/hostrouting/hostrouting/routing"
)

// Gateway is br0's address on the wire and every node's default gateway,
// like the docker bridge's address on the network kind's nodes hang on.
var Gateway = netip.MustParsePrefix("172.18.0.1/16")

// MaxNodes is how many nodes NodeIP addresses: 172.18.0.2 to 172.18.0.254.
const MaxNodes = 253

// NodeIP returns the address of node i on the wire, 172.18.0.(2+i), as
// kind gives them; i runs from 0 to MaxNodes-1.
func NodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 18, 0, byte(2 + i)})
}

// upTimeout bounds the wait for one device to come up.
const upTimeout = 5 * time.Second

// Options describe a Wire for NewWire.
type Options struct {
	// Prefix begins the name of every namespace the Wire makes:
	// Prefix+"-wire" and Prefix+"-"+NodeOptions.Name. Make it unique to
	// the run, such as "hr-crossnode-" and a random ID.
	Prefix string
	// MTU of every node's eth0 and its bridge port; 0 means 1500.
	MTU int
	// Check, if not nil, is called with the path of each namespace as soon
	// as it is made and before anything in it changes; its error fails
	// the call that made it. The benchmark refuses with it to work in
	// anything but its run's namespaces.
	Check func(nsPath string) error
}

// Node is a node namespace on the wire: lo up, IPv6 off, IPv4 forwarding
// on and rp_filter off (routing.EnableForwarding), and Device, a veth
// whose peer Port is on br0, addressed IP/16 with a default route via
// Gateway.
type Node struct {
	Name      string // as NodeOptions named it
	NetnsName string // Options.Prefix+"-"+Name, under routing.NetnsDir
	Netns     string // its path

	Device string // "eth0"
	IP     netip.Addr
	Port   string // Device's peer, a port of br0 in the wire namespace
}

// NodeOptions describe a node for Wire.AddNode.
type NodeOptions struct {
	Name string     // the namespace is Options.Prefix+"-"+Name
	Port string     // the name of eth0's peer on br0, unique on the wire
	IP   netip.Addr // eth0's address, in 172.18.0.0/16: NodeIP(i)
}

// Wire is a layer-2 segment in a namespace of its own, br0 with Gateway on
// it, and the nodes AddNode plugs into it.
type Wire struct {
	NetnsName string  // Options.Prefix+"-wire", under routing.NetnsDir
	Netns     string  // its path
	Nodes     []*Node // in the order AddNode made them

	opts Options
	undo []func() error // run in reverse by Close
}

// NewWire makes the wire namespace with br0 (STP off, forward delay 0, so
// that a port forwards at once) and Gateway on it. On failure it removes
// what it made.
func NewWire(ctx context.Context, opts Options) (*Wire, error) {
	if opts.Prefix == "" {
		return nil, errors.New("new wire: no namespace prefix")
	}
	if opts.MTU == 0 {
		opts.MTU = 1500
	}
	w := &Wire{opts: opts}
	if err := w.build(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("wire: %w", err), w.Close())
	}
	return w, nil
}

func (w *Wire) build(ctx context.Context) error {
	var err error
	w.NetnsName = w.opts.Prefix + "-wire"
	if w.Netns, err = w.newNetns(ctx, w.NetnsName); err != nil {
		return err
	}
	// The netlink package cannot set the forward delay: ip can.
	if err := ipCmd(ctx, w.NetnsName, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"); err != nil {
		return err
	}
	h, err := routing.Handle(w.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	br, err := h.LinkByName("br0")
	if err == nil {
		err = h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(Gateway)})
	}
	if err == nil {
		err = h.LinkSetUp(br)
	}
	if err != nil {
		return fmt.Errorf("set up br0: %w", err)
	}
	return nil
}

// newNetns makes a namespace with NewNetns and Check and has Close delete
// it.
func (w *Wire) newNetns(ctx context.Context, name string) (string, error) {
	path, err := NewNetns(ctx, name, w.opts.Check)
	if err != nil {
		return "", err
	}
	w.undo = append(w.undo, func() error { return routing.DeleteNetns(name) })
	return path, nil
}

// AddNode makes a node namespace and plugs its eth0 into br0; see Node.
// It does not wait for the devices to come up: WaitUp does, for all nodes
// at once. What a failed AddNode made is left for Close.
func (w *Wire) AddNode(ctx context.Context, opts NodeOptions) (*Node, error) {
	n := &Node{Name: opts.Name, NetnsName: w.opts.Prefix + "-" + opts.Name, Device: "eth0", IP: opts.IP, Port: opts.Port}
	if err := w.addNode(ctx, n); err != nil {
		return nil, fmt.Errorf("node %s: %w", opts.Name, err)
	}
	w.Nodes = append(w.Nodes, n)
	return n, nil
}

func (w *Wire) addNode(ctx context.Context, n *Node) error {
	var err error
	if n.Netns, err = w.newNetns(ctx, n.NetnsName); err != nil {
		return err
	}
	if err := routing.EnableForwarding(n.Netns); err != nil {
		return err
	}

	wireNs, err := netns.GetFromPath(w.Netns)
	if err != nil {
		return fmt.Errorf("open wire netns: %w", err)
	}
	defer wireNs.Close()
	h, err := routing.Handle(n.Netns)
	if err != nil {
		return err
	}
	defer h.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = n.Device, w.opts.MTU
	dev := &netlink.Veth{LinkAttrs: attrs, PeerName: n.Port, PeerNamespace: netlink.NsFd(wireNs)}
	if err := h.LinkAdd(dev); err != nil {
		return fmt.Errorf("create %s: %w", n.Device, err)
	}
	w.undo = append(w.undo, func() error { return routing.DeleteVeth(n.Netns, n.Device) })

	wh, err := routing.Handle(w.Netns)
	if err != nil {
		return err
	}
	defer wh.Close()
	br, err := wh.LinkByName("br0")
	var port netlink.Link
	if err == nil {
		port, err = wh.LinkByName(n.Port)
	}
	if err == nil {
		err = wh.LinkSetMaster(port, br)
	}
	if err == nil {
		err = wh.LinkSetUp(port)
	}
	if err != nil {
		return fmt.Errorf("plug %s into br0: %w", n.Port, err)
	}

	if err := h.AddrAdd(dev, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.IP, Gateway.Bits()))}); err != nil {
		return fmt.Errorf("add %s to %s: %w", n.IP, n.Device, err)
	}
	if err := h.LinkSetUp(dev); err != nil {
		return fmt.Errorf("set %s up: %w", n.Device, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: dev.Index, Gw: Gateway.Addr().AsSlice()}); err != nil {
		return fmt.Errorf("add default route via %s: %w", Gateway.Addr(), err)
	}
	return nil
}

// WaitUp waits until br0 and every node's eth0 and bridge port are
// operationally up, so that the first packets sent are not lost (see
// netcheck.WaitOperUp): at most 5s each.
func (w *Wire) WaitUp(ctx context.Context) error {
	for _, n := range w.Nodes {
		if err := netcheck.WaitOperUp(ctx, n.Netns, n.Device, upTimeout); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		if err := netcheck.WaitOperUp(ctx, w.Netns, n.Port, upTimeout); err != nil {
			return fmt.Errorf("wire: %w", err)
		}
	}
	if err := netcheck.WaitOperUp(ctx, w.Netns, "br0", upTimeout); err != nil {
		return fmt.Errorf("wire: %w", err)
	}
	return nil
}

// Close removes what the Wire made, the last first: each node's eth0 and
// namespace, then the wire's namespace with br0. What others made in these
// namespaces goes with them, though the kernel keeps a namespace while
// something, such as an open socket, still holds it. Close returns the
// errors joined; a second Close does nothing.
func (w *Wire) Close() error {
	var errs []error
	for i := len(w.undo) - 1; i >= 0; i-- {
		errs = append(errs, w.undo[i]())
	}
	w.undo = nil
	return errors.Join(errs...)
}

// NewNetns creates the network namespace name (routing.CreateNetns) with lo
// up and IPv6 off: the fixtures and examples are IPv4 only, and IPv6
// autoconfiguration would only blur the devices' packet counters. check,
// if not nil, is called with its path first, before anything changes in
// it. NewNetns fails at once when ctx has ended; on failure it deletes the
// namespace again, and otherwise the caller does (routing.DeleteNetns).
func NewNetns(ctx context.Context, name string, check func(nsPath string) error) (path string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	path, err = routing.CreateNetns(name)
	if err != nil {
		return "", err
	}
	if err := setUpNetns(path, check); err != nil {
		return "", errors.Join(fmt.Errorf("netns %s: %w", name, err), routing.DeleteNetns(name))
	}
	return path, nil
}

func setUpNetns(path string, check func(string) error) error {
	if check != nil {
		if err := check(path); err != nil {
			return err
		}
	}
	h, err := routing.Handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return routing.DisableIPv6(path)
}

// ipCmd runs `ip -n nsName args...`, for what the netlink package cannot
// say (the bridge's STP state and forward delay).
func ipCmd(ctx context.Context, nsName string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args = append([]string{"-n", nsName}, args...)
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
