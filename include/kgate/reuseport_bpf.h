/* Layouts shared by bpf/reuseport.bpf.c (the sk_reuseport program that
 * steers new connections to the least-loaded worker) and its userspace
 * owner (dataplane/steer.c), and the pick both sides agree on. Plain
 * fixed-width types only: the BPF side includes this without libc. */
#ifndef KGATE_REUSEPORT_BPF_H
#define KGATE_REUSEPORT_BPF_H

#include <linux/types.h>

/* Equal to KG_MAX_WORKERS and the runtime's KG_MAX_LISTENERS (steer.c
 * checks); powers of two, so an index is bounded with a mask. */
#define KG_RP_MAX_WORKERS 64
#define KG_RP_MAX_LISTENERS 64

/* kg_rp_socks key of worker w's listening socket of listener slot s: every
 * listener owns a row of KG_RP_MAX_WORKERS entries in one map, so a
 * listener made at run time (after CAP_BPF is gone) needs no new map. */
#define KG_RP_KEY(slot, worker) ((slot) * KG_RP_MAX_WORKERS + (worker))

/* The one element of kg_rp_loads (BPF_F_MMAPABLE): userspace maps it and
 * every worker stores its own counts with plain stores, no syscall.
 *
 * Two banks: at a binary upgrade the old and the new process share these
 * maps (the program stays attached to the inherited sockets); the new one
 * fills the bank the old one does not use and flips `bank` when it starts
 * accepting, so the old process's workers, still closing their
 * connections, never write into the counts the program reads. */
struct kg_rp_loads {
	__u32 bank;                /* the bank the program reads (0 or 1) */
	__u32 n_workers[2];        /* per bank: workers of the process using it */
	__u32 conns[2][KG_RP_MAX_WORKERS];   /* written by each worker: connections it owns */
	/* Connections the program sent to a worker that it has not accepted
	 * yet: +1 by the program, -1 by the worker at accept. Without them a
	 * burst of SYNs would all go to the worker that was least loaded when
	 * it began. Signed: a reset (steer.c) may race an accept. */
	__s32 pending[2][KG_RP_MAX_WORKERS];
};

/* Program outcomes, counted per CPU in kg_rp_stats. */
enum {
	KG_RP_STEERED = 0,   /* sent to the least-loaded worker */
	KG_RP_NO_LISTENER,   /* socket's cookie unknown: the kernel's hash chose */
	KG_RP_NO_WORKERS,    /* no bank published yet: the kernel's hash chose */
	KG_RP_SELECT_FAILED, /* the chosen worker has no socket there: the hash chose */
	KG_RP_N_STATS,
};

/* Keeps the compiler from dropping a mask it can prove redundant: the BPF
 * verifier cannot, and must see the bound. */
#define KG_RP_BOUND(x) ({ __u32 v_ = (x); __asm__ volatile("" : "+r"(v_)); v_ & (KG_RP_MAX_WORKERS - 1); })

/* The worker that gets the next connection: the least loaded (connections
 * owned plus pending, a negative pending read as 0), ties broken by
 * scanning from hash % n, so equal workers share a burst by the packets'
 * hash rather than all going to the lowest index. n is 1..KG_RP_MAX_WORKERS. */
static inline __u32 kg_rp_pick(const __u32 *conns, const __s32 *pending, __u32 n, __u32 hash)
{
	__u32 start = hash % n;
	__u32 best = KG_RP_BOUND(start);
	__u64 best_load = (__u64)conns[best] + (pending[best] > 0 ? (__u32)pending[best] : 0);

	for (__u32 i = 1; i < KG_RP_MAX_WORKERS; i++) {
		if (i >= n)
			break;
		__u32 w = start + i;
		if (w >= n)
			w -= n;
		w = KG_RP_BOUND(w);
		__u64 load = (__u64)conns[w] + (pending[w] > 0 ? (__u32)pending[w] : 0);
		if (load < best_load) {
			best = w;
			best_load = load;
		}
	}
	return best;
}

#endif
