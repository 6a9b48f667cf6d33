package datapathtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hostrouting/hostrouting/loader"
)

// NewCgroup makes a cgroup v2 directory of the test's own below the
// machine's cgroup2 mount (loader.Cgroup2Root), for socket-LB attachments
// (never the machine's root cgroup) and the processes to be
// load-balanced; t.Cleanup removes it, once the processes started into it
// have exited.
func NewCgroup(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	root, err := loader.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, prefixed(t, "DirPrefix", DirPrefix, 6))
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
