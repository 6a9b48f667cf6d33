package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hostrouting/hostrouting/loader"
	"golang.org/x/sys/unix"
)

// preparePinDir checks that dir lies on a bpf filesystem, making bpffs
// reachable first if dir is below DefaultBPFFS and nothing is mounted there,
// and creates dir. It returns the path this process reaches dir by, and
// whether dir did not exist before.
func preparePinDir(dir string) (path string, created bool, err error) {
	if !filepath.IsAbs(dir) {
		return "", false, fmt.Errorf("pin path %q: must be absolute", dir)
	}
	dir = filepath.Clean(dir)
	if dir, err = reach(dir, true); err != nil {
		return "", false, err
	}
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		existing = filepath.Dir(existing)
	}
	if ok, err := onBPFFS(existing); err != nil {
		return "", false, fmt.Errorf("pin path %q: %w", dir, err)
	} else if !ok && existing == dir {
		return "", false, fmt.Errorf("pin path %q: %w", dir, loader.ErrNotBPFFS)
	} else if !ok {
		return "", false, fmt.Errorf("pin path %q: its parent %s is %w", dir, existing, loader.ErrNotBPFFS)
	}
	if existing == dir {
		return dir, false, checkPinDir(dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("create pin path: %w", err)
	}
	return dir, true, nil
}

// reach returns the path by which this process reaches pinPath. Below
// DefaultBPFFS, where nothing is mounted in this process's view, that is:
//   - under `ip netns exec` and the like, which run commands in a private
//     mount namespace with a fresh /sys, the machine's bpffs as an ancestor
//     process sees it, through /proc/PID/root (a new mount would be a new,
//     empty instance whose pins die with the command);
//   - on a machine without bpffs, a new mount at DefaultBPFFS if mayMount,
//     else pinPath as it is.
func reach(pinPath string, mayMount bool) (string, error) {
	if !strings.HasPrefix(pinPath+"/", loader.DefaultBPFFS+"/") {
		return pinPath, nil
	}
	if ok, err := onBPFFS(loader.DefaultBPFFS); err == nil && ok {
		return pinPath, nil
	}
	root, private := ancestorRoot()
	if root != "" {
		return root + pinPath, nil
	}
	if !mayMount {
		return pinPath, nil
	}
	if private {
		return "", fmt.Errorf("pin path %q: no bpffs at %s for this private mount namespace to share (mount it on the machine first): %w", pinPath, loader.DefaultBPFFS, loader.ErrNotBPFFS)
	}
	if err := os.MkdirAll(loader.DefaultBPFFS, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", loader.DefaultBPFFS, err)
	}
	// Processes starting at once (a runtime's parallel CNI ADDs) would
	// stack one instance each: mount under a lock, if still missing.
	lock, err := lockDir(loader.DefaultBPFFS)
	if err != nil {
		return "", err
	}
	defer lock.Unlock()
	if ok, err := onBPFFS(loader.DefaultBPFFS); err == nil && ok {
		return pinPath, nil
	}
	if err := unix.Mount("bpf", loader.DefaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
		return "", fmt.Errorf("mount bpffs at %s: %w", loader.DefaultBPFFS, err)
	}
	return pinPath, nil
}

// ancestorRoot returns "/proc/PID/root" of the nearest ancestor process in
// another mount namespace that has bpffs at DefaultBPFFS; private tells
// whether this process's mount namespace differs from an ancestor's.
func ancestorRoot() (root string, private bool) {
	return ancestorRootWith(func(root string) bool {
		ok, err := onBPFFS(root + loader.DefaultBPFFS)
		return err == nil && ok
	})
}

// ancestorRootWith returns "/proc/PID/root" of the nearest ancestor
// process in another mount namespace whose root has, says has; private
// tells whether this process's mount namespace differs from an ancestor's.
func ancestorRootWith(has func(root string) bool) (root string, private bool) {
	self, _ := os.Readlink("/proc/self/ns/mnt")
	for pid := os.Getppid(); pid > 0; pid = parentOf(pid) {
		proc := fmt.Sprintf("/proc/%d", pid)
		if ns, err := os.Readlink(proc + "/ns/mnt"); err != nil || ns == self {
			continue
		}
		private = true
		if has(proc + "/root") {
			return proc + "/root", true
		}
	}
	return "", private
}

// parentOf returns the parent of process pid, or 0.
func parentOf(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(stat), ')')
	fields := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

func onBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// Lock is an exclusive lock on a pin directory, held across processes.
type Lock struct {
	f *os.File
}

// LockPinPath takes the exclusive lock of the node instance at pinPath (as
// this process reaches it: Instance.PinPath) and blocks until it is free.
// Processes that change the same node — a CNI plugin's concurrent ADDs
// and DELs, an agent restarting — serialise on it. A pin path that is gone
// (the node was removed) gives an error wrapping ErrNoNode, and is not
// made again.
func LockPinPath(pinPath string) (*Lock, error) {
	lock, err := lockDir(pinPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node at %s: %w: %w", pinPath, loader.ErrNoNode, err)
	}
	return lock, err
}

func lockDir(dir string) (*Lock, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin path for locking: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock pin path %s: %w", dir, err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() error {
	return l.f.Close()
}

// eventsDir is the directory below a pin path whose lock a reader of the
// node's events holds.
const eventsDir = "events"

// ClaimEvents makes this process the reader of the node's events
// (Maps.Events) until Unlock: a perf event array has one ring per CPU, so
// a second reader would silently take them from the first. A claim held
// by another reader, in any process, gives ErrMonitorBusy.
func (n *Instance) ClaimEvents() (*Lock, error) {
	dir := filepath.Join(n.PinPath, eventsDir)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("claim events: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("claim events: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, loader.ErrMonitorBusy
		}
		return nil, fmt.Errorf("claim events: %w", err)
	}
	return &Lock{f: f}, nil
}
