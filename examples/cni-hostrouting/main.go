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
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
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
	// The pod must be there, even when prevResult tells all of it.
	if err := podNetns(args.Netns); err != nil {
		return err
	}
	p, err := podWithMAC(conf.PrevResult, args)
	if err != nil {
		return err
	}
	err = withTimeout(conf.timeout, conf.PinPath, func() error { return addEndpoint(conf, cfg, args, p) })
	if err != nil {
		return err
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// addEndpoint puts pod p on the node's datapath, recorded as CNI_IFNAME of
// CNI_CONTAINERID. The first ADD loads the datapath and attaches
// from-netdev and to-netdev to the device; later ones adopt it, and
// attaching again keeps the one attachment (or restores it, if it went
// missing).
func addEndpoint(conf *NetConf, cfg datapath.Config, args *skel.CmdArgs, p pod) error {
	dp, err := datapath.New(cfg)
	switch {
	case conf.Device != "" && errors.As(err, &netlink.LinkNotFoundError{}):
		return cniError(types.ErrInvalidNetworkConfig, "device %q: no such device in the node's network namespace (%v)", conf.Device, err)
	case err != nil:
		return datapathError(conf.PinPath, "start datapath", err)
	}
	defer dp.Close()
	_, err = dp.AddEndpoint(datapath.Endpoint{IfName: p.HostIf, IP: p.IP, IPv6: p.IPv6, MAC: p.MAC, ARPResponder: conf.ARPResponder,
		ContainerID: args.ContainerID, PodIfName: args.IfName})
	if err != nil {
		return datapathError(conf.PinPath, fmt.Sprintf("pod %s (container %s)", p.IP, args.ContainerID), err)
	}
	return nil
}

// cmdDel takes the pod's endpoint off the datapath. As the CNI spec asks,
// it succeeds whenever there is nothing to remove: no datapath at pinPath
// (or a pinPath that cannot hold one), no endpoint of the pod, a pod
// namespace that is gone. It fails for what a retry or the runtime must
// mend: a CNI_NETNS that is not an absolute path, a datapath that does
// not answer within timeout, an endpoint that cannot be removed.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.Netns != "" {
		if _, _, err := netnsGone(args.Netns); err != nil {
			return err
		}
	}
	if checkPinPath(conf.PinPath) != nil {
		return nil // ADD refused it: no datapath there
	}
	timeout, _ := conf.parseTimeout() // a wrong one is ADD's to refuse
	return withTimeout(timeout, conf.PinPath, func() error { return delEndpoints(conf, args) })
}

func delEndpoints(conf *NetConf, args *skel.CmdArgs) error {
	// Never load a datapath on DEL: only adopt one that is there.
	dp, err := datapath.Open(datapath.Location{PinPath: conf.PinPath})
	switch {
	case noDatapath(err):
		return nil
	case err != nil:
		return datapathError(conf.PinPath, "open datapath", err)
	}
	defer dp.Close()
	eps, err := podEndpoints(dp, conf, args)
	if err != nil {
		return err
	}
	for _, ep := range eps {
		err := dp.RemoveEndpoint(ep.IP)
		// Not found: removed meanwhile, by a concurrent DEL of the pod.
		// Removed: the whole datapath is gone, and the endpoint with it.
		if err != nil && !errors.Is(err, datapath.ErrNotFound) && !errors.Is(err, datapath.ErrRemoved) {
			return datapathError(conf.PinPath, fmt.Sprintf("pod %s (container %s)", ep.IP, args.ContainerID), err)
		}
	}
	return nil
}

// noDatapath tells whether err, from datapath.Open, says that pinPath
// holds no datapath, and cannot.
func noDatapath(err error) bool {
	return errors.Is(err, loader.ErrNoNode) || errors.Is(err, os.ErrNotExist) || errors.Is(err, loader.ErrNotBPFFS) ||
		errors.Is(err, loader.ErrForeignPinPath) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ENAMETOOLONG)
}

// podEndpoints finds the pod's endpoints: the one with the address of
// prevResult and the one recorded for CNI_CONTAINERID and CNI_IFNAME by
// ADD; without either, the one with the address that CNI_IFNAME has in
// CNI_NETNS, if the pod is still there. An endpoint that ADD recorded for
// another container is not the pod's, whatever its address: a DEL that
// comes late or again, after the address went to a new pod, leaves that
// pod alone.
func podEndpoints(dp *datapath.Datapath, conf *NetConf, args *skel.CmdArgs) ([]datapath.Endpoint, error) {
	var ips []netip.Addr
	if conf.PrevResult != nil {
		if p, err := podOf(conf.PrevResult, args); err == nil {
			ips = append(ips, p.IP)
		}
	}
	ep, err := dp.EndpointByContainer(args.ContainerID, args.IfName)
	switch {
	case err == nil:
		ips = append(ips, ep.IP)
	case !errors.Is(err, datapath.ErrNotFound):
		return nil, datapathError(conf.PinPath, "find the pod's endpoint", err)
	}
	if len(ips) == 0 {
		if ips, err = netnsAddrs(args); err != nil {
			return nil, err
		}
	}
	var eps []datapath.Endpoint
	for _, ip := range ips {
		ep, err := dp.Endpoint(ip)
		switch {
		case errors.Is(err, datapath.ErrNotFound):
			continue
		case err != nil:
			return nil, datapathError(conf.PinPath, fmt.Sprintf("endpoint %s", ip), err)
		case !ownedBy(ep, args):
			fmt.Fprintf(os.Stderr, "hostrouting: DEL of container %s leaves endpoint %s, which belongs to container %s %s\n",
				args.ContainerID, ep.IP, ep.ContainerID, ep.PodIfName)
			continue
		case slices.ContainsFunc(eps, func(e datapath.Endpoint) bool { return e.IP == ep.IP }):
			continue
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

// ownedBy tells whether ep may be the pod's: recorded for its container
// and interface, or for no container (added by another agent, or before
// endpoints recorded them).
func ownedBy(ep datapath.Endpoint, args *skel.CmdArgs) bool {
	return ep.ContainerID == "" ||
		ep.ContainerID == args.ContainerID && (ep.PodIfName == "" || ep.PodIfName == args.IfName)
}

// netnsAddrs returns the IPv4 addresses of CNI_IFNAME inside CNI_NETNS;
// none if the pod is gone: no CNI_NETNS, no namespace at that path any
// more, or no such device in it.
func netnsAddrs(args *skel.CmdArgs) ([]netip.Addr, error) {
	if args.Netns == "" {
		return nil, nil
	}
	if gone, _, err := netnsGone(args.Netns); gone || err != nil {
		return nil, err
	}
	h, err := routing.Handle(args.Netns)
	if err != nil {
		if gone, _, _ := netnsGone(args.Netns); gone {
			return nil, nil // deleted meanwhile
		}
		return nil, cniError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS %s: %v", args.Netns, err)
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
