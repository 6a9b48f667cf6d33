/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Delivery to endpoints of this node, through the endpoint's ingress
 * policy slot. */
#pragma once

#include "../include/hostrouting/policy.h"
#include "metrics.h"
#include "parse.h"

/* How a packet into an endpoint is finished once its policy allowed it. */
enum delivery {
	DELIVER_PEER,  /* bpf_redirect_peer into the endpoint's netns */
	DELIVER_STACK, /* TC_ACT_OK: the stack delivers it (to-container) */
};

/* Ingress policies by endpoint ID, put there by the embedder. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1025);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_policy SEC(".maps");

/* The datapath's own state in skb->cb[HR_CB_DATAPATH] across the policy's
 * tail calls: the direction and the delivery. */
static __always_inline __u32 datapath_state(enum direction dir, enum delivery how)
{
	return dir | how << 8;
}

/* deliver counts a packet that may enter endpoint id and lets it in. */
static __always_inline int deliver(struct __sk_buff *ctx, enum direction dir, enum delivery how, __u32 id,
				   __u32 ifindex)
{
	count_to(id, ctx->len);
	if (CONFIG.redirect_peer && how == DELIVER_PEER) {
		count_metric_ep(ctx, dir, METRIC_FWD_PEER, id);
		return bpf_redirect_peer(ifindex, 0);
	}
	count_metric_ep(ctx, dir, METRIC_PASS, id);
	return TC_ACT_OK;
}

/* to_endpoint is the per-endpoint ingress step: the endpoint's policy, if
 * it has one, then deliver. src_id is the sending endpoint of this node,
 * 0 for others. */
static __always_inline int to_endpoint(struct __sk_buff *ctx, enum direction dir, enum delivery how,
				       const struct endpoint_info *ep, __u32 src_id)
{
	if (ep->flags & ENDPOINT_F_POLICY) {
		ctx->cb[HR_CB_ENDPOINT_ID] = ep->id;
		ctx->cb[HR_CB_SRC_ENDPOINT_ID] = src_id;
		ctx->cb[HR_CB_IFINDEX] = ep->ifindex;
		ctx->cb[HR_CB_DATAPATH] = datapath_state(dir, how);
		bpf_tail_call(ctx, &hr_policy, ep->id);
		/* The slot is empty: its policy is being removed (the flag
		 * goes first), so the endpoint is open again. */
	}
	return deliver(ctx, dir, how, ep->id, ep->ifindex);
}

/* policy_verdict finishes a packet its policy decided on: the stages
 * behind hr_policy_ret. */
static __always_inline int policy_verdict(struct __sk_buff *ctx, int allow)
{
	__u32 state = ctx->cb[HR_CB_DATAPATH];
	enum direction dir = state & 0xff;
	__u32 id = ctx->cb[HR_CB_ENDPOINT_ID];

	if (dir >= DIR_MAX) /* not from a datapath program: nothing to finish */
		return TC_ACT_SHOT;
	if (!allow)
		return drop_endpoint(ctx, dir, METRIC_DROP_POLICY, id);
	return deliver(ctx, dir, state >> 8 & 0xff, id, ctx->cb[HR_CB_IFINDEX]);
}

/* local_delivery forwards an IPv4 packet to an endpoint of this node as a
 * router would (MACs rewritten, TTL decremented) and hands it through the
 * endpoint's policy straight to the pod's netns with bpf_redirect_peer.
 * Without redirect_peer it redirects to the host-side device, whose tc
 * egress (to-container) runs the policy. */
static __always_inline int local_delivery(struct __sk_buff *ctx, enum direction dir, struct ethhdr *eth,
					  struct iphdr *ip, const struct endpoint_info *ep, __u32 src_id)
{
	if (ip->ttl <= 1) /* the kernel answers with ICMP time exceeded */
		return to_stack(ctx, dir);
	ipv4_decrease_ttl(ip);
	mac_copy(eth->h_dest, ep->mac);
	mac_copy(eth->h_source, ep->node_mac);

	if (!CONFIG.redirect_peer) {
		count_metric_ep(ctx, dir, METRIC_FWD_REDIRECT, ep->id);
		return bpf_redirect(ep->ifindex, 0);
	}
	return to_endpoint(ctx, dir, DELIVER_PEER, ep, src_id);
}
