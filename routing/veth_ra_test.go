package routing_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// raPrefix is the prefix the pod's rogue Router Advertisements offer for
// SLAAC.
var raPrefix = netip.MustParsePrefix("2001:db8:1::/64")

// TestSetupVethIgnoresRouterAdvertisements is CVE-2020-10749: a pod sends
// IPv6 Router Advertisements (a default router and a prefix for SLAAC) to
// all nodes on its link, and its node must take neither a `proto ra` route
// nor an address from them. The node's namespace is set up first to accept
// RAs on new devices, as an IPv4-only node does by the kernel's defaults
// and a node forwarding IPv6 does with accept_ra=2.
func TestSetupVethIgnoresRouterAdvertisements(t *testing.T) {
	datapathtest.RequireRoot(t)
	requireIPv6(t)
	t.Parallel()
	// What makes a new device take RAs, whatever a new namespace inherits.
	acceptRAs := [][2]string{
		{"net/ipv6/conf/all/disable_ipv6", "0"},
		{"net/ipv6/conf/default/disable_ipv6", "0"},
		{"net/ipv6/conf/default/accept_ra_defrtr", "1"},
		{"net/ipv6/conf/default/accept_ra_pinfo", "1"},
		{"net/ipv6/conf/default/autoconf", "1"},
	}
	for _, c := range []struct {
		name    string
		sysctls [][2]string // set in the node's namespace before SetupVeth
	}{
		{"host", [][2]string{
			{"net/ipv6/conf/all/forwarding", "0"},
			{"net/ipv6/conf/default/accept_ra", "1"},
		}},
		{"router", [][2]string{
			{"net/ipv6/conf/all/forwarding", "1"}, // ignores RAs where accept_ra=1
			{"net/ipv6/conf/default/accept_ra", "2"},
			{"net/ipv6/conf/all/accept_ra", "2"},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, node := newNetns(t, "node")
			_, pod := newNetns(t, "pod")
			if err := routing.EnableForwarding(node); err != nil {
				t.Fatal(err)
			}
			setSysctls(t, node, slices.Concat(acceptRAs, c.sysctls)...)
			// The pod's link-local address is usable at once, not after DAD.
			setSysctls(t, pod, acceptRAs[0], acceptRAs[1],
				[2]string{"net/ipv6/conf/all/accept_dad", "0"}, [2]string{"net/ipv6/conf/default/accept_dad", "0"})

			const hostIf = "lxcra0"
			v, err := routing.SetupVeth(routing.VethConfig{HostNetns: node, HostIfName: hostIf, PodNetns: pod, Addr: podAddr})
			if err != nil {
				t.Fatal(err)
			}
			src := waitLinkLocal(t, pod, v.PodIfIndex, false)
			// IPv6 on the node side is ready (its multicast route made, or
			// the RAs are dropped before ICMPv6 sees them) once it has its
			// link-local address, be it still tentative.
			waitLinkLocal(t, node, v.HostIfIndex, true)
			conn := raSocket(t, pod, v.PodIfName, v.PodIfIndex, src)
			ra := routerAdvertisement(v.PodMAC, raPrefix)
			allNodes := &unix.SockaddrInet6{Addr: netip.IPv6LinkLocalAllNodes().As16(), ZoneId: uint32(v.PodIfIndex)}
			nodeH := handle(t, node)

			// The kernel takes an RA as it receives it; 2s is plenty.
			for range 10 {
				if err := unix.Sendto(conn, ra, 0, allNodes); err != nil {
					t.Fatalf("send RA: %v", err)
				}
				time.Sleep(200 * time.Millisecond)
				if taken := raEffects(t, nodeH); len(taken) > 0 {
					t.Fatalf("the node took the pod's RA (from %s on %s):\n\t%s", src, hostIf, strings.Join(taken, "\n\t"))
				}
			}
			// Otherwise the test proves nothing.
			if n := routerAdvertisementsIn(t, node, hostIf); n == 0 {
				t.Fatalf("no RA reached %s in the node", hostIf)
			} else {
				t.Logf("%s received %d RAs from %s and ignored them", hostIf, n, src)
			}
			for _, key := range []string{"accept_ra", "accept_redirects", "autoconf"} {
				if v := readSysctl(t, node, "net/ipv6/conf/"+hostIf+"/"+key); v != "0" {
					t.Errorf("net.ipv6.conf.%s.%s = %s, want 0", hostIf, key, v)
				}
			}
		})
	}
}

