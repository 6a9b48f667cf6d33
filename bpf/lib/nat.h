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

/* NAT_F_HOST marks an IN entry of the node's own flow: recorded to keep
 * its port, not translated. The other flags are enum flow_flag's. */
#define NAT_F_HOST CT_F_HAIRPIN

struct nat4_entry {
	struct flow_state st; /* of the direction the key looks at */
	__be32 to_addr;
	__be16 to_port;
	__u16 pad;
};

/* As conntrack's tables (lib/conntrack.h): new flows in an LRU hash,
 * established ones (a reply seen, for TCP the handshake done) in hashes
 * that evict nothing, TCP apart from the rest. A flow's OUT and IN
 * entries are made together, move together and are removed together. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct4_key);
	__type(value, struct nat4_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_snat4_tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct4_key);
	__type(value, struct nat4_entry);
	__uint(max_entries, 32768);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_snat4_any SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct nat4_entry);
	__uint(max_entries, 32768);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_snat4_new SEC(".maps");

static __always_inline struct nat4_entry *nat4_lookup_established(const struct ct4_key *k)
{
	if (k->proto == IPPROTO_TCP)
		return bpf_map_lookup_elem(&hr_snat4_tcp, k);
	return bpf_map_lookup_elem(&hr_snat4_any, k);
}

/* nat4_lookup finds the entry at k: among established flows, else new. */
static __always_inline struct nat4_entry *nat4_lookup(const struct ct4_key *k)
{
	struct nat4_entry *e = nat4_lookup_established(k);

	return e ?: bpf_map_lookup_elem(&hr_snat4_new, k);
}

/* nat4_create makes the entry at k among the new flows, unless an entry
 * is at k in any table. Returns 0, -EEXIST, or another error. */
static __always_inline long nat4_create(const struct ct4_key *k, const struct nat4_entry *v)
{
	if (nat4_lookup_established(k))
		return -EEXIST;
	return bpf_map_update_elem(&hr_snat4_new, k, v, BPF_NOEXIST);
}

static __always_inline enum ct_class nat4_class(__u8 proto)
{
	return proto == IPPROTO_TCP ? CT_CLASS_NAT_TCP : CT_CLASS_NAT_ANY;
}

static __always_inline int nat4_insert_established(const struct ct4_key *k, struct nat4_entry *v)
{
	long err;

	v->st.flags |= CT_F_ESTABLISHED | CT_F_SEEN_REPLY;
	if (k->proto == IPPROTO_TCP)
		err = bpf_map_update_elem(&hr_snat4_tcp, k, v, BPF_NOEXIST);
	else
		err = bpf_map_update_elem(&hr_snat4_any, k, v, BPF_NOEXIST);
	return err && err != -EEXIST ? -1 : 0;
}

/* nat4_promote moves a flow's entries (a at ka; b at kb, or none: a host
 * flow's one) to the established flows, counted; when the table has no
 * room for both, neither moves. a and b are not valid afterwards. */
static __always_inline void nat4_promote(const struct ct4_key *ka, struct nat4_entry *a, const struct ct4_key *kb,
					 struct nat4_entry *b)
{
	enum ct_class class = nat4_class(ka->proto);
	int move_b = b && !(b->st.flags & CT_F_ESTABLISHED);
	struct nat4_entry va = *a, vb = {};

