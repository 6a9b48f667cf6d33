package datapathtest_test

import (
	"crypto/tls"
	"crypto/x509"
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
