package routing

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Do runs fn on a thread inside the network namespace at nsPath (a path such
// as /var/run/netns/NAME or /proc/PID/ns/net). An empty nsPath runs fn where
// the caller is. Sockets and links fn creates belong to that namespace and
// may be used from any goroutine afterwards.
//
// If the thread cannot be moved back to its own namespace it is never
// unlocked, so the Go runtime retires it instead of reusing it elsewhere.
func Do(nsPath string, fn func() error) error {
	if nsPath == "" {
		return fn()
	}
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %q: %w", nsPath, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	origin, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer origin.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %q: %w", nsPath, err)
	}
	fnErr := fn()
	if err := netns.Set(origin); err != nil {
		return fmt.Errorf("return from netns %q: %w", nsPath, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

// Handle returns a netlink handle working in the network namespace at
// nsPath, or in the caller's when nsPath is empty. Close it after use.
func Handle(nsPath string) (*netlink.Handle, error) {
	if nsPath == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %q: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %q: %w", nsPath, err)
	}
	return h, nil
}