	if (b)
		vb = *b;
	if (nat4_insert_established(ka, &va) < 0) {
		ct_count(class, CT_STAT_REFUSED);
		return;
	}
	if (move_b && nat4_insert_established(kb, &vb) < 0) {
		if (ka->proto == IPPROTO_TCP)
			bpf_map_delete_elem(&hr_snat4_tcp, ka);
		else
			bpf_map_delete_elem(&hr_snat4_any, ka);
		ct_count(class, CT_STAT_REFUSED);
		return;
	}
	bpf_map_delete_elem(&hr_snat4_new, ka);
	if (move_b)
		bpf_map_delete_elem(&hr_snat4_new, kb);
	ct_count(class, CT_STAT_PROMOTED);
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

/* nat4_in_key is the key of the IN entry that pairs with a flow leaving as
 * from nat_addr:port to daddr:dport (an ICMP echo's identifier is both
 * its ports). */
static __always_inline void nat4_in_key(struct ct4_key *in, __be32 daddr, __be16 dport, __be32 nat_addr, __be16 port,
					__u8 proto)
{
	in->saddr = daddr;
	in->daddr = nat_addr;
	in->sport = proto == IPPROTO_ICMP ? port : dport;
	in->dport = port;
	in->proto = proto;
	in->dir = NAT_IN;
	in->pad = 0;
}

/* snat4_new makes a new flow's two entries, out (k) and in, for a packet
 * from saddr:sport leaving from nat_addr: its own port if free (and in
 * CONFIG's range), else a random free one of the range. Returns the port
 * (network order), 0 if none is free. */
static __always_inline __be16 snat4_new(const struct ct4_key *out, const struct l4 *l4, __be32 nat_addr)
{
	__u16 range = CONFIG.nat_port_max - CONFIG.nat_port_min + 1, p = bpf_ntohs(l4->sport);
	struct nat4_entry rev = { .to_addr = out->saddr, .to_port = l4->sport };
	struct nat4_entry fwd = { .to_addr = nat_addr };
	struct nat4_entry *e;
	struct ct4_key in;
	long err;

	rev.st.expires = now_seconds() + ct_timeout(out->proto, 0);
	for (int i = 0; i < NAT_RETRIES; i++) {
		if (i > 0 || p < CONFIG.nat_port_min || p > CONFIG.nat_port_max)
			p = CONFIG.nat_port_min + bpf_get_prandom_u32() % range;
		nat4_in_key(&in, out->daddr, out->dport, nat_addr, bpf_htons(p), out->proto);
		if (nat4_create(&in, &rev) == 0) {
			fwd.to_port = in.dport;
			break;
		}
	}
	if (!fwd.to_port) {
		ct_count(nat4_class(out->proto), CT_STAT_FAILED);
		return 0;
	}
	ct_update(&fwd.st, NULL, out->proto, l4);
	err = nat4_create(out, &fwd);
	if (err == 0) {
		ct_count(nat4_class(out->proto), CT_STAT_CREATED);
		return fwd.to_port;
	}
	/* Another CPU made the flow first: its port holds. */
	bpf_map_delete_elem(&hr_snat4_new, &in);
	e = err == -EEXIST ? nat4_lookup(out) : NULL;
	if (!e)
		ct_count(nat4_class(out->proto), CT_STAT_FAILED);
	return e ? e->to_port : 0;
}

/* snat4_out translates the source of a TCP or UDP packet or an ICMP echo
 * request leaving the node to nat_addr and a port of CONFIG's range: the
 * one its flow has, else a new one (snat4_new). A new flow's OUT entry
 * whose IN half is gone (evicted) or another flow's gets a new mapping.
 * Returns 0, or the metric of a drop. The packet's pointers are invalid
 * afterwards. */
static __always_inline int snat4_out(struct __sk_buff *ctx, enum direction dir, struct iphdr *ip,
				     const struct l4 *l4, __be32 nat_addr)
{
	struct ct4_key out = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = NAT_OUT,
	};
	__be32 saddr = ip->saddr, daddr = ip->daddr;
	__u8 proto = ip->protocol, verdict = CT_VERDICT_ESTABLISHED;
	struct nat4_entry *e, *r = NULL;
	struct ct4_key in;
	__be16 port = 0;

	e = nat4_lookup(&out);
	if (e) {
		port = e->to_port;
		nat4_in_key(&in, daddr, l4->dport, e->to_addr, port, proto);
		if (!(e->st.flags & CT_F_ESTABLISHED) || ct_needs_peer(proto, l4))
			r = nat4_lookup(&in);
		if (!(e->st.flags & CT_F_ESTABLISHED) && (!r || r->to_addr != saddr || r->to_port != l4->sport)) {
			/* Its IN half is gone, or another flow's: a new mapping. */
			bpf_map_delete_elem(&hr_snat4_new, &out);
			e = NULL;
		}
	}
	if (e) {
		ct_update(&e->st, r ? &r->st : NULL, proto, l4);
		if (r && (r->st.flags & CT_F_SEEN_REPLY) && ct_established_ready(CT_F_SEEN_REPLY | e->st.flags, proto, l4))
			nat4_promote(&out, e, &in, r);
	} else {
		port = snat4_new(&out, l4, nat_addr);
		if (!port)
			return METRIC_DROP_NAT_NO_PORT;
		verdict = CT_VERDICT_NEW;
	}
	if (rewrite4(ctx, l4, proto, 0, saddr, nat_addr, l4->sport, port) < 0)
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
	struct nat4_entry *e = nat4_lookup(&in), *r = NULL;
	__u8 proto = ip->protocol;
	__be32 to_addr;
	__be16 to_port;

