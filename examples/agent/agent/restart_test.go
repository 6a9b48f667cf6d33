package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// restartWorld is one node with an agent, an echo server pod, two name
// server pods, a client pod and services:
//
//	keep   10.96.0.110:7000 → srv's echo port     (unchanged across the restart)
//	change 10.96.0.111:80   → srv:8080            (moved to srv2 while the agent is down)
//	gone   10.96.0.112:80   → srv:8080            (deleted while the agent is down)
type restartWorld struct {
	*env
	node      *datapathtest.Node
	pinPath   string
	dp        *datapath.Datapath
	srv, srv2 *datapathtest.Pod
	client    *datapathtest.Pod
	keep      netip.AddrPort
}

var (
	changeVIP = netip.MustParseAddrPort("10.96.0.111:80")
	goneVIP   = netip.MustParseAddrPort("10.96.0.112:80")
	newVIP    = netip.MustParseAddrPort("10.96.0.113:80")
)

// newRestartWorld builds the world; run starts the first agent on it.
func newRestartWorld(t *testing.T, run func(cfg Config)) *restartWorld {
	w := &restartWorld{env: newEnv(t, 1), keep: netip.MustParseAddrPort("10.96.0.110:7000")}
	w.node = w.cluster.Nodes[0]
	w.pinPath = newPinPath(t, w.node)
	run(w.agentConfig(t, w.node, w.pinPath))
	w.dp = openDatapath(t, w.node, w.pinPath)
	w.srv, w.srv2, w.client = w.node.AddPod(t, "srv", w.node.PodIP(10)), w.node.AddPod(t, "srv2", w.node.PodIP(11)), w.node.AddPod(t, "client", w.node.PodIP(20))
	for _, p := range []*datapathtest.Pod{w.srv, w.srv2, w.client} {
		p.AddEndpoint(t, w.dp)
	}
	echo := w.srv.ServeTCPEcho(t)
	nameServer(t, w.srv)
	nameServer(t, w.srv2)
	names := []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}
	w.create(t,
		service("keep", w.keep.Addr().String(), port("echo", corev1.ProtocolTCP, 7000, int32(echo))),
		endpointSlice("keep", "keep-1", []discoveryv1.EndpointPort{slicePort("echo", corev1.ProtocolTCP, echo)}, endpoint(w.srv.IP)),
		service("change", changeVIP.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080)),
		endpointSlice("change", "change-1", names, endpoint(w.srv.IP)),
		service("gone", goneVIP.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080)),
		endpointSlice("gone", "gone-1", names, endpoint(w.srv.IP)))
	wantBackends(t, w.dp, w.keep, datapath.TCP, datapath.Backend{Addr: netip.AddrPortFrom(w.srv.IP, echo)})
	wantBackends(t, w.dp, changeVIP, datapath.TCP, datapath.Backend{Addr: netip.AddrPortFrom(w.srv.IP, 8080)})
	wantBackends(t, w.dp, goneVIP, datapath.TCP, datapath.Backend{Addr: netip.AddrPortFrom(w.srv.IP, 8080)})
	return w
}

// changeAPI changes the API while no agent runs: change moves to srv2,
// gone goes, new comes.
func (w *restartWorld) changeAPI(t *testing.T) {
	w.updateSlice(t, "change-1", endpoint(w.srv2.IP))
	w.deleteService(t, "gone")
	w.create(t, service("new", newVIP.Addr().String(), port("http", corev1.ProtocolTCP, 80, 8080)),
		endpointSlice("new", "new-1", []discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}, endpoint(w.srv2.IP)))
}

// checkRestarted checks that the datapath matches the API after
// changeAPI: keep as it was (its ID and backends), change on srv2 with
// its ID, gone gone, new there; and that traffic follows.
func (w *restartWorld) checkRestarted(t *testing.T, keep, change datapath.Service) {
	t.Helper()
	srv2 := datapath.Backend{Addr: netip.AddrPortFrom(w.srv2.IP, 8080)}
	if got := wantBackends(t, w.dp, changeVIP, datapath.TCP, srv2); got.ID != change.ID {
		t.Errorf("changed service got ID %d, had %d", got.ID, change.ID)
	}
	noService(t, w.dp, goneVIP, datapath.TCP)
	wantBackends(t, w.dp, newVIP, datapath.TCP, srv2)
	if got, err := findService(w.dp, w.keep, datapath.TCP); err != nil || !same(got, keep) {
		t.Errorf("unchanged service is %v (%v), was %v", got, err, keep)
	}
	for _, vip := range []netip.AddrPort{changeVIP, newVIP} {
		if seen := answeredBy(t, w.client.Netns, "tcp4", vip, 5); seen["srv2"] != 5 {
			t.Errorf("%s answered by %v, want srv2", vip, seen)
		}
	}
	svcs, err := w.dp.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 4 { // keep, change, new and the API server's own
		t.Errorf("%d services after the restart, want 4:\n%v", len(svcs), svcs)
	}
}

