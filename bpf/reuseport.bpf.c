// SPDX-License-Identifier: GPL-2.0
/* Steering of new connections: attached to every listener's SO_REUSEPORT
 * group, it picks for each new connection the worker with the fewest
 * connections (include/kgate/reuseport_bpf.h) and hands the connection to
 * that worker's listening socket, so no connection changes thread after
 * accept. Whatever it cannot decide falls back to the kernel's own hash
 * (SK_PASS without a selection). Userspace owner: dataplane/steer.c. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include <kgate/reuseport_bpf.h>

/* Listening sockets, key KG_RP_KEY(listener slot, worker). */
struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, KG_RP_MAX_LISTENERS * KG_RP_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} kg_rp_socks SEC(".maps");

/* Listening socket cookie -> listener slot: which row of kg_rp_socks the
 * group a SYN arrived on belongs to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KG_RP_MAX_LISTENERS * KG_RP_MAX_WORKERS);
	__type(key, __u64);
	__type(value, __u32);
} kg_rp_listeners SEC(".maps");

/* The workers' loads, one element mapped by userspace (struct kg_rp_loads). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kg_rp_loads);
} kg_rp_loads SEC(".maps");

/* Outcomes by KG_RP_* (per CPU): metrics and tests. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KG_RP_N_STATS);
	__type(key, __u32);
	__type(value, __u64);
} kg_rp_stats SEC(".maps");

static __always_inline int count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&kg_rp_stats, &what);

	if (n)
		*n += 1;
	return SK_PASS;
}

SEC("sk_reuseport")
int kg_rp_select(struct sk_reuseport_md *md)
{
	struct bpf_sock *sk = md->sk;
	__u32 zero = 0, bank, n, w, key;
	struct kg_rp_loads *st;
	__u64 cookie;
	__u32 *slot;

	if (!sk)
		return count(KG_RP_NO_LISTENER);
	cookie = bpf_get_socket_cookie(sk);
	slot = bpf_map_lookup_elem(&kg_rp_listeners, &cookie);
	if (!slot)
		return count(KG_RP_NO_LISTENER);
	st = bpf_map_lookup_elem(&kg_rp_loads, &zero);
	if (!st)
		return count(KG_RP_NO_WORKERS);
	bank = *(volatile __u32 *)&st->bank & 1;
	n = *(volatile __u32 *)&st->n_workers[bank];
	if (n == 0 || n > KG_RP_MAX_WORKERS)
		return count(KG_RP_NO_WORKERS);
	w = kg_rp_pick(st->conns[bank], st->pending[bank], n, md->hash);
	key = KG_RP_KEY(*slot & (KG_RP_MAX_LISTENERS - 1), w);
	if (bpf_sk_select_reuseport(md, &kg_rp_socks, &key, 0) != 0)
		return count(KG_RP_SELECT_FAILED);
	__sync_fetch_and_add(&st->pending[bank][KG_RP_BOUND(w)], 1);
	return count(KG_RP_STEERED);
}

char LICENSE[] SEC("license") = "GPL";
