/* Backend health: the shared per-member state machine, any thread
 * (health.h). The active checks that feed it are health_check.c. */
#include "health.h"

#include "clock.h"

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
	const char *owner_key;  /* "listener" (inline backends) or "group", for log lines */
	const char *owner;      /* its name */
	const struct kg_health_conf *hc;
	struct kg_balancer *b;
	bool checked;
	pthread_mutex_t weights_lock; /* serialises slow-start weight updates */
	_Atomic unsigned ramping;     /* members ramping up */
	_Atomic unsigned cut_gen;     /* bumped when a member may have become one to cut */
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

struct kg_health_group *kg_health_group_create(const struct kg_group_conf *lc,
					       const char *owner_key, const char *owner,
					       struct kg_balancer *b)
{
	size_t n = lc->n_backends;
	struct kg_health_group *g = calloc(1, sizeof(*g) + n * sizeof(g->m[0]));
	if (!g)
		return NULL;
	g->owner_key = owner_key;
	g->owner = owner;
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

int kg_health_export(struct kg_health_group *g, const char *listener, FILE *f)
{
	for (size_t i = 0; g->checked && i < g->n; i++) {
		struct member *m = &g->m[i];
		pthread_mutex_lock(&m->lock);
		int r = fprintf(f, "%s\t%s\t%d\t%d\t%u\t%u\t%llu\n", listener, m->conf->address,
				(int)g->hc->type, (int)m->state, m->ok_streak, m->fail_streak,
				(unsigned long long)m->since_ms);
		pthread_mutex_unlock(&m->lock);
		if (r < 0)
			return -EIO;
	}
	return 0;
}

/* One exported line (without its newline) into its fields; false when
 * it is not one. */
static bool parse_verdict(char *line, char **listener, char **address, int *type, int *state,
			  unsigned *ok, unsigned *fail, unsigned long long *since)
{
	char *save = NULL;
	*listener = strtok_r(line, "\t", &save);
	*address = strtok_r(NULL, "\t", &save);
	char *rest = strtok_r(NULL, "", &save);
	int used = 0;
	return *listener && *address && rest &&
	       sscanf(rest, "%d\t%d\t%u\t%u\t%llu%n", type, state, ok, fail, since, &used) == 5 &&
	       rest[used] == '\0' && *state >= KG_MEMBER_UNKNOWN && *state <= KG_MEMBER_UNHEALTHY;
}

size_t kg_health_import(struct kg_health_group *g, const char *listener, const char *text)
{
	size_t taken = 0;
	char *copy = g->checked ? strdup(text) : NULL;
	char *save = NULL;
	for (char *line = copy ? strtok_r(copy, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *lname, *address;
		int type, state;
		unsigned ok, fail;
		unsigned long long since;
		if (!parse_verdict(line, &lname, &address, &type, &state, &ok, &fail, &since) ||
		    strcmp(lname, listener) != 0 || type != (int)g->hc->type)
			continue;
		int i = kg_health_member_index(g, address);
		if (i < 0)
			continue;
		struct member *m = &g->m[i];
		pthread_mutex_lock(&m->lock);
		m->state = (enum kg_member_state)state;
		m->ok_streak = ok;
		m->fail_streak = fail;
		m->since_ms = since;
		atomic_store(&m->state_pub, state);
		update_rotation(g, (size_t)i);
		pthread_mutex_unlock(&m->lock);
		taken++;
	}
	free(copy);
	return taken;
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
	atomic_fetch_add(&g->cut_gen, 1);
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
	log_notice("backend.health_changed", KV(g->owner_key, g->owner),
		   KV("backend", m->conf->address), KV("from", kg_member_state_name(from)),
		   KV("to", kg_member_state_name(to)), KV("reason", reason), KV("streak", streak),
		   KV("was_for", took), KV("slow_start", ramp));
	if (to == KG_MEMBER_UNHEALTHY && !any_in_rotation(g))
		log_warn("listener.no_backend_in_rotation", KV(g->owner_key, g->owner),
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
		log_notice("backend.drained", KV(g->owner_key, g->owner),
			   KV("backend", m->conf->address));
}

bool kg_health_cuts(const struct kg_health_group *g)
{
	return g->checked && g->hc->cut_on_unhealthy;
}

unsigned kg_health_cut_gen(const struct kg_health_group *g)
{
	return atomic_load(&g->cut_gen);
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
	atomic_fetch_add(&g->cut_gen, 1);
	update_rotation(g, member);
	unsigned active = atomic_load(&m->active);
	pthread_mutex_unlock(&m->lock);
	if (was == (int)admin)
		return 0;
	const char *lname = g->owner, *addr = m->conf->address;
	switch (admin) {
	case KG_ADMIN_READY:
		log_notice(was == KG_ADMIN_DISABLED ? "backend.disable_ended"
						    : "backend.drain_ended",
			   KV(g->owner_key, lname), KV("backend", addr),
			   KV("rejoins_when", g->checked ? "healthy" : "possible"));
		break;
	case KG_ADMIN_DRAINED:
		if (active == 0)
			log_notice("backend.drained", KV(g->owner_key, lname), KV("backend", addr));
		else
			log_notice("backend.draining", KV(g->owner_key, lname), KV("backend", addr),
				   KV("active", active));
		break;
	case KG_ADMIN_DISABLED:
		/* The workers close them on their next tick (kg_health_should_cut),
		 * also those counted in older snapshots: no count is given. */
		log_notice("backend.disabled", KV(g->owner_key, lname), KV("backend", addr),
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
				log_notice("backend.slow_start_done", KV(g->owner_key, g->owner),
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
		log_err("balancer.weights_refused", KV(g->owner_key, g->owner),
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
