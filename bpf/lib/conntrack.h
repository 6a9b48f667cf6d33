/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking for translated flows: the datapath's own, so that
 * service and masquerade flows need no nf_conntrack. */
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

/* Conntrack entry flags. */
enum ct_flag {
	CT_F_SEEN_REPLY = 1 << 0, /* a reply went the other way: established */
	CT_F_CLOSING = 1 << 1,    /* FIN or RST seen */
	CT_F_HAIRPIN = 1 << 2,    /* CT_REPLY: a pod's flow to itself through a service */
};

struct ct_entry {
	__u32 expires;       /* seconds of CLOCK_MONOTONIC after which it is garbage */
	__u32 backend_id;    /* CT_SERVICE: the backend the flow goes to */
	__u16 rev_nat_index; /* the service whose frontend replies come from */
	__u16 flags;         /* enum ct_flag */
	__be32 nat_addr;     /* CT_REPLY: the frontend the client dialled, */
	__be16 nat_port;     /* which replies come from */
	__u16 pad;
	__u32 pad2;
	__u64 packets;       /* packets seen in this direction */
};

/* Conntrack timeouts in seconds, as Cilium's defaults: TCP while opening,
 * established and closing; everything else. */
#define CT_TIMEOUT_TCP_SYN 60
#define CT_TIMEOUT_TCP 21600
#define CT_TIMEOUT_TCP_CLOSE 10
#define CT_TIMEOUT_ANY 60

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_ct4 SEC(".maps");

static __always_inline __u32 now_seconds(void)
{
	return bpf_ktime_get_ns() / NSEC_PER_SEC;
}

/* ct_timeout is the lifetime a packet gives its flow's entry. */
static __always_inline __u32 ct_timeout(__u8 proto, __u8 tcp_flags, __u16 entry_flags)
{
	if (proto != IPPROTO_TCP)
		return CT_TIMEOUT_ANY;
	if ((tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) || (entry_flags & CT_F_CLOSING))
		return CT_TIMEOUT_TCP_CLOSE;
	if (!(entry_flags & CT_F_SEEN_REPLY))
		return CT_TIMEOUT_TCP_SYN;
	return CT_TIMEOUT_TCP;
}

/* ct_refresh updates entry e for a packet with tcp_flags (0 for others). */
static __always_inline void ct_refresh(struct ct_entry *e, __u8 proto, __u8 tcp_flags)
{
	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		e->flags |= CT_F_CLOSING;
	e->expires = now_seconds() + ct_timeout(proto, tcp_flags, e->flags);
	e->packets++;
}
