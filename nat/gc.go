package nat

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/internal/tables"
	"github.com/hostrouting/hostrouting/maps"
)

// Timeouts bound how long the GC lets an entry live after the last packet
// that renewed it, by the class of its flow. They can only shorten what
// the datapath encodes in an entry's expiry (DatapathTimeouts): a bound
// above the datapath's timeout changes nothing. A zero field takes
// DatapathTimeouts' value.
type Timeouts struct {
	TCPEstablished time.Duration // TCP after a reply (CT_TIMEOUT_TCP)
	TCPSYN         time.Duration // TCP before a reply (CT_TIMEOUT_TCP_SYN)
	TCPClosing     time.Duration // TCP after a FIN or RST (CT_TIMEOUT_TCP_CLOSE)
	Other          time.Duration // UDP and the rest (CT_TIMEOUT_ANY)
}

// DatapathTimeouts are the timeouts the datapath gives entries with each
// packet (bpf/lib/conntrack.h's CT_TIMEOUT_*, Cilium's defaults), and the
// default bounds of a GC.
var DatapathTimeouts = Timeouts{
	TCPEstablished: 21600 * time.Second,
	TCPSYN:         60 * time.Second,
	TCPClosing:     10 * time.Second,
	Other:          60 * time.Second,
}

func (t Timeouts) withDefaults() Timeouts {
	d := DatapathTimeouts
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.TCPEstablished, &d.TCPEstablished}, {&t.TCPSYN, &d.TCPSYN},
		{&t.TCPClosing, &d.TCPClosing}, {&t.Other, &d.Other},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}

// class is the timeout class of an entry.
type class int

const (
	tcpEstablished class = iota
	tcpSYN
	tcpClosing
	other
)

func (t Timeouts) of(c class) uint32 {
	var d time.Duration
	switch c {
	case tcpEstablished:
		d = t.TCPEstablished
	case tcpSYN:
		d = t.TCPSYN
	case tcpClosing:
		d = t.TCPClosing
	default:
		d = t.Other
	}
	return uint32(min(d/time.Second, 1<<31))
}

// ctClass is the class a conntrack entry's expiry was computed for, as
// ct_timeout does it.
func ctClass(k *ctKey, v *bpf.HostroutingCtEntry) class {
	return flowClass(k, v.St.Flags)
}

// flowClass is the class of an entry of proto k.Proto with flags, as
// ct_timeout computes its expiry.
func flowClass(k *ctKey, f uint16) class {
	flags := maps.CTFlags(f)
	switch {
	case maps.Protocol(k.Proto) != maps.TCP:
		return other
	case flags&maps.CTClosing != 0:
		return tcpClosing
	case flags&maps.CTSeenReply == 0:
		return tcpSYN
	}
	return tcpEstablished
}

// snatClass is the class of a source NAT entry: its expiry is computed as
// a conntrack entry's with the same flags.
func snatClass(k *ctKey, v *bpf.HostroutingNat4Entry) class {
	return flowClass(k, v.St.Flags)
}

// deadline is the last second an entry of class c that expires at expires
// may live under bounds: the datapath's expiry, or earlier where the bound
// is shorter than the datapath's timeout (the entry's last packet was at
// expires minus that timeout).
func (t Timeouts) deadline(expires uint32, c class) uint32 {
	dp, bound := DatapathTimeouts.of(c), t.of(c)
	if bound >= dp {
		return expires
	}
	if cut := dp - bound; expires > cut {
		return expires - cut
	}
	return 0
}

// Options configure a GC.
type Options struct {
	// Timeouts bound entries' lifetimes; zero fields take
	// DatapathTimeouts'.
	Timeouts Timeouts
	// OnPass, if set, is called after each pass (Collect, Run, Start)
	// with that pass's figures (and its error in LastError), once the
	// GC's totals (Stats) count it.
	OnPass func(pass Stats)
}

// TableStats count a GC's work on one table.
type TableStats struct {
	Scanned uint64 // entries read
	Removed uint64 // entries removed as expired
	Capped  uint64 // of Removed, those removed by a Timeouts bound before the datapath's expiry
	Flushed uint64 // entries removed by FlushEndpoint and FlushBackend
}

func (s *TableStats) add(o TableStats) {
	s.Scanned += o.Scanned
	s.Removed += o.Removed
	s.Capped += o.Capped
	s.Flushed += o.Flushed
}

