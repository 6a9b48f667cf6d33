package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// NetConf is the plugin's entry in a conflist.
type NetConf struct {
	types.NetConf

	// PinPath is the node's datapath directory on bpffs. Default
	// loader.DefaultPinPath.
	PinPath string `json:"pinPath,omitempty"`
	// ARPResponder makes the datapath answer the pod's ARP requests, for
	// plugins that put no gateway address on the host-side veth.
	ARPResponder bool `json:"arpResponder,omitempty"`
	// RequireBPFHostRouting makes ADD fail instead of falling back to
	// legacy host routing.
	RequireBPFHostRouting bool `json:"requireBPFHostRouting,omitempty"`
	// Disable forces fallbacks, for kernels with buggy helpers and tests.
	Disable Disable `json:"disable,omitempty"`
	// Device is the node's device toward other nodes ("eth0"): the first
	// ADD attaches from-netdev and to-netdev to it. Empty for a node
	// without routing to other nodes, or whose devices an agent manages.
	Device string `json:"device,omitempty"`
	// NativeRoutingCIDR holds the pods of all nodes ("10.0.0.0/8"): pod
	// traffic to it that is not for this node leaves by the datapath's
	// FIB lookup, past the node's stack.
	NativeRoutingCIDR string `json:"nativeRoutingCIDR,omitempty"`
	// Timeout bounds how long ADD and DEL wait for the node's datapath,
	// whose changes serialise on a lock of the pin path, before they give
	// up with ErrTryAgainLater: a Go duration such as "30s". Default
	// defaultTimeout.
	Timeout string `json:"timeout,omitempty"`
	// Masquerade false turns BPF masquerade off; it is on for a node with
	// a device and a native routing CIDR (datapath.Config.DisableMasquerade).
	Masquerade *bool `json:"masquerade,omitempty"`
	// CgroupPath is the cgroup v2 directory whose sockets get socket-level
	// load balancing ("/sys/fs/cgroup" for the whole node), given to the
	// first ADD's datapath (datapath.Config.CgroupPath). Empty leaves
	// services to the tc load balancer.
	CgroupPath string `json:"cgroupPath,omitempty"`
	// MaxServices sizes the node's service tables when the first ADD
	// loads the datapath: how many services (frontends) they hold, with
	// loader.ServiceBackendSlots backends each on average
	// (datapath.Config.MaxServices). 0 takes the running node's, or the
	// loader's default; another value than the running node's fails.
	MaxServices uint32 `json:"maxServices,omitempty"`

	timeout time.Duration // Timeout parsed by validate
}

// defaultTimeout is how long a call waits for the datapath unless the key
// timeout says otherwise: well below the two minutes a kubelet gives the
// runtime for a pod sandbox, well above the 2 s that 50 parallel ADDs on a
// fresh node take (the last waits for all the others).
const defaultTimeout = 60 * time.Second

// Disable names the kernel features the datapath must not use (see
// loader.Disable).
type Disable struct {
	RedirectPeer  bool `json:"redirectPeer,omitempty"`
	RedirectNeigh bool `json:"redirectNeigh,omitempty"`
	FIBLookup     bool `json:"fibLookup,omitempty"`
	TCX           bool `json:"tcx,omitempty"`

	unknown []string // keys of the netconf's disable that are none of these
}

// UnmarshalJSON decodes disable, keeping the keys it does not know for
// validate to refuse: a misspelt key must not go unnoticed.
func (d *Disable) UnmarshalJSON(b []byte) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return fmt.Errorf("disable: %w", err)
	}
	known := map[string]*bool{ // by lower-case key, as encoding/json matches them
		"redirectpeer": &d.RedirectPeer, "redirectneigh": &d.RedirectNeigh, "fiblookup": &d.FIBLookup, "tcx": &d.TCX,
	}
	for k, raw := range keys {
		v, ok := known[strings.ToLower(k)]
		if !ok {
			d.unknown = append(d.unknown, k)
			continue
		}
		if err := json.Unmarshal(raw, v); err != nil {
			return fmt.Errorf("disable.%s: %w", k, err)
		}
	}
	slices.Sort(d.unknown)
	return nil
}

// parseConf decodes the netconf on stdin and its prevResult, if any.
func parseConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, cniError(types.ErrDecodingFailure, "parse netconf: %v", err)
	}
	// cni's conversion of an older result, and podOf, take the entries of
	// these lists (keys matched as encoding/json does) to be objects: a
	// null one would panic them.
	for k, v := range conf.RawPrevResult {
		if list, _ := v.([]any); (strings.EqualFold(k, "interfaces") || strings.EqualFold(k, "ips")) && slices.Contains(list, nil) {
			return nil, cniError(types.ErrDecodingFailure, "parse prevResult: %s has a null entry", k)
		}
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, cniError(types.ErrDecodingFailure, "parse prevResult: %v", err)
	}
	if conf.PinPath == "" {
		conf.PinPath = loader.DefaultPinPath
	}
	return conf, nil
}

