/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket-level load balancing (cgroup v2 hooks): a socket that connects
 * or sends to a service frontend is given a backend before any packet
 * exists, so its packets need no translation; replies and the peer's name
 * are shown as the frontend again. The tc load balancer serves what these
 * hooks do not see (sockets outside the cgroup, traffic from the wire). */
#pragma once

#include "lb.h"
#include "nat.h"

/* A socket's view of a backend it was given, for its replies. */
struct sock4_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock4_key);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hr_sock4_revnat SEC(".maps");

/* sock4_skip tells whether a socket is left to the tc load balancer: with
 * socket LB for the node's own namespace only (service meshes redirect
 * pods' connections and need to see the frontend), a pod's sockets. */
static __always_inline int sock4_skip(void *ctx)
{
	return CONFIG.sock_hostns_only && bpf_get_netns_cookie(ctx) != CONFIG.netns_cookie;
}

#define ECONNREFUSED 111

/* sock4_xlate gives a socket that connects or sends to a frontend one of
 * its backends. Returns 0 when it must be refused instead: a service
 * without usable backends, or an address of the service CIDR that is no
 * frontend or a ClusterIP on a port it does not serve (unless CONFIG
 * drops those), else 1. */
static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	struct lb4_key key = {
		.address = ctx->user_ip4, .dport = (__be16)ctx->user_port, .proto = (__u8)ctx->protocol,
	};
	struct lb4_service *svc;
	struct lb4_backend *be;
	__u32 id;

	if (!lb_enabled() || sock4_skip(ctx))
		return 1;
	svc = lb4_lookup_frontend(&key, bpf_get_netns_cookie(ctx) == CONFIG.netns_cookie);
	if (!svc)
		return CONFIG.no_backend_drop || !unserved(key.address);
	/* A socket's source is not known yet: a frontend with source ranges
	 * is the tc load balancer's, which sees it. */
	if (svc->flags & LB_F_SOURCE_RANGES)
		return 1;
	/* The node's sockets are inside traffic: the internal scope, where
	 * a service has one. */
	if (svc->flags & LB_F_TWO_SCOPES) {
		key.scope = LB_SCOPE_INTERNAL;
		svc = bpf_map_lookup_elem(&hr_lb4_services, &key);
		if (!svc)
			return 1;
	}
	be = lb4_select(&key, svc, bpf_get_netns_cookie(ctx), bpf_get_prandom_u32(), &id);
	if (!be)
		return CONFIG.no_backend_drop; /* dropped: the tc load balancer counts it */

	struct sock4_key sk = {
		.cookie = bpf_get_socket_cookie(ctx), .address = be->address, .port = be->port,
	};
	struct lb4_reverse_nat rn = { .address = ctx->user_ip4, .port = (__be16)ctx->user_port };

	bpf_map_update_elem(&hr_sock4_revnat, &sk, &rn, BPF_ANY);
	ctx->user_ip4 = be->address;
	ctx->user_port = be->port;
	return 1;
}

/* sock4_refuse fails the socket's call with ECONNREFUSED, as Cilium's
 * SYS_REJECT: the error a REJECT rule's port unreachable would give (EPERM
 * on kernels without bpf_set_retval). */
static __always_inline int sock4_refuse(void)
{
	if (CONFIG.set_retval)
		bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/* sock4_revert shows a backend's address as the frontend it stands for. */
static __always_inline void sock4_revert(struct bpf_sock_addr *ctx)
{
	struct sock4_key sk = {
		.cookie = bpf_get_socket_cookie(ctx), .address = ctx->user_ip4, .port = (__be16)ctx->user_port,
	};
	struct lb4_reverse_nat *rn;

	if (!lb_enabled() || sock4_skip(ctx))
		return;
	rn = bpf_map_lookup_elem(&hr_sock4_revnat, &sk);
	if (rn) {
		ctx->user_ip4 = rn->address;
		ctx->user_port = rn->port;
	}
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx) ? 1 : sock4_refuse();
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx) ? 1 : sock4_refuse();
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_revert(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_revert(ctx);
	return 1;
}

/* A NodePort is the datapath's on the node's addresses: sockets may not
 * bind it there (on 0.0.0.0 or a node address, for a NodePort of every
 * address or of that one). */
SEC("cgroup/post_bind4")
int sock4_post_bind(struct bpf_sock *ctx)
{
	struct lb4_key key = {
		.address = ctx->src_ip4, .dport = bpf_htons(ctx->src_port), .proto = (__u8)ctx->protocol,
	};
	struct lb4_service *svc;

	if (!lb_enabled() || sock4_skip(ctx))
		return 1;
	svc = lb4_lookup_frontend(&key, bpf_get_netns_cookie(ctx) == CONFIG.netns_cookie);
	return !(svc && (svc->flags & LB_F_NODEPORT));
}
