package datapathtest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/loader"
)

// PinPath returns a fresh pin directory below /sys/fs/bpf for one test, and
// removes whatever is left there in t.Cleanup.
func PinPath(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(loader.DefaultBPFFS, prefixed(t, "DirPrefix", DirPrefix, 6))
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pin path %s: %v", dir, err)
		}
	})
	return dir
}

// NewDatapath starts host routing on the node with cfg, filling in the
// node's netns and a fresh pin path unless cfg names them. t.Cleanup
// removes the datapath, whatever became of the handle.
func (n *Node) NewDatapath(t testing.TB, cfg datapath.Config) *datapath.Datapath {
	t.Helper()
	if cfg.Netns == "" {
		cfg.Netns = n.Netns
	}
	if cfg.PinPath == "" {
		cfg.PinPath = PinPath(t)
	}
	dp, err := datapath.New(cfg)
	if err != nil {
		t.Fatalf("start datapath on %s: %v", n.Name, err)
	}
	t.Cleanup(func() {
		dp.Close()
		left, err := datapath.Open(cfg.Location())
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, loader.ErrNoNode) {
			return // removed by the test
		}
		if err == nil {
			err = left.Remove()
		}
		if err != nil {
			t.Errorf("remove datapath of %s: %v", n.Name, err)
		}
	})
	return dp
}

// AddEndpoint puts the pod on dp (as Endpoint describes it) and fails the
// test on error.
func (p *Pod) AddEndpoint(t testing.TB, dp *datapath.Datapath) datapath.Endpoint {
	t.Helper()
	ep, err := dp.AddEndpoint(p.Endpoint())
	if err != nil {
		t.Fatalf("add endpoint %s: %v", p.Name, err)
	}
	return ep
}

// Endpoint describes the pod as datapath.AddEndpoint takes it, with the
// datapath's ARP responder if the pod needs it (Pod.ARPResponder).
func (p *Pod) Endpoint() datapath.Endpoint {
	return datapath.Endpoint{IfName: p.HostIf, IP: p.IP, MAC: p.MAC, ARPResponder: p.ARPResponder}
}
