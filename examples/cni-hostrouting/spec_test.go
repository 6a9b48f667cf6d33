package main

// Tests of the plugin against the CNI spec and crashes: DEL once the pod is
// gone, error codes, endpoints recorded with their container, addresses
// reused after pods that never got their DEL.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/instance"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// TestAddRecordsContainer checks that ADD records the endpoint with
// CNI_CONTAINERID and CNI_IFNAME, and CHECK refuses an endpoint of
// another container.
func TestAddRecordsContainer(t *testing.T) {
	n := newTestNode(t, nil)
	a, b := n.mustAdd(t, "a"), n.mustAdd(t, "b")
	dp := n.datapath(t)
	for _, p := range []*datapathtest.Pod{a, b} {
		id := cnitoolContainerID(p.Netns)
		ep, err := dp.EndpointByContainer(id, "eth0")
		if err != nil {
			t.Fatalf("pod %s: %v", p.Name, err)
		}
		if ep.IP != p.IP || ep.ContainerID != id || ep.PodIfName != "eth0" || ep.IfIndex != p.HostIfIndex {
			t.Errorf("pod %s: endpoint %v of container %q %q, want %s on ifindex %d of %q eth0",
				p.Name, ep, ep.ContainerID, ep.PodIfName, p.IP, p.HostIfIndex, id)
		}
		if ep, err := dp.EndpointByContainer(id, "eth1"); !errors.Is(err, datapath.ErrNotFound) {
			t.Errorf("pod %s: endpoint of eth1: %v, err %v; want not found", p.Name, ep, err)
		}
	}
	// CHECK of a's prevResult under another container ID: not its endpoint.
	conf := n.hostroutingConf()
	conf["prevResult"] = prevResultOf(a.HostIf, a.Netns, a.IP.String(), a.MAC.String())
	out, err := runPluginIn(n.NetnsName, n.plugins, "CHECK", a.Netns, conf, "CNI_CONTAINERID=someone-else")
	if cerr := cniErr(t, out, err); !strings.Contains(cerr.Msg, "belongs to container "+cnitoolContainerID(a.Netns)) {
		t.Errorf("CHECK under another container ID: %+v, want an error naming a's container", cerr)
	}
	if out, err := n.plugin("CHECK", a.Netns, conf); err != nil {
		t.Errorf("CHECK under a's container ID: %v\n%s", err, out)
	}
	if err := n.check(a); err != nil {
		t.Errorf("CHECK %s: %v", a.Name, err)
	}
}

// TestDelPodGone runs DEL without prevResult (the hostrouting binary alone,
// with the conf libcni gives it when its cache is lost) for pods whose
// namespace and veth are gone: deleted, or with a stale path left (a file
// where the namespace was mounted). DEL succeeds, finds the endpoint by
// container ID and removes it, and the address can go to a new pod.
func TestDelPodGone(t *testing.T) {
	for _, stale := range []bool{false, true} {
		name := map[bool]string{false: "netns deleted", true: "stale netns path"}[stale]
		t.Run(name, func(t *testing.T) {
			n := newTestNode(t, nil)
			a, b := n.mustAdd(t, "a"), n.mustAdd(t, "b")
			n.podGone(t, a, stale)
			dp := n.datapath(t)

			// A DEL of another container (a runtime that mixed up its
			// pods) finds nothing, even with the stale path: before, the
			// stale path failed with code 8, forever.
			if out, err := runPluginIn(n.NetnsName, n.plugins, "DEL", a.Netns, n.hostroutingConf(), "CNI_CONTAINERID=not-a"); err != nil {
				t.Fatalf("DEL of another container: %v\n%s", err, out)
			}
			if _, err := dp.Endpoint(a.IP); err != nil {
				t.Fatalf("endpoint %s after another container's DEL: %v, want it kept", a.IP, err)
			}

			for i := range 2 {
				if out, err := n.plugin("DEL", a.Netns, n.hostroutingConf()); err != nil {
					t.Fatalf("DEL #%d without prevResult: %v\n%s", i+1, err, out)
				}
			}
			if ep, err := dp.Endpoint(a.IP); !errors.Is(err, datapath.ErrNotFound) {
				t.Fatalf("endpoint %s after DEL: %v, err %v; want not found", a.IP, ep, err)
			}
			n.checkGone(t, n.open(t), a)
			if err := n.check(b); err != nil {
				t.Errorf("CHECK %s: %v", b.Name, err)
			}

			// a's address goes to a new pod: host-local's lease is released
			// by hand, as the DEL of ptp's host-local would have.
			n.releaseLease(t, a)
			c := n.newPod(t, "c")
			if err := n.addWith(c, []string{"CNI_ARGS=IP=" + a.IP.String()}); err != nil {
				t.Fatal(err)
			}
			if c.IP != a.IP {
				t.Fatalf("pod c got %s, want a's %s", c.IP, a.IP)
			}
			n.checkEndpoint(t, n.open(t), c)
			c.MustPing(t, b.IP)
		})
	}
}

