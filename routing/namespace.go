package routing

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are mounted, as `ip netns` does.
const NetnsDir = "/var/run/netns"

// CreateNetns creates a new network namespace mounted at NetnsDir/name, like
// `ip netns add name`, and returns its path. It fails if the name is taken.
// The calling thread is never moved: the namespace is made on a throwaway
// thread that exits afterwards.
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

	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, so no other
		// goroutine ever runs in the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create netns %q: %w", name, err)
	}
	return path, nil
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
