package datapathtest_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
)

// TestKube reads namespace default from a Kube, across a restart of its
// API server.
func TestKube(t *testing.T) {
	k := datapathtest.StartKube(t)
	if kc, err := os.ReadFile(k.Kubeconfig); err != nil || !strings.Contains(string(kc), k.URL) {
		t.Errorf("kubeconfig: %v\n%s", err, kc)
	}
	ca, err := os.ReadFile(k.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	getDefault := func() (int, error) {
		req, err := http.NewRequest("GET", k.URL+"/api/v1/namespaces/default", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+k.Token)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	if code, err := getDefault(); code != http.StatusOK {
		t.Fatalf("GET namespace default: %d %v", code, err)
	}
	k.StopAPIServer(t)
	if _, err := getDefault(); err == nil {
		t.Error("API server answers after StopAPIServer")
	}
	k.StartAPIServer(t)
	if code, err := getDefault(); code != http.StatusOK {
		t.Errorf("GET namespace default after StartAPIServer: %d %v", code, err)
	}
}

// TestKubeRBAC runs kube-apiserver with Node,RBAC: Token may list nodes,
// a ServiceAccount's own token (TokenRequest) bound to no role may not.
func TestKubeRBAC(t *testing.T) {
	k := datapathtest.StartKubeWith(t, datapathtest.KubeOptions{Authorization: "Node,RBAC"})
	ca, err := os.ReadFile(k.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	do := func(method, path, token, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, k.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	if code, b := do("GET", "/api/v1/nodes", k.Token, ""); code != http.StatusOK {
		t.Fatalf("admin lists nodes: %d %s", code, b)
	}
	if code, b := do("POST", "/api/v1/namespaces/default/serviceaccounts", k.Token,
		`{"metadata":{"name":"nobody"}}`); code != http.StatusCreated {
		t.Fatalf("create service account: %d %s", code, b)
	}
	code, b := do("POST", "/api/v1/namespaces/default/serviceaccounts/nobody/token", k.Token, `{"spec":{}}`)
	if code != http.StatusCreated {
		t.Fatalf("request token: %d %s", code, b)
	}
	var tr struct {
		Status struct{ Token string } `json:"status"`
	}
	if err := json.Unmarshal(b, &tr); err != nil || tr.Status.Token == "" {
		t.Fatalf("token request: %v %s", err, b)
	}
	if code, b := do("GET", "/api/v1/nodes", tr.Status.Token, ""); code != http.StatusForbidden {
		t.Errorf("service account without roles lists nodes: %d %s, want 403", code, b)
	}
}
