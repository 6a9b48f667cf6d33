// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* The hostrouting datapath: one object per node, every endpoint shares its
 * programs and finds its facts in the maps of lib/common.h.
 *
 * Entry programs, attached to devices:
 *   from_container  tc ingress of a pod's host-side device (what the pod sends)
 *   to_container    tc egress of a pod's host-side device (what the stack
 *                   delivers into the pod)
 *   from_netdev     tc ingress of the node's device (what other nodes send)
 *   to_netdev       tc egress of the node's device (what leaves the node)
 *
 * Stages, reached by tail calls (lib/calls.h) and named tail_*: the
 * per-family steps of from_container; tail_policy_allow and
 * tail_policy_deny, where an embedder's ingress policy hands its verdict
 * back (include/hostrouting/policy.h).
 */

#include "lib/common.h"
#include "lib/metrics.h"
#include "lib/parse.h"
#include "lib/calls.h"
#include "lib/local.h"
#include "lib/arp.h"
#include "lib/ipv6.h"
#include "lib/fib.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/sock.h"
#include "lib/reject.h"

/* skb->cb word that carries the sending endpoint's ID from the IPv4
 * stage to the next (the policy's words are 0 to 3). */
#define CB_SRC_ID 4
/* skb->cb word that carries the direction into the reject stage (no
 * policy runs on that way). */
#define CB_DIR 0

/* reject sends the packet to the reject stage, which answers it with
 * port unreachable (or drops it, as CONFIG says). */
static __always_inline int reject(struct __sk_buff *ctx, enum direction dir, __u32 src_id)
{
	ctx->cb[CB_DIR] = dir;
	ctx->cb[CB_SRC_ID] = src_id;
	return tail_call(ctx, dir, CALL_IPV4_REJECT);
}

SEC("tc")
int tail_ipv4_reject(struct __sk_buff *ctx)
{
	return reject4(ctx, ctx->cb[CB_DIR] == DIR_FROM_NETDEV ? DIR_FROM_NETDEV : DIR_FROM_CONTAINER,
		       ctx->cb[CB_SRC_ID]);
}

char __license[] SEC("license") = "Dual BSD/GPL";

/* ipv4_leave sends an IPv4 packet of len bytes that is for no local
 * endpoint out of the node by the FIB when it goes to another node's pod,
 * leaves with BPF masquerade, or was translated (a reply the stack never
 * saw the request of); the rest to the stack. */
static __always_inline int ipv4_leave(struct __sk_buff *ctx, enum direction dir, struct ethhdr *eth,
				      struct iphdr *ip, __u32 len, int translated)
{
	if (CONFIG.fib_lookup && (in_native_cidr(ip->daddr) || CONFIG.masquerade || translated))
		return fib_redirect(ctx, dir, eth, ip, len);
	return to_stack(ctx, dir);
}

/* ipv4_route sends an IPv4 packet of len bytes on its way: into a local
 * endpoint, or as ipv4_leave does. */
static __always_inline int ipv4_route(struct __sk_buff *ctx, enum direction dir, struct ethhdr *eth,
				      struct iphdr *ip, __u32 len, __u32 src_id, int translated)
{
	struct endpoint_info *dst = lookup_endpoint4(ip->daddr);

	if (dst)
		return local_delivery(ctx, dir, eth, ip, dst, src_id);
	return ipv4_leave(ctx, dir, eth, ip, len, translated);
}

