/* Two-phase application of a state document to the running listeners
 * (apply.h). */
#include "apply.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <kgate/log.h>

#include "certs.h"
#include "group.h"
#include "health.h"
#include "tls.h"
#include "tls_carry.h"
#include "listener.h"
#include "steer.h"
#include "upgrade.h"
#include "worker.h"

struct kg_listener_slot *kg_runtime_find(struct kg_runtime *rt, const char *name)
{
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++)
		if (rt->slots[i].used && strcmp(rt->slots[i].name, name) == 0)
			return &rt->slots[i];
	return NULL;
}

/* A slot can be reused once nothing refers to its index any more: no
 * worker socket and no connection of the listener that had it. */
static struct kg_listener_slot *free_slot(struct kg_runtime *rt, const bool *taken)
{
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		struct kg_listener_slot *s = &rt->slots[i];
		if (!s->used && !taken[i] && !s->listening && atomic_load(&s->active) == 0)
			return s;
	}
	return NULL;
}

static void unlisten(struct kg_runtime *rt, struct kg_listener_slot *slot)
{
	/* While the sockets are still open (their cookies name them). */
	if (slot->steered)
		kg_steer_unlisten(rt->steer, slot->index, slot->fds, rt->n_workers);
	kg_workers_unlisten(rt, slot->index);
	slot->steered = false;
	slot->listening = false;
	for (size_t w = 0; w < KG_MAX_WORKERS; w++)
		slot->fds[w] = -1;
}

size_t kg_apply_listen_fds(const struct kg_runtime *rt, int *fds, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		const struct kg_listener_slot *s = &rt->slots[i];
		for (size_t w = 0; s->listening && w < rt->n_workers && n < max; w++)
			if (s->fds[w] >= 0)
				fds[n++] = s->fds[w];
	}
	return n;
}

/* Calls fn for every listener's published snapshot; stops at an error. */
static int each_snapshot(struct kg_runtime *rt,
			 int (*fn)(struct kg_listener_rt *snap, const char *name, FILE *f), FILE *f)
{
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		struct kg_listener_slot *s = &rt->slots[i];
		if (!s->used)
			continue;
		struct kg_listener_rt *snap = kg_listener_acquire(s);
		int r = snap ? fn(snap, s->name, f) : 0;
		kg_listener_put(snap);
		if (r < 0)
			return r;
	}
	return 0;
}

static int export_health(struct kg_listener_rt *snap, const char *name, FILE *f)
{
	struct kg_group_rt *own = kg_listener_find_group(snap, "");
	return own ? kg_health_export(own->health, name, f) : 0;
}

static int export_sessions(struct kg_listener_rt *snap, const char *name, FILE *f)
{
	return snap->ssl_ctx && kg_tls_carries_sessions(snap->conf)
		       ? kg_tls_carry_export(snap->ssl_ctx, name, f) : 0;
}

int kg_apply_export_health(struct kg_runtime *rt, FILE *f)
{
	for (size_t i = 0; i < rt->n_groups; i++) {
		char key[KG_NAME_MAX + 2];
		snprintf(key, sizeof(key), "@%s", rt->groups[i]->conf->name);
		int r = kg_health_export(rt->groups[i]->health, key, f);
		if (r < 0)
			return r;
	}
	return each_snapshot(rt, export_health, f);
}

/* Whether lc sends anything to a group rebuilt for this document. */
static bool uses_rebuilt(const struct kg_config *cfg, const struct kg_listener_conf *lc,
			 const bool *rebuilt)
{
	char how[32];
	for (size_t g = 0; g < cfg->n_groups; g++)
		if (rebuilt[g] && kg_listener_uses_group(lc, &cfg->groups[g], how, sizeof(how)))
			return true;
	return false;
}

/* A hash of the route names: the route counters are by index. */
static uint64_t routes_digest(const struct kg_listener_conf *lc)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; lc && i < kg_routes_count(lc->routes); i++)
		for (const char *c = kg_routes_name(lc->routes, i);; c++) {
			h = (h ^ (unsigned char)*c) * 1099511628211ull;
			if (!*c)
				break;
		}
	return h;
}

int kg_apply_export_sessions(struct kg_runtime *rt, FILE *f)
{
	return each_snapshot(rt, export_sessions, f);
}

void kg_apply_unlisten_all(struct kg_runtime *rt)
{
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++)
		if (rt->slots[i].listening)
			unlisten(rt, &rt->slots[i]);
}

/* Before the workers get the sockets: a listener the program cannot steer
 * (a map update failed) is balanced by the userspace hand-over instead,
 * and one that is not steered loses any program an old process left on
 * its inherited group, whose counts nobody updates any more. */
static void steer_listen(struct kg_runtime *rt, struct kg_listener_slot *slot, const int *fds)
{
	slot->steered = false;
	if (!rt->steer) {
		kg_steer_detach(fds[0]);
		return;
	}
	int e = kg_steer_listen(rt->steer, slot->index, fds, rt->n_workers);
	if (e < 0)
		log_warn("accept.steering_failed", KV("listener", slot->name), KV_ERRNO(-e),
			 KV("effect", "this listener's connections are handed over in userspace"));
	slot->steered = e == 0;
}

