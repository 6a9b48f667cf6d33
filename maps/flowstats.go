package maps

import (
	"fmt"
)

// FlowClass is a class of flow tables (enum ct_class in
// bpf/lib/conntrack.h): conntrack or source NAT, TCP or the rest.
type FlowClass uint32

// Flow table classes.
const (
	FlowConntrackTCP FlowClass = iota // hr_ct4_tcp, and its new flows in hr_ct4_new
	FlowConntrackAny                  // hr_ct4_any, and its new flows in hr_ct4_new
	FlowSNATTCP                       // hr_snat4_tcp, and its new flows in hr_snat4_new
	FlowSNATAny                       // hr_snat4_any, and its new flows in hr_snat4_new
	// FlowClassCount is the number of classes.
	FlowClassCount
)

var flowClassNames = [FlowClassCount]string{"conntrack-tcp", "conntrack-any", "snat-tcp", "snat-any"}

// String names c: "conntrack-tcp".
func (c FlowClass) String() string {
	if c < FlowClassCount {
		return flowClassNames[c]
	}
	return fmt.Sprintf("class(%d)", uint32(c))
}

// FlowStats count what happened to a class's flows since the node was
// made (enum ct_stat).
type FlowStats struct {
	// Created counts new flows, whose entries start in the table of new
	// flows (an LRU hash: a flood of new flows evicts only other new
	// flows).
	Created uint64
	// Promoted counts flows that became established: their entries
	// moved to the class's established table, which never evicts.
	Promoted uint64
	// Refused counts flows that became established while that table was
	// full: they stay with the new flows (and may be evicted).
	Refused uint64
	// Failed counts new flows whose entries could not be made (no free
	// NAT port, or no room): their packets were dropped.
	Failed uint64
}