static __always_inline int ipv4_from_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	struct endpoint_info *src, *dst;
	struct ethhdr *eth;
	struct iphdr *ip;
	__u32 len;

	len = parse_ipv4(ctx, &eth, &ip);
	if (!len)
		return drop(ctx, dir, METRIC_DROP_INVALID);
	src = lookup_device(ctx->ifindex);
	if (!src || src->ipv4 != ip->saddr || !mac_equal(src->mac, eth->h_source))
		return drop_endpoint(ctx, dir, METRIC_DROP_SPOOFED, src ? src->id : 0);
	count_from(src->id, ctx->len);

	/* What a router does not forward, or forwards with care, is the
	 * stack's: frames not sent to this device's MAC (the kernel drops
	 * or floods them), and IP options (source routes and the like). */
	if (ctx->pkt_type != PACKET_HOST || ip->ihl != 5)
		return to_stack(ctx, dir);
	/* A service backend's replies are translated back first. */
	if ((src->flags & ENDPOINT_F_LB_BACKEND) && lb_enabled()) {
		ctx->cb[CB_SRC_ID] = src->id;
		return tail_call(ctx, dir, CALL_IPV4_REVNAT);
	}
	dst = lookup_endpoint4(ip->daddr);
	if (dst)
		return local_delivery(ctx, dir, eth, ip, dst, src->id);
	/* A pod's own address is never a frontend: only what is not for a
	 * local endpoint may be for a service. An address of the service
	 * CIDR that is no frontend, or a ClusterIP on a port it does not
	 * serve, is rejected. */
	if (lb_enabled() && is_frontend(ctx, ip)) {
		ctx->cb[CB_SRC_ID] = src->id;
		return tail_call(ctx, dir, CALL_IPV4_LB);
	}
	if (unserved(ip->daddr))
		return is_later_fragment(ip) ? drop_endpoint(ctx, dir, METRIC_DROP_FRAG_NOT_FOUND, src->id) :
					       reject(ctx, dir, src->id);
	return ipv4_leave(ctx, dir, eth, ip, len, 0);
}

SEC("tc")
int tail_ipv4_from_container(struct __sk_buff *ctx)
{
	return ipv4_from_container(ctx);
}

SEC("tc")
int tail_ipv4_lb(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	__u32 src_id = ctx->cb[CB_SRC_ID];
	struct lb4_service *svc;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct l4 l4;
	int ret;
	__u32 len;

	len = parse_ipv4(ctx, &eth, &ip);
	if (!len || !load_l4(ctx, ip, &l4))
		return to_stack(ctx, dir);
	struct lb4_key key = { .address = ip->daddr, .dport = l4.dport, .proto = ip->protocol };

	svc = lb4_lookup_frontend(&key, 0);
	/* A pod is inside traffic: the internal scope, where a service has
	 * one (externalTrafficPolicy and internalTrafficPolicy differ). */
	if (svc && (svc->flags & LB_F_TWO_SCOPES)) {
		key.scope = LB_SCOPE_INTERNAL;
		svc = bpf_map_lookup_elem(&hr_lb4_services, &key);
	}
	if (!svc)
		return to_stack(ctx, dir); /* deleted meanwhile */
	if (!lb4_src_range_ok(svc, ip->saddr))
		return drop_endpoint(ctx, dir, METRIC_DROP_SOURCE_RANGE, src_id);
	ret = lb4_dnat(ctx, dir, ip, &l4, &key, svc);
	if (ret == METRIC_DROP_NO_BACKEND)
		return reject(ctx, dir, src_id);
	if (ret)
		return drop_endpoint(ctx, dir, ret, src_id);
	len = parse_ipv4(ctx, &eth, &ip);
	if (!len)
		return drop_endpoint(ctx, dir, METRIC_DROP_NAT, src_id);
	return ipv4_route(ctx, dir, eth, ip, len, src_id, 0);
}

SEC("tc")
int tail_ipv4_revnat(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	__u32 src_id = ctx->cb[CB_SRC_ID];
	struct ethhdr *eth;
	struct iphdr *ip;
	struct l4 l4;
	int ret;
	__u32 len;

	len = parse_ipv4(ctx, &eth, &ip);
	if (!len)
		return drop_endpoint(ctx, dir, METRIC_DROP_INVALID, src_id);
	ret = 0;
	if (load_l4(ctx, ip, &l4)) {
		ret = lb4_rev_nat(ctx, dir, ip, &l4);
		if (ret < 0)
			return drop_endpoint(ctx, dir, -ret, src_id);
		if (ret > 0 && !(len = parse_ipv4(ctx, &eth, &ip)))
			return drop_endpoint(ctx, dir, METRIC_DROP_NAT, src_id);
		/* A backend that is a client itself: its requests to services. */
		if (!ret && !lookup_endpoint4(ip->daddr) && is_frontend(ctx, ip))
			return tail_call(ctx, dir, CALL_IPV4_LB);
		if (!ret && unserved(ip->daddr))
			return reject(ctx, dir, src_id);
	} else if (ip->protocol == IPPROTO_ICMP) {
		/* Its errors about a service flow, e.g. no listener. */
		ret = lb4_icmp_error(ctx, ip);
		if (ret < 0)
			return drop_endpoint(ctx, dir, -ret, src_id);
		if (ret > 0 && !(len = parse_ipv4(ctx, &eth, &ip)))
			return drop_endpoint(ctx, dir, METRIC_DROP_NAT, src_id);
	}
	return ipv4_route(ctx, dir, eth, ip, len, src_id, ret);
}

