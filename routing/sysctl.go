package routing

import (
	"fmt"
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
