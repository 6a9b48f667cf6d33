package routing_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/routing"
)

// TestCreateNetnsLeavesProcessWhereItWas guards against a thread — the
// main thread included — being left in a namespace it made: the process's
// namespace (/proc/self is the main thread's) must not change.
func TestCreateNetnsLeavesProcessWhereItWas(t *testing.T) {
	datapathtest.RequireRoot(t)
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		name := fmt.Sprintf("hr-stay-%d-%d", os.Getpid(), i)
		if _, err := routing.CreateNetns(name); err != nil {
			t.Fatal(err)
		}
		if err := routing.DeleteNetns(name); err != nil {
			t.Fatal(err)
		}
		if now, _ := os.Readlink("/proc/self/ns/net"); now != before {
			t.Fatalf("after %d namespaces the process is in %s, was in %s", i+1, now, before)
		}
	}
}
