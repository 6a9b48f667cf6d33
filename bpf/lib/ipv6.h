/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv6 from a pod: the kernel routes it, after the datapath checked that
 * the pod sends from its own addresses. */
#pragma once

#include "metrics.h"
#include "parse.h"

static __always_inline struct endpoint_info *lookup_endpoint6(const struct in6_addr *addr)
{
	return bpf_map_lookup_elem(&hr_endpoints6, addr);
}

/* ipv6_source_endpoint returns the endpoint that may send from ip6's
 * source on this device: a registered address of the device's endpoint,
 * any link-local address of it, or the unspecified address towards a
 * multicast group (duplicate address detection, MLD). NULL otherwise. */
static __always_inline struct endpoint_info *ipv6_source_endpoint(struct __sk_buff *ctx, struct ipv6hdr *ip6)
{
	__u32 first = bpf_ntohl(ip6->saddr.in6_u.u6_addr32[0]);
	struct endpoint_info *ep;

	if ((first & 0xffc00000) == 0xfe800000)
		return lookup_device(ctx->ifindex);
	if (!(ip6->saddr.in6_u.u6_addr32[0] | ip6->saddr.in6_u.u6_addr32[1] | ip6->saddr.in6_u.u6_addr32[2] |
	      ip6->saddr.in6_u.u6_addr32[3]))
		return ip6->daddr.in6_u.u6_addr8[0] == 0xff ? lookup_device(ctx->ifindex) : NULL;
	ep = lookup_endpoint6(&ip6->saddr);
	return ep && ep->ifindex == ctx->ifindex ? ep : NULL;
}

/* ipv6_from_container passes a pod's IPv6 to the stack if its source is the
 * pod's own, and drops it as spoofed if not. */
static __always_inline int ipv6_from_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	struct endpoint_info *ep;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;

	if (!parse_ipv6(ctx, &eth, &ip6))
		return drop(ctx, dir, METRIC_DROP_INVALID);
	ep = ipv6_source_endpoint(ctx, ip6);
	if (!ep || !mac_equal(ep->mac, eth->h_source))
		return drop(ctx, dir, METRIC_DROP_SPOOFED);
	count_from(ep->id, ctx->len);
	return to_stack(ctx, dir);
}
