package agent

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestCNIConf: the agent writes the node's conflist once its Node has a
// pod CIDR: ptp with the device's MTU, host-local with the pod CIDR, and
// the hostrouting plugin with the node's pin path and native routing CIDR;
// one file, no temporary left.
func TestCNIConf(t *testing.T) {
	e := newEnv(t, 1)
	n := e.cluster.Nodes[0]
	// The agent runs on the cluster's node as cni-node.
	if err := e.client.CoreV1().Nodes().Delete(t.Context(), n.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.putNode(t, "cni-node", n.IP, netip.Prefix{})
	dir := filepath.Join(t.TempDir(), "net.d") // made by the agent
	cfg := e.agentConfig(t, n, newPinPath(t, n))
	cfg.NodeName, cfg.CNIConfDir = "cni-node", dir
	start(t, cfg)

	// worker8 comes after the agent saw cni-node without a pod CIDR.
	e.putNode(t, "worker8", netip.MustParseAddr("172.18.0.98"), netip.MustParsePrefix("10.0.8.0/24"))
	dp := openDatapath(t, n, cfg.PinPath)
	eventually(t, 10*time.Second, func() error {
		nodes, err := dp.Nodes()
		if err != nil || len(nodes) != 1 {
			return fmt.Errorf("nodes %v, %v", nodes, err)
		}
		return nil
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("CNI configuration dir before the node has a pod CIDR: %v", err)
	}

	node := e.node(t, "cni-node")
	node.Spec.PodCIDR, node.Spec.PodCIDRs = "10.0.7.0/24", []string{"10.0.7.0/24"}
	if _, err := e.client.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, CNIConfFile)
	var got []byte
	eventually(t, 10*time.Second, func() (err error) {
		got, err = os.ReadFile(path)
		return err
	})
	want := `{
  "cniVersion": "1.0.0",
  "name": "hostrouting",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "subnet": "10.0.7.0/24",
        "routes": [
          {
            "dst": "0.0.0.0/0"
          }
        ]
      }
    },
    {
      "type": "hostrouting",
      "pinPath": "` + cfg.PinPath + `",
      "nativeRoutingCIDR": "10.0.0.0/8"
    }
  ]
}
`
	if string(got) != want {
		t.Errorf("%s:\n%s\nwant:\n%s", path, got, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("%s: %v, %v", path, fi.Mode(), err)
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 1 {
		t.Errorf("%s holds %v (%v): want the conflist only", dir, entries, err)
	}
}
