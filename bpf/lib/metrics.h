/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters: node-wide by direction and outcome, and per endpoint. Each
 * packet a program sees is counted once, under the outcome it got. */
#pragma once

#include "common.h"

/* monitor_event reports the packet's decision m to hr_events with the
 * packet's first bytes (at most cap_len, at most 0xffff). */
static __always_inline void monitor_event(struct __sk_buff *ctx, enum direction dir, enum metric m, __u32 cap_len)
{
	struct monitor_event ev = {
		.time = bpf_ktime_get_ns(), .ifindex = ctx->ifindex, .len = ctx->len, .direction = dir, .metric = m,
	};
	__u64 cap = ctx->len < cap_len ? ctx->len : cap_len;

	cap &= 0xffff;
	ev.cap_len = cap;
	bpf_perf_event_output(ctx, &hr_events, (cap << 32) | BPF_F_CURRENT_CPU, &ev, sizeof(ev));
}

/* count_metric counts the packet's decision m, and reports it as an event
 * when the monitor asks for it. */
static __always_inline void count_metric(struct __sk_buff *ctx, enum direction dir, enum metric m)
{
	__u32 key = dir * METRIC_MAX + m, zero = 0;
	struct metric_value *v = bpf_map_lookup_elem(&hr_metrics, &key);
	struct monitor_config *mon = bpf_map_lookup_elem(&hr_monitor, &zero);

	if (v) {
		v->packets++;
		v->bytes += ctx->len;
	}
	if (mon && (mon->level == MONITOR_ALL || (mon->level == MONITOR_DROPS && ((1u << m) & METRIC_DROPS))))
		monitor_event(ctx, dir, m, mon->cap_len);
}

static __always_inline struct endpoint_stats *endpoint_stats(__u32 id)
{
	return bpf_map_lookup_elem(&hr_ep_stats, &id);
}

static __always_inline void count_from(__u32 id, __u32 bytes)
{
	struct endpoint_stats *s = endpoint_stats(id);

	if (s) {
		s->from_packets++;
		s->from_bytes += bytes;
	}
}

static __always_inline void count_to(__u32 id, __u32 bytes)
{
	struct endpoint_stats *s = endpoint_stats(id);

	if (s) {
		s->to_packets++;
		s->to_bytes += bytes;
	}
}

/* drop_endpoint counts a dropped packet against endpoint id and the
 * node-wide reason, and returns the verdict that drops it. */
static __always_inline int drop_endpoint(struct __sk_buff *ctx, enum direction dir, enum metric reason, __u32 id)
{
	struct endpoint_stats *s = endpoint_stats(id);

	if (s) {
		s->drop_packets++;
		s->drop_bytes += ctx->len;
	}
	count_metric(ctx, dir, reason);
	return TC_ACT_SHOT;
}

/* drop is drop_endpoint for a packet on a pod's device, counted against
 * the device's endpoint whatever the packet claims to be. */
static __always_inline int drop(struct __sk_buff *ctx, enum direction dir, enum metric reason)
{
	struct endpoint_info *ep = lookup_device(ctx->ifindex);

	return drop_endpoint(ctx, dir, reason, ep ? ep->id : 0);
}

static __always_inline int to_stack(struct __sk_buff *ctx, enum direction dir)
{
	count_metric(ctx, dir, METRIC_TO_STACK);
	return TC_ACT_OK;
}
