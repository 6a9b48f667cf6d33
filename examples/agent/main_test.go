package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestInstall copies the plugin as the init container does: over an old
// binary, executable, with no temporary file left beside it.
func TestInstall(t *testing.T) {
	src := filepath.Join(t.TempDir(), "hostrouting")
	if err := os.WriteFile(src, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hostrouting"), []byte("old plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := install(src, dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "hostrouting"))
	if err != nil || string(b) != "new" {
		t.Fatalf("installed %q, %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "hostrouting")); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v", fi.Mode())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in %s, want 1", len(entries), dir)
	}
	if err := install(filepath.Join(t.TempDir(), "missing"), dir); err == nil {
		t.Error("installed a missing file")
	}
}
