package routing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// forwardingSysctls are the settings, under /proc/sys/, that routing between
// pods through the node needs.
var forwardingSysctls = []struct{ key, value string }{
	{"net/ipv4/ip_forward", "1"},
	// Replies to masqueraded or redirected traffic may arrive on a device
	// the reverse path would not pick.
	{"net/ipv4/conf/all/rp_filter", "0"},
	{"net/ipv4/conf/default/rp_filter", "0"},
}

// EnableForwarding turns on IPv4 forwarding and turns off reverse-path
// filtering in the network namespace at nsPath. The kernel uses the larger of
// conf/all and conf/<dev> rp_filter, so devices made afterwards (inheriting
// conf/default) are unfiltered; devices that already exist keep their own.
//
// An empty nsPath changes the caller's namespace: right for an agent running
// inside its node's namespace, wrong on a machine's root namespace unless
// that is intended.
func EnableForwarding(nsPath string) error {
	return Do(nsPath, func() error {
		for _, s := range forwardingSysctls {
			// /proc/sys/net resolves to the netns of the thread opening it.
			if err := os.WriteFile("/proc/sys/"+s.key, []byte(s.value), 0o644); err != nil {
				return fmt.Errorf("enable forwarding in netns %q: set %s=%s: %w", nsPath, s.key, s.value, err)
			}
		}
		return nil
	})
}

// DisableIPv6 turns IPv6 off in the network namespace at nsPath, for
// devices there now and made later: for IPv4-only setups, where IPv6
// autoconfiguration (DAD, MLD reports, router solicitations) would only add
// traffic. A kernel without IPv6 is left as it is.
func DisableIPv6(nsPath string) error {
	return Do(nsPath, func() error {
		for _, conf := range []string{"all", "default"} {
			key := "/proc/sys/net/ipv6/conf/" + conf + "/disable_ipv6"
			if err := os.WriteFile(key, []byte("1"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("disable IPv6 in netns %q: %w", nsPath, err)
			}
		}
		return nil
	})
}
