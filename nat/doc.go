// Package nat is the Go side of the datapath's address translation: the
// garbage collection of its conntrack and source NAT tables (GC), and the
// Maglev lookup tables that spread a service's flows over its backends
// the same way on every node (Maglev, Table).
//
// # The tables
//
// The datapath translates service flows and masqueraded flows itself,
// with no nf_conntrack, and remembers them in two LRU hashes of
// loader.Options.MaxFlows entries (default 65536), both keyed by a flow's tuple as its packets carry it (network
// order) and a direction. maps.Conntrack and maps.SNAT read and write
// them, and their entries print as lines of Cilium's
// `cilium bpf ct list global` and `cilium bpf nat list`.
//
// hr_ct4 (bpf/lib/conntrack.h, lb.h), the conntrack of service flows:
//
//	SVC     client:port → frontend:port   the backend the flow took (BackendID), the service (RevNAT)
//	REPLY   backend:port → client:port    the backend's replies, whose source becomes the frontend again
//	INBOUND pod:port → outside:port       the reply tuple of a flow from outside into a pod: not masqueraded
//
// The first packet of a flow to a frontend (tc load balancer) picks a
// backend and makes its SVC and REPLY entries; its packets and replies
// renew both. Sockets that socket-level load balancing translates at
// connect time leave no conntrack entry (hr_sock4_revnat, by socket
// cookie, is another map, outside this package).
//
// hr_snat4 (bpf/lib/nat.h), source NAT: BPF masquerade of pods' flows
// leaving the native routing CIDR (TCP, UDP, and ICMP echoes by
// identifier), and of NodePort flows sent on to a backend on another
// node. A translated flow has two entries, made together:
//
//	OUT  pod:port → remote:port          XLATE_SRC node:natport
//	IN   remote:port → node:natport      XLATE_DST pod:port
//
// (an ICMP echo's identifier stands for both ports: pod:id → remote:id,
// and remote:natid → node:natid)
// and the node's own flows (source the node's address) have an IN entry
// flagged HOST, so that no translated flow takes the port they use toward
// that remote; replies to HOST entries are the stack's. A NodePort flow
// to a remote backend has both: SVC and REPLY entries for its
// translation to the backend, then OUT and IN for its source.
//
// # Expiry and garbage collection
//
// Each entry holds expires, a second of CLOCK_MONOTONIC (bpf_ktime_get_ns,
// maps.MonotonicSeconds), set with each packet to now plus the timeout of
// the flow's protocol and TCP state (conntrack.h's CT_TIMEOUT_*, Cilium's
// defaults, DatapathTimeouts): TCP 60 s until a reply, 6 h established,
// 10 s after a FIN or RST; UDP and ICMP 60 s. Source NAT entries are
// renewed as established (or closing, for a packet with FIN or RST), and
// each direction's packets renew only their own entry.
//
// The datapath never removes an entry and does not look at expires when
// it finds one: an expired entry translates like a live one until it is
// removed. What removes them is GC, run from Go (GC.Start, GC.Run, or
// GC.Collect for one pass), and, when a table is full, the LRU evicting
// its least recently used entries, live or not. A GC pass removes entries
// whose expires is past, or that are past a bound of Timeouts (which can
// shorten the datapath's timeouts, never lengthen them); it reads the
// tables in batches (BPF_MAP_LOOKUP_BATCH, a few thousand entries per
// syscall) and removes in batches (BPF_MAP_DELETE_BATCH), and it keeps a
// translated flow's OUT and IN entries together, removing both once both
// are garbage: a flow whose replies alone still come keeps its port.
// GC.FlushEndpoint removes every entry of a pod that goes (its address
// will be another pod's), GC.FlushBackend the flows of a backend that
// goes (its ID will be another backend's).
//
// # SNAT port policy
//
// A new translated flow gets a port of the node's NAT range,
// loader.Options.NATPorts (datapath.Config.NATPorts; default
// loader.DefaultNATPorts, 32768-65535): its own source port if that is in
// the range and free, else a random one of the range (bpf_get_prandom_u32),
// up to NAT_RETRIES = 32 tries in all. A port is claimed by making the
// flow's IN entry with BPF_NOEXIST, atomic against other CPUs; since the
// IN key holds the remote address and port, a port is taken per remote
// endpoint and protocol (as Linux's NAT does), not node-wide: the range
// gives each remote address:port 32768 flows by default. If all tries
// collide, the packet is dropped and counted as "NAT no port"
// (maps.MetricDropNATNoPort); with a fraction p of the range taken toward
// that remote, that happens with probability about p^32 (3% at p = 0.9,
// 0.08% at 0.8). An ICMP echo's identifier is translated the same way,
// from the same range. A flow keeps its port while its OUT entry lives; the
// node's own flows keep theirs through their HOST entries, whatever the
// range. Ports come free when the GC removes a flow's entries (or the LRU
// evicts them).
//
// # Maglev
//
// Table and Maglev compute Cilium's Maglev lookup tables: M slots (a
// prime, DefaultTableSize 16381), each holding one backend, every backend
// ⌊M/N⌋ or ⌈M/N⌉ of them, the same table for the same backend names on
// every node, and few slots moved when a backend comes or goes (its own,
// and under 2% of the others' for M > 100·N). A flow's backend is the
// slot of its hash. Computing the table of 100 backends with M = 16381
// takes about 0.3 ms.
package nat
