/* The active health checks, one checker per worker on that worker's
 * io_uring ring (health_check.h). */
#include "health_check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "group.h"
#include "health.h"
#include "listener.h"
#include "runtime.h"
#include "worker.h"

/* Completion idx of a check: its number in the low CHECK_BITS, the
 * checker's generation (masked) above, so a worker that replaced its
 * checker (the listeners changed) routes late completions to the old one. */
#define CHECK_BITS 16
#define GEN_MASK 0xffu

struct kg_health_checker;
static void kg_health_checker_destroy(struct kg_health_checker *hc);

/* ------------------------------------------------------------------------
 * Active checks on a worker's ring.
 *
 * One check at a time per member: a timer (IORING_OP_TIMEOUT) waits out the
 * interval, then connect → (http: send request → receive the status line),
 * each I/O linked to a timeout for what is left of timeout_ms. Completions
 * carry the check's index, so nothing is looked up.
 * ------------------------------------------------------------------------ */

/* PH_DRAIN: the verdict is in; the rest of the response is read and
 * dropped so that closing does not reset a backend still writing. */
enum phase { PH_IDLE, PH_CONNECT, PH_SEND, PH_RECV, PH_DRAIN };

#define DRAIN_MAX (64 * 1024) /* bytes read after the verdict, at most */

struct check {
	struct kg_health_group *g;
	size_t member;
	const struct kg_health_conf *hc;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	int fd;                /* -1 between checks */
	enum phase phase;
	bool timer_armed;
	unsigned inflight;     /* timer, I/O and link-timeout completions due */
	uint64_t started_ms;
	uint64_t deadline_ms;
	struct __kernel_timespec wait_ts; /* read by the kernel at submit */
	struct __kernel_timespec link_ts;
	char req[KG_HEALTH_METHOD_MAX + KG_HEALTH_PATH_MAX + KG_HEALTH_HOST_MAX + 96];
	size_t req_len, req_off;
	char resp[128];        /* only the status line matters */
	size_t resp_len;
	size_t drained;
};

struct kg_health_checker {
	struct kg_worker *w;
	unsigned gen;          /* in the high bits of every completion's idx */
	bool stopping;
	uint64_t rng;
	size_t n;
	struct check *checks;
	/* The groups checked, each once however many listeners send to it,
	 * with a reference each. */
	struct kg_group_rt **groups;
	size_t n_groups;
};

/* A check's completion index: check number and the checker's generation,
 * so completions of a retired checker never reach its successor. */
static uint32_t ck_idx(const struct kg_health_checker *hc, const struct check *c)
{
	return (uint32_t)(c - hc->checks) | (hc->gen & GEN_MASK) << CHECK_BITS;
}

static uint64_t next_random(struct kg_health_checker *hc)
{
	/* xorshift64: jitter only, no security role. */
	uint64_t x = hc->rng;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	hc->rng = x;
	return x;
}

static void set_port(struct sockaddr_storage *addr, unsigned port)
{
	if (addr->ss_family == AF_INET)
		((struct sockaddr_in *)addr)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)addr)->sin6_port = htons((uint16_t)port);
}

static void build_request(struct check *c)
{
	char host[KG_HEALTH_HOST_MAX];
	if (c->hc->host[0])
		snprintf(host, sizeof(host), "%s", c->hc->host);
	else
		kg_sockaddr_format(&c->addr, host, sizeof(host));
	int n = snprintf(c->req, sizeof(c->req),
			 "%s %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: kgate-health\r\n"
			 "Connection: close\r\n\r\n",
			 c->hc->method, c->hc->path, host);
	/* The buffer is sized for the longest method, path and host. */
	c->req_len = n > 0 && (size_t)n < sizeof(c->req) ? (size_t)n : 0;
}

/* Worker `id` checks the members whose index over all checked groups is
 * id modulo n_workers. */
static bool owns(const struct kg_group_rt *g, size_t global, unsigned n_workers, unsigned id)
{
	return g->conf->health_check.type != KG_HEALTH_NONE && global % n_workers == id;
}

/* The distinct groups of the published listeners, each with a reference:
 * a named group several listeners send to is one entry, so it is checked
 * once. -ENOMEM. */
