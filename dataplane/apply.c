/* Two-phase application of a state document to the running listeners
 * (apply.h). */
#include "apply.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <kgate/log.h>

#include "certs.h"
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
	return snap->health ? kg_health_export(snap->health, name, f) : 0;
}

static int export_sessions(struct kg_listener_rt *snap, const char *name, FILE *f)
{
	return snap->ssl_ctx && kg_tls_carries_sessions(snap->conf)
		       ? kg_tls_carry_export(snap->ssl_ctx, name, f) : 0;
}

int kg_apply_export_health(struct kg_runtime *rt, FILE *f)
{
	return each_snapshot(rt, export_health, f);
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

	plan->n = 0;
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		struct kg_listener_conf *lc = &cfg->listeners[i];
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
		if (!is_new && !changed[i] && slot->failed[0]) {
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
		if (is_new || changed[i] || it->listen) {
			char where[32];
			snprintf(where, sizeof(where), "listeners[%zu]", i);
			it->snap = kg_listener_build(slot, &rt->caps, rt->tickets, doc, lc, where, err, errlen);
			if (!it->snap)
				goto abort;
			/* At an upgrade, the old process's verdicts: a member it
			 * knows to be down is not tried again as "unknown". */
			if (rt->inherit && rt->inherit->health && it->snap->health)
				kg_health_import(it->snap->health, lc->name, rt->inherit->health);
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
	/* Health checkers hold the snapshots they check: rebuilt from what is
	 * published now, so new members are checked and old groups let go. */
	if (republished)
		kg_workers_recheck(rt);
	plan->n = 0;
}
