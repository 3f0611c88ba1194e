/* The sockmap path's relay through the eBPF sockmap (bpf/sockmap.bpf.c):
 * once both sockets of a pair are added, every byte one receives is sent
 * out of the other by the kernel; userspace copies nothing and is not woken
 * for data.
 *
 * One struct kg_sockmap per process, shared by all workers: every function
 * is thread-safe (map updates are syscalls; the slot allocator has a lock).
 * A struct kg_sockmap_pair belongs to the one worker that owns the
 * connection. Only plain TCP sockets may be added, never one that has or
 * will get kTLS (bpf/README.md says why).
 *
 * Errors: kg_sockmap_open returns NULL with the reason in err; operations
 * return 0 (or a count) or -errno.
 *
 * What the worker must do for each relayed pair:
 *
 *  - Poll both sockets for POLLRDHUP (POLLERR and POLLHUP always come),
 *    not for POLLIN: the verdict program consumes data, so POLLIN rises
 *    only with RDHUP, or on a paused source (below), which is not a reason
 *    to wake up. POLLERR means a reset. POLLHUP alone is normal once a
 *    side got its FIN and was shut down for writing.
 *
 *  - Back-pressure: the kernel queues redirected bytes in front of the
 *    receiving socket without any limit (a stalled reader made the relay
 *    hold 1 GiB and counting). Once a receiving side has more than
 *    KG_SM_PAUSE_BYTES waiting, kg_sockmap_pace() pauses both directions
 *    for good (pair->tail[]): a flag in a BPF map makes the verdict pass
 *    each source's bytes to its own receive queue (a source never leaves
 *    the verdict's map while the pair lives: that dropped skbs), the
 *    sources' fixed receive buffers (KG_SM_RCVBUF) stop their senders
 *    through TCP, and kg_sockmap_copy_tail copies the rest of each
 *    direction only while the other side has room. Handing a source back
 *    to the verdict later lost whole skbs at the end of 2 GiB transfers
 *    on 6.18, so the pair never returns. One case the kernel cannot push
 *    back on: a peer that reads nothing of what was already redirected to
 *    it yet keeps sending; pace returns -ENOBUFS once that holds more than
 *    KG_SM_HOLD_BYTES (below), and the worker closes the connection. Call pace on
 *    a timer for every pair (the bound is KG_SM_PAUSE_BYTES plus what
 *    arrives between two calls: a period of 10-20 ms keeps that to one
 *    burst of the sender's window) and whenever a side reports RDHUP.
 *
 *  - Close and half-close (sockmap does not propagate FIN or RST):
 *    1. Side S reports RDHUP: its peer sent FIN. Do NOT shut down the
 *       other side O yet: the bytes S received may still sit in the queue
 *       in front of O's TCP, and a shutdown now makes the kernel drop them
 *       (in a trial 100 MB were sent and 29 MB arrived). Call
 *       kg_sockmap_pace(). Then poll kg_sockmap_flushed(O) (tick, or O's
 *       POLLOUT) until it returns 1, and shutdown(O, SHUT_WR): TCP sends
 *       what it holds, then the FIN.
 *    2. When both directions are shut down (or either side reports
 *       POLLERR: a reset, nothing more can be delivered):
 *       kg_sockmap_remove_pair(), then close both fds. Remove before
 *       close. close() with an empty receive queue is graceful: the kernel
 *       keeps sending the unacknowledged tail afterwards.
 *    Tail mode: once pace paused S (or add_pair found a side that left
 *    ESTABLISHED during the insert), pair->tail[S] is set; from then on
 *    the worker calls
 *    kg_sockmap_copy_tail(S) whenever S is readable or O writable (poll S
 *    for POLLIN and O for POLLOUT) until it returns 0 (S at EOF).
 *    A flush that never completes (a reader that never reads) ends with
 *    the worker's idle deadline, as on every path. */
#ifndef KGATE_SOCKMAP_H
#define KGATE_SOCKMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <kgate/sockmap_bpf.h>

/* Bytes a paused source may hold that nobody has moved yet (its receive
 * queue and psock) before kg_sockmap_pace gives the pair up (-ENOBUFS):
 * KG_SM_HOLD_BYTES once the bytes waiting for that source's own peer have
 * not shrunk for KG_SM_STUCK_ROUNDS pace calls (the peer reads nothing
 * back), KG_SM_HOLD_MAX_BYTES in any case. A paused source's receive
 * buffer bounds it to KG_SM_RCVBUF-ish except while bytes redirected to
 * its peer wait unread (see Back-pressure). */
#define KG_SM_HOLD_BYTES (16u * 1024 * 1024)
#define KG_SM_HOLD_MAX_BYTES (64u * 1024 * 1024)
#define KG_SM_STUCK_ROUNDS 100

/* Bytes moved per kg_sockmap_copy_tail call (a stack buffer). */
#define KG_SM_TAIL_CHUNK 65536

struct kg_sockmap;

/* Caller-owned record of one relayed pair (embed it in the connection).
 * Indexed by side (KG_SM_CLIENT, KG_SM_BACKEND). Written by the functions
 * below; the caller reads paused[] and tail[] only. */
