package kube

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary a stand-in for `kube up`: it starts a
// server in the directory the variable names, prints "up", and then exits
// (with helperEnv_DETACH=1, detached) or blocks until killed.
const helperEnv = "HOSTROUTING_KUBE_TEST_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		detach := os.Getenv(helperEnv+"_DETACH") == "1"
		if _, err := Start(context.Background(), dir, Options{Detach: detach}); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("up")
		if !detach {
			select {}
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestServer starts a server, talks to it, restarts its API server and
// takes it down.
func TestServer(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "kube")
	start := time.Now()
	s, err := Start(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	t.Logf("ready after %s", time.Since(start).Round(time.Millisecond))
	for _, name := range []string{"kubeconfig", "etcd.pid", "kube-apiserver.pid", "etcd.log", "kube-apiserver.log"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	if kc, _ := os.ReadFile(s.Kubeconfig); !strings.Contains(string(kc), "server: "+s.URL+"\n") ||
		!strings.Contains(string(kc), "token: "+s.Token+"\n") {
		t.Errorf("kubeconfig:\n%s", kc)
	}
	checkListeners(t, s.etcd.cmd.Process.Pid, s.api.cmd.Process.Pid)

	if code, body := get(t, s, "/api/v1/namespaces/default", s.Token); code != http.StatusOK ||
		!strings.Contains(body, `"name":"default"`) {
		t.Fatalf("GET namespace default: %d %s", code, body)
	}
	if code, _ := get(t, s, "/api/v1/namespaces/default", ""); code != http.StatusUnauthorized {
		t.Errorf("GET without token: %d, want 401", code)
	}
	create(t, s, `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kept"},"data":{"k":"v"}}`)

	start = time.Now()
	if err := s.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server stopped after %s", time.Since(start).Round(time.Millisecond))
	if _, err := client(t, s).Get(s.URL + "/readyz"); err == nil {
		t.Error("API server answers after StopAPIServer")
	}
	if s.etcd.exited() {
		t.Fatal("etcd exited with the API server")
	}
	start = time.Now()
	if err := s.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server ready again after %s", time.Since(start).Round(time.Millisecond))
	if code, body := get(t, s, "/api/v1/namespaces/default/configmaps/kept", s.Token); code != http.StatusOK ||
		!strings.Contains(body, `"k":"v"`) {
		t.Errorf("config map after restart: %d %s", code, body)
	}

	pids := []int{s.etcd.cmd.Process.Pid, s.api.cmd.Process.Pid}
	if err := Down(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after Down: %v", dir, err)
	}
	waitGone(t, pids...)
}

// TestDetach starts a server from a process that exits, as `kube up` does,
// and takes it down from this one.
func TestDetach(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kube")
	cmd := helper(t, dir, true)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	t.Cleanup(func() { Down(dir) })
	pids := pidFiles(t, dir)
	s := &Server{URL: serverURL(t, dir), CAFile: filepath.Join(dir, "certs", "apiserver.crt")}
	if err := s.apiReady(); !strings.Contains(fmt.Sprint(err), "401") {
		t.Errorf("API server after its starter exited: %v, want 401 Unauthorized", err)
	}
	if err := Down(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after Down: %v", dir, err)
	}
	waitGone(t, pids...)
}

// TestKilledStarter checks that a server started without Detach dies with
// the process that started it when that is killed.
func TestKilledStarter(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kube")
	cmd := helper(t, dir, false)
	t.Cleanup(func() { Down(dir) })
	pids := pidFiles(t, dir)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waitGone(t, pids...)
}

// helper runs the test binary as a server's starter in dir and returns
// once it has printed "up"; t.Cleanup kills it if it still runs.
func helper(t *testing.T, dir string, detach bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	if detach {
		cmd.Env = append(cmd.Env, helperEnv+"_DETACH=1")
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "up\n" {
		t.Fatalf("helper: %q", line)
	}
	return cmd
}

// pidFiles returns the pids in dir's pid files.
func pidFiles(t *testing.T, dir string) []int {
	t.Helper()
	var pids []int
	for _, name := range []string{"etcd.pid", "kube-apiserver.pid"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// serverURL reads the server's URL from dir's kubeconfig.
func serverURL(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(b), "server: ")
	url, _, _ := strings.Cut(rest, "\n")
	return url
}

// waitGone waits up to 15 s for the processes to be gone or zombies.
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				break
			}
			if _, after, _ := strings.Cut(string(stat), ") "); strings.HasPrefix(after, "Z") {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("process %d still runs: %s", pid, stat)
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// checkListeners fails the test unless every TCP socket the processes
// listen on is bound to 127.0.0.1.
func checkListeners(t *testing.T, pids ...int) {
	t.Helper()
	inodes := map[string]bool{}
	for _, pid := range pids {
		fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			if l, err := os.Readlink(fd); err == nil && strings.HasPrefix(l, "socket:[") {
				inodes[strings.Trim(l, "socket:[]")] = true
			}
		}
	}
	listening := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(row)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
				continue
			}
			listening++
			if !strings.HasPrefix(f[1], "0100007F:") { // 127.0.0.1, little-endian
				t.Errorf("a server listens on %s (%s)", f[1], table)
			}
		}
	}
	if listening != 3 { // etcd's client and peer ports, kube-apiserver's
		t.Errorf("%d listening sockets, want 3", listening)
	}
}

// client is an HTTPS client trusting the server's certificate.
func client(t *testing.T, s *Server) *http.Client {
	t.Helper()
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
}

// get GETs path with token (none if ""), returning the status and body.
func get(t *testing.T, s *Server, path, token string) (int, string) {
	t.Helper()
	return do(t, s, "GET", path, token, "")
}

// create POSTs a config map into namespace default.
func create(t *testing.T, s *Server, object string) {
	t.Helper()
	if code, body := do(t, s, "POST", "/api/v1/namespaces/default/configmaps", s.Token, object); code != http.StatusCreated {
		t.Fatalf("create config map: %d %s", code, body)
	}
}

func do(t *testing.T, s *Server, method, path, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client(t, s).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Errorf("%s %s: not JSON: %s", method, path, b)
	}
	return resp.StatusCode, string(b)
}
