/* Backend health: the shared per-member state machine (any thread) and the
 * active checkers (one per worker, on its io_uring ring). See health.h for
 * the state machine and who checks which member. */
#include "health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "listener.h"
#include "runtime.h"
#include "worker.h"

struct member {
	pthread_mutex_t lock;      /* guards the fields up to `active` */
	const struct kg_backend_conf *conf;
	enum kg_member_state state;
	unsigned ok_streak, fail_streak;
	uint64_t since_ms;
	bool has_result, last_ok;
	char last_reason[96];
	uint64_t result_ms;
	uint64_t checks_ok, checks_failed, passive_failures;
	_Atomic int state_pub;     /* copy of state for lock-free readers */
	_Atomic unsigned active;   /* established connections, all workers */
	_Atomic int admin;         /* enum kg_admin_state */
	_Atomic uint64_t ramp_start_ms; /* 0: not ramping up */
	_Atomic unsigned eff_weight;
};

struct kg_health_group {
	const struct kg_listener_conf *lc;
	const struct kg_health_conf *hc;
	struct kg_balancer *b;
	bool checked;
	pthread_mutex_t weights_lock; /* serialises slow-start weight updates */
	_Atomic unsigned ramping;     /* members ramping up */
	size_t n;
	struct member m[];
};

const char *kg_member_state_name(enum kg_member_state s)
{
	switch (s) {
	case KG_MEMBER_UNKNOWN: return "unknown";
	case KG_MEMBER_HEALTHY: return "healthy";
	case KG_MEMBER_UNHEALTHY: return "unhealthy";
	}
	return "?";
}

/* Called with m->lock held: pushes the member's rotation state to the
 * balancer. */
static bool in_rotation(const struct kg_health_group *g, const struct member *m)
{
	if (atomic_load(&m->admin) != KG_ADMIN_READY)
		return false;
	if (m->state == KG_MEMBER_HEALTHY)
		return true;
	return m->state == KG_MEMBER_UNKNOWN && (!g->checked || g->hc->unknown_is_up);
}

static void update_rotation(struct kg_health_group *g, size_t i)
{
	kg_balancer_set_up(g->b, i, in_rotation(g, &g->m[i]));
}

struct kg_health_group *kg_health_group_create(const struct kg_listener_conf *lc,
					       struct kg_balancer *b)
{
	size_t n = lc->n_backends;
	struct kg_health_group *g = calloc(1, sizeof(*g) + n * sizeof(g->m[0]));
	if (!g)
		return NULL;
	g->lc = lc;
	g->hc = &lc->health_check;
	g->b = b;
	g->checked = lc->health_check.type != KG_HEALTH_NONE;
	if (pthread_mutex_init(&g->weights_lock, NULL) != 0) {
		free(g);
		return NULL;
	}
	uint64_t now = kg_now_ms();
	for (size_t i = 0; i < n; i++) {
		struct member *m = &g->m[i];
		if (pthread_mutex_init(&m->lock, NULL) != 0) {
			kg_health_group_destroy(g);
			return NULL;
		}
		g->n++;
		m->conf = &lc->backends[i];
		m->state = KG_MEMBER_UNKNOWN;
		m->since_ms = now;
		atomic_store(&m->eff_weight, m->conf->weight);
		pthread_mutex_lock(&m->lock);
		update_rotation(g, i);
		pthread_mutex_unlock(&m->lock);
	}
	return g;
}

void kg_health_group_destroy(struct kg_health_group *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->n; i++)
		pthread_mutex_destroy(&g->m[i].lock);
	pthread_mutex_destroy(&g->weights_lock);
	free(g);
}