	if (!e)
		return 0;
	e->st.flags |= CT_F_SEEN_REPLY;
	if (e->st.flags & NAT_F_HOST)
		return 0;
	to_addr = e->to_addr;
	to_port = e->to_port;
	if (ct_needs_peer(proto, l4)) {
		struct ct4_key out = {
			.saddr = to_addr, .daddr = ip->saddr, .sport = to_port, .dport = l4->sport,
			.proto = proto, .dir = NAT_OUT,
		};

		if (proto == IPPROTO_ICMP)
			out.dport = to_port;
		r = nat4_lookup(&out);
	}
	/* An RST out of the window changes nothing; the pod judges it too. */
	ct_update(&e->st, r ? &r->st : NULL, proto, l4);

	struct tuple4 from = { .saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport };
	struct tuple4 to = { .saddr = ip->saddr, .daddr = to_addr, .sport = l4->sport, .dport = to_port };

	if (rewrite4(ctx, l4, proto, 1, ip->daddr, to_addr, l4->dport, to_port) < 0)
		return -METRIC_DROP_NAT;
	count_xlate(ctx, dir, METRIC_XLATE_REV_SNAT, proto, l4->tcp_flags, CT_VERDICT_REPLY, 0, &from, &to);
	return 1;
}

/* snat4_host handles a packet from the node's address (source nat_addr):
 * a flow of the node's own, whose IN entry keeps its port from translated
 * flows, or one the datapath translated and sent on (a NodePort flow to
 * another node's backend), which leaves as it is. Returns 1 when a flow
 * of the node's own must be translated itself (snat4_out), because a
 * local pod's masqueraded flow holds its tuple (the pod kept its port to
 * the same peer) or it was translated before; 0 when it leaves as it is. */
