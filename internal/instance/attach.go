package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/routing"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var programs = []loader.Program{loader.FromContainer, loader.ToContainer, loader.FromNetdev, loader.ToNetdev}

// Attach attaches program p to the device with index ifindex in the
// network namespace at nsPath ("" for the process's, see routing.Do).
// It is idempotent: attaching again keeps one attachment, renewed with the
// node's current program.
//
// Renewing an attachment (after a reload) makes before it breaks: the
// hook runs the old program until the new one runs, never neither.
//   - tcx → tcx: the pinned link is updated in place (one atomic swap).
//   - clsact → clsact: the filter is replaced in place (cls_bpf swaps
//     the program of a filter of the same priority and handle atomically).
//   - tcx ↔ clsact: the new kind is attached first, then the old kind
//     removed. For that moment both are on the hook; tcx runs first, and
//     the clsact filter runs only after tcx programs that all return
//     TC_ACT_UNSPEC (tcx's "next"; the kernel maps any unknown verdict to
//     it too). The datapath's programs never do: they end in TC_ACT_OK,
//     TC_ACT_SHOT or a redirect, so each packet meets exactly one of the
//     two, the tcx one. (An embedder's policy program must end in
//     hr_policy_allow or hr_policy_deny, which do the same.)
func (n *Instance) Attach(nsPath string, ifindex int, p loader.Program) error {
	prog := n.progs[p]
	if prog == nil {
		return fmt.Errorf("attach %s to ifindex %d: unknown program", p, ifindex)
	}
	err := routing.Do(nsPath, func() error {
		if n.Features.TCX.Enabled {
			if err := n.attachTCX(ifindex, p, prog); err != nil {
				return err
			}
			// A node reloaded from clsact mode leaves its filter behind:
			// take it off, now that the tcx link runs in front of it.
			if renewing, err := n.Renewing(); err != nil {
				return err
			} else if renewing {
				return n.detachClsact(ifindex, p)
			}
			return nil
		}
		created, err := n.attachClsact(ifindex, p, prog)
		if err == nil && created {
			err = n.noteOwnQdisc(ifindex)
		}
		if err != nil {
			return err
		}
		// A node reloaded from tcx mode leaves its link behind, running
		// in front of the filter until it goes.
		pin, err := n.linkPin(ifindex, p)
		if err != nil {
			return err
		}
		return unpinLink(pin)
	})
	if err != nil {
		return fmt.Errorf("attach %s to ifindex %d: %w", p, ifindex, err)
	}
	return nil
}

// Detach removes program p from the device with index ifindex in the
// network namespace at nsPath ("" for the process's), also in the attach mode of an earlier load
// whose renewal is not committed. Detaching what is not attached, or from
// a device that is gone, is not an error.
func (n *Instance) Detach(nsPath string, ifindex int, p loader.Program) error {
	err := routing.Do(nsPath, func() error {
		pin, err := n.linkPin(ifindex, p)
		if err != nil {
			return err
		}
		if !n.Features.TCX.Enabled {
			return errors.Join(n.detachClsact(ifindex, p), unpinLink(pin))
		}
		if err := unpinLink(pin); err != nil {
			return err
		}
		if renewing, err := n.Renewing(); err != nil || !renewing {
			return err
		}
		return n.detachClsact(ifindex, p)
	})
	if err != nil {
		return fmt.Errorf("detach %s from ifindex %d: %w", p, ifindex, err)
	}
	return nil
}

// linkPin names the pin of a tcx link; called inside the device's netns
// (routing.Do), whose inode keeps devices of different namespaces apart.
func (n *Instance) linkPin(ifindex int, p loader.Program) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return "", fmt.Errorf("name the link pin: the thread's netns: %w", err)
	}
	return filepath.Join(n.PinPath, "links", fmt.Sprintf("%d_%d_%s", st.Ino, ifindex, objectName(p))), nil
}

func (n *Instance) attachTCX(ifindex int, p loader.Program, prog *ebpf.Program) error {
	pin, err := n.linkPin(ifindex, p)
	if err != nil {
		return err
	}
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			return l.Update(prog)
		}
		// The device went away or is another one by now.
		if err := l.Unpin(); err != nil {
			return fmt.Errorf("unpin stale link: %w", err)
		}
	}
	attach := ebpf.AttachTCXEgress
	if ingress(p) {
		attach = ebpf.AttachTCXIngress
	}
	// Without a link of ours here, a program of ours by name is another
	// node instance's: two would run one after the other.
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
	if err != nil {
		return fmt.Errorf("query tcx programs: %w", err)
	}
	for _, ap := range res.Programs {
		other, err := ebpf.NewProgramFromID(ap.ID)
		if err != nil {
			continue
		}
		info, err := other.Info()
		other.Close()
		if err == nil && info.Name == objectName(p) {
			return fmt.Errorf("%w: ifindex %d already runs %s (program %d) of another hostrouting node instance; remove that one first (hrctl cleanup --pin-path ITS_PATH)",
				loader.ErrOtherInstance, ifindex, p, ap.ID)
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: attach})
	if err != nil {
		return err
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("create link pin directory: %w", err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin tcx link: %w", err)
	}
	return nil
}

