package instance_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// etherProbe is the EtherType of probe frames: IEEE's local experimental
// one, which from-container counts and drops as drop-unknown-l3 and which
// nothing else sends.
const etherProbe = 0x88b5

// TestAttachSwitchNeverLeavesAGap renews a pod device's attachments while
// the pod floods it with probe frames, through every kind of switch:
// tcx → tcx, tcx → clsact, clsact → clsact and clsact → tcx, three times
// each. from-container must count every frame exactly once: a frame that
// met no program (a gap) or two (both kinds running it) shows. After each
// switch the device runs the new programs only, in the new mode.
func TestAttachSwitchNeverLeavesAGap(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	pod := node.AddPod(t, "a", netipA)
	pin := datapathtest.PinPath(t)
	cidr := netip.MustParsePrefix("10.0.0.0/8")
	clsact := loader.Disable{TCX: true}
	// Each step is another object (config), so each Load reloads.
	steps := []instance.Options{{}, {NativeRoutingCIDR: cidr}, {Disable: clsact}, {Disable: clsact, NativeRoutingCIDR: cidr}}
	for i := range steps {
		steps[i].PinPath, steps[i].Netns = pin, node.Netns
	}
	programs := []loader.Program{loader.FromContainer, loader.ToContainer}

	n, err := instance.Load(steps[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range programs {
			n.Detach(node.Netns, pod.HostIfIndex, p)
		}
		n.Remove()
	})
	for _, p := range programs {
		if err := n.Attach(node.Netns, pod.HostIfIndex, p); err != nil {
			t.Fatal(err)
		}
	}
	probes := newProber(t, pod)
	seen := func(n *instance.Instance) uint64 {
		c, err := tables.NewMetrics(n.Maps.Metrics).Get(maps.FromContainer, maps.MetricDropUnknownL3)
		if err != nil {
			t.Fatal(err)
		}
		return c.Packets
	}

	var total uint64
	for round := range 3 {
		for i := range steps {
			next := steps[(i+1)%len(steps)]
			from, to := modeOf(steps[i]), modeOf(next)
			m, err := instance.Load(next)
			if err != nil {
				t.Fatalf("round %d: reload %s → %s: %v", round, from, to, err)
			}
			before := seen(m)
			stop := probes.flood()
			for _, p := range programs {
				if err := m.Attach(node.Netns, pod.HostIfIndex, p); err != nil {
					t.Fatalf("round %d: renew %s (%s → %s): %v", round, p, from, to, err)
				}
			}
			if err := m.CommitRenewal(); err != nil {
				t.Fatal(err)
			}
			sent, err := stop()
			if err != nil {
				t.Fatal(err)
			}
			total += sent
			got := seen(m) - before
			for deadline := time.Now().Add(time.Second); got < sent && time.Now().Before(deadline); got = seen(m) - before {
				time.Sleep(10 * time.Millisecond)
			}
			if got != sent {
				t.Errorf("round %d, %s → %s: from-container counted %d of %d probe frames sent while the attachments were renewed",
					round, from, to, got, sent)
			} else if sent == 0 {
				t.Fatalf("round %d, %s → %s: no probe frame sent", round, from, to)
			}
			n.Close()
			n = m
			assertHooks(t, n, node, pod.HostIfIndex, to)
		}
	}
	if !t.Failed() {
		t.Logf("12 switches: each of %d probe frames met exactly one program", total)
	}
}

// modeOf names the attach mode a load with opts gets.
func modeOf(opts instance.Options) string {
	if opts.Disable.TCX {
		return "clsact"
	}
	return "tcx"
}

// assertHooks fails t unless the device runs n's from-container and
// to-container, each as the one program of its hook, in mode.
func assertHooks(t *testing.T, n *instance.Instance, node *datapathtest.Node, ifindex int, mode string) {
	t.Helper()
	assertAttached(t, n, node.Netns, ifindex, true)
	var tcx, filters int
	err := node.Do(func() error {
		for _, attach := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
			if err != nil {
				return err
			}
			tcx += len(res.Programs)
		}
		dev, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, _ := netlink.FilterList(dev, parent) // no clsact qdisc: none
			filters += len(fs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string][2]int{"tcx": {2, 0}, "clsact": {0, 2}}[mode]; tcx != want[0] || filters != want[1] {
		t.Errorf("mode %s: %d tcx programs and %d clsact filters, want %d and %d", mode, tcx, filters, want[0], want[1])
	}
}

// prober sends probe frames from a pod's eth0 to its host-side device.
type prober struct {
	fd    int
	to    unix.SockaddrLinklayer
	frame []byte
}

// newProber opens a packet socket on the pod's eth0; t.Cleanup closes it.
func newProber(t *testing.T, pod *datapathtest.Pod) *prober {
	t.Helper()
	p := &prober{fd: -1}
	err := pod.Do(func() error {
		eth0, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		// Protocol 0: the socket only sends.
		p.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		p.to = unix.SockaddrLinklayer{Ifindex: eth0.Index, Protocol: htons(etherProbe), Halen: 6}
		return err
	})
	if err != nil {
		t.Fatalf("probe socket in pod %s: %v", pod.Name, err)
	}
	t.Cleanup(func() { unix.Close(p.fd) })
	copy(p.to.Addr[:], pod.HostMAC)
	p.frame = make([]byte, 64)
	copy(p.frame, pod.HostMAC)
	copy(p.frame[6:], pod.MAC)
	binary.BigEndian.PutUint16(p.frame[12:], etherProbe)
	return p
}

// flood sends probe frames as fast as it can until the returned stop,
// which returns how many were sent. The flood is under way when flood
// returns.
func (p *prober) flood() (stop func() (uint64, error)) {
	done, started := make(chan struct{}), make(chan struct{})
	var (
		sent uint64
		err  error
	)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			if err = unix.Sendto(p.fd, p.frame, 0, &p.to); err != nil {
				err = fmt.Errorf("send probe frame: %w", err)
				if sent < 100 {
					close(started)
				}
				return
			}
			if sent++; sent == 100 {
				close(started)
			}
		}
	}()
	<-started
	return func() (uint64, error) {
		close(done)
		<-finished
		return sent, err
	}
}

func htons(v uint16) uint16 {
	return v<<8 | v>>8
}
