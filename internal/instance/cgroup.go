package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/routing"
	"golang.org/x/sys/unix"
)

// socketHooks are the socket-LB programs and the cgroup hooks they take.
var socketHooks = []struct {
	name   string
	attach ebpf.AttachType
}{
	{bpf.HostroutingProgSock4Connect, ebpf.AttachCGroupInet4Connect},
	{bpf.HostroutingProgSock4Sendmsg, ebpf.AttachCGroupUDP4Sendmsg},
	{bpf.HostroutingProgSock4Recvmsg, ebpf.AttachCGroupUDP4Recvmsg},
	{bpf.HostroutingProgSock4Getpeername, ebpf.AttachCgroupInet4GetPeername},
	{bpf.HostroutingProgSock4PostBind, ebpf.AttachCGroupInet4PostBind},
}

func (n *Instance) cgroupLinkPin(name string) string {
	return filepath.Join(n.PinPath, "links", "cgroup_"+name)
}

// AttachCgroup puts the socket load balancer on the cgroup v2 directory
// at path: sockets of every process in it, or in a cgroup below it, that
// connect or send to a service frontend get a backend at connect time.
// The links are pinned; attaching again moves them to path, and a reload
// renews them (RenewCgroup). Tests attach to a cgroup of their own, never
// the machine's root.
func (n *Instance) AttachCgroup(path string) error {
	reached, err := reachCgroup(path)
	if err != nil {
		return err
	}
	if err := n.DetachCgroup(); err != nil {
		return err
	}
	for _, h := range socketHooks {
		prog := n.sockProgs[h.name]
		l, err := link.AttachCgroup(link.CgroupOptions{Path: reached, Attach: h.attach, Program: prog})
		if err != nil {
			n.DetachCgroup()
			return fmt.Errorf("attach socket LB %s to cgroup %s: %w", h.name, path, err)
		}
		os.MkdirAll(filepath.Join(n.PinPath, "links"), 0o700)
		err = l.Pin(n.cgroupLinkPin(h.name))
		l.Close()
		if err != nil {
			n.DetachCgroup()
			return fmt.Errorf("pin socket LB link %s: %w", h.name, err)
		}
	}
	return nil
}

// CheckCgroup checks that path is a cgroup v2 directory that
// AttachCgroup can reach, with an error naming it if not.
func CheckCgroup(path string) error {
	_, err := reachCgroup(path)
	return err
}

// reachCgroup returns the path by which this process reaches the cgroup
// v2 directory path: path itself, or, under `ip netns exec` and the like
// (a private mount namespace with a fresh /sys, where the machine's
// cgroup mounts are gone), path as an ancestor process sees it, through
// /proc/PID/root.
func reachCgroup(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("socket LB cgroup %q: must be an absolute path", path)
	}
	isCgroup2 := func(p string) (bool, error) {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			return false, err
		}
		return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
	}
	ok, err := isCgroup2(path)
	if errors.Is(err, unix.ENOENT) {
		if root, _ := ancestorRootWith(func(root string) bool { ok, err := isCgroup2(root + path); return err == nil && ok }); root != "" {
			return root + path, nil
		}
	}
	switch {
	case err != nil:
		return "", fmt.Errorf("socket LB cgroup %s: %w", path, err)
	case !ok:
		return "", fmt.Errorf("socket LB cgroup %s: not a cgroup v2 directory", path)
	}
	return path, nil
}

// RenewCgroup puts this load's socket-LB programs on the pinned cgroup
// links, if there are any.
func (n *Instance) RenewCgroup() error {
	for _, h := range socketHooks {
		l, err := link.LoadPinnedLink(n.cgroupLinkPin(h.name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open socket LB link %s: %w", h.name, err)
		}
		err = l.Update(n.sockProgs[h.name])
		l.Close()
		if err != nil {
			return fmt.Errorf("renew socket LB link %s: %w", h.name, err)
		}
	}
	return nil
}

// DetachCgroup takes the socket load balancer off its cgroup. Without
// one attached, it does nothing.
func (n *Instance) DetachCgroup() error {
	var errs []error
	for _, h := range socketHooks {
		errs = append(errs, unpinLink(n.cgroupLinkPin(h.name)))
	}
	return errors.Join(errs...)
}

// netnsCookie is the cookie of the network namespace at path ("" for
// this process's), as bpf_get_netns_cookie tells it.
func netnsCookie(path string) (uint64, error) {
	var cookie uint64
	err := routing.Do(path, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie of %q: %w", path, err)
	}
	return cookie, nil
}

// CgroupAttached tells whether the socket load balancer is on a cgroup.
func (n *Instance) CgroupAttached() bool {
	_, err := os.Stat(n.cgroupLinkPin(socketHooks[0].name))
	return err == nil
}