/* ct_inbound notes a flow from outside the native routing CIDR into a
 * local pod (its reply's tuple), so that its replies leave untranslated:
 * masquerade is for the pods' own flows. Only a SYN opens a TCP flow, and
 * no packet opens one on the tuple of a pod's own masqueraded flow: a
 * forged packet must not turn that flow into an inbound one. */
static __always_inline void ct_inbound(struct iphdr *ip, const struct l4 *l4)
{
	struct ct4_key rk = {
		.saddr = ip->daddr, .daddr = ip->saddr, .sport = l4->dport, .dport = l4->sport,
		.proto = ip->protocol, .dir = CT_INBOUND,
	};
	__u8 proto = ip->protocol, syn = (l4->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) == TCP_FLAG_SYN;
	struct ct_entry *e = ct4_lookup(&rk);

	if (!e) {
		struct ct4_key out = rk;
		struct ct_entry fresh = { .packets = 1 };

		out.dir = NAT_OUT;
		if ((proto == IPPROTO_TCP && !syn) || nat4_lookup(&out))
			return;
		ct_update(&fresh.st, NULL, proto, l4);
		ct_count(ct4_class(proto), ct4_create(&rk, &fresh) ? CT_STAT_CREATED : CT_STAT_FAILED);
		return;
	}
	if ((e->st.flags & CT_F_CLOSING) && syn) { /* reopened */
		e->st.flags &= CT_F_ESTABLISHED;
		e->st.seq_end = 0;
	}
	ct_update(&e->st, NULL, proto, l4);
	if ((e->st.flags & (CT_F_FIN | CT_F_REPLY_FIN)) == (CT_F_FIN | CT_F_REPLY_FIN) && !(e->st.flags & CT_F_CLOSING)) {
		e->st.flags |= CT_F_CLOSING;
		e->st.expires = now_seconds() + CT_TIMEOUT_TCP_CLOSE;
	}
	e->packets++;
	if (ct_established_ready(e->st.flags, proto, l4))
		ct4_promote_flow(&rk, e, NULL, NULL);
}

/* is_inbound_reply tells whether a pod's packet answers a flow from
 * outside (see ct_inbound), and keeps that flow's entry alive. */
static __always_inline int is_inbound_reply(struct iphdr *ip, const struct l4 *l4)
{
	struct ct4_key k = {
		.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4->sport, .dport = l4->dport,
		.proto = ip->protocol, .dir = CT_INBOUND,
	};
	struct ct_entry *e = ct4_lookup(&k);

	if (!e)
		return 0;
	e->st.flags |= CT_F_SEEN_REPLY;
	if (l4->tcp_flags & TCP_FLAG_FIN)
		e->st.flags |= CT_F_REPLY_FIN;
	if ((l4->tcp_flags & TCP_FLAG_RST) || (e->st.flags & (CT_F_FIN | CT_F_REPLY_FIN)) == (CT_F_FIN | CT_F_REPLY_FIN))
		e->st.flags |= CT_F_CLOSING;
	e->st.expires = now_seconds() + ct_timeout(ip->protocol, e->st.flags);
	return 1;
}

/* tail_ipv4_from_netdev takes IPv4 from the wire on a node with services
 * or masquerade: replies of translated flows are translated back (to a
 * local pod, or out again to a NodePort client), requests to NodePorts
 * and external IPs are balanced (to a local backend, or to a remote one
 * with the node's address as source), and the rest goes as from_netdev
 * sends it. */
