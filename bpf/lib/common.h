/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps, shared structs and load-time configuration of the hostrouting datapath. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define PACKET_HOST 0 /* linux/if_packet.h */

/* Endpoint flags (endpoint_info.flags). */
enum endpoint_flag {
	/* Answer the pod's ARP requests (for any address but its own) with
	 * the host-side device's MAC, for CNIs with no gateway address on it. */
	ENDPOINT_F_ARP_RESPONDER = 1 << 0,
	/* An ingress policy sits in hr_policy at the endpoint's ID: packets
	 * into the endpoint pass it. Without the flag the slot costs nothing. */
	ENDPOINT_F_POLICY = 1 << 1,
	/* The endpoint is a backend of a service: its replies may need
	 * translating back to the service's frontend. */
	ENDPOINT_F_LB_BACKEND = 1 << 2,
};

/* What the datapath knows of a local endpoint (a pod's interface). The same
 * value sits under each of the endpoint's keys: its IPv4 address
 * (hr_endpoints), its IPv6 address (hr_endpoints6) and its host-side device
 * (hr_devices). Every field is naturally aligned, MACs included (read as
 * 16-bit words), so the object loads with BPF_F_STRICT_ALIGNMENT. */
struct endpoint_info {
	__u32 ifindex;           /* host-side device, in the node's netns */
	__u16 id;                /* endpoint ID: index of hr_ep_stats and hr_policy */
	__u16 flags;             /* enum endpoint_flag */
	__u8 mac[ETH_ALEN];      /* the pod's own MAC */
	__u8 node_mac[ETH_ALEN]; /* MAC of the host-side device */
	__be32 ipv4;             /* the endpoint's addresses, which it may send */
	__u8 ipv6[16];           /* from (all zero: no IPv6 address) */
};

/* Per-endpoint counters, per CPU, indexed by endpoint ID. "from" is what
 * the pod sent, "to" what was delivered into it. */
struct endpoint_stats {
	__u64 from_packets;
	__u64 from_bytes;
	__u64 to_packets;
	__u64 to_bytes;
	__u64 drop_packets;
	__u64 drop_bytes;
};

/* Where a counted packet was seen: the program that decided its outcome.
 * Every packet a program sees lands in exactly one (direction, metric). */
enum direction {
	DIR_FROM_CONTAINER, /* tc ingress of a pod's host-side device */
	DIR_TO_CONTAINER,   /* tc egress of a pod's host-side device */
	DIR_FROM_NETDEV,    /* tc ingress of a node device */
	DIR_TO_NETDEV,      /* tc egress of a node device */
	DIR_MAX,
};

/* What the datapath did with a packet. The numbers are stable: new
 * outcomes go at the end. */
enum metric {
	METRIC_FWD_PEER,        /* delivered to a local endpoint with bpf_redirect_peer */
	METRIC_FWD_REDIRECT,    /* delivered with bpf_redirect to its host device (fallback) */
	METRIC_TO_STACK,        /* handed to the kernel's stack */
	METRIC_ARP_REPLY,       /* ARP request answered by the datapath */
	METRIC_DROP_SPOOFED,    /* source IP or MAC not the endpoint's own */
	METRIC_DROP_INVALID,    /* truncated or malformed frame */
	METRIC_DROP_UNKNOWN_L3, /* ethertype the datapath does not carry */
	METRIC_DROP_POLICY,     /* refused by the endpoint's ingress policy */
	METRIC_FWD_FIB,         /* to another node: bpf_fib_lookup + bpf_redirect (no redirect_neigh) */
	METRIC_FWD_NEIGH,       /* to another node: bpf_fib_lookup + bpf_redirect_neigh */
	METRIC_PASS,            /* let through to where it was going (into the pod, onto the wire) */
	METRIC_DROP_VLAN,       /* VLAN-tagged frame from a pod (pods have no VLANs) */
	METRIC_DROP_TAIL_CALL,  /* a stage of the datapath was missing (during a reload) */
	METRIC_DROP_NO_BACKEND, /* to a service frontend without backends */
	METRIC_DROP_NAT,        /* a translation failed (packet rewrite) */
	METRIC_DROP_NAT_NO_PORT,/* no free port to translate a new flow's source to */
	/* Translations, counted besides the packet's outcome (which is one of
	 * the above). */
	METRIC_XLATE_DNAT,      /* to a service backend instead of its frontend */
	METRIC_XLATE_SNAT,      /* from the node's address (masquerade, NodePort to another node) */
	METRIC_XLATE_REV_DNAT,  /* a service reply, from its frontend again */
	METRIC_XLATE_REV_SNAT,  /* a reply of a masqueraded flow, to its pod again */
	METRIC_DROP_CT_FULL,    /* no room for a new flow's conntrack or NAT entries */
	METRIC_DROP_IP_OPTIONS, /* a pod's packet with IP options that would leave untranslated */
	METRIC_DROP_ROUTER_MSG, /* a router advertisement or redirect from a pod */
	METRIC_REJECT,          /* to a service without backends (or no service): answered with port unreachable */
	METRIC_DROP_FRAG_NOT_FOUND, /* a fragment to translate whose first fragment was not seen */
	METRIC_DROP_SOURCE_RANGE, /* to a frontend with source ranges, from a source outside them */
	METRIC_MAX,
};

