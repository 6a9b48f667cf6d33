package routing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// sysctl is a kernel setting: its key under /proc/sys/ and the value to
// write there.
type sysctl struct{ key, value string }

// String names s as sysctl(8) does: net.ipv4.ip_forward.
func (s sysctl) String() string { return strings.ReplaceAll(s.key, "/", ".") }

// set writes s in the network namespace of the calling thread: /proc/sys/net
// resolves to the namespace of the thread opening it, so run it within [Do].
// The error names the setting and wraps the kernel's: fs.ErrNotExist where
// the key does not exist (IPv6 off on a device, or in the kernel).
func (s sysctl) set() error {
	f, err := os.OpenFile("/proc/sys/"+s.key, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(s.value)
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		return fmt.Errorf("set %s=%s: %w", s, s.value, err)
	}
	return nil
}

// forwardingSysctls are the settings that routing between pods through the
// node needs.
var forwardingSysctls = []sysctl{
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
// An empty nsPath changes the process's namespace (the one it started in):
// right for an agent running inside its node's namespace, wrong on a
// machine's root namespace unless that is intended.
func EnableForwarding(nsPath string) error {
	return Do(nsPath, func() error {
		for _, s := range forwardingSysctls {
			if err := s.set(); err != nil {
				return fmt.Errorf("enable forwarding in netns %q: %w", nsPath, err)
			}
		}
		return nil
	})
}

// DisableIPv6 turns IPv6 off in the network namespace at nsPath ("" is
// the process's), for
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

// hostVethSysctls are the IPv6 settings of the node-side device ifname of a
// pod's veth pair. The node is the pod's router, never the other way round,
// so nothing the pod sends may change the node's routes or addresses:
// CVE-2020-10749 was a pod's Router Advertisement giving its node a default
// route via the pod (`proto ra`) and a SLAAC address, and so the node's
// IPv6 traffic. The CNI ptp plugin (since 0.8.6), Calico and the AWS VPC
// CNI set accept_ra=0 on the host side too; the AWS VPC CNI
// accept_redirects=0 as well.
func hostVethSysctls(ifname string) []sysctl {
	conf := "net/ipv6/conf/" + ifname + "/"
	return []sysctl{
		// Ignore Router Advertisements: no default route, prefix route,
		// address, MTU or hop limit from the pod. The kernel's default, 1,
		// accepts them where IPv6 forwarding is off, as on an IPv4-only
		// node; 2 accepts them even where it is on.
		{conf + "accept_ra", "0"},
		// Ignore ICMPv6 Redirects: the pod cannot name the node a better
		// first hop. The kernel honours them where IPv6 forwarding is off,
		// from a destination's current first hop, which the pod is not
		// without the RAs above; this is a second lock.
		{conf + "accept_redirects", "0"},
		// No SLAAC address from a prefix in an RA, should accept_ra ever be
		// turned back on (by hand, or by a tool setting it on every device).
		// The device needs no IPv6 address but its link-local one, which
		// autoconf does not govern.
		{conf + "autoconf", "0"},
	}
}

// guardHostVeth applies hostVethSysctls to ifname in the namespace at
// nsPath. A device without IPv6 has none of these keys and nothing to guard:
// that is no error. IPv6 is off on a device when the kernel has none, or
// while the device's MTU is below IPv6's minimum of 1280. (IPv6 turned off
// with disable_ipv6 still has the keys, and they are set.)
func guardHostVeth(nsPath, ifname string) error {
	return Do(nsPath, func() error {
		for _, s := range hostVethSysctls(ifname) {
			if err := s.set(); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		return nil
	})
}
