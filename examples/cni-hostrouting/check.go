package main

import (
	"bytes"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath"
)

// cmdCheck verifies that the pod is on the datapath: its endpoint holds
// the address, host device and MAC of prevResult, and both programs are
// attached to the host device. With device configured, from-netdev and
// to-netdev must be on it; with nativeRoutingCIDR, the datapath must have
// been loaded with it.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return cniError(types.ErrInvalidNetworkConfig, "no prevResult: CHECK needs the result of ADD")
	}
	if err := conf.validate(); err != nil {
		return err
	}
	native, _ := conf.nativeRoutingCIDR()
	if err := podNetns(args.Netns); err != nil {
		return err
	}
	p, err := podWithMAC(conf.PrevResult, args)
	if err != nil {
		return err
	}
	dp, err := datapath.Open(datapath.Location{PinPath: conf.PinPath})
	switch {
	case noDatapath(err):
		return cniError(types.ErrInternal, "no datapath at pinPath %s: %v", conf.PinPath, err)
	case err != nil:
		return datapathError(conf.PinPath, "open datapath", err)
	}
	defer dp.Close()
	ep, err := dp.Endpoint(p.IP)
	if err != nil {
		return cniError(types.ErrInternal, "endpoint %s: %v", p.IP, err)
	}
	if !ownedBy(ep, args) {
		return cniError(types.ErrInternal, "endpoint %s belongs to container %s %s, not %s %s", p.IP, ep.ContainerID, ep.PodIfName, args.ContainerID, args.IfName)
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
	case ep.ARPResponder != conf.ARPResponder:
		return cniError(types.ErrInternal, "endpoint %s has arpResponder %v, want %v", p.IP, ep.ARPResponder, conf.ARPResponder)
	}
	endpointAttached := func(prog datapath.Program) (bool, error) { return dp.Attached(p.IP, prog) }
	if err := attached(endpointAttached, p.HostIf, datapath.FromContainer, datapath.ToContainer); err != nil {
		return err
	}

	if native.IsValid() {
		st, err := dp.Status()
		if err != nil {
			return cniError(types.ErrInternal, "datapath status: %v", err)
		}
		if st.NativeRoutingCIDR != native {
			return cniError(types.ErrInternal, "datapath has native routing CIDR %s, want nativeRoutingCIDR %s", cidrOrNone(st.NativeRoutingCIDR), native)
		}
	}
	if conf.Device == "" {
		return nil
	}
	dev, err := netlink.LinkByName(conf.Device)
	if err != nil {
		return cniError(types.ErrInternal, "device %s: %v", conf.Device, err)
	}
	devices, err := dp.Devices()
	if err != nil {
		return cniError(types.ErrInternal, "datapath's devices: %v", err)
	}
	if !slices.Contains(devices, dev.Attrs().Index) {
		return cniError(types.ErrInternal, "device %s (ifindex %d) is not one of the datapath's devices %v", conf.Device, dev.Attrs().Index, devices)
	}
	deviceAttached := func(prog datapath.Program) (bool, error) { return dp.DeviceAttached(dev.Attrs().Index, prog) }
	return attached(deviceAttached, conf.Device, datapath.FromNetdev, datapath.ToNetdev)
}

// attached checks with isAttached that progs are attached to the device
// ifname.
func attached(isAttached func(datapath.Program) (bool, error), ifname string, progs ...datapath.Program) error {
	for _, prog := range progs {
		ok, err := isAttached(prog)
		if err != nil {
			return cniError(types.ErrInternal, "%s on %s: %v", prog, ifname, err)
		}
		if !ok {
			return cniError(types.ErrInternal, "%s is not attached to %s", prog, ifname)
		}
	}
	return nil
}

func cidrOrNone(cidr netip.Prefix) string {
	if !cidr.IsValid() {
		return "none"
	}
	return cidr.String()
}
