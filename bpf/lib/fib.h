/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding to other nodes: the kernel's FIB and neighbour table, without
 * the stack. */
#pragma once

#include "metrics.h"
#include "parse.h"

static __always_inline int in_native_cidr(__be32 addr)
{
	return CONFIG.native_mask && (addr & CONFIG.native_mask) == CONFIG.native_cidr;
}

/* fib_redirect forwards an IPv4 packet as the kernel's router would, after
 * a full FIB lookup (policy routing rules included, no
 * BPF_FIB_LOOKUP_DIRECT). A resolved next hop gets its MACs and
 * bpf_redirect; an unresolved one goes with bpf_redirect_neigh, which
 * resolves it. Whatever the kernel must answer itself — ICMP for TTL,
 * fragmentation needed (checked per skb, GSO aware), unreachable,
 * blackhole, prohibit, local destinations — goes to the stack. */
static __always_inline int fib_redirect(struct __sk_buff *ctx, struct ethhdr *eth, struct iphdr *ip)
{
	struct bpf_fib_lookup params = {
		.family = AF_INET,
		.tos = ip->tos,
		.l4_protocol = ip->protocol,
		.ipv4_src = ip->saddr,
		.ipv4_dst = ip->daddr,
		.ifindex = ctx->ifindex,
	};
	long ret;

	if (ip->ttl <= 1)
		return to_stack(ctx);
	/* tot_len 0: the helper checks the skb against the egress MTU. */
	ret = bpf_fib_lookup(ctx, &params, sizeof(params), 0);
	if (ret == BPF_FIB_LKUP_RET_SUCCESS) {
		ipv4_decrease_ttl(ip);
		/* The stack copy may not be read unaligned: byte-wise here. */
		__builtin_memcpy(eth->h_dest, params.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, params.smac, ETH_ALEN);
		count_metric(METRIC_FWD_FIB, ctx->len);
		return bpf_redirect(params.ifindex, 0);
	}
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH && CONFIG.redirect_neigh) {
		struct bpf_redir_neigh nh = {
			.nh_family = AF_INET,
			.ipv4_nh = params.ipv4_dst, /* the next hop, set by the lookup */
		};

		ipv4_decrease_ttl(ip);
		count_metric(METRIC_FWD_NEIGH, ctx->len);
		return bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0);
	}
	return to_stack(ctx);
}