static int collect_groups(struct kg_health_checker *hc, struct kg_runtime *rt)
{
	size_t cap = 0;
	for (size_t li = 0; li < KG_MAX_LISTENERS; li++) {
		struct kg_listener_rt *l = kg_listener_acquire(&rt->slots[li]);
		for (size_t i = 0; l && i < l->n_groups; i++) {
			struct kg_group_rt *g = l->groups[i];
			bool seen = false;
			for (size_t j = 0; j < hc->n_groups && !seen; j++)
				seen = hc->groups[j] == g;
			if (seen)
				continue;
			if (hc->n_groups == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				struct kg_group_rt **grown = realloc(hc->groups, ncap * sizeof(*grown));
				if (!grown) {
					kg_listener_put(l);
					return -ENOMEM;
				}
				hc->groups = grown;
				cap = ncap;
			}
			hc->groups[hc->n_groups++] = kg_group_get(g);
		}
		kg_listener_put(l);
	}
	return 0;
}

static struct kg_health_checker *kg_health_checker_create(struct kg_worker *w, unsigned n_workers,
						   unsigned gen)
{
	struct kg_health_checker *hc = calloc(1, sizeof(*hc));
	if (!hc)
		return NULL;
	hc->w = w;
	hc->gen = gen;
	/* Never 0, the one state xorshift cannot leave. */
	hc->rng = (kg_now_ms() * 0x9e3779b97f4a7c15ull + w->id) | 1;
	if (n_workers == 0)
		n_workers = 1;
	/* The groups as published now; a change publishes new snapshots
	 * and makes every worker build a new checker. */
	if (collect_groups(hc, w->rt) < 0) {
		kg_health_checker_destroy(hc);
		return NULL;
	}
	size_t global = 0, mine = 0;
	for (size_t gi = 0; gi < hc->n_groups; gi++) {
		const struct kg_group_rt *g = hc->groups[gi];
		for (size_t m = 0; m < g->conf->n_backends; m++, global++)
			mine += owns(g, global, n_workers, w->id);
	}
	hc->checks = calloc(mine ? mine : 1, sizeof(*hc->checks));
	if (!hc->checks || mine > (1u << CHECK_BITS)) {
		kg_health_checker_destroy(hc);
		return NULL;
	}
	global = 0;
	for (size_t gi = 0; gi < hc->n_groups; gi++) {
		struct kg_group_rt *g = hc->groups[gi];
		const struct kg_health_conf *h = &g->conf->health_check;
		for (size_t m = 0; m < g->conf->n_backends; m++, global++) {
			if (!owns(g, global, n_workers, w->id))
				continue;
			struct check *c = &hc->checks[hc->n++];
			c->g = g->health;
			c->member = m;
			c->hc = h;
			c->addr = g->conf->backends[m].addr;
			c->addrlen = g->conf->backends[m].addrlen;
			if (h->port)
				set_port(&c->addr, h->port);
			c->fd = -1;
			if (h->type == KG_HEALTH_HTTP)
				build_request(c);
		}
	}
	return hc;
}

static unsigned kg_health_checker_gen(const struct kg_health_checker *hc)
{
	return hc->gen & GEN_MASK;
}

static void kg_health_checker_destroy(struct kg_health_checker *hc)
{
	if (!hc)
		return;
	for (size_t i = 0; i < hc->n; i++)
		if (hc->checks[i].fd >= 0)
			close(hc->checks[i].fd);
	free(hc->checks);
	for (size_t i = 0; i < hc->n_groups; i++)
		kg_group_put(hc->groups[i]);
	free(hc->groups);
	free(hc);
}

static void arm_timer(struct kg_health_checker *hc, struct check *c, uint64_t delay_ms)
{
	kg_ms_to_ts(delay_ms ? delay_ms : 1, &c->wait_ts);
	struct io_uring_sqe *sqe = kg_worker_sqe(hc->w);
	io_uring_prep_timeout(sqe, &c->wait_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HEALTH_TIMER, ck_idx(hc, c), -1));
	c->timer_armed = true;
	c->inflight++;
}

static void kg_health_checker_start(struct kg_health_checker *hc)
{
	for (size_t i = 0; i < hc->n; i++) {
		struct check *c = &hc->checks[i];
		arm_timer(hc, c, next_random(hc) % c->hc->interval_ms);
	}
}

/* Submits the I/O of c's current phase linked to a timeout for the rest
 * of the check's time. */
