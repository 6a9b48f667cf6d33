/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Source NAT: BPF masquerade of pods' traffic leaving the native routing
 * CIDR, and NodePort traffic sent to a backend on another node. A flow's
 * two entries are made together: out (its tuple as the pod sent it → the
 * node address and port it leaves with) and in (the reply's tuple → the
 * pod's address and port). */
#pragma once

#include "conntrack.h"
#include "fib.h"
#include "lb.h"

enum nat_dir {
	NAT_OUT = 1,
	NAT_IN = 2,
};

struct nat4_entry {
	__be32 to_addr;
	__be16 to_port;
	__u16 flags; /* enum nat_flag */
	__u32 expires;
	__u32 pad;
};

enum nat_flag {
	NAT_F_HOST = 1 << 0,    /* the node's own flow: recorded to keep its port, not translated */
	NAT_F_CLOSING = 1 << 1, /* TCP FIN or RST seen either way: the short timeout */
};


struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct nat4_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_snat4 SEC(".maps");

/* nat_refresh renews one direction's entry for a packet with tcp_flags,
 * and on FIN or RST marks it closing. Returns whether this packet closes
 * the flow (then the other direction is marked too). */
static __always_inline int nat_refresh(struct nat4_entry *e, __u8 proto, __u8 tcp_flags)
{
	int closing = !(e->flags & NAT_F_CLOSING) && (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST));

	if (closing)
		e->flags |= NAT_F_CLOSING;
	e->expires = now_seconds() + ct_timeout(proto, tcp_flags, CT_F_SEEN_REPLY | ((e->flags & NAT_F_CLOSING) ? CT_F_CLOSING : 0));
	return closing;
}

/* nat_close marks the entry at key closing, if it is there. */
static __always_inline void nat_close(struct ct4_key *key, __u8 proto)
{
	struct nat4_entry *e = bpf_map_lookup_elem(&hr_snat4, key);

	if (e)
		nat_refresh(e, proto, TCP_FLAG_FIN);
}

/* The IPv4 address of each node device, by ifindex: what pods' traffic
 * leaving by it is translated to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __be32);
	__uint(max_entries, 8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_node_addrs SEC(".maps");

struct node_addr_match {
	__be32 addr;
	int found;
};

static long match_node_addr(void *map, const __u32 *ifindex, const __be32 *addr, struct node_addr_match *m)
{
	if (*addr != m->addr)
		return 0;
	m->found = 1;
	return 1; /* stop */
}

/* is_device_addr tells whether addr is the address of a node device. */
static __always_inline int is_device_addr(__be32 addr)
{
	struct node_addr_match m = { .addr = addr };

	bpf_for_each_map_elem(&hr_node_addrs, match_node_addr, &m, 0);
	return m.found;
}

/* lb4_lookup_frontend finds the frontend at key as the node's own pods and
 * sockets address it: the address itself, or, for an address of a node
 * device (or loopback, if node_loopback: a socket of the node's own
 * namespace), a NodePort of every node address (0.0.0.0), which key then
 * names. */
static __always_inline struct lb4_service *lb4_lookup_frontend(struct lb4_key *key, int node_loopback)
{
	struct lb4_service *svc = bpf_map_lookup_elem(&hr_lb4_services, key);
	struct lb4_key any = *key;

	if (svc || !key->address || in_native_cidr(key->address))
		return svc;
	any.address = 0;
	svc = bpf_map_lookup_elem(&hr_lb4_services, &any);
	if (!svc || !(svc->flags & LB_F_NODEPORT))
		return NULL;
	if (!(node_loopback && (bpf_ntohl(key->address) >> 24) == 127) && !is_device_addr(key->address))
		return NULL;
	*key = any;
	return svc;
}

/* is_frontend tells whether a pod's TCP or UDP packet goes to a service
 * frontend. */
static __always_inline int is_frontend(struct __sk_buff *ctx, struct iphdr *ip)
{
	struct lb4_key key = { .address = ip->daddr, .proto = ip->protocol };
	struct l4 l4;

	if (!load_l4(ctx, ip, &l4))
		return 0;
	key.dport = l4.dport;
	return !!lb4_lookup_frontend(&key, 0);
}

