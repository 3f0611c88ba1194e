/* The worker's event loop: one io_uring ring, one thread, one switch over
 * the op packed in each completion's user_data. */
#include "worker.h"

#include <errno.h>
#include <malloc.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/async.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "accept_balance.h"
#include "backend_pool.h"
#include "conn.h"
#include "fwd.h"
#include "health.h"
#include "ocsp.h"
#include "listener.h"

#define RING_ENTRIES 4096
/* Connection slots per worker: listeners come and go at run time, so the
 * table is sized once for the largest load one worker is meant to carry. */
#define CONNS_PER_WORKER 65536
#define WARN_LINES_PER_SEC 10

bool kg_worker_warn_allowed(struct kg_worker *w)
{
	if (w->now_ms - w->log_window_ms >= 1000) {
		if (w->log_suppressed)
			log_warn("log.suppressed", KV("worker", w->id),
				 KV("count", w->log_suppressed));
		w->log_window_ms = w->now_ms;
		w->log_in_window = 0;
		w->log_suppressed = 0;
	}
	if (w->log_in_window >= WARN_LINES_PER_SEC) {
		w->log_suppressed++;
		return false;
	}
	w->log_in_window++;
	return true;
}

/* Submits until n SQEs are free.
 *
 * -EBUSY: the kernel holds completions it cannot post until the ring's
 * completion queue has room. The loop reaps each completion as soon as it
 * is handled and the queue is 8 times the submission queue, so this needs
 * thousands of completions waiting behind the one being handled; a handler
 * cannot reap them itself (it is in the middle of one). Retrying cannot
 * clear that, so the retries are bounded: past SUBMIT_RETRIES the worker
 * stops with a clear line (systemd restarts the daemon) rather than spin. */
#define SUBMIT_RETRIES 1000

static void make_room(struct kg_worker *w, unsigned n)
{
	for (unsigned tries = 0; io_uring_sq_space_left(&w->ring) < n; tries++) {
		int ret = io_uring_submit(&w->ring);
		if (ret >= 0 || ret == -EINTR)
			continue;
		if (ret != -EAGAIN && ret != -EBUSY)
			log_err("worker.submit_failed", KV("worker", w->id), KV_ERRNO(-ret));
		if (tries == SUBMIT_RETRIES) {
			log_err("worker.submit_stuck", KV("worker", w->id), KV_ERRNO(-ret),
				KV("tries", tries),
				KV("reason", "the kernel refuses submissions until completions are "
					     "reaped; stopping instead of spinning"));
			abort();
		}
		sched_yield();
	}
}

struct io_uring_sqe *kg_worker_sqe(struct kg_worker *w)
{
	make_room(w, 1);
	return io_uring_get_sqe(&w->ring);
}

void kg_worker_sqe_timed(struct kg_worker *w, struct io_uring_sqe **op,
			 struct io_uring_sqe **timeout)
{
	make_room(w, 2);
	*op = io_uring_get_sqe(&w->ring);
	*timeout = io_uring_get_sqe(&w->ring);
}

static void cmd_done(struct kg_wcmd *cmd);

/* Set once by main before the first worker is created (worker.h). */
static const struct kg_worker_service *service;

void kg_worker_set_service(const struct kg_worker_service *svc)
{
	service = svc;
}

static void arm_accept(struct kg_worker *w, uint32_t li)
{
	if (w->listen_fds[li] < 0 || w->accept_armed[li] || w->unlisten[li] ||
	    atomic_load_explicit(&w->rt->accept_held, memory_order_relaxed))
		return;
	struct io_uring_sqe *sqe = kg_worker_sqe(w);
	io_uring_prep_multishot_accept(sqe, w->listen_fds[li], NULL, NULL,
				       SOCK_NONBLOCK | SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_ACCEPT, li, w->listen_fds[li]));
	w->accept_armed[li] = true;
}

static void arm_tick(struct kg_worker *w)
{
	struct io_uring_sqe *sqe = kg_worker_sqe(w);
	/* On the wheel's granule boundaries, absolute (CLOCK_MONOTONIC, as
	 * kg_now_ms): a deadline, rounded up to a boundary by the wheel, is
	 * expired when that boundary's tick runs, at most one granule late.
	 * A relative timeout would drift to any phase and add a granule. */
	uint64_t next = (kg_now_ms() / KG_WHEEL_GRANULE_MS + 1) * KG_WHEEL_GRANULE_MS;
	kg_ms_to_ts(next, &w->tick_at);
	io_uring_prep_timeout(sqe, &w->tick_at, 0, IORING_TIMEOUT_ABS);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_TICK, 0, -1));
}

static void post_cmd(struct kg_worker *w, struct kg_wcmd *cmd);

/* The least loaded worker takes the connection (accept_balance.h). A
 * hand-over that cannot be allocated keeps it here. */
