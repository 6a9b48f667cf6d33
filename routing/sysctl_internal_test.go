package routing

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSysctlErrors checks that a failed write names the setting and wraps
// the kernel's error, and that a missing key, a device without IPv6, is no
// error for guardHostVeth.
func TestSysctlErrors(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	t.Parallel()
	b := make([]byte, 4)
	rand.Read(b)
	name := "hr-" + hex.EncodeToString(b) + "-sysctl"
	path, err := CreateNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := DeleteNetns(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	err = Do(path, sysctl{"net/ipv6/conf/lo/accept_ra", "x"}.set)
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "set net.ipv6.conf.lo.accept_ra=x: ") {
		t.Errorf("writing an invalid value: %v, want EINVAL naming net.ipv6.conf.lo.accept_ra=x", err)
	}
	err = Do(path, sysctl{"net/ipv6/conf/nodev/accept_ra", "0"}.set)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "net.ipv6.conf.nodev.accept_ra") {
		t.Errorf("writing a missing key: %v, want ErrNotExist naming it", err)
	}
	if err := guardHostVeth(path, "nodev"); err != nil {
		t.Errorf("guardHostVeth of a device without IPv6 settings: %v", err)
	}
}