// TestDelLegacyEndpoint removes, by DEL without prevResult, an endpoint
// recorded for no container (as ADD left them before it recorded
// containers): DEL finds its address inside the pod.
func TestDelLegacyEndpoint(t *testing.T) {
	n := newTestNode(t, nil)
	a := n.mustAdd(t, "a")
	dp := n.datapath(t)
	// The same endpoint, without its container.
	if _, err := dp.AddEndpoint(datapath.Endpoint{IfName: a.HostIf, IP: a.IP, MAC: a.MAC}); err != nil {
		t.Fatal(err)
	}
	if ep, err := dp.Endpoint(a.IP); err != nil || ep.ContainerID != "" {
		t.Fatalf("endpoint %v of container %q, err %v: want one of no container", ep, ep.ContainerID, err)
	}
	if out, err := n.plugin("DEL", a.Netns, n.hostroutingConf()); err != nil {
		t.Fatalf("DEL: %v\n%s", err, out)
	}
	n.checkGone(t, n.open(t), a)
}

// TestStaleEndpointGivesWay lets a pod vanish without any DEL (a crashed
// runtime), its address go to a new pod, and the old pod's DEL come late:
// the new pod's ADD succeeds over the stale endpoint, and the late DEL,
// whose prevResult names the address, leaves the new pod's endpoint alone.
func TestStaleEndpointGivesWay(t *testing.T) {
	n := newTestNode(t, nil)
	a, b := n.mustAdd(t, "a"), n.mustAdd(t, "b")
	n.podGone(t, a, false)
	n.releaseLease(t, a)

	c := n.newPod(t, "c")
	if err := n.addWith(c, []string{"CNI_ARGS=IP=" + a.IP.String()}); err != nil {
		t.Fatalf("ADD over a's stale endpoint: %v", err)
	}
	if c.IP != a.IP {
		t.Fatalf("pod c got %s, want a's %s", c.IP, a.IP)
	}
	node := n.open(t)
	n.checkEndpoint(t, node, c)

	// a's DEL, late, with its cached prevResult: all of the chain succeeds.
	if err := n.del(a); err != nil {
		t.Fatalf("late DEL of %s: %v", a.Name, err)
	}
	n.checkEndpoint(t, node, c)
	if err := n.check(c); err != nil {
		t.Errorf("CHECK %s after a's late DEL: %v", c.Name, err)
	}
	c.MustPing(t, b.IP)
	b.MustPing(t, c.IP)
	if err := n.del(c); err != nil {
		t.Fatalf("DEL %s: %v", c.Name, err)
	}
	n.checkGone(t, node, c)
}

