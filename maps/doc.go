// Package maps gives typed access to the hostrouting datapath's BPF maps:
// Go types in (netip.Addr, net.HardwareAddr), Go types out, and clear
// errors for a missing key or a full map.
//
// # Memory
//
// With E the node's endpoint limit (datapath.Config.MaxEndpoints) and C the
// number of possible CPUs, the maps take about (kernel bookkeeping aside):
//
//	hr_endpoints   IPv4 → endpoint     hash, not preallocated   ~ 100 B per IPv4 endpoint
//	hr_endpoints6  IPv6 → endpoint     hash, not preallocated   ~ 110 B per IPv6 address
//	hr_devices     ifindex → endpoint  hash, not preallocated   ~ 100 B per endpoint
//	hr_lxc         ifindex slot → endpoint  array               40 B × S, S = 8×E rounded up to a power of two, ≤ 65536
//	hr_ep_stats    ID → counters       per-CPU array            48 B × C × (E+1)
//	hr_policy      ID → policy         program array            8 B × (E+1)
//	hr_metrics     node-wide counters  per-CPU array            16 B × C × 100 (4 directions × 25 metrics)
//	hr_nodes       node IP → name      hash, not preallocated   ~ 150 B per node
//	hr_ep_meta     ID → container ID   hash, not preallocated   ~ 250 B per endpoint with one
//	hr_info, hr_gc, hr_calls, hr_policy_ret, hr_lb_on, hr_node_addrs, hr_monitor, hr_monitor_state   < 2 KiB
//	hr_reject      rejections' rate    per-CPU array            16 B × C
//	hr_frag4       fragmented datagrams LRU hash, preallocated  ~64 B × 8192 (0.5 MiB)
//	hr_events      monitor events      perf event array         a ring of 64 pages per CPU per reader (OpenMonitor)
//
// and with S the number of services (datapath.Config.MaxServices, default
// 16384; the tables hold S services of loader.ServiceBackendSlots = 8
// backends each on average) and F the flow table size (MaxFlows, default
// 65536), a power of two P(n) being n rounded up to one:
//
//	hr_lb4_services  frontend, slot → entry  hash, not preallocated   16 B × P(9 × S) (4 MiB), + ~100 B per frontend and slot
//	hr_lb4_backends  ID → backend            hash, not preallocated   16 B × P(8 × S) (2 MiB), + ~90 B per backend
//	hr_ct4_tcp       established TCP flows   hash, preallocated       ~112 B × F (7.0 MiB)
//	hr_ct4_any       established, the rest   hash, preallocated       ~112 B × F/2 (3.5 MiB)
//	hr_ct4_new       flows not established   LRU hash, preallocated   ~112 B × F/2 (3.5 MiB)
//	hr_snat4_tcp     established TCP flows   hash, preallocated       ~104 B × F (6.5 MiB)
//	hr_snat4_any     established, the rest   hash, preallocated       ~104 B × F/2 (3.3 MiB)
//	hr_snat4_new     flows not established   LRU hash, preallocated   ~104 B × F/2 (3.3 MiB)
//	hr_ct_stats      flow counters           per-CPU array            8 B × C × 16
//	hr_sock4_revnat  socket-LB replies       LRU hash, preallocated   ~88 B × F (5.5 MiB)
//	hr_lb4_affinity  session affinity        LRU hash, preallocated   ~88 B × F (5.5 MiB)
//
// The flow tables take loader.FlowEntryBytes (608 B) × F in all, 38 MiB at
// the default F; loader.FlowsForMemory sizes F by a share of memory. Their
// memory does not grow with CPUs (a preallocated hash keeps one spare
// entry per CPU, an LRU hash per-CPU free lists of entries it already
// counts): at 2 and at 128 CPUs alike 608 B × F, plus 128 B × C for
// hr_ct_stats. Only hr_ep_stats grows with CPUs × endpoints: 4.8 MiB at
// 1024 endpoints on 128 CPUs. A default node takes about 46 MiB on 2
// CPUs, 38 MiB of it the flow tables and 6 MiB the service tables: size F
// by the flows a node carries at once, S by its services. Size E by the
// node's real pod
// limit (kubelet's maxPods and some room for churn); the hashes take
// memory for what they hold and a bucket array of 16 B per entry they may
// hold.
// datapath.Datapath.MapUsage and `hrctl status` report what a node's maps take.
package maps
