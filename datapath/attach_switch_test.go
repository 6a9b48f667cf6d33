package datapath_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hostrouting/hostrouting/datapath"
	"github.com/hostrouting/hostrouting/datapath/datapathtest"
	"github.com/hostrouting/hostrouting/loader"
)

// TestReloadSwitchKeepsConnections keeps 60 TCP connections busy through a
// ClusterIP service of the tc load balancer (DNAT on the client's
// from-container, reverse NAT on the backends') while other processes'
// New reload the node tcx → clsact and back, 5 times each way, renewing
// every attachment. A moment without from-container on a backend's device
// would hand its replies to the stack untranslated, and the client would
// reset the connection: none may break.
func TestReloadSwitchKeepsConnections(t *testing.T) {
	node := datapathtest.NewNode(t, "node")
	client := node.AddPod(t, "client", ipA)
	dp := node.NewDatapath(t, datapath.Config{})
	client.AddEndpoint(t, dp)
	var backends []datapath.Backend
	for i, ip := range []netip.Addr{ipB, ipC} {
		b := node.AddPod(t, fmt.Sprintf("b%d", i), ip)
		b.AddEndpoint(t, dp)
		backends = append(backends, datapath.Backend{Addr: netip.AddrPortFrom(ip, b.ServeTCPEcho(t))})
	}
	vip := netip.MustParseAddrPort("10.96.0.30:80")
	if _, err := dp.UpsertService(datapath.Service{Frontend: vip, Protocol: datapath.TCP, Backends: backends}); err != nil {
		t.Fatal(err)
	}

	const conns = 60
	var (
		wg        sync.WaitGroup
		stop      = make(chan struct{})
		mu        sync.Mutex
		broken    []error
		exchanges int
	)
	for i := range conns {
		var c net.Conn
		err := client.Do(func() (err error) {
			c, err = net.DialTimeout("tcp4", vip.String(), 5*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("connection %d to %s: %v", i, vip, err)
		}
		t.Cleanup(func() { c.Close() })
		wg.Go(func() {
			n, err := echoUntil(c, stop)
			mu.Lock()
			defer mu.Unlock()
			exchanges += n
			if err != nil {
				broken = append(broken, fmt.Errorf("connection %d (%s) after %d exchanges: %w", i, c.LocalAddr(), n, err))
			}
		})
	}

	pin := pinPathOf(t, dp)
	for i := range 10 {
		cfg := datapath.Config{PinPath: pin, Netns: node.Netns, Disable: loader.Disable{TCX: i%2 == 0}}
		other, err := datapath.New(cfg)
		if err != nil {
			t.Fatalf("switch %d: %v", i, err)
		}
		if st, err := other.Status(); err != nil || (st.AttachMode == "tcx") == cfg.Disable.TCX {
			t.Errorf("switch %d: attach mode %q, %v", i, st.AttachMode, err)
		}
		other.Close()
		time.Sleep(50 * time.Millisecond) // traffic in the new mode
	}
	close(stop)
	wg.Wait()
	for _, err := range broken {
		t.Error(err)
	}
	if len(broken) > 0 {
		t.Fatalf("%d of %d connections through %s broke while the node switched tcx ↔ clsact", len(broken), conns, vip)
	}
	t.Logf("%d connections, %d echo exchanges over 10 switches: none broke", conns, exchanges)
}

// echoUntil exchanges 8-byte messages with an echo server over c, one at a
// time, until stop is closed, then once more. It returns the exchanges
// done and the first error.
func echoUntil(c net.Conn, stop <-chan struct{}) (int, error) {
	var msg, back [8]byte
	last := false
	for n := 0; ; n++ {
		binary.BigEndian.PutUint64(msg[:], uint64(n))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(msg[:]); err != nil {
			return n, err
		}
		if _, err := io.ReadFull(c, back[:]); err != nil {
			return n, err
		}
		if back != msg {
			return n, fmt.Errorf("echo %x, sent %x", back, msg)
		}
		if last {
			return n + 1, nil
		}
		select {
		case <-stop:
			last = true
		case <-time.After(2 * time.Millisecond):
		}
	}
}
