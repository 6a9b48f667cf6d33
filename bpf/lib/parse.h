/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Header parsing with bounds checks the verifier accepts. Packet accesses
 * are naturally aligned for a frame that starts 2 bytes into a word (as
 * the verifier assumes under BPF_F_STRICT_ALIGNMENT): MACs are read and
 * written as 16-bit words, unaligned fields byte-wise. */
#pragma once

#include <linux/ip.h>
#include <linux/ipv6.h>
#include "common.h"

#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

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

/* parse_ipv4 validates the IPv4 header behind the Ethernet header:
 * version, header length (options allowed) and total length against the
 * frame. On success *eth and *ip point into the frame and it returns the
 * IP packet's length; 0 for a malformed packet. A GSO packet of over
 * 64 KiB (BIG TCP) carries tot_len 0: its length is the skb's, as the
 * kernel's iph_totlen() says. */
static __always_inline __u32 parse_ipv4(struct __sk_buff *ctx, struct ethhdr **eth, struct iphdr **ip)
{
	struct iphdr *iph;
	__u32 hlen, len;

	if (!pull(ctx, ETH_HLEN + sizeof(struct iphdr)))
		return 0;
	iph = (void *)(long)ctx->data + ETH_HLEN;
	if ((void *)(iph + 1) > (void *)(long)ctx->data_end)
		return 0;
	hlen = iph->ihl * 4;
	if (iph->version != 4 || hlen < sizeof(struct iphdr))
		return 0;
	len = bpf_ntohs(iph->tot_len);
	if (len == 0 && ctx->gso_size)
		len = ctx->len - ETH_HLEN;
	if (len < hlen || len > ctx->len - ETH_HLEN)
		return 0;
	*eth = (void *)(long)ctx->data;
	*ip = iph;
	return len;
}

/* parse_ipv6 finds the fixed IPv6 header behind the Ethernet header. */
static __always_inline int parse_ipv6(struct __sk_buff *ctx, struct ethhdr **eth, struct ipv6hdr **ip6)
{
	struct ipv6hdr *h;

	if (!pull(ctx, ETH_HLEN + sizeof(struct ipv6hdr)))
		return 0;
	h = (void *)(long)ctx->data + ETH_HLEN;
	if ((void *)(h + 1) > (void *)(long)ctx->data_end || h->version != 6)
		return 0;
	*eth = (void *)(long)ctx->data;
	*ip6 = h;
	return 1;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	const __u16 *x = (const __u16 *)a, *y = (const __u16 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	__u16 *d = (__u16 *)dst;
	const __u16 *s = (const __u16 *)src;

	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
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