// Stats count a GC's passes: of one pass as Collect returns them, or
// totals since the GC was made (GC.Stats).
type Stats struct {
	Runs            uint64     // passes
	Conntrack, SNAT TableStats // per table
	LastRun         time.Time  // when the last pass started
	LastDuration    time.Duration
	LastError       error  // the last pass's error, nil if it succeeded
	Errors          uint64 // passes that failed
}

// GC removes expired entries from a node's conntrack and source NAT
// tables: the datapath renews entries with each packet and never removes
// them; without a GC the tables of established flows fill up (and refuse
// more) and those of new flows make room only by evicting. Its methods may
// be called from several goroutines; passes and flushes take turns.
type GC struct {
	ct       *tables.Conntrack
	snat     *tables.SNAT
	timeouts Timeouts
	onPass   func(Stats)

	pass  sync.Mutex // one pass or flush at a time
	mu    sync.Mutex // guards stats
	stats Stats
}

// NewGC returns a GC of the tables ct and snat (either may be nil: the GC
// leaves that table alone). Their handles are internal: embedders get a
// node's GC from datapath.Datapath.GC.
func NewGC(ct *tables.Conntrack, snat *tables.SNAT, opts Options) *GC {
	return &GC{ct: ct, snat: snat, timeouts: opts.Timeouts.withDefaults(), onPass: opts.OnPass}
}

// Timeouts returns the bounds the GC applies.
func (g *GC) Timeouts() Timeouts { return g.timeouts }

// Stats returns the GC's totals since it was made, and the last pass's
// time, duration and error.
func (g *GC) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stats
}

func (g *GC) record(pass Stats, flush bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stats.Conntrack.add(pass.Conntrack)
	g.stats.SNAT.add(pass.SNAT)
	if flush {
		return
	}
	g.stats.Runs++
	g.stats.LastRun, g.stats.LastDuration, g.stats.LastError = pass.LastRun, pass.LastDuration, pass.LastError
	if pass.LastError != nil {
		g.stats.Errors++
	}
}

// Collect makes one pass over the tables and removes the entries that
// are expired, or past a Timeouts bound, at its start. Entries are read a
// batch at a time, and each that looks like garbage is read again just
// before it is removed: one a packet renewed after the batch was read
// (a reused tuple, a reply) stays. A translated flow's two source NAT
// entries go together, once both are garbage (one direction's packets
// renew only their own entry). It returns the pass's figures (Runs 1), which
// the GC's totals also count.
func (g *GC) Collect() (Stats, error) {
	g.pass.Lock()
	defer g.pass.Unlock()
	pass := Stats{Runs: 1, LastRun: time.Now()}
	now := maps.MonotonicSeconds()
	var errs []error
	if g.ct != nil {
		s, err := g.collectCT(now)
		pass.Conntrack = s
		errs = append(errs, err)
	}
	if g.snat != nil {
		s, err := g.collectSNAT(now)
		pass.SNAT = s
		errs = append(errs, err)
	}
	pass.LastDuration = time.Since(pass.LastRun)
	pass.LastError = errors.Join(errs...)
	if pass.LastError != nil {
		pass.Errors = 1
	}
	g.record(pass, false)
	if g.onPass != nil {
		g.onPass(pass)
	}
	return pass, pass.LastError
}

// ctKey is a conntrack or source NAT key as the map holds it.
type ctKey = bpf.HostroutingCt4Key

// ctGarbage tells whether conntrack entry k, v is past its deadline at
// now, and whether only a bound made it so.
func (g *GC) ctGarbage(k *ctKey, v *bpf.HostroutingCtEntry, now uint32) (garbage, capped bool) {
	d := g.timeouts.deadline(v.St.Expires, ctClass(k, v))
	return now > d, now > d && now <= v.St.Expires
}

