// Package netlinksafe runs a netlink dump again when the kernel
// interrupted it, as containernetworking/plugins' pkg/netlinksafe and
// Cilium's safenetlink do.
//
// The kernel marks a dump NLM_F_DUMP_INTR when the table it reads changes
// between two parts of the answer (a link, an address or a route added
// or removed meanwhile, which happens all the time on a busy node): the
// list may then miss entries or hold stale ones. The netlink package
// returns such a list together with netlink.ErrDumpInterrupted. The
// functions here never return one: they list again, a bounded number of
// times, and give up with an error wrapping netlink.ErrDumpInterrupted and
// naming what was being listed.
//
// Every netlink dump of the project goes through this package. A nil
// *netlink.Handle uses the netlink package's functions, which work in the
// network namespace of the calling thread (inside routing.Do).
package netlinksafe

import (
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// Attempts is how many times a dump is tried before Retry gives up; the
// tries are Interval apart. Cilium's safenetlink tries as often, as far
// apart.
const (
	Attempts = 30
	Interval = time.Millisecond
)

// Retry runs dump until it returns anything but netlink.ErrDumpInterrupted,
// at most Attempts times, and returns what it returned. If every try was
// interrupted it returns the zero T, never a partial list, and an error
// that wraps netlink.ErrDumpInterrupted and names what ("links of
// netns ...").
func Retry[T any](what string, dump func() (T, error)) (T, error) {
	var err error
	for i := range Attempts {
		if i > 0 {
			time.Sleep(Interval)
		}
		var out T
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	var zero T
	return zero, fmt.Errorf("list %s: interrupted by concurrent changes %d times in a row: %w", what, Attempts, err)
}

// LinkList is h.LinkList, retried when interrupted.
func LinkList(h *netlink.Handle) ([]netlink.Link, error) {
	return Retry("links", func() ([]netlink.Link, error) {
		if h == nil {
			return netlink.LinkList()
		}
		return h.LinkList()
	})
}

// AddrList is h.AddrList, retried when interrupted.
func AddrList(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	return Retry(fmt.Sprintf("addresses of %s", linkName(link)), func() ([]netlink.Addr, error) {
		if h == nil {
			return netlink.AddrList(link, family)
		}
		return h.AddrList(link, family)
	})
}

// NeighList is h.NeighList, retried when interrupted.
func NeighList(h *netlink.Handle, linkIndex, family int) ([]netlink.Neigh, error) {
	return Retry(fmt.Sprintf("neighbours of ifindex %d", linkIndex), func() ([]netlink.Neigh, error) {
		if h == nil {
			return netlink.NeighList(linkIndex, family)
		}
		return h.NeighList(linkIndex, family)
	})
}

// RouteListFiltered is h.RouteListFiltered, retried when interrupted.
func RouteListFiltered(h *netlink.Handle, family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error) {
	return Retry("routes", func() ([]netlink.Route, error) {
		if h == nil {
			return netlink.RouteListFiltered(family, filter, filterMask)
		}
		return h.RouteListFiltered(family, filter, filterMask)
	})
}

// FilterList is h.FilterList, retried when interrupted.
func FilterList(h *netlink.Handle, link netlink.Link, parent uint32) ([]netlink.Filter, error) {
	return Retry(fmt.Sprintf("tc filters of %s", linkName(link)), func() ([]netlink.Filter, error) {
		if h == nil {
			return netlink.FilterList(link, parent)
		}
		return h.FilterList(link, parent)
	})
}

func linkName(link netlink.Link) string {
	if link == nil {
		return "every device"
	}
	if a := link.Attrs(); a.Name != "" {
		return fmt.Sprintf("%q", a.Name)
	}
	return fmt.Sprintf("ifindex %d", link.Attrs().Index)
}