// TestSetupVethWithoutIPv6 checks SetupVeth on a node-side device without
// IPv6 (its MTU is below 1280: the kernel gives it none, nor its
// net/ipv6/conf/ directory), which is no error, and with IPv6 turned off by
// disable_ipv6, where the device's settings exist and are set.
func TestSetupVethWithoutIPv6(t *testing.T) {
	datapathtest.RequireRoot(t)
	requireIPv6(t)
	t.Parallel()
	t.Run("mtu", func(t *testing.T) {
		t.Parallel()
		_, node := newNetns(t, "node")
		_, pod := newNetns(t, "pod")
		if _, err := routing.SetupVeth(routing.VethConfig{HostNetns: node, HostIfName: "lxcmtu", PodNetns: pod, Addr: podAddr, MTU: 1279}); err != nil {
			t.Fatal(err)
		}
		err := routing.Do(node, func() error {
			_, err := os.Stat("/proc/sys/net/ipv6/conf/lxcmtu")
			return err
		})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("net/ipv6/conf/lxcmtu of a device with MTU 1279: %v, want it missing", err)
		}
	})
	t.Run("disable_ipv6", func(t *testing.T) {
		t.Parallel()
		_, node := newNetns(t, "node")
		_, pod := newNetns(t, "pod")
		if err := routing.DisableIPv6(node); err != nil {
			t.Fatal(err)
		}
		if _, err := routing.SetupVeth(routing.VethConfig{HostNetns: node, HostIfName: "lxcnov6", PodNetns: pod, Addr: podAddr}); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"disable_ipv6=1", "accept_ra=0", "accept_redirects=0", "autoconf=0"} {
			k, want, _ := strings.Cut(key, "=")
			if v := readSysctl(t, node, "net/ipv6/conf/lxcnov6/"+k); v != want {
				t.Errorf("net.ipv6.conf.lxcnov6.%s = %s, want %s", k, v, want)
			}
		}
	})
}

// requireIPv6 skips a test on a kernel without IPv6.
func requireIPv6(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/proc/sys/net/ipv6"); errors.Is(err, fs.ErrNotExist) {
		t.Skip("the kernel has no IPv6")
	}
}

