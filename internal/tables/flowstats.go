package tables

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/maps"
)

// ReadFlowStats sums the per-CPU flow statistics map m
// (instance.Maps.FlowStats) by class.
func ReadFlowStats(m *ebpf.Map) ([maps.FlowClassCount]maps.FlowStats, error) {
	var out [maps.FlowClassCount]maps.FlowStats
	const stats = 4 // CT_STAT_MAX
	for c := range maps.FlowClassCount {
		fields := []*uint64{&out[c].Created, &out[c].Promoted, &out[c].Refused, &out[c].Failed}
		for i, f := range fields {
			var per []uint64
			if err := m.Lookup(uint32(c)*stats+uint32(i), &per); err != nil {
				return out, fmt.Errorf("flow statistics %s: %w", c, mapErr(err, m))
			}
			for _, v := range per {
				*f += v
			}
		}
	}
	return out, nil
}
