package routing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are mounted, as `ip netns` does.
const NetnsDir = "/var/run/netns"

// CreateNetns creates a new network namespace mounted at NetnsDir/name, like
// `ip netns add name`, and returns its path. It fails if the name is taken.
// The calling goroutine's thread returns to its own namespace afterwards.
func CreateNetns(name string) (path string, err error) {
	if err := checkNetnsName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return "", fmt.Errorf("create netns %q: %w", name, err)
	}
	path = filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return "", fmt.Errorf("create netns %q: %w", name, err)
	}
	f.Close()

	if err := makeNetnsAt(path); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create netns %q: %w", name, err)
	}
	return path, nil
}

// makeNetnsAt unshares a new network namespace on a thread of its own (a
// throwaway goroutine's, as Do runs fn), binds it at path and moves the
// thread back: the caller's thread never changes namespace. A thread that
// cannot go back is never unlocked, so the Go runtime retires it with its
// goroutine rather than reuse it elsewhere.
func makeNetnsAt(path string) error {
	errc := make(chan error, 1)
	go func() { errc <- unshareAt(path) }()
	return <-errc
}

func unshareAt(path string) error {
	runtime.LockOSThread()
	origin, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer origin.Close()
	err = unix.Unshare(unix.CLONE_NEWNET)
	if err != nil {
		err = fmt.Errorf("unshare: %w", err)
	} else if err = unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
		err = fmt.Errorf("bind mount: %w", err)
	}
	if serr := netns.Set(origin); serr != nil {
		return errors.Join(err, fmt.Errorf("return to the thread's netns: %w", serr))
	}
	runtime.UnlockOSThread()
	return err
}

// DeleteNetns removes the named network namespace made by CreateNetns (or
// `ip netns add`). The kernel frees it once no process, socket or handle
// refers to it any more. A missing namespace is not an error.
func DeleteNetns(name string) error {
	if err := checkNetnsName(name); err != nil {
		return err
	}
	path := filepath.Join(NetnsDir, name)
	// EINVAL: not a mount point, a half-made namespace; only the file is left.
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("delete netns %q: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete netns %q: %w", name, err)
	}
	return nil
}

func checkNetnsName(name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("invalid netns name %q", name)
	}
	return nil
}

// NetnsID names a network namespace: its nsfs inode and device.
type NetnsID struct {
	Ino, Dev uint64
}

// String formats id as the kernel names namespaces: "net:[4026532290]".
func (id NetnsID) String() string {
	return fmt.Sprintf("net:[%d]", id.Ino)
}

// ErrNotNetns is returned for a path that is not a network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// Netns identifies the network namespace at path, which must be a
// namespace file (nsfs), as /var/run/netns/NAME and /proc/PID/ns/net are;
// "" is this process's, the one it started in, as for [Do] and [Handle].
func Netns(path string) (NetnsID, error) {
	var fs unix.Statfs_t
	var st unix.Stat_t
	if path == "" {
		if homeErr != nil {
			return NetnsID{}, fmt.Errorf("the process's network namespace: %w", homeErr)
		}
		if err := unix.Fstatfs(int(home), &fs); err != nil {
			return NetnsID{}, fmt.Errorf("the process's network namespace: %w", err)
		}
		if err := unix.Fstat(int(home), &st); err != nil {
			return NetnsID{}, fmt.Errorf("the process's network namespace: %w", err)
		}
	} else {
		if err := unix.Statfs(path, &fs); err != nil {
			return NetnsID{}, fmt.Errorf("network namespace %q: %w", path, err)
		}
		if err := unix.Stat(path, &st); err != nil {
			return NetnsID{}, fmt.Errorf("network namespace %q: %w", path, err)
		}
	}
	if fs.Type != unix.NSFS_MAGIC {
		return NetnsID{}, fmt.Errorf("%w: %q is no namespace file (nsfs), as /var/run/netns/NAME and /proc/PID/ns/net are", ErrNotNetns, path)
	}
	return NetnsID{Ino: st.Ino, Dev: st.Dev}, nil
}
