package datapathtest

import (
	"testing"

	"github.com/hostrouting/hostrouting/internal/kube"
)

// Kube is a real Kubernetes API server for a test: etcd and kube-apiserver
// v1.37 listening on 127.0.0.1 only, with no kubelet, scheduler or controller
// manager. It stores and serves objects (nodes, pods, services,
// EndpointSlices) for an agent under test to watch; nothing runs the pods.
// Every request with Token is allowed (it is in group system:masters, also
// under RBAC: see KubeOptions). Namespaces get no default service
// account, and pods need none.
type Kube struct {
	Kubeconfig string // path of a kubeconfig for client-go or kubectl (URL, CA and Token inline)
	URL        string // https://127.0.0.1:PORT
	Token      string // bearer token of an admin user
	CAFile     string // PEM certificates that verify the server's TLS certificate
	Dir        string // its directory (kubeconfig, logs, etcd data), removed after the test

	srv *kube.Server
}

// StartKube starts a Kube in a directory of the test's own and returns once
// the API server is ready; t.Cleanup stops it. It needs no root. The
// binaries are built on first use into the repository's .cache/kube/bin,
// which takes about 12 minutes (run `make kube-bin` first, or give `go test`
// a longer -timeout); outside this repository, set HOSTROUTING_KUBE_BIN to
// a directory holding etcd and kube-apiserver. If the test binary is killed,
// the kernel kills the servers with it.
func StartKube(t testing.TB) *Kube {
	t.Helper()
	return StartKubeWith(t, KubeOptions{})
}

// KubeOptions change how StartKubeWith runs kube-apiserver.
type KubeOptions struct {
	// Authorization is kube-apiserver's --authorization-mode, such as
	// "Node,RBAC" for a test of the RBAC rules a component needs; empty
	// for AlwaysAllow, which allows every request.
	Authorization string
}

// StartKubeWith is StartKube with opts.
func StartKubeWith(t testing.TB, opts KubeOptions) *Kube {
	t.Helper()
	srv, err := kube.Start(t.Context(), t.TempDir(), kube.Options{Authorization: opts.Authorization})
	if err != nil {
		t.Fatalf("start kube: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("stop kube: %v", err)
		}
	})
	return &Kube{Kubeconfig: srv.Kubeconfig, URL: srv.URL, Token: srv.Token, CAFile: srv.CAFile,
		Dir: srv.Dir, srv: srv}
}

// StopAPIServer stops kube-apiserver, leaving etcd and the data in it, so
// that a test can check how its client rides out an API outage.
func (k *Kube) StopAPIServer(t testing.TB) {
	t.Helper()
	if err := k.srv.StopAPIServer(); err != nil {
		t.Fatalf("stop kube-apiserver: %v", err)
	}
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, at the same
// URL with the same certificate and token, and returns once it is ready.
func (k *Kube) StartAPIServer(t testing.TB) {
	t.Helper()
	if err := k.srv.StartAPIServer(t.Context()); err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
}
