/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ARP from a pod: source checks and the optional gateway responder. */
#pragma once

#include "metrics.h"
#include "parse.h"

/* Values from linux/if_arp.h, which pulls in libc headers. */
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

/* An Ethernet/IPv4 ARP packet after the Ethernet header. Packed: its
 * addresses are read byte-wise, its MACs as 16-bit words. */
struct arp_eth_ipv4 {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

#define ARP_LEN (ETH_HLEN + sizeof(struct arp_eth_ipv4))

/* arp_from_container drops ARP whose sender is not the endpoint behind this
 * device, answers requests itself for endpoints with the ARP responder flag,
 * and leaves the rest to the kernel. */
static __always_inline int arp_from_container(struct __sk_buff *ctx)
{
	const enum direction dir = DIR_FROM_CONTAINER;
	struct endpoint_info *ep;
	struct arp_eth_ipv4 *arp;
	struct ethhdr *eth;
	__be32 sip, tip;

	if (!pull(ctx, ARP_LEN))
		return drop(ctx, dir, METRIC_DROP_INVALID);
	eth = (void *)(long)ctx->data;
	arp = (void *)(eth + 1);
	if ((void *)(arp + 1) > (void *)(long)ctx->data_end)
		return drop(ctx, dir, METRIC_DROP_INVALID);
	if (arp->hrd != bpf_htons(ARPHRD_ETHER) || arp->pro != bpf_htons(ETH_P_IP) ||
	    arp->hln != ETH_ALEN || arp->pln != 4)
		return drop(ctx, dir, METRIC_DROP_INVALID);

	sip = arp->sip;
	tip = arp->tip;
	ep = lookup_device(ctx->ifindex);
	if (sip == 0) { /* address probe (RFC 5227): nothing to spoof yet */
		if (ep)
			count_from(ep->id, ctx->len);
		return to_stack(ctx, dir);
	}
	if (!ep || ep->ipv4 != sip || !mac_equal(ep->mac, arp->sha) || !mac_equal(ep->mac, eth->h_source))
		return drop_endpoint(ctx, dir, METRIC_DROP_SPOOFED, ep ? ep->id : 0);
	count_from(ep->id, ctx->len);

	if (!(ep->flags & ENDPOINT_F_ARP_RESPONDER) || arp->op != bpf_htons(ARPOP_REQUEST) ||
	    tip == sip)
		return to_stack(ctx, dir);

	/* Turn the request into the reply in place and send it back. */
	arp->op = bpf_htons(ARPOP_REPLY);
	mac_copy(arp->tha, arp->sha);
	mac_copy(arp->sha, ep->node_mac);
	arp->tip = sip;
	arp->sip = tip;
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, ep->node_mac);
	count_metric(ctx, dir, METRIC_ARP_REPLY);
	return bpf_redirect(ctx->ifindex, 0);
}
