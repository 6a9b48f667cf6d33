package loader

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Cgroup2Root returns where this process sees the cgroup2 filesystem
// mounted, from /proc/self/mountinfo: /sys/fs/cgroup on most machines,
// /sys/fs/cgroup/unified on a hybrid hierarchy. Socket LB for every
// process of the node goes there (Cilium attaches to it); tests attach
// below it only, to a cgroup of their own.
func Cgroup2Root() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup2 mount: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		mount, fs, ok := strings.Cut(line, " - ")
		m, f := strings.Fields(mount), strings.Fields(fs)
		if ok && len(m) >= 5 && len(f) >= 1 && f[0] == "cgroup2" {
			return m[4], nil
		}
	}
	return "", errors.New("find the cgroup2 mount: no cgroup2 filesystem mounted")
}