func (g *GC) collectCT(now uint32) (TableStats, error) {
	var (
		s    TableStats
		errs []error
	)
	for _, m := range g.ct.Tables() {
		err := tables.ListBatch(m, func(keys []ctKey, vals []bpf.HostroutingCtEntry) error {
			s.Scanned += uint64(len(keys))
			for i := range keys {
				if garbage, _ := g.ctGarbage(&keys[i], &vals[i], now); !garbage {
					continue
				}
				// Again, as it is now, just before it goes: a packet may
				// have renewed it (a reused tuple, a new flow).
				var v bpf.HostroutingCtEntry
				if m.Lookup(&keys[i], &v) != nil {
					continue
				}
				garbage, capped := g.ctGarbage(&keys[i], &v, now)
				if !garbage {
					continue
				}
				switch err := m.Delete(&keys[i]); {
				case err == nil:
					s.Removed++
					if capped {
						s.Capped++
					}
				case !errors.Is(err, ebpf.ErrKeyNotExist):
					return fmt.Errorf("delete conntrack entry: %w", err)
				}
			}
			return nil
		})
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

// snatReverse returns the key of the entry that pairs with source NAT
// entry k, v (see maps.SNATEntry.Reverse); false for a host entry.
func snatReverse(k *ctKey, v *bpf.HostroutingNat4Entry) (ctKey, bool) {
	if v.St.Flags&natFlagHost != 0 {
		return ctKey{}, false
	}
	if maps.Protocol(k.Proto) == maps.ICMP { // the identifier is both ports
		switch maps.NATDir(k.Dir) {
		case maps.NATOut:
			return ctKey{Saddr: k.Daddr, Daddr: v.ToAddr, Sport: v.ToPort, Dport: v.ToPort, Proto: k.Proto, Dir: uint8(maps.NATIn)}, true
		case maps.NATIn:
			return ctKey{Saddr: v.ToAddr, Daddr: k.Saddr, Sport: v.ToPort, Dport: v.ToPort, Proto: k.Proto, Dir: uint8(maps.NATOut)}, true
		}
		return ctKey{}, false
	}
	switch maps.NATDir(k.Dir) {
	case maps.NATOut:
		return ctKey{Saddr: k.Daddr, Daddr: v.ToAddr, Sport: k.Dport, Dport: v.ToPort, Proto: k.Proto, Dir: uint8(maps.NATIn)}, true
	case maps.NATIn:
		return ctKey{Saddr: v.ToAddr, Daddr: k.Saddr, Sport: v.ToPort, Dport: k.Sport, Proto: k.Proto, Dir: uint8(maps.NATOut)}, true
	}
	return ctKey{}, false
}

// natFlagHost is NAT_F_HOST (maps.SNATEntry.Host).
const natFlagHost = 1 << 2

// snatMember is one entry of a flow's source NAT entries, and its table.
type snatMember struct {
	k ctKey
	v bpf.HostroutingNat4Entry
	m *ebpf.Map
}

// snatGarbage tells whether a flow's source NAT entries (one, or a pair)
// are all past their deadlines at now, and whether only a bound made it
// so. An empty group is not garbage.
func (g *GC) snatGarbage(group []snatMember, now uint32) (garbage, capped bool) {
	if len(group) == 0 {
		return false, false
	}
	var deadline, expires uint32
	for i := range group {
		m := &group[i]
		deadline = max(deadline, g.timeouts.deadline(m.v.St.Expires, snatClass(&m.k, &m.v)))
		expires = max(expires, m.v.St.Expires)
	}
	return now > deadline, now > deadline && now <= expires
}

// snatChunk is how many source NAT entries a pass removes at once, after
// reading them again.
const snatChunk = 256

func (g *GC) collectSNAT(now uint32) (TableStats, error) {
	var (
		s    TableStats
		all  []snatMember
		errs []error
	)
	for _, m := range g.snat.Tables() {
		err := tables.ListBatch(m, func(keys []ctKey, vals []bpf.HostroutingNat4Entry) error {
			all = slices.Grow(all, len(keys))
			for i := range keys {
				all = append(all, snatMember{keys[i], vals[i], m})
			}
			return nil
		})
		if err != nil {
			return s, err
		}
	}
	s.Scanned = uint64(len(all))
	index := make(map[ctKey]int, len(all))
	for i := range all {
		index[all[i].k] = i
	}
	var (
		del    = map[*ebpf.Map][]ctKey{}
		queued int
		capped int
		done   = make([]bool, len(all))
		group  = make([]snatMember, 0, 2)
		fresh  = make([]snatMember, 0, 2)
	)
	flush := func() {
		n := 0
		for m, keys := range del {
			removed, err := tables.DeleteBatch(m, keys)
			n += removed
			errs = append(errs, err)
			del[m] = keys[:0]
		}
		s.Removed += uint64(n)
		s.Capped += uint64(min(capped, n))
		queued, capped = 0, 0
	}
	for i := range all {
		if done[i] {
			continue
		}
		done[i] = true
		group = append(group[:0], all[i])
		if rk, ok := snatReverse(&all[i].k, &all[i].v); ok {
			if j, ok := index[rk]; ok && !done[j] {
				if back, ok := snatReverse(&all[j].k, &all[j].v); ok && back == all[i].k {
					group = append(group, all[j])
					done[j] = true
				}
			}
		}
		if garbage, _ := g.snatGarbage(group, now); !garbage {
			continue
		}
		// Again, as they are now: a packet may have renewed one.
		fresh = fresh[:0]
		for _, e := range group {
			if err := e.m.Lookup(&e.k, &e.v); err == nil {
				fresh = append(fresh, e)
			}
		}
		if garbage, c := g.snatGarbage(fresh, now); garbage {
			for _, e := range fresh {
				del[e.m] = append(del[e.m], e.k)
				queued++
				if c {
					capped++
				}
			}
			if queued >= snatChunk {
				flush()
			}
		}
	}
	if queued > 0 {
		flush()
	}
	return s, errors.Join(errs...)
}

// FlushEndpoint removes every conntrack and source NAT entry that involves
// ip: as a tuple's source or destination, or as what a source NAT entry
// translates to. Call it when a pod goes, since its address will be
// another pod's. It returns how many entries it removed.
func (g *GC) FlushEndpoint(ip netip.Addr) (int, error) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return 0, fmt.Errorf("flush endpoint %s: want an IPv4 address", ip)
	}
	b := ip.As4()
	a := binary.NativeEndian.Uint32(b[:])
	return g.flush(
		func(k *ctKey, _ *bpf.HostroutingCtEntry) bool { return k.Saddr == a || k.Daddr == a },
		func(k *ctKey, v *bpf.HostroutingNat4Entry) bool { return k.Saddr == a || k.Daddr == a || v.ToAddr == a })
}