static void item_init(struct kg_apply_item *it, struct kg_listener_slot *slot)
{
	memset(it, 0, sizeof(*it));
	it->slot = slot;
	for (size_t w = 0; w < KG_MAX_WORKERS; w++)
		it->fds[w] = -1;
}

/* One socket per worker; port 0 is resolved by the first and written back
 * into lc so the others (and the persisted document) use the same port. */
static int open_sockets(struct kg_runtime *rt, struct kg_listener_conf *lc,
			struct kg_apply_item *it, char *err, size_t errlen)
{
	char addr[80];
	for (unsigned w = 0; w < rt->n_workers; w++) {
		struct sockaddr_storage bound = {0};
		/* At an upgrade the old process's sockets are taken over: the
		 * same accept queues, so nothing waiting in them is lost. */
		int fd = rt->inherit ? kg_inherit_take_listener(rt->inherit, &lc->bind) : -1;
		if (fd >= 0)
			bound = lc->bind;
		else
			fd = kg_listener_open(&lc->bind, lc->bind_len, &bound);
		if (fd < 0) {
			kg_sockaddr_format(&lc->bind, addr, sizeof(addr));
			snprintf(err, errlen, "listener %s: cannot listen on %s: %s", lc->name,
				 addr, strerror(-fd));
			return fd;
		}
		it->fds[w] = fd;
		lc->bind = bound;
	}
	it->listen = true;
	return 0;
}

int kg_apply_prepare(struct kg_runtime *rt, struct kg_config_ref *doc,
		     const bool *changed, bool at_start, const char *must_start,
		     struct kg_apply_plan *plan, char *err, size_t errlen)
{
	struct kg_config *cfg = doc->cfg;
	bool taken[KG_MAX_LISTENERS] = {false};
	bool kept[KG_MAX_LISTENERS] = {false};
	int ret = -EINVAL;

	bool rebuilt[KG_MAX_GROUPS] = {false};
	plan->n = 0;
	plan->cfg = cfg;
	plan->n_groups = 0;
	if (kg_groups_build(doc, rt->groups, rt->n_groups, plan->groups, rebuilt, err, errlen) < 0)
		return -EINVAL;
	plan->n_groups = cfg->n_groups;
	for (size_t g = 0; g < cfg->n_groups; g++) {
		char key[KG_NAME_MAX + 2];
		snprintf(key, sizeof(key), "@%s", cfg->groups[g].name);
		/* At an upgrade, the old process's verdicts (see below). */
		if (rebuilt[g] && rt->inherit && rt->inherit->health)
			kg_health_import(plan->groups[g]->health, key, rt->inherit->health);
	}
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		struct kg_listener_conf *lc = &cfg->listeners[i];
		bool lchanged = changed[i] || uses_rebuilt(cfg, lc, rebuilt);
		struct kg_listener_slot *slot = kg_runtime_find(rt, lc->name);
		bool is_new = slot == NULL;
		if (is_new) {
			slot = free_slot(rt, taken);
			if (!slot) {
				snprintf(err, errlen, "listener %s: too many listeners (at most %d, "
					 "counting deleted ones whose connections are still open)",
					 lc->name, KG_MAX_LISTENERS);
				ret = -ENOSPC;
				goto abort;
			}
		}
		taken[slot->index] = true;
		kept[slot->index] = true;
		struct kg_apply_item *it = &plan->items[plan->n++];
		item_init(it, slot);
		it->conf = lc;
		if (!is_new && !lchanged && slot->failed[0]) {
			snprintf(it->failed, sizeof(it->failed), "%s", slot->failed);
			continue;
		}
		bool moved = !is_new && slot->listening &&
			     !kg_sockaddr_equal(&slot->bind, &lc->bind);
		if (lc->enabled && !slot->listening) {
			char why[KG_FAILED_MAX];
			bool tolerate = at_start ||
					(slot->failed[0] &&
					 !(must_start && strcmp(must_start, lc->name) == 0));
			ret = kg_listener_certs_check(lc, why, sizeof(why));
			if (ret < 0 && tolerate) {
				snprintf(it->failed, sizeof(it->failed), "%s", why);
				continue;
			}
			if (ret < 0) {
				snprintf(err, errlen, "listener %s cannot start: %s", lc->name, why);
				goto abort;
			}
			ret = -EINVAL;
		}
		if (lc->enabled && (!slot->listening || moved)) {
			ret = open_sockets(rt, lc, it, err, errlen);
			if (ret < 0)
				goto abort;
			ret = -EINVAL;
		}
		it->unlisten = slot->listening && (!lc->enabled || moved);
		if (is_new || lchanged || it->listen) {
			char where[32];
			snprintf(where, sizeof(where), "listeners[%zu]", i);
			it->snap = kg_listener_build(slot, &rt->caps, rt->tickets, doc, lc, plan->groups,
						     where, err, errlen);
			if (!it->snap)
				goto abort;
			/* At an upgrade, the old process's verdicts: a member it
			 * knows to be down is not tried again as "unknown". */
			struct kg_group_rt *own = kg_listener_find_group(it->snap, "");
			if (rt->inherit && rt->inherit->health && own)
				kg_health_import(own->health, lc->name, rt->inherit->health);
			/* And its TLS sessions: a client resumes across it. */
			if (rt->inherit && rt->inherit->sessions && it->snap->ssl_ctx &&
			    kg_tls_carries_sessions(lc) &&
			    kg_tls_carry_import(it->snap->ssl_ctx, lc->name,
						rt->inherit->sessions) < 0)
				log_warn("upgrade.sessions_not_taken", KV("listener", lc->name),
					 KV("reason", "out of memory"));
		}
	}
	for (size_t s = 0; s < KG_MAX_LISTENERS; s++) {
		struct kg_listener_slot *slot = &rt->slots[s];
		if (!slot->used || kept[s])
			continue;
		struct kg_apply_item *it = &plan->items[plan->n++];
		item_init(it, slot);
		it->unlisten = slot->listening;
		it->release = true;
	}
	return 0;
