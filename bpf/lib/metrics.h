/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters: node-wide by outcome, and per endpoint. */
#pragma once

#include "common.h"

static __always_inline void count_metric(enum metric m, __u32 bytes)
{
	__u32 key = m;
	struct metric_value *v = bpf_map_lookup_elem(&hr_metrics, &key);

	if (v) {
		v->packets++;
		v->bytes += bytes;
	}
}

static __always_inline struct endpoint_stats *endpoint_stats(__u32 ifindex)
{
	return bpf_map_lookup_elem(&hr_ep_stats, &ifindex);
}

static __always_inline void count_from(__u32 ifindex, __u32 bytes)
{
	struct endpoint_stats *s = endpoint_stats(ifindex);

	if (s) {
		s->from_packets++;
		s->from_bytes += bytes;
	}
}

static __always_inline void count_to(__u32 ifindex, __u32 bytes)
{
	struct endpoint_stats *s = endpoint_stats(ifindex);

	if (s) {
		s->to_packets++;
		s->to_bytes += bytes;
	}
}

/* drop counts a dropped packet against the endpoint behind ifindex and the
 * node-wide reason, and returns the verdict that drops it. */
static __always_inline int drop(struct __sk_buff *ctx, __u32 ifindex, enum metric reason)
{
	struct endpoint_stats *s = endpoint_stats(ifindex);

	if (s) {
		s->drop_packets++;
		s->drop_bytes += ctx->len;
	}
	count_metric(reason, ctx->len);
	return TC_ACT_SHOT;
}

static __always_inline int to_stack(struct __sk_buff *ctx)
{
	count_metric(METRIC_TO_STACK, ctx->len);
	return TC_ACT_OK;
}