// validate checks the keys that ADD and CHECK use, with
// ErrInvalidNetworkConfig for a wrong one, and parses timeout.
func (c *NetConf) validate() error {
	if err := checkPinPath(c.PinPath); err != nil {
		return err
	}
	if len(c.Disable.unknown) > 0 {
		return cniError(types.ErrInvalidNetworkConfig, "disable: unknown key(s) %s: want redirectPeer, redirectNeigh, fibLookup or tcx",
			strings.Join(c.Disable.unknown, ", "))
	}
	var err error
	if c.timeout, err = c.parseTimeout(); err != nil {
		return err
	}
	if _, err := c.nativeRoutingCIDR(); err != nil {
		return err
	}
	if c.CgroupPath != "" && (!filepath.IsAbs(c.CgroupPath) || strings.ContainsRune(c.CgroupPath, 0)) {
		return cniError(types.ErrInvalidNetworkConfig, "cgroupPath %q is not an absolute path such as /sys/fs/cgroup", trimmed(c.CgroupPath, maxShownPinPath))
	}
	if c.MaxServices > loader.MaxServicesLimit {
		return cniError(types.ErrInvalidNetworkConfig, "maxServices %d: at most %d", c.MaxServices, loader.MaxServicesLimit)
	}
	return c.checkDevice()
}

// parseTimeout parses the key timeout: defaultTimeout if not given.
func (c *NetConf) parseTimeout() (time.Duration, error) {
	if c.Timeout == "" {
		return defaultTimeout, nil
	}
	d, err := time.ParseDuration(c.Timeout)
	if err != nil || d <= 0 {
		return defaultTimeout, cniError(types.ErrInvalidNetworkConfig, "timeout %q is not a positive duration such as 30s", c.Timeout)
	}
	return d, nil
}

// Limits of a pin path: the kernel's PATH_MAX less room for what the
// loader puts before it (/proc/PID/root, to reach bpffs from a private
// mount namespace) and below it (links/<netns>_<ifindex>_<program>), and
// NAME_MAX for each of its names.
const (
	maxPinPathLen   = unix.PathMax - 256
	maxPinNameLen   = 255
	maxShownPinPath = 60 // of an overlong pin path, the start shown in errors
)

// checkPinPath checks that pinPath could be a node's pin directory: an
// absolute path that a path syscall takes, not the bpffs root. Whether it
// lies on bpffs and holds nothing foreign is the loader's to find out.
func checkPinPath(pinPath string) error {
	shown := trimmed(pinPath, maxShownPinPath)
	switch clean := filepath.Clean(pinPath); {
	case strings.ContainsRune(pinPath, 0):
		return cniError(types.ErrInvalidNetworkConfig, "pinPath %q holds a NUL byte", shown)
	case !filepath.IsAbs(pinPath):
		return cniError(types.ErrInvalidNetworkConfig, "pinPath %q is not an absolute path such as %s", shown, loader.DefaultPinPath)
	case len(pinPath) > maxPinPathLen:
		return cniError(types.ErrInvalidNetworkConfig, "pinPath %q is %d bytes long: at most %d", shown, len(pinPath), maxPinPathLen)
	case clean == "/" || clean == loader.DefaultBPFFS:
		return cniError(types.ErrInvalidNetworkConfig, "pinPath %s is the root of the bpf filesystem: use a directory of its own below it, such as %s",
			pinPath, loader.DefaultPinPath)
	}
	for _, name := range strings.Split(pinPath, "/") {
		if len(name) > maxPinNameLen {
			return cniError(types.ErrInvalidNetworkConfig, "pinPath %q has a name of %d bytes: at most %d", shown, len(name), maxPinNameLen)
		}
	}
	return nil
}

// datapathConfig is the node's datapath.Config for ADD, or a CNI error
// naming the key that is wrong.
func (c *NetConf) datapathConfig() (datapath.Config, error) {
	if err := c.validate(); err != nil {
		return datapath.Config{}, err
	}
	native, err := c.nativeRoutingCIDR()
	if err != nil {
		return datapath.Config{}, err
	}
	cfg := datapath.Config{
		PinPath:               c.PinPath,
		RequireBPFHostRouting: c.RequireBPFHostRouting,
		Disable: loader.Disable{
			RedirectPeer:  c.Disable.RedirectPeer,
			RedirectNeigh: c.Disable.RedirectNeigh,
			FIBLookup:     c.Disable.FIBLookup,
			TCX:           c.Disable.TCX,
		},
		NativeRoutingCIDR: native,
		DisableMasquerade: c.Masquerade != nil && !*c.Masquerade,
		CgroupPath:        c.CgroupPath,
		MaxServices:       c.MaxServices,
	}
	if c.Device != "" {
		cfg.Devices = []string{c.Device}
	}
	return cfg, nil
}