// TestErrorCodes runs the plugin binary as a runtime would, on configs and
// namespaces that are wrong, and checks the CNI error code and message of
// each, and that no message names bpffs by /proc/PID/root.
func TestErrorCodes(t *testing.T) {
	const (
		podNetns = iota // a namespace (without the veth of prevResult)
		missingNetns
		staleNetns // a regular file
		relativeNetns
	)
	foreign := func(t *testing.T) string {
		dir := datapathtest.PinPath(t)
		for _, d := range []string{dir, filepath.Join(dir, "someone-else")} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	regularFile := func(t *testing.T) string {
		f := filepath.Join(t.TempDir(), "pins")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	// Pin paths too long, below a fresh directory that ADD must not make
	// (and that t.Cleanup would remove, if it did).
	longName := func(t *testing.T) string { return datapathtest.PinPath(t) + "/" + strings.Repeat("n", 300) }
	tooLong := func(t *testing.T) string { return datapathtest.PinPath(t) + strings.Repeat("/d", 2000) }
	for _, tc := range []struct {
		name     string
		command  string
		conf     map[string]any
		pinPath  func(*testing.T) string
		netns    int
		wantCode uint // 0: success
		wantMsg  string
	}{
		{"relative pinPath", "ADD", map[string]any{"pinPath": "sys/fs/bpf/hostrouting"}, nil, podNetns,
			types.ErrInvalidNetworkConfig, `pinPath "sys/fs/bpf/hostrouting" is not an absolute path`},
		{"pinPath too long", "ADD", nil, tooLong, podNetns,
			types.ErrInvalidNetworkConfig, fmt.Sprintf("bytes long: at most %d", maxPinPathLen)},
		{"pinPath name too long", "ADD", nil, longName, podNetns,
			types.ErrInvalidNetworkConfig, "has a name of 300 bytes: at most 255"},
		{"pinPath a regular file", "ADD", nil, regularFile, podNetns,
			types.ErrInvalidNetworkConfig, "not on a bpf filesystem"},
		{"pinPath the bpffs root", "ADD", map[string]any{"pinPath": "/sys/fs/bpf/"}, nil, podNetns,
			types.ErrInvalidNetworkConfig, "pinPath /sys/fs/bpf/ is the root of the bpf filesystem"},
		{"pinPath with someone else's pins", "ADD", nil, foreign, podNetns,
			types.ErrInvalidNetworkConfig, "holds someone-else: use a new or empty directory"},
		{"bad nativeRoutingCIDR", "ADD", map[string]any{"nativeRoutingCIDR": "10.0.0.0/33"}, nil, podNetns,
			types.ErrInvalidNetworkConfig, `nativeRoutingCIDR "10.0.0.0/33" is not a CIDR`},
		{"unknown disable key", "ADD", map[string]any{"disable": map[string]any{"tcx": true, "redirectPear": true}}, nil, podNetns,
			types.ErrInvalidNetworkConfig, "disable: unknown key(s) redirectPear"},
		{"disable not an object", "ADD", map[string]any{"disable": true}, nil, podNetns,
			types.ErrDecodingFailure, "parse netconf: disable"},
		{"bad timeout", "ADD", map[string]any{"timeout": "soon"}, nil, podNetns,
			types.ErrInvalidNetworkConfig, `timeout "soon" is not a positive duration`},
		{"missing netns", "ADD", nil, nil, missingNetns,
			types.ErrInvalidEnvironmentVariables, "-missing: no such network namespace"},
		{"stale netns", "ADD", nil, nil, staleNetns,
			types.ErrInvalidEnvironmentVariables, "is no network namespace"},
		{"relative netns", "ADD", nil, nil, relativeNetns,
			types.ErrInvalidEnvironmentVariables, `CNI_NETNS "var/run/netns/pod" is not an absolute path`},
		{"CHECK missing netns", "CHECK", nil, nil, missingNetns,
			types.ErrInvalidEnvironmentVariables, "-missing: no such network namespace"},
		{"DEL relative netns", "DEL", nil, nil, relativeNetns,
			types.ErrInvalidEnvironmentVariables, `CNI_NETNS "var/run/netns/pod" is not an absolute path`},
		{"DEL missing netns", "DEL", nil, nil, missingNetns, 0, ""},
		{"DEL stale netns", "DEL", nil, nil, staleNetns, 0, ""},
		{"DEL relative pinPath", "DEL", map[string]any{"pinPath": "hostrouting"}, nil, podNetns, 0, ""},
		{"DEL pinPath a regular file", "DEL", nil, regularFile, podNetns, 0, ""},
		{"DEL pinPath with someone else's pins", "DEL", nil, foreign, podNetns, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hr := tc.conf
			if tc.pinPath != nil {
				hr = map[string]any{"pinPath": tc.pinPath(t)}
			}
			n := newTestNode(t, hr)
			p := n.newPod(t, "a")
			netns := p.Netns
			switch tc.netns {
			case missingNetns:
				netns += "-missing"
			case staleNetns:
				netns = regularFile(t)
			case relativeNetns:
				netns = "var/run/netns/pod"
			}
			conf := n.hostroutingConf()
			if tc.command != "DEL" {
				conf["prevResult"] = prevResultOf("veth-none", netns, "10.0.0.9", "02:00:00:00:00:09")
			}
			out, err := n.plugin(tc.command, netns, conf)
			if tc.wantCode == 0 {
				if err != nil {
					t.Fatalf("%s: %v\n%s", tc.command, err, out)
				}
				return
			}
			cerr := cniErr(t, out, err)
			if cerr.Code != tc.wantCode || !strings.HasPrefix(cerr.Msg, "hostrouting: ") || !strings.Contains(cerr.Msg, tc.wantMsg) {
				t.Errorf("%s: code %d %q, want code %d saying %q", tc.command, cerr.Code, cerr.Msg, tc.wantCode, tc.wantMsg)
			}
			if strings.Contains(cerr.Msg, "/proc/") {
				t.Errorf("%s: message %q names a /proc path, not pinPath", tc.command, cerr.Msg)
			}
			if pin, ok := n.hrConf["pinPath"].(string); ok && strings.Contains(tc.wantMsg, "holds") && !strings.Contains(cerr.Msg, pin) {
				t.Errorf("%s: message %q does not name pinPath %s", tc.command, cerr.Msg, pin)
			}
			t.Logf("%s: code %d: %s", tc.command, cerr.Code, cerr.Msg)
			// Nothing was made for an invalid pin path: not the first
			// directory of it below /sys/fs/bpf, not a relative one.
			pin := n.hrConf["pinPath"].(string)
			if rest, ok := strings.CutPrefix(pin, loader.DefaultBPFFS+"/"); ok && tc.wantCode == types.ErrInvalidNetworkConfig && !strings.Contains(tc.wantMsg, "holds") {
				first, _, _ := strings.Cut(rest, "/")
				if _, err := os.Stat(filepath.Join(loader.DefaultBPFFS, first)); first != "" && !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s made %s/%s for pinPath %s…: %v", tc.command, loader.DefaultBPFFS, first, trimmed(pin, 60), err)
				}
			}
			if _, err := os.Stat("sys"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s made ./sys: %v", tc.command, err)
			}
		})
	}
}

