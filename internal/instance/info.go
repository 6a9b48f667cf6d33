package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/loader"
)

// A node's first load commits with its last step, the first write of
// hr_info (object_id is never 0 afterwards), and it pins hr_info, zeroed,
// before anything else (startLoad). So a pin directory whose hr_info reads
// object_id 0 holds what a first load left that never committed: one in
// progress in another process, or one killed half-way (a CNI ADD on a
// fresh node killed by its runtime's timeout). Nothing can run its
// programs (Load returns an Instance, and so lets anyone attach, only
// after the commit) and nothing but the load wrote its maps: it can go
// as a whole. Open sees no node there,
// and Load, which holds the directory's lock and so knows the loader that
// left it is gone, removes it and starts the first load over. A pin
// directory that lacks hr_info but holds other maps is not told apart
// from a committed node whose pins were removed by hand (ErrPartialPins).

func (n *Instance) readInfo() (bpf.HostroutingNodeInfo, error) {
	var info bpf.HostroutingNodeInfo
	if err := n.info.Lookup(uint32(0), &info); err != nil {
		return info, fmt.Errorf("read node info: %w", err)
	}
	return info, nil
}

func (n *Instance) writeInfo(info *bpf.HostroutingNodeInfo) error {
	if err := n.info.Put(uint32(0), info); err != nil {
		return fmt.Errorf("write node info: %w", err)
	}
	return nil
}

// updateInfo reads the node info, lets change edit it and writes it back.
func (n *Instance) updateInfo(change func(*bpf.HostroutingNodeInfo) error) error {
	info, err := n.readInfo()
	if err != nil {
		return err
	}
	if err := change(&info); err != nil {
		return err
	}
	return n.writeInfo(&info)
}

// uncommitted tells whether the pin directory at path holds a first load
// that never committed: hr_info pinned, its object ID 0. An hr_info that
// does not read (missing, of another version) leaves the verdict to the
// steps that open the node.
func uncommitted(path string) bool {
	info, err := readPinnedInfo(path)
	return err == nil && info.ObjectId == 0
}

// startLoad prepares the pin directory at path for a load of spec, under
// the directory's lock: it removes a first load that never committed, and
// pins a zeroed hr_info, which marks what follows as uncommitted until the
// load writes it, if there is none.
func startLoad(path string, spec *ebpf.CollectionSpec) error {
	if uncommitted(path) {
		if err := unpinNode(path); err != nil {
			return fmt.Errorf("remove a first load that did not finish: %w", err)
		}
	}
	if _, err := os.Lstat(filepath.Join(path, bpf.HostroutingMapHrInfo)); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	info, err := ebpf.NewMapWithOptions(spec.Maps[bpf.HostroutingMapHrInfo], ebpf.MapOptions{PinPath: path})
	if err != nil {
		return fmt.Errorf("pin node info: %w", err)
	}
	return info.Close()
}

// discardUncommitted removes what a failed first load pinned at path.
func discardUncommitted(path string) error {
	if !uncommitted(path) {
		return nil
	}
	return unpinNode(path)
}

// Current tells whether the pinned node is still the one this handle
// opened: an error wrapping ErrStale if another process reloaded it, one
// wrapping ErrNoNode if the node was removed.
func (n *Instance) Current() error {
	info, err := readPinnedInfo(n.PinPath)
	if err != nil {
		return err
	}
	if info.ObjectId != n.id {
		return fmt.Errorf("%w: it runs object %016x, this handle %016x", loader.ErrStale, info.ObjectId, n.id)
	}
	return nil
}

// readPinnedInfo reads the node info pinned at path, afresh.
func readPinnedInfo(path string) (bpf.HostroutingNodeInfo, error) {
	n := &Instance{}
	var err error
	if n.info, err = loadPinnedMap(filepath.Join(path, bpf.HostroutingMapHrInfo)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return bpf.HostroutingNodeInfo{}, fmt.Errorf("node at %s: %w", path, loader.ErrNoNode)
		}
		return bpf.HostroutingNodeInfo{}, err
	}
	defer n.info.Close()
	return n.readInfo()
}

// Renewing tells whether some attachments may still run programs of an
// earlier load: a reload replaced the pinned programs, and whoever made it
// (this process, or one that died half-way) has not committed the renewal
// yet. Renew every attachment (Attach again), then call CommitRenewal.
func (n *Instance) Renewing() (bool, error) {
	info, err := n.readInfo()
	if err != nil {
		return false, err
	}
	return info.RenewedId != info.ObjectId, nil
}

// CommitRenewal records that every attachment runs this load's programs,
// and unpins the tail-call stages of earlier loads: programs of an earlier
// load still attached somewhere would lose their stages and drop what they
// see (counted as drop-tail-call).
func (n *Instance) CommitRenewal() error {
	if err := n.updateInfo(func(info *bpf.HostroutingNodeInfo) error {
		if info.ObjectId != n.id {
			return fmt.Errorf("commit renewal: %w", loader.ErrStale)
		}
		info.RenewedId = info.ObjectId
		return nil
	}); err != nil {
		return err
	}
	current := n.callsPin(n.id)
	stale, err := filepath.Glob(filepath.Join(n.PinPath, "progs", "hr_calls_*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, pin := range stale {
		if pin != current {
			if err := os.Remove(pin); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("unpin stale stages: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// SetDevices records the ifindexes of the node's devices (those with
// from-netdev and to-netdev), for adopters and status. A device that
// stays keeps its record of the qdisc the loader made on it.
func (n *Instance) SetDevices(ifindexes []int) error {
	return n.updateInfo(func(info *bpf.HostroutingNodeInfo) error {
		if len(ifindexes) > len(info.Devices) {
			return fmt.Errorf("%d devices: at most %d", len(ifindexes), len(info.Devices))
		}
		old, own := info.Devices, info.OwnQdiscs
		info.Devices, info.OwnQdiscs = [len(info.Devices)]uint32{}, 0
		for i, ifindex := range ifindexes {
			info.Devices[i] = uint32(ifindex)
			for j, o := range old {
				if o == uint32(ifindex) && own&(1<<j) != 0 {
					info.OwnQdiscs |= 1 << i
				}
			}
		}
		return nil
	})
}

// Devices returns the ifindexes recorded by SetDevices.
func (n *Instance) Devices() ([]int, error) {
	info, err := n.readInfo()
	if err != nil {
		return nil, err
	}
	var devs []int
	for _, d := range info.Devices {
		if d == 0 {
			break
		}
		devs = append(devs, int(d))
	}
	return devs, nil
}
