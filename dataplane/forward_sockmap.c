/* Path sockmap (plain tcp listeners) through the eBPF sockmap: the kernel relays both ways and the
 * worker only watches for the ends (sockmap.h has the protocol and why
 * each step is there). The worker's part:
 *  - a POLLRDHUP poll per side; POLLERR is a reset;
 *  - kg_sockmap_pace for every pair on a 10 ms worker timer, which bounds
 *    what the kernel queues in front of a slow reader (a pair it gives up
 *    on, -ENOBUFS, is closed);
 *  - after a side's EOF, shut the other side's write half only once
 *    everything redirected into it reached its TCP (kg_sockmap_flushed);
 *  - a direction the kernel no longer relays (tail mode) is finished with
 *    kg_sockmap_copy_tail on readiness;
 *  - remove the pair before the fds are closed.
 * A pair that cannot be added (a socket already past ESTABLISHED, no free
 * slot) is relayed with splice instead, and counted. */
#include "forward_sockmap.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <kgate/log.h>

#include "conn.h"
#include "runtime.h"
#include "sockmap.h"
#include "worker.h"

#define PACE_MS 10
#define TAIL_ROUNDS 16

struct kg_smconn {
	struct kg_sockmap_pair pair;
	bool eof[2];        /* side's peer sent FIN (RDHUP on side) */
	bool shut[2];       /* side's write half shut down by us */
	bool rdhup_armed[2];
	bool in_armed[2], out_armed[2]; /* tail mode readiness */
	uint64_t seen_bytes; /* redirected bytes at the last pace, for idleness */
	unsigned waits;      /* pace rounds spent waiting for a flush */
};

static struct kg_smconn *sm_of(const struct kg_conn *c)
{
	return c->fwd_ctx;
}

static int side_of(const struct kg_conn *c, int fd)
{
	return fd == c->cfd ? KG_SM_CLIENT : KG_SM_BACKEND;
}

static void arm(struct kg_conn *c, int side, unsigned mask, int op, bool *armed)
{
	kg_conn_arm_poll(c, side == KG_SM_CLIENT ? c->cfd : c->bfd, mask, op, armed);
}

static void arm_pace_timer(struct kg_worker *w)
{
	if (w->sockmap_timer_armed)
		return;
	w->sockmap_pace.tv_sec = 0;
	w->sockmap_pace.tv_nsec = PACE_MS * 1000000LL;
	struct io_uring_sqe *sqe = kg_worker_sqe(w);
	io_uring_prep_timeout(sqe, &w->sockmap_pace, 0, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_FWD_TIMER, KG_PATH_SOCKMAP, -1));
	w->sockmap_timer_armed = true;
}

/* The bytes moved for this pair so far, by the kernel and by the tail
 * copy: progress for the idle deadline. */
static uint64_t moved(struct kg_conn *c)
{
	uint64_t total = 0;
	for (int side = 0; side < 2; side++) {
		uint64_t into = 0;
		if (kg_sockmap_redirected(c->worker->rt->sockmap, &sm_of(c)->pair, side,
					  &into, NULL) == 0)
			total += into;
		total += sm_of(c)->pair.tail_bytes[side];
	}
	return total;
}

/* Paces the pair (sockmap.h); false when that closed the connection. */
static bool pace(struct kg_conn *c)
{
	int e = kg_sockmap_pace(c->worker->rt->sockmap, &sm_of(c)->pair);
	if (e == -ENOBUFS) {
		/* A peer that reads nothing back but keeps sending: the kernel
		 * cannot stop it on this path (bpf/README.md). */
		char why[96];
		snprintf(why, sizeof(why),
			 "sockmap: a peer sends but reads nothing back (over %u MiB held)",
			 KG_SM_HOLD_BYTES >> 20);
		log_notice("sockmap.overrun", KV("listener", c->listener->conf->name),
			   KV("worker", c->worker->id), KV("conn", c->idx),
			   KV("held_limit_mib", KG_SM_HOLD_BYTES >> 20), KV("action", "reset"));
		/* Reset, not FIN: removing the pair discards what the sockets
		 * still hold, and a FIN would make that look like a clean end. */
		kg_conn_reset(c, why);
		return false;
	}
	if (e < 0) {
		kg_conn_close_err(c, "sockmap pacing", -e);
		return false;
	}
	return true;
}

