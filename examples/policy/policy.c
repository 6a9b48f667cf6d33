// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* An ingress policy as an embedder writes it against
 * bpf/include/hostrouting/policy.h: it drops packets into an endpoint from
 * the sources listed for that endpoint in its own map, and lets the rest in. */

#include <hostrouting/policy.h>

/* A denied (endpoint, source) pair: source is the sending endpoint's ID on
 * this node, 0 for everything from elsewhere (other nodes, the host). */
struct pair {
	__u32 endpoint;
	__u32 source;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct pair);
	__type(value, __u8);
	__uint(max_entries, 1024);
} denied SEC(".maps");

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("tc")
int deny_listed(struct __sk_buff *ctx)
{
	struct pair p = {
		.endpoint = ctx->cb[HR_CB_ENDPOINT_ID],
		.source = ctx->cb[HR_CB_SRC_ENDPOINT_ID],
	};

	if (bpf_map_lookup_elem(&denied, &p))
		return hr_policy_deny(ctx);
	return hr_policy_allow(ctx);
}
