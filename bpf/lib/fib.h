/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Forwarding to other nodes: the kernel's FIB and neighbour table, without
 * the stack. */
#pragma once

#include "metrics.h"
#include "parse.h"

/* fits_mtu tells whether the packet, GSO segments included, fits the MTU
 * of the device with index ifindex. Without bpf_check_mtu it trusts the
 * FIB lookup's own check when there was one (checked), else says no. */
static __always_inline int fits_mtu(struct __sk_buff *ctx, __u32 ifindex, int checked)
{
	__u32 mtu = 0;

	if (!CONFIG.check_mtu)
		return checked;
	return bpf_check_mtu(ctx, ifindex, &mtu, 0, BPF_MTU_CHK_SEGS) == BPF_MTU_CHK_RET_SUCCESS;
}

/* set_ports gives the lookup the L4 ports, for ip rules that match them
 * (sport, dport). Fragments carry none as far as routing goes, the first
 * one included: the kernel routes every fragment of a packet alike. */
static __always_inline void set_ports(struct __sk_buff *ctx, struct iphdr *ip, __u32 len,
				      struct bpf_fib_lookup *params)
{
	__be16 ports[2];

	if ((ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) ||
	    (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) || ip->ihl * 4 + sizeof(ports) > len)
		return;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN + ip->ihl * 4, ports, sizeof(ports)) == 0) {
		params->sport = ports[0];
		params->dport = ports[1];
	}
}

static __always_inline int in_native_cidr(__be32 addr)
{
	return CONFIG.native_mask && (addr & CONFIG.native_mask) == CONFIG.native_cidr;
}

/* fib_redirect forwards an IPv4 packet of len bytes as the kernel's router
 * would, after a full FIB lookup (policy routing rules included, no
 * BPF_FIB_LOOKUP_DIRECT). The next hop is handed to bpf_redirect_neigh,
 * resolved or not: the kernel's neighbour code then keeps it fresh
 * (re-probing a stale entry) as it does for its own forwarding. Without
 * redirect_neigh a resolved next hop gets the lookup's MACs and
 * bpf_redirect, an unresolved one the stack. Whatever the kernel must
 * answer itself — ICMP for TTL, fragmentation needed (checked per skb,
 * GSO aware), unreachable, blackhole, prohibit, local destinations — goes
 * to the stack. Policy rules see the packet's addresses, TOS, protocol and
 * ports, not its mark (BPF_FIB_LOOKUP_MARK needs Linux 6.10). */
static __always_inline int fib_redirect(struct __sk_buff *ctx, enum direction dir, struct ethhdr *eth,
					struct iphdr *ip, __u32 len)
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
		return to_stack(ctx, dir);
	set_ports(ctx, ip, len, &params);
	/* A packet's own length lets the lookup check it against the route's
	 * MTU, as the kernel's forwarding does. A GSO packet's length is that
	 * of all its segments: with tot_len 0 the helper checks the skb
	 * against the device MTU instead (segments and all), and
	 * bpf_check_mtu does for unresolved next hops. */
	if (!ctx->gso_size)
		params.tot_len = len;
	ret = bpf_fib_lookup(ctx, &params, sizeof(params), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return to_stack(ctx, dir);
	if (!fits_mtu(ctx, params.ifindex, !ctx->gso_size || ret == BPF_FIB_LKUP_RET_SUCCESS))
		return to_stack(ctx, dir); /* the stack sends fragmentation needed */
	if (CONFIG.redirect_neigh) {
		struct bpf_redir_neigh nh = {
			.nh_family = AF_INET,
			.ipv4_nh = params.ipv4_dst, /* the next hop, set by the lookup */
		};

		ipv4_decrease_ttl(ip);
		count_metric(ctx, dir, METRIC_FWD_NEIGH);
		return bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0);
	}
	if (ret != BPF_FIB_LKUP_RET_SUCCESS)
		return to_stack(ctx, dir);
	ipv4_decrease_ttl(ip);
	/* The stack copy may not be read unaligned: byte-wise here. */
	__builtin_memcpy(eth->h_dest, params.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, params.smac, ETH_ALEN);
	count_metric(ctx, dir, METRIC_FWD_FIB);
	return bpf_redirect(params.ifindex, 0);
}