/* Moves what the ends allow: tail copies, shutdowns once flushed, close
 * when both write halves are shut. */
static void progress(struct kg_conn *c)
{
	struct kg_smconn *s = sm_of(c);
	struct kg_sockmap *sm = c->worker->rt->sockmap;

	for (int src = 0; src < 2 && c->state == KG_CONN_FORWARDING; src++) {
		int dst = 1 - src;
		if (s->shut[dst])
			continue;
		if (s->pair.tail[src]) {
			ssize_t n = 1;
			for (int round = 0; round < TAIL_ROUNDS && n > 0; round++)
				n = kg_sockmap_copy_tail(sm, &s->pair, src);
			if (n > 0 || n == -EAGAIN) {
				arm(c, src, POLLIN | POLLRDHUP, KG_OP_POLL_IN, &s->in_armed[src]);
				arm(c, dst, POLLOUT, KG_OP_POLL_OUT, &s->out_armed[dst]);
				continue;
			}
			if (n < 0) {
				kg_conn_close_err(c, "sockmap tail copy", (int)-n);
				return;
			}
			s->eof[src] = true; /* n == 0: src ended, all of it moved */
		} else if (!s->eof[src]) {
			continue;
		} else {
			int f = kg_sockmap_flushed(sm, &s->pair, dst);
			if (f == 0) {
				if (kg_log_level >= KG_LOG_DEBUG && ++s->waits % 100 == 0) {
					uint64_t into = 0, dropped = 0;
					kg_sockmap_redirected(sm, &s->pair, dst, &into, &dropped);
					log_debug("sockmap.not_flushed", KV("worker", c->worker->id),
						  KV("conn", c->idx),
						  KV("side", dst == KG_SM_CLIENT ? "client"
										 : "backend"),
						  KV("redirected", into), KV("dropped", dropped),
						  KV("tail_bytes", s->pair.tail_bytes[dst]));
				}
				continue; /* the pace timer looks again */
			}
			if (f < 0) {
				kg_conn_close_err(c, "sockmap flush check", -f);
				return;
			}
		}
		shutdown(dst == KG_SM_CLIENT ? c->cfd : c->bfd, SHUT_WR);
		s->shut[dst] = true;
		log_debug("sockmap.side_finished", KV("worker", c->worker->id), KV("conn", c->idx),
			  KV("side", src == KG_SM_CLIENT ? "client" : "backend"),
			  KV("shut", dst == KG_SM_CLIENT ? "client" : "backend"));
	}
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (s->shut[0] && s->shut[1]) {
		kg_conn_close(c, "both directions finished");
		return;
	}
	for (int side = 0; side < 2; side++)
		if (!s->eof[side])
			arm(c, side, POLLRDHUP, KG_OP_SOCKMAP_RDHUP, &s->rdhup_armed[side]);
}

/* A pair the sockmap cannot take is declined (-EOPNOTSUPP): the caller
 * splices it instead. */
static int sockmap_start(struct kg_conn *c, const void *early, size_t early_len, char *err,
			 size_t errlen)
{
	struct kg_worker *w = c->worker;
	(void)early;
	if (early_len > 0) {
		snprintf(err, errlen, "sockmap takes no early data");
		return -EINVAL; /* plain tcp listeners have none */
	}
	struct kg_smconn *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int r = kg_sockmap_add_pair(w->rt->sockmap, &s->pair, c->cfd, c->bfd);
	if (r == -EOPNOTSUPP || r == -ENOSPC) {
		free(s);
		kg_count(w, sockmap_fallback);
		log_debug("sockmap.fallback", KV("listener", c->listener->conf->name),
			  KV("worker", w->id), KV("conn", c->idx), KV_ERRNO(-r),
			  KV("path", "splice"));
		return -EOPNOTSUPP;
	}
	if (r < 0) {
		free(s);
		snprintf(err, errlen, "sockmap: %s", strerror(-r));
		return r;
	}
	c->fwd_ctx = s;
	w->n_sockmap++;
	log_debug("sockmap.paired", KV("listener", c->listener->conf->name), KV("worker", w->id),
		  KV("conn", c->idx), KV("slot", s->pair.slot));
	return 0;
}