struct kg_sockmap_pair {
	uint32_t slot;
	int fd[2];
	uint64_t cookie[2];     /* SO_COOKIE: the sockets' keys in kg_sm_socks */
	uint64_t base[2];       /* bytes the socket had been given before it was
				 * added (e.g. a PROXY header) */
	uint64_t base_rx[2];    /* data bytes its TCP had received and someone
				 * had read before it was added */
	uint64_t tail_bytes[2]; /* bytes userspace moved into it (draining a
				 * paused source, kg_sockmap_copy_tail) */
	bool paused[2];         /* the verdict passes this side's bytes to its
				 * own receive queue (kg_sm_paused) */
	uint64_t waiting[2];    /* bytes waiting for this side's peer at the
				 * last pace (kg_sockmap_pace's progress
				 * check) */
	uint8_t stuck[2];       /* pace calls since those last shrank */
	bool tail[2];           /* the rest of this side's data goes through
				 * kg_sockmap_copy_tail (it was paused, or it
				 * left ESTABLISHED while being added) */
};

/* Loads and attaches the verdict program, with room for max_pairs pairs
 * (0: KG_SM_DEFAULT_PAIRS). NULL when BPF or sockmap is unavailable (no
 * CAP_BPF, kernel without sockmap, ...), with a one-line reason in err:
 * log it once and relay with splice instead. Routes libbpf's messages into
 * kgate's log. */
struct kg_sockmap *kg_sockmap_open(uint32_t max_pairs, char *err, size_t errlen);
/* Detaches and unloads. Sockets still in the maps are dropped from them
 * (the fds stay open, owned by the caller). Tolerates NULL. */
void kg_sockmap_close(struct kg_sockmap *sm);

/* Starts relaying between two connected TCP sockets, both ways. Bytes that
 * were already waiting in either socket are relayed too. The caller keeps
 * owning the fds and must not read or write them while the pair is added
 * (except through kg_sockmap_copy_tail). Sets SO_RCVBUF to KG_SM_RCVBUF on
 * both. Errors:
 *   -EOPNOTSUPP one socket is no longer ESTABLISHED (it got a FIN or a
 *               reset before it could be added): nothing was added and no
 *               byte consumed; relay this connection with splice instead.
 *   -ENOSPC     all max_pairs slots are in use (splice instead).
 *   -EIO        a socket left ESTABLISHED while it was being added and
 *               the kernel had already moved bytes: close the connection.
 *   other       -errno of a map update; nothing was added. */
int kg_sockmap_add_pair(struct kg_sockmap *sm, struct kg_sockmap_pair *pair,
			int client_fd, int backend_fd);

/* Takes both sockets out of the maps and frees the slot. Call before
 * closing the fds. Returns the first error, but always removes all it can
 * and always frees the slot. */
int kg_sockmap_remove_pair(struct kg_sockmap *sm, struct kg_sockmap_pair *pair);

/* Once either receiving side has more than KG_SM_PAUSE_BYTES waiting in
 * front of it, pauses both directions (see Back-pressure above): sets
 * pair->paused[] and pair->tail[]. -ENOBUFS: a paused side holds more
 * than the KG_SM_HOLD_BYTES limits (its peer sends but reads nothing
 * back, which the kernel cannot push back on): close the connection. */
int kg_sockmap_pace(struct kg_sockmap *sm, struct kg_sockmap_pair *pair);

/* Pauses one source at once, as kg_sockmap_pace does when its peer falls
 * behind: from the next skb on the verdict passes src's bytes to src's own
 * receive queue, and the rest of that direction goes through
 * kg_sockmap_copy_tail. Never undone while the pair lives. */
int kg_sockmap_pause(struct kg_sockmap *sm, struct kg_sockmap_pair *pair, int src);

/* For a side with pair->tail[src] set: once everything the kernel
 * redirected has reached the other side's TCP, moves up to
 * KG_SM_TAIL_CHUNK bytes from src to the other side without blocking.
 * Returns bytes moved, 0 when src is at EOF with nothing left, -EAGAIN
 * when it must wait (the other side is full or still flushing, or src has
 * no data yet), other -errno on failure. */
ssize_t kg_sockmap_copy_tail(struct kg_sockmap *sm, struct kg_sockmap_pair *pair, int src);

/* Bytes the verdict program redirected into `side` since the pair was
 * added; dropped (may be NULL): bytes for `side` it had to drop because
 * `side` was no longer in the map. */
int kg_sockmap_redirected(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair,
			  int side, uint64_t *into, uint64_t *dropped);

/* 1 when every byte the other side has received so far has reached
 * `side`'s TCP (sent, or in its send queue), so shutdown(side, SHUT_WR)
 * loses nothing; 0 when bytes are still on their way; -errno. */
int kg_sockmap_flushed(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair,
		       int side);

/* Entries in the maps, for leak tests and metrics (walks the maps: not
 * for the hot path). */
struct kg_sockmap_usage {
	uint32_t socks;      /* kg_sm_tx: sockets added */
	uint32_t sources;    /* kg_sm_rx: sockets the verdict runs on (paused
			      * ones included) */
	uint32_t cookies;    /* kg_sm_socks */
	uint32_t pairs;      /* kg_sm_pairs */
	uint32_t slots_used; /* the slot allocator's view */
};
int kg_sockmap_usage(struct kg_sockmap *sm, struct kg_sockmap_usage *u);

#endif
