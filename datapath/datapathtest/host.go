package datapathtest

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Host is a machine on a Cluster's wire that is no node: a client or a
// server outside the cluster, or a host that forges packets. Its
// namespace has eth0, a veth whose peer is a port of the wire's br0,
// addressed IP/16, with a default route via the Cluster's Gateway.
type Host struct {
	Name      string     // as given to AddHost
	NetnsName string     // name under /var/run/netns, for `ip -n`
	Netns     string     // path of the namespace
	IP        netip.Addr // eth0's address, in 172.18.0.0/16
}

// AddHost plugs a host into the cluster's wire with address ip, which
// must be in 172.18.0.0/16 and no node's (such as 172.18.1.1). It
// returns once both ends of its veth are operationally up. t.Cleanup
// removes the namespace, and the veth with it.
func (c *Cluster) AddHost(t testing.TB, name string, ip netip.Addr) *Host {
	t.Helper()
	nsName, path := NewNetns(t, "host-"+name)
	port := "hp" + randomHex(4)
	h := &Host{Name: name, NetnsName: nsName, Netns: path, IP: ip}
	for _, args := range [][]string{
		{"-n", nsName, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", c.WireName},
		{"-n", c.WireName, "link", "set", port, "master", "br0", "up"},
		{"-n", nsName, "addr", "add", ip.String() + "/16", "dev", "eth0"},
		{"-n", nsName, "link", "set", "eth0", "up"},
		{"-n", nsName, "route", "add", "default", "via", c.Gateway.String()},
	} {
		if err := ipCommand(args...); err != nil {
			t.Fatalf("host %s: %v", name, err)
		}
	}
	for _, end := range []struct{ netns, ifname string }{{path, "eth0"}, {c.Wire, port}} {
		if err := waitOperUp(end.netns, end.ifname); err != nil {
			t.Fatalf("host %s: %v", name, err)
		}
	}
	return h
}

// AddRoute routes dst via gw in the host, such as a node's pod CIDR via
// the node: for traffic to pods from outside without masquerade's
// translation, or for packets forged to a pod's own address.
func (h *Host) AddRoute(t testing.TB, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	if err := ipCommand("-n", h.NetnsName, "route", "add", dst.String(), "via", gw.String()); err != nil {
		t.Fatalf("host %s: %v", h.Name, err)
	}
}

// ipCommand runs `ip args...` (which names its namespace with -n), at
// most 30 seconds.
func ipCommand(args ...string) error {
	if len(args) < 2 || args[0] != "-n" || args[1] == "" {
		return fmt.Errorf("ip %s: refusing to run without a namespace", strings.Join(args, " "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
