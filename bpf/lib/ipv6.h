/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv6 from a pod: the kernel routes it, after the datapath checked that
 * the pod sends from its own addresses. */
#pragma once

#include "metrics.h"
#include "parse.h"

#define ND_ROUTER_ADVERT 134
#define ND_REDIRECT 137

/* ipv6_source_ok tells whether the endpoint ep on the packet's device may
 * send from ip6's source: its registered address, any link-local address,
 * or the unspecified address towards a multicast group (duplicate address
 * detection, MLD). */
static __always_inline int ipv6_source_ok(const struct endpoint_info *ep, const struct ipv6hdr *ip6)
{
	const __u32 *saddr = ip6->saddr.in6_u.u6_addr32, *own = (const __u32 *)ep->ipv6;

	if ((bpf_ntohl(saddr[0]) & 0xffc00000) == 0xfe800000)
		return 1;
	if (!(saddr[0] | saddr[1] | saddr[2] | saddr[3]))
		return ip6->daddr.in6_u.u6_addr8[0] == 0xff;
	return (own[0] | own[1] | own[2] | own[3]) && saddr[0] == own[0] && saddr[1] == own[1] &&
	       saddr[2] == own[2] && saddr[3] == own[3];
}

/* ipv6_from_container passes a pod's IPv6 to the stack if its source is the
 * pod's own, and drops it as spoofed if not; router advertisements and
 * redirects, which would program the node, are dropped. */
static __always_inline int ipv6_from_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	struct endpoint_info *ep;
	struct ipv6hdr *ip6;
	struct ethhdr *eth;

	if (!parse_ipv6(ctx, &eth, &ip6))
		return drop(ctx, dir, METRIC_DROP_INVALID);
	ep = lookup_device(ctx->ifindex);
	if (!ep || !ipv6_source_ok(ep, ip6) || !mac_equal(ep->mac, eth->h_source))
		return drop_endpoint(ctx, dir, METRIC_DROP_SPOOFED, ep ? ep->id : 0);
	/* A pod is no router of the node's (CVE-2020-10749). */
	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		__u8 type;

		if (bpf_skb_load_bytes(ctx, ETH_HLEN + sizeof(*ip6), &type, 1) == 0 &&
		    (type == ND_ROUTER_ADVERT || type == ND_REDIRECT))
			return drop_endpoint(ctx, dir, METRIC_DROP_ROUTER_MSG, ep->id);
	}
	count_from(ep->id, ctx->len);
	return to_stack(ctx, dir);
}