/* How many random ports a new flow tries before it is a counted drop. */
#define NAT_RETRIES 32

static __always_inline __be32 *node_addr(__u32 ifindex)
{
	return bpf_map_lookup_elem(&hr_node_addrs, &ifindex);
}

/* snat4_out translates the source of a TCP or UDP packet or an ICMP echo
 * request leaving the node
 * to nat_addr and a port of CONFIG's range: the one its flow has, else
 * its own port if free, else a random free one. Returns 0, or the metric
 * of a drop. The packet's pointers are invalid afterwards. */
static __always_inline int snat4_out(struct __sk_buff *ctx, enum direction dir, struct iphdr *ip,
				     const struct l4 *l4, __be32 nat_addr)
{
	struct ct4_key out = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = NAT_OUT,
	};
	__u32 expires = now_seconds() + ct_timeout(ip->protocol, l4->tcp_flags, CT_F_SEEN_REPLY);
	__u16 range = CONFIG.nat_port_max - CONFIG.nat_port_min + 1;
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__u8 proto = ip->protocol, verdict = CT_VERDICT_ESTABLISHED;
	struct nat4_entry *e;
	__be16 port = 0;

	e = bpf_map_lookup_elem(&hr_snat4, &out);
	if (e) {
		port = e->to_port;
		if (nat_refresh(e, proto, l4->tcp_flags)) {
			struct ct4_key in = {
				.saddr = daddr, .daddr = nat_addr, .sport = l4->dport, .dport = port,
				.proto = proto, .dir = NAT_IN,
			};

			if (proto == IPPROTO_ICMP)
				in.sport = port;
			nat_close(&in, proto);
		}
	} else {
		struct nat4_entry rev = { .to_addr = saddr, .to_port = l4->sport, .expires = expires };
		struct ct4_key in = {
			.saddr = daddr, .daddr = nat_addr, .sport = l4->dport, .proto = proto, .dir = NAT_IN,
		};
		__u16 p = bpf_ntohs(l4->sport);

		for (int i = 0; i < NAT_RETRIES; i++) {
			if (i > 0 || p < CONFIG.nat_port_min || p > CONFIG.nat_port_max)
				p = CONFIG.nat_port_min + bpf_get_prandom_u32() % range;
			in.dport = bpf_htons(p);
			if (proto == IPPROTO_ICMP) /* the identifier is both "ports" */
				in.sport = in.dport;
			if (bpf_map_update_elem(&hr_snat4, &in, &rev, BPF_NOEXIST) == 0) {
				port = in.dport;
				break;
			}
		}
		if (!port)
			return METRIC_DROP_NAT_NO_PORT;
		struct nat4_entry fwd = { .to_addr = nat_addr, .to_port = port, .expires = expires };

		bpf_map_update_elem(&hr_snat4, &out, &fwd, BPF_ANY);
		verdict = CT_VERDICT_NEW;
	}
	if (rewrite4(ctx, proto, 0, saddr, nat_addr, l4->sport, port) < 0)
		return METRIC_DROP_NAT;

	struct tuple4 from = { .saddr = saddr, .daddr = daddr, .sport = l4->sport, .dport = l4->dport };
	struct tuple4 to = { .saddr = nat_addr, .daddr = daddr, .sport = port, .dport = l4->dport };

	count_xlate(ctx, dir, METRIC_XLATE_SNAT, proto, l4->tcp_flags, verdict, 0, &from, &to);
	return 0;
}

/* snat4_in translates the destination of a packet that answers a
 * translated flow back to the pod (or client) it came from. Returns 1 if
 * it did, 0 for a packet of no such flow, or the negated metric of a drop.
 * The packet's pointers are invalid after a translation. */