abort:
	kg_apply_abort(plan);
	return ret;
}

void kg_apply_abort(struct kg_apply_plan *plan)
{
	for (size_t i = 0; i < plan->n; i++) {
		struct kg_apply_item *it = &plan->items[i];
		kg_listener_put(it->snap);
		it->snap = NULL;
		for (size_t w = 0; w < KG_MAX_WORKERS; w++)
			if (it->fds[w] >= 0)
				close(it->fds[w]);
	}
	plan->n = 0;
	kg_groups_put(plan->groups, plan->n_groups);
	plan->n_groups = 0;
}

/* Order per listener: take the old sockets away before the snapshot goes
 * (an accept completing meanwhile still finds a snapshot), publish the new
 * snapshot before the new sockets arrive (an accept always finds one). */
void kg_apply_commit(struct kg_runtime *rt, struct kg_apply_plan *plan)
{
	char addr[80];
	bool republished = false;
	for (size_t i = 0; i < plan->n; i++) {
		struct kg_apply_item *it = &plan->items[i];
		struct kg_listener_slot *slot = it->slot;
		if (it->failed[0]) {
			/* Nothing runs for it: no sockets, no snapshot. */
			if (!slot->failed[0] || !slot->used)
				log_err("listener.start_failed", KV("listener", it->conf->name),
					KV("reason", it->failed));
			slot->used = true;
			snprintf(slot->name, sizeof(slot->name), "%s", it->conf->name);
			snprintf(slot->failed, sizeof(slot->failed), "%s", it->failed);
			continue;
		}
		slot->failed[0] = '\0';
		if (it->unlisten)
			unlisten(rt, slot);
		republished |= it->release || it->snap || it->unlisten;
		if (it->release || (it->conf && !it->conf->enabled)) {
			kg_listener_publish(slot, NULL);
			kg_listener_put(it->snap); /* built to validate only */
			it->snap = NULL;
			if (it->release || it->unlisten)
				log_notice(it->release ? "listener.deleted" : "listener.stopped",
					   KV("listener", slot->name));
			if (it->release) {
				slot->used = false;
				continue;
			}
		} else if (it->snap) {
			uint64_t digest = routes_digest(it->conf);
			if (digest != slot->routes_digest) {
				/* Counted by index: other routes start from zero. */
				for (size_t r = 0; r < KG_ROUTES_MAX; r++)
					atomic_store(&slot->counters.routed[r], 0);
				atomic_store(&slot->counters.route_default, 0);
				atomic_store(&slot->counters.route_not_found, 0);
				slot->routes_digest = digest;
			}
			kg_listener_publish(slot, it->snap);
			it->snap = NULL;
		}
		slot->used = true;
		snprintf(slot->name, sizeof(slot->name), "%s", it->conf->name);
		if (it->listen) {
			steer_listen(rt, slot, it->fds);
			kg_workers_listen(rt, slot->index, it->fds);
			for (size_t w = 0; w < KG_MAX_WORKERS; w++) {
				slot->fds[w] = it->fds[w];
				it->fds[w] = -1;
			}
			slot->listening = true;
			slot->bind = it->conf->bind;
			kg_sockaddr_format(&slot->bind, addr, sizeof(addr));
			log_notice("listener.listening", KV("listener", slot->name),
				   KV("addr", addr));
		}
	}
	/* The named groups of the new document replace the old ones (the
	 * snapshots published above hold their own references: a rebuilt
	 * group's listeners were rebuilt with it, and the checkers follow
	 * the listeners), and follow its drained and disabled flags. */
	kg_groups_put(rt->groups, rt->n_groups);
	for (size_t g = 0; g < plan->n_groups; g++) {
		rt->groups[g] = plan->groups[g];
		plan->groups[g] = NULL;
		kg_group_sync_admin(rt->groups[g], &plan->cfg->groups[g]);
	}
	rt->n_groups = plan->n_groups;
	plan->n_groups = 0;
	/* Health checkers hold the snapshots they check: rebuilt from what is
	 * published now, so new members are checked and old groups let go. */
	if (republished)
		kg_workers_recheck(rt);
	plan->n = 0;
}
