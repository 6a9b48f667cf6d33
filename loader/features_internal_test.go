package loader

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// TestFeatureReasons keeps what a probe says, the kernel version a
// missing helper needs included.
func TestFeatureReasons(t *testing.T) {
	missing := fmt.Errorf("bpf_redirect_peer not supported (requires >= v5.10): %w", ebpf.ErrNotSupported)
	for _, c := range []struct {
		disabled bool
		probe    error
		enabled  bool
		reason   string
	}{
		{false, nil, true, "kernel supports it"},
		{true, nil, false, "disabled by config"},
		{false, missing, false, "kernel lacks it: bpf_redirect_peer not supported (requires >= v5.10)"},
		{false, errors.New("permission denied"), false, "probe failed: permission denied"},
	} {
		f := decide(c.disabled, c.probe)
		if f.Enabled != c.enabled || !strings.HasPrefix(f.Reason, c.reason) {
			t.Errorf("decide(%v, %v) = %+v, want enabled %v, reason %q", c.disabled, c.probe, f, c.enabled, c.reason)
		}
	}
}
