package nat_test

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/hostrouting/hostrouting/internal/bpf"
	"github.com/hostrouting/hostrouting/loader"
	"github.com/hostrouting/hostrouting/maps"
	"github.com/hostrouting/hostrouting/nat"
)

// tableSize is the entries the benchmarks write to each table: as many
// as hr_ct4_tcp and hr_snat4_tcp hold on a default node (loader.DefaultMaxFlows).
const tableSize = loader.DefaultMaxFlows

func be32(a, b, c, d byte) uint32 { return binary.NativeEndian.Uint32([]byte{a, b, c, d}) }

func be16(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }

// fill writes tableSize conntrack entries (UDP service flows) and as many
// source NAT entries (tableSize/2 flows' pairs), all expiring at expires.
func fill(b *testing.B, ct, snat *ebpf.Map, expires uint32) {
	b.Helper()
	keys := make([]bpf.HostroutingCt4Key, tableSize)
	cts := make([]bpf.HostroutingCtEntry, tableSize)
	nats := make([]bpf.HostroutingNat4Entry, tableSize)
	for i := range keys {
		keys[i] = bpf.HostroutingCt4Key{Saddr: be32(10, 1, byte(i>>8), byte(i)), Daddr: be32(10, 96, 0, 10),
			Sport: be16(uint16(10000 + i%50000)), Dport: be16(53), Proto: 17, Dir: 1}
		cts[i] = bpf.HostroutingCtEntry{BackendId: 1, RevNatIndex: 1}
		cts[i].St.Expires = expires
	}
	if _, err := ct.BatchUpdate(keys, cts, nil); err != nil {
		b.Fatal(err)
	}
	for i := range tableSize / 2 {
		pod, remote, node := be32(10, 1, byte(i>>8), byte(i)), be32(1, 1, 1, 1), be32(172, 18, 0, 2)
		port := be16(uint16(32768 + i))
		keys[2*i] = bpf.HostroutingCt4Key{Saddr: pod, Daddr: remote, Sport: be16(5000), Dport: be16(53), Proto: 17, Dir: 1}
		nats[2*i] = bpf.HostroutingNat4Entry{ToAddr: node, ToPort: port}
		nats[2*i].St.Expires = expires
		keys[2*i+1] = bpf.HostroutingCt4Key{Saddr: remote, Daddr: node, Sport: be16(53), Dport: port, Proto: 17, Dir: 2}
		nats[2*i+1] = bpf.HostroutingNat4Entry{ToAddr: pod, ToPort: be16(5000)}
		nats[2*i+1].St.Expires = expires
	}
	if _, err := snat.BatchUpdate(keys, nats, nil); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCollect measures a pass over full tables (64k entries each):
// "expired" removes them all, "live" only reads them. entries/s counts
// both tables' entries.
func BenchmarkCollect(b *testing.B) {
	ct, snat := loadTables(b)
	gc := nat.NewGC(ct, snat, nat.Options{})
	b.Run("expired", func(b *testing.B) {
		var entries uint64
		for b.Loop() {
			b.StopTimer()
			fill(b, ct.Tables()[0], snat.Tables()[0], maps.MonotonicSeconds()-10)
			b.StartTimer()
			pass, err := gc.Collect()
			if err != nil {
				b.Fatal(err)
			}
			if pass.Conntrack.Removed != pass.Conntrack.Scanned || pass.SNAT.Removed != pass.SNAT.Scanned {
				b.Fatalf("pass left entries: %+v", pass)
			}
			entries += pass.Conntrack.Removed + pass.SNAT.Removed
		}
		b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
		b.ReportMetric(float64(entries)/float64(b.N), "entries/op")
	})
	for _, c := range []struct {
		name string
		gc   *nat.GC
	}{{"expired-conntrack", nat.NewGC(ct, nil, nat.Options{})}, {"expired-snat", nat.NewGC(nil, snat, nat.Options{})}} {
		b.Run(c.name, func(b *testing.B) {
			var entries uint64
			for b.Loop() {
				b.StopTimer()
				fill(b, ct.Tables()[0], snat.Tables()[0], maps.MonotonicSeconds()-10)
				b.StartTimer()
				pass, err := c.gc.Collect()
				if err != nil {
					b.Fatal(err)
				}
				entries += pass.Conntrack.Removed + pass.SNAT.Removed
			}
			b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
			b.ReportMetric(float64(entries)/float64(b.N), "entries/op")
		})
	}
	gc.Collect()
	b.Run("live", func(b *testing.B) {
		fill(b, ct.Tables()[0], snat.Tables()[0], maps.MonotonicSeconds()+3600)
		var entries uint64
		for b.Loop() {
			pass, err := gc.Collect()
			if err != nil {
				b.Fatal(err)
			}
			if pass.Conntrack.Removed+pass.SNAT.Removed != 0 {
				b.Fatalf("pass removed live entries: %+v", pass)
			}
			entries += pass.Conntrack.Scanned + pass.SNAT.Scanned
		}
		b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
		b.ReportMetric(float64(entries)/float64(b.N), "entries/op")
	})
	// For comparison: reading the conntrack table with one syscall per
	// entry (MapIterator) instead of batches.
	b.Run("iterate-conntrack", func(b *testing.B) {
		var (
			k     bpf.HostroutingCt4Key
			v     bpf.HostroutingCtEntry
			count int
		)
		for b.Loop() {
			it := ct.Tables()[0].Iterate()
			for it.Next(&k, &v) {
				count++
			}
			if err := it.Err(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(count)/b.Elapsed().Seconds(), "entries/s")
	})
	b.Run("list-conntrack", func(b *testing.B) {
		count := 0
		for b.Loop() {
			all, err := ct.List()
			if err != nil {
				b.Fatal(err)
			}
			count += len(all)
		}
		b.ReportMetric(float64(count)/b.Elapsed().Seconds(), "entries/s")
	})
}
