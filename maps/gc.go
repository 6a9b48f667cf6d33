package maps

import (
	"time"
)

// GCStatus is the health of a node's conntrack garbage collector as its
// last pass left it in hr_gc, for any process to report.
type GCStatus struct {
	LastRun      time.Time // when the last pass started; zero if none ran
	LastDuration time.Duration
	Runs         uint64 // passes since the collector started
	Errors       uint64 // of them, those that failed
	CTRemoved    uint64 // expired conntrack entries removed
	SNATRemoved  uint64 // expired source NAT entries removed
	LastError    string // the last pass's error (cut to 95 bytes), empty if it succeeded
}
