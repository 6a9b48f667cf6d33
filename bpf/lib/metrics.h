/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Counters: node-wide by direction and outcome, and per endpoint. Each
 * packet a program sees is counted once, under the outcome it got, and
 * once more per translation it undergoes. The monitor reports them as
 * events (hr_events) as hr_monitor asks. */
#pragma once

#include "parse.h"

static __always_inline void count(struct __sk_buff *ctx, enum direction dir, enum metric m)
{
	__u32 key = dir * METRIC_MAX + m;
	struct metric_value *v = bpf_map_lookup_elem(&hr_metrics, &key);

	if (v) {
		v->packets++;
		v->bytes += ctx->len;
	}
}

static __always_inline struct monitor_config *monitor_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&hr_monitor, &zero);
}

/* tcp_state_change tells whether an IPv4 packet is a TCP segment that
 * opens or closes its connection (SYN, FIN or RST). */
static __always_inline int tcp_state_change(struct __sk_buff *ctx)
{
	__u8 ip[10], flags;

	if (ctx->protocol != bpf_htons(ETH_P_IP) || bpf_skb_load_bytes(ctx, ETH_HLEN, ip, sizeof(ip)) < 0 ||
	    ip[9] != IPPROTO_TCP || (ip[6] & 0x3f) || ip[7])
		return 0;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN + (ip[0] & 0xf) * 4 + 13, &flags, 1) < 0)
		return 0;
	return flags & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST);
}

/* monitor_wants tells whether the monitor's level asks for an event on a
 * packet whose decision is m. */
static __always_inline int monitor_wants(struct __sk_buff *ctx, const struct monitor_config *mon, enum metric m)
{
	switch (mon->level) {
	case MONITOR_ALL:
		return 1;
	case MONITOR_DROPS:
		return (1u << m) & METRIC_DROPS;
	case MONITOR_CONNECTIONS:
		return ((1u << m) & METRIC_DROPS) || tcp_state_change(ctx);
	}
	return 0;
}

/* MONITOR_BACKOFF_NS is how long a CPU sends no event after a reader's
 * ring was full: 100 µs, some 30 packets of a flood. */
#define MONITOR_BACKOFF_NS 100000
#define ENOSPC 28

/* monitor_output sends an event of size bytes at data, with the packet's
 * first bytes as flags say, unless this CPU backs off after a full ring. */
static __always_inline void monitor_output(struct __sk_buff *ctx, __u64 flags, void *data, __u64 size, __u64 now)
{
	__u32 zero = 0;
	struct monitor_state *st = bpf_map_lookup_elem(&hr_monitor_state, &zero);

	if (st && now < st->retry_after) {
		st->skipped++;
		return;
	}
	if (bpf_perf_event_output(ctx, &hr_events, flags, data, size) == -ENOSPC && st)
		st->retry_after = now + MONITOR_BACKOFF_NS;
}

/* count_metric_ep counts the packet's decision m, and reports it to
 * hr_events with the packet's first bytes (at most cap_len, at most
 * 0xffff) when the monitor asks for it. The event names endpoint id: the
 * one the packet enters, or is dropped for (0: none, or not known here). */
static __always_inline void count_metric_ep(struct __sk_buff *ctx, enum direction dir, enum metric m, __u32 id)
{
	struct monitor_config *mon = monitor_config();

	count(ctx, dir, m);
	if (mon && mon->level != MONITOR_OFF && monitor_wants(ctx, mon, m)) {
		struct monitor_event ev = {
			.time = bpf_ktime_get_ns(), .ifindex = ctx->ifindex, .len = ctx->len, .direction = dir, .metric = m,
			.endpoint = id,
		};
		__u64 cap = ctx->len < mon->cap_len ? ctx->len : mon->cap_len;

		cap &= 0xffff;
		ev.cap_len = cap;
		monitor_output(ctx, (cap << 32) | BPF_F_CURRENT_CPU, &ev, sizeof(ev), ev.time);
	}
}

/* count_metric is count_metric_ep for a packet that enters no endpoint. */
static __always_inline void count_metric(struct __sk_buff *ctx, enum direction dir, enum metric m)
{
	count_metric_ep(ctx, dir, m, 0);
}

/* count_xlate counts a translation (kind, one of METRIC_XLATE_*), besides
 * the packet's decision, and reports it with its tuples before and after
 * and conntrack's verdict when the monitor asks: at MONITOR_ALL always,
 * at MONITOR_CONNECTIONS when it starts or closes a flow. */
static __always_inline void count_xlate(struct __sk_buff *ctx, enum direction dir, enum metric kind,
					__u8 proto, __u8 tcp_flags, __u8 ct, __u16 rev_nat,
					const struct tuple4 *from, const struct tuple4 *to)
{
	struct monitor_config *mon = monitor_config();

	count(ctx, dir, kind);
	if (mon && (mon->level == MONITOR_ALL ||
		    (mon->level == MONITOR_CONNECTIONS &&
		     (ct == CT_VERDICT_NEW || (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))))) {
		struct monitor_xlate ev = {
			.hdr = { .time = bpf_ktime_get_ns(), .ifindex = ctx->ifindex, .len = ctx->len,
				 .direction = dir, .metric = kind, .type = EVENT_XLATE },
			.rev_nat = rev_nat, .proto = proto, .ct = ct, .from = *from, .to = *to,
		};

		monitor_output(ctx, BPF_F_CURRENT_CPU, &ev, sizeof(ev), ev.hdr.time);
	}
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
	count_metric_ep(ctx, dir, reason, id);
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
