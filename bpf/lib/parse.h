/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing with bounds checks the verifier accepts. */
#pragma once

#include <linux/ip.h>
#include "common.h"

/* pull makes the first len bytes of the frame directly readable, pulling
 * them into the linear area when the kernel left them in fragments.
 * It returns 0 when the frame is shorter than len. */
static __always_inline int pull(struct __sk_buff *ctx, __u32 len)
{
	if ((void *)(long)ctx->data + len <= (void *)(long)ctx->data_end)
		return 1;
	if (ctx->len < len || bpf_skb_pull_data(ctx, len) < 0)
		return 0;
	return (void *)(long)ctx->data + len <= (void *)(long)ctx->data_end;
}

/* parse_ipv4 validates the IPv4 header behind the Ethernet header: version,
 * header length (options allowed) and total length against the frame.
 * On success *eth and *ip point into the frame. */
static __always_inline int parse_ipv4(struct __sk_buff *ctx, struct ethhdr **eth, struct iphdr **ip)
{
	struct iphdr *iph;
	__u32 hlen;

	if (!pull(ctx, ETH_HLEN + sizeof(struct iphdr)))
		return 0;
	iph = (void *)(long)ctx->data + ETH_HLEN;
	if ((void *)(iph + 1) > (void *)(long)ctx->data_end)
		return 0;
	hlen = iph->ihl * 4;
	if (iph->version != 4 || hlen < sizeof(struct iphdr))
		return 0;
	if (bpf_ntohs(iph->tot_len) < hlen || bpf_ntohs(iph->tot_len) > ctx->len - ETH_HLEN)
		return 0;
	*eth = (void *)(long)ctx->data;
	*ip = iph;
	return 1;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

/* ipv4_decrease_ttl is the kernel's ip_decrease_ttl: an incremental
 * checksum update (RFC 1624) for the one byte that changes. */
static __always_inline void ipv4_decrease_ttl(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xFFFF));
	ip->ttl--;
}
