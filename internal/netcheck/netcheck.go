// Package netcheck holds connectivity probes run from inside a network
// namespace: ICMP echo with a raw socket, TCP and UDP echo clients and
// servers, netfilter FORWARD packet counting and waiting for a link's
// operstate. It serves the project's tests, examples and benchmarks and is
// not a public API.
//
// Every probe takes the path of the namespace it runs in, such as
// /var/run/netns/<name>; an empty path is refused, so nothing runs in the
// caller's own namespace by mistake. Probes return errors instead of failing
// a test, and each is bounded by a timeout as well as by its context.
package netcheck

import (
	"context"
	"errors"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/routing"
)

// errNoNetns is returned for an empty namespace path.
var errNoNetns = errors.New("no network namespace given")

// inNetns runs fn inside the namespace at nsPath (routing.Do). Sockets fn
// opens belong to that namespace.
func inNetns(nsPath string, fn func() error) error {
	if nsPath == "" {
		return errNoNetns
	}
	return routing.Do(nsPath, fn)
}

// handle returns a netlink handle in the namespace at nsPath.
func handle(nsPath string) (*netlink.Handle, error) {
	if nsPath == "" {
		return nil, errNoNetns
	}
	return routing.Handle(nsPath)
}

// ctxErr returns ctx's error if it has ended, since that is then why err
// happened (the probe closed its socket for it), and err otherwise.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}
