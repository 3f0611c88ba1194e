/* Listener snapshots: build, publish, acquire, release (see runtime.h). */
#include "runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "group.h"
#include "health.h"
#include "ktls.h"
#include "ticket_keys.h"
#include "tls.h"

int kg_runtime_init(struct kg_runtime *rt)
{
	memset(rt, 0, sizeof(*rt));
	for (uint32_t i = 0; i < KG_MAX_LISTENERS; i++) {
		struct kg_listener_slot *s = &rt->slots[i];
		s->index = i;
		for (size_t w = 0; w < KG_MAX_WORKERS; w++)
			s->fds[w] = -1;
		int ret = pthread_mutex_init(&s->lock, NULL);
		if (ret != 0) {
			while (i-- > 0)
				pthread_mutex_destroy(&rt->slots[i].lock);
			return -ret;
		}
	}
	atomic_store(&rt->drain_timeout_ms, 10000);
	return 0;
}

void kg_runtime_destroy(struct kg_runtime *rt)
{
	for (uint32_t i = 0; i < KG_MAX_LISTENERS; i++) {
		kg_listener_publish(&rt->slots[i], NULL);
		pthread_mutex_destroy(&rt->slots[i].lock);
	}
	kg_groups_put(rt->groups, rt->n_groups);
	rt->n_groups = 0;
	/* After the snapshots: their SSL_CTXs point at the keys. */
	kg_ticket_keys_close(rt->tickets);
	rt->tickets = NULL;
}

static void snapshot_free(struct kg_listener_rt *l)
{
	kg_groups_put(l->groups, l->n_groups);
	free(l->groups);
	free(l->route_group);
	SSL_CTX_free(l->ssl_ctx);
	kg_config_ref_put(l->doc);
	free(l);
}

void kg_groups_put(struct kg_group_rt **g, size_t n)
{
	for (size_t i = 0; g && i < n; i++) {
		kg_group_put(g[i]);
		g[i] = NULL;
	}
}

struct kg_group_rt *kg_listener_find_group(const struct kg_listener_rt *l, const char *name)
{
	for (size_t i = 0; i < l->n_groups; i++)
		if (strcmp(l->groups[i]->conf->name, name) == 0)
			return l->groups[i];
	return NULL;
}

unsigned kg_listener_cut_gen(const struct kg_listener_rt *l)
{
	unsigned gen = 0;
	for (size_t i = 0; i < l->n_groups; i++)
		gen += kg_health_cut_gen(l->groups[i]->health);
	return gen;
}

int kg_groups_build(struct kg_config_ref *doc, struct kg_group_rt *const *prev, size_t n_prev,
		    struct kg_group_rt **out, bool *rebuilt, char *err, size_t errlen)
{
	const struct kg_config *cfg = doc->cfg;
	for (size_t i = 0; i < cfg->n_groups; i++) {
		const struct kg_group_conf *gc = &cfg->groups[i];
		struct kg_group_rt *old = NULL;
		for (size_t j = 0; j < n_prev && !old; j++)
			if (prev[j] && strcmp(prev[j]->conf->name, gc->name) == 0)
				old = prev[j];
		bool same = old && kg_group_conf_same(old->conf, gc);
		if (rebuilt)
			rebuilt[i] = !same;
		if (same) {
			out[i] = kg_group_get(old);
			continue;
		}
		char where[KG_NAME_MAX + 32];
		snprintf(where, sizeof(where), "backend_groups.%s", gc->name);
		out[i] = kg_group_build(doc, gc, old, "group", gc->name, where, err, errlen);
		if (!out[i]) {
			kg_groups_put(out, i);
			return -EINVAL;
		}
	}
	return 0;
}

/* Adds g (a reference is taken) to l's groups unless it is there. */
static struct kg_group_rt *add_group(struct kg_listener_rt *l, struct kg_group_rt *g)
{
	for (size_t i = 0; i < l->n_groups; i++)
		if (l->groups[i] == g)
			return g;
	l->groups[l->n_groups++] = kg_group_get(g);
	return g;
}

/* The listener's groups: inline (built here) and named (from named[]). */
static int build_groups(struct kg_listener_rt *l, struct kg_listener_slot *slot,
			struct kg_config_ref *doc, struct kg_group_rt *const *named,
			const char *where, char *err, size_t errlen)
{
	const struct kg_listener_conf *lc = l->conf;
	const struct kg_config *cfg = doc->cfg;
	size_t n_routes = kg_routes_count(lc->routes);
	l->groups = calloc(n_routes + 1, sizeof(*l->groups));
	l->route_group = calloc(n_routes + 1, sizeof(*l->route_group));
	if (!l->groups || !l->route_group) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	if (lc->group == &lc->own) {
		struct kg_listener_rt *prev = slot ? kg_listener_acquire(slot) : NULL;
		struct kg_group_rt *old = prev ? kg_listener_find_group(prev, "") : NULL;
		struct kg_group_rt *g = kg_group_build(doc, &lc->own, old, "listener", lc->name, where,
						       err, errlen);
		kg_listener_put(prev);
		if (!g)
			return -EINVAL;
		l->groups[l->n_groups++] = g;
		l->group = g;
	}
	for (size_t i = 0; i <= n_routes; i++) {
		const struct kg_group_conf *gc = i < n_routes
			? kg_config_find_group(cfg, kg_routes_group(lc->routes, i))
			: lc->group;
		if (!gc || gc == &lc->own)
			continue;
		size_t gi = (size_t)(gc - cfg->groups);
		if (gi >= cfg->n_groups || !named || !named[gi]) {
			snprintf(err, errlen, "%s: internal error: group %s not built", where, gc->name);
			return -EINVAL;
		}
		struct kg_group_rt *g = add_group(l, named[gi]);
		if (i < n_routes)
			l->route_group[i] = g;
		else
			l->group = g;
	}
	return 0;
}