static void arm_io(struct kg_health_checker *hc, struct check *c)
{
	struct kg_worker *w = hc->w;
	uint32_t idx = ck_idx(hc, c);
	int op;

	struct io_uring_sqe *sqe, *tsqe;
	kg_worker_sqe_timed(w, &sqe, &tsqe);
	switch (c->phase) {
	case PH_CONNECT:
		io_uring_prep_connect(sqe, c->fd, (const struct sockaddr *)&c->addr, c->addrlen);
		op = KG_OP_HEALTH_CONNECT;
		break;
	case PH_SEND:
		io_uring_prep_send(sqe, c->fd, c->req + c->req_off, c->req_len - c->req_off,
				   MSG_NOSIGNAL);
		op = KG_OP_HEALTH_SEND;
		break;
	default:
		io_uring_prep_recv(sqe, c->fd, c->resp + c->resp_len, sizeof(c->resp) - c->resp_len,
				   0);
		op = KG_OP_HEALTH_RECV;
		break;
	}
	io_uring_sqe_set_data64(sqe, kg_ud_pack((enum kg_op)op, idx, c->fd));
	sqe->flags |= IOSQE_IO_LINK;
	uint64_t left = c->deadline_ms > w->now_ms ? c->deadline_ms - w->now_ms : 1;
	kg_ms_to_ts(left, &c->link_ts);
	io_uring_prep_link_timeout(tsqe, &c->link_ts, 0);
	io_uring_sqe_set_data64(tsqe, kg_ud_pack(KG_OP_HEALTH_LINK_TIMEOUT, idx, c->fd));
	c->inflight += 2;
}

static void schedule_next(struct kg_health_checker *hc, struct check *c)
{
	uint64_t interval = c->hc->interval_ms;
	uint64_t spent = hc->w->now_ms - c->started_ms;
	uint64_t delay = spent < interval ? interval - spent : 0;
	/* ±5% so members that started together drift apart. */
	uint64_t spread = interval / 10;
	if (spread > 0) {
		uint64_t j = next_random(hc) % (spread + 1);
		delay = delay + j >= spread / 2 ? delay + j - spread / 2 : 0;
	}
	arm_timer(hc, c, delay);
}

static void verdict(struct kg_health_checker *hc, struct check *c, bool ok, const char *reason)
{
	struct kg_worker *w = hc->w;
	kg_count(w, health_checks);
	if (!ok)
		kg_count(w, health_checks_failed);
	kg_health_record(c->g, c->member, ok, reason, w->now_ms);
}

static void end_check(struct kg_health_checker *hc, struct check *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->phase = PH_IDLE;
	schedule_next(hc, c);
}

static void finish(struct kg_health_checker *hc, struct check *c, bool ok, const char *reason)
{
	verdict(hc, c, ok, reason);
	end_check(hc, c);
}

static void start_check(struct kg_health_checker *hc, struct check *c)
{
	struct kg_worker *w = hc->w;
	char why[96];

	c->started_ms = w->now_ms;
	c->deadline_ms = w->now_ms + c->hc->timeout_ms;
	c->req_off = 0;
	c->resp_len = 0;
	c->fd = socket(c->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd == -1) {
		snprintf(why, sizeof(why), "socket: %s", strerror(errno));
		finish(hc, c, false, why);
		return;
	}
	c->phase = PH_CONNECT;
	arm_io(hc, c);
}

static void io_failed(struct kg_health_checker *hc, struct check *c, const char *what, int res)
{
	char why[96];
	if (res == -ECANCELED)
		snprintf(why, sizeof(why), "timeout after %u ms", c->hc->timeout_ms);
	else if (res == -ECONNREFUSED)
		snprintf(why, sizeof(why), "%s refused", what);
	else if (res == 0)
		snprintf(why, sizeof(why), "%s: connection closed", what);
	else
		snprintf(why, sizeof(why), "%s: %s", what, strerror(-res));
	finish(hc, c, false, why);
}

/* Judges the response once its status line is complete, the buffer is
 * full or the peer closed. */