// TestRestart: an agent stopped (its context cancelled) leaves the
// datapath forwarding; the API changes meanwhile; the next agent removes
// what went, updates what changed and leaves the unchanged service as it
// was, so a long-lived connection through it goes on. Upserting that
// service again as it is keeps the connection too.
func TestRestart(t *testing.T) {
	var r *running
	w := newRestartWorld(t, func(cfg Config) { r = start(t, cfg) })
	conn := dialEcho(t, w.client.Netns, w.keep)
	if err := conn.check("before"); err != nil {
		t.Fatal(err)
	}
	keep, err := findService(w.dp, w.keep, datapath.TCP)
	if err != nil {
		t.Fatal(err)
	}
	change, err := findService(w.dp, changeVIP, datapath.TCP)
	if err != nil {
		t.Fatal(err)
	}

	r.stop(t)
	if err := conn.check("agent down"); err != nil {
		t.Fatalf("long-lived connection with the agent down: %v", err)
	}
	w.client.MustTCPEcho(t, w.keep.Addr(), w.keep.Port())
	w.changeAPI(t)

	r = start(t, r.cfg)
	w.checkRestarted(t, keep, change)
	if err := conn.check("after"); err != nil {
		t.Fatalf("long-lived connection after the restart: %v", err)
	}
	checkHealthz(t, r.Agent.healthz, http.StatusOK)

	// Upserting the unchanged service as it is changes nothing: the
	// connection goes on, on its backend.
	if id, err := w.dp.UpsertService(keep); err != nil || id != keep.ID {
		t.Fatalf("upsert unchanged service again: ID %d, %v", id, err)
	}
	if err := conn.check("upserted again"); err != nil {
		t.Fatalf("long-lived connection after an upsert of the same service: %v", err)
	}
}

// lockedBuffer is a bytes.Buffer for several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// checkHealthz calls handler as GET /healthz and checks the status code
// and kube-proxy's JSON body.
func checkHealthz(t testing.TB, handler http.HandlerFunc, want int) {
	t.Helper()
	rec := httptest.NewRecorder()
	handler(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	checkHealthzResponse(t, rec.Code, rec.Body.Bytes(), want)
}

func checkHealthzResponse(t testing.TB, code int, body []byte, want int) {
	t.Helper()
	var h health
	if err := json.Unmarshal(body, &h); err != nil {
		t.Fatalf("healthz body %q: %v", body, err)
	}
	switch {
	case code != want:
		t.Errorf("healthz %d %s, want %d", code, body, want)
	case time.Since(h.CurrentTime) > time.Minute || h.Healthy != (want == http.StatusOK):
		t.Errorf("healthz body %s", body)
	case want == http.StatusOK && (h.LastUpdated.IsZero() || h.LastUpdated.After(h.CurrentTime)):
		t.Errorf("healthz body %s: lastUpdated", body)
	}
}

// TestHealthzBeforeSync: before its first sync an agent is unhealthy.
func TestHealthzBeforeSync(t *testing.T) {
	a, err := New(Config{NodeName: "node", Kubeconfig: writeKubeconfig(t, "https://127.0.0.1:1")})
	if err != nil {
		t.Fatal(err)
	}
	checkHealthz(t, a.healthz, http.StatusServiceUnavailable)
}

// writeKubeconfig writes a kubeconfig for a server at url.
func writeKubeconfig(t *testing.T, url string) string {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	conf := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q}}]\n"+
		"users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n", url)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAPIServerOutage: with the API server stopped for 10 s the datapath