struct metric_value {
	__u64 packets;
	__u64 bytes;
};

/* Load-time configuration, set from Go before the verifier sees the
 * programs: branches on a zero field are dead code and are removed, so a
 * kernel without a helper never sees a call to it. */
struct config {
	__u8 redirect_peer;  /* deliver locally with bpf_redirect_peer, else bpf_redirect */
	__u8 redirect_neigh; /* resolve next hops with bpf_redirect_neigh, else MACs + bpf_redirect */
	__u8 fib_lookup;     /* forward to other nodes with bpf_fib_lookup, else the stack */
	__u8 check_mtu;      /* the kernel has bpf_check_mtu */
	__be32 native_cidr;  /* pods of all nodes: forwarded by the datapath */
	__be32 native_mask;  /* 0: no native routing CIDR, the stack forwards */
	__u32 lxc_mask;      /* hr_lxc's size − 1 (a power of two) */
	__u8 masquerade;     /* translate pods' sources leaving the native CIDR */
	__u8 no_backend_drop; /* drop what goes to a service without backends (else reject it) */
	__u16 nat_port_min;  /* the ports sources are translated to */
	__u16 nat_port_max;
	__u8 sock_hostns_only; /* socket LB for the node's own sockets only */
	__u8 coarse_clock;   /* the kernel has bpf_ktime_get_coarse_ns (5.11): flow expiry reads it */
	__u8 set_retval;     /* the kernel has bpf_set_retval (5.18): socket LB refuses with ECONNREFUSED */
	__u8 pad2;
	__u32 maglev_m;      /* Maglev table size; 0: random backend selection */
	__u64 netns_cookie;  /* the node's network namespace */
	__be32 service_cidr; /* ClusterIPs: what is for none of them is rejected */
	__be32 service_mask; /* 0: no service CIDR */
};

volatile const struct config CONFIG = {};

/* State the Go side records with the pinned objects so that a second
 * process can adopt them; the programs never read it. */
struct node_info {
	__u64 object_id;     /* hash of the loaded object and its config: the programs pinned */
	__u64 renewed_id;    /* the object every attachment runs: != object_id while a reload renews them */
	__u64 netns_ino;     /* the node's network namespace (nsfs inode and device) */
	__u64 netns_dev;
	__u32 features;      /* what the loader enabled, a bit per feature */
	__be32 native_cidr;  /* as in struct config */
	__u32 native_prefix; /* prefix length of native_cidr */
	__u32 max_endpoints; /* the endpoint limit the maps were sized for */
	__u32 devices[8];    /* ifindexes of the node's devices, 0 after the last */
	__u32 own_qdiscs;    /* bit i: the loader made the clsact qdisc on devices[i] */
	__u16 nat_port_min;  /* as in struct config */
	__u16 nat_port_max;
	__u32 masquerade;    /* as in struct config */
	__u32 sock_hostns_only;
	__u32 maglev_m;
	__u32 maglev_slots;  /* the Maglev tables' size, fixed at the first load */
	__be32 service_cidr; /* as in struct config */
	__u32 service_prefix; /* prefix length of service_cidr */
	__u32 no_backend_drop; /* as in struct config */
};

/* Who an endpoint belongs to, by endpoint ID, for the Go side (a CNI DEL
 * without its pod's addresses finds it by container ID); the programs
 * never read it. */
struct endpoint_meta {
	char container_id[128];
	char ifname[16]; /* the pod's interface (CNI_IFNAME) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_meta);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ep_meta SEC(".maps");

/* Endpoints by IPv4 address (network order). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_endpoints SEC(".maps");

/* Endpoints by IPv6 address: the IPv4 map's twin, for the Go side's
 * lookups and the IPv6 forwarding stage to come. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_addr);
	__type(value, struct endpoint_info);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_endpoints6 SEC(".maps");

/* Endpoints by host-side ifindex: who a device belongs to, whatever its
 * packets claim (source checks, drop accounting). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_devices SEC(".maps");

/* hr_devices' fast copy: an array indexed by ifindex & CONFIG.lxc_mask,
 * whose lookups the verifier inlines. A slot holds the endpoint of one of
 * the devices that map to it (its ifindex says which); the others are
 * found in hr_devices. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_lxc SEC(".maps");

/* Per-endpoint counters by endpoint ID (0 collects what belongs to no
 * endpoint). Sized by the node's endpoint limit: per CPU, so its memory
 * grows with CPUs × endpoints. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct endpoint_stats);
	__uint(max_entries, 1025);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ep_stats SEC(".maps");

/* TCP flags as they sit in byte 13 of the TCP header. */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The drop metrics, as a bit mask of enum metric. */
#define METRIC_DROPS ((1u << METRIC_DROP_SPOOFED) | (1u << METRIC_DROP_INVALID) | (1u << METRIC_DROP_UNKNOWN_L3) | \
		      (1u << METRIC_DROP_POLICY) | (1u << METRIC_DROP_VLAN) | (1u << METRIC_DROP_TAIL_CALL) |   \
		      (1u << METRIC_DROP_NO_BACKEND) | (1u << METRIC_DROP_NAT) | (1u << METRIC_DROP_NAT_NO_PORT) | \
		      (1u << METRIC_DROP_CT_FULL) | (1u << METRIC_DROP_IP_OPTIONS) | (1u << METRIC_DROP_ROUTER_MSG) | \
		      (1u << METRIC_REJECT) | (1u << METRIC_DROP_FRAG_NOT_FOUND) | (1u << METRIC_DROP_SOURCE_RANGE))

