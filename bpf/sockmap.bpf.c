// SPDX-License-Identifier: GPL-2.0
/* The sockmap path's relay: every byte a relayed socket receives goes to its
 * peer's egress, in the kernel, without waking userspace. Userspace
 * (dataplane/sockmap.c) inserts both sockets of a pair and tears the pair
 * down itself: sockmap does not propagate FIN. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include <kgate/sockmap_bpf.h>

/* Redirect targets: every relayed socket, keyed by slot * 2 + side. No
 * program is attached here, so being in this map alone does not consume a
 * socket's receive queue. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * KG_SM_DEFAULT_PAIRS);
	__type(key, __u32);
	__type(value, __u64);
} kg_sm_tx SEC(".maps");

/* Relaying sources, same keys: the verdict program is attached to this map,
 * so it runs on whatever arrives on these sockets. A socket stays here until
 * its pair is removed: taking it out while data flows drops an skb the
 * kernel had already dequeued for the verdict (bpf/README.md). Pausing is
 * done with kg_sm_paused instead. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2 * KG_SM_DEFAULT_PAIRS);
	__type(key, __u32);
	__type(value, __u64);
} kg_sm_rx SEC(".maps");

/* Same keys: nonzero when userspace paused reading from that socket (its
 * peer fell behind). An array, written in place by userspace, so a verdict
 * never reads an entry recycled for another socket. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * KG_SM_DEFAULT_PAIRS);
	__type(key, __u32);
	__type(value, __u32);
} kg_sm_paused SEC(".maps");

/* Socket cookie -> (slot, side): how the verdict finds the peer. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * KG_SM_DEFAULT_PAIRS);
	__type(key, __u64);
	__type(value, struct kg_sm_sock);
} kg_sm_socks SEC(".maps");

/* Slot -> byte counters of the pair (see struct kg_sm_pair). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_SM_DEFAULT_PAIRS);
	__type(key, __u32);
	__type(value, struct kg_sm_pair);
} kg_sm_pairs SEC(".maps");

/* Verdicts that could not redirect: [0] socket not registered, [1] pair
 * counters missing, [2] redirect failed. Per CPU, read by tests and
 * metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} kg_sm_drops SEC(".maps");

/* A paused source keeps its bytes: SK_PASS queues the skb on the socket's
 * own psock (ingress_msg), where userspace reads it with recv
 * (kg_sockmap_copy_tail), in order. It is charged to the receive buffer,
 * so TCP's window closes on the sender, only when it goes there at once;
 * behind bytes redirected into the same socket it waits uncharged
 * (bpf/README.md). */
static __always_inline int is_paused(const struct kg_sm_sock *me)
{
	__u32 key = me->slot * 2 + (me->side & 1);
	__u32 *paused = bpf_map_lookup_elem(&kg_sm_paused, &key);

	return paused && *(volatile __u32 *)paused;
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&kg_sm_drops, &reason);

	if (n)
		*n += 1;
}

SEC("sk_skb/stream_verdict")
int kg_sm_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct kg_sm_sock *me = bpf_map_lookup_elem(&kg_sm_socks, &cookie);
	struct kg_sm_pair *pair;
	__u32 peer_side, peer_key;
	long verdict;

	/* A FIN without data reaches the verdict as an empty skb. Redirected,
	 * the peer's transmit path sends nothing, takes that for a broken
	 * pipe and errors the peer socket (EPIPE). FIN is userspace's job
	 * (sockmap.h), so an empty skb is simply consumed. */
	if (skb->len == 0)
		return SK_DROP;
	if (!me) {
		count_drop(0);
		return SK_DROP;
	}
	if (is_paused(me))
		return SK_PASS;
	pair = bpf_map_lookup_elem(&kg_sm_pairs, &me->slot);
	if (!pair) {
		count_drop(1);
		return SK_DROP;
	}
	/* & 1 bounds the index for the verifier (and for a corrupt entry). */
	peer_side = (me->side ^ 1) & 1;
	peer_key = me->slot * 2 + peer_side;
	/* flags 0: onto the peer's egress (BPF_F_INGRESS would queue it for
	 * the peer's own reader instead). */
	verdict = bpf_sk_redirect_hash(skb, &kg_sm_tx, &peer_key, 0);
	if (verdict != SK_PASS) {
		count_drop(2);
		__sync_fetch_and_add(&pair->dropped[peer_side], skb->len);
		return SK_DROP;
	}
	/* Counted before the kernel queues the skb on the peer: userspace only
	 * ever sees a count that is ahead of, never behind, the bytes in
	 * flight, so its "all sent" test cannot pass early. */
	__sync_fetch_and_add(&pair->into[peer_side], skb->len);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