// TestEndpointMapFull fills a node whose endpoint limit is 2: the third
// ADD fails with ErrTryAgainLater and says the endpoint map is full, and
// succeeds once a pod is deleted.
func TestEndpointMapFull(t *testing.T) {
	n := newTestNode(t, nil)
	n.NewDatapath(t, datapath.Config{PinPath: n.pinPath, MaxEndpoints: 2})
	a, b := n.mustAdd(t, "a"), n.mustAdd(t, "b")
	c := n.newPod(t, "c")
	prev := n.ptpAdd(t, c)
	out, err := n.hrAdd(c, prev)
	cerr := cniErr(t, out, err)
	if cerr.Code != types.ErrTryAgainLater || !strings.Contains(cerr.Msg, "endpoint map full (2 entries)") ||
		strings.Contains(cerr.Msg, "key too big") || !strings.Contains(cerr.Msg, n.pinPath) {
		t.Errorf("third ADD: code %d %q, want code %d saying the endpoint map of pinPath %s is full (2 entries)",
			cerr.Code, cerr.Msg, types.ErrTryAgainLater, n.pinPath)
	}
	t.Logf("third ADD: code %d: %s", cerr.Code, cerr.Msg)
	if err := n.del(a); err != nil {
		t.Fatal(err)
	}
	out, err = n.hrAdd(c, prev)
	if err != nil {
		t.Fatalf("ADD %s after DEL of %s: %v\n%s", c.Name, a.Name, err, out)
	}
	if err := n.fill(c, out); err != nil {
		t.Fatal(err)
	}
	n.checkEndpoint(t, n.open(t), c)
	c.MustPing(t, b.IP)
}