static void place_accepted(struct kg_worker *w, uint32_t li, int fd)
{
	struct kg_runtime *rt = w->rt;
	if (rt->slots[li].steered) {
		/* The program chose this worker already (steer.h). */
		if (w->steer_pending)
			__atomic_fetch_sub(w->steer_pending, 1, __ATOMIC_RELAXED);
		kg_conn_accept(w, li, fd);
		return;
	}
	uint32_t loads[KG_MAX_WORKERS];
	unsigned n = rt->n_workers;
	for (unsigned i = 0; i < n; i++)
		loads[i] = atomic_load_explicit(&rt->workers[i]->n_conns, memory_order_relaxed) +
			   atomic_load_explicit(&rt->workers[i]->incoming, memory_order_relaxed);
	unsigned to = n > 1 && !w->draining ? kg_accept_owner(loads, n, w->id) : w->id;
	struct kg_wcmd *cmd = to != w->id ? malloc(sizeof(*cmd)) : NULL;
	if (!cmd) {
		kg_conn_accept(w, li, fd);
		return;
	}
	*cmd = (struct kg_wcmd){.op = KG_WCMD_ADOPT, .slot = li, .fd = fd};
	atomic_fetch_add_explicit(&rt->workers[to]->incoming, 1, memory_order_relaxed);
	kg_count(w, handed_over);
	post_cmd(rt->workers[to], cmd);
}

static void on_accept(struct kg_worker *w, uint32_t li, const struct io_uring_cqe *cqe)
{
	if (cqe->res >= 0) {
		place_accepted(w, li, cqe->res);
	} else if (cqe->res != -ECANCELED) {
		/* EMFILE/ENFILE/ENOMEM: the accept is re-armed on the next
		 * tick rather than at once, so a full fd table cannot spin. */
		kg_worker_warn(w, "listener.accept_failed", KV("worker", w->id),
			       KV("listener_slot", li), KV_ERRNO(-cqe->res));
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		return;
	w->accept_armed[li] = false;
	if (w->unlisten[li]) {
		close(w->listen_fds[li]);
		w->listen_fds[li] = -1;
		cmd_done(w->unlisten[li]);
		w->unlisten[li] = NULL;
	} else if (w->draining) {
		close(w->listen_fds[li]);
		w->listen_fds[li] = -1;
	} else if (cqe->res >= 0) {
		arm_accept(w, li);
	}
}

/* Stops accepting on slot li: the socket closes now, or when the armed
 * multishot accept reports its last completion (the kernel still holds it
 * until then). Returns true when the socket is already closed. */
static bool stop_accept(struct kg_worker *w, uint32_t li)
{
	if (w->listen_fds[li] < 0)
		return true;
	if (w->accept_armed[li]) {
		struct io_uring_sqe *sqe = kg_worker_sqe(w);
		io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_ACCEPT, li, w->listen_fds[li]), 0);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, li, -1));
		return false;
	}
	close(w->listen_fds[li]);
	w->listen_fds[li] = -1;
	return true;
}

static void begin_drain(struct kg_worker *w)
{
	unsigned drain_ms = atomic_load(&w->rt->drain_timeout_ms);
	w->draining = true;
	w->drain_deadline_ms = w->now_ms + drain_ms;
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++)
		stop_accept(w, li);
	if (service)
		service->stop(w->service);
	log_info("worker.draining", KV("worker", w->id), KV("conns", w->n_conns),
		 KV("timeout_ms", drain_ms));
}

static void cmd_done(struct kg_wcmd *cmd)
{
	struct kg_wcmd_batch *b = cmd->batch;
	pthread_mutex_lock(&b->lock);
	if (--b->pending == 0)
		pthread_cond_broadcast(&b->done);
	pthread_mutex_unlock(&b->lock);
}

static void arm_wake(struct kg_worker *w)
{
	struct io_uring_sqe *sqe = kg_worker_sqe(w);
	io_uring_prep_read(sqe, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_WAKE, 0, w->wake_fd));
}

static void run_command(struct kg_worker *w, struct kg_wcmd *cmd)
{
	uint32_t li = cmd->slot;
	switch (cmd->op) {
	case KG_WCMD_LISTEN:
		if (w->listen_fds[li] >= 0 || w->draining) {
			/* Cannot happen while the control thread keeps slot
			 * states straight; refuse rather than leak. */
			close(cmd->fd);
		} else {
			w->listen_fds[li] = cmd->fd;
			arm_accept(w, li);
		}
		cmd_done(cmd);
		return;
	case KG_WCMD_UNLISTEN:
		if (stop_accept(w, li))
			cmd_done(cmd);
		else
			w->unlisten[li] = cmd;
		return;
	case KG_WCMD_HEALTH:
		if (service && !w->draining)
			service->on_listeners_changed(w->service);
		cmd_done(cmd);
		return;
	case KG_WCMD_ACCEPT:
		for (uint32_t i = 0; i < KG_MAX_LISTENERS && !w->draining; i++)
			arm_accept(w, i);
		cmd_done(cmd);
		return;
	case KG_WCMD_ADOPT:
		/* Served even while draining; a removed listener closes it there. */
		kg_conn_accept(w, li, cmd->fd);
		atomic_fetch_sub_explicit(&w->incoming, 1, memory_order_relaxed);
		free(cmd);
		return;
	}
}