static void sockmap_run(struct kg_conn *c)
{
	arm_pace_timer(c->worker);
	progress(c);
}

static void sockmap_on_poll(struct kg_conn *c, int op, int fd, int res)
{
	struct kg_smconn *s = sm_of(c);
	int side = side_of(c, fd);
	c->inflight--;
	if (op == KG_OP_POLL_OUT)
		s->out_armed[side] = false;
	else if (op == KG_OP_POLL_IN)
		s->in_armed[side] = false;
	else
		s->rdhup_armed[side] = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res < 0 && res != -ECANCELED) {
		kg_conn_close_err(c, "poll", -res);
		return;
	}
	if (res > 0 && (res & POLLERR)) {
		kg_conn_close(c, side == KG_SM_CLIENT ? "client reset" : "backend reset");
		return;
	}
	log_debug("sockmap.poll", KV("worker", c->worker->id), KV("conn", c->idx),
		  KV("side", side == KG_SM_CLIENT ? "client" : "backend"), KV("op", (int)op),
		  KV("events", res));
	if (res > 0 && (res & (POLLRDHUP | POLLHUP)) && !s->eof[side]) {
		/* Its peer is done sending; what it sent may still be on the way
		 * to the other side, which progress() waits for. */
		if (!s->pair.tail[side])
			s->eof[side] = true;
		if (!pace(c))
			return;
	}
	progress(c);
}

/* Every PACE_MS while the worker has sockmap pairs. */
static void sockmap_pace_all(struct kg_worker *w)
{
	w->sockmap_timer_armed = false;
	for (uint32_t i = 0; i < w->high_water; i++) {
		struct kg_conn *c = w->conns[i];
		if (!c || c->fwd != &kg_fwd_sockmap_ops || !c->fwd_ctx ||
		    c->state != KG_CONN_FORWARDING)
			continue;
		if (!pace(c))
			continue;
		uint64_t now = moved(c);
		if (now != sm_of(c)->seen_bytes) {
			sm_of(c)->seen_bytes = now;
			kg_conn_touch(c);
		}
		progress(c);
	}
	if (w->n_sockmap > 0)
		arm_pace_timer(w);
}

static void sockmap_release(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	struct kg_smconn *s = sm_of(c);
	if (!s)
		return;
	uint64_t bytes[2] = {0, 0};
	for (int side = 0; side < 2; side++)
		kg_sockmap_redirected(w->rt->sockmap, &s->pair, side, &bytes[side], NULL);
	kg_count_add(&w->stats.forwarded_c2b, bytes[KG_SM_BACKEND] + s->pair.tail_bytes[KG_SM_BACKEND]);
	kg_count_add(&w->stats.forwarded_b2c, bytes[KG_SM_CLIENT] + s->pair.tail_bytes[KG_SM_CLIENT]);
	int r = kg_sockmap_remove_pair(w->rt->sockmap, &s->pair);
	if (r < 0)
		log_warn("sockmap.remove_failed", KV("worker", w->id), KV("conn", c->idx),
			 KV_ERRNO(-r));
	free(s);
	c->fwd_ctx = NULL;
	w->n_sockmap--;
}

const struct kg_fwd_ops kg_fwd_sockmap_ops = {
	.name = "sockmap",
	.start = sockmap_start,
	.run = sockmap_run,
	.on_poll = sockmap_on_poll,
	.release = sockmap_release,
	.on_worker_timer = sockmap_pace_all,
	.fallback = KG_PATH_SPLICE,
};
