/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The contract between the hostrouting datapath and an embedder's ingress
 * policy. Include this header in the policy's C file:
 *
 *	#include <hostrouting/policy.h>
 *
 *	SEC("tc")
 *	int my_policy(struct __sk_buff *ctx)
 *	{
 *		if (ctx->cb[HR_CB_SRC_ENDPOINT_ID] == 7)
 *			return hr_policy_deny(ctx);
 *		return hr_policy_allow(ctx);
 *	}
 *
 * The datapath tail-calls the policy (a BPF_PROG_TYPE_SCHED_CLS program)
 * for every packet into an endpoint whose slot holds it: on the BPF path
 * just before bpf_redirect_peer, and on the stack's path from
 * to-container. The frame is as it will be delivered (MACs rewritten, TTL
 * decremented) and starts with its Ethernet header; the skb->cb words below
 * say who it is for. The policy must not change the frame or the cb words,
 * and must end with hr_policy_allow or hr_policy_deny: they hand the packet
 * back to the datapath, which counts it and delivers or drops it. Any other
 * return is the packet's final tc verdict, uncounted.
 *
 * Load the policy with the node's hr_policy_ret map in place of the one
 * declared here (datapath.Datapath.PolicyMapReplacements), then put it in
 * an endpoint's slot (datapath.Datapath.SetIngressPolicy). The datapath may
 * reach the policy through a tail call itself, so the policy may make at
 * most 30 tail calls of its own and, as every tail call target, no
 * bpf-to-bpf calls (inline everything).
 */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

/* skb->cb words the datapath fills before calling a policy. */
enum hr_cb {
	HR_CB_ENDPOINT_ID = 0,     /* ID of the endpoint the packet is for */
	HR_CB_SRC_ENDPOINT_ID = 1, /* ID of the sending endpoint of this node; 0 if from elsewhere */
	HR_CB_IFINDEX = 2,         /* the endpoint's host-side device */
	HR_CB_DATAPATH = 3,        /* the datapath's own state: leave it alone */
};

/* Slots of hr_policy_ret: where a policy hands its verdict back. */
enum hr_policy_verdict {
	HR_POLICY_ALLOW = 0,
	HR_POLICY_DENY = 1,
};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_policy_ret SEC(".maps");

/* hr_policy_allow lets the packet into the endpoint. */
static __always_inline int hr_policy_allow(struct __sk_buff *ctx)
{
	bpf_tail_call(ctx, &hr_policy_ret, HR_POLICY_ALLOW);
	return TC_ACT_SHOT; /* the policy was not loaded with the node's hr_policy_ret */
}

/* hr_policy_deny drops the packet, counted as a policy drop. */
static __always_inline int hr_policy_deny(struct __sk_buff *ctx)
{
	bpf_tail_call(ctx, &hr_policy_ret, HR_POLICY_DENY);
	return TC_ACT_SHOT;
}