// FlushBackend removes the conntrack entries of flows to service backend
// id (maps.Backend.ID): its service flows and their replies. Call it when
// a backend goes, since its ID will be another backend's; established
// flows to it then take a new backend, or fail. It returns how many
// entries it removed.
func (g *GC) FlushBackend(id uint32) (int, error) {
	return g.flush(func(k *ctKey, v *bpf.HostroutingCtEntry) bool {
		return maps.CTDir(k.Dir) != maps.CTInbound && v.BackendId == id
	}, nil)
}

func (g *GC) flush(ctMatch func(*ctKey, *bpf.HostroutingCtEntry) bool, snatMatch func(*ctKey, *bpf.HostroutingNat4Entry) bool) (int, error) {
	g.pass.Lock()
	defer g.pass.Unlock()
	var (
		pass Stats
		errs []error
	)
	if g.ct != nil && ctMatch != nil {
		for _, m := range g.ct.Tables() {
			n, err := flushMap(m, ctMatch)
			pass.Conntrack.Flushed += uint64(n)
			errs = append(errs, err)
		}
	}
	if g.snat != nil && snatMatch != nil {
		for _, m := range g.snat.Tables() {
			n, err := flushMap(m, snatMatch)
			pass.SNAT.Flushed += uint64(n)
			errs = append(errs, err)
		}
	}
	g.record(pass, true)
	return int(pass.Conntrack.Flushed + pass.SNAT.Flushed), errors.Join(errs...)
}

// flushMap removes the entries of m that match, a batch at a time.
func flushMap[V any](m *ebpf.Map, match func(*ctKey, *V) bool) (int, error) {
	var (
		del     []ctKey
		removed int
	)
	err := tables.ListBatch(m, func(keys []ctKey, vals []V) error {
		del = del[:0]
		for i := range keys {
			if match(&keys[i], &vals[i]) {
				del = append(del, keys[i])
			}
		}
		if len(del) == 0 {
			return nil
		}
		n, err := tables.DeleteBatch(m, del)
		removed += n
		return err
	})
	return removed, err
}

// Run makes a pass every interval, the first at once, until ctx is done.
// A pass's error is recorded (Stats.LastError, Options.OnPass) and the
// next pass runs as planned.
func (g *GC) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for ctx.Err() == nil {
		g.Collect()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// DefaultInterval is the interval of Run and Start unless they are given
// another.
const DefaultInterval = 30 * time.Second

// Start runs Run in a goroutine. stop ends it and returns once the pass
// under way, if any, is over.
func (g *GC) Start(interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Run(ctx, interval)
	}()
	return func() {
		cancel()
		<-done
	}
}
