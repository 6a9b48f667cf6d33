/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Delivery to endpoints of this node and the to-container step. */
#pragma once

#include "metrics.h"
#include "parse.h"

/* Verdicts of the ingress policy hook. */
enum policy_verdict {
	POLICY_ALLOW = 0,
	POLICY_DROP = 1,
};

/* hr_ingress_policy is the embedder's slot: every IPv4 packet into an
 * endpoint passes it, on the BPF path and on the stack's. It allows all.
 * An embedding CNI replaces it at run time with a BPF_PROG_TYPE_EXT
 * program of the same signature (freplace), which returns POLICY_ALLOW or
 * POLICY_DROP; see datapath.Datapath.AttachIngressPolicy. It must stay
 * global and not inlined so that its BTF function can be replaced. */
__attribute__((noinline)) int hr_ingress_policy(struct __sk_buff *ctx, __u32 endpoint_id)
{
	int verdict = POLICY_ALLOW;

	/* Keep the compiler from folding the verdict into the callers or
	 * dropping the arguments a replacement needs. */
	asm volatile("" : "+r"(verdict) : "r"(ctx), "r"(endpoint_id));
	return verdict;
}

/* to_container_step is the per-endpoint ingress step: policy, then counters.
 * It returns 0 when the packet may be delivered to ep. */
static __always_inline int to_container_step(struct __sk_buff *ctx, const struct endpoint_info *ep)
{
	__u32 ifindex = ep->ifindex;

	if (hr_ingress_policy(ctx, ep->id) != POLICY_ALLOW) {
		drop(ctx, ifindex, METRIC_DROP_POLICY);
		return -1;
	}
	count_to(ifindex, ctx->len);
	return 0;
}

/* local_delivery forwards an IPv4 packet to an endpoint of this node as a
 * router would (MACs rewritten, TTL decremented) and hands it straight to
 * the pod's netns with bpf_redirect_peer. Without redirect_peer it
 * redirects to the host-side device, whose tc egress runs to-container. */
static __always_inline int local_delivery(struct __sk_buff *ctx, struct ethhdr *eth,
					  struct iphdr *ip, const struct endpoint_info *ep)
{
	if (ip->ttl <= 1) /* the kernel answers with ICMP time exceeded */
		return to_stack(ctx);
	ipv4_decrease_ttl(ip);
	mac_copy(eth->h_dest, ep->mac);
	mac_copy(eth->h_source, ep->node_mac);

	if (!CONFIG.redirect_peer) {
		count_metric(METRIC_FWD_REDIRECT, ctx->len);
		return bpf_redirect(ep->ifindex, 0);
	}
	if (to_container_step(ctx, ep) < 0)
		return TC_ACT_SHOT;
	count_metric(METRIC_FWD_PEER, ctx->len);
	return bpf_redirect_peer(ep->ifindex, 0);
}