static void on_wake(struct kg_worker *w, int res)
{
	if (res < 0 && res != -EAGAIN && res != -EINTR)
		log_err("worker.wake_read_failed", KV("worker", w->id), KV_ERRNO(-res));
	pthread_mutex_lock(&w->cmd_lock);
	struct kg_wcmd *list = w->cmds;
	w->cmds = NULL;
	pthread_mutex_unlock(&w->cmd_lock);
	/* The list is newest first; run in posting order. */
	struct kg_wcmd *ordered = NULL;
	while (list) {
		struct kg_wcmd *next = list->next;
		list->next = ordered;
		ordered = list;
		list = next;
	}
	while (ordered) {
		struct kg_wcmd *next = ordered->next;
		run_command(w, ordered); /* may complete the poster's wait: no touch after */
		ordered = next;
	}
	arm_wake(w);
}

/* Queues cmd for w and wakes it; any thread. */
static void post_cmd(struct kg_worker *w, struct kg_wcmd *cmd)
{
	uint64_t one = 1;
	pthread_mutex_lock(&w->cmd_lock);
	cmd->next = w->cmds;
	w->cmds = cmd;
	pthread_mutex_unlock(&w->cmd_lock);
	/* An eventfd write only fails on counter overflow, which a worker
	 * reading it cannot let happen. */
	if (write(w->wake_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		log_err("worker.wake_failed", KV("worker", w->id), KV_ERRNO(errno));
}

static void post_and_wait(struct kg_runtime *rt, enum kg_wcmd_op op, uint32_t slot,
			  int *fds)
{
	struct kg_wcmd cmds[KG_MAX_WORKERS];
	struct kg_wcmd_batch batch = {.pending = rt->n_workers};
	pthread_mutex_init(&batch.lock, NULL);
	pthread_cond_init(&batch.done, NULL);
	for (unsigned i = 0; i < rt->n_workers; i++) {
		cmds[i] = (struct kg_wcmd){.op = op, .slot = slot, .fd = fds ? fds[i] : -1,
					   .batch = &batch};
		post_cmd(rt->workers[i], &cmds[i]);
	}
	pthread_mutex_lock(&batch.lock);
	while (batch.pending > 0)
		pthread_cond_wait(&batch.done, &batch.lock);
	pthread_mutex_unlock(&batch.lock);
	pthread_cond_destroy(&batch.done);
	pthread_mutex_destroy(&batch.lock);
}

void kg_workers_listen(struct kg_runtime *rt, uint32_t slot, int *fds)
{
	post_and_wait(rt, KG_WCMD_LISTEN, slot, fds);
}

void kg_workers_unlisten(struct kg_runtime *rt, uint32_t slot)
{
	post_and_wait(rt, KG_WCMD_UNLISTEN, slot, NULL);
}

void kg_workers_recheck(struct kg_runtime *rt)
{
	post_and_wait(rt, KG_WCMD_HEALTH, 0, NULL);
}

void kg_workers_accept(struct kg_runtime *rt)
{
	atomic_store(&rt->accept_held, false);
	post_and_wait(rt, KG_WCMD_ACCEPT, 0, NULL);
}

static void release_closed(struct kg_worker *w, uint32_t idx)
{
	struct kg_conn *c = w->conns[idx];
	if (c && c->state == KG_CONN_CLOSING)
		kg_conn_release_if_idle(c);
}

/* The snapshots published now, taken once per tick and slot when a
 * connection asks (released at the end of the tick). */
struct tick_snaps {
	struct kg_listener_rt *snap[KG_MAX_LISTENERS];
	bool taken[KG_MAX_LISTENERS];
};

/* Established connections to a member that was disabled, or that turned
 * unhealthy under cut_on_unhealthy, are closed by the scan that follows
 * the change (conn.h kg_conn_cut_if_needed). */
static bool cut_if_needed(struct kg_conn *c, struct tick_snaps *ts)
{
	bool per_stream = c->fwd && c->fwd->cut;
	if ((!c->member_counted && !per_stream) || c->state != KG_CONN_FORWARDING)
		return false;
	uint32_t li = c->listener_idx;
	if (!ts->taken[li]) {
		ts->snap[li] = kg_listener_acquire(c->listener->slot);
		ts->taken[li] = true;
	}
	return per_stream ? c->fwd->cut(c, ts->snap[li]) : kg_conn_cut_if_needed(c, ts->snap[li]);
}

/* heap_trim.h: RSS goes back down once a wave of connections is over. */
static void trim_heap_after_wave(struct kg_worker *w)
{
	uint32_t conns = atomic_load_explicit(&w->n_conns, memory_order_relaxed);
	uint32_t peak = 0;

	if (!kg_heap_trim_due(&w->heap_trim, conns, w->now_ms, &peak))
		return;
	/* One trim at a time in the process: workers whose ticks share the
	 * wheel's boundaries see a wave end together, and glibc sets its
	 * arenas up lazily on the first malloc_trim when another allocator
	 * serves malloc (AddressSanitizer's): two first calls at once crashed
	 * there. Trims are seconds apart per worker; waiting costs nothing. */
	static pthread_mutex_t trim_lock = PTHREAD_MUTEX_INITIALIZER;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&trim_lock);
	malloc_trim(0);
	pthread_mutex_unlock(&trim_lock);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long long took_us = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
	log_info("worker.heap_trimmed", KV("worker", w->id), KV("conns", conns), KV("peak", peak),
		 KV("took_us", took_us));
}

/* Established connections to a member that was disabled, or that turned
 * unhealthy under cut_on_unhealthy, are looked for only when a listener's
 * health group says a member's state changed (its cut generation), or its
 * snapshot changed: not on every tick. */
static bool cuts_changed(struct kg_worker *w)
{
	bool changed = false;
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++) {
		struct kg_listener_slot *slot = &w->rt->slots[li];
		if (atomic_load_explicit(&slot->active, memory_order_relaxed) == 0) {
			w->cut_snap[li] = 0;
			continue;
		}
		struct kg_listener_rt *snap = kg_listener_acquire(slot);
		uint64_t serial = snap ? snap->serial : 0;
		unsigned gen = snap ? kg_listener_cut_gen(snap) : 0;
		if (serial != w->cut_snap[li] || gen != w->cut_gen[li])
			changed = true;
		w->cut_snap[li] = serial;
		w->cut_gen[li] = gen;
		kg_listener_put(snap);
	}
	return changed;
}

