package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

func TestPodOf(t *testing.T) {
	args := &skel.CmdArgs{Netns: "/var/run/netns/pod", IfName: "eth0"}
	host := &types100.Interface{Name: "veth1", Mac: "aa:aa:aa:aa:aa:aa"}
	ctr := &types100.Interface{Name: "eth0", Mac: "02:00:00:00:00:01", Sandbox: args.Netns}
	other := &types100.Interface{Name: "eth1", Mac: "02:00:00:00:00:02", Sandbox: args.Netns}
	noMAC := &types100.Interface{Name: "eth0", Sandbox: args.Netns}
	ip := func(cidr string, iface int) *types100.IPConfig {
		ipn, err := types.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		return &types100.IPConfig{Address: *ipn, Interface: types100.Int(iface)}
	}
	for _, tc := range []struct {
		name    string
		res     types100.Result
		want    pod
		wantErr string
	}{
		{"ptp", types100.Result{
			Interfaces: []*types100.Interface{host, ctr},
			IPs:        []*types100.IPConfig{ip("fd00::2/64", 1), ip("10.0.0.2/24", 1)},
		}, pod{HostIf: "veth1", IP: netip.MustParseAddr("10.0.0.2"), MAC: mustMAC("02:00:00:00:00:01")}, ""},
		{"CNI_IFNAME among others", types100.Result{
			Interfaces: []*types100.Interface{other, host, ctr},
			IPs:        []*types100.IPConfig{ip("10.0.1.2/24", 0), ip("10.0.0.2/24", 2)},
		}, pod{HostIf: "veth1", IP: netip.MustParseAddr("10.0.0.2"), MAC: mustMAC("02:00:00:00:00:01")}, ""},
		{"no MAC", types100.Result{
			Interfaces: []*types100.Interface{host, noMAC},
			IPs:        []*types100.IPConfig{ip("10.0.0.2/24", 1)},
		}, pod{HostIf: "veth1", IP: netip.MustParseAddr("10.0.0.2")}, ""},
		{"no host side", types100.Result{
			Interfaces: []*types100.Interface{ctr},
			IPs:        []*types100.IPConfig{ip("10.0.0.2/24", 0)},
		}, pod{}, "hostrouting: prevResult has no host-side interface"},
		{"two host sides", types100.Result{
			Interfaces: []*types100.Interface{host, host, ctr},
		}, pod{}, "more than one host-side interface"},
		{"no container interface", types100.Result{
			Interfaces: []*types100.Interface{host, other},
		}, pod{}, "no container interface eth0 in netns /var/run/netns/pod"},
		{"no IPv4", types100.Result{
			Interfaces: []*types100.Interface{host, ctr},
			IPs:        []*types100.IPConfig{ip("fd00::2/64", 1), ip("10.0.1.2/24", 0)},
		}, pod{}, "no IPv4 address on container interface eth0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.res.CNIVersion = "1.0.0"
			got, err := podOf(&tc.res, args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.HostIf != tc.want.HostIf || got.IP != tc.want.IP || got.MAC.String() != tc.want.MAC.String() {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func mustMAC(s string) net.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return mac
}
