// Package loader is what the datapath's loading decides by: the running
// kernel's features and the fallbacks they force (ProbeFeatures), the
// defaults and limits of a node's tables, and the errors a node's
// loading, adoption and pins report. The loading itself (one object per
// node, pinned under one bpffs directory per node instance, adopted by a
// restarted process, attached to devices in any network namespace) is
// internal: datapath.New and datapath.Open do it.
package loader

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// DefaultPinPath is the pin directory of a node instance unless
// Options.PinPath names another.
const DefaultPinPath = "/sys/fs/bpf/hostrouting"

// DefaultBPFFS is where the bpf filesystem is mounted when it is missing
// and the pin path lies below it.
const DefaultBPFFS = "/sys/fs/bpf"

// DefaultMaxEndpoints is the endpoint limit unless Options.MaxEndpoints
// names another.
const DefaultMaxEndpoints = 1024

// MaxEndpointsLimit is the largest endpoint limit: endpoint IDs are 16-bit.
const MaxEndpointsLimit = 65535

// Default table sizes of Options.
const (
	DefaultMaxFlows    = 65536
	DefaultMaxServices = 16384
	// ServiceBackendSlots is the average number of backends per service
	// that the service tables are sized for (see Options.MaxServices).
	ServiceBackendSlots = 8
	// MaxServicesLimit is the largest Options.MaxServices.
	MaxServicesLimit = 1 << 24
)

// DefaultNATPorts is the port range of translated sources unless
// Options.NATPorts names another: the node's own flows in it are tracked
// and never given to a translated one.
var DefaultNATPorts = [2]uint16{32768, 65535}

var (
	// ErrNoNode is returned by Open for a pin directory that holds no
	// node; a pin path that does not exist gives an error wrapping
	// os.ErrNotExist.
	ErrNoNode = errors.New("no hostrouting node")
	// ErrOtherNetns is returned by Load for a pin path whose node belongs
	// to another network namespace.
	ErrOtherNetns = errors.New("node of another network namespace")
)

// FlowEntryBytes is what one unit of Options.MaxFlows takes across the
// flow tables, as measured on Linux 6.18: established TCP conntrack and
// SNAT (112 + 104 B), the other protocols' and the new flows' (half as
// many each: 4 × ~54 B), socket reverse NAT and session affinity (2 × 88 B).
const FlowEntryBytes = 112 + 104 + 56 + 56 + 52 + 52 + 88 + 88

// Bounds of FlowsForMemory.
const (
	minFlowsForMemory = 16384
	maxFlowsForMemory = 1 << 24
)

// FlowsForMemory returns the MaxFlows whose tables take ratio of the
// machine's memory, as Cilium's bpf-map-dynamic-size-ratio sizes its
// conntrack and NAT maps (its default, 0.0025, gives 24 GiB of memory
// 103k flows here), between 16384 and 16M. Pass it as Options.MaxFlows
// at a node's first load.
func FlowsForMemory(ratio float64) (uint32, error) {
	if !(ratio > 0 && ratio < 1) {
		return 0, fmt.Errorf("flow table memory ratio %v: want a share between 0 and 1, such as 0.0025", ratio)
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, fmt.Errorf("read the machine's memory: %w", err)
	}
	flows := float64(si.Totalram) * float64(si.Unit) * ratio / FlowEntryBytes
	return uint32(min(max(flows, minFlowsForMemory), maxFlowsForMemory)), nil
}
