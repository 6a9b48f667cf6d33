package routing

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// home is this process's network namespace: the one it started in, opened
// while the package is initialised, which the Go runtime does on the main
// thread before any other goroutine may borrow it. It is what an empty
// nsPath means everywhere in the SDK. /proc/self/ns/net read later would
// not do: it is the main thread's, and the runtime lends the main thread
// to any goroutine, one inside Do (or any other code that moves its
// thread) included.
var home, homeErr = netns.GetFromPath("/proc/self/ns/net")

// openNetns opens the network namespace at nsPath, "" for the process's
// (home). Call the returned function when done with it.
func openNetns(nsPath string) (netns.NsHandle, func(), error) {
	if nsPath == "" {
		if homeErr != nil {
			return netns.None(), nil, fmt.Errorf("open %s: %w", describeNetns(nsPath), homeErr)
		}
		return home, func() {}, nil
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return netns.None(), nil, fmt.Errorf("open %s: %w", describeNetns(nsPath), err)
	}
	return ns, func() { ns.Close() }, nil
}

// describeNetns names the namespace at nsPath for an error.
func describeNetns(nsPath string) string {
	if nsPath == "" {
		return "the process's netns"
	}
	return fmt.Sprintf("netns %q", nsPath)
}

// Do runs fn on an OS thread inside the network namespace at nsPath (a
// path such as /var/run/netns/NAME or /proc/PID/ns/net), or inside this
// process's network namespace when nsPath is empty (the one it started in:
// /proc/self/ns/net as the process starts), never simply where the calling
// thread happens to be.
// Sockets and links fn creates belong to that namespace and may be used
// from any goroutine afterwards.
//
// As CNI's ns.Do, Do runs fn on a goroutine of its own, locked to its
// thread, and waits for it: the caller's thread never changes namespace,
// whatever fn does. The thread is moved back in a deferred step, so also
// when fn panics; if it cannot be moved back it is never unlocked, and the
// Go runtime retires it with the goroutine instead of reusing it
// elsewhere. A panic in fn is raised again in the caller, with the same
// value, once the thread is back; fn calling runtime.Goexit (t.FailNow)
// ends the caller's goroutine too.
func Do(nsPath string, fn func() error) error {
	target, done, err := openNetns(nsPath)
	if err != nil {
		return err
	}
	defer done()

	var (
		fnErr, restoreErr error
		returned, exited  bool // fn returned; fn called runtime.Goexit
		panicked          bool
		panicValue        any
	)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		runtime.LockOSThread()
		// Runs last: after the thread is back, or retired.
		defer func() {
			if returned {
				return
			}
			if r := recover(); r != nil {
				panicked, panicValue = true, r
			} else {
				exited = true
			}
		}()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			fnErr, returned = fmt.Errorf("get the thread's netns: %w", err), true
			return
		}
		defer origin.Close()
		if !origin.Equal(target) {
			if err := netns.Set(target); err != nil {
				runtime.UnlockOSThread()
				fnErr, returned = fmt.Errorf("enter %s: %w", describeNetns(nsPath), err), true
				return
			}
			defer func() {
				if err := netns.Set(origin); err != nil {
					// Never unlocked: the thread ends with this goroutine.
					restoreErr = fmt.Errorf("return from %s: %w", describeNetns(nsPath), err)
					return
				}
				runtime.UnlockOSThread()
			}()
		} else {
			defer runtime.UnlockOSThread()
		}
		fnErr = fn()
		returned = true
	}()
	<-finished
	switch {
	case panicked:
		panic(panicValue)
	case exited:
		runtime.Goexit()
	}
	return errors.Join(fnErr, restoreErr)
}

// Handle returns a netlink handle working in the network namespace at
// nsPath, or in this process's (the one it started in) when nsPath is
// empty, whichever namespace the calling thread is in. Its sockets are made
// inside the namespace by [Do]. Close it after use.
func Handle(nsPath string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := Do(nsPath, func() (err error) {
		h, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", describeNetns(nsPath), err)
	}
	return h, nil
}
