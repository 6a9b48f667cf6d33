// Package nat is the Go side of the datapath's address translation: the
// garbage collection of its conntrack and source NAT tables (GC), and the
// Maglev lookup tables that spread a service's flows over its backends
// the same way on every node (Maglev, Table).
//
// # The tables
//
// The datapath translates service flows and masqueraded flows itself,
// with no nf_conntrack, and remembers them in its conntrack and source
// NAT tables, keyed by a flow's tuple as its packets carry it (network
// order) and a direction. Datapath.Flows lists them (maps.CTEntry and
// maps.SNATEntry), and their entries print as lines of Cilium's
// `cilium bpf ct list global` and `cilium bpf nat list`.
//
// Every tenant of a node shares them, so that no tenant can break
// another's flows they come in three tables each (sizes from
// datapath.Config.MaxFlows, F):
//
//	hr_ct4_new, hr_snat4_new   LRU hash, F/2   flows not established yet: a flood of new flows
//	                                           (SYNs, one pod's datagrams) evicts only new flows
//	hr_ct4_tcp, hr_snat4_tcp   hash, F         established TCP flows (handshake done): never evicted
//	hr_ct4_any, hr_snat4_any   hash, F/2       established flows of other protocols (a reply seen,
//	                                           then another packet the original way)
//
// A flow's entries move from the new table to an established one together
// when it becomes established; an established table that is full refuses
// more (they stay in the new table, counted in hr_ct_stats: Datapath
// Status' Flows, hostrouting_flows_total) rather than evict. TCP sequence
// numbers are tracked per direction: an RST further than 65536 from the
// one its sender owes changes no state (a forged RST cannot close or
// re-balance a flow), a flow closes after a FIN each way or an RST, and a
// SYN on a closed tuple reopens it with fresh entries both ways.
//
// The conntrack of service flows (bpf/lib/conntrack.h, lb.h):
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
// Source NAT (bpf/lib/nat.h): BPF masquerade of pods' flows
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
// that remote; replies to HOST entries are the stack's. A flow of the
// node's own whose tuple a translated flow holds already (a pod that kept
// its port toward the same remote) is translated itself, to another
// port, so that each gets its own replies. An OUT entry whose IN half is
// gone or another flow's gets a new mapping. A NodePort flow
// to a remote backend has both: SVC and REPLY entries for its
// translation to the backend, then OUT and IN for its source.
//
// # Expiry and garbage collection
//
// Each entry holds expires, a second of CLOCK_MONOTONIC (bpf_ktime_get_ns,
// maps.MonotonicSeconds), set with each packet to now plus the timeout of
// the flow's protocol and TCP state (conntrack.h's CT_TIMEOUT_*, Cilium's
// defaults, DatapathTimeouts): TCP 60 s until a reply, 6 h established,
// 10 s once closed (a FIN each way, or an RST in the window); UDP and
// ICMP 60 s. Source NAT entries follow the same rules, and each
// direction's packets renew only their own entry.
//
// The datapath removes an entry only when it moves it to an established
// table; a service flow's expired entry is a new flow for the next
// packet. What removes them is GC, run from Go (GC.Start, GC.Run, or
// GC.Collect for one pass), and, in the tables of new flows, the LRU
// evicting the least recently used. A GC pass removes entries whose
// expires is past, or that are past a bound of Timeouts (which can
// shorten the datapath's timeouts, never lengthen them); it reads the
// tables in batches (BPF_MAP_LOOKUP_BATCH, a few thousand entries per
// syscall), reads each entry that looks like garbage again just before
// removing it (one a packet renewed meanwhile stays), and it keeps a
// translated flow's OUT and IN entries together, removing both once both
// are garbage: a flow whose replies alone still come keeps its port.
// GC.FlushEndpoint removes every entry of a pod that goes (its address
// will be another pod's), GC.FlushBackend the flows of a backend that
// goes (its ID will be another backend's).
//
// # SNAT port policy
//
// A new translated flow gets a port of the node's NAT range,
// datapath.Config.NATPorts (default
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
