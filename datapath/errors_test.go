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
