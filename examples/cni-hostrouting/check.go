package main

import (
	"bytes"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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
		if err := checkAttached(node, host, prog); err != nil {
			return cniError(types.ErrInternal, "%s on %s: %v", prog, p.HostIf, err)
		}
	}
	return nil
}

// checkAttached tells whether the node's program prog is attached to dev,
// on tc ingress for from-container and tc egress for to-container.
func checkAttached(node *loader.Node, dev netlink.Link, prog loader.Program) error {
	info, err := node.Program(prog).Info()
	if err != nil {
		return err
	}
	id, ok := info.ID()
	if !ok {
		return fmt.Errorf("kernel does not tell program IDs")
	}
	ingress := prog == loader.FromContainer
	if node.Features.TCX.Enabled {
		attach := ebpf.AttachTCXEgress
		if ingress {
			attach = ebpf.AttachTCXIngress
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: dev.Attrs().Index, Attach: attach})
		if err != nil {
			return err
		}
		for _, ap := range res.Programs {
			if ap.ID == id {
				return nil
			}
		}
		return fmt.Errorf("not attached (tcx %s)", attach)
	}
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	filters, err := netlink.FilterList(dev, parent)
	if err != nil {
		return err
	}
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Id == int(id) {
			return nil
		}
	}
	return fmt.Errorf("not attached (no cls_bpf filter with program %d)", id)
}