/* Visits every connection: while draining (each tick, for the drain
 * timeout and https' idle keep-alive connections), and when cuts may be
 * due. */
static void scan(struct kg_worker *w, bool drain_expired, bool cuts)
{
	struct tick_snaps ts = {0};
	for (uint32_t i = 0; i < w->high_water; i++) {
		struct kg_conn *c = w->conns[i];
		if (!c)
			continue;
		if (drain_expired)
			kg_conn_close(c, "drain timeout");
		else if (!(cuts && cut_if_needed(c, &ts)) && w->draining)
			kg_conn_check_deadline(c);
		release_closed(w, i);
	}
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++)
		kg_listener_put(ts.snap[li]);
}

/* Connections whose timer is due: deadlines, idle trims, and closing ones
 * to free. Each is re-armed for its next visit. */
static void expire_timers(struct kg_worker *w)
{
	struct kg_timer *t;
	while ((t = kg_wheel_expire(&w->timers, w->now_ms))) {
		struct kg_conn *c = (struct kg_conn *)((char *)t - offsetof(struct kg_conn, timer));
		uint64_t next = kg_conn_on_timer(c);
		if (c->state == KG_CONN_CLOSING) {
			release_closed(w, c->idx);
			continue;
		}
		/* A deadline that stays in the past (a connect in progress
		 * past the https response deadline) is looked at each tick. */
		kg_wheel_arm(&w->timers, t, next > w->now_ms ? next : w->now_ms + KG_WHEEL_GRANULE_MS);
	}
}

/* The program marks a connection pending on the worker it chose at the
 * SYN; a handshake that never completes is never accepted, so its mark
 * would stay. Once a second, a worker whose accept queues are empty
 * clears its marks (a SYN still in flight then counts 0, at worst one
 * second long). */
#define STEER_RESYNC_MS 1000
static void steer_resync(struct kg_worker *w)
{
	if (!w->steer_pending || w->now_ms - w->steer_resync_ms < STEER_RESYNC_MS)
		return;
	w->steer_resync_ms = w->now_ms;
	if (__atomic_load_n(w->steer_pending, __ATOMIC_RELAXED) == 0)
		return;
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++)
		if (w->listen_fds[li] >= 0 && kg_listener_queued(w->listen_fds[li]) > 0)
			return;
	__atomic_store_n(w->steer_pending, 0, __ATOMIC_RELAXED);
}

static void on_tick(struct kg_worker *w)
{
	if (!w->draining && atomic_load(&w->rt->stopping))
		begin_drain(w);
	expire_timers(w);
	bool drain_expired = w->draining && w->now_ms >= w->drain_deadline_ms;
	bool cuts = cuts_changed(w);
	if (w->draining || cuts)
		scan(w, drain_expired, cuts);
	if (drain_expired)
		kg_ocsp_cancel_all(w->ocsp);
	if (service)
		service->on_tick(w->service, w->now_ms);
	kg_backend_pool_expire(w->pool, w->now_ms);
	size_t n_fw;
	const struct kg_fwd_ops *const *fw = kg_fwd_worker_ops(&n_fw);
	for (size_t i = 0; i < n_fw; i++)
		if (fw[i]->on_worker_tick)
			fw[i]->on_worker_tick(w);
	trim_heap_after_wave(w);
	steer_resync(w);
	for (uint32_t li = 0; li < KG_MAX_LISTENERS && !w->draining; li++)
		arm_accept(w, li);
	arm_tick(w);
}

