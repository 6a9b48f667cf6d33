// Command hostrouting is a chained CNI plugin that puts pods on the
// hostrouting eBPF datapath: after a plugin such as ptp has made the pod's
// veth pair and address, it adds the pod as an endpoint, so that traffic
// between pods of the node is moved by tc BPF programs with
// bpf_redirect_peer instead of the kernel's routing.
//
// It runs in the node's network namespace, loads the datapath on the
// first ADD and leaves it pinned (at pinPath) for later calls. With the
// keys device and nativeRoutingCIDR, that first ADD also puts from-netdev
// and to-netdev on the node's device, so that pods reach other nodes' pods
// by plain routed packets past both nodes' stacks; the routes to other
// nodes are the node agent's (datapath.UpsertNode, `hrctl node add`).
// DEL and CHECK only adopt a datapath that is there. See README.md for
// conflists.
package main

import (
	"errors"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/routing"
)

func main() {
	skel.PluginMainFuncs(
		skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports("0.4.0", "1.0.0"),
		"CNI plugin hostrouting: eBPF host routing for chained pods")
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return cniError(types.ErrInvalidNetworkConfig, "no prevResult: hostrouting is a chained plugin and must follow one that makes the pod's veth pair, such as ptp")
	}
	cfg, err := conf.datapathConfig()
	if err != nil {
		return err
	}
	p, err := podWithMAC(conf.PrevResult, args)
	if err != nil {
		return err
	}
	// The first ADD loads the datapath and attaches from-netdev and
	// to-netdev to the device; later ones adopt it, and attaching again
	// keeps the one attachment (or restores it, if it went missing).
	dp, err := datapath.New(cfg)
	switch {
	case conf.Device != "" && errors.As(err, &netlink.LinkNotFoundError{}):
		return cniError(types.ErrInvalidNetworkConfig, "device %q: no such device in the node's network namespace (%v)", conf.Device, err)
	case errors.Is(err, loader.ErrNotBPFFS):
		return cniError(types.ErrInvalidNetworkConfig, "start datapath: %v", err)
	case err != nil:
		return cniError(types.ErrInternal, "start datapath: %v", err)
	}
	defer dp.Close()
	_, err = dp.AddEndpoint(datapath.Endpoint{IfName: p.HostIf, IP: p.IP, IPv6: p.IPv6, MAC: p.MAC, ARPResponder: conf.ARPResponder})
	if err != nil {
		return cniError(types.ErrInternal, "%v", err)
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// cmdDel takes the pod's endpoint off the datapath. It succeeds when there
// is nothing to remove: no datapath, no endpoint, no address to find.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	ips, err := podAddrs(conf, args)
	if err != nil || len(ips) == 0 {
		return err
	}
	// Never load a datapath on DEL: only adopt one that is there.
	dp, err := datapath.Open(conf.PinPath, "")
	if errors.Is(err, loader.ErrNoNode) || errors.Is(err, os.ErrNotExist) || errors.Is(err, loader.ErrNotBPFFS) {
		return nil
	}
	if err != nil {
		return cniError(types.ErrInternal, "open datapath at pinPath %s: %v", conf.PinPath, err)
	}
	defer dp.Close()
	for _, ip := range ips {
		if err := dp.RemoveEndpoint(ip); err != nil && !errors.Is(err, maps.ErrNotFound) {
			return cniError(types.ErrInternal, "%v", err)
		}
	}
	return nil
}

// podAddrs returns the pod's IPv4 address from prevResult or, without one,
// those on CNI_IFNAME inside CNI_NETNS; none if the pod is gone.
func podAddrs(conf *NetConf, args *skel.CmdArgs) ([]netip.Addr, error) {
	if conf.PrevResult != nil {
		if p, err := podOf(conf.PrevResult, args); err == nil {
			return []netip.Addr{p.IP}, nil
		}
	}
	if args.Netns == "" {
		return nil, nil
	}
	h, err := routing.Handle(args.Netns)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EINVAL) {
		return nil, nil // the netns is gone, or the file no netns any more
	}
	if err != nil {
		return nil, cniError(types.ErrInvalidNetNS, "%v", err)
	}
	defer h.Close()
	link, err := h.LinkByName(args.IfName)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil, nil // the device is gone
	}
	if err != nil {
		return nil, cniError(types.ErrInternal, "device %s in netns %s: %v", args.IfName, args.Netns, err)
	}
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return nil, cniError(types.ErrInternal, "addresses of %s in netns %s: %v", args.IfName, args.Netns, err)
	}
	var ips []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			ips = append(ips, ip)
		}
	}
	return ips, nil
}
