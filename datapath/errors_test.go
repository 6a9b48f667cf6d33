package datapath_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
)

// TestErrorsByDatapathNames: what New, Open and the methods return is
// errors.Is-able against datapath's own names, which are loader's under
// the same names (one import is enough), and ErrNotFound is the
// datapath's, not cilium/ebpf's ErrKeyNotExist.
func TestErrorsByDatapathNames(t *testing.T) {
	node := datapathtest.NewNode(t, "errs")
	notBPFFS := t.TempDir()
	_, err := datapath.New(datapath.Config{PinPath: notBPFFS, Netns: node.Netns})
	if !errors.Is(err, datapath.ErrNotBPFFS) || !errors.Is(err, loader.ErrNotBPFFS) {
		t.Errorf("New on %s: %v, want datapath.ErrNotBPFFS (= loader.ErrNotBPFFS)", notBPFFS, err)
	}

	empty := datapathtest.PinPath(t)
	if err := os.MkdirAll(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(empty) })
	if _, err := datapath.Open(datapath.Location{PinPath: empty, Netns: node.Netns}); !errors.Is(err, datapath.ErrNoNode) {
		t.Errorf("Open of an empty pin directory: %v, want datapath.ErrNoNode", err)
	}

	dp := node.NewDatapath(t, datapath.Config{})
	err = dp.RemoveEndpoint(netip.MustParseAddr("10.0.0.99"))
	if !errors.Is(err, datapath.ErrNotFound) || errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("RemoveEndpoint of an unknown pod: %v, want datapath.ErrNotFound and not ebpf.ErrKeyNotExist", err)
	}
	if _, err := dp.Endpoint(netip.MustParseAddr("10.0.0.99")); !errors.Is(err, datapath.ErrNotFound) || errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("Endpoint of an unknown pod: %v, want datapath.ErrNotFound only", err)
	}

	foreign := datapathtest.PinPath(t)
	if err := os.MkdirAll(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(foreign, "not-ours"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(foreign) })
	if _, err := datapath.New(datapath.Config{PinPath: foreign, Netns: node.Netns}); !errors.Is(err, datapath.ErrForeignPinPath) {
		t.Errorf("New on a directory of other files: %v, want datapath.ErrForeignPinPath", err)
	}
}

// TestEndpointInAndOut: one Endpoint type in and out — what AddEndpoint
// returns, Endpoints and Endpoint list, and what goes back into
// AddEndpoint (an update keeping the ID) are the same type, the
// datapath's fields filled in: device name and index, host MAC, flags
// as booleans.
func TestEndpointInAndOut(t *testing.T) {
	node := datapathtest.NewNode(t, "epio")
	dp := node.NewDatapath(t, datapath.Config{})
	pod := node.AddPod(t, "a", netip.MustParseAddr("10.0.0.1"))
	in := pod.Endpoint()
	in.ARPResponder = true
	out, err := dp.AddEndpoint(in)
	if err != nil {
		t.Fatal(err)
	}
	if out.IfName != in.IfName || out.IP != in.IP || out.ID == 0 || out.IfIndex == 0 || len(out.NodeMAC) != 6 || !out.ARPResponder || out.Policy {
		t.Errorf("AddEndpoint returned %+v for %+v", out, in)
	}
	listed, err := dp.Endpoints()
	if err != nil || len(listed) != 1 || listed[0].String() != out.String() || listed[0].IfName != out.IfName {
		t.Errorf("Endpoints: %v (%v), want [%s] on %s", listed, err, out, out.IfName)
	}
	again, err := dp.AddEndpoint(out)
	if err != nil || again.ID != out.ID || again.String() != out.String() {
		t.Errorf("AddEndpoint of its own result: %s (%v), want %s", again, err, out)
	}
	got, err := dp.Endpoint(in.IP)
	if err != nil || got.String() != out.String() || got.IfName != in.IfName {
		t.Errorf("Endpoint(%s): %s on %q (%v), want %s on %q", in.IP, got, got.IfName, err, out, in.IfName)
	}
}