// TestLockTimeout holds the node's pin path lock, as a process hung in a
// change would: ADD and DEL give up after timeout with ErrTryAgainLater,
// naming the pin path, and succeed once the lock is free.
func TestLockTimeout(t *testing.T) {
	n := newTestNode(t, map[string]any{"timeout": "1s"})
	a := n.mustAdd(t, "a")
	lock, err := instance.LockPinPath(n.pinPath)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Unlock()

	b := n.newPod(t, "b")
	prev := n.ptpAdd(t, b)
	start := time.Now()
	out, err := n.hrAdd(b, prev)
	took := time.Since(start)
	cerr := cniErr(t, out, err)
	if cerr.Code != types.ErrTryAgainLater || !strings.Contains(cerr.Msg, "pinPath "+n.pinPath+" did not answer within 1s") || strings.Contains(cerr.Msg, "/proc/") {
		t.Errorf("ADD with the lock held: code %d %q, want code %d naming pinPath %s", cerr.Code, cerr.Msg, types.ErrTryAgainLater, n.pinPath)
	}
	if took > 20*time.Second {
		t.Errorf("ADD with the lock held took %s", took)
	}
	out, err = n.plugin("DEL", a.Netns, n.hostroutingConf())
	if cerr := cniErr(t, out, err); cerr.Code != types.ErrTryAgainLater {
		t.Errorf("DEL with the lock held: code %d %q, want %d", cerr.Code, cerr.Msg, types.ErrTryAgainLater)
	}

	lock.Unlock()
	if out, err := n.plugin("DEL", a.Netns, n.hostroutingConf()); err != nil {
		t.Fatalf("DEL once the lock is free: %v\n%s", err, out)
	}
	n.checkGone(t, n.open(t), a)
	out, err = n.hrAdd(b, prev)
	if err != nil {
		t.Fatalf("ADD once the lock is free: %v\n%s", err, out)
	}
	if err := n.fill(b, out); err != nil {
		t.Fatal(err)
	}
	n.checkEndpoint(t, n.open(t), b)
}

// TestDatapathErrors checks the codes of datapath errors that the tests
// above cannot bring about on demand: races with a removal.
func TestDatapathErrors(t *testing.T) {
	const pin = "/sys/fs/bpf/hr"
	for _, tc := range []struct {
		err      error
		wantCode uint
		wantMsg  string
	}{
		{fmt.Errorf("add endpoint 10.0.0.2 on \"veth1\": %w: pin path /proc/42/root/sys/fs/bpf/hr is gone", datapath.ErrRemoved),
			types.ErrTryAgainLater, "pin path /sys/fs/bpf/hr is gone"},
		{fmt.Errorf("%w: hr_endpoints removed, and no running program uses them; remove the node (hrctl cleanup --pin-path /proc/7/root/sys/fs/bpf/hr", loader.ErrPartialPins),
			types.ErrTryAgainLater, "hrctl cleanup --pin-path /sys/fs/bpf/hr"},
		{fmt.Errorf("x: %w: all 1024 endpoint IDs are in use (MaxEndpoints)", datapath.ErrMapFull),
			types.ErrTryAgainLater, "endpoint map full (1024 entries)"},
		{fmt.Errorf("x: %w (300 entries)", datapath.ErrMapFull), types.ErrTryAgainLater, "endpoint map full (300 entries)"},
		{fmt.Errorf("x: %w", datapath.ErrMapFull), types.ErrTryAgainLater, "what: endpoint map full at pinPath /sys/fs/bpf/hr"},
		{fmt.Errorf("x: %w", loader.ErrOtherNetns), types.ErrInvalidNetworkConfig, "another network namespace"},
		{fmt.Errorf("x: %w", loader.ErrOtherInstance), types.ErrInvalidNetworkConfig, "another pinPath"},
		{fmt.Errorf("x: %w: 10.0.0.2 is on ifindex 4", datapath.ErrEndpointExists), types.ErrInternal, "endpoint exists"},
	} {
		cerr := datapathError(pin, "what", tc.err)
		if cerr.Code != tc.wantCode || !strings.Contains(cerr.Msg, tc.wantMsg) || strings.Contains(cerr.Msg, "/proc/") {
			t.Errorf("%v: code %d %q, want %d saying %q", tc.err, cerr.Code, cerr.Msg, tc.wantCode, tc.wantMsg)
		}
	}
}

