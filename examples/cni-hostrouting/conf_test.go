package main

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/hostrouting/hostrouting/loader"
)

// TestNodeKeys checks how device and nativeRoutingCIDR reach the
// datapath's config, and the errors for bad values.
func TestNodeKeys(t *testing.T) {
	for _, tc := range []struct {
		name, device, cidr string
		wantDevices        []string
		wantCIDR           string
		wantErr            string
	}{
		{name: "none"},
		{name: "both", device: "eth0", cidr: "10.0.0.0/8", wantDevices: []string{"eth0"}, wantCIDR: "10.0.0.0/8"},
		{name: "CIDR only", cidr: "10.244.0.0/16", wantCIDR: "10.244.0.0/16"},
		{name: "not a CIDR", cidr: "10.0.0.0", wantErr: `nativeRoutingCIDR "10.0.0.0" is not a CIDR such as 10.0.0.0/8`},
		{name: "bad length", cidr: "10.0.0.0/40", wantErr: `nativeRoutingCIDR "10.0.0.0/40" is not a CIDR`},
		{name: "host bits", cidr: "10.0.0.1/8", wantErr: "nativeRoutingCIDR 10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"},
		{name: "IPv6", cidr: "fd00::/8", wantErr: "nativeRoutingCIDR fd00::/8: only IPv4 is supported"},
		{name: "everything", cidr: "0.0.0.0/0", wantErr: "nativeRoutingCIDR 0.0.0.0/0 would take every destination"},
		{name: "long device", device: "a-very-long-device-name", wantErr: `device "a-very-long-device-name" is not a device name`},
		{name: "device with slash", device: "eth0/1", wantErr: `device "eth0/1" is not a device name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := &NetConf{PinPath: loader.DefaultPinPath, Device: tc.device, NativeRoutingCIDR: tc.cidr}
			cfg, err := conf.datapathConfig()
			if tc.wantErr != "" {
				var cerr *types.Error
				if !errors.As(err, &cerr) || cerr.Code != types.ErrInvalidNetworkConfig ||
					!strings.HasPrefix(cerr.Msg, "hostrouting: ") || !strings.Contains(cerr.Msg, tc.wantErr) {
					t.Fatalf("error %#v, want code %d saying %q", err, types.ErrInvalidNetworkConfig, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var want netip.Prefix
			if tc.wantCIDR != "" {
				want = netip.MustParsePrefix(tc.wantCIDR)
			}
			if !slices.Equal(cfg.Devices, tc.wantDevices) || cfg.NativeRoutingCIDR != want {
				t.Errorf("Devices %q NativeRoutingCIDR %v, want %q %v", cfg.Devices, cfg.NativeRoutingCIDR, tc.wantDevices, want)
			}
		})
	}
}

// TestServiceKeys checks how masquerade and cgroupPath reach the
// datapath's config, and the error for a bad cgroupPath.
func TestServiceKeys(t *testing.T) {
	off, on := false, true
	for _, tc := range []struct {
		name        string
		masquerade  *bool
		cgroup      string
		wantDisable bool
		wantErr     string
	}{
		{name: "defaults"},
		{name: "masquerade off", masquerade: &off, wantDisable: true},
		{name: "masquerade on", masquerade: &on},
		{name: "cgroup", cgroup: "/sys/fs/cgroup/kubepods"},
		{name: "relative cgroup", cgroup: "kubepods", wantErr: `cgroupPath "kubepods" is not an absolute path`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := &NetConf{PinPath: loader.DefaultPinPath, Masquerade: tc.masquerade, CgroupPath: tc.cgroup}
			cfg, err := conf.datapathConfig()
			if tc.wantErr != "" {
				var cerr *types.Error
				if !errors.As(err, &cerr) || cerr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cerr.Msg, tc.wantErr) {
					t.Fatalf("error %#v, want code %d saying %q", err, types.ErrInvalidNetworkConfig, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.DisableMasquerade != tc.wantDisable || cfg.CgroupPath != tc.cgroup {
				t.Errorf("DisableMasquerade %v CgroupPath %q, want %v %q", cfg.DisableMasquerade, cfg.CgroupPath, tc.wantDisable, tc.cgroup)
			}
		})
	}
}
