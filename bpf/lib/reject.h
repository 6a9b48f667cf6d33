/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reject, don't blackhole: a packet for a service that has no usable
 * backend, or for an address of the service CIDR that is no service's,
 * is answered with ICMP port unreachable from the address it went to, as
 * kube-proxy's REJECT rules do, so that its sender's connect() fails at
 * once (ECONNREFUSED) instead of timing out. CONFIG.no_backend_drop drops
 * them instead. */
#pragma once

#include "metrics.h"
#include "nat.h"

#define ICMP_PORT_UNREACH 3

/* REJECT_PER_SEC: rejections each CPU sends per second at most; the rest
 * of a flood is dropped (counted as drop-no-backend). */
#define REJECT_PER_SEC 1000

struct reject_state {
	__u64 second; /* CLOCK_MONOTONIC >> 30 (about a second) of the count */
	__u32 count;  /* rejections sent in it */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct reject_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_reject SEC(".maps");

/* reject_allowed tells whether this CPU may send one more rejection. */
static __always_inline int reject_allowed(void)
{
	__u32 zero = 0;
	struct reject_state *st = bpf_map_lookup_elem(&hr_reject, &zero);
	__u64 second = bpf_ktime_get_ns() >> 30;

	if (!st)
		return 0;
	if (st->second != second) {
		st->second = second;
		st->count = 0;
	}
	return ++st->count <= REJECT_PER_SEC;
}

/* An ICMP port unreachable in place of the packet it answers: its IPv4
 * and ICMP headers, and the answered packet's IPv4 header and first 8
 * bytes. */
struct icmp_reject {
	struct iphdr ip;
	__u8 type, code;
	__be16 csum;
	__u32 unused;
	__u8 quote[28];
};

static __always_inline __u16 csum_fold(__s64 sum)
{
	__u64 s = (__u64)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

/* reject4 turns the IPv4 packet in ctx (option-less, at least 28 bytes of
 * IP) into an ICMP port unreachable to its sender, from the address it
 * went to, MACs swapped, and returns the verdict that sends it back out
 * of the device it came in by: into the pod for a pod's packet, onto the
 * wire for one from the wire. */
static __always_inline int reject4(struct __sk_buff *ctx, enum direction dir, __u32 src_id)
{
	struct icmp_reject r = {};
	__u8 macs[12], swapped[12];
	struct iphdr *orig = (struct iphdr *)r.quote;
	__s64 sum;

	if (CONFIG.no_backend_drop || !reject_allowed() || bpf_skb_load_bytes(ctx, 0, macs, 12) < 0 ||
	    bpf_skb_load_bytes(ctx, ETH_HLEN, r.quote, sizeof(r.quote)) < 0)
		return drop_endpoint(ctx, dir, METRIC_DROP_NO_BACKEND, src_id);
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = orig->daddr;
	r.ip.daddr = orig->saddr;
	r.type = ICMP_DEST_UNREACH;
	r.code = ICMP_PORT_UNREACH;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.type, sizeof(r) - sizeof(r.ip), 0);
	if (sum < 0)
		return drop_endpoint(ctx, dir, METRIC_DROP_NO_BACKEND, src_id);
	r.csum = csum_fold(sum);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0);
	if (sum < 0)
		return drop_endpoint(ctx, dir, METRIC_DROP_NO_BACKEND, src_id);
	r.ip.check = csum_fold(sum);
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_change_tail(ctx, ETH_HLEN + sizeof(r), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, 0, swapped, sizeof(swapped), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, ETH_HLEN, &r, sizeof(r), BPF_F_INVALIDATE_HASH) < 0)
		return drop_endpoint(ctx, dir, METRIC_DROP_NO_BACKEND, src_id);
	count_metric_ep(ctx, dir, METRIC_REJECT, src_id);
	return bpf_redirect(ctx->ifindex, 0);
}