func unpinLink(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned link: %w", err)
	}
	defer l.Close()
	return l.Unpin()
}

func (n *Instance) detachAllLinks() error {
	dir := filepath.Join(n.PinPath, "links")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list pinned links: %w", err)
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, unpinLink(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// clsact mode: one cls_bpf filter per hook, at a fixed priority and handle.
const (
	clsactPriority = 1
	clsactHandle   = 1
)

func clsactFilter(ifindex int, p loader.Program) netlink.FilterAttrs {
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress(p) {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	return netlink.FilterAttrs{
		LinkIndex: ifindex,
		Parent:    parent,
		Handle:    netlink.MakeHandle(0, clsactHandle),
		Protocol:  unix.ETH_P_ALL,
		Priority:  clsactPriority,
	}
}

func clsactQdisc(ifindex int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

// filterName names the cls_bpf filter of p of this node instance:
// "hostrouting_from_container@123", the number being the ID of the
// instance's hr_info map, which lives as long as the instance.
func (n *Instance) filterName(p loader.Program) string {
	return "hostrouting_" + objectName(p) + "@" + n.tag
}

// attachClsact puts prog as p's filter on the device, adding the clsact
// qdisc if the device has none (created says so). A filter of this node
// instance there already is replaced in place: cls_bpf swaps the program
// of the filter with that priority and handle in one step, so the hook
// never runs without one. A filter of another node instance in its place
// is refused, not replaced.
func (n *Instance) attachClsact(ifindex int, p loader.Program, prog *ebpf.Program) (created bool, err error) {
	attrs := clsactFilter(ifindex, p)
	if dev, err := netlink.LinkByIndex(ifindex); err == nil {
		filters, _ := netlinksafe.FilterList(nil, dev, attrs.Parent)
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if ok && bf.Handle == attrs.Handle && bf.Priority == attrs.Priority && strings.HasPrefix(bf.Name, "hostrouting_") && bf.Name != n.filterName(p) {
				return false, fmt.Errorf("%w: ifindex %d already has filter %s; remove that node instance first (hrctl cleanup --pin-path ITS_PATH)",
					loader.ErrOtherInstance, ifindex, bf.Name)
			}
		}
	}
	err = netlink.QdiscAdd(clsactQdisc(ifindex))
	switch {
	case err == nil:
		created = true
	case !errors.Is(err, unix.EEXIST):
		return false, fmt.Errorf("add clsact qdisc: %w", err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs:  clsactFilter(ifindex, p),
		Fd:           prog.FD(),
		Name:         n.filterName(p),
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return created, fmt.Errorf("add cls_bpf filter: %w", err)
	}
	return created, nil
}

// detachClsact deletes the node's filter for p, then the clsact qdisc if
// the node made it (on a node device) and no filter is left on it.
func (n *Instance) detachClsact(ifindex int, p loader.Program) error {
	if err := n.detachFilter(ifindex, p); err != nil {
		return err
	}
	return n.releaseOwnQdisc(ifindex)
}

// detachFilter deletes the node's filter for p, and only ours: a filter
// of someone else's at the same place is left alone.
func (n *Instance) detachFilter(ifindex int, p loader.Program) error {
	attrs := clsactFilter(ifindex, p)
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return nil // the device is gone, and its filters with it
	}
	filters, err := netlinksafe.FilterList(nil, link, attrs.Parent)
	if err != nil {
		return fmt.Errorf("list cls_bpf filters: %w", err)
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || bf.Handle != attrs.Handle || bf.Priority != attrs.Priority || bf.Name != n.filterName(p) {
			continue
		}
		if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete cls_bpf filter: %w", err)
		}
	}
	return nil
}

// Attached tells whether the node's program p is attached to the device
// with index ifindex in the network namespace at nsPath ("" for the
// process's), at its hook (tc ingress for from-container, egress for
// to-container) and in the node's attach mode.
func (n *Instance) Attached(nsPath string, ifindex int, p loader.Program) (bool, error) {
	info, err := n.progs[p].Info()
	if err != nil {
		return false, fmt.Errorf("program %s: %w", p, err)
	}
	id, ok := info.ID()
	if !ok {
		return false, fmt.Errorf("program %s: the kernel does not tell program IDs", p)
	}
	found := false
	err = routing.Do(nsPath, func() error {
		if n.Features.TCX.Enabled {
			attach := ebpf.AttachTCXEgress
			if ingress(p) {
				attach = ebpf.AttachTCXIngress
			}
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
			if err != nil {
				return err
			}
			for _, ap := range res.Programs {
				found = found || ap.ID == id
			}
			return nil
		}
		dev, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		filters, err := netlinksafe.FilterList(nil, dev, clsactFilter(ifindex, p).Parent)
		if err != nil {
			return err
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			found = found || (ok && bf.Id == int(id))
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("query %s on ifindex %d: %w", p, ifindex, err)
	}
	return found, nil
}

// HasAttachment tells whether the device with index ifindex in the
// network namespace at nsPath ("" for the process's) still carries the
// attachment of p that this node instance made on it, in either attach
// mode and of any load (also one whose renewal is not committed): the tcx
// link pinned for it, bound to a device with that index, or the node's
// cls_bpf filter. The kernel ties both to the one device they were made
// on: a tcx link is unbound, and a filter deleted, when it goes. So a
// device made later in its place, with the same index, name and MAC, as a
// CNI that gives every host-side veth ee:ee:ee:ee:ee:ee makes it, carries
// none. Unlike Attached, it does not ask which load's program runs.
func (n *Instance) HasAttachment(nsPath string, ifindex int, p loader.Program) (bool, error) {
	found := false
	err := routing.Do(nsPath, func() error {
		pin, err := n.linkPin(ifindex, p)
		if err != nil {
			return err
		}
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			info, err := l.Info()
			l.Close()
			if err != nil {
				return fmt.Errorf("pinned tcx link: %w", err)
			}
			if info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
				found = true
				return nil
			}
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("open pinned link: %w", err)
		}
		dev, err := netlink.LinkByIndex(ifindex)
		if errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil
		}
		if err != nil {
			return err
		}
		attrs := clsactFilter(ifindex, p)
		filters, err := netlinksafe.FilterList(nil, dev, attrs.Parent)
		if err != nil {
			return err
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			found = found || (ok && bf.Handle == attrs.Handle && bf.Priority == attrs.Priority && bf.Name == n.filterName(p))
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("attachment of %s on ifindex %d: %w", p, ifindex, err)
	}
	return found, nil
}

// noteOwnQdisc records that the node made the clsact qdisc of ifindex, if
// it is one of the node's devices (a pod's goes with its veth).
func (n *Instance) noteOwnQdisc(ifindex int) error {
	return n.updateInfo(func(info *bpf.HostroutingNodeInfo) error {
		for i, d := range info.Devices {
			if int(d) == ifindex {
				info.OwnQdiscs |= 1 << i
			}
		}
		return nil
	})
}

// releaseOwnQdisc deletes the clsact qdisc of the node device ifindex if
// the node made it and no filter is left on it; called inside the
// device's netns.
func (n *Instance) releaseOwnQdisc(ifindex int) error {
	return n.updateInfo(func(info *bpf.HostroutingNodeInfo) error {
		for i, d := range info.Devices {
			if int(d) != ifindex || info.OwnQdiscs&(1<<i) == 0 {
				continue
			}
			dev, err := netlink.LinkByIndex(ifindex)
			if err != nil {
				info.OwnQdiscs &^= 1 << i // gone with its device
				continue
			}
			for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
				if filters, err := netlinksafe.FilterList(nil, dev, parent); err != nil || len(filters) > 0 {
					return err // still in use: keep it
				}
			}
			if err := netlink.QdiscDel(clsactQdisc(ifindex)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("delete clsact qdisc: %w", err)
			}
			info.OwnQdiscs &^= 1 << i
		}
		return nil
	})
}

func objectName(p loader.Program) string {
	switch p {
	case loader.FromContainer:
		return bpf.HostroutingProgFromContainer
	case loader.ToContainer:
		return bpf.HostroutingProgToContainer
	case loader.FromNetdev:
		return bpf.HostroutingProgFromNetdev
	case loader.ToNetdev:
		return bpf.HostroutingProgToNetdev
	}
	return fmt.Sprintf("program(%d)", int(p))
}

func ingress(p loader.Program) bool {
	return p == loader.FromContainer || p == loader.FromNetdev
}