// setSysctls writes key=value pairs under /proc/sys in the namespace at
// path.
func setSysctls(t *testing.T, path string, kv ...[2]string) {
	t.Helper()
	err := routing.Do(path, func() error {
		for _, s := range kv {
			if err := os.WriteFile("/proc/sys/"+s[0], []byte(s[1]), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func readSysctl(t *testing.T, path, key string) string {
	t.Helper()
	var b []byte
	err := routing.Do(path, func() (err error) {
		b, err = os.ReadFile("/proc/sys/" + key)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// waitLinkLocal returns the link-local address of the device ifindex in the
// namespace at path once it has one, and unless tentative is true, once the
// address is usable (DAD is done).
func waitLinkLocal(t *testing.T, path string, ifindex int, tentative bool) netip.Addr {
	t.Helper()
	h := handle(t, path)
	link, err := h.LinkByIndex(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		addrs, err := h.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			if ip.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_DADFAILED == 0 && (tentative || a.Flags&unix.IFA_F_TENTATIVE == 0) {
				return ip
			}
		}
	}
	t.Fatalf("%s has no link-local address after 5s", link.Attrs().Name)
	return netip.Addr{}
}

// raSocket opens a raw ICMPv6 socket in the namespace at path, bound to src
// on the device ifname, that sends with hop limit 255 as neighbour discovery
// requires (RFC 4861 6.1.2). The kernel computes the ICMPv6 checksum.
func raSocket(t *testing.T, path, ifname string, ifindex int, src netip.Addr) int {
	t.Helper()
	fd := -1
	err := routing.Do(path, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		for _, o := range []struct{ opt, value int }{
			{unix.IPV6_MULTICAST_HOPS, 255},
			{unix.IPV6_UNICAST_HOPS, 255},
			{unix.IPV6_MULTICAST_IF, ifindex},
			{unix.IPV6_MULTICAST_LOOP, 0},
		} {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, o.opt, o.value); err != nil {
				return fmt.Errorf("setsockopt %d: %w", o.opt, err)
			}
		}
		if err := unix.BindToDevice(fd, ifname); err != nil {
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
		return unix.Bind(fd, &unix.SockaddrInet6{Addr: src.As16(), ZoneId: uint32(ifindex)})
	})
	if fd >= 0 {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err != nil {
		t.Fatalf("raw ICMPv6 socket in the pod: %v", err)
	}
	return fd
}

// routerAdvertisement is an ICMPv6 Router Advertisement (RFC 4861 4.2) of a
// default router for 30 minutes, with the sender's MAC and prefix as on-link
// and for SLAAC. The checksum is left to the kernel.
func routerAdvertisement(mac net.HardwareAddr, prefix netip.Prefix) []byte {
	b := make([]byte, 16, 16+8+32)
	b[0] = 134                              // type: router advertisement
	b[4] = 64                               // cur hop limit
	binary.BigEndian.PutUint16(b[6:], 1800) // router lifetime, seconds
	b = append(b, 1, 1)                     // source link-layer address, 8 bytes
	b = append(b, mac[:6]...)
	pi := make([]byte, 32)
	pi[0], pi[1] = 3, 4 // prefix information, 32 bytes
	pi[2] = byte(prefix.Bits())
	pi[3] = 0xc0                              // L (on-link) and A (autonomous: SLAAC)
	binary.BigEndian.PutUint32(pi[4:], 86400) // valid lifetime
	binary.BigEndian.PutUint32(pi[8:], 14400) // preferred lifetime
	a := prefix.Addr().As16()
	copy(pi[16:], a[:])
	return append(b, pi...)
}

// raEffects lists what an RA left in the node: routes the kernel learnt
// from one (proto ra), any IPv6 default route, and any route or address in
// raPrefix, in every table.
func raEffects(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	var found []string
	routes, err := h.RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		var dst netip.Prefix
		if r.Dst != nil {
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			dst = netip.PrefixFrom(ip, ones)
		}
		if r.Protocol == unix.RTPROT_RA || dst.Bits() <= 0 || dst.Overlaps(raPrefix) {
			found = append(found, fmt.Sprintf("route %s proto %s", r, r.Protocol))
		}
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, _ := netip.AddrFromSlice(a.IP); raPrefix.Contains(ip) {
			found = append(found, fmt.Sprintf("address %s on link %d", a.IPNet, a.LinkIndex))
		}
	}
	return found
}

// routerAdvertisementsIn returns how many RAs the device ifname in the
// namespace at path has received, taken or not.
func routerAdvertisementsIn(t *testing.T, path, ifname string) int {
	t.Helper()
	var n int
	err := routing.Do(path, func() error {
		// /proc/net is the main thread's namespace; thread-self is ours.
		f, err := os.Open("/proc/thread-self/net/dev_snmp6/" + ifname)
		if err != nil {
			return err
		}
		defer f.Close()
		for s := bufio.NewScanner(f); s.Scan(); {
			if name, value, ok := strings.Cut(s.Text(), "\t"); ok && strings.TrimSpace(name) == "Icmp6InRouterAdvertisements" {
				n, err = strconv.Atoi(strings.TrimSpace(value))
				return err
			}
		}
		return errors.New("no Icmp6InRouterAdvertisements in dev_snmp6")
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