static void on_response(struct kg_health_checker *hc, struct check *c, bool eof)
{
	char why[96];
	bool line = memchr(c->resp, '\n', c->resp_len) != NULL;
	if (!line && !eof && c->resp_len < sizeof(c->resp)) {
		arm_io(hc, c);
		return;
	}
	if (c->resp_len == 0) {
		finish(hc, c, false, "connection closed without a response");
		return;
	}
	/* "HTTP/1.x NNN ..." */
	const char *s = c->resp, *end = c->resp + c->resp_len;
	const char *sp = memchr(s, ' ', c->resp_len);
	if (c->resp_len < 5 || memcmp(s, "HTTP/", 5) != 0 || !sp || end - sp < 4 ||
	    sp[1] < '1' || sp[1] > '5' || sp[2] < '0' || sp[2] > '9' || sp[3] < '0' ||
	    sp[3] > '9' || (end - sp > 4 && sp[4] != ' ' && sp[4] != '\r' && sp[4] != '\n')) {
		finish(hc, c, false, "not an HTTP response");
		return;
	}
	unsigned code = (unsigned)((sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0'));
	bool ok = kg_health_status_expected(c->hc, code);
	snprintf(why, sizeof(why), "HTTP %u%s", code, ok ? "" : " not expected");
	verdict(hc, c, ok, why);
	if (eof) {
		end_check(hc, c);
		return;
	}
	c->phase = PH_DRAIN;
	c->drained = 0;
	c->resp_len = 0;
	arm_io(hc, c);
}

static void kg_health_checker_on_cqe(struct kg_health_checker *hc, int op, uint32_t idx, int res)
{
	idx &= (1u << CHECK_BITS) - 1;
	if (idx >= hc->n) {
		log_err("health.bad_completion", KV("worker", hc->w->id), KV("check", idx),
			KV("checks", hc->n));
		return;
	}
	struct check *c = &hc->checks[idx];
	c->inflight--;
	if (op == KG_OP_HEALTH_LINK_TIMEOUT)
		return;
	if (op == KG_OP_HEALTH_TIMER) {
		c->timer_armed = false;
		if (!hc->stopping)
			start_check(hc, c);
		return;
	}
	if (hc->stopping) {
		if (c->fd >= 0)
			close(c->fd);
		c->fd = -1;
		c->phase = PH_IDLE;
		return;
	}
	switch (op) {
	case KG_OP_HEALTH_CONNECT:
		if (res < 0) {
			io_failed(hc, c, "connect", res);
		} else if (c->hc->type == KG_HEALTH_TCP) {
			finish(hc, c, true, "connected");
		} else if (c->req_len == 0) {
			finish(hc, c, false, "request too long");
		} else {
			c->phase = PH_SEND;
			arm_io(hc, c);
		}
		return;
	case KG_OP_HEALTH_SEND:
		if (res <= 0) {
			io_failed(hc, c, "send", res);
			return;
		}
		c->req_off += (size_t)res;
		if (c->req_off >= c->req_len)
			c->phase = PH_RECV;
		arm_io(hc, c);
		return;
	case KG_OP_HEALTH_RECV:
		if (c->phase == PH_DRAIN) {
			c->drained += res > 0 ? (size_t)res : 0;
			c->resp_len = 0;
			if (res <= 0 || c->drained >= DRAIN_MAX)
				end_check(hc, c);
			else
				arm_io(hc, c);
			return;
		}
		if (res < 0) {
			io_failed(hc, c, "receive", res);
			return;
		}
		c->resp_len += (size_t)res;
		on_response(hc, c, res == 0);
		return;
	default:
		log_err("health.unknown_op", KV("worker", hc->w->id), KV("op", op));
	}
}

static void kg_health_checker_stop(struct kg_health_checker *hc)
{
	hc->stopping = true;
	for (size_t i = 0; i < hc->n; i++) {
		struct check *c = &hc->checks[i];
		uint32_t idx = ck_idx(hc, c);
		if (c->timer_armed) {
			struct io_uring_sqe *sqe = kg_worker_sqe(hc->w);
			io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_HEALTH_TIMER, idx, -1), 0);
			io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, idx, -1));
		}
		if (c->fd >= 0) {
			struct io_uring_sqe *sqe = kg_worker_sqe(hc->w);
			io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
			io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, idx, -1));
		}
	}
}

static bool kg_health_checker_idle(const struct kg_health_checker *hc)
{
	for (size_t i = 0; i < hc->n; i++)
		if (hc->checks[i].inflight > 0)
			return false;
	return true;
}

static void kg_health_checker_tick(struct kg_health_checker *hc, uint64_t now_ms)
{
	/* Each group once, even when this worker owns several of its members. */
	const struct kg_health_group *last = NULL;
	for (size_t i = 0; i < hc->n; i++) {
		struct check *c = &hc->checks[i];
		if (c->g == last || !kg_health_ramping(c->g))
			continue;
		last = c->g;
		kg_health_slow_start_step(c->g, now_ms);
	}
}

/* ------------------------------------------------------------------------
 * One worker's checks across listener changes: the current checker, and
 * the ones it replaced while their completions are still due.
 * ------------------------------------------------------------------------ */

