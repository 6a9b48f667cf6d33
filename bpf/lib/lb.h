/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing at tc: frontends (ClusterIP, NodePort, external
 * IPs) translated to backends and back, with the datapath's conntrack. */
#pragma once

#include "conntrack.h"
#include "metrics.h"
#include "parse.h"

/* Frontend scope: a service with externalTrafficPolicy Local has a second
 * entry per frontend, SCOPE_INTERNAL, whose slots hold every backend,
 * while SCOPE_EXTERNAL's hold the local ones only. */
enum lb_scope {
	LB_SCOPE_EXTERNAL = 0,
	LB_SCOPE_INTERNAL = 1,
};

/* A frontend (backend_slot 0) or one of its backends (slot 1..count). */
struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope; /* enum lb_scope */
	__u16 pad;
};

/* Service flags (lb4_service.flags). */
enum lb_flag {
	LB_F_NODEPORT = 1 << 0,   /* frontend is a node address:nodePort */
	LB_F_EXTERNAL = 1 << 1,   /* frontend is an external IP */
	LB_F_LOCAL = 1 << 2,      /* externalTrafficPolicy Local: only local backends, client source kept */
	LB_F_TWO_SCOPES = 1 << 3, /* has a SCOPE_INTERNAL entry as well (for traffic from this node) */
	LB_F_AFFINITY = 1 << 4,   /* sessionAffinity ClientIP */
	LB_F_MAGLEV = 1 << 5,     /* backends chosen by Maglev hashing */
	LB_F_INTERNAL_LOCAL = 1 << 6, /* internalTrafficPolicy Local (for the control plane: the scopes carry it out) */
	LB_F_SOURCE_RANGES = 1 << 7,  /* only sources in hr_lb4_srcrange may reach it (loadBalancerSourceRanges) */
};

struct lb4_service {
	__u32 backend_id;       /* slot > 0: the backend in this slot */
	__u16 count;            /* slot 0: active backends, in slots 1..count */
	__u16 qcount;           /* slot 0: inactive ones after them, never picked */
	__u16 rev_nat_index;    /* slot 0: the service's ID, for replies */
	__u16 flags;            /* slot 0: enum lb_flag */
	__u16 affinity_timeout; /* slot 0: seconds a client keeps its backend */
	__u16 pad;
};

/* Backend states. */
enum lb_backend_state {
	BACKEND_ACTIVE = 0,
	BACKEND_TERMINATING = 1, /* keeps its flows, takes no new ones */
	BACKEND_MAINTENANCE = 2, /* keeps its flows, takes no new ones */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* enum lb_backend_state */
};

/* A frontend that replies are translated back to (socket LB). */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_lb4_backends SEC(".maps");

/* Whether the node has services at all (slot 0, set by the Go side with
 * the first service): without, no packet pays for their lookups. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_lb_on SEC(".maps");

/* The addresses of ClusterIP frontends (value unused): a packet to one of
 * them on a port or protocol no service has is rejected, as kube-proxy
 * rejects it, even without a service CIDR. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_cluster_ips SEC(".maps");

/* A frontend's allowed source range (loadBalancerSourceRanges), as
 * Cilium's cilium_lb4_source_range: the service ID, then the prefix. */
struct lb4_src_range_key {
	__u32 prefixlen; /* 32 (the ID's bits) + the prefix's */
	__u16 rev_nat_index;
	__u16 pad;
	__be32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb4_src_range_key);
	__type(value, __u8);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_lb4_srcrange SEC(".maps");

/* lb4_src_range_ok tells whether saddr may reach the frontend svc: any
 * source, unless it has source ranges. */
static __always_inline int lb4_src_range_ok(const struct lb4_service *svc, __be32 saddr)
{
	struct lb4_src_range_key key = {
		.prefixlen = 32 + 32, .rev_nat_index = svc->rev_nat_index, .addr = saddr,
	};

	if (!(svc->flags & LB_F_SOURCE_RANGES))
		return 1;
	return !!bpf_map_lookup_elem(&hr_lb4_srcrange, &key);
}