static void dispatch(struct kg_worker *w, const struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	enum kg_op op = kg_ud_op(ud);
	uint32_t idx = kg_ud_idx(ud);

	switch (op) {
	case KG_OP_ACCEPT:
		on_accept(w, idx, cqe);
		return;
	case KG_OP_TICK:
		on_tick(w);
		return;
	case KG_OP_FWD_TIMER: {
		const struct kg_fwd_ops *ops = kg_fwd_for((enum kg_path)idx);
		if (ops && ops->on_worker_timer)
			ops->on_worker_timer(w);
		return;
	}
	case KG_OP_CANCEL:
		return;
	case KG_OP_HEALTH_TIMER:
	case KG_OP_HEALTH_CONNECT:
	case KG_OP_HEALTH_SEND:
	case KG_OP_HEALTH_RECV:
	case KG_OP_HEALTH_LINK_TIMEOUT:
		if (service)
			service->on_cqe(w->service, op, idx, cqe->res);
		return;
	case KG_OP_WAKE:
		on_wake(w, cqe->res);
		return;
	case KG_OP_OCSP_CONNECT:
	case KG_OP_OCSP_SEND:
	case KG_OP_OCSP_RECV:
	case KG_OP_OCSP_LINK_TIMEOUT:
		kg_ocsp_on_cqe(w->ocsp, (enum kg_ocsp_op)(op - KG_OP_OCSP_CONNECT), idx, cqe->res);
		return;
	case KG_OP_FWD_CONNECT:
	case KG_OP_FWD_LINK_TIMEOUT:
	case KG_OP_FWD_RECV:
	case KG_OP_FWD_SEND: {
		const struct kg_fwd_ops *ops = kg_fwd_for(kg_fwd_ud_path(idx));
		if (ops && ops->on_worker_cqe)
			ops->on_worker_cqe(w, op, kg_fwd_ud_slot(idx), cqe->res);
		else
			log_err("worker.stray_completion", KV("worker", w->id), KV("op", (int)op),
				KV("conn", idx));
		return;
	}
	default:
		break;
	}

	struct kg_conn *c = idx < w->capacity ? w->conns[idx] : NULL;
	if (!c) {
		log_err("worker.stray_completion", KV("worker", w->id), KV("op", (int)op),
			KV("conn", idx));
		return;
	}
	switch (op) {
	case KG_OP_CLIENT_RECV:
		kg_conn_on_client_recv(c, cqe->res, kg_bufpool_recv_data(&w->bufs, cqe->flags));
		break;
	case KG_OP_CLIENT_SEND:
		kg_conn_on_client_send(c, cqe->res);
		break;
	case KG_OP_BACKEND_CONNECT:
		kg_conn_on_backend_connect(c, cqe->res);
		break;
	case KG_OP_LINK_TIMEOUT:
		c->inflight--;
		break;
	case KG_OP_BACKEND_RECV:
	case KG_OP_BACKEND_SEND:
	case KG_OP_HTTP_BACKEND_RECV:
	case KG_OP_HTTP_BACKEND_SEND:
		if (!c->fwd || !c->fwd->on_backend_io)
			goto stray;
		c->fwd->on_backend_io(c, op, kg_ud_fd(ud), cqe->res,
				      kg_bufpool_recv_data(&w->bufs, cqe->flags));
		break;
	case KG_OP_POLL_IN:
	case KG_OP_POLL_OUT:
	case KG_OP_SOCKMAP_RDHUP:
	case KG_OP_SPLICE_BACKOFF:
		if (!c->fwd || !c->fwd->on_poll)
			goto stray;
		c->fwd->on_poll(c, op, kg_ud_fd(ud), cqe->res);
		break;
	case KG_OP_HTTP_CONNECT:
		if (!c->fwd || !c->fwd->on_connect)
			goto stray;
		c->fwd->on_connect(c, kg_ud_fd(ud), cqe->res);
		break;
	default:
		log_err("worker.unknown_op", KV("worker", w->id), KV("op", (int)op));
		return;
	}
	release_closed(w, idx);
	return;
stray:
	/* A completion no forwarder of c asked for: accounted, so the
	 * connection can still be freed. */
	log_err("worker.stray_completion", KV("worker", w->id), KV("op", (int)op), KV("conn", idx),
		KV("path", kg_path_name(c->path)));
	c->inflight--;
	release_closed(w, idx);
}

#define RING_FAST_FLAGS (IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN)

