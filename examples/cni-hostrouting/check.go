package main

import (
	"bytes"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// cmdCheck verifies that the pod is on the datapath: its endpoint holds
// the address, host device and MAC of prevResult, and both programs are
// attached to the host device.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return cniError(types.ErrInvalidNetworkConfig, "no prevResult: CHECK needs the result of ADD")
	}
	p, err := podWithMAC(conf.PrevResult, args)
	if err != nil {
		return err
	}
	node, err := loader.Open(conf.PinPath)
	if err != nil {
		return cniError(types.ErrInternal, "no datapath at pinPath %s: %v", conf.PinPath, err)
	}
	defer node.Close()
	ep, err := maps.NewEndpoints(node.Maps.Endpoints).Lookup(p.IP)
	if err != nil {
		return cniError(types.ErrInternal, "%v", err)
	}
	host, err := netlink.LinkByName(p.HostIf)
	if err != nil {
		return cniError(types.ErrInternal, "host device %s: %v", p.HostIf, err)
	}
	switch {
	case ep.IfIndex != host.Attrs().Index:
		return cniError(types.ErrInternal, "endpoint %s is on ifindex %d, want %d (%s)", p.IP, ep.IfIndex, host.Attrs().Index, p.HostIf)
	case !bytes.Equal(ep.MAC, p.MAC):
		return cniError(types.ErrInternal, "endpoint %s has MAC %s, want %s", p.IP, ep.MAC, p.MAC)
	case (ep.Flags&maps.EndpointARPResponder != 0) != conf.ARPResponder:
		return cniError(types.ErrInternal, "endpoint %s has flags %#x, want arpResponder %v", p.IP, ep.Flags, conf.ARPResponder)
	}
	for _, prog := range []loader.Program{loader.FromContainer, loader.ToContainer} {
		attached, err := node.Attached("", host.Attrs().Index, prog)
		if err != nil {
			return cniError(types.ErrInternal, "%v", err)
		}
		if !attached {
			return cniError(types.ErrInternal, "%s is not attached to %s", prog, p.HostIf)
		}
	}
	return nil
}