void kg_health_group_inherit(struct kg_health_group *dst, struct kg_health_group *src)
{
	if (!src)
		return;
	for (size_t i = 0; i < dst->n; i++) {
		struct member *d = &dst->m[i];
		for (size_t j = 0; j < src->n; j++) {
			struct member *s = &src->m[j];
			if (!kg_sockaddr_equal(&d->conf->addr, &s->conf->addr))
				continue;
			pthread_mutex_lock(&s->lock);
			pthread_mutex_lock(&d->lock);
			/* The verdict carries over only between the same kind of
			 * check; a new check starts from unknown. */
			if (dst->checked && src->checked &&
			    dst->hc->type == src->hc->type) {
				d->state = s->state;
				d->ok_streak = s->ok_streak;
				d->fail_streak = s->fail_streak;
				d->since_ms = s->since_ms;
				d->has_result = s->has_result;
				d->last_ok = s->last_ok;
				memcpy(d->last_reason, s->last_reason, sizeof(d->last_reason));
				d->result_ms = s->result_ms;
				d->checks_ok = s->checks_ok;
				d->checks_failed = s->checks_failed;
				d->passive_failures = s->passive_failures;
				atomic_store(&d->state_pub, (int)d->state);
			}
			atomic_store(&d->admin, atomic_load(&s->admin));
			update_rotation(dst, i);
			pthread_mutex_unlock(&d->lock);
			pthread_mutex_unlock(&s->lock);
			break;
		}
	}
}

size_t kg_health_members(const struct kg_health_group *g)
{
	return g->n;
}

int kg_health_member_index(const struct kg_health_group *g, const char *address)
{
	for (size_t i = 0; i < g->n; i++)
		if (strcmp(g->m[i].conf->address, address) == 0)
			return (int)i;
	return -ENOENT;
}

static void format_duration(uint64_t ms, char *buf, size_t len)
{
	if (ms < 10000)
		snprintf(buf, len, "%lu ms", (unsigned long)ms);
	else if (ms < 600000)
		snprintf(buf, len, "%.1f s", (double)ms / 1000.0);
	else
		snprintf(buf, len, "%.1f min", (double)ms / 60000.0);
}

static bool any_in_rotation(const struct kg_health_group *g)
{
	for (size_t i = 0; i < g->n; i++)
		if (kg_balancer_is_up(g->b, i))
			return true;
	return false;
}

/* Called with m->lock held. */
static void transition(struct kg_health_group *g, size_t i, enum kg_member_state to,
		       const char *reason, unsigned streak, uint64_t now_ms)
{
	struct member *m = &g->m[i];
	enum kg_member_state from = m->state;
	char took[32];

	format_duration(now_ms - m->since_ms, took, sizeof(took));
	m->state = to;
	m->since_ms = now_ms;
	atomic_store(&m->state_pub, (int)to);
	bool ramp = to == KG_MEMBER_HEALTHY && from == KG_MEMBER_UNHEALTHY &&
		    g->hc->slow_start_s > 0;
	if (ramp) {
		if (atomic_exchange(&m->ramp_start_ms, now_ms ? now_ms : 1) == 0)
			atomic_fetch_add(&g->ramping, 1);
		/* Low weight before it rejoins, not at the next tick. */
		kg_health_slow_start_step(g, now_ms);
	}
	update_rotation(g, i);
	/* streak: results in a row that decided it (successes towards
	 * healthy, failures towards unhealthy); was_for: time in "from". */
	log_notice("backend.health_changed", KV("listener", g->lc->name),
		   KV("backend", m->conf->address), KV("from", kg_member_state_name(from)),
		   KV("to", kg_member_state_name(to)), KV("reason", reason), KV("streak", streak),
		   KV("was_for", took), KV("slow_start", ramp));
	if (to == KG_MEMBER_UNHEALTHY && !any_in_rotation(g))
		log_warn("listener.no_backend_in_rotation", KV("listener", g->lc->name),
			 KV("effect", "new connections are refused"));
}

