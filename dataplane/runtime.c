/* Listener snapshots: build, publish, acquire, release (see runtime.h). */
#include "runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kgate/limits.h>
#include <kgate/log.h>

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
	/* After the snapshots: their SSL_CTXs point at the keys. */
	kg_ticket_keys_close(rt->tickets);
	rt->tickets = NULL;
}

struct kg_config_ref *kg_config_ref_new(struct kg_config *cfg)
{
	struct kg_config_ref *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	atomic_init(&r->refs, 1);
	r->cfg = cfg;
	return r;
}

void kg_config_ref_put(struct kg_config_ref *r)
{
	if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	kg_config_free(r->cfg);
	free(r);
}

static void snapshot_free(struct kg_listener_rt *l)
{
	kg_health_group_destroy(l->health); /* refers to the balancer */
	SSL_CTX_free(l->ssl_ctx);
	kg_balancer_destroy(l->balancer);
	kg_config_ref_put(l->doc);
	free(l);
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
					 const struct kg_listener_conf *lc, const char *where,
					 char *err, size_t errlen)
{
	char why[512];
	unsigned weights[KG_MAX_BACKENDS];

	if (lc->n_backends > KG_MAX_BACKENDS) {
		snprintf(err, errlen, "%s.backends: at most %d members", where, KG_MAX_BACKENDS);
		return NULL;
	}
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
	for (size_t b = 0; b < lc->n_backends; b++)
		weights[b] = lc->backends[b].weight;
	l->balancer = kg_balancer_create("rr", weights, lc->n_backends);
	if (!l->balancer) {
		snprintf(err, errlen, "%s.backends: invalid weights", where);
		goto fail;
	}
	l->health = kg_health_group_create(lc, l->balancer);
	if (!l->health) {
		snprintf(err, errlen, "%s: out of memory for health state", where);
		goto fail;
	}
	/* Members that stay keep their health, drain/disable and counters. */
	struct kg_listener_rt *prev = slot ? kg_listener_acquire(slot) : NULL;
	if (prev)
		kg_health_group_inherit(l->health, prev->health);
	kg_listener_put(prev);
	/* The document says which members are drained or disabled. */
	for (size_t b = 0; b < lc->n_backends; b++)
		kg_health_set_admin(l->health, b, lc->backends[b].admin);
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
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		char where[32];
		snprintf(where, sizeof(where), "listeners[%zu]", i);
		struct kg_listener_rt *l = kg_listener_build(NULL, caps, NULL, doc, &cfg->listeners[i],
							     where, err, errlen);
		if (!l)
			return -EINVAL;
		kg_listener_put(l);
	}
	return 0;
}
