package tables

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// Stats is the per-endpoint counter map, indexed by endpoint ID.
type Stats struct {
	m *ebpf.Map
}

// NewStats wraps the loaded counter map (instance.Maps.EndpointStats).
func NewStats(m *ebpf.Map) *Stats {
	return &Stats{m: m}
}

// Reset zeroes the counters of endpoint id, for a new endpoint and for
// one that leaves (IDs are reused).
func (s *Stats) Reset(id uint16) error {
	zero := make([]bpf.HostroutingEndpointStats, ebpf.MustPossibleCPU())
	if err := s.m.Update(uint32(id), zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters of endpoint %d: %w", id, mapErr(err, s.m))
	}
	return nil
}

// Get returns the counters of endpoint id.
func (s *Stats) Get(id uint16) (maps.EndpointStats, error) {
	var per []bpf.HostroutingEndpointStats
	if err := s.m.Lookup(uint32(id), &per); err != nil {
		return maps.EndpointStats{}, fmt.Errorf("counters of endpoint %d: %w", id, mapErr(err, s.m))
	}
	var sum maps.EndpointStats
	for _, c := range per {
		sum.FromPackets += c.FromPackets
		sum.FromBytes += c.FromBytes
		sum.ToPackets += c.ToPackets
		sum.ToBytes += c.ToBytes
		sum.DropPackets += c.DropPackets
		sum.DropBytes += c.DropBytes
	}
	return sum, nil
}