static void record(struct kg_health_group *g, size_t i, bool ok, bool passive,
		   const char *reason, uint64_t now_ms)
{
	struct member *m = &g->m[i];
	const struct kg_health_conf *hc = g->hc;

	pthread_mutex_lock(&m->lock);
	m->has_result = true;
	m->last_ok = ok;
	m->result_ms = now_ms;
	snprintf(m->last_reason, sizeof(m->last_reason), "%s%s", passive ? "passive: " : "",
		 reason);
	if (passive)
		m->passive_failures++;
	else if (ok)
		m->checks_ok++;
	else
		m->checks_failed++;
	if (ok) {
		m->fail_streak = 0;
		m->ok_streak++;
		if (m->state != KG_MEMBER_HEALTHY && m->ok_streak >= hc->healthy_threshold)
			transition(g, i, KG_MEMBER_HEALTHY, m->last_reason, m->ok_streak, now_ms);
	} else {
		m->ok_streak = 0;
		m->fail_streak++;
		if (m->state != KG_MEMBER_UNHEALTHY && m->fail_streak >= hc->unhealthy_threshold)
			transition(g, i, KG_MEMBER_UNHEALTHY, m->last_reason, m->fail_streak,
				   now_ms);
	}
	pthread_mutex_unlock(&m->lock);
}

void kg_health_record(struct kg_health_group *g, size_t member, bool ok,
		      const char *reason, uint64_t now_ms)
{
	if (member < g->n)
		record(g, member, ok, false, reason, now_ms);
}

void kg_health_passive_failure(struct kg_health_group *g, size_t member,
			       const char *reason, uint64_t now_ms)
{
	/* Without active checks nothing would ever bring the member back, so
	 * passive failures only count when checks run. */
	if (g->checked && member < g->n)
		record(g, member, false, true, reason, now_ms);
}

void kg_health_conn_start(struct kg_health_group *g, size_t member)
{
	if (member < g->n)
		atomic_fetch_add(&g->m[member].active, 1);
}

void kg_health_conn_end(struct kg_health_group *g, size_t member)
{
	if (member >= g->n)
		return;
	struct member *m = &g->m[member];
	if (atomic_fetch_sub(&m->active, 1) == 1 && atomic_load(&m->admin) == KG_ADMIN_DRAINED)
		log_notice("backend.drained", KV("listener", g->lc->name),
			   KV("backend", m->conf->address));
}

bool kg_health_cuts(const struct kg_health_group *g)
{
	return g->checked && g->hc->cut_on_unhealthy;
}

enum kg_health_cut kg_health_should_cut(const struct kg_health_group *g, size_t member)
{
	if (member >= g->n)
		return KG_CUT_NONE;
	if (atomic_load(&g->m[member].admin) == KG_ADMIN_DISABLED)
		return KG_CUT_DISABLED;
	if (kg_health_cuts(g) && atomic_load(&g->m[member].state_pub) == KG_MEMBER_UNHEALTHY)
		return KG_CUT_UNHEALTHY;
	return KG_CUT_NONE;
}

int kg_health_set_admin(struct kg_health_group *g, size_t member, enum kg_admin_state admin)
{
	if (member >= g->n)
		return -ENOENT;
	struct member *m = &g->m[member];
	pthread_mutex_lock(&m->lock);
	int was = atomic_exchange(&m->admin, (int)admin);
	update_rotation(g, member);
	unsigned active = atomic_load(&m->active);
	pthread_mutex_unlock(&m->lock);
	if (was == (int)admin)
		return 0;
	const char *lname = g->lc->name, *addr = m->conf->address;
	switch (admin) {
	case KG_ADMIN_READY:
		log_notice(was == KG_ADMIN_DISABLED ? "backend.disable_ended"
						    : "backend.drain_ended",
			   KV("listener", lname), KV("backend", addr),
			   KV("rejoins_when", g->checked ? "healthy" : "possible"));
		break;
	case KG_ADMIN_DRAINED:
		if (active == 0)
			log_notice("backend.drained", KV("listener", lname), KV("backend", addr));
		else
			log_notice("backend.draining", KV("listener", lname), KV("backend", addr),
				   KV("active", active));
		break;
	case KG_ADMIN_DISABLED:
		/* The workers close them on their next tick (kg_health_should_cut),
		 * also those counted in older snapshots: no count is given. */
		log_notice("backend.disabled", KV("listener", lname), KV("backend", addr),
			   KV("effect", "out of rotation, its open connections are closed"));
		break;
	}
	return 0;
}

bool kg_health_ramping(const struct kg_health_group *g)
{
	return atomic_load(&g->ramping) > 0;
}