// nativeRoutingCIDR parses the key nativeRoutingCIDR: an IPv4 network
// address, or "" for none (the invalid Prefix).
func (c *NetConf) nativeRoutingCIDR() (netip.Prefix, error) {
	if c.NativeRoutingCIDR == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(c.NativeRoutingCIDR)
	switch {
	case err != nil:
		return netip.Prefix{}, cniError(types.ErrInvalidNetworkConfig, "nativeRoutingCIDR %q is not a CIDR such as 10.0.0.0/8", c.NativeRoutingCIDR)
	case !p.Addr().Is4():
		return netip.Prefix{}, cniError(types.ErrInvalidNetworkConfig, "nativeRoutingCIDR %s: only IPv4 is supported", p)
	case p.Masked() != p:
		return netip.Prefix{}, cniError(types.ErrInvalidNetworkConfig, "nativeRoutingCIDR %s has host bits set (did you mean %s?)", p, p.Masked())
	case p.Bits() == 0:
		return netip.Prefix{}, cniError(types.ErrInvalidNetworkConfig, "nativeRoutingCIDR %s would take every destination past the node's stack", p)
	}
	return p, nil
}

// checkDevice checks that the key device could name a Linux device; that
// the node has it is for ADD and CHECK to find.
func (c *NetConf) checkDevice() error {
	if c.Device == "" {
		return nil
	}
	if len(c.Device) > 15 || c.Device == "." || c.Device == ".." ||
		strings.ContainsAny(c.Device, "/: \t\n") {
		return cniError(types.ErrInvalidNetworkConfig, "device %q is not a device name such as eth0", c.Device)
	}
	return nil
}

// pod is what the datapath needs to know of a pod's interface.
type pod struct {
	HostIf string           // host-side veth in the node's netns
	IP     netip.Addr       // IPv4 address of the container interface
	IPv6   netip.Addr       // its IPv6 address, if any (source-checked by the datapath)
	MAC    net.HardwareAddr // MAC of the container interface; nil if unknown
}

// podOf finds the pod's interfaces and address in a previous plugin's
// result: the host-side veth (no sandbox), the container interface
// (CNI_IFNAME in CNI_NETNS), its MAC if given, its IPv4 address and its
// first IPv6 address, if it has one.
func podOf(prev types.Result, args *skel.CmdArgs) (pod, error) {
	res, err := types100.GetResult(prev)
	if err != nil {
		return pod{}, cniError(types.ErrDecodingFailure, "convert prevResult: %v", err)
	}
	host, ctr := -1, -1
	for i, iface := range res.Interfaces {
		switch {
		case iface.Sandbox == "" && host >= 0:
			return pod{}, cniError(types.ErrInvalidNetworkConfig, "prevResult has more than one host-side interface (%s, %s): want a veth pair such as ptp makes", res.Interfaces[host].Name, iface.Name)
		case iface.Sandbox == "":
			host = i
		case iface.Sandbox == args.Netns && iface.Name == args.IfName:
			ctr = i
		}
	}
	if host < 0 {
		return pod{}, cniError(types.ErrInvalidNetworkConfig, "prevResult has no host-side interface")
	}
	if ctr < 0 {
		return pod{}, cniError(types.ErrInvalidNetworkConfig, "prevResult has no container interface %s in netns %s", args.IfName, args.Netns)
	}
	p := pod{HostIf: res.Interfaces[host].Name}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != ctr {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		switch ip = ip.Unmap(); {
		case ip.Is4() && !p.IP.IsValid():
			p.IP = ip
		case ip.Is6() && !ip.IsLinkLocalUnicast() && !p.IPv6.IsValid():
			p.IPv6 = ip
		}
	}
	if !p.IP.IsValid() {
		return pod{}, cniError(types.ErrInvalidNetworkConfig, "prevResult has no IPv4 address on container interface %s", res.Interfaces[ctr].Name)
	}
	p.MAC, _ = net.ParseMAC(res.Interfaces[ctr].Mac)
	return p, nil
}

// podWithMAC is podOf for ADD and CHECK, which need the pod's MAC: if
// prevResult lacks it, it is read inside the pod.
func podWithMAC(prev types.Result, args *skel.CmdArgs) (pod, error) {
	p, err := podOf(prev, args)
	if err != nil || p.MAC != nil {
		return p, err
	}
	if p.MAC, err = linkMAC(args.Netns, args.IfName); err != nil {
		return pod{}, cniError(types.ErrInternal, "pod MAC not in prevResult and not readable: %v", err)
	}
	return p, nil
}

// linkMAC reads the MAC of device ifname in the netns at nsPath.
func linkMAC(nsPath, ifname string) (net.HardwareAddr, error) {
	h, err := routing.Handle(nsPath)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("device %s in netns %s: %w", ifname, nsPath, err)
	}
	return l.Attrs().HardwareAddr, nil
}
