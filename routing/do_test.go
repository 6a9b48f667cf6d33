package routing_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// threadNetns returns the inode of the calling thread's network namespace.
func threadNetns() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// TestDoPanic: a panic in fn reaches the caller, which recovers it, and
// leaves the caller's goroutine, on its thread, in the namespace it was
// in, not in the one Do entered.
func TestDoPanic(t *testing.T) {
	datapathtest.RequireRoot(t)
	_, pod := newNetns(t, "panic")
	podNs, err := routing.Netns(pod)
	if err != nil {
		t.Fatal(err)
	}
	// The goroutine keeps its thread, so that the thread is what is checked.
	runtime.LockOSThread()
	before, err := threadNetns()
	if err != nil {
		t.Fatal(err)
	}
	var inside uint64
	boom := errors.New("boom")
	recovered := func() (r any) {
		defer func() { r = recover() }()
		routing.Do(pod, func() error {
			inside, _ = threadNetns()
			panic(boom)
		})
		return nil
	}()
	after, err := threadNetns()
	if err != nil || after == before {
		// Back where it was: the thread may serve other goroutines again.
		runtime.UnlockOSThread()
	} // else it ends with the test's goroutine
	if err != nil {
		t.Fatal(err)
	}
	if recovered != boom {
		t.Errorf("recovered %v, want fn's panic %v", recovered, boom)
	}
	if inside != podNs.Ino {
		t.Errorf("fn ran in net:[%d], want the pod's %s", inside, podNs)
	}
	if after != before {
		t.Errorf("after a panic in Do, recovered by the caller, the caller's thread is in net:[%d] (the pod's is %s), was in net:[%d]", after, podNs, before)
	}
}

// TestDoGoexit: fn calling runtime.Goexit (as t.FailNow does) ends the
// caller's goroutine too, as if fn had run on it.
func TestDoGoexit(t *testing.T) {
	datapathtest.RequireRoot(t)
	_, pod := newNetns(t, "goexit")
	returned := make(chan bool, 1)
	go func() {
		ret := false
		defer func() { returned <- ret }()
		routing.Do(pod, func() error {
			runtime.Goexit()
			return nil
		})
		ret = true
	}()
	if <-returned {
		t.Error("Do returned after fn called runtime.Goexit")
	}
}

// TestEmptyNetnsIsTheProcesss: "" is the process's network namespace
// (/proc/self/ns/net) for Do and Handle, as for Netns, also when called
// from a thread that sits in another namespace.
func TestEmptyNetnsIsTheProcesss(t *testing.T) {
	datapathtest.RequireRoot(t)
	_, pod := newNetns(t, "empty")
	b := make([]byte, 3)
	rand.Read(b)
	probe := "hrp" + hex.EncodeToString(b) // a device only the pod's namespace has
	if err := handle(t, pod).LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: probe}, PeerName: probe + "p"}); err != nil {
		t.Fatal(err)
	}
	process, err := routing.Netns("")
	if err != nil {
		t.Fatal(err)
	}

	// A goroutine whose thread sits in the pod's namespace, as one that
	// entered it by other means than Do.
	errs := make(chan error, 1)
	go func() {
		errs <- func() error {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			ns, err := netns.GetFromPath(pod)
			if err != nil {
				return err
			}
			defer ns.Close()
			if err := netns.Set(ns); err != nil {
				return err
			}
			var inDo uint64
			if err := routing.Do("", func() (err error) {
				inDo, err = threadNetns()
				return err
			}); err != nil {
				return err
			}
			var errs []error
			if inDo != process.Ino {
				errs = append(errs, fmt.Errorf(`Do("") ran fn in net:[%d], want the process's %s`, inDo, process))
			}
			if now, err := threadNetns(); err != nil || now == process.Ino {
				errs = append(errs, fmt.Errorf(`Do("") left the thread in net:[%d] (%v), not in the pod's`, now, err))
			}
			h, err := routing.Handle("")
			if err != nil {
				return err
			}
			defer h.Close()
			if _, err := h.LinkByName(probe); !errors.As(err, &netlink.LinkNotFoundError{}) {
				errs = append(errs, fmt.Errorf(`Handle("") found the pod's device %s (%v): it works in the thread's namespace, not the process's`, probe, err))
			}
			return errors.Join(errs...)
		}()
	}()
	if err := <-errs; err != nil {
		t.Error(err)
	}
}
