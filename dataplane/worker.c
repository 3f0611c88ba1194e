/* The worker's event loop: one io_uring ring, one thread, one switch over
 * the op packed in each completion's user_data. */
#include "worker.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "health.h"

#define RING_ENTRIES 4096
#define TICK_MS 100
#define WARN_LINES_PER_SEC 10

uint64_t kg_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void kg_worker_warn(struct kg_worker *w, const char *fmt, ...)
{
	if (KG_LOG_WARN > kg_log_level)
		return;
	if (w->now_ms - w->log_window_ms >= 1000) {
		if (w->log_suppressed)
			log_warn("worker %u: %u similar messages suppressed", w->id,
				 w->log_suppressed);
		w->log_window_ms = w->now_ms;
		w->log_in_window = 0;
		w->log_suppressed = 0;
	}
	if (w->log_in_window >= WARN_LINES_PER_SEC) {
		w->log_suppressed++;
		return;
	}
	w->log_in_window++;
	va_list ap;
	va_start(ap, fmt);
	kg_log_vwrite(KG_LOG_WARN, fmt, ap);
	va_end(ap);
}

struct io_uring_sqe *kg_worker_sqe(struct kg_worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	while (!sqe) {
		int ret = io_uring_submit(&w->ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			log_err("worker %u: io_uring_submit: %s", w->id, strerror(-ret));
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

static void arm_accept(struct kg_worker *w, uint32_t li)
{
	if (w->listen_fds[li] < 0 || w->accept_armed[li])
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
	io_uring_prep_timeout(sqe, &w->tick_interval, 0, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_TICK, 0, -1));
}

static void on_accept(struct kg_worker *w, uint32_t li, const struct io_uring_cqe *cqe)
{
	if (cqe->res >= 0) {
		kg_conn_accept(w, li, cqe->res);
	} else if (cqe->res != -ECANCELED) {
		/* EMFILE/ENFILE/ENOMEM: the accept is re-armed on the next
		 * tick rather than at once, so a full fd table cannot spin. */
		kg_worker_warn(w, "listener %s: accept: %s",
			       w->rt->listeners[li].conf->name, strerror(-cqe->res));
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		return;
	w->accept_armed[li] = false;
	if (w->draining) {
		close(w->listen_fds[li]);
		w->listen_fds[li] = -1;
	} else if (cqe->res >= 0) {
		arm_accept(w, li);
	}
}

static void begin_drain(struct kg_worker *w)
{
	w->draining = true;
	w->drain_deadline_ms = w->now_ms + w->rt->cfg->drain_timeout_ms;
	for (uint32_t li = 0; li < w->rt->n_listeners; li++) {
		if (w->listen_fds[li] < 0)
			continue;
		if (w->accept_armed[li]) {
			struct io_uring_sqe *sqe = kg_worker_sqe(w);
			io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_ACCEPT, li, w->listen_fds[li]), 0);
			io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, li, -1));
		} else {
			close(w->listen_fds[li]);
			w->listen_fds[li] = -1;
		}
	}
	kg_health_checker_stop(w->health);
	log_info("worker %u: draining %u connection(s), up to %u ms", w->id,
		 w->n_conns, w->rt->cfg->drain_timeout_ms);
}

static void release_closed(struct kg_worker *w, uint32_t idx)
{
	struct kg_conn *c = w->conns[idx];
	if (c && c->state == KG_CONN_CLOSING)
		kg_conn_release_if_idle(c);
}

/* cut_on_unhealthy: established connections to a member that turned
 * unhealthy are closed on the next tick. */
static bool cut_if_unhealthy(struct kg_conn *c)
{
	struct kg_health_group *g = c->listener->health;
	if (!c->member_counted || c->state != KG_CONN_FORWARDING ||
	    !kg_health_should_cut(g, (size_t)c->member))
		return false;
	c->worker->stats.cut_unhealthy++;
	kg_conn_close(c, "backend unhealthy");
	return true;
}

static void on_tick(struct kg_worker *w)
{
	if (!w->draining && atomic_load(&w->rt->stopping))
		begin_drain(w);
	bool drain_expired = w->draining && w->now_ms >= w->drain_deadline_ms;
	for (uint32_t i = 0; i < w->high_water; i++) {
		struct kg_conn *c = w->conns[i];
		if (!c)
			continue;
		if (drain_expired)
			kg_conn_close(c, "drain timeout");
		else if (!cut_if_unhealthy(c))
			kg_conn_check_deadline(c);
		release_closed(w, i);
	}
	kg_health_checker_tick(w->health, w->now_ms);
	for (uint32_t li = 0; li < w->rt->n_listeners && !w->draining; li++)
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
	case KG_OP_CANCEL:
		return;
	case KG_OP_HEALTH_TIMER:
	case KG_OP_HEALTH_CONNECT:
	case KG_OP_HEALTH_SEND:
	case KG_OP_HEALTH_RECV:
	case KG_OP_HEALTH_LINK_TIMEOUT:
		kg_health_checker_on_cqe(w->health, op, idx, cqe->res);
		return;
	default:
		break;
	}

	struct kg_conn *c = idx < w->capacity ? w->conns[idx] : NULL;
	if (!c) {
		log_err("worker %u: completion op %d for free slot %u", w->id, op, idx);
		return;
	}
	switch (op) {
	case KG_OP_CLIENT_RECV:
		kg_conn_on_client_recv(c, cqe->res);
		break;
	case KG_OP_CLIENT_SEND:
		kg_conn_on_client_send(c, cqe->res);
		break;
	case KG_OP_BACKEND_CONNECT:
		kg_backend_on_connect(c, cqe->res);
		break;
	case KG_OP_LINK_TIMEOUT:
		c->inflight--;
		break;
	case KG_OP_BACKEND_RECV:
		kg_forward_user_on_backend_recv(c, cqe->res);
		break;
	case KG_OP_BACKEND_SEND:
		kg_forward_user_on_backend_send(c, cqe->res);
		break;
	case KG_OP_POLL_IN:
	case KG_OP_POLL_OUT:
		kg_forward_splice_on_poll(c, kg_ud_fd(ud), op == KG_OP_POLL_OUT, cqe->res);
		break;
	case KG_OP_SPLICE_BACKOFF:
		kg_forward_splice_on_backoff(c);
		break;
	default:
		log_err("worker %u: unknown op %d", w->id, op);
		return;
	}
	release_closed(w, idx);
}

