package datapath_test

import (
	"slices"
	"testing"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/instance"
)

// TestMonitorLevelOrder: the levels are ordered by how much they report,
// keep their names, and reach the programs as enum monitor_level numbers.
func TestMonitorLevelOrder(t *testing.T) {
	levels := []datapath.MonitorLevel{datapath.MonitorOff, datapath.MonitorDrops, datapath.MonitorConnections, datapath.MonitorAll}
	var names []string
	for i, l := range levels {
		if i > 0 && levels[i-1] >= l {
			t.Errorf("%s (%d) is not below %s (%d)", levels[i-1], levels[i-1], l, l)
		}
		names = append(names, l.String())
	}
	if want := []string{"off", "drop", "connection", "all"}; !slices.Equal(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}

	node := datapathtest.NewNode(t, "node")
	dp := node.NewDatapath(t, datapath.Config{})
	node2, err := instance.Open(pinPathOf(t, dp))
	if err != nil {
		t.Fatal(err)
	}
	defer node2.Close()
	// enum monitor_level in bpf/lib/common.h.
	wire := map[datapath.MonitorLevel]uint32{datapath.MonitorOff: 0, datapath.MonitorDrops: 1, datapath.MonitorAll: 2, datapath.MonitorConnections: 3}
	for _, l := range append(levels, datapath.MonitorOff) {
		if err := dp.SetMonitor(l, 64); err != nil {
			t.Fatal(err)
		}
		var cfg bpf.HostroutingMonitorConfig
		if err := node2.Maps.Monitor.Lookup(uint32(0), &cfg); err != nil {
			t.Fatal(err)
		}
		got, capture, err := dp.MonitorSettings()
		st, stErr := dp.Status()
		if err != nil || stErr != nil || got != l || capture != 64 || st.Monitor != l || cfg.Level != wire[l] {
			t.Errorf("SetMonitor(%s): settings %s %d (%v), status %s (%v), hr_monitor level %d, want %d",
				l, got, capture, err, st.Monitor, stErr, cfg.Level, wire[l])
		}
	}
	if err := dp.SetMonitor(datapath.MonitorAll+1, 0); err == nil {
		t.Error("SetMonitor took a level above MonitorAll")
	}
}