/* in_service_cidr tells whether addr is in the service CIDR. */
static __always_inline int in_service_cidr(__be32 addr)
{
	return CONFIG.service_mask && (addr & CONFIG.service_mask) == CONFIG.service_cidr;
}

static __always_inline int lb_enabled(void)
{
	__u32 zero = 0, *on = bpf_map_lookup_elem(&hr_lb_on, &zero);

	return on && *on;
}

/* unserved tells whether a packet to addr that matched no frontend is
 * for a service all the same, so is rejected rather than routed: addr is
 * in the service CIDR or is a ClusterIP (on another port). */
static __always_inline int unserved(__be32 addr)
{
	return in_service_cidr(addr) || (lb_enabled() && bpf_map_lookup_elem(&hr_cluster_ips, &addr));
}

/* L4 header offsets of an option-less IPv4 packet behind Ethernet. */
/* The source of a pod's service flow to itself (hairpin), 169.254.42.1,
 * as Cilium's IPV4_LOOPBACK: link-local, never a pod's. */
#define LB_HAIRPIN_ADDR bpf_htonl(0xa9fe2a01)

#define IP4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP4_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP4_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))
#define TCP_CSUM_OFF (L4_OFF + 16)
#define UDP_CSUM_OFF (L4_OFF + 6)
#define ICMP_CSUM_OFF (L4_OFF + 2)
#define ICMP_ID_OFF (L4_OFF + 4)

#define IPPROTO_ICMP 1
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* Fragments of a datagram: the first carries the ports, the others only
 * its identity, by which they find the first's ports here (as Cilium's
 * cilium_ipv4_frag_datagrams). A hook records what it sees, and again
 * after a translation, so that later fragments are translated as the
 * first was. */
struct frag4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag4_ports {
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag4_key);
	__type(value, struct frag4_ports);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_frag4 SEC(".maps");

/* load_l4 reads the ports of an option-less IPv4 packet (for TCP also its
 * flags, sequence numbers and the sequence space it takes), or an ICMP
 * echo's identifier as both its ports (echoes are translated by
 * identifier); a fragment after the first gets the ports its first
 * fragment recorded (l4->later set). 0 for other protocols, other ICMP
 * messages, truncated packets and fragments whose first was not seen. */
static __always_inline int load_l4(struct __sk_buff *ctx, struct iphdr *ip, struct l4 *l4)
{
	struct frag4_key fk = { .saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .proto = ip->protocol };
	__u8 hdr[14] = {};

	l4->tcp_flags = 0;
	l4->later = 0;
	l4->seq = 0;
	l4->ack = 0;
	l4->seq_len = 0;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_ICMP)
		return 0;
	if (ip->frag_off & bpf_htons(IP_OFFSET)) {
		struct frag4_ports *fp = bpf_map_lookup_elem(&hr_frag4, &fk);

		if (!fp)
			return 0;
		l4->sport = fp->sport;
		l4->dport = fp->dport;
		l4->later = 1;
		return 1;
	}
	if (bpf_skb_load_bytes(ctx, L4_OFF, hdr, ip->protocol == IPPROTO_TCP ? 14 : ip->protocol == IPPROTO_ICMP ? 6 : 4) < 0)
		return 0;
	if (ip->protocol == IPPROTO_ICMP) {
		if (hdr[0] != ICMP_ECHO && hdr[0] != ICMP_ECHOREPLY)
			return 0;
		__builtin_memcpy(&l4->sport, hdr + 4, 2);
		l4->dport = l4->sport;
	} else {
		__builtin_memcpy(&l4->sport, hdr, 2);
		__builtin_memcpy(&l4->dport, hdr + 2, 2);
	}
	if (ip->protocol == IPPROTO_TCP) {
		__u32 len = bpf_ntohs(ip->tot_len), hlen = sizeof(struct iphdr) + (hdr[12] >> 4) * 4;

		if (!len) /* BIG TCP */
			len = ctx->len - ETH_HLEN;
		l4->tcp_flags = hdr[13];
		l4->seq = (__u32)hdr[4] << 24 | (__u32)hdr[5] << 16 | (__u32)hdr[6] << 8 | hdr[7];
		l4->ack = (__u32)hdr[8] << 24 | (__u32)hdr[9] << 16 | (__u32)hdr[10] << 8 | hdr[11];
		l4->seq_len = (len > hlen ? len - hlen : 0) + !!(hdr[13] & TCP_FLAG_SYN) + !!(hdr[13] & TCP_FLAG_FIN);
	}
	if (ip->frag_off & bpf_htons(IP_MF)) {
		struct frag4_ports fp = { .sport = l4->sport, .dport = l4->dport };

		bpf_map_update_elem(&hr_frag4, &fk, &fp, BPF_ANY);
	}
	return 1;
}

