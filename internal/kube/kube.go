// Package kube runs a real Kubernetes API server on 127.0.0.1 (etcd and
// kube-apiserver, no kubelet, scheduler or controller manager) for tests
// and `make kube-up`. Build makes the binaries once; Start runs them in a
// directory of their own; Down stops and removes one left running.
package kube

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// readyTimeout bounds how long Start and StartAPIServer wait for a process
// to become ready.
const readyTimeout = 2 * time.Minute

// Options change how Start runs the server.
type Options struct {
	// Detach leaves etcd and kube-apiserver running, in sessions of their
	// own, when the process that called Start exits (`make kube-up`).
	// Otherwise the kernel kills them when it exits, also when it is killed,
	// as a test binary should.
	Detach bool
	// Authorization is kube-apiserver's --authorization-mode, such as
	// "Node,RBAC"; empty for AlwaysAllow. Token is in group system:masters,
	// which RBAC allows everything.
	Authorization string
}

// Server is a running etcd and kube-apiserver. Clients authenticate with
// Token, a user in group system:masters; every request is allowed
// (AlwaysAllow, unless Options.Authorization says otherwise). There is no
// controller manager: namespaces get no default service account, and the
// ServiceAccount admission plugin is off so that pods can be created
// anyway.
type Server struct {
	Dir        string // the directory given to Start, made absolute: kubeconfig, logs, pid files, etcd data, certs
	Kubeconfig string // path of a kubeconfig with the URL, the CA and the token inline
	URL        string // https://127.0.0.1:PORT
	Token      string // bearer token of an admin user
	CAFile     string // PEM certificates that verify the server's TLS certificate

	bin     string
	opts    Options
	apiArgs []string

	mu        sync.Mutex
	etcd, api *proc
}

// Start builds the binaries if needed (see Build), creates dir, which must
// not exist or be empty, starts etcd and kube-apiserver in it, listening on
// free ports of 127.0.0.1 only, and returns once the API server is ready.
// It writes dir/kubeconfig, dir/etcd.pid, dir/kube-apiserver.pid and the
// logs dir/etcd.log and dir/kube-apiserver.log. If it fails, it stops
// whatever it started and leaves dir for Down.
func Start(ctx context.Context, dir string, opts Options) (_ *Server, err error) {
	bin, err := Build(ctx)
	if err != nil {
		return nil, err
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("start in %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("start in %s: %w", dir, err)
	}
	if len(entries) > 0 {
		return nil, fmt.Errorf("start in %s: directory not empty (a server left running? see Down)", dir)
	}
	s := &Server{Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), bin: bin, opts: opts,
		CAFile: filepath.Join(dir, "certs", "apiserver.crt")}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	s.URL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	if s.Token, err = s.writeSecrets(); err != nil {
		return nil, err
	}

	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if s.etcd, err = s.start("etcd",
		"--name", "default",
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
		"--unsafe-no-fsync", // a throwaway store: speed over durability
	); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	if err := waitReady(ctx, s.etcd, func() error { return etcdHealthy(client) }); err != nil {
		return nil, fmt.Errorf("wait for etcd: %w", err)
	}

	authz := opts.Authorization
	if authz == "" {
		authz = "AlwaysAllow"
	}
	s.apiArgs = []string{
		"--etcd-servers", client,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", authz,
		"--allow-privileged=true", // as kubeadm's and kind's: DaemonSets of CNIs and kube-proxy are
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--endpoint-reconciler-type", "none",
		"--disable-admission-plugins", "ServiceAccount",
	}
	if err := s.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := s.writeKubeconfig(); err != nil {
		return nil, err
	}
	return s, nil
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, with the
// same port, certificates and etcd, and returns once it is ready.
func (s *Server) StartAPIServer(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.api != nil && !s.api.exited() {
		return errors.New("start kube-apiserver: already running")
	}
	api, err := s.start("kube-apiserver", s.apiArgs...)
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	s.api = api
	if err := waitReady(ctx, api, s.apiReady); err != nil {
		return fmt.Errorf("wait for kube-apiserver: %w", err)
	}
	return nil
}

// StopAPIServer stops kube-apiserver (SIGTERM, SIGKILL after 10 s) and
// waits for it to exit; etcd keeps running.
func (s *Server) StopAPIServer() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.api.stop()
}

// Stop stops kube-apiserver and etcd (SIGTERM, SIGKILL after 10 s) and
// waits for them to exit. It leaves Dir with the logs; Down removes it.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.api.stop(), s.etcd.stop())
}

// writeSecrets writes the token file and the service-account signing key
// into Dir and returns the token.
func (s *Server) writeSecrets() (string, error) {
	b := make([]byte, 16)
	rand.Read(b)
	token := hex.EncodeToString(b)
	if err := os.WriteFile(filepath.Join(s.Dir, "tokens.csv"),
		[]byte(token+",admin,admin,system:masters\n"), 0o600); err != nil {
		return "", fmt.Errorf("write token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("generate service-account key: %w", err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(filepath.Join(s.Dir, "sa.key"), pemKey, 0o600); err != nil {
		return "", fmt.Errorf("write service-account key: %w", err)
	}
	return token, nil
}

// writeKubeconfig writes Kubeconfig, once kube-apiserver has written its
// self-signed certificate into CAFile.
func (s *Server) writeKubeconfig() error {
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return fmt.Errorf("read apiserver certificate: %w", err)
	}
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: hostrouting
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: hostrouting
  context:
    cluster: hostrouting
    user: admin
current-context: hostrouting
`, s.URL, base64.StdEncoding.EncodeToString(ca), s.Token)
	if err := os.WriteFile(s.Kubeconfig, []byte(config), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// apiReady asks kube-apiserver's /readyz, trusting CAFile, which it writes
// before it listens.
func (s *Server) apiReady() error {
	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificate in %s", s.CAFile)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	req, err := http.NewRequest("GET", s.URL+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.Token)
	return expectOK(client.Do(req))
}

// etcdHealthy asks etcd's /health.
func etcdHealthy(url string) error {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return expectOK(client.Get(url + "/health"))
}

func expectOK(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitReady polls ready until it succeeds, p exits, ctx ends or
// readyTimeout passes.
func waitReady(ctx context.Context, p *proc, ready func() error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%s), see %s", p.name, p.cmd.ProcessState, p.log)
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v), see %s", ctx.Err(), err, p.log)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePorts returns n distinct ports of 127.0.0.1 that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
