// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* Socket termination: a BPF iterator over a network namespace's UDP
 * sockets that destroys the connected ones whose peer is a backend that
 * went away (bpf_sock_destroy, Linux ≥ 6.5), so that a client that socket
 * LB pointed at it sees an error and connects again (to a live backend)
 * instead of sending into the void: Cilium's bpf_sock_term.c. Kernel
 * types are declared with the fields it reads only; CO-RE finds them. */

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct udp_sock;

struct bpf_iter_meta;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

char __license[] SEC("license") = "Dual BSD/GPL";

/* The backend whose sockets go (set from Go before each run). */
__be32 backend_addr = 0;
__be16 backend_port = 0;
/* Sockets destroyed, in all runs. */
__u64 destroyed = 0;

SEC("iter/udp")
int destroy_udp4(struct bpf_iter__udp *ctx)
{
	/* A udp_sock starts with its inet_sock, which starts with its sock. */
	struct sock *s = (struct sock *)ctx->udp_sk;
	struct sock_common *sk;

	if (!s)
		return 0;
	sk = &s->__sk_common;
	if (sk->skc_family != AF_INET || sk->skc_daddr != backend_addr || sk->skc_dport != backend_port)
		return 0;
	if (bpf_sock_destroy(sk) == 0)
		__sync_fetch_and_add(&destroyed, 1);
	return 0;
}