static int ring_init(struct kg_worker *w)
{
	struct io_uring_params p;
	/* Only this thread submits, and task work may wait until we ask for
	 * completions: fewer interrupts and context switches per operation. */
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
	int ret = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		ret = io_uring_queue_init_params(RING_ENTRIES, &w->ring, &p);
	}
	return ret;
}

static bool finished(const struct kg_worker *w)
{
	if (!w->draining || w->n_conns > 0 || !kg_health_checker_idle(w->health))
		return false;
	for (uint32_t li = 0; li < w->rt->n_listeners; li++)
		if (w->listen_fds[li] >= 0)
			return false;
	return true;
}

static void *worker_main(void *arg)
{
	struct kg_worker *w = arg;

	w->init_result = ring_init(w);
	sem_post(&w->init_done);
	if (w->init_result < 0)
		return NULL;

	w->now_ms = kg_now_ms();
	for (uint32_t li = 0; li < w->rt->n_listeners; li++)
		arm_accept(w, li);
	arm_tick(w);
	kg_health_checker_start(w->health);

	while (!finished(w)) {
		int ret = io_uring_submit_and_wait(&w->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY &&
		    ret != -ETIME) {
			log_err("worker %u: io_uring_submit_and_wait: %s", w->id,
				strerror(-ret));
			break;
		}
		w->now_ms = kg_now_ms();
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			dispatch(w, cqe);
			seen++;
		}
		io_uring_cq_advance(&w->ring, seen);
	}
	const struct kg_counters *s = &w->stats;
	log_info("worker %u: stopped: accepted %lu, handshakes %lu (resumed %lu), "
		 "handshake failures %lu, handshake timeouts %lu, no backend %lu, "
		 "connect failures %lu, limit rejections %lu, idle timeouts %lu, "
		 "bytes c2b %lu b2c %lu, health checks %lu (failed %lu), "
		 "cut unhealthy %lu; paths: userspace-tls %lu, ktls-splice %lu, "
		 "splice %lu, sockmap %lu, userspace-copy %lu; ktls fallbacks %lu, "
		 "ktls failures %lu",
		 w->id, s->accepted, s->handshakes, s->resumed, s->handshake_failed,
		 s->handshake_timeout, s->no_backend, s->backend_connect_failed,
		 s->rejected_limit, s->idle_timeout, s->forwarded_c2b, s->forwarded_b2c,
		 s->health_checks, s->health_checks_failed, s->cut_unhealthy,
		 s->path[KG_PATH_USERSPACE], s->path[KG_PATH_KTLS_SPLICE],
		 s->path[KG_PATH_SPLICE], s->path[KG_PATH_SOCKMAP], s->path[KG_PATH_COPY],
		 s->ktls_fallback, s->ktls_failed);
	io_uring_queue_exit(&w->ring);
	return NULL;
}

struct kg_worker *kg_worker_create(unsigned id, struct kg_runtime *rt,
				   int *listen_fds)
{
	uint64_t capacity = 0;
	for (size_t i = 0; i < rt->n_listeners; i++)
		capacity += rt->listeners[i].conf->max_connections;
	if (capacity > KG_MAX_CONNS_PER_WORKER)
		capacity = KG_MAX_CONNS_PER_WORKER;
	if (capacity == 0)
		capacity = 1;

	struct kg_worker *w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->id = id;
	w->rt = rt;
	w->listen_fds = listen_fds;
	w->capacity = (uint32_t)capacity;
	w->tick_interval.tv_nsec = TICK_MS * 1000000LL;
	w->accept_armed = calloc(rt->n_listeners ? rt->n_listeners : 1, sizeof(bool));
	w->conns = calloc(capacity, sizeof(*w->conns));
	w->free_slots = calloc(capacity, sizeof(*w->free_slots));
	w->health = kg_health_checker_create(w, rt->n_workers);
	if (!w->accept_armed || !w->conns || !w->free_slots || !w->health ||
	    sem_init(&w->init_done, 0, 0) != 0) {
		kg_health_checker_destroy(w->health);
		free(w->accept_armed);
		free(w->conns);
		free(w->free_slots);
		free(w);
		return NULL;
	}
	/* Lowest indices on top of the stack: the tick scans [0, high_water). */
	for (uint32_t i = 0; i < capacity; i++)
		w->free_slots[i] = (uint32_t)capacity - 1 - i;
	w->n_free = (uint32_t)capacity;
	return w;
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
	for (uint32_t li = 0; li < w->rt->n_listeners; li++)
		if (w->listen_fds[li] >= 0)
			close(w->listen_fds[li]);
	free(w->listen_fds);
	kg_health_checker_destroy(w->health);
	free(w->accept_armed);
	free(w->conns);
	free(w->free_slots);
	sem_destroy(&w->init_done);
	free(w);
}
