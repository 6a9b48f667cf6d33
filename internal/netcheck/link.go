package netcheck

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// WaitOperUp waits until the device ifname in the namespace at nsPath is
// operationally up, that is until the kernel's link watcher has finished
// bringing it up. Until then the device has no qdisc and drops what is
// sent, typically the first ARP request, which costs the sender an ARP
// retry: a second. The link watcher runs at most once a second, so the wait
// can be that long. WaitOperUp fails after timeout, or when ctx ends.
func WaitOperUp(ctx context.Context, nsPath, ifname string, timeout time.Duration) error {
	fail := func(err error) error { return fmt.Errorf("wait for %q to come up: %w", ifname, err) }
	h, err := handle(nsPath)
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	deadline := time.Now().Add(timeout)
	for {
		link, err := h.LinkByName(ifname)
		if err != nil {
			return fail(err)
		}
		state := link.Attrs().OperState
		if state == netlink.OperUp {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%q still %s after %s", ifname, state, timeout)
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