void kg_health_slow_start_step(struct kg_health_group *g, uint64_t now_ms)
{
	if (!kg_health_ramping(g))
		return;
	const uint64_t ramp_ms = (uint64_t)g->hc->slow_start_s * 1000;
	unsigned max_w = 1;
	for (size_t i = 0; i < g->n; i++)
		if (g->m[i].conf->weight > max_w)
			max_w = g->m[i].conf->weight;
	/* The balancer's weights are integers: scale everyone up while a
	 * member ramps so that even weight 1 can take small steps. */
	unsigned scale = KG_MAX_WEIGHT / max_w;
	unsigned weights[KG_MAX_BACKENDS];
	bool still = false;

	pthread_mutex_lock(&g->weights_lock);
	for (size_t i = 0; i < g->n; i++) {
		struct member *m = &g->m[i];
		uint64_t start = atomic_load(&m->ramp_start_ms);
		unsigned full = m->conf->weight * scale;
		weights[i] = full;
		if (start == 0)
			continue;
		if (now_ms >= start + ramp_ms) {
			uint64_t expect = start;
			if (atomic_compare_exchange_strong(&m->ramp_start_ms, &expect, 0)) {
				atomic_fetch_sub(&g->ramping, 1);
				log_notice("backend.slow_start_done", KV("listener", g->lc->name),
					   KV("backend", m->conf->address));
			}
			continue;
		}
		uint64_t part = (uint64_t)full * (now_ms > start ? now_ms - start : 0) / ramp_ms;
		weights[i] = part < 1 ? 1 : (unsigned)part;
		still = true;
	}
	if (!still) /* back to the configured weights and sequence */
		for (size_t i = 0; i < g->n; i++)
			weights[i] = g->m[i].conf->weight;
	for (size_t i = 0; i < g->n; i++)
		atomic_store(&g->m[i].eff_weight,
			     still ? (unsigned)((weights[i] + scale - 1) / scale) : weights[i]);
	if (kg_balancer_set_weights(g->b, weights) < 0)
		log_err("balancer.weights_refused", KV("listener", g->lc->name),
			KV("reason", "slow start"));
	pthread_mutex_unlock(&g->weights_lock);
}

size_t kg_health_snapshot(struct kg_health_group *g, struct kg_health_member_info *out,
			  size_t n, uint64_t now_ms)
{
	for (size_t i = 0; i < g->n && i < n; i++) {
		struct member *m = &g->m[i];
		struct kg_health_member_info *o = &out[i];
		memset(o, 0, sizeof(*o));
		pthread_mutex_lock(&m->lock);
		o->address = m->conf->address;
		o->state = m->state;
		o->checked = g->checked;
		o->in_rotation = kg_balancer_is_up(g->b, i);
		o->admin = (enum kg_admin_state)atomic_load(&m->admin);
		o->active = atomic_load(&m->active);
		o->weight = m->conf->weight;
		o->effective_weight = atomic_load(&m->eff_weight);
		o->ms_in_state = now_ms > m->since_ms ? now_ms - m->since_ms : 0;
		o->has_result = m->has_result;
		o->last_ok = m->last_ok;
		snprintf(o->last_reason, sizeof(o->last_reason), "%s", m->last_reason);
		o->ms_since_result = m->has_result && now_ms > m->result_ms ? now_ms - m->result_ms : 0;
		o->checks_ok = m->checks_ok;
		o->checks_failed = m->checks_failed;
		o->passive_failures = m->passive_failures;
		pthread_mutex_unlock(&m->lock);
	}
	return g->n;
}

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
	struct kg_listener_rt *snaps[KG_MAX_LISTENERS]; /* keep the checked groups alive */
	size_t n_snaps;
};

/* A check's completion index: check number and the checker's generation,
 * so completions of a retired checker never reach its successor. */
