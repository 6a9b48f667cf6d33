// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* The hostrouting datapath: one object per node, every endpoint shares its
 * programs and finds its facts in the maps of lib/common.h.
 *
 *   from_container  tc ingress of a pod's host-side device (what the pod sends)
 *   to_container    tc egress of a pod's host-side device (what the stack
 *                   delivers into the pod); the same step runs inline before
 *                   bpf_redirect_peer on the BPF path
 *   from_netdev     tc ingress of the node's device (what other nodes send)
 *   to_netdev       tc egress of the node's device (what leaves the node)
 */

#include "lib/common.h"
#include "lib/metrics.h"
#include "lib/parse.h"
#include "lib/arp.h"
#include "lib/local.h"
#include "lib/fib.h"

char __license[] SEC("license") = "Dual BSD/GPL";

static __always_inline int from_container_ipv4(struct __sk_buff *ctx)
{
	struct endpoint_info *src, *dst;
	struct ethhdr *eth;
	struct iphdr *ip;

	if (!parse_ipv4(ctx, &eth, &ip))
		return drop(ctx, ctx->ifindex, METRIC_DROP_INVALID);

	src = lookup_endpoint4(ip->saddr);
	if (!src || src->ifindex != ctx->ifindex || !mac_equal(src->mac, eth->h_source))
		return drop(ctx, ctx->ifindex, METRIC_DROP_SPOOFED);
	count_from(ctx->ifindex, ctx->len);

	dst = lookup_endpoint4(ip->daddr);
	if (dst)
		return local_delivery(ctx, eth, ip, dst);
	if (CONFIG.fib_lookup && in_native_cidr(ip->daddr))
		return fib_redirect(ctx, eth, ip);
	return to_stack(ctx);
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	struct ethhdr *eth;

	/* A tag the kernel took off: the stack knows the pod's VLANs (none,
	 * on a host-side device) and drops what it should. */
	if (ctx->vlan_present)
		return to_stack(ctx);
	if (!pull(ctx, ETH_HLEN))
		return drop(ctx, ctx->ifindex, METRIC_DROP_INVALID);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return drop(ctx, ctx->ifindex, METRIC_DROP_INVALID);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return from_container_ipv4(ctx);
	case bpf_htons(ETH_P_ARP):
		return from_container_arp(ctx);
	case bpf_htons(ETH_P_IPV6):
		/* Not carried by the datapath yet: the kernel routes it. */
		return to_stack(ctx);
	default:
		return drop(ctx, ctx->ifindex, METRIC_DROP_UNKNOWN_L3);
	}
}

SEC("tc")
int to_container(struct __sk_buff *ctx)
{
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct iphdr *ip;

	if (parse_ipv4(ctx, &eth, &ip)) {
		ep = lookup_endpoint4(ip->daddr);
		if (ep && ep->ifindex == ctx->ifindex)
			return to_container_step(ctx, ep) < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	}
	count_to(ctx->ifindex, ctx->len);
	return TC_ACT_OK;
}

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct iphdr *ip;

	/* Only untagged IPv4 sent to this node: leave the rest, and whatever
	 * is not well-formed, to the kernel as if nothing were attached. */
	if (ctx->pkt_type != PACKET_HOST || ctx->vlan_present || ctx->protocol != bpf_htons(ETH_P_IP) ||
	    !parse_ipv4(ctx, &eth, &ip))
		return to_stack(ctx);
	ep = lookup_endpoint4(ip->daddr);
	if (ep)
		return local_delivery(ctx, eth, ip, ep);
	return to_stack(ctx);
}

SEC("tc")
int to_netdev(struct __sk_buff *ctx)
{
	count_metric(METRIC_TO_NETDEV, ctx->len);
	return TC_ACT_OK;
}
