package tables

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/maps"
)

// ReadGCStatus reads hr_gc (instance.Maps.GCStatus).
func ReadGCStatus(m *ebpf.Map) (maps.GCStatus, error) {
	var v bpf.HostroutingGcStatus
	if err := m.Lookup(uint32(0), &v); err != nil {
		return maps.GCStatus{}, fmt.Errorf("read GC status: %w", err)
	}
	s := maps.GCStatus{LastDuration: time.Duration(v.LastDuration), Runs: v.Runs, Errors: v.Errors,
		CTRemoved: v.CtRemoved, SNATRemoved: v.SnatRemoved}
	if v.LastRun != 0 {
		s.LastRun = time.Unix(0, int64(v.LastRun))
	}
	var msg []byte
	for _, c := range v.LastError {
		if c == 0 {
			break
		}
		msg = append(msg, byte(c))
	}
	s.LastError = string(msg)
	return s, nil
}

// WriteGCStatus writes s to hr_gc.
func WriteGCStatus(m *ebpf.Map, s maps.GCStatus) error {
	v := bpf.HostroutingGcStatus{LastDuration: uint64(s.LastDuration), Runs: s.Runs, Errors: s.Errors,
		CtRemoved: s.CTRemoved, SnatRemoved: s.SNATRemoved}
	if !s.LastRun.IsZero() {
		v.LastRun = uint64(s.LastRun.UnixNano())
	}
	for i := 0; i < len(s.LastError) && i < len(v.LastError)-1; i++ {
		v.LastError[i] = int8(s.LastError[i])
	}
	if err := m.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write GC status: %w", err)
	}
	return nil
}