void kg_listener_put(struct kg_listener_rt *l)
{
	if (l && atomic_fetch_sub(&l->refs, 1) == 1)
		snapshot_free(l);
}

/* The mutex makes "load pointer, take reference" atomic against a swap
 * that drops the slot's reference: without it the snapshot could be freed
 * between the two. Taken once per accepted connection, never contended for
 * long (a swap is two stores). */
struct kg_listener_rt *kg_listener_acquire(struct kg_listener_slot *s)
{
	pthread_mutex_lock(&s->lock);
	struct kg_listener_rt *l = s->snap;
	if (l)
		atomic_fetch_add(&l->refs, 1);
	pthread_mutex_unlock(&s->lock);
	return l;
}

void kg_listener_publish(struct kg_listener_slot *s, struct kg_listener_rt *snap)
{
	pthread_mutex_lock(&s->lock);
	struct kg_listener_rt *old = s->snap;
	s->snap = snap;
	pthread_mutex_unlock(&s->lock);
	kg_listener_put(old);
}

struct kg_listener_rt *kg_listener_build(struct kg_listener_slot *slot,
					 const struct kg_kernel_caps *caps,
					 struct kg_ticket_keys *tickets,
					 struct kg_config_ref *doc,
					 const struct kg_listener_conf *lc,
					 struct kg_group_rt *const *named, const char *where,
					 char *err, size_t errlen)
{
	char why[512];

	struct kg_listener_rt *l = calloc(1, sizeof(*l));
	if (!l) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&l->refs, 1);
	/* Starts at 1: 0 means "no snapshot" to whoever compares serials. */
	static atomic_uint_fast64_t next_serial = 1;
	l->serial = atomic_fetch_add(&next_serial, 1);
	l->slot = slot;
	l->conf = lc;
	atomic_fetch_add(&doc->refs, 1);
	l->doc = doc;
	if (kg_path_plan(lc, caps, &l->plan, &l->plan_forced, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "%s.forwarding: %s", where, why);
		goto fail;
	}
	if (lc->protocol != KG_PROTO_TCP) {
		l->ssl_ctx = kg_tls_ctx_create(lc, tickets, why, sizeof(why));
		if (!l->ssl_ctx) {
			snprintf(err, errlen, "%s: %s", where, why);
			goto fail;
		}
		/* An sni entry's SSL_CTX takes over the handshake: it logs the
		 * secrets kTLS needs. */
		if (kg_path_hands_off(l->plan) &&
		    (kg_ktls_ctx_prepare(l->ssl_ctx) < 0 ||
		     kg_tls_ctx_for_each_sni(l->ssl_ctx, kg_ktls_ctx_prepare) < 0)) {
			snprintf(err, errlen, "%s: cannot set up kTLS tracking", where);
			goto fail;
		}
	}
	if (build_groups(l, slot, doc, named, where, err, errlen) < 0)
		goto fail;
	/* fallback: the path of a connection that cannot be handed off. */
	log_info("listener.plan", KV("listener", lc->name),
		 KV("protocol", lc->protocol == KG_PROTO_TCP   ? "tcp"
				: lc->protocol == KG_PROTO_TLS ? "tls"
							       : "https"),
		 KV("forwarding", kg_path_name(l->plan)),
		 KV("fallback", !kg_path_hands_off(l->plan) || l->plan_forced ? "none"
				: l->plan == KG_PATH_HTTP_KTLS ? kg_path_name(KG_PATH_HTTP)
							       : kg_path_name(KG_PATH_USERSPACE)));
	return l;
fail:
	snapshot_free(l);
	return NULL;
}

int kg_config_check_build(struct kg_config_ref *doc, const struct kg_kernel_caps *caps,
			  char *err, size_t errlen)
{
	const struct kg_config *cfg = doc->cfg;
	struct kg_group_rt *named[KG_MAX_GROUPS] = {NULL};
	int ret = kg_groups_build(doc, NULL, 0, named, NULL, err, errlen);
	if (ret < 0)
		return ret;
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		char where[32];
		snprintf(where, sizeof(where), "listeners[%zu]", i);
		struct kg_listener_rt *l = kg_listener_build(NULL, caps, NULL, doc, &cfg->listeners[i],
							     named, where, err, errlen);
		if (!l) {
			ret = -EINVAL;
			break;
		}
		kg_listener_put(l);
	}
	kg_groups_put(named, cfg->n_groups);
	return ret;
}