const char *kg_ring_setup_name(unsigned setup_flags)
{
	return (setup_flags & RING_FAST_FLAGS) == RING_FAST_FLAGS ? "SINGLE_ISSUER|DEFER_TASKRUN"
								    : "none";
}

/* IORING_FEAT_* by bit, from the kernel's uapi (stable ABI values); named
 * here because the build's headers may be older than the running kernel. */
static const char *const feature_names[] = {
	"SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY",
	"FAST_POLL", "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS",
	"RSRC_TAGS", "CQE_SKIP", "LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE",
	"MIN_TIMEOUT", "RW_ATTR", "NO_IOWAIT",
};

void kg_ring_features_format(unsigned features, char *out, size_t len)
{
	size_t used = 0;
	if (len == 0)
		return;
	out[0] = '\0';
	for (unsigned bit = 0; bit < 32; bit++) {
		if (!(features & (1U << bit)))
			continue;
		char unnamed[16];
		const char *name = bit < sizeof(feature_names) / sizeof(feature_names[0])
					   ? feature_names[bit] : NULL;
		if (!name) {
			snprintf(unnamed, sizeof(unnamed), "bit%u", bit);
			name = unnamed;
		}
		int n = snprintf(out + used, len - used, "%s%s", used ? "," : "", name);
		if (n < 0 || (size_t)n >= len - used)
			return;
		used += (size_t)n;
	}
}

/* Records what the kernel granted in w->ring_info (status, metrics). */
static int ring_init(struct kg_worker *w)
{
	struct io_uring_params p;
	/* Only this thread submits, and task work may wait until we ask for
	 * completions: fewer interrupts and context switches per operation. */
	/* Completions outnumber submissions (multishot accept, provided-
	 * buffer receives): a completion queue 8 times the submission queue. */
	/* Disabled until the worker thread enables it (kg_worker_ring_create). */
	memset(&p, 0, sizeof(p));
	p.flags = RING_FAST_FLAGS | IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED;
	p.cq_entries = 8 * RING_ENTRIES;
	int ret = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
	if (ret == -EINVAL) {
		/* Kernels before 6.1 know neither flag: a plain ring works. */
		w->ring_info.fallback_err = ret;
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED;
		p.cq_entries = 8 * RING_ENTRIES;
		ret = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
	}
	if (ret == 0) {
		w->ring_info.setup_flags = p.flags & ~(unsigned)IORING_SETUP_R_DISABLED;
		w->ring_info.features = p.features;
	}
	return ret;
}

int kg_worker_ring_create(struct kg_worker *w)
{
	int ret = ring_init(w);
	w->ring_open = ret == 0;
	return ret;
}

/* The worker's last use of its ring; also kg_worker_destroy's for a
 * ring whose thread never ran. */
static void ring_exit(struct kg_worker *w)
{
	if (!w->ring_open)
		return;
	io_uring_queue_exit(&w->ring);
	w->ring_open = false;
}

static bool finished(const struct kg_worker *w)
{
	/* incoming: connections another worker handed over and this one has
	 * not taken yet; it serves them before it stops. */
	if (!w->draining || w->n_conns > 0 ||
	    atomic_load_explicit(&w->incoming, memory_order_relaxed) > 0 ||
	    (service && !service->idle(w->service)) || !kg_ocsp_idle(w->ocsp))
		return false;
	size_t n_fw;
	const struct kg_fwd_ops *const *fw = kg_fwd_worker_ops(&n_fw);
	for (size_t i = 0; i < n_fw; i++)
		if (fw[i]->worker_idle && !fw[i]->worker_idle(w))
			return false;
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++)
		if (w->listen_fds[li] >= 0)
			return false;
	return true;
}

/* The worker.stopped event: the worker's counters over its life, one key
 * per row of the counter table (counters.h) and path_* per forwarding path
 * (paths.h). */
static void log_counters(const struct kg_worker *w)
{
	if (KG_LOG_INFO > kg_log_level)
		return;
	struct kg_log_field f[1 + KG_COUNTER_COUNT + KG_PATH_COUNT + 1];
	size_t n = 0;
	f[n++] = KV("worker", w->id);
	for (size_t i = 0; i < KG_COUNTER_COUNT; i++)
		f[n++] = kg_lf_uint(kg_counter_table[i].log_key, kg_counter_read(&w->stats, i));
	for (int p = KG_PATH_NONE + 1; p < KG_PATH_COUNT; p++)
		f[n++] = kg_lf_uint(kg_path_log_key((enum kg_path)p),
				    atomic_load_explicit(&w->stats.path[p], memory_order_relaxed));
	f[n] = KG_LOG_END_;
	kg_log_emit(KG_LOG_INFO, "worker.stopped", f);
}

/* KGATED_POLL_WAIT=1, for measuring only (kgated(8) ENVIRONMENT): the
 * worker sleeps in poll(2) on an eventfd registered on its ring instead
 * of in io_uring_enter. Valgrind (3.19) runs io_uring_enter as a syscall
 * that cannot block, so a worker waiting in it holds valgrind's one
 * thread lock and the main thread never runs; poll(2) lets it go. */
