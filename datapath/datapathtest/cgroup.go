package datapathtest

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// NewCgroup makes a cgroup v2 directory of the test's own below the
// machine's cgroup2 mount, for socket-LB attachments (never the machine's
// root cgroup) and the processes to be load-balanced; t.Cleanup removes
// it, once the processes started into it have exited.
func NewCgroup(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	root := cgroup2Mount(t)
	dir := filepath.Join(root, "hrtest-"+randomHex(6))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("make cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// cgroup2Mount finds where the cgroup2 filesystem is mounted.
func cgroup2Mount(t testing.TB) string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 2 && fields[2] == "cgroup2" {
			return fields[1]
		}
	}
	t.Fatal("no cgroup2 filesystem mounted")
	return ""
}
