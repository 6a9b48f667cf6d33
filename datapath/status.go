package datapath

import (
	"fmt"
	"strings"

	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
)

// Host routing modes, as `cilium status` names them.
const (
	HostRoutingBPF    = "BPF"
	HostRoutingLegacy = "Legacy"
)

// Status is what `cilium status` would say of the node's datapath.
type Status struct {
	HostRouting  string          // HostRoutingBPF or HostRoutingLegacy
	LegacyReason string          // why not BPF, when Legacy
	AttachMode   string          // "tcx" or "tc (clsact + cls_bpf)"
	Features     loader.Features // what the programs were loaded with
	Endpoints    int             // endpoints on the node
	PinPath      string          // the node instance's pin directory
	Metrics      []maps.Counter  // node-wide counters, indexed by maps.Metric
}

// Status reports the datapath's mode, features and size.
func (d *Datapath) Status() (Status, error) {
	eps, err := d.endpoints.List()
	if err != nil {
		return Status{}, err
	}
	metrics, err := d.metrics.All()
	if err != nil {
		return Status{}, err
	}
	return StatusOf(d.node, len(eps), metrics), nil
}

// StatusOf builds the status of a loaded or adopted node, for tools that
// open a node without a Datapath (hrctl).
func StatusOf(node *loader.Node, endpoints int, metrics []maps.Counter) Status {
	s := Status{
		Features:   node.Features,
		Endpoints:  endpoints,
		PinPath:    node.PinPath,
		Metrics:    metrics,
		AttachMode: "tc (clsact + cls_bpf)",
	}
	if node.Features.TCX.Enabled {
		s.AttachMode = "tcx"
	}
	s.HostRouting, s.LegacyReason = hostRouting(node.Features)
	return s
}

// hostRouting decides the mode from the features the programs use.
func hostRouting(f loader.Features) (mode, reason string) {
	if !f.RedirectPeer.Enabled {
		return HostRoutingLegacy, "bpf_redirect_peer: " + f.RedirectPeer.Reason
	}
	return HostRoutingBPF, ""
}

// String formats s in the shape of `cilium status`.
func (s Status) String() string {
	var b strings.Builder
	mode := s.HostRouting
	if s.LegacyReason != "" {
		mode += " (" + s.LegacyReason + ")"
	}
	fmt.Fprintf(&b, "Host Routing:     %s\n", mode)
	fmt.Fprintf(&b, "Attach Mode:      %s\n", s.AttachMode)
	fmt.Fprintf(&b, "Kernel Features:  %s\n", featureList(s.Features))
	fmt.Fprintf(&b, "Endpoints:        %d\n", s.Endpoints)
	fmt.Fprintf(&b, "Pin Path:         %s\n", s.PinPath)
	return b.String()
}

func featureList(f loader.Features) string {
	var parts []string
	for _, x := range []struct {
		name string
		f    loader.Feature
	}{{"bpf_redirect_peer", f.RedirectPeer}, {"bpf_redirect_neigh", f.RedirectNeigh}, {"bpf_fib_lookup", f.FIBLookup}, {"tcx", f.TCX}} {
		state := "Enabled"
		if !x.f.Enabled {
			state = "Disabled (" + x.f.Reason + ")"
		}
		parts = append(parts, x.name+": "+state)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
