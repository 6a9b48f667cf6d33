package maps

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/bpf"
)

// EndpointStats are one endpoint's counters, summed over CPUs. "From" is
// what the pod sent, "To" what was delivered into it, "Drop" what the
// datapath dropped of either.
type EndpointStats struct {
	FromPackets, FromBytes uint64
	ToPackets, ToBytes     uint64
	DropPackets, DropBytes uint64
}

// Stats is the per-endpoint counter map, keyed by host-side ifindex.
type Stats struct {
	m *ebpf.Map
}

// NewStats wraps the loaded counter map (loader.Maps.EndpointStats).
func NewStats(m *ebpf.Map) *Stats {
	return &Stats{m: m}
}

// Reset starts zeroed counters for the endpoint behind ifindex; the
// datapath only counts for endpoints that have an entry.
func (s *Stats) Reset(ifindex int) error {
	zero := make([]bpf.HostroutingEndpointStats, ebpf.MustPossibleCPU())
	if err := s.m.Update(uint32(ifindex), zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters of ifindex %d: %w", ifindex, mapErr(err))
	}
	return nil
}

// Get returns the counters of the endpoint behind ifindex.
func (s *Stats) Get(ifindex int) (EndpointStats, error) {
	var per []bpf.HostroutingEndpointStats
	if err := s.m.Lookup(uint32(ifindex), &per); err != nil {
		return EndpointStats{}, fmt.Errorf("counters of ifindex %d: %w", ifindex, mapErr(err))
	}
	var sum EndpointStats
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

// Delete removes the counters of the endpoint behind ifindex; a missing
// entry is not an error.
func (s *Stats) Delete(ifindex int) error {
	if err := s.m.Delete(uint32(ifindex)); err != nil && mapErr(err) != ErrNotFound {
		return fmt.Errorf("delete counters of ifindex %d: %w", ifindex, err)
	}
	return nil
}