static __always_inline int snat4_in(struct __sk_buff *ctx, enum direction dir, struct iphdr *ip,
				    const struct l4 *l4)
{
	struct ct4_key in = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = NAT_IN,
	};
	struct nat4_entry *e = bpf_map_lookup_elem(&hr_snat4, &in);

	if (!e || (e->flags & NAT_F_HOST))
		return 0;
	if (nat_refresh(e, ip->protocol, l4->tcp_flags)) {
		struct ct4_key out = {
			.saddr = e->to_addr, .daddr = ip->saddr, .sport = e->to_port, .dport = l4->sport,
			.proto = ip->protocol, .dir = NAT_OUT,
		};

		if (ip->protocol == IPPROTO_ICMP)
			out.dport = e->to_port;
		nat_close(&out, ip->protocol);
	}
	struct tuple4 from = { .saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport };
	struct tuple4 to = { .saddr = ip->saddr, .daddr = e->to_addr, .sport = l4->sport, .dport = e->to_port };
	__u8 proto = ip->protocol;

	if (rewrite4(ctx, proto, 1, ip->daddr, e->to_addr, l4->dport, e->to_port) < 0)
		return -METRIC_DROP_NAT;
	count_xlate(ctx, dir, METRIC_XLATE_REV_SNAT, proto, l4->tcp_flags, CT_VERDICT_REPLY, 0, &from, &to);
	return 1;
}

/* snat4_track_host records a flow of the node's own (source nat_addr) so
 * that no translated flow takes its port. */
static __always_inline void snat4_track_host(struct iphdr *ip, const struct l4 *l4)
{
	struct ct4_key in = {
		.saddr = ip->daddr, .daddr = ip->saddr, .sport = l4->dport, .dport = l4->sport,
		.proto = ip->protocol, .dir = NAT_IN,
	};
	struct nat4_entry host = {
		.to_addr = ip->saddr, .to_port = l4->sport, .flags = NAT_F_HOST,
		.expires = now_seconds() + ct_timeout(ip->protocol, l4->tcp_flags, CT_F_SEEN_REPLY),
	};
	struct nat4_entry *e = bpf_map_lookup_elem(&hr_snat4, &in);

	if (e)
		e->expires = host.expires;
	else
		bpf_map_update_elem(&hr_snat4, &in, &host, BPF_NOEXIST);
}

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
/* Offsets of the packet an ICMP error quotes (option-less). */
#define INNER_IP_OFF (L4_OFF + 8)
#define INNER_CSUM_OFF (INNER_IP_OFF + offsetof(struct iphdr, check))
#define INNER_SADDR_OFF (INNER_IP_OFF + offsetof(struct iphdr, saddr))
#define INNER_L4_OFF (INNER_IP_OFF + sizeof(struct iphdr))

#define INNER_DADDR_OFF (INNER_IP_OFF + offsetof(struct iphdr, daddr))

/* An ICMP error's header and the start of the packet it quotes. */
struct icmp_quote {
	__u8 type, code;
	__be16 csum;
	__u32 rest;
	struct iphdr in;  /* the quoted IPv4 header (option-less) */
	__be16 ports[2];  /* the quoted L4 header's first 4 bytes */
} __attribute__((packed));

/* load_icmp_error loads the ICMP error (destination unreachable,
 * fragmentation needed included, or time exceeded) an IPv4 packet
 * carries; 0 if it carries none, or one quoting IP options. */
static __always_inline int load_icmp_error(struct __sk_buff *ctx, const struct iphdr *ip, struct icmp_quote *q)
{
	return ip->protocol == IPPROTO_ICMP && bpf_skb_load_bytes(ctx, L4_OFF, q, sizeof(*q)) == 0 &&
	       (q->type == ICMP_DEST_UNREACH || q->type == ICMP_TIME_EXCEEDED) && q->in.ihl == 5;
}

/* icmp_error_xlate translates an ICMP error: old_addr becomes addr in the
 * outer header (at outer_off) and in the quoted one (at inner_off), and
 * the quoted port at port_off becomes port, with the outer IP, quoted IP
 * and ICMP checksums (the quoted L4 checksum is left, as the kernel does
 * not check it). Returns 0, or -1 if a rewrite failed. */
