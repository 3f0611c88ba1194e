/* Backend groups at run time (group.h). */
#include "group.h"

#include <stdio.h>
#include <stdlib.h>

#include <kgate/limits.h>

#include "balancer.h"
#include "health.h"

struct kg_group_rt *kg_group_get(struct kg_group_rt *g)
{
	atomic_fetch_add(&g->refs, 1);
	return g;
}

void kg_group_put(struct kg_group_rt *g)
{
	if (!g || atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	kg_health_group_destroy(g->health); /* refers to the balancer */
	kg_balancer_destroy(g->balancer);
	kg_config_ref_put(g->doc);
	free(g);
}

void kg_group_sync_admin(struct kg_group_rt *g, const struct kg_group_conf *gc)
{
	for (size_t b = 0; b < gc->n_backends; b++) {
		int m = kg_health_member_index(g->health, gc->backends[b].address);
		if (m >= 0)
			kg_health_set_admin(g->health, (size_t)m, gc->backends[b].admin);
	}
}

struct kg_group_rt *kg_group_build(struct kg_config_ref *doc, const struct kg_group_conf *gc,
				   struct kg_group_rt *prev, const char *owner_key,
				   const char *owner, const char *where, char *err, size_t errlen)
{
	unsigned weights[KG_MAX_BACKENDS];
	if (gc->n_backends == 0 || gc->n_backends > KG_MAX_BACKENDS) {
		snprintf(err, errlen, "%s.backends: 1-%d members", where, KG_MAX_BACKENDS);
		return NULL;
	}
	struct kg_group_rt *g = calloc(1, sizeof(*g));
	if (!g) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&g->refs, 1);
	g->conf = gc;
	atomic_fetch_add(&doc->refs, 1);
	g->doc = doc;
	for (size_t b = 0; b < gc->n_backends; b++)
		weights[b] = gc->backends[b].weight;
	g->balancer = kg_balancer_create(
		kg_listener_keys[KG_LK_scheduler].names[gc->scheduler], weights, gc->n_backends);
	if (!g->balancer) {
		snprintf(err, errlen, "%s.backends: invalid weights", where);
		goto fail;
	}
	g->health = kg_health_group_create(gc, owner_key, owner, g->balancer);
	if (!g->health) {
		snprintf(err, errlen, "%s: out of memory for health state", where);
		goto fail;
	}
	/* Members that stay keep their health, drain/disable and counters. */
	if (prev)
		kg_health_group_inherit(g->health, prev->health);
	/* The document says which members are drained or disabled. */
	for (size_t b = 0; b < gc->n_backends; b++)
		kg_health_set_admin(g->health, b, gc->backends[b].admin);
	return g;
fail:
	kg_group_put(g);
	return NULL;
}
