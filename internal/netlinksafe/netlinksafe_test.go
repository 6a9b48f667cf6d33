package netlinksafe_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/internal/netlinksafe"
	"github.com/hostrouting/hostrouting/routing"
)

// TestRetryInterrupted: a dump interrupted N times is tried N+1 times and
// returns the last, whole list; one interrupted every time gives up after
// Attempts tries with an error naming what it listed, never a partial
// list; any other error ends it at once.
func TestRetryInterrupted(t *testing.T) {
	for _, n := range []int{1, 5, netlinksafe.Attempts - 1} {
		calls := 0
		got, err := netlinksafe.Retry("things", func() ([]int, error) {
			calls++
			if calls <= n {
				return []int{calls}, fmt.Errorf("dump: %w", netlink.ErrDumpInterrupted)
			}
			return []int{1, 2, 3}, nil
		})
		if err != nil || len(got) != 3 || calls != n+1 {
			t.Errorf("interrupted %d times: %v, %v after %d calls, want [1 2 3] after %d", n, got, err, calls, n+1)
		}
	}

	calls := 0
	got, err := netlinksafe.Retry("things of eth0", func() ([]int, error) {
		calls++
		return []int{1}, netlink.ErrDumpInterrupted
	})
	if !errors.Is(err, netlink.ErrDumpInterrupted) || !strings.Contains(err.Error(), "things of eth0") || got != nil {
		t.Errorf("always interrupted: %v, %v; want no list and an error wrapping ErrDumpInterrupted that names the things", got, err)
	}
	if calls != netlinksafe.Attempts {
		t.Errorf("always interrupted: %d calls, want %d", calls, netlinksafe.Attempts)
	}

	calls = 0
	other := errors.New("no such device")
	if _, err := netlinksafe.Retry("things", func() ([]int, error) {
		calls++
		return nil, other
	}); err != other || calls != 1 {
		t.Errorf("other error: %v after %d calls, want it unchanged after 1", err, calls)
	}
}

// TestLinkListUnderChurn lists the devices of a namespace while another
// goroutine adds and removes veth pairs there as fast as it can: the
// kernel interrupts many of these dumps (NLM_F_DUMP_INTR), and every list
// must still come back without error and with every device that stays.
func TestLinkListUnderChurn(t *testing.T) {
	datapathtest.RequireRoot(t)
	_, path := datapathtest.NewNetns(t, "churn")
	h, err := routing.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const stable = 100 // pairs: enough devices for a dump of several parts
	for i := range stable {
		if err := h.LinkAdd(veth("st", i)); err != nil {
			t.Fatal(err)
		}
	}

	churner, err := routing.Handle(path)
	if err != nil {
		t.Fatal(err)
	}
	defer churner.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	var churnErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			l := veth("ch", i%20)
			if err := churner.LinkAdd(l); err != nil {
				churnErr = err
				return
			}
			if err := churner.LinkDel(l); err != nil {
				churnErr = err
				return
			}
		}
	}()
	defer func() {
		stop.Store(true)
		wg.Wait()
		if churnErr != nil {
			t.Errorf("churn: %v", churnErr)
		}
	}()

	// Count the tries through Retry itself, so as to know that dumps were
	// interrupted and retried, not merely lucky.
	var lists, tries int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && tries-lists < 50; lists++ {
		links, err := netlinksafe.Retry("links", func() ([]netlink.Link, error) {
			tries++
			return h.LinkList()
		})
		if err != nil {
			t.Fatalf("list %d: %v", lists+1, err)
		}
		if n := countPrefix(links, "st") + countPrefix(links, "sp"); n != 2*stable {
			t.Fatalf("list %d holds %d of the %d devices that stay", lists+1, n, 2*stable)
		}
		if _, err := netlinksafe.LinkList(h); err != nil {
			t.Fatalf("LinkList: %v", err)
		}
	}
	t.Logf("%d lists, %d dumps interrupted and tried again", lists, tries-lists)
	if tries == lists {
		t.Errorf("no dump of %d was interrupted: the test proved nothing", lists)
	}
}

func veth(prefix string, i int) *netlink.Veth {
	return &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("%s%d", prefix, i)},
		PeerName:  fmt.Sprintf("%sp%d", prefix[:1], i),
	}
}

func countPrefix(links []netlink.Link, prefix string) int {
	n := 0
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			n++
		}
	}
	return n
}
