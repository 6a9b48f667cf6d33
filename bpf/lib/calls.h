/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Tail-call stages: the entry programs parse the frame and jump to the
 * stage for its kind through hr_calls at a constant index, which the
 * kernel turns into a direct jump. Stages keep their state in skb->cb. New
 * stages (load balancing, conntrack, NAT, IPv6 forwarding) are new slots.
 * Every function is inlined: bpf-to-bpf calls do not mix with tail calls
 * on every architecture. */
#pragma once

#include "metrics.h"

enum call {
	CALL_IPV4_FROM_CONTAINER,
	CALL_IPV6_FROM_CONTAINER,
	CALL_ARP_FROM_CONTAINER,
	CALL_IPV4_LB,     /* to a service frontend: DNAT, then on its way */
	CALL_IPV4_REVNAT, /* from a service backend: replies translated back */
	CALL_IPV4_FROM_NETDEV, /* from the wire, with services or masquerade */
	CALL_IPV4_REJECT, /* to a service without backends: answered with port unreachable */
	CALL_IPV4_TO_CONTAINER, /* into a pod by the stack, with services: replies translated back */
	CALL_MAX,
};

int tail_ipv4_from_container(struct __sk_buff *ctx);
int tail_ipv6_from_container(struct __sk_buff *ctx);
int tail_arp_from_container(struct __sk_buff *ctx);
int tail_ipv4_lb(struct __sk_buff *ctx);
int tail_ipv4_revnat(struct __sk_buff *ctx);
int tail_ipv4_from_netdev(struct __sk_buff *ctx);
int tail_ipv4_reject(struct __sk_buff *ctx);
int tail_ipv4_to_container(struct __sk_buff *ctx);

/* One object's stages. Not pinned by name: each load has its own, which
 * the loader pins beside its programs, so that programs of an older load
 * keep their stages until they are replaced. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, CALL_MAX);
	__type(key, __u32);
	__array(values, int(struct __sk_buff *));
} hr_calls SEC(".maps") = {
	.values = {
		[CALL_IPV4_FROM_CONTAINER] = (void *)&tail_ipv4_from_container,
		[CALL_IPV6_FROM_CONTAINER] = (void *)&tail_ipv6_from_container,
		[CALL_ARP_FROM_CONTAINER] = (void *)&tail_arp_from_container,
		[CALL_IPV4_LB] = (void *)&tail_ipv4_lb,
		[CALL_IPV4_REVNAT] = (void *)&tail_ipv4_revnat,
		[CALL_IPV4_FROM_NETDEV] = (void *)&tail_ipv4_from_netdev,
		[CALL_IPV4_REJECT] = (void *)&tail_ipv4_reject,
		[CALL_IPV4_TO_CONTAINER] = (void *)&tail_ipv4_to_container,
	},
};

/* tail_call jumps to stage call; if it comes back, the stage is missing
 * (a reload replaced this program's stages): the packet is dropped rather
 * than passed unchecked. */
static __always_inline int tail_call(struct __sk_buff *ctx, enum direction dir, const enum call call)
{
	bpf_tail_call(ctx, &hr_calls, call);
	return drop(ctx, dir, METRIC_DROP_TAIL_CALL);
}