#define RETIRED_MAX 16

struct kg_health_checks {
	struct kg_worker *w;
	struct kg_health_checker *cur;
	struct kg_health_checker *retired[RETIRED_MAX]; /* stopped, completions due */
	size_t n_retired;
	bool stopped;
};

static void checks_destroy(void *state)
{
	struct kg_health_checks *hs = state;
	if (!hs)
		return;
	kg_health_checker_destroy(hs->cur);
	for (size_t i = 0; i < hs->n_retired; i++)
		kg_health_checker_destroy(hs->retired[i]);
	free(hs);
}

static void *checks_create(struct kg_worker *w)
{
	struct kg_health_checks *hs = calloc(1, sizeof(*hs));
	if (!hs)
		return NULL;
	hs->w = w;
	hs->cur = kg_health_checker_create(w, w->rt->n_workers, 0);
	if (!hs->cur) {
		checks_destroy(hs);
		return NULL;
	}
	return hs;
}

static void checks_start(void *state)
{
	struct kg_health_checks *hs = state;
	kg_health_checker_start(hs->cur);
}

/* The listeners changed: check what is published now. The old checker
 * stops (its in-flight completions still arrive, told apart by the
 * generation in their idx) and is destroyed once idle. */
static void checks_on_listeners_changed(void *state)
{
	struct kg_health_checks *hs = state;
	struct kg_worker *w = hs->w;
	if (hs->stopped)
		return;
	if (hs->n_retired == RETIRED_MAX) {
		log_err("health.checker_busy", KV("worker", w->id),
			KV("reason", "too many health checkers still finishing; listener changes "
				     "wait for the next one"));
		return;
	}
	unsigned gen = (kg_health_checker_gen(hs->cur) + 1) & GEN_MASK;
	for (size_t i = 0; i < hs->n_retired; i++)
		if (kg_health_checker_gen(hs->retired[i]) == gen) {
			log_err("health.generation_busy", KV("worker", w->id),
				KV("generation", gen));
			return;
		}
	struct kg_health_checker *hc = kg_health_checker_create(w, w->rt->n_workers, gen);
	if (!hc) {
		log_err("health.checker_failed", KV("worker", w->id),
			KV("reason", "out of memory; keeping the old checks"));
		return;
	}
	kg_health_checker_stop(hs->cur);
	if (kg_health_checker_idle(hs->cur))
		kg_health_checker_destroy(hs->cur);
	else
		hs->retired[hs->n_retired++] = hs->cur;
	hs->cur = hc;
	kg_health_checker_start(hc);
}

static void checks_on_cqe(void *state, enum kg_op op, uint32_t idx, int res)
{
	struct kg_health_checks *hs = state;
	unsigned gen = (idx >> CHECK_BITS) & GEN_MASK;
	if (kg_health_checker_gen(hs->cur) == gen) {
		kg_health_checker_on_cqe(hs->cur, op, idx, res);
		return;
	}
	for (size_t i = 0; i < hs->n_retired; i++) {
		struct kg_health_checker *hc = hs->retired[i];
		if (kg_health_checker_gen(hc) != gen)
			continue;
		kg_health_checker_on_cqe(hc, op, idx, res);
		if (kg_health_checker_idle(hc)) {
			kg_health_checker_destroy(hc);
			hs->retired[i] = hs->retired[--hs->n_retired];
		}
		return;
	}
	log_err("health.unknown_generation", KV("worker", hs->w->id), KV("generation", gen));
}

static void checks_on_tick(void *state, uint64_t now_ms)
{
	struct kg_health_checks *hs = state;
	kg_health_checker_tick(hs->cur, now_ms);
}

static void checks_stop(void *state)
{
	struct kg_health_checks *hs = state;
	hs->stopped = true;
	kg_health_checker_stop(hs->cur);
}

static bool checks_idle(const void *state)
{
	const struct kg_health_checks *hs = state;
	return kg_health_checker_idle(hs->cur) && hs->n_retired == 0;
}

const struct kg_worker_service kg_health_checks_service = {
	.name = "health checks",
	.create = checks_create,
	.start = checks_start,
	.on_cqe = checks_on_cqe,
	.on_tick = checks_on_tick,
	.on_listeners_changed = checks_on_listeners_changed,
	.stop = checks_stop,
	.idle = checks_idle,
	.destroy = checks_destroy,
};
