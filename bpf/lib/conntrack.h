/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for translated flows: the datapath's own, so that
 * service and masquerade flows need no nf_conntrack.
 *
 * Flow state is shared by every tenant of a node, so the tables are laid
 * out so that no tenant can destroy another's:
 *  - A flow starts in hr_ct4_new, an LRU hash: what a flood of new flows
 *    (SYNs from the wire, one pod's datagrams) pushes out is other new
 *    flows, never an established one.
 *  - Once established (TCP: its handshake done; other protocols: a reply
 *    seen, then another packet the original way) its entries move to
 *    hr_ct4_tcp or hr_ct4_any, hashes that evict nothing: when one is full
 *    a flow stays in hr_ct4_new (counted as refused) and established flows
 *    keep their entries. TCP and other protocols are apart, so a UDP flood
 *    cannot fill TCP's table, nor the reverse.
 *  - TCP sequence numbers are tracked per direction: an RST outside the
 *    window (RFC 5961) changes nothing, and a flow closes only when both
 *    directions sent a FIN, or on an RST.
 * Entries are removed by the garbage collector (package nat) once expired. */
#pragma once

#include "common.h"
#include "parse.h"

#define NSEC_PER_SEC 1000000000ULL

/* Which way a conntrack key looks at a flow. */
enum ct_dir {
	CT_SERVICE = 1, /* client → frontend: which backend the flow took */
	CT_REPLY = 2,   /* backend → client: the reply, to be reverse-translated */
	CT_INBOUND = 3, /* pod → outside: the reply of a flow from outside, left as it is */
};

/* A flow's tuple as its packets carry it (network order). */
struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* enum ct_dir */
	__u16 pad;
};

/* Flow state flags (flow_state.flags), of conntrack and source NAT
 * entries alike. */
enum flow_flag {
	CT_F_SEEN_REPLY = 1 << 0,  /* a reply went the other way */
	CT_F_CLOSING = 1 << 1,     /* closed: a FIN each way, or an RST in the window */
	CT_F_HAIRPIN = 1 << 2,     /* CT_REPLY: a pod's flow to itself through a service */
	CT_F_ESTABLISHED = 1 << 3, /* in an established table (never evicted) */
	CT_F_FIN = 1 << 4,         /* TCP: this direction sent a FIN */
	CT_F_SEQ = 1 << 5,         /* TCP: seq_end is known */
	CT_F_REPLY_FIN = 1 << 6,   /* CT_INBOUND: the pod sent a FIN */
};

/* One direction of a flow, as conntrack and source NAT entries start. */
struct flow_state {
	__u32 expires; /* seconds of CLOCK_MONOTONIC after which it is garbage */
	__u16 flags;   /* enum flow_flag */
	__u16 pad;
	__u32 seq_end; /* TCP: the sequence number after the last this direction sent (host order) */
};

struct ct_entry {
	struct flow_state st;
	__u32 backend_id;    /* CT_SERVICE: the backend the flow goes to */
	__u16 rev_nat_index; /* the service whose frontend replies come from */
	__be16 nat_port;     /* CT_REPLY: the frontend the client dialled, */
	__be32 nat_addr;     /* which replies come from */
	__u64 packets;       /* packets seen in this direction */
};

/* Conntrack timeouts in seconds, as Cilium's defaults: TCP while opening,
 * established and closing; everything else. */
#define CT_TIMEOUT_TCP_SYN 60
#define CT_TIMEOUT_TCP 21600
#define CT_TIMEOUT_TCP_CLOSE 10
#define CT_TIMEOUT_ANY 60

/* CT_RST_WINDOW: how far an RST's sequence number may be from the next
 * one its sender was seen to owe and still close the flow. A stack's RST
 * carries exactly that one; a forged one guesses 1 in 2^15. */
#define CT_RST_WINDOW 65536

/* Established flows: TCP, and everything else (sized by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ct4_tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 32768);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ct4_any SEC(".maps");

/* Flows not established yet, of every protocol. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 32768);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ct4_new SEC(".maps");

/* What happened to flows, per table class and CPU (hr_ct_stats). */
enum ct_class {
	CT_CLASS_CT_TCP,   /* conntrack, TCP */
	CT_CLASS_CT_ANY,   /* conntrack, other protocols */
	CT_CLASS_NAT_TCP,  /* source NAT, TCP */
	CT_CLASS_NAT_ANY,  /* source NAT, other protocols */
	CT_CLASS_MAX,
};

