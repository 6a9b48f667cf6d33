package datapath_test

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// TestConfigMessages: a config's mistakes are named with what would be
// right: an IPv4 example for an IPv6 CIDR, the path a bare netns name may
// mean. Nothing is made.
func TestConfigMessages(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	for _, c := range []struct {
		name string
		cfg  datapath.Config
		want []string
		not  string
	}{
		{"IPv6 native routing CIDR", datapath.Config{NativeRoutingCIDR: netip.MustParsePrefix("fd00::/8")},
			[]string{"native routing CIDR fd00::/8", "such as 10.0.0.0/8", "IPv6 is not supported"}, "such as fd00::/8"},
		{"IPv6 service CIDR", datapath.Config{ServiceCIDR: netip.MustParsePrefix("fd00:96::/108")},
			[]string{"service CIDR fd00:96::/108", "such as 10.96.0.0/12"}, "such as fd00:96::/108"},
		{"host bits", datapath.Config{NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.1/8")},
			[]string{"native routing CIDR 10.0.0.1/8", "10.0.0.0/8"}, ""},
		{"netns name", datapath.Config{Netns: node.NetnsName},
			[]string{"want a path, such as /var/run/netns/" + node.NetnsName}, ""},
		{"unknown netns name", datapath.Config{Netns: "hr-no-such-netns"},
			[]string{`netns "hr-no-such-netns"`, "such as /var/run/netns/NAME", "no /var/run/netns/hr-no-such-netns"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.PinPath = datapathtest.PinPath(t)
			if c.cfg.Netns == "" {
				c.cfg.Netns = node.Netns
			}
			_, err := datapath.New(c.cfg)
			if err == nil {
				t.Fatal("New took it")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("New: %v\nwant it to say %q", err, w)
				}
			}
			if c.not != "" && strings.Contains(err.Error(), c.not) {
				t.Errorf("New: %v\nsuggests the input: %q", err, c.not)
			}
			if _, err := os.Stat(c.cfg.PinPath); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("refused New left %s behind", c.cfg.PinPath)
			}
		})
	}
	t.Run("Open and Cleanup", func(t *testing.T) {
		at := datapath.Location{PinPath: datapathtest.PinPath(t), Netns: node.NetnsName}
		want := "/var/run/netns/" + node.NetnsName
		if _, err := datapath.Open(at); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open with a netns name: %v, want an error naming %s", err, want)
		}
		if err := datapath.Cleanup(at); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Cleanup with a netns name: %v, want an error naming %s", err, want)
		}
	})
}
