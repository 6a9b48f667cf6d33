package datapath_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// askEnv makes the test binary ask for a name (see askName) from inside a
// network namespace and print the answer and the peer's name as its
// socket sees it: the client process the socket-LB tests start in a cgroup.
const askEnv = "HOSTROUTING_TEST_ASK"

func askMain(ask string) int {
	var netns, proto, dst string
	if _, err := fmt.Sscan(ask, &netns, &proto, &dst); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if proto == "hold-udp4" {
		// A UDP client that socket LB gives a backend of dst: it says
		// "ready", then reads until its socket fails, and says how.
		return holdUDP(netns, netip.MustParseAddrPort(dst))
	}
	if network, ok := strings.CutPrefix(proto, "refused-"); ok {
		// Whether dialling dst fails with ECONNREFUSED within 100 ms:
		// "refused -", else what happened.
		took, err := dialOutcome(netns, network, netip.MustParseAddrPort(dst))
		if errors.Is(err, syscall.ECONNREFUSED) && took <= 100*time.Millisecond {
			fmt.Println("refused -")
		} else {
			fmt.Printf("%q %s\n", fmt.Sprint(err), took)
		}
		return 0
	}
	if network, ok := strings.CutPrefix(proto, "bind-"); ok {
		// Whether the cgroup lets a socket bind dst: "bound -" or
		// "refused -".
		err := routing.Do(netns, func() error {
			ln, err := net.Listen(network, dst)
			if err == nil {
				ln.Close()
			}
			return err
		})
		if err != nil && !errors.Is(err, syscall.EPERM) {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(map[bool]string{true: "bound", false: "refused"}[err == nil], "-")
		return 0
	}
	a, err := datapathtest.AskName(netns, proto, netip.MustParseAddrPort(dst))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(a.Name, a.Peer)
	return 0
}

// askFromCgroup runs askName as a process of its own in the cgroup at
// cgroup, from the namespace at netns, and returns the name and the peer
// its socket saw (getpeername). With proto "bind-tcp4" the process binds
// dst instead: name is "bound" or "refused".
func askFromCgroup(t *testing.T, cgroup, netns, proto string, dst netip.AddrPort) (name, peer string) {
	t.Helper()
	dir, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), askEnv+"="+fmt.Sprint(netns, " ", proto, " ", dst))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client in %s: %v\n%s", cgroup, err, out)
	}
	if _, err := fmt.Sscan(string(out), &name, &peer); err != nil {
		t.Fatalf("client said %q: %v", out, err)
	}
	return name, peer
}

// TestSocketLB: a pod's process in the socket-LB cgroup gets a backend at
// connect time: its SYNs and datagrams leave its eth0 addressed to the
// backend, and getpeername shows the ClusterIP; in host-namespace-only
// mode the pod is left to the tc load balancer, whose packets to the
// ClusterIP are translated on the host side.
func TestSocketLB(t *testing.T) {
	for _, hostnsOnly := range []bool{false, true} {
		t.Run(fmt.Sprintf("hostns-only=%v", hostnsOnly), func(t *testing.T) {
			cgroup := datapathtest.NewCgroup(t)
			cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
			n0 := cn.cluster.Nodes[0]
			// The first node again, now with socket LB on the cgroup.
			dp, err := datapath.New(datapath.Config{PinPath: pinPathOf(t, cn.dps[0]), Netns: n0.Netns, Devices: []string{n0.Device},
				NativeRoutingCIDR: nativeCIDR, CgroupPath: cgroup, SocketLBHostnsOnly: hostnsOnly})
			if err != nil {
				t.Fatal(err)
			}
			defer dp.Close()
			client := n0.AddPod(t, "client", n0.PodIP(30))
			client.AddEndpoint(t, dp)
			backends := []datapath.Backend{{Addr: nameServer(t, cn.a)}, {Addr: nameServer(t, cn.b)}}
			vip := netip.MustParseAddrPort("10.96.0.20:80")
			for _, proto := range []datapath.Protocol{datapath.TCP, datapath.UDP} {
				if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: proto, Backends: backends}); err != nil {
					t.Fatal(err)
				}
			}
			capture := startCapture(t, client.Netns, "eth0", "client eth0")
			for _, proto := range []string{"tcp4", "udp4"} {
				seen := map[string]int{}
				for range 12 {
					name, peer := askFromCgroup(t, cgroup, client.Netns, proto, vip)
					seen[name]++
					if proto == "tcp4" && peer != vip.String() {
						t.Errorf("getpeername: %s, want the ClusterIP %s", peer, vip)
					}
				}
				if len(seen) != 2 {
					t.Errorf("%s to %s answered by %v: want both backends", proto, vip, seen)
				}
			}
			toVIP := capture.count(func(f captured) bool {
				ip, ok := ipv4Of(f.data)
				if !ok || !f.outgoing {
					return false
				}
				_, dst := ipv4Addrs(ip)
				return dst == vip.Addr()
			})
			if hostnsOnly && toVIP == 0 {
				t.Error("hostns-only: no packet left the pod for the ClusterIP: socket LB translated the pod's sockets")
			}
			if !hostnsOnly && toVIP != 0 {
				t.Errorf("%d packets left the pod's eth0 for the ClusterIP: want the backend's address in every one", toVIP)
			}
			if out, err := exec.Command("bpftool", "cgroup", "show", cgroup).CombinedOutput(); err != nil || !strings.Contains(string(out), "sock4_connect") {
				t.Errorf("bpftool cgroup show %s: %v\n%s", cgroup, err, out)
			}
		})
	}
}