SEC("tc")
int tail_ipv4_from_netdev(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_NETDEV;
	struct endpoint_info *ep;
	struct lb4_service *svc;
	struct ethhdr *eth;
	struct iphdr *ip;
	int have_l4, ret, translated = 0;
	struct l4 l4;
	__u32 len;
	__be32 *nat;

	len = parse_ipv4(ctx, &eth, &ip);
	if (!len)
		return to_stack(ctx, dir);
	/* An ICMP error about a source-translated flow (fragmentation
	 * needed on the way out, say) goes to its pod, or its NodePort
	 * client, with the quoted packet as it sent it: for a NodePort flow
	 * to another node's backend, its destination is the NodePort again. */
	ret = snat4_icmp_error(ctx, ip);
	if (ret < 0)
		return drop_endpoint(ctx, dir, -ret, 0);
	if (ret > 0) {
		if (!(len = parse_ipv4(ctx, &eth, &ip)))
			return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
		ret = lb_enabled() ? lb4_icmp_error(ctx, ip) : 0;
		if (ret < 0)
			return drop_endpoint(ctx, dir, -ret, 0);
		if (ret > 0 && !(len = parse_ipv4(ctx, &eth, &ip)))
			return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
		ep = lookup_endpoint4(ip->daddr);
		if (ep)
			return local_delivery(ctx, dir, eth, ip, ep, 0);
		return CONFIG.fib_lookup ? fib_redirect(ctx, dir, eth, ip, len) : to_stack(ctx, dir);
	}
	have_l4 = load_l4(ctx, ip, &l4);
	if (have_l4) {
		ret = snat4_in(ctx, dir, ip, &l4);
		if (ret < 0)
			return drop_endpoint(ctx, dir, -ret, 0);
		if (ret > 0) {
			translated = 1;
			if (!(len = parse_ipv4(ctx, &eth, &ip)) || !load_l4(ctx, ip, &l4))
				return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
		}
		ret = lb_enabled() ? lb4_rev_nat(ctx, dir, ip, &l4) : 0;
		if (ret < 0)
			return drop_endpoint(ctx, dir, -ret, 0);
		if (ret > 0) {
			translated = 1;
			if (!(len = parse_ipv4(ctx, &eth, &ip)) || !load_l4(ctx, ip, &l4))
				return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
		}
	}
	ep = lookup_endpoint4(ip->daddr);
	if (ep) {
		if (!translated && !in_native_cidr(ip->saddr)) {
			/* Replies to it go by BPF only with masquerade (else
			 * the stack takes them: let it see this way too). */
			if (!CONFIG.masquerade)
				return to_stack(ctx, dir);
			if (have_l4)
				ct_inbound(ip, &l4);
		}
		return local_delivery(ctx, dir, eth, ip, ep, 0);
	}
	/* A translated flow of the node's own (its port was a pod flow's)
	 * is the stack's; others go on their way. */
	nat = node_addr(ctx->ifindex);
	if (translated && !(nat && *nat == ip->daddr))
		return CONFIG.fib_lookup ? fib_redirect(ctx, dir, eth, ip, len) : to_stack(ctx, dir);
	if (translated || !have_l4 || !lb_enabled())
		return to_stack(ctx, dir);

	/* A NodePort or an external IP, from outside; a NodePort of every
	 * node address has the address 0. */
	struct lb4_key key = { .address = ip->daddr, .dport = l4.dport, .proto = ip->protocol };

	svc = bpf_map_lookup_elem(&hr_lb4_services, &key);
	if (!svc && nat && *nat == ip->daddr) {
		key.address = 0;
		svc = bpf_map_lookup_elem(&hr_lb4_services, &key);
	}
	if (!svc || !(svc->flags & (LB_F_NODEPORT | LB_F_EXTERNAL)))
		return to_stack(ctx, dir);
	if (!lb4_src_range_ok(svc, ip->saddr))
		return drop_endpoint(ctx, dir, METRIC_DROP_SOURCE_RANGE, 0);
	ret = lb4_dnat(ctx, dir, ip, &l4, &key, svc);
	if (ret == METRIC_DROP_NO_BACKEND)
		return reject(ctx, dir, 0);
	if (ret)
		return drop_endpoint(ctx, dir, ret, 0);
	if (!(len = parse_ipv4(ctx, &eth, &ip)) || !load_l4(ctx, ip, &l4))
		return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
	ep = lookup_endpoint4(ip->daddr);
	if (ep)
		return local_delivery(ctx, dir, eth, ip, ep, 0);
	/* A backend on another node: it answers this node, which answers
	 * the client. */
	nat = node_addr(ctx->ifindex);
	if (!nat || !CONFIG.fib_lookup)
		return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
	ret = snat4_out(ctx, dir, ip, &l4, *nat);
	if (ret)
		return drop_endpoint(ctx, dir, ret, 0);
	if (!(len = parse_ipv4(ctx, &eth, &ip)))
		return drop_endpoint(ctx, dir, METRIC_DROP_NAT, 0);
	return fib_redirect(ctx, dir, eth, ip, len);
}