static __always_inline int icmp_error_xlate(struct __sk_buff *ctx, const struct icmp_quote *q, __u32 outer_off,
					    __u32 inner_off, __be32 old_addr, __be32 addr, __u32 port_off,
					    __be16 old_port, __be16 port)
{
	/* The quoted header's checksum changes with its address. */
	__u32 sum = (__u16)~q->in.check + (__u16)~(old_addr & 0xffff) + (__u16)~(old_addr >> 16) + (addr & 0xffff) +
		    (addr >> 16);
	__be16 csum;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	csum = ~sum;
	if (bpf_l3_csum_replace(ctx, IP4_CSUM_OFF, old_addr, addr, 4) < 0 ||
	    bpf_skb_store_bytes(ctx, outer_off, &addr, 4, 0) < 0 ||
	    bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, old_addr, addr, 4) < 0 ||
	    bpf_skb_store_bytes(ctx, inner_off, &addr, 4, 0) < 0 ||
	    bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, q->in.check, csum, 2) < 0 ||
	    bpf_skb_store_bytes(ctx, INNER_CSUM_OFF, &csum, 2, 0) < 0 ||
	    bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, old_port, port, 2) < 0 ||
	    bpf_skb_store_bytes(ctx, port_off, &port, 2, 0) < 0)
		return -1;
	return 0;
}

/* lb4_icmp_error translates an ICMP error that a backend sends about a
 * packet of a service flow back to the client: its source, and the
 * destination address and port of the packet it quotes, become the
 * frontend the client dialled, so that the client's socket sees the error
 * (e.g. ECONNREFUSED from a UDP service without a listener). Returns 1 if
 * it did, 0 for an error about no service flow, or the negated metric of
 * a drop. The packet's pointers are invalid afterwards. */
static __always_inline int lb4_icmp_error(struct __sk_buff *ctx, struct iphdr *ip)
{
	__be32 backend = ip->saddr;
	struct icmp_quote q;
	struct ct_entry *e;

	if (!load_icmp_error(ctx, ip, &q) || q.in.daddr != backend ||
	    (q.in.protocol != IPPROTO_TCP && q.in.protocol != IPPROTO_UDP))
		return 0;
	/* The quoted packet is the flow's, as the backend got it: its
	 * reply's tuple is the CT_REPLY key. */
	struct ct4_key rk = {
		.saddr = q.in.daddr, .daddr = q.in.saddr, .sport = q.ports[1], .dport = q.ports[0],
		.proto = q.in.protocol, .dir = CT_REPLY,
	};

	e = bpf_map_lookup_elem(&hr_ct4, &rk);
	if (!e || !e->nat_addr || (e->flags & CT_F_HAIRPIN))
		return 0;
	if (icmp_error_xlate(ctx, &q, IP4_SADDR_OFF, INNER_DADDR_OFF, backend, e->nat_addr, INNER_L4_OFF + 2,
			     q.ports[1], e->nat_port) < 0)
		return -METRIC_DROP_NAT;
	return 1;
}

/* snat4_icmp_error translates an ICMP error about a translated flow back
 * to the pod that sent it: the destination, and the source address and
 * port of the packet it quotes. Returns 1 if it did, 0 for an error about
 * no such flow, or the negated metric of a drop. The packet's pointers are
 * invalid afterwards. */
static __always_inline int snat4_icmp_error(struct __sk_buff *ctx, struct iphdr *ip)
{
	__be32 outer_daddr = ip->daddr;
	struct icmp_quote q;
	__u32 port_off;
	struct nat4_entry *e;
	__be16 port;

	if (!load_icmp_error(ctx, ip, &q) || q.in.saddr != outer_daddr)
		return 0;
	/* The quoted packet left translated: its reply's tuple is the NAT_IN
	 * key. An ICMP echo quotes its identifier where ports would be. */
	port = q.ports[0];
	port_off = INNER_L4_OFF;
	if (q.in.protocol == IPPROTO_ICMP) {
		if (bpf_skb_load_bytes(ctx, INNER_L4_OFF + 4, &port, sizeof(port)) < 0)
			return 0;
		port_off = INNER_L4_OFF + 4;
	}
	struct ct4_key in = {
		.saddr = q.in.daddr, .daddr = q.in.saddr, .sport = q.in.protocol == IPPROTO_ICMP ? port : q.ports[1],
		.dport = port, .proto = q.in.protocol, .dir = NAT_IN,
	};

	e = bpf_map_lookup_elem(&hr_snat4, &in);
	if (!e || (e->flags & NAT_F_HOST))
		return 0;
	if (icmp_error_xlate(ctx, &q, IP4_DADDR_OFF, INNER_SADDR_OFF, outer_daddr, e->to_addr, port_off, port,
			     e->to_port) < 0)
		return -METRIC_DROP_NAT;
	return 1;
}