enum ct_stat {
	CT_STAT_CREATED,  /* a new flow's entries made (in the table of new flows) */
	CT_STAT_PROMOTED, /* a flow established: moved to its class's established table */
	CT_STAT_REFUSED,  /* the established table was full: the flow stays with the new ones */
	CT_STAT_FAILED,   /* a new flow's entries could not be made: its packet was dropped */
	CT_STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CT_CLASS_MAX * CT_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ct_stats SEC(".maps");

static __always_inline void ct_count(enum ct_class class, enum ct_stat stat)
{
	__u32 key = class * CT_STAT_MAX + stat;
	__u64 *v = bpf_map_lookup_elem(&hr_ct_stats, &key);

	if (v)
		(*v)++;
}

/* A TCP or UDP packet's ports and, for TCP, its flags, sequence and
 * acknowledgement numbers (host order) and the sequence space it takes. */
struct l4 {
	__be16 sport;
	__be16 dport;
	__u8 tcp_flags;
	__u8 later;   /* a fragment after the first: no L4 header, the ports its first fragment had */
	__u8 pad[2];
	__u32 seq;
	__u32 ack;
	__u32 seq_len; /* payload bytes, plus one for a SYN and one for a FIN */
};

static __always_inline __u32 now_seconds(void)
{
	/* Seconds need no precise clock: the coarse one is a load where
	 * the kernel has it (a ktime read cost ~100 ns a packet here). */
	return (CONFIG.coarse_clock ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns()) / NSEC_PER_SEC;
}

/* ct_timeout is the lifetime a packet gives an entry with flags. */
static __always_inline __u32 ct_timeout(__u8 proto, __u16 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_ANY;
	if (flags & CT_F_CLOSING)
		return CT_TIMEOUT_TCP_CLOSE;
	if (!(flags & CT_F_SEEN_REPLY))
		return CT_TIMEOUT_TCP_SYN;
	return CT_TIMEOUT_TCP;
}

/* seq_near tells whether sequence number seq is within CT_RST_WINDOW of
 * ref, either side. */
static __always_inline int seq_near(__u32 seq, __u32 ref)
{
	__s32 d = (__s32)(seq - ref);

	return d >= -CT_RST_WINDOW && d <= CT_RST_WINDOW;
}

/* tcp_rst_ok tells whether an RST may close a flow: its sequence number
 * is near the one its sender (whose seq_end and flags are own) owes, or,
 * while that is not known (an RST answering the first SYN), it
 * acknowledges what the other side (peer) sent. With neither known, it
 * may. */
static __always_inline int tcp_rst_ok(__u16 own_flags, __u32 own_seq, __u16 peer_flags, __u32 peer_seq,
				      const struct l4 *l4)
{
	if (own_flags & CT_F_SEQ)
		return seq_near(l4->seq, own_seq);
	if (peer_flags & CT_F_SEQ)
		return (l4->tcp_flags & TCP_FLAG_ACK) && seq_near(l4->ack, peer_seq);
	return 1;
}

/* tcp_track advances *seq_end and *flags (CT_F_SEQ, CT_F_FIN) of one
 * direction for a segment of it that is no RST. A segment far from the
 * sequence number its sender owes (a forged SYN or FIN) changes nothing:
 * its sender's segments follow on from what this direction sent. */
static __always_inline void tcp_track(__u32 *seq_end, __u16 *flags, const struct l4 *l4)
{
	__u32 end = l4->seq + l4->seq_len;

	if ((*flags & CT_F_SEQ) && !seq_near(l4->seq, *seq_end))
		return;
	if (!(*flags & CT_F_SEQ) || (__s32)(end - *seq_end) > 0)
		*seq_end = end;
	*flags |= CT_F_SEQ;
	if (l4->tcp_flags & TCP_FLAG_FIN)
		*flags |= CT_F_FIN;
}

/* ct_update renews entry e for a packet of its direction; peer is the
 * other direction's entry, NULL if the caller does not have it at hand
 * (it must for a TCP FIN or RST: ct_needs_peer). An RST outside the
 * window changes nothing: returns 0 for it, else 1. */
static __always_inline int ct_update(struct flow_state *e, struct flow_state *peer, __u8 proto, const struct l4 *l4)
{
	__u32 now = now_seconds();

	if (proto == IPPROTO_TCP) {
		if (l4->tcp_flags & TCP_FLAG_RST) {
			if (!tcp_rst_ok(e->flags, e->seq_end, peer ? peer->flags : 0, peer ? peer->seq_end : 0, l4))
				return 0;
			e->flags |= CT_F_CLOSING;
			if (peer)
				peer->flags |= CT_F_CLOSING;
		} else {
			tcp_track(&e->seq_end, &e->flags, l4);
			if (peer && (e->flags & CT_F_FIN) && (peer->flags & CT_F_FIN)) {
				e->flags |= CT_F_CLOSING;
				peer->flags |= CT_F_CLOSING;
			}
		}
		if (peer && (peer->flags & CT_F_CLOSING))
			peer->expires = now + CT_TIMEOUT_TCP_CLOSE;
	}
	e->expires = now + ct_timeout(proto, e->flags);
	return 1;
}

/* ct_needs_peer tells whether ct_update needs the other direction's
 * entry for a packet. */
static __always_inline int ct_needs_peer(__u8 proto, const struct l4 *l4)
{
	return proto == IPPROTO_TCP && (l4->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST));
}

