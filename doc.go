// Package hostrouting is an SDK that gives any container network — a CNI
// plugin, a node agent, a test rig — "eBPF host routing": packets between
// pods are moved by tc BPF programs with bpf_redirect_peer instead of
// walking the node's routing, netfilter and the destination veth's
// backlog. Cilium calls this mode "Host Routing: BPF".
//
// # The packet's way
//
// A pod's eth0 is one end of a veth pair; the other end (lxc…) sits in the
// node's network namespace. Every endpoint shares one loaded object per
// node and finds its facts in maps keyed by address, ifindex and endpoint
// ID:
//
//	pod A eth0 ──veth── lxcA [tc ingress: from-container]
//	                       │ VLAN-tagged (pods have none)     → drop
//	                       │ IPv4, ARP, IPv6                  → tail call to the family's stage
//	                       │ source IP/MAC not A's own        → drop (anti-spoofing; IPv6 too)
//	                       │ ARP for the gateway (if asked)   → answered with lxcA's MAC
//	                       │ not for lxcA's MAC, IP options   → the stack (as a router would)
//	                       │ destination a pod of this node   → MACs rewritten, TTL-1,
//	                       │   B's policy slot (a tail call, if B has a policy),
//	                       │   bpf_redirect_peer(lxcB)        → pod B eth0
//	                       │ destination in the native routing CIDR → bpf_fib_lookup
//	                       │   (ip rules honoured) → bpf_redirect_neigh(eth0), which keeps
//	                       │   the next hop's neighbour entry fresh;
//	                       │   TTL, MTU, unreachable, local → the stack (it answers ICMP)
//	                       │ anything else, IPv6 included     → the kernel's stack
//	                     lxcB [tc egress: to-container]       what the stack delivers:
//	                       │   B's policy slot, counters
//	                     eth0 [tc ingress: from-netdev]       a pod of this node →
//	                       │   policy slot, bpf_redirect_peer(lxc…); the rest → the stack
//	                     eth0 [tc egress: to-netdev]          counts what leaves
//
// Services (kube-proxy replacement) are a stage of their own, before the
// routing above: a packet from a pod, or into eth0, for a service
// frontend gets a backend (random or Maglev, session affinity, traffic
// policies) and its destination rewritten; the flow is remembered in the
// datapath's own conntrack (hr_ct4_*), which turns the replies' source back
// into the frontend. Pods' flows that leave the native routing CIDR are
// masqueraded to eth0's address by to-netdev (hr_snat4_*), and their replies
// translated back by from-netdev, so neither needs nf_conntrack or an
// iptables rule. With a cgroup (Config.CgroupPath), sockets get their
// backend at connect time and their packets need no translation.
//
// Every packet a program sees is counted once, by direction and outcome
// (maps.MetricTable), once more per translation (DNAT, SNAT, reverse NAT),
// and per endpoint; when the monitor asks (Datapath.SetMonitor: drops,
// per connection, or all), the decision is also reported as an event with
// the packet's first bytes, and a translation with its tuples and
// conntrack's verdict (Datapath.OpenMonitor, hrctl monitor).
//
// An embedder's ingress policy is a tail call too (Datapath.SetIngressPolicy,
// bpf/include/hostrouting/policy.h): no trampolines, so it runs on every
// kernel.
//
// Other nodes' pod CIDRs are direct routes `podCIDR via nodeIP dev eth0`
// (Datapath.UpsertNode, Cilium's autoDirectNodeRoutes), with managed
// neighbour entries keeping next hops resolved.
//
// With bpf_redirect_peer the packet enters pod B's namespace directly: lxcB
// never transmits it and netfilter's FORWARD chain never sees it. On
// kernels without the helper, or when Config.Disable asks, the programs
// fall back to bpf_redirect to lxcB (the packet crosses the veth, still
// past the stack); without bpf_redirect_neigh an unresolved next hop is
// left to the stack, and a resolved one gets its MACs and bpf_redirect.
// Status reports "Host Routing: BPF" only with all of
// bpf_redirect_peer, bpf_redirect_neigh and bpf_fib_lookup, else "Legacy"
// and the reason. Fallbacks are decided once at load from feature probes and
// handed to the programs as load-time constants, so the verifier removes
// the calls a kernel lacks. Programs attach with tcx links, or clsact
// qdiscs and cls_bpf filters on kernels without tcx.
//
// # Packages
//
//   - datapath: what users embed. New(Config) loads or adopts the node's
//     datapath (Open adopts without loading); AddEndpoint/RemoveEndpoint
//     put pods on it, UpsertNode/DeleteNode route to other nodes,
//     UpsertService/DeleteService balance services, GC collects expired
//     flows; Status, Close (leave it running, pinned) and Remove (tear it
//     down).
//   - datapath/metrics: a Prometheus collector of a node's counters, map
//     pressure and garbage collection.
//   - datapath/datapathtest: network-namespace fixtures (nodes, pods,
//     traffic, counters, a real kube-apiserver) for tests, ours and an
//     embedding CNI's or agent's.
//   - loader: the kernel features the datapath probes for and their
//     fallbacks, the defaults and limits of a node's tables, and the errors
//     of loading and pins; the loading itself (once per node, pinned, adopted
//     by a restarted process, attached in any network namespace) is
//     internal/instance, which datapath drives.
//   - maps: the datapath's vocabulary: endpoint, service, conntrack and NAT
//     entries, flags, metrics and counters, as datapath hands them out.
//   - nat: garbage collection of the conntrack and SNAT tables, Maglev
//     lookup tables.
//   - routing: netlink/netns helpers a CNI needs: veth pairs with ptp-like
//     /32 addressing (or Calico-style), node-side routes, sysctls — inside given namespaces.
//   - bpf: the C datapath and its BPF_PROG_RUN tests; the bpf2go output is
//     internal/bpf (regenerate with `go generate ./internal/bpf` and clang-19).
//
// # Stability
//
// The root module requires github.com/cilium/ebpf,
// github.com/vishvananda/netlink, github.com/vishvananda/netns and
// golang.org/x/sys only; what needs more (the Prometheus collector
// datapath/metrics, the agent, the CNI plugin, hrctl, the benchmarks) is
// a module of its own. internal/embedder checks that in CI.
//
// Stable, and checked against the previous commit by CI (.ci/apidiff: an
// incompatible change needs a reason in its commit): datapath,
// datapath/datapathtest, routing, nat, maps and loader. Before v1 a minor
// release may still break them, and says so in its notes.
//
// Not API, free to change with any commit: everything under internal/ —
// the bpf2go types that mirror the C structs (internal/bpf), the handles
// that read and write the pinned maps (internal/tables), the loading,
// pinning, attaching and the protocol by which processes sharing a node
// coordinate (internal/instance) — which only datapath and this
// repository's tools (hrctl, the benchmarks) use, and the C programs'
// maps, their layout and the pin directory's contents.
//
// The examples folder holds runnable programs: samenode (the demo),
// crossnode (three kind-like nodes), service (the NodePort demo without
// kube-proxy), cni-hostrouting (a chained CNI plugin), agent
// (hostrouting-agent, a node agent driven by the Kubernetes API), cluster
// (the agents on three nodes and a real kube-apiserver), hrctl (the node
// admin CLI), policy (an ingress policy in C) and bench.
package hostrouting
