package instance

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
)

// TestLinkPinEmptyNetns: the pin of a tcx link attached with nsPath ""
// names the process's network namespace, as the node's recorded netns
// does, also when the caller's thread sits in another namespace.
func TestLinkPinEmptyNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("HOSTROUTING_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root: creates a network namespace")
		}
		t.Skip("needs root: creates a network namespace")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "hr-" + hex.EncodeToString(b) + "-linkpin"
	pod, err := routing.CreateNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := routing.DeleteNetns(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	process, err := routing.Netns("")
	if err != nil {
		t.Fatal(err)
	}
	n := &Instance{PinPath: "/sys/fs/bpf/test"}
	want := filepath.Join(n.PinPath, "links", fmt.Sprintf("%d_7_%s", process.Ino, objectName(loader.FromContainer)))

	pins := make(chan string, 1)
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		ns, err := netns.GetFromPath(pod)
		if err == nil {
			err = netns.Set(ns)
			ns.Close()
		}
		if err != nil {
			errs <- err
			return
		}
		errs <- routing.Do("", func() error {
			pin, err := n.linkPin(7, loader.FromContainer)
			pins <- pin
			return err
		})
	}()
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if got := <-pins; got != want {
		t.Errorf("link pin from a thread in another netns: %s, want %s (the process's netns %s)", got, want, process)
	}
}