static __always_inline int snat4_host(struct iphdr *ip, const struct l4 *l4)
{
	struct ct4_key out = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = NAT_OUT,
	};
	struct ct4_key in;
	struct nat4_entry *e;

	if (nat4_lookup(&out))
		return 1;
	nat4_in_key(&in, ip->daddr, l4->dport, ip->saddr, l4->sport, ip->protocol);
	e = nat4_lookup(&in);
	if (!e) {
		struct nat4_entry host = { .to_addr = ip->saddr, .to_port = l4->sport, .st.flags = NAT_F_HOST };

		host.st.expires = now_seconds() + ct_timeout(ip->protocol, 0);
		nat4_create(&in, &host);
		return 0;
	}
	if (!(e->st.flags & NAT_F_HOST))
		return !!lookup_endpoint4(e->to_addr);
	if (l4->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		e->st.flags |= CT_F_CLOSING;
	e->st.expires = now_seconds() + ct_timeout(ip->protocol, e->st.flags);
	if (ct_established_ready(e->st.flags, ip->protocol, l4))
		nat4_promote(&in, e, &in, NULL);
	return 0;
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

/* csum_update returns checksum csum after from_port became to_port and,
 * with addr (a field the checksum covers through a pseudo header or
 * itself), from_addr became to_addr (RFC 1624). */
static __always_inline __be16 csum_update(__be16 csum, __be32 from_addr, __be32 to_addr, __be16 from_port,
					  __be16 to_port, int addr)
{
	__u32 sum = (__u16)~csum + (__u16)~from_port + to_port;

	if (addr)
		sum += (__u16)~(from_addr & 0xffff) + (__u16)~(from_addr >> 16) + (to_addr & 0xffff) + (to_addr >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* quoted_l4_csum_off is where the checksum of a quoted packet of proto
 * sits: it covers the quoted addresses (through its pseudo header) and
 * ports, except an ICMP echo's, which covers its identifier only. */
static __always_inline __u32 quoted_l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? INNER_L4_OFF + 16 : proto == IPPROTO_UDP ? INNER_L4_OFF + 6 : INNER_L4_OFF + 2;
}

/* icmp_error_xlate translates an ICMP error: old_addr becomes addr in the
 * quoted header (at inner_off) and, with outer_off, in the outer one; the
 * quoted port at port_off becomes port. The outer IP, quoted IP, quoted
 * L4 (where the error quotes it) and ICMP checksums follow. Returns 0, or
 * -1 if a rewrite failed. */
static __always_inline int icmp_error_xlate(struct __sk_buff *ctx, const struct icmp_quote *q, __u32 outer_off,
					    __u32 inner_off, __be32 old_addr, __be32 addr, __u32 port_off,
					    __be16 old_port, __be16 port)
{
	__be16 ip_csum = csum_update(q->in.check, old_addr, addr, 0, 0, 1), l4_csum, l4_new;
	__u32 l4_off = quoted_l4_csum_off(q->in.protocol);

	if (outer_off && (bpf_l3_csum_replace(ctx, IP4_CSUM_OFF, old_addr, addr, 4) < 0 ||
			  bpf_skb_store_bytes(ctx, outer_off, &addr, 4, 0) < 0))
		return -1;
	if (bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, old_addr, addr, 4) < 0 ||
	    bpf_skb_store_bytes(ctx, inner_off, &addr, 4, 0) < 0 ||
	    bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, q->in.check, ip_csum, 2) < 0 ||
	    bpf_skb_store_bytes(ctx, INNER_CSUM_OFF, &ip_csum, 2, 0) < 0 ||
	    bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, old_port, port, 2) < 0 ||
	    bpf_skb_store_bytes(ctx, port_off, &port, 2, 0) < 0)
		return -1;
	/* The quoted L4 checksum, where the error carries it (a UDP
	 * datagram's 0 means none). */
	if (bpf_skb_load_bytes(ctx, l4_off, &l4_csum, 2) < 0 || (q->in.protocol == IPPROTO_UDP && !l4_csum))
		return 0;
	l4_new = csum_update(l4_csum, old_addr, addr, old_port, port, q->in.protocol != IPPROTO_ICMP);
	if (q->in.protocol == IPPROTO_UDP && !l4_new)
		l4_new = 0xffff;
	if (bpf_l4_csum_replace(ctx, ICMP_CSUM_OFF, l4_csum, l4_new, 2) < 0 ||
	    bpf_skb_store_bytes(ctx, l4_off, &l4_new, 2, 0) < 0)
		return -1;
	return 0;
}

/* lb4_icmp_error translates an ICMP error about a packet of a service
 * flow back to the client: the destination address and port of the
 * packet it quotes become the frontend the client dialled, and so does
 * its source when the backend sent it, so that the client's socket sees
 * the error (e.g. ECONNREFUSED from a UDP service without a listener, or
 * fragmentation needed from a router on the way to a NodePort's backend).
 * Returns 1 if it did, 0 for an error about no service flow, or the
 * negated metric of a drop. The packet's pointers are invalid afterwards. */
static __always_inline int lb4_icmp_error(struct __sk_buff *ctx, struct iphdr *ip)
{
	struct icmp_quote q;
	struct ct_entry *e;

	if (!load_icmp_error(ctx, ip, &q) || (q.in.protocol != IPPROTO_TCP && q.in.protocol != IPPROTO_UDP))
		return 0;
	/* The quoted packet is the flow's, as the backend got it: its
	 * reply's tuple is the CT_REPLY key. */
	struct ct4_key rk = {
		.saddr = q.in.daddr, .daddr = q.in.saddr, .sport = q.ports[1], .dport = q.ports[0],
		.proto = q.in.protocol, .dir = CT_REPLY,
	};

	e = ct4_lookup(&rk);
	if (!e || !e->nat_addr || (e->st.flags & CT_F_HAIRPIN))
		return 0;
	if (icmp_error_xlate(ctx, &q, ip->saddr == q.in.daddr ? IP4_SADDR_OFF : 0, INNER_DADDR_OFF, q.in.daddr,
			     e->nat_addr, INNER_L4_OFF + 2, q.ports[1], e->nat_port) < 0)
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

	e = nat4_lookup(&in);
	if (!e || (e->st.flags & NAT_F_HOST))
		return 0;
	if (icmp_error_xlate(ctx, &q, IP4_DADDR_OFF, INNER_SADDR_OFF, outer_daddr, e->to_addr, port_off, port,
			     e->to_port) < 0)
		return -METRIC_DROP_NAT;
	return 1;
}