/* ct_established_ready tells whether a flow whose originator sent this
 * packet is established now: a reply was seen (flags of its entry), and
 * for TCP this is the handshake's last ACK or later. */
static __always_inline int ct_established_ready(__u16 flags, __u8 proto, const struct l4 *l4)
{
	if (!(flags & CT_F_SEEN_REPLY) || (flags & (CT_F_ESTABLISHED | CT_F_CLOSING)))
		return 0;
	return proto != IPPROTO_TCP ||
	       (l4->tcp_flags & (TCP_FLAG_ACK | TCP_FLAG_SYN | TCP_FLAG_RST | TCP_FLAG_FIN)) == TCP_FLAG_ACK;
}

/* ct4_lookup finds the entry at k: among the established flows of its
 * protocol, else the new ones. */
static __always_inline struct ct_entry *ct4_lookup(const struct ct4_key *k)
{
	struct ct_entry *e;

	if (k->proto == IPPROTO_TCP)
		e = bpf_map_lookup_elem(&hr_ct4_tcp, k);
	else
		e = bpf_map_lookup_elem(&hr_ct4_any, k);
	if (e)
		return e;
	return bpf_map_lookup_elem(&hr_ct4_new, k);
}

#define EEXIST 17

/* ct4_create makes the entry at k with value v among the new flows, unless
 * another CPU just did: either way it returns the entry there, NULL if
 * none could be made. */
static __always_inline struct ct_entry *ct4_create(const struct ct4_key *k, const struct ct_entry *v)
{
	long err = bpf_map_update_elem(&hr_ct4_new, k, v, BPF_NOEXIST);

	if (err && err != -EEXIST)
		return NULL;
	return bpf_map_lookup_elem(&hr_ct4_new, k);
}

/* ct4_class is the statistics class of a conntrack flow of proto. */
static __always_inline enum ct_class ct4_class(__u8 proto)
{
	return proto == IPPROTO_TCP ? CT_CLASS_CT_TCP : CT_CLASS_CT_ANY;
}

/* ct4_insert_established puts v at k among the established flows of k's
 * protocol, unless it is there already. Returns 0, or -1 if that table is
 * full. */
static __always_inline int ct4_insert_established(const struct ct4_key *k, struct ct_entry *v)
{
	long err;

	v->st.flags |= CT_F_ESTABLISHED;
	if (k->proto == IPPROTO_TCP)
		err = bpf_map_update_elem(&hr_ct4_tcp, k, v, BPF_NOEXIST);
	else
		err = bpf_map_update_elem(&hr_ct4_any, k, v, BPF_NOEXIST);
	return err && err != -EEXIST ? -1 : 0;
}

static __always_inline void ct4_delete_established(const struct ct4_key *k)
{
	if (k->proto == IPPROTO_TCP)
		bpf_map_delete_elem(&hr_ct4_tcp, k);
	else
		bpf_map_delete_elem(&hr_ct4_any, k);
}

/* ct4_promote_flow moves a flow's entries (a at ka; b at kb, or none) from
 * the new flows to the established ones, counted; when the table has no
 * room for both, neither moves. a and b are not valid afterwards. */
static __always_inline void ct4_promote_flow(const struct ct4_key *ka, struct ct_entry *a, const struct ct4_key *kb,
					     struct ct_entry *b)
{
	enum ct_class class = ct4_class(ka->proto);
	int move_a = !(a->st.flags & CT_F_ESTABLISHED), move_b = b && !(b->st.flags & CT_F_ESTABLISHED);
	struct ct_entry va = *a, vb = {};

	if (b)
		vb = *b;
	if (move_a && ct4_insert_established(ka, &va) < 0) {
		ct_count(class, CT_STAT_REFUSED);
		return;
	}
	if (move_b && ct4_insert_established(kb, &vb) < 0) {
		if (move_a)
			ct4_delete_established(ka);
		ct_count(class, CT_STAT_REFUSED);
		return;
	}
	if (move_a)
		bpf_map_delete_elem(&hr_ct4_new, ka);
	if (move_b)
		bpf_map_delete_elem(&hr_ct4_new, kb);
	ct_count(class, CT_STAT_PROMOTED);
}
