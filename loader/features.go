package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Disable forces fallbacks a kernel would not need: for kernels with a
// known bug in a helper, and for tests of the fallback paths.
type Disable struct {
	RedirectPeer  bool // deliver to local pods with bpf_redirect to the host device
	RedirectNeigh bool // resolve next hops with bpf_fib_lookup and bpf_redirect only
	FIBLookup     bool // leave forwarding off the node to the kernel's stack
	TCX           bool // attach with clsact qdiscs and cls_bpf filters
}

// Feature says whether the datapath uses one kernel feature, and why.
type Feature struct {
	Enabled bool
	Reason  string
}

// Features are the kernel features the datapath was loaded with.
type Features struct {
	RedirectPeer  Feature // bpf_redirect_peer
	RedirectNeigh Feature // bpf_redirect_neigh
	FIBLookup     Feature // bpf_fib_lookup
	TCX           Feature // tcx links (else clsact + cls_bpf)
	CheckMTU      Feature // bpf_check_mtu (else unresolved next hops go by the stack)
}

// ProbeFeatures asks the running kernel which features it has and applies
// the forced fallbacks of d. Probes are cached for the process.
func ProbeFeatures(d Disable) Features {
	return Features{
		RedirectPeer:  decide(d.RedirectPeer, probeHelper(asm.FnRedirectPeer)),
		RedirectNeigh: decide(d.RedirectNeigh, probeHelper(asm.FnRedirectNeigh)),
		FIBLookup:     decide(d.FIBLookup, probeHelper(asm.FnFibLookup)),
		TCX:           decide(d.TCX, probeTCX()),
		CheckMTU:      decide(false, probeHelper(asm.FnCheckMtu)),
	}
}

func decide(disabled bool, probeErr error) Feature {
	switch {
	case disabled:
		return Feature{Reason: "disabled by config"}
	case errors.Is(probeErr, ebpf.ErrNotSupported):
		// The probe's words carry the kernel version that has it:
		// "... not supported (requires >= v5.10)".
		return Feature{Reason: "kernel lacks it: " + probeErr.Error()}
	case probeErr != nil:
		return Feature{Reason: fmt.Sprintf("probe failed: %v", probeErr)}
	default:
		return Feature{Enabled: true, Reason: "kernel supports it"}
	}
}

func probeHelper(fn asm.BuiltinFunc) error {
	return features.HaveProgramHelper(ebpf.SchedCLS, fn)
}