static int poll_wait_setup(struct kg_worker *w)
{
	const char *v = getenv("KGATED_POLL_WAIT");
	if (!v || strcmp(v, "1") != 0)
		return 0;
	w->poll_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (w->poll_fd == -1)
		return -errno;
	int ret = io_uring_register_eventfd(&w->ring, w->poll_fd);
	if (ret < 0) {
		close(w->poll_fd);
		w->poll_fd = -1;
	}
	return ret;
}

/* io_uring_submit_and_wait(ring, 1) by way of poll(2): the kernel
 * signals the eventfd when a completion is posted and, on a
 * DEFER_TASKRUN ring, when task work is queued that only a GETEVENTS
 * enter runs. Cleared before that enter, so a signal after it is seen. */
static int poll_wait(struct kg_worker *w)
{
	int ret = io_uring_submit(&w->ring);
	if (ret < 0)
		return ret;
	for (;;) {
		uint64_t n;
		if (read(w->poll_fd, &n, sizeof(n)) == -1 && errno != EAGAIN)
			return -errno;
		ret = io_uring_get_events(&w->ring);
		if (ret < 0)
			return ret;
		if (io_uring_cq_ready(&w->ring))
			return 0;
		struct pollfd p = {.fd = w->poll_fd, .events = POLLIN};
		if (poll(&p, 1, -1) == -1 && errno != EINTR)
			return -errno;
	}
}

static void *worker_main(void *arg)
{
	struct kg_worker *w = arg;

	/* The thread that enables the ring is its single issuer. (Debian
	 * 12's liburing declares io_uring_enable_rings but does not export
	 * it: the register call itself.) */
	w->init_result = syscall(__NR_io_uring_register, w->ring.ring_fd,
				 IORING_REGISTER_ENABLE_RINGS, NULL, 0) == -1 ? -errno : 0;
	if (w->init_result == 0) {
		w->init_result = kg_bufpool_init(&w->bufs, &w->ring);
		if (w->init_result < 0)
			log_err("worker.bufring_failed", KV("worker", w->id),
				KV_ERRNO(-w->init_result));
	}
	if (w->init_result == 0) {
		w->init_result = poll_wait_setup(w);
		if (w->init_result < 0) {
			log_err("worker.poll_wait_failed", KV("worker", w->id),
				KV_ERRNO(-w->init_result));
			kg_bufpool_destroy(&w->bufs, &w->ring);
		}
	}
	if (w->init_result < 0)
		ring_exit(w);
	sem_post(&w->init_done);
	if (w->init_result < 0)
		return NULL;
	char features[512];
	kg_ring_features_format(w->ring_info.features, features, sizeof(features));
	log_info("worker.ring", KV("worker", w->id),
		 KV("setup", kg_ring_setup_name(w->ring_info.setup_flags)),
		 KV("defer_taskrun_refused", (bool)(w->ring_info.fallback_err != 0)),
		 KV("features", features), KV("wait", w->poll_fd >= 0 ? "poll" : "io_uring"));

	w->now_ms = kg_now_ms();
	kg_wheel_init(&w->timers, w->now_ms);
	arm_wake(w);
	arm_tick(w);
	if (service)
		service->start(w->service);

	size_t n_fw;
	const struct kg_fwd_ops *const *fw = kg_fwd_worker_ops(&n_fw);
	while (!finished(w)) {
		int ret = w->poll_fd >= 0 ? poll_wait(w) : io_uring_submit_and_wait(&w->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY &&
		    ret != -ETIME) {
			log_err("worker.wait_failed", KV("worker", w->id), KV_ERRNO(-ret));
			break;
		}
		w->now_ms = kg_now_ms();
		struct io_uring_cqe *cqe;
		unsigned head;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			dispatch(w, cqe);
			/* What a forwarder's worker-wide work moved goes on
			 * now, outside any handler (fwd.h after_cqe). */
			for (size_t i = 0; i < n_fw; i++)
				if (fw[i]->after_cqe)
					fw[i]->after_cqe(w);
			/* Handlers copy what they need: the buffer goes back to
			 * the kernel here, whatever became of the connection. */
			kg_bufpool_recycle(&w->bufs, cqe->flags);
			/* Reaped at once, not per batch: a handler that must
			 * submit finds room for the kernel's held completions. */
			io_uring_cq_advance(&w->ring, 1);
		}
	}
	log_counters(w);
	if (w->bufs.enobufs)
		log_info("worker.bufring_empty", KV("worker", w->id),
			 KV("receives", w->bufs.enobufs),
			 KV("ring_buffers", w->bufs.rings[KG_RING_RECORD].n_bufs),
			 KV("batch_buffers", w->bufs.rings[KG_RING_BATCH].n_bufs));
	kg_bufpool_destroy(&w->bufs, &w->ring);
	ring_exit(w);
	/* The async jobs OCSP checks ran handshakes in (ocsp.h): their
	 * stacks are pooled per thread. */
	ASYNC_cleanup_thread();
	return NULL;
}