/* is_later_fragment tells whether an IPv4 packet is a fragment after the
 * first. */
static __always_inline int is_later_fragment(const struct iphdr *ip)
{
	return !!(ip->frag_off & bpf_htons(IP_OFFSET));
}

static __always_inline struct lb4_service *lb4_lookup_service(__be32 addr, __be16 port, __u8 proto, __u8 scope)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto, .scope = scope };

	return bpf_map_lookup_elem(&hr_lb4_services, &key);
}

/* Maglev: each Maglev service's lookup table, by service ID, an inner
 * array of one value of CONFIG.maglev_m backend IDs (the inner value size
 * is set at load). A flow's hash picks its slot: every node with the same
 * backends picks the same backend for it. */
struct lb4_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32) * 16381);
	__uint(max_entries, 1);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(key_size, sizeof(__u32));
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb4_maglev_inner);
} hr_lb4_maglev SEC(".maps");

/* hash_tuple mixes a flow's tuple into 32 bits the same way on every
 * node (murmur3's finaliser over the words). */
static __always_inline __u32 hash_tuple(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport, __u8 proto)
{
	__u32 h = saddr ^ (daddr * 0x9e3779b1) ^ (((__u32)sport << 16 | dport) * 0x85ebca6b) ^ proto;

	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* lb4_maglev returns the backend ID that svc's Maglev table gives a flow
 * of hash h, 0 if it has none. */
static __always_inline __u32 lb4_maglev(const struct lb4_service *svc, __u32 h)
{
	__u32 index = svc->rev_nat_index, zero = 0, slot, *table;
	void *inner;

	if (!CONFIG.maglev_m)
		return 0;
	slot = h % CONFIG.maglev_m;
	if (slot >= CONFIG.maglev_m) /* the verifier does not bound a modulo */
		return 0;
	inner = bpf_map_lookup_elem(&hr_lb4_maglev, &index);
	if (!inner)
		return 0;
	table = bpf_map_lookup_elem(inner, &zero);
	if (!table)
		return 0;
	return table[slot];
}

/* Session affinity (sessionAffinity ClientIP): a client's backend per
 * service. The client is an address for the tc load balancer and a
 * network namespace cookie for the socket one. */
struct lb4_affinity_key {
	__u64 client;
	__u16 rev_nat_index;
	__u16 pad[3];
};

struct lb_affinity_val {
	__u32 backend_id;
	__u32 last_used; /* seconds of CLOCK_MONOTONIC */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_lb4_affinity SEC(".maps");

/* lb4_select picks a backend for a new flow of client to svc at frontend
 * key: the client's backend while its affinity lasts, else the Maglev
 * table's for the flow's hash, or a random slot among the active ones.
 * Returns the backend and its ID, NULL if none. */
static __always_inline struct lb4_backend *lb4_select(struct lb4_key *key, const struct lb4_service *svc,
						      __u64 client, __u32 hash, __u32 *id)
{
	struct lb4_affinity_key ak = { .client = client, .rev_nat_index = svc->rev_nat_index };
	__u32 now = (svc->flags & LB_F_AFFINITY) ? now_seconds() : 0;
	struct lb_affinity_val *av = NULL;
	struct lb4_backend *be = NULL;
	struct lb4_service *slot;

	if (svc->flags & LB_F_AFFINITY) {
		av = bpf_map_lookup_elem(&hr_lb4_affinity, &ak);
		if (av && now - av->last_used <= svc->affinity_timeout) {
			*id = av->backend_id;
			be = bpf_map_lookup_elem(&hr_lb4_backends, id);
			if (be && be->state == BACKEND_ACTIVE) {
				av->last_used = now;
				return be;
			}
		}
	}
	if (!svc->count)
		return NULL;
	*id = (svc->flags & LB_F_MAGLEV) ? lb4_maglev(svc, hash) : 0;
	if (!*id) {
		key->backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
		slot = bpf_map_lookup_elem(&hr_lb4_services, key);
		if (!slot)
			return NULL;
		*id = slot->backend_id;
	}
	be = bpf_map_lookup_elem(&hr_lb4_backends, id);
	if (be && (svc->flags & LB_F_AFFINITY)) {
		struct lb_affinity_val fresh = { .backend_id = *id, .last_used = now };

		bpf_map_update_elem(&hr_lb4_affinity, &ak, &fresh, BPF_ANY);
	}
	return be;
}

/* csum_l4 updates the TCP or UDP checksum for from → to at the offset of
 * a field (size 2 or 4; addresses are in the pseudo header). */
static __always_inline int csum_l4(struct __sk_buff *ctx, __u8 proto, __be32 from, __be32 to, __u64 flags)
{
	__u32 off = proto == IPPROTO_TCP ? TCP_CSUM_OFF : proto == IPPROTO_UDP ? UDP_CSUM_OFF : ICMP_CSUM_OFF;

	if (proto == IPPROTO_UDP)
		flags |= BPF_F_MARK_MANGLED_0;
	return bpf_l4_csum_replace(ctx, off, from, to, flags);
}

/* rewrite4 replaces an address and a port of the packet (the destination
 * with dst set, else the source; an ICMP echo's identifier for its port),
 * checksums included; of a fragment after the first (l4->later), which
 * carries no L4 header, the address only. The packet's pointers are
 * invalid afterwards. */
static __always_inline int rewrite4(struct __sk_buff *ctx, const struct l4 *l4, __u8 proto, int dst, __be32 old_addr,
				    __be32 addr, __be16 old_port, __be16 port)
{
	__u32 addr_off = dst ? IP4_DADDR_OFF : IP4_SADDR_OFF;
	__u32 port_off = proto == IPPROTO_ICMP ? ICMP_ID_OFF : L4_OFF + (dst ? 2 : 0);

	if (l4->later)
		return bpf_l3_csum_replace(ctx, IP4_CSUM_OFF, old_addr, addr, sizeof(addr)) < 0 ||
		       bpf_skb_store_bytes(ctx, addr_off, &addr, sizeof(addr), 0) < 0 ? -1 : 0;
	/* ICMP's checksum covers no pseudo header. */
	if ((proto != IPPROTO_ICMP && csum_l4(ctx, proto, old_addr, addr, BPF_F_PSEUDO_HDR | sizeof(addr)) < 0) ||
	    bpf_l3_csum_replace(ctx, IP4_CSUM_OFF, old_addr, addr, sizeof(addr)) < 0 ||
	    bpf_skb_store_bytes(ctx, addr_off, &addr, sizeof(addr), 0) < 0)
		return -1;
	if (old_port == port)
		return 0;
	if (csum_l4(ctx, proto, old_port, port, sizeof(port)) < 0 ||
	    bpf_skb_store_bytes(ctx, port_off, &port, sizeof(port), 0) < 0)
		return -1;
	return 0;
}

/* lb4_reply_key is the key of the reply entry of client's flow at its
 * source port sport to backend be. */
static __always_inline void lb4_reply_key(struct ct4_key *rk, const struct lb4_backend *be, __be32 client, __be16 sport,
					  __u8 proto)
{
	/* Hairpin: a pod that reaches itself through a service would get a
	 * packet from its own address, which its stack drops as a martian.
	 * The flow's source becomes LB_HAIRPIN_ADDR instead, and its replies
	 * to that address go back to the pod (as Cilium's IPV4_LOOPBACK). */
	rk->saddr = be->address;
	rk->daddr = be->address == client ? LB_HAIRPIN_ADDR : client;
	rk->sport = be->port;
	rk->dport = sport;
	rk->proto = proto;
	rk->dir = CT_REPLY;
	rk->pad = 0;
}

/* lb4_dnat translates a packet to the frontend at key (svc its entry) to
 * one of the service's backends: the one its flow took (conntrack), else
 * a new pick, for which the flow's entry and its reply's are made afresh
 * (a tuple reused after its flow closed or expired is a new flow; a SYN
 * on a live flow keeps its backend). The destination becomes the
 * backend's. Returns 0, or the metric of the drop (no backend, no room
 * for the flow, a failed rewrite). The packet's pointers are invalid
 * afterwards. */
static __always_inline int lb4_dnat(struct __sk_buff *ctx, enum direction dir, struct iphdr *ip,
				    const struct l4 *l4, struct lb4_key *key, const struct lb4_service *svc)
{
	struct ct4_key ck = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = CT_SERVICE,
	};
	__u8 proto = ip->protocol, flags = l4->tcp_flags;
	__be32 client = ip->saddr, frontend = ip->daddr;
	struct lb4_backend *be = NULL;
	__u8 verdict = CT_VERDICT_ESTABLISHED;
	struct ct_entry *e, *r = NULL;
	struct ct4_key rk;
	__u32 id = 0;
	int fresh = 0;

	e = ct4_lookup(&ck);
	if (e) {
		id = e->backend_id;
		be = bpf_map_lookup_elem(&hr_lb4_backends, &id);
		if (e->st.expires < now_seconds()) {
			fresh = 1; /* expired, not collected yet */
			be = NULL;
		} else if ((e->st.flags & CT_F_CLOSING) &&
			   (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_SYN) {
			fresh = 1; /* reopened: its backend again, while it takes flows */
			if (be && be->state != BACKEND_ACTIVE)
				be = NULL;
		}
	}
	if (!be) {
		be = lb4_select(key, svc, client, hash_tuple(client, frontend, l4->sport, l4->dport, proto), &id);
		if (!be)
			return METRIC_DROP_NO_BACKEND;
		fresh = 1;
	}
	if (fresh) {
		struct ct_entry v = { .rev_nat_index = svc->rev_nat_index, .backend_id = id };

		ct_update(&v.st, NULL, proto, l4);
		v.packets = 1;
		/* A new flow starts with the new ones, whatever its tuple's
		 * last flow was. */
		if (e && (e->st.flags & CT_F_ESTABLISHED)) {
			ct4_delete_established(&ck);
			e = NULL;
		}
		if (e) {
			*e = v;
		} else {
			e = ct4_create(&ck, &v);
			if (!e) {
				ct_count(ct4_class(proto), CT_STAT_FAILED);
				return METRIC_DROP_CT_FULL;
			}
			/* Another CPU made it first: its pick holds. */
			if (e->backend_id != id) {
				id = e->backend_id;
				be = bpf_map_lookup_elem(&hr_lb4_backends, &id);
				if (!be)
					return METRIC_DROP_NO_BACKEND;
			}
		}
		lb4_reply_key(&rk, be, client, l4->sport, proto);

		struct ct_entry rv = {
			.st.flags = rk.daddr != client ? CT_F_HAIRPIN : 0, .rev_nat_index = svc->rev_nat_index,
			.backend_id = id, .nat_addr = frontend, .nat_port = l4->dport,
		};

		rv.st.expires = now_seconds() + ct_timeout(proto, 0);
		r = ct4_lookup(&rk);
		if (r && (r->st.flags & CT_F_ESTABLISHED)) {
			ct4_delete_established(&rk);
			r = NULL;
		}
		if (r) {
			*r = rv;
		} else if (!ct4_create(&rk, &rv)) {
			ct_count(ct4_class(proto), CT_STAT_FAILED);
			return METRIC_DROP_CT_FULL;
		}
		ct_count(ct4_class(proto), CT_STAT_CREATED);
		verdict = CT_VERDICT_NEW;
	} else {
		lb4_reply_key(&rk, be, client, l4->sport, proto);
		if (ct_needs_peer(proto, l4) || (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			r = ct4_lookup(&rk);
		/* A SYN (a retransmission) of a flow whose reply entry is gone
		 * makes it again, so that the flow heals. */
		if (!r && proto == IPPROTO_TCP && (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
			struct ct_entry rv = {
				.st.flags = rk.daddr != client ? CT_F_HAIRPIN : 0, .rev_nat_index = svc->rev_nat_index,
				.backend_id = id, .nat_addr = frontend, .nat_port = l4->dport,
			};

			rv.st.expires = now_seconds() + ct_timeout(proto, 0);
			r = ct4_create(&rk, &rv);
		}
		/* An RST out of the window changes nothing; it goes on, and
		 * the backend judges it as well. */
		ct_update(&e->st, r ? &r->st : NULL, proto, l4);
		e->packets++;
		if (ct_established_ready(e->st.flags, proto, l4)) {
			r = r ?: ct4_lookup(&rk);
			if (r)
				ct4_promote_flow(&ck, e, &rk, r);
		}
	}

	__be32 peer = rk.daddr;
	__be32 baddr = be->address;
	__be16 bport = be->port;

	if (rewrite4(ctx, l4, proto, 1, frontend, baddr, l4->dport, bport) < 0)
		return METRIC_DROP_NAT;
	if (peer != client && rewrite4(ctx, l4, proto, 0, client, peer, l4->sport, l4->sport) < 0)
		return METRIC_DROP_NAT;

	struct tuple4 from = { .saddr = client, .daddr = frontend, .sport = l4->sport, .dport = l4->dport };
	struct tuple4 to = { .saddr = peer, .daddr = baddr, .sport = l4->sport, .dport = bport };

	count_xlate(ctx, dir, METRIC_XLATE_DNAT, proto, flags, verdict, svc->rev_nat_index, &from, &to);
	return 0;
}

/* lb4_rev_nat translates a reply of a service flow back: its source
 * becomes the frontend the client dialled. Returns 1 if it did, 0 for a
 * packet of no service flow, or the negated metric of a drop. The
 * packet's pointers are invalid after a translation. */
static __always_inline int lb4_rev_nat(struct __sk_buff *ctx, enum direction dir, struct iphdr *ip,
				       const struct l4 *l4)
{
	struct ct4_key rk = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = CT_REPLY,
	};
	__u8 proto = ip->protocol;
	struct ct_entry *e, *svc;
	__be32 front, client;
	__be16 port;
	__u16 rev_nat;

	e = ct4_lookup(&rk);
	if (!e || !e->nat_addr)
		return 0;
	front = e->nat_addr;
	port = e->nat_port;
	rev_nat = e->rev_nat_index;
	/* A hairpin flow's client is the backend itself. */
	client = (e->st.flags & CT_F_HAIRPIN) ? rk.saddr : rk.daddr;

	/* The flow has an answer: its service entry lives as long. */
	struct ct4_key sk = {
		.saddr = client, .daddr = front, .sport = l4->dport, .dport = port,
		.proto = proto, .dir = CT_SERVICE,
	};
	svc = ct4_lookup(&sk);
	e->st.flags |= CT_F_SEEN_REPLY;
	ct_update(&e->st, svc ? &svc->st : NULL, proto, l4);
	e->packets++;
	if (svc) {
		svc->st.flags |= CT_F_SEEN_REPLY;
		if (!(svc->st.flags & CT_F_CLOSING))
			svc->st.expires = now_seconds() + ct_timeout(proto, svc->st.flags);
	}
	if (client != rk.daddr && rewrite4(ctx, l4, proto, 1, rk.daddr, client, rk.dport, rk.dport) < 0)
		return -METRIC_DROP_NAT;
	if (rewrite4(ctx, l4, proto, 0, rk.saddr, front, rk.sport, port) < 0)
		return -METRIC_DROP_NAT;

	struct tuple4 from = { .saddr = rk.saddr, .daddr = rk.daddr, .sport = rk.sport, .dport = rk.dport };
	struct tuple4 to = { .saddr = front, .daddr = client, .sport = port, .dport = rk.dport };

	count_xlate(ctx, dir, METRIC_XLATE_REV_DNAT, proto, l4->tcp_flags, CT_VERDICT_REPLY, rev_nat, &from, &to);
	return 1;
}
