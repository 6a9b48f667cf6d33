package maps

// EndpointStats are one endpoint's counters, summed over CPUs. "From" is
// what the pod sent, "To" what was delivered into it, "Drop" what the
// datapath dropped of either.
type EndpointStats struct {
	FromPackets, FromBytes uint64
	ToPackets, ToBytes     uint64
	DropPackets, DropBytes uint64
}
