package loader_test

import (
	"fmt"

	"github.com/hostrouting/hostrouting/loader"
)

// The examples run under go test, as root. Each is a node of its own: a
// network namespace it makes ("hr-ex<PID>-...") and a pin directory
// below /sys/fs/bpf ("hrtest-ex<PID>-..."; Load mounts the bpf filesystem
// there first if nothing is), both removed when it returns, also on
// failure. The machine's own network namespace is never changed.

// What the running kernel offers the datapath, and what it falls back to
// without it; `hrctl status` prints the same.
func ExampleProbeFeatures() {
	f := loader.ProbeFeatures(loader.Disable{})
	for _, x := range []struct {
		name string
		loader.Feature
	}{{"bpf_redirect_peer", f.RedirectPeer}, {"bpf_redirect_neigh", f.RedirectNeigh}, {"bpf_fib_lookup", f.FIBLookup}, {"tcx", f.TCX}} {
		fmt.Printf("%-20s %-5v %s\n", x.name, x.Enabled, x.Reason)
	}
}