static uint32_t ck_idx(const struct kg_health_checker *hc, const struct check *c)
{
	return (uint32_t)(c - hc->checks) | (hc->gen & KG_HEALTH_GEN_MASK) << KG_HEALTH_CHECK_BITS;
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

/* Worker `id` checks the members whose index over all listeners is
 * id modulo n_workers. */
static bool owns(const struct kg_listener_rt *l, size_t global, unsigned n_workers, unsigned id)
{
	return l->health && l->conf->health_check.type != KG_HEALTH_NONE &&
	       global % n_workers == id;
}

struct kg_health_checker *kg_health_checker_create(struct kg_worker *w, unsigned n_workers,
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
	/* The listeners as published now; a change publishes new snapshots
	 * and makes every worker build a new checker. */
	for (size_t li = 0; li < KG_MAX_LISTENERS; li++) {
		struct kg_listener_rt *l = kg_listener_acquire(&w->rt->slots[li]);
		if (l)
			hc->snaps[hc->n_snaps++] = l;
	}
	size_t global = 0, mine = 0;
	for (size_t li = 0; li < hc->n_snaps; li++) {
		const struct kg_listener_rt *l = hc->snaps[li];
		for (size_t m = 0; m < l->conf->n_backends; m++, global++)
			mine += owns(l, global, n_workers, w->id);
	}
	hc->checks = calloc(mine ? mine : 1, sizeof(*hc->checks));
	if (!hc->checks || mine > (1u << KG_HEALTH_CHECK_BITS)) {
		kg_health_checker_destroy(hc);
		return NULL;
	}
	global = 0;
	for (size_t li = 0; li < hc->n_snaps; li++) {
		struct kg_listener_rt *l = hc->snaps[li];
		const struct kg_health_conf *h = &l->conf->health_check;
		for (size_t m = 0; m < l->conf->n_backends; m++, global++) {
			if (!owns(l, global, n_workers, w->id))
				continue;
			struct check *c = &hc->checks[hc->n++];
			c->g = l->health;
			c->member = m;
			c->hc = h;
			c->addr = l->conf->backends[m].addr;
			c->addrlen = l->conf->backends[m].addrlen;
			if (h->port)
				set_port(&c->addr, h->port);
			c->fd = -1;
			if (h->type == KG_HEALTH_HTTP)
				build_request(c);
		}
	}
	return hc;
}

unsigned kg_health_checker_gen(const struct kg_health_checker *hc)
{
	return hc->gen & KG_HEALTH_GEN_MASK;
}

void kg_health_checker_destroy(struct kg_health_checker *hc)
{
	if (!hc)
		return;
	for (size_t i = 0; i < hc->n; i++)
		if (hc->checks[i].fd >= 0)
			close(hc->checks[i].fd);
	free(hc->checks);
	for (size_t i = 0; i < hc->n_snaps; i++)
		kg_listener_put(hc->snaps[i]);
	free(hc);
}

static void ms_to_ts(uint64_t ms, struct __kernel_timespec *ts)
{
	ts->tv_sec = (long long)(ms / 1000);
	ts->tv_nsec = (long long)(ms % 1000) * 1000000;
}

static void arm_timer(struct kg_health_checker *hc, struct check *c, uint64_t delay_ms)
{
	ms_to_ts(delay_ms ? delay_ms : 1, &c->wait_ts);
	struct io_uring_sqe *sqe = kg_worker_sqe(hc->w);
	io_uring_prep_timeout(sqe, &c->wait_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HEALTH_TIMER, ck_idx(hc, c), -1));
	c->timer_armed = true;
	c->inflight++;
}

void kg_health_checker_start(struct kg_health_checker *hc)
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
	ms_to_ts(left, &c->link_ts);
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

void kg_health_checker_on_cqe(struct kg_health_checker *hc, int op, uint32_t idx, int res)
{
	idx &= (1u << KG_HEALTH_CHECK_BITS) - 1;
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

void kg_health_checker_stop(struct kg_health_checker *hc)
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

bool kg_health_checker_idle(const struct kg_health_checker *hc)
{
	for (size_t i = 0; i < hc->n; i++)
		if (hc->checks[i].inflight > 0)
			return false;
	return true;
}

void kg_health_checker_tick(struct kg_health_checker *hc, uint64_t now_ms)
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