SEC("tc")
int tail_ipv6_from_container(struct __sk_buff *ctx)
{
	return ipv6_from_container(ctx);
}

SEC("tc")
int tail_arp_from_container(struct __sk_buff *ctx)
{
	return arp_from_container(ctx);
}

SEC("tc")
int from_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	struct ethhdr *eth;

	/* Pods have no VLANs: a tag, taken off by the kernel or not, is
	 * dropped before anything else looks at the frame. */
	if (ctx->vlan_present)
		return drop(ctx, dir, METRIC_DROP_VLAN);
	if (!pull(ctx, ETH_HLEN))
		return drop(ctx, dir, METRIC_DROP_INVALID);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return drop(ctx, dir, METRIC_DROP_INVALID);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return tail_call(ctx, dir, CALL_IPV4_FROM_CONTAINER);
	case bpf_htons(ETH_P_ARP):
		return tail_call(ctx, dir, CALL_ARP_FROM_CONTAINER);
	case bpf_htons(ETH_P_IPV6):
		return tail_call(ctx, dir, CALL_IPV6_FROM_CONTAINER);
	case bpf_htons(ETH_P_8021Q):
	case bpf_htons(ETH_P_8021AD):
		return drop(ctx, dir, METRIC_DROP_VLAN);
	default:
		return drop(ctx, dir, METRIC_DROP_UNKNOWN_L3);
	}
}

/* to_container_deliver lets a packet the stack delivers into endpoint ep
 * in: IP through the endpoint's policy, ARP not. */
static __always_inline int to_container_deliver(struct __sk_buff *ctx, struct endpoint_info *ep)
{
	const enum direction dir = DIR_TO_CONTAINER;
	struct endpoint_info *src;
	__u32 src_id = 0;

	if ((ep->flags & ENDPOINT_F_POLICY) &&
	    (ctx->protocol == bpf_htons(ETH_P_IP) || ctx->protocol == bpf_htons(ETH_P_IPV6))) {
		struct ethhdr *eth;
		struct iphdr *ip;

		if (ctx->protocol == bpf_htons(ETH_P_IP) && parse_ipv4(ctx, &eth, &ip)) {
			src = lookup_endpoint4(ip->saddr);
			if (src)
				src_id = src->id;
		}
		return to_endpoint(ctx, dir, DELIVER_STACK, ep, src_id);
	}
	return deliver(ctx, dir, DELIVER_STACK, ep->id, ep->ifindex);
}

/* tail_ipv4_to_container translates replies the stack delivers into a pod
 * back, before they enter it: those of a service whose backend is in the
 * node's own network namespace (a host-network endpoint such as the API
 * server behind kubernetes.default), and the stack's ICMP errors about
 * such a flow's packets, as Cilium's lb4_rev_nat on the pod's way in. */
SEC("tc")
int tail_ipv4_to_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_TO_CONTAINER;
	struct endpoint_info *ep = lookup_device(ctx->ifindex);
	struct ethhdr *eth;
	struct iphdr *ip;
	struct l4 l4;
	int ret = 0;

	if (!ep) {
		count_metric(ctx, dir, METRIC_PASS);
		return TC_ACT_OK;
	}
	if (parse_ipv4(ctx, &eth, &ip) && ip->ihl == 5) {
		if (load_l4(ctx, ip, &l4))
			ret = lb4_rev_nat(ctx, dir, ip, &l4);
		else if (ip->protocol == IPPROTO_ICMP)
			ret = lb4_icmp_error(ctx, ip);
		if (ret < 0)
			return drop_endpoint(ctx, dir, -ret, ep->id);
	}
	return to_container_deliver(ctx, ep);
}