/* Monitor: which counted packets are also reported as events (hr_events),
 * set at run time in hr_monitor without a reload. */
enum monitor_level {
	MONITOR_OFF,   /* none (the default) */
	MONITOR_DROPS, /* drops only */
	MONITOR_ALL,   /* every decision: a trace of each packet, and every translation */
	MONITOR_CONNECTIONS, /* drops, and per connection its first packets and state changes:
			      * new or closing tracked flows, TCP SYN, FIN and RST */
};

struct monitor_config {
	__u32 level;   /* enum monitor_level */
	__u32 cap_len; /* bytes of the packet each event carries, at most */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_monitor SEC(".maps");

enum event_type {
	EVENT_DECISION, /* struct monitor_event: what a program did with a packet */
	EVENT_XLATE,    /* struct monitor_xlate: a translation and its conntrack verdict */
};

/* An event: what a program did with a packet, followed in the perf
 * record by the packet's first cap_len bytes. */
struct monitor_event {
	__u64 time;     /* CLOCK_MONOTONIC, ns */
	__u32 ifindex;  /* the device the program runs on */
	__u32 len;      /* the packet's length */
	__u16 cap_len;  /* bytes of it that follow */
	__u16 endpoint; /* the endpoint it enters or is dropped for, else whose device it is on; 0: none */
	__u8 direction; /* enum direction */
	__u8 metric;    /* enum metric: the decision, or the translation */
	__u8 type;      /* enum event_type */
	__u8 pad;
};

/* What conntrack made of a translated packet. */
enum ct_verdict {
	CT_VERDICT_NEW = 1,     /* the first packet: a flow entry was made */
	CT_VERDICT_ESTABLISHED, /* a packet of a known flow, its original way */
	CT_VERDICT_REPLY,       /* a reply of a known flow */
};

/* A flow's addresses and ports (network order). */
struct tuple4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

/* A translation (EVENT_XLATE, metric METRIC_XLATE_*), reported before the
 * decision on the packet; it carries no packet bytes. */
struct monitor_xlate {
	struct monitor_event hdr;
	__u16 rev_nat;        /* the service (its ID) of a service flow, else 0 */
	__u8 proto;
	__u8 ct;              /* enum ct_verdict */
	struct tuple4 from;   /* the packet's tuple before */
	struct tuple4 to;     /* and after: for DNAT, the backend is to.daddr:to.dport */
};

/* Per CPU: a reader's ring that was full is not tried again for a while
 * (a failed bpf_perf_event_output costs more than forwarding the packet);
 * the events not sent meanwhile are counted. */
struct monitor_state {
	__u64 retry_after; /* CLOCK_MONOTONIC ns: no event before */
	__u64 skipped;     /* events not sent because of it */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_monitor_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_events SEC(".maps");

/* Node-wide counters by direction × metric. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metric_value);
	__uint(max_entries, DIR_MAX * METRIC_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct node_info);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_info SEC(".maps");

/* The conntrack garbage collector's health, as the agent's GC (package
 * nat) leaves it after each pass, for the status any process reports;
 * the programs never read it. */
struct gc_status {
	__u64 last_run;      /* when the last pass started, Unix ns; 0 for never */
	__u64 last_duration; /* ns */
	__u64 runs;          /* passes */
	__u64 errors;        /* passes that failed */
	__u64 ct_removed;    /* entries removed as expired, conntrack */
	__u64 snat_removed;  /* and source NAT */
	char last_error[96]; /* the last pass's error, empty if it succeeded */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct gc_status);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_gc SEC(".maps");

/* Other nodes, by node IP, for the Go side's node registry: their pod
 * CIDRs live in the kernel's routes. */
struct node_entry {
	char name[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, struct node_entry);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_nodes SEC(".maps");

static __always_inline struct endpoint_info *lookup_endpoint4(__be32 addr)
{
	return bpf_map_lookup_elem(&hr_endpoints, &addr);
}

/* lookup_device returns the endpoint on the host device with index
 * ifindex: from its hr_lxc slot if it holds that device, else from
 * hr_devices. */
static __always_inline struct endpoint_info *lookup_device(__u32 ifindex)
{
	__u32 slot = ifindex & CONFIG.lxc_mask;
	struct endpoint_info *ep = bpf_map_lookup_elem(&hr_lxc, &slot);

	if (ep && ep->ifindex == ifindex)
		return ep;
	return bpf_map_lookup_elem(&hr_devices, &ifindex);
}
