package datapathtest_test

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// checkRemoved registers, first, a cleanup that runs last and fails if any
// of the namespaces named by *names is still there.
func checkRemoved(t *testing.T, names *[]string) {
	t.Cleanup(func() {
		for _, name := range *names {
			if _, err := os.Stat(filepath.Join(routing.NetnsDir, name)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("netns %s left behind (%v)", name, err)
			}
		}
	})
}

// TestLegacyRouting checks the fixture without any BPF: the kernel forwards
// between two pods of a node through its routes and netfilter.
func TestLegacyRouting(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	var names []string
	checkRemoved(t, &names)

	node := datapathtest.NewNode(t, "node1")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))
	names = append(names, node.NetnsName, a.NetnsName, b.NetnsName)

	if !strings.HasPrefix(node.NetnsName, "hr-") || !strings.HasSuffix(node.NetnsName, "-node1") {
		t.Errorf("node netns name %q", node.NetnsName)
	}
	if a.HostIf == b.HostIf || len(a.HostIf) > 15 || !strings.HasPrefix(a.HostIf, "lxc") {
		t.Errorf("host devices %q and %q", a.HostIf, b.HostIf)
	}
	if len(a.MAC) != 6 || len(a.HostMAC) != 6 || a.HostIfIndex == 0 || a.Node != node {
		t.Errorf("pod a: %+v", a)
	}

	forwarded := node.CountForward(t)
	before, err := node.LinkStats(b.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	fwd0 := forwarded()

	a.MustPing(t, routing.DefaultGateway)
	a.MustPing(t, b.IP)
	b.MustPing(t, a.IP)
	a.MustTCPEcho(t, b.IP, b.ServeTCPEcho(t))
	a.MustUDPEcho(t, b.IP, b.ServeUDPEcho(t))
	b.MustTCPEcho(t, a.IP, a.ServeTCPEcho(t))

	// 12 ICMP packets, a TCP handshake and 16 KiB each way, two datagrams.
	if got := forwarded() - fwd0; got < 12+3+2 {
		t.Errorf("FORWARD counter moved by %d, want the pods' traffic", got)
	}
	after, err := node.LinkStats(b.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	if got := after.TxPackets - before.TxPackets; got < 6 {
		t.Errorf("%s sent %d packets towards pod b, want at least 6", b.HostIf, got)
	}
}

func TestPingOptions(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))

	// Payload filling the MTU.
	got, err := a.PingWith(b.IP, datapathtest.PingOptions{Count: 2, Size: 1500 - 20 - 8})
	if err != nil || got != 2 {
		t.Errorf("full-size ping: %d replies, %v", got, err)
	}
	// TTL 1 expires at the node, which forwards between the pods.
	got, err = a.PingWith(b.IP, datapathtest.PingOptions{Count: 2, TTL: 1, Timeout: 300 * time.Millisecond})
	if err != nil || got != 0 {
		t.Errorf("ping with TTL 1: %d replies, %v; want 0 and no error", got, err)
	}
	// Nothing answers an address no pod has.
	got, err = a.Ping(netip.MustParseAddr("10.0.0.99"), 2, 300*time.Millisecond)
	if err != nil || got != 0 {
		t.Errorf("ping of a missing pod: %d replies, %v; want 0 and no error", got, err)
	}
}

func TestEchoErrors(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	b := node.AddPod(t, "b", netip.MustParseAddr("10.0.0.2"))

	// Closed ports are refused quickly; a missing pod times out.
	if err := a.TCPEcho(b.IP, 9, []byte("x"), 2*time.Second); err == nil {
		t.Error("tcp echo to a closed port succeeded")
	}
	if err := a.UDPEcho(b.IP, 9, []byte("x"), 2*time.Second); err == nil {
		t.Error("udp echo to a closed port succeeded")
	}
	start := time.Now()
	if err := a.UDPEcho(netip.MustParseAddr("10.0.0.99"), 9, []byte("x"), 500*time.Millisecond); err == nil {
		t.Error("udp echo to a missing pod succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("udp echo to a missing pod took %s", d)
	}
}

func TestNodeExecAndDo(t *testing.T) {
	datapathtest.RequireRoot(t)
	t.Parallel()
	node := datapathtest.NewNode(t, "node")
	a := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))

	if out := node.Exec(t, "ip", "-o", "link", "show", a.HostIf); !strings.Contains(out, a.HostIf) {
		t.Errorf("ip link in node: %q", out)
	}
	err := a.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err == nil && strings.TrimSpace(string(b)) != "0" {
			t.Errorf("pod forwards: ip_forward = %s", b)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = node.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err == nil && strings.TrimSpace(string(b)) != "1" {
			t.Errorf("node does not forward: ip_forward = %s", b)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.LinkStats("missing0"); err == nil {
		t.Error("LinkStats of a missing device succeeded")
	}
}