// TestSocketLBNodePort: the node's own processes in the socket-LB cgroup
// reach a NodePort of every node address (0.0.0.0) on the node's address
// and on 127.0.0.1, translated at connect time, and may not bind the
// NodePort, on 0.0.0.0 or on the node's address; other ports bind.
func TestSocketLBNodePort(t *testing.T) {
	cgroup := datapathtest.NewCgroup(t)
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{})
	n0 := cn.cluster.Nodes[0]
	dp, err := datapath.New(datapath.Config{PinPath: pinPathOf(t, cn.dps[0]), Netns: n0.Netns, Devices: []string{n0.Device},
		NativeRoutingCIDR: nativeCIDR, CgroupPath: cgroup})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	every := netip.AddrPortFrom(netip.IPv4Unspecified(), 30200)
	backends := []datapath.Backend{{Addr: nameServer(t, cn.a)}}
	if _, err := dp.UpsertService(datapath.Service{Frontend: every, Protocol: datapath.TCP, Type: datapath.NodePort, Backends: backends}); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(n0.IP, every.Port()), netip.MustParseAddrPort("127.0.0.1:30200")} {
		if name, peer := askFromCgroup(t, cgroup, n0.Netns, "tcp4", dst); name != cn.a.Name || peer != dst.String() {
			t.Errorf("node to %s: answered by %q, peer %s; want %s, the address dialled", dst, name, peer, cn.a.Name)
		}
	}
	for dst, want := range map[string]string{
		"0.0.0.0:30200":                       "refused",
		n0.IP.String() + ":30200":             "refused",
		n0.IP.String() + ":30201":             "bound",
		netip.AddrPortFrom(n0.IP, 0).String(): "bound",
	} {
		if got, _ := askFromCgroup(t, cgroup, n0.Netns, "bind-tcp4", netip.MustParseAddrPort(dst)); got != want {
			t.Errorf("bind %s in the node: %s, want %s", dst, got, want)
		}
	}
}

// holdUDP connects a UDP socket to dst from the namespace at netns, says
// "ready" on stdout, and reads until the socket fails: "aborted" when it
// was destroyed (ECONNABORTED), else the error.
func holdUDP(netns string, dst netip.AddrPort) int {
	var c net.Conn
	if err := routing.Do(netns, func() (err error) {
		c, err = net.Dial("udp4", dst.String())
		return err
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 64))
	if errors.Is(err, syscall.ECONNABORTED) {
		fmt.Println("aborted")
	} else {
		fmt.Println(err)
	}
	return 0
}

// TestSocketLBBackendGone: a connected UDP socket that socket LB gave a
// backend is destroyed when that backend leaves its service (a DNS client
// of a dead DNS pod): its read fails at once with ECONNABORTED, so it
// connects again, to a live backend. Before, it read (and sent) into the
// void until its own timeout.
func TestSocketLBBackendGone(t *testing.T) {
	cgroup := datapathtest.NewCgroup(t)
	cn := newCrossNode(t, datapathtest.ClusterOptions{}, datapath.Config{CgroupPath: cgroup})
	n0 := cn.cluster.Nodes[0]
	vip := netip.MustParseAddrPort("10.96.0.53:53")
	gone, stays := netip.AddrPortFrom(cn.b.IP, 5353), netip.AddrPortFrom(cn.a.IP, 5353)
	if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.UDP,
		Backends: []datapath.Backend{{Addr: gone}}}); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), askEnv+"="+fmt.Sprint(n0.Netns, " hold-udp4 ", vip))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("client: %q, want ready", lines.Text())
	}
	start := time.Now()
	if _, err := cn.dps[0].UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.UDP,
		Backends: []datapath.Backend{{Addr: stays}}}); err != nil {
		t.Fatal(err)
	}
	if !lines.Scan() || lines.Text() != "aborted" || time.Since(start) > time.Second {
		t.Errorf("the client's socket to the gone backend: %q after %v, want aborted at once", lines.Text(), time.Since(start))
	}
}