SEC("tc")
int to_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_TO_CONTAINER;
	struct endpoint_info *ep;

	ep = lookup_device(ctx->ifindex);
	if (!ep) { /* not an endpoint's device (any more) */
		count_metric(ctx, dir, METRIC_PASS);
		return TC_ACT_OK;
	}
	if (ctx->protocol == bpf_htons(ETH_P_IP) && lb_enabled())
		return tail_call(ctx, dir, CALL_IPV4_TO_CONTAINER);
	return to_container_deliver(ctx, ep);
}

SEC("tc")
int tail_policy_allow(struct __sk_buff *ctx)
{
	return policy_verdict(ctx, 1);
}

SEC("tc")
int tail_policy_deny(struct __sk_buff *ctx)
{
	return policy_verdict(ctx, 0);
}

SEC("tc")
int from_netdev(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_NETDEV;
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct iphdr *ip;

	/* Only untagged, option-less IPv4 sent to this node: leave the rest,
	 * and whatever is not well-formed, to the kernel as if nothing were
	 * attached. */
	if (ctx->pkt_type != PACKET_HOST || ctx->vlan_present || ctx->protocol != bpf_htons(ETH_P_IP) ||
	    !parse_ipv4(ctx, &eth, &ip) || ip->ihl != 5)
		return to_stack(ctx, dir);
	if (lb_enabled() || CONFIG.masquerade)
		return tail_call(ctx, dir, CALL_IPV4_FROM_NETDEV);
	ep = lookup_endpoint4(ip->daddr);
	/* From outside the native routing CIDR, replies take the stack:
	 * let it see this way too (nf_conntrack would drop them). */
	if (!ep || !in_native_cidr(ip->saddr))
		return to_stack(ctx, dir);
	return local_delivery(ctx, dir, eth, ip, ep, 0);
}

SEC("tc")
int to_netdev(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_TO_NETDEV;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct l4 l4;
	__be32 *nat;
	int ret = 0, have_l4;

	/* BPF masquerade: pods' own flows leaving the native routing CIDR
	 * take the device's address (a flow's first packet its port too);
	 * the node's own flows keep their ports where no translated flow has
	 * the same tuple. */
	if (!CONFIG.masquerade || ctx->protocol != bpf_htons(ETH_P_IP) || !parse_ipv4(ctx, &eth, &ip) ||
	    !(nat = node_addr(ctx->ifindex)))
		goto pass;
	if (ip->saddr == *nat) {
		if (ip->ihl == 5 && load_l4(ctx, ip, &l4) && snat4_host(ip, &l4))
			ret = snat4_out(ctx, dir, ip, &l4, *nat);
	} else if (in_native_cidr(ip->saddr) && !in_native_cidr(ip->daddr)) {
		/* IP options would be left untranslated: a pod's address
		 * never leaves the node. */
		if (ip->ihl != 5)
			return drop_endpoint(ctx, dir, METRIC_DROP_IP_OPTIONS, 0);
		have_l4 = load_l4(ctx, ip, &l4);
		/* A fragment whose first went by unseen cannot be translated. */
		if (!have_l4 && is_later_fragment(ip))
			return drop_endpoint(ctx, dir, METRIC_DROP_FRAG_NOT_FOUND, 0);
		if (have_l4) {
			struct ct4_key out = {
				.saddr = ip->saddr, .daddr = ip->daddr, .sport = l4.sport, .dport = l4.dport,
				.proto = ip->protocol, .dir = NAT_OUT,
			};

			/* The pod's own flow first: nothing from outside can
			 * make it an inbound one. */
			if (nat4_lookup(&out) || !is_inbound_reply(ip, &l4))
				ret = snat4_out(ctx, dir, ip, &l4, *nat);
		}
	}
	if (ret)
		return drop_endpoint(ctx, dir, ret, 0);
pass:
	count_metric(ctx, dir, METRIC_PASS);
	return TC_ACT_OK;
}
