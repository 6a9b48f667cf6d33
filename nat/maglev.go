package nat

import (
	"cmp"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/big"
	"slices"
)

// Maglev table sizes and seed, as Cilium's.
const (
	// DefaultTableSize is the Maglev table size M unless another is
	// given (Cilium's bpf-lb-maglev-table-size): a prime, over 100 times
	// a service's backends for the table to be within 1% of even.
	DefaultTableSize = 16381
	// DefaultHashSeed is the hash seed unless another is given (Cilium's
	// bpf-lb-maglev-hash-seed): base64 of 12 bytes, the first 4 of which
	// seed the backends' hashes.
	DefaultHashSeed = "JLfvgnHc2kaSUFaI"
)

// TableSizes are the table sizes Cilium offers, primes near powers of two.
var TableSizes = []uint64{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071}

// Maglev computes Maglev lookup tables (Eisenbud et al., "Maglev: A Fast
// and Reliable Software Network Load Balancer", NSDI 2016), as Cilium's
// pkg/maglev does: each backend's name gives it a permutation of the
// table's M slots, (offset + j·skip) mod M, with offset and skip from the
// two halves of the name's MurmurHash3_x64_128; the backends then take
// turns, in the order of their names, each claiming the next slot of its
// permutation that is still free, until the table is full.
//
// Every backend gets ⌊M/N⌋ or ⌈M/N⌉ slots of M; the table depends on the
// set of names only (not their order); and removing one of N backends
// moves its own slots and few others (under 1% of M where M > 100·N), so
// that the flows of the remaining backends keep them: nodes that agree on
// the names, M and the seed agree on the table without talking.
type Maglev struct {
	m    uint64
	seed uint32
}

// NewMaglev returns the tables of size m (0 for DefaultTableSize; a prime
// of at least 3) with the seed seed (base64 of 12 bytes, as Cilium's
// bpf-lb-maglev-hash-seed; "" for DefaultHashSeed).
func NewMaglev(m uint64, seed string) (*Maglev, error) {
	if m == 0 {
		m = DefaultTableSize
	}
	if m < 3 || m > 1<<32 || !new(big.Int).SetUint64(m).ProbablyPrime(0) {
		return nil, fmt.Errorf("maglev table size %d: want a prime from 3 to 2^32, such as %d", m, DefaultTableSize)
	}
	if seed == "" {
		seed = DefaultHashSeed
	}
	d, err := base64.StdEncoding.DecodeString(seed)
	if err != nil || len(d) != 12 {
		return nil, fmt.Errorf("maglev hash seed %q: want base64 of 12 bytes", seed)
	}
	return &Maglev{m: m, seed: binary.BigEndian.Uint32(d)}, nil
}

// Size returns the table size M.
func (g *Maglev) Size() uint64 { return g.m }

var defaultMaglev = func() map[uint64]*Maglev {
	t := map[uint64]*Maglev{}
	for _, m := range TableSizes {
		t[m], _ = NewMaglev(m, "")
	}
	return t
}()

// Table returns the Maglev lookup table of size m (0 for
// DefaultTableSize) for backends, by their names (an address and port,
// "10.0.1.5:8080/TCP", the same on every node), with DefaultHashSeed: the
// index into backends of each slot's backend. It returns nil for no
// backends, and panics if m is not a prime of at least 3 (see NewMaglev
// for another seed, and errors).
func Table(backends []string, m uint64) []int {
	g, ok := defaultMaglev[cmp.Or(m, DefaultTableSize)]
	if !ok {
		var err error
		if g, err = NewMaglev(m, ""); err != nil {
			panic(err)
		}
	}
	return g.Table(backends)
}

// perm walks a backend's permutation of the slots.
type perm struct {
	next, skip uint64
}

// permutations returns the permutations of backends in the order of
// their names (ties, which should not be, in their order), and that
// order: order[t] is the index into backends of the t-th to take turns.
func (g *Maglev) permutations(backends []string) ([]perm, []int) {
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(backends[a], backends[b]) })
	perms := make([]perm, len(backends))
	for t, i := range order {
		h1, h2 := murmur3([]byte(backends[i]), g.seed)
		perms[t] = perm{next: h1 % g.m, skip: h2%(g.m-1) + 1}
	}
	return perms, order
}

// claim gives backend t (in turn order) the next free slot of its
// permutation.
func claim(table []int, p *perm, m uint64, owner int) {
	c := p.next
	for table[c] >= 0 {
		if c += p.skip; c >= m {
			c -= m
		}
	}
	table[c] = owner
	if c += p.skip; c >= m {
		c -= m
	}
	p.next = c
}

// Table returns the lookup table for backends, by name: the index into
// backends of each slot's backend; nil for no backends. Names should be
// distinct (Cilium's are the backends' addresses): equal names share a
// permutation.
func (g *Maglev) Table(backends []string) []int {
	if len(backends) == 0 {
		return nil
	}
	perms, order := g.permutations(backends)
	table := make([]int, g.m)
	for i := range table {
		table[i] = -1
	}
	for filled := uint64(0); filled < g.m; {
		for t := range perms {
			claim(table, &perms[t], g.m, order[t])
			if filled++; filled == g.m {
				break
			}
		}
	}
	return table
}

// WeightedTable is Table with weights: backend i gets about
// M·weights[i]/Σweights slots (a backend of weight 0 none). The backends
// take turns as in weighted fair queueing: the next turn is the backend
// whose next slot would put it least ahead of its share, (k+1)/weight
// for a backend with k slots, ties in name order; with equal weights this
// is Table's round robin, and Table's table. It returns nil for no
// backend of weight above 0.
func (g *Maglev) WeightedTable(backends []string, weights []uint32) ([]int, error) {
	if len(weights) != len(backends) {
		return nil, fmt.Errorf("maglev: %d weights for %d backends", len(weights), len(backends))
	}
	perms, order := g.permutations(backends)
	w := make([]uint64, len(order))
	var turns []int // the turn-order positions of backends that take slots
	for t, i := range order {
		w[t] = uint64(weights[i])
		if w[t] > 0 {
			turns = append(turns, t)
		}
	}
	if len(turns) == 0 {
		return nil, nil
	}
	table := make([]int, g.m)
	for i := range table {
		table[i] = -1
	}
	// A heap of turn positions by (k+1)/w, then position.
	k := make([]uint64, len(order))
	less := func(a, b int) bool {
		x, y := (k[a]+1)*w[b], (k[b]+1)*w[a]
		return x < y || x == y && a < b
	}
	h := turns
	heapify(h, less)
	for filled := uint64(0); filled < g.m; filled++ {
		t := h[0]
		claim(table, &perms[t], g.m, order[t])
		k[t]++
		siftDown(h, 0, less)
	}
	return table, nil
}

func heapify(h []int, less func(a, b int) bool) {
	for i := len(h)/2 - 1; i >= 0; i-- {
		siftDown(h, i, less)
	}
}

func siftDown(h []int, i int, less func(a, b int) bool) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if c+1 < len(h) && less(h[c+1], h[c]) {
			c++
		}
		if !less(h[c], h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