// keeps forwarding and the agent keeps running; once the server is back,
// the agent reconnects and applies a change made after it came back.
func TestAPIServerOutage(t *testing.T) {
	var r *running
	var logs lockedBuffer
	w := newRestartWorld(t, func(cfg Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(t.Output(), &logs), nil))
		r = start(t, cfg)
	})
	conn := dialEcho(t, w.client.Netns, w.keep)

	w.kube.StopAPIServer(t)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if err := conn.check("outage"); err != nil {
			t.Fatalf("long-lived connection during the outage: %v", err)
		}
		if seen := answeredBy(t, w.client.Netns, "tcp4", changeVIP, 1); seen["srv"] != 1 {
			t.Fatalf("during the outage: answered by %v", seen)
		}
		select {
		case err := <-r.done:
			t.Fatalf("agent ended during the outage: %v", err)
		default:
		}
	}
	w.kube.StartAPIServer(t)
	w.updateSlice(t, "change-1", endpoint(w.srv2.IP))
	start := time.Now()
	eventually(t, 90*time.Second, func() error {
		s, err := findService(w.dp, changeVIP, datapath.TCP)
		if err != nil {
			return err
		}
		if len(s.Backends) != 1 || s.Backends[0].Addr.Addr() != w.srv2.IP {
			return fmt.Errorf("service %v after the API came back", s)
		}
		return nil
	})
	t.Logf("change applied %s after the API server came back", time.Since(start).Round(time.Millisecond))
	for _, line := range []string{"API server unreachable; retrying with backoff", "API server answers again"} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("no log line %q", line)
		}
	}
	if err := conn.check("after"); err != nil {
		t.Fatal(err)
	}
	checkHealthz(t, r.Agent.healthz, http.StatusOK)
}

// TestKillBinary runs the hostrouting-agent binary: killed with SIGKILL,
// the datapath keeps forwarding; the API changes; the next agent starts
// while the API server is down (unhealthy, forwarding, waiting), and once
// the server is back it brings the datapath in line, leaving the unchanged
// service's long-lived connection alone.
func TestKillBinary(t *testing.T) {
	bin := buildAgent(t)
	healthz, metrics := freeAddr(t), freeAddr(t)
	var cmd *exec.Cmd
	run := func(cfg Config) {
		cfg.Healthz, cfg.Metrics = healthz, metrics
		cmd = startBinary(t, bin, cfg)
	}
	w := newRestartWorld(t, func(cfg Config) {
		run(cfg)
		waitHealthz(t, healthz, http.StatusOK)
	})
	cfg := w.agentConfig(t, w.node, w.pinPath)
	conn := dialEcho(t, w.client.Netns, w.keep)
	if err := conn.check("before"); err != nil {
		t.Fatal(err)
	}
	keep, err := findService(w.dp, w.keep, datapath.TCP)
	if err != nil {
		t.Fatal(err)
	}
	change, err := findService(w.dp, changeVIP, datapath.TCP)
	if err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("agent after SIGKILL: %v", err)
	}
	if err := conn.check("killed"); err != nil {
		t.Fatalf("long-lived connection with the agent killed: %v", err)
	}
	w.changeAPI(t)

	w.kube.StopAPIServer(t)
	run(cfg)
	time.Sleep(3 * time.Second)
	waitHealthz(t, healthz, http.StatusServiceUnavailable)
	if err := conn.check("API down"); err != nil {
		t.Fatalf("long-lived connection with the agent waiting for the API: %v", err)
	}
	w.kube.StartAPIServer(t)
	waitHealthz(t, healthz, http.StatusOK)
	w.checkRestarted(t, keep, change)
	if err := conn.check("after"); err != nil {
		t.Fatalf("long-lived connection after the restart: %v", err)
	}

	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"\nhostrouting_services 4\n", "\nhostrouting_endpoints 3\n", `hostrouting_host_routing_info{attach_mode="tcx",mode="BPF"} 1`} {
		if !strings.Contains(body.String(), line) {
			t.Errorf("/metrics has no %q:\n%s", strings.TrimSpace(line), body.String())
		}
	}
}

// buildAgent builds the hostrouting-agent binary.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hostrouting-agent")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/hostrouting/hostrouting/examples/agent").CombinedOutput()
	if err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a 127.0.0.1 address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startBinary starts the agent binary with cfg, its log going to the
// test's; t.Cleanup kills it if it still runs.
func startBinary(t *testing.T, bin string, cfg Config) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "--kubeconfig", cfg.Kubeconfig, "--node-name", cfg.NodeName, "--netns", cfg.Netns,
		"--pin-path", cfg.PinPath, "--device", strings.Join(cfg.Devices, ","),
		"--native-routing-cidr", cfg.NativeRoutingCIDR.String(), "--healthz", cfg.Healthz, "--metrics", cfg.Metrics,
		"--cgroup", cfg.CgroupPath) // never the machine's root cgroup: a test's child, or none
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// waitHealthz waits until GET /healthz at addr answers with code want and
// checks the body.
func waitHealthz(t *testing.T, addr string, want int) {
	t.Helper()
	var code int
	var body []byte
	eventually(t, 90*time.Second, func() error {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		if _, err := b.ReadFrom(resp.Body); err != nil {
			return err
		}
		if code, body = resp.StatusCode, b.Bytes(); code != want {
			return fmt.Errorf("healthz %d %s, want %d", code, body, want)
		}
		return nil
	})
	checkHealthzResponse(t, code, body, want)
}
