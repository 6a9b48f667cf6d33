package main

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// confSeeds are netconfs as a runtime hands them to the plugin: chained
// after ptp (with its prevResult, in both result versions the plugin
// supports), with every key set, and some it must refuse.
var confSeeds = []string{
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting"}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","pinPath":"/sys/fs/bpf/hrtest-1",
	  "prevResult":{"cniVersion":"1.0.0",
	    "interfaces":[{"name":"veth1a2b3c4d","mac":"aa:aa:aa:aa:aa:aa"},{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/var/run/netns/pod"}],
	    "ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1","interface":1},{"address":"fd00::2/64","interface":1}],
	    "routes":[{"dst":"0.0.0.0/0"}]}}`,
	`{"cniVersion":"0.4.0","name":"hrtest","type":"hostrouting",
	  "prevResult":{"cniVersion":"0.4.0",
	    "interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/var/run/netns/pod"}],
	    "ips":[{"version":"4","address":"10.0.0.2/24","interface":1}]}}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","pinPath":"/sys/fs/bpf/node1","arpResponder":true,
	  "requireBPFHostRouting":true,"disable":{"redirectPeer":true,"redirectNeigh":false,"fibLookup":false,"tcx":true},
	  "device":"eth0","nativeRoutingCIDR":"10.0.0.0/8","timeout":"30s","masquerade":false,
	  "cgroupPath":"/sys/fs/cgroup","maxServices":1024}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","disable":{"redirectPeers":true}}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","disable":{"tcx":"yes"}}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","pinPath":"/sys/fs/bpf"}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","pinPath":"hostrouting"}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","nativeRoutingCIDR":"10.0.0.1/8","timeout":"-1s"}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","device":"eth0/1","maxServices":4294967295}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","prevResult":{"cniVersion":"1.0.0","interfaces":[null],"ips":[null]}}`,
	`{"cniVersion":"0.4.0","name":"hrtest","type":"hostrouting","prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"veth1"}],"IPs":[null]}}`,
	`{"cniVersion":"1.0.0","name":"hrtest","type":"hostrouting","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}`,
	`{"cniVersion":"9.9.9","prevResult":{}}`,
	`{`, `null`, `[]`, ``,
}

// FuzzParseConf checks the plugin's reading of its netconf (stdin) as
// ADD does it: parseConf, datapathConfig (validate) and podOf on the
// prevResult never panic; every error is a CNI error of the code the
// plugin documents (6 for what does not decode, 7 for a wrong key), its
// message naming the plugin; a netconf that passes gives a datapath
// config within the keys' bounds, and encodes to JSON that reads back to
// the same config.
func FuzzParseConf(f *testing.F) {
	for _, s := range confSeeds {
		f.Add([]byte(s))
	}
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/pod", IfName: "eth0"}
	f.Fuzz(func(t *testing.T, stdin []byte) {
		conf, err := parseConf(stdin)
		if err != nil {
			checkCNIError(t, "parseConf", err, types.ErrDecodingFailure)
			return
		}
		if conf.PinPath == "" {
			t.Fatalf("parseConf(%q): no pin path", stdin)
		}
		verr := conf.validate()
		cfg, err := conf.datapathConfig()
		if (verr == nil) != (err == nil) {
			t.Fatalf("validate: %v, datapathConfig: %v", verr, err)
		}
		if err != nil {
			checkCNIError(t, "datapathConfig", err, types.ErrInvalidNetworkConfig)
			return
		}

		if conf.timeout <= 0 {
			t.Errorf("timeout %v", conf.timeout)
		}
		if cfg.PinPath != conf.PinPath || len(cfg.Devices) > 1 || (len(cfg.Devices) == 1) != (conf.Device != "") {
			t.Errorf("netconf %+v gives %+v", conf, cfg)
		}
		if p := cfg.NativeRoutingCIDR; p.IsValid() && (!p.Addr().Is4() || p.Masked() != p || p.Bits() == 0) {
			t.Errorf("nativeRoutingCIDR %q accepted as %v", conf.NativeRoutingCIDR, p)
		}
		if cfg.DisableMasquerade != (conf.Masquerade != nil && !*conf.Masquerade) {
			t.Errorf("masquerade %v gives DisableMasquerade %v", conf.Masquerade, cfg.DisableMasquerade)
		}

		// What the plugin accepted, written out, is the same netconf.
		out := netconfJSON(t, conf)
		again, err := parseConf(out)
		if err != nil {
			t.Fatalf("netconf %q written as %q: %v", stdin, out, err)
		}
		cfg2, err := again.datapathConfig()
		if err != nil || !reflect.DeepEqual(cfg2, cfg) || again.timeout != conf.timeout {
			t.Errorf("netconf %q gives %+v; written as %q it gives %+v, %v", stdin, cfg, out, cfg2, err)
		}

		if conf.PrevResult == nil {
			return
		}
		p, err := podOf(conf.PrevResult, args)
		if err != nil {
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != types.ErrDecodingFailure && cerr.Code != types.ErrInvalidNetworkConfig {
				t.Errorf("podOf: error %#v, want a CNI error of code %d or %d", err, types.ErrDecodingFailure, types.ErrInvalidNetworkConfig)
			}
			return
		}
		// (podOf takes interface names and addresses as they come: an
		// unnamed host interface or 0.0.0.0 is for the datapath to refuse.)
		if !p.IP.Is4() || p.IPv6.IsValid() && (!p.IPv6.Is6() || p.IPv6.Is4In6()) || p.MAC != nil && len(p.MAC) == 0 {
			t.Errorf("prevResult %q gives pod %+v", stdin, p)
		}
	})
}

// netconfJSON writes the keys of c that the plugin reads, as a runtime
// would hand them over (NetConf's MarshalJSON, promoted from the embedded
// types.NetConf, writes only CNI's own keys).
func netconfJSON(t *testing.T, c *NetConf) []byte {
	t.Helper()
	keys := map[string]any{"cniVersion": c.CNIVersion, "name": c.Name, "type": c.Type}
	v := reflect.ValueOf(*c)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); f.IsExported() && !f.Anonymous && name != "" && name != "-" {
			keys[name] = v.Field(i).Interface()
		}
	}
	out, err := json.Marshal(keys)
	if err != nil {
		t.Fatalf("marshal %+v: %v", c, err)
	}
	return out
}

// checkCNIError checks that err, returned by what, is a CNI error of code
// whose message names the plugin.
func checkCNIError(t *testing.T, what string, err error, code uint) {
	t.Helper()
	var cerr *types.Error
	if !errors.As(err, &cerr) || cerr.Code != code || !strings.HasPrefix(cerr.Msg, "hostrouting: ") {
		t.Errorf("%s: error %#v, want a CNI error of code %d saying hostrouting: ...", what, err, code)
	}
}