/* The OCSP client's view of its worker (ocsp.h kg_ocsp_host). */
static struct io_uring_sqe *ocsp_sqe(void *worker)
{
	return kg_worker_sqe(worker);
}

static void ocsp_sqe_timed(void *worker, struct io_uring_sqe **op, struct io_uring_sqe **timeout)
{
	kg_worker_sqe_timed(worker, op, timeout);
}

static bool ocsp_warn_allowed(void *worker)
{
	return kg_worker_warn_allowed(worker);
}

/* The query ops sit in enum kg_op in kg_ocsp_op's order; a cancel's own
 * completion is ignored like every KG_OP_CANCEL. */
static uint64_t ocsp_user_data(enum kg_ocsp_op op, uint32_t slot, int fd)
{
	if (op == KG_OCSP_OP_CANCEL)
		return kg_ud_pack(KG_OP_CANCEL, slot, fd);
	return kg_ud_pack((enum kg_op)(KG_OP_OCSP_CONNECT + (int)op), slot, fd);
}

struct kg_worker *kg_worker_create(unsigned id, struct kg_runtime *rt)
{
	struct kg_worker *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->id = id;
	w->rt = rt;
	w->capacity = CONNS_PER_WORKER;
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++)
		w->listen_fds[li] = -1;
	w->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	w->poll_fd = -1;
	w->conns = calloc(w->capacity, sizeof(*w->conns));
	w->free_slots = calloc(w->capacity, sizeof(*w->free_slots));
	w->service = service ? service->create(w) : NULL;
	w->pool = kg_backend_pool_create();
	struct kg_ocsp_host oh = {.worker = w, .id = id, .now_ms = &w->now_ms,
				  .stats = &w->stats, .sqe = ocsp_sqe, .sqe_timed = ocsp_sqe_timed,
				  .warn_allowed = ocsp_warn_allowed, .user_data = ocsp_user_data};
	w->ocsp = kg_ocsp_create(&oh);
	if (w->wake_fd == -1 || !w->conns || !w->free_slots || (service && !w->service) ||
	    !w->pool || !w->ocsp ||
	    pthread_mutex_init(&w->cmd_lock, NULL) != 0)
		goto fail;
	if (sem_init(&w->init_done, 0, 0) != 0) {
		pthread_mutex_destroy(&w->cmd_lock);
		goto fail;
	}
	/* Lowest indices on top of the stack: the tick scans [0, high_water). */
	for (uint32_t i = 0; i < w->capacity; i++)
		w->free_slots[i] = w->capacity - 1 - i;
	w->n_free = w->capacity;
	return w;
fail:
	kg_ocsp_destroy(w->ocsp);
	kg_backend_pool_destroy(w->pool);
	if (service)
		service->destroy(w->service);
	if (w->wake_fd >= 0)
		close(w->wake_fd);
	free(w->conns);
	free(w->free_slots);
	free(w);
	return NULL;
}

int kg_worker_start(struct kg_worker *w)
{
	int ret = pthread_create(&w->thread, NULL, worker_main, w);
	if (ret != 0)
		return -ret;
	sem_wait(&w->init_done);
	if (w->init_result < 0) {
		pthread_join(w->thread, NULL);
		return w->init_result;
	}
	return 0;
}

void kg_worker_join(struct kg_worker *w)
{
	pthread_join(w->thread, NULL);
}

void kg_worker_destroy(struct kg_worker *w)
{
	if (!w)
		return;
	ring_exit(w);
	for (uint32_t li = 0; li < KG_MAX_LISTENERS; li++)
		if (w->listen_fds[li] >= 0)
			close(w->listen_fds[li]);
	close(w->wake_fd);
	if (w->poll_fd >= 0)
		close(w->poll_fd);
	/* Connections handed over after this worker stopped: nobody waits
	 * for these commands, so they are closed and freed here. */
	for (struct kg_wcmd *cmd = w->cmds, *next; cmd; cmd = next) {
		next = cmd->next;
		if (cmd->op == KG_WCMD_ADOPT) {
			close(cmd->fd);
			free(cmd);
		}
	}
	w->cmds = NULL;
	kg_ocsp_destroy(w->ocsp);
	size_t n_fw;
	const struct kg_fwd_ops *const *fw = kg_fwd_worker_ops(&n_fw);
	for (size_t i = 0; i < n_fw; i++)
		if (fw[i]->worker_end)
			fw[i]->worker_end(w);
	kg_backend_pool_destroy(w->pool);
	if (service)
		service->destroy(w->service);
	free(w->conns);
	free(w->free_slots);
	pthread_mutex_destroy(&w->cmd_lock);
	sem_destroy(&w->init_done);
	free(w);
}