// prevResultOf is a ptp-like prevResult for a pod in netns.
func prevResultOf(hostIf, netns, ip, mac string) map[string]any {
	return map[string]any{
		"cniVersion": "1.0.0",
		"interfaces": []any{
			map[string]any{"name": hostIf, "mac": "02:00:00:00:00:01"},
			map[string]any{"name": "eth0", "mac": mac, "sandbox": netns},
		},
		"ips": []any{map[string]any{"address": ip + "/24", "interface": 1}},
	}
}

// cniErr decodes the CNI error the plugin printed; the command must have
// failed.
func cniErr(t *testing.T, out []byte, err error) types.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want an error:\n%s", out)
	}
	var cerr types.Error
	if jerr := json.Unmarshal(out, &cerr); jerr != nil || cerr.Code == 0 {
		t.Fatalf("no CNI error on stdout (%v): %v\n%s", jerr, err, out)
	}
	return cerr
}

// ptpAdd runs the first half of ADD for pod p: cnitool runs the conflist
// "hrtest" with ptp only (the same leases and cache). It returns ptp's
// result, for hrAdd.
func (n *testNode) ptpAdd(t *testing.T, p *datapathtest.Pod) map[string]any {
	t.Helper()
	dir := n.netconf + "-ptp"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	n.writeConflistIn(t, dir, "1.0.0", n.ptpConf())
	out, err := n.cnitoolWith(dir, nil, "add", "hrtest", p.Netns)
	if err != nil {
		t.Fatalf("ptp ADD %s: %v", p.Name, err)
	}
	var prev map[string]any
	if err := json.Unmarshal(out, &prev); err != nil {
		t.Fatal(err)
	}
	return prev
}

// hrAdd runs the second half of ADD for pod p as a runtime would: the
// hostrouting binary with prev, ptp's result, as prevResult. It returns
// what the plugin printed: the result, or the CNI error with its code.
func (n *testNode) hrAdd(p *datapathtest.Pod, prev map[string]any) ([]byte, error) {
	conf := n.hostroutingConf()
	conf["prevResult"] = prev
	return n.plugin("ADD", p.Netns, conf)
}

// datapath opens the node's datapath as an agent would, closed by
// t.Cleanup.
func (n *testNode) datapath(t *testing.T) *datapath.Datapath {
	t.Helper()
	dp, err := datapath.Open(datapath.Location{PinPath: n.pinPath, Netns: n.Netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// podGone takes pod p away with no DEL: its host veth (and so its eth0)
// is deleted, then its namespace, or, if stale, the namespace's mount
// only, which leaves the file at p.Netns.
func (n *testNode) podGone(t *testing.T, p *datapathtest.Pod, stale bool) {
	t.Helper()
	if err := routing.DeleteVeth(n.Netns, p.HostIf); err != nil {
		t.Fatal(err)
	}
	h, err := routing.Handle(n.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName(p.HostIf); !errors.As(err, &netlink.LinkNotFoundError{}) {
		t.Fatalf("host veth %s after deleting it: %v", p.HostIf, err)
	}
	if !stale {
		if err := routing.DeleteNetns(p.NetnsName); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := unix.Unmount(p.Netns, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if _, err := routing.Netns(p.Netns); !errors.Is(err, routing.ErrNotNetns) {
		t.Fatalf("stale netns path %s: %v, want a file that is no namespace", p.Netns, err)
	}
}

// releaseLease deletes host-local's lease of p's address, and where it
// last allocated, as if its DEL had come: the next ADD may have it.
func (n *testNode) releaseLease(t *testing.T, p *datapathtest.Pod) {
	t.Helper()
	dir := filepath.Join(n.ipam, "hrtest")
	for _, f := range []string{p.IP.String(), "last_reserved_ip.0"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}
