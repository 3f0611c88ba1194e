/* Stats and Prometheus text (metrics.h). */
#include "metrics.h"

#include "steer.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/log.h>
#include <kgate/sockio.h>

#include "cert_expiry.h"
#include "crl.h"
#include "group.h"
#include "health.h"
#include "listener.h"
#include "worker.h"
#include "errors.h"
#include "store_status.h"
#include "staple.h"

#define HTTP_READ_MS 2000

/* Worker counters are relaxed atomics written by their worker only
 * (counters.h): the sum is at most slightly stale, never torn. */
static void sum_workers(const struct kg_runtime *rt, struct kg_counters *sum)
{
	memset(sum, 0, sizeof(*sum));
	for (unsigned i = 0; i < rt->n_workers; i++)
		kg_counters_accumulate(sum, &rt->workers[i]->stats);
}

/* Per listener slot; listeners deleted meanwhile are no longer counted. */
static void sum_reasons(const struct kg_runtime *rt, uint64_t why[KG_HS_REASONS])
{
	for (int r = 0; r < KG_HS_REASONS; r++) {
		why[r] = 0;
		for (size_t i = 0; i < KG_MAX_LISTENERS; i++)
			why[r] += atomic_load(&rt->slots[i].counters.failed_by_reason[r]);
	}
}

/* WebSocket tunnels open now: those opened minus those closed, for any
 * reason (counters.h), over the workers' summed counters. */
static uint64_t tunnels_active(const struct kg_counters *s)
{
#define KG_TUNNEL_CLOSED(r) atomic_load_explicit(&s->http_tunnel_end_##r, memory_order_relaxed)
	uint64_t closed = KG_TUNNEL_CLOSED(client) + KG_TUNNEL_CLOSED(backend) +
			  KG_TUNNEL_CLOSED(idle) + KG_TUNNEL_CLOSED(lifetime) +
			  KG_TUNNEL_CLOSED(drain) + KG_TUNNEL_CLOSED(error);
#undef KG_TUNNEL_CLOSED
	uint64_t opened = atomic_load_explicit(&s->http_tunnels, memory_order_relaxed);
	/* Read while workers write: a close may be seen before its open. */
	return opened > closed ? opened - closed : 0;
}

static void add_u64(json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_int64((int64_t)v));
}

json_object *kg_listener_counters_json(const struct kg_listener_slot *s)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(s->name));
	add_u64(o, "active", atomic_load(&s->active));
	add_u64(o, "accepted", atomic_load(&s->counters.accepted));
	add_u64(o, "handshakes", atomic_load(&s->counters.handshakes));
	add_u64(o, "handshake_failed", atomic_load(&s->counters.handshake_failed));
	add_u64(o, "rejected_limit", atomic_load(&s->counters.rejected_limit));
	json_object *why = json_object_new_object();
	for (int r = 0; r < KG_HS_REASONS; r++)
		add_u64(why, kg_hs_reason_names[r], atomic_load(&s->counters.failed_by_reason[r]));
	json_object_object_add(o, "handshake_failed_by_reason", why);
	add_u64(o, "access_allowed", atomic_load(&s->counters.access_allowed));
	add_u64(o, "access_denied", atomic_load(&s->counters.access_denied));
	/* Route decisions by route name (the running routes), null without
	 * routes. */
	struct kg_listener_rt *snap = kg_listener_acquire((struct kg_listener_slot *)s);
	const struct kg_routes *routes = snap ? snap->conf->routes : NULL;
	json_object *rj = routes ? json_object_new_object() : NULL;
	for (size_t r = 0; r < kg_routes_count(routes); r++)
		add_u64(rj, kg_routes_name(routes, r), atomic_load(&s->counters.routed[r]));
	if (rj) {
		add_u64(rj, KG_ROUTE_DEFAULT, atomic_load(&s->counters.route_default));
		add_u64(rj, KG_ROUTE_NONE, atomic_load(&s->counters.route_not_found));
	}
	json_object_object_add(o, "routes", rj);
	kg_listener_put(snap);
	return o;
}

json_object *kg_stats_json(struct kg_runtime *rt, const char *listener)
{
	struct kg_counters sum;
	uint64_t active = 0, why[KG_HS_REASONS];
	sum_workers(rt, &sum);
	sum_reasons(rt, why);
	json_object *o = json_object_new_object(), *conns = json_object_new_object(),
		    *hs = json_object_new_object(), *bytes = json_object_new_object(),
		    *be = json_object_new_object(), *ls = json_object_new_array();
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		const struct kg_listener_slot *s = &rt->slots[i];
		active += atomic_load(&s->active);
		if (s->used && (!listener || strcmp(listener, s->name) == 0))
			json_object_array_add(ls, kg_listener_counters_json(s));
	}
	json_object *groups[KG_CG_COUNT] = {
		[KG_CG_CONNECTIONS] = conns, [KG_CG_HANDSHAKES] = hs,
		[KG_CG_BYTES] = bytes, [KG_CG_BACKENDS] = be};
	for (size_t i = 0; i < KG_COUNTER_COUNT; i++)
		add_u64(groups[kg_counter_table[i].group], kg_counter_table[i].json_key,
			kg_counter_read(&sum, i));
	add_u64(conns, "active", active);
	add_u64(conns, "http_tunnels_active", tunnels_active(&sum));
	for (int p = KG_PATH_NONE + 1; p < KG_PATH_COUNT; p++) {
		char key[48];
		snprintf(key, sizeof(key), "path_%s", kg_path_name((enum kg_path)p));
		add_u64(conns, key, atomic_load_explicit(&sum.path[p], memory_order_relaxed));
	}
	json_object *by = json_object_new_object();
	for (int r = 0; r < KG_HS_REASONS; r++)
		add_u64(by, kg_hs_reason_names[r], why[r]);
	json_object_object_add(hs, "failed_by_reason", by);
	json_object_object_add(o, "connections", conns);
	json_object_object_add(o, "handshakes", hs);
	json_object_object_add(o, "bytes", bytes);
	json_object_object_add(o, "backends", be);
	json_object_object_add(o, "listeners", ls);
	return o;
}

/* Appends printf output to a growing buffer; on ENOMEM the text is cut. */
struct text {
	char *buf;
	size_t len, cap;
	bool failed;
};

__attribute__((format(printf, 2, 3))) static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	for (int pass = 0; pass < 2 && !t->failed; pass++) {
		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0,
				  fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if (t->buf && t->len + (size_t)n < t->cap) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = (t->cap + (size_t)n + 1) * 2;
		char *grown = realloc(t->buf, cap);
		if (!grown) {
			t->failed = true;
			return;
		}
		t->buf = grown;
		t->cap = cap;
	}
}

static void metric(struct text *t, const char *name, const char *type, const char *help,
		   uint64_t v)
{
	put(t, "# HELP kgate_%s %s\n# TYPE kgate_%s %s\nkgate_%s %llu\n", name, help, name, type,
	    name, (unsigned long long)v);
}

/* How new connections reach the workers (steer.h): the mode in use, and
 * what the BPF program did with each new connection (all 0 under the
 * userspace hand-over, which kgate_connections_handed_over_total counts). */
static void steering_metrics(struct text *t, struct kg_runtime *rt)
{
	static const char *const results[KG_RP_N_STATS] = {
		[KG_RP_STEERED] = "steered", [KG_RP_NO_LISTENER] = "unknown_listener",
		[KG_RP_NO_WORKERS] = "no_workers", [KG_RP_SELECT_FAILED] = "select_failed"};
	uint64_t stats[KG_RP_N_STATS] = {0};
	if (rt->steer && kg_steer_stats(rt->steer, stats) < 0)
		memset(stats, 0, sizeof(stats));
	put(t, "# HELP kgate_accept_steering How new connections are spread over the workers "
	       "(settings.accept_steering as resolved at start): 1 on the mode in use.\n"
	       "# TYPE kgate_accept_steering gauge\n"
	       "kgate_accept_steering{mode=\"bpf\"} %d\n"
	       "kgate_accept_steering{mode=\"userspace\"} %d\n",
	    rt->steer != NULL, rt->steer == NULL);
	put(t, "# HELP kgate_accept_steered_total New connections the sk_reuseport program "
	       "looked at, by result (all but steered: the kernel's hash chose).\n"
	       "# TYPE kgate_accept_steered_total counter\n");
	for (int i = 0; i < KG_RP_N_STATS; i++)
		put(t, "kgate_accept_steered_total{result=\"%s\"} %llu\n", results[i],
		    (unsigned long long)stats[i]);
}

/* Per backend: whether it takes new connections, its open connections and
 * its check results, labelled by listener and address, read from each
 * running snapshot's health group (the same source as `listener show`).
 * Each listener's members are read once, so all families show the same
 * instant; samples collect per family and follow their HELP/TYPE lines. A
 * listener update starts a new group, so the counters may restart there;
 * Prometheus treats that as a counter reset. */
enum { BM_ROTATION, BM_HEALTHY, BM_ACTIVE, BM_WEIGHT, BM_CHECKS, BM_PASSIVE, BM_FAMILIES };

static void backend_metrics(struct text *t, struct kg_runtime *rt)
{
	static const struct {
		const char *name, *type, *help;
	} fams[BM_FAMILIES] = {
		[BM_ROTATION] = {"backend_in_rotation", "gauge",
		 "1 when the backend takes new connections (healthy, enabled, not drained)."},
		[BM_HEALTHY] = {"backend_healthy", "gauge",
		 "Active-check state: 1 healthy, 0 unhealthy or not yet known; absent without checks."},
		[BM_ACTIVE] = {"backend_connections_active", "gauge", "Open connections to the backend."},
		[BM_WEIGHT] = {"backend_weight_effective", "gauge",
		 "Weight used by round robin now (lower during slow start, 0 out of rotation)."},
		[BM_CHECKS] = {"backend_health_checks_total", "counter", "Active health checks by result."},
		[BM_PASSIVE] = {"backend_passive_failures_total", "counter",
		 "Connect or response failures seen on client traffic."},
	};
	struct text samples[BM_FAMILIES] = {0};
	struct kg_health_member_info info[KG_MAX_BACKENDS];
	/* A named group is shown once (group="name"), however many listeners
	 * send to it; inline backends by their listener. */
	const struct kg_group_rt *shown[KG_MAX_GROUPS];
	size_t n_shown = 0;
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		struct kg_listener_slot *slot = &rt->slots[i];
		struct kg_listener_rt *snap = slot->used ? kg_listener_acquire(slot) : NULL;
		for (size_t gi = 0; snap && gi < snap->n_groups; gi++) {
		const struct kg_group_rt *g = snap->groups[gi];
		bool named = g->conf->name[0] != '\0', seen = false;
		for (size_t j = 0; named && j < n_shown && !seen; j++)
			seen = shown[j] == g;
		if (seen || (named && n_shown == KG_MAX_GROUPS))
			continue;
		if (named)
			shown[n_shown++] = g;
		/* The addresses in info belong to the group: held until done. */
		size_t n = kg_health_snapshot(g->health, info, KG_MAX_BACKENDS, kg_now_ms());
		for (size_t m = 0; m < n && m < KG_MAX_BACKENDS; m++) {
			const struct kg_health_member_info *h = &info[m];
			char l[256];
			snprintf(l, sizeof(l), "%s=\"%s\",backend=\"%s\"", named ? "group" : "listener",
				 named ? g->conf->name : slot->name, h->address);
			put(&samples[BM_ROTATION], "kgate_%s{%s} %d\n", fams[BM_ROTATION].name, l,
			    h->in_rotation);
			if (h->checked)
				put(&samples[BM_HEALTHY], "kgate_%s{%s} %d\n", fams[BM_HEALTHY].name, l,
				    h->state == KG_MEMBER_HEALTHY);
			put(&samples[BM_ACTIVE], "kgate_%s{%s} %u\n", fams[BM_ACTIVE].name, l, h->active);
			put(&samples[BM_WEIGHT], "kgate_%s{%s} %u\n", fams[BM_WEIGHT].name, l,
			    h->in_rotation ? h->effective_weight : 0);
			put(&samples[BM_CHECKS], "kgate_%s{%s,result=\"ok\"} %llu\n"
			    "kgate_%s{%s,result=\"failed\"} %llu\n", fams[BM_CHECKS].name, l,
			    (unsigned long long)h->checks_ok, fams[BM_CHECKS].name, l,
			    (unsigned long long)h->checks_failed);
			put(&samples[BM_PASSIVE], "kgate_%s{%s} %llu\n", fams[BM_PASSIVE].name, l,
			    (unsigned long long)h->passive_failures);
		}
		}
		kg_listener_put(snap);
	}
	for (size_t f = 0; f < BM_FAMILIES; f++) {
		put(t, "# HELP kgate_%s %s\n# TYPE kgate_%s %s\n%s", fams[f].name, fams[f].help,
		    fams[f].name, fams[f].type, samples[f].buf ? samples[f].buf : "");
		t->failed |= samples[f].failed;
		free(samples[f].buf);
	}
}

/* Per certificate entry of the running document: its first certificate's
 * notAfter, read from the file at each scrape (a small file; the same one
 * `cert list` reads), so a replaced certificate shows at once. An entry
 * whose file cannot be read has no sample. For a ca entry's CRL: the one
 * in force (crl.h: what handshakes use, which a broken file on disk does
 * not change), or the file's before anything loaded it. */
static void cert_metrics(struct text *t, const struct kg_config *cfg)
{
	struct text after = {0}, next = {0}, reloads = {0}, revoked = {0}, load = {0};
	for (size_t i = 0; cfg && i < cfg->n_certs; i++) {
		const struct kg_cert_conf *c = &cfg->certs[i];
		struct kg_cert_dates d;
		struct kg_crl_info ci = {0};
		bool in_force = c->type == KG_CERT_CA && c->crl_path && kg_crl_info(c, &ci);
		bool dated = kg_cert_dates_read(c, &d) == 0;
		if (dated)
			put(&after, "kgate_certificate_not_after_seconds{cert=\"%s\",type=\"%s\"} "
			    "%lld\n", c->name, c->type == KG_CERT_SERVER ? "server" : "ca",
			    (long long)d.not_after);
		if (in_force) {
			put(&revoked, "kgate_crl_revoked_entries{cert=\"%s\"} %zu\n", c->name,
			    ci.revoked);
			put(&load, "kgate_crl_load_seconds{cert=\"%s\"} %.6f\n", c->name,
			    (double)ci.load_us / 1e6);
		}
		if (c->type == KG_CERT_CA && c->crl_path) {
			put(&reloads, "kgate_crl_reloads_total{cert=\"%s\",result=\"applied\"} %llu\n"
			    "kgate_crl_reloads_total{cert=\"%s\",result=\"refused\"} %llu\n",
			    c->name, (unsigned long long)ci.applied, c->name,
			    (unsigned long long)ci.refused);
		}
		if (dated && d.has_next_update)
			put(&next, "kgate_crl_next_update_seconds{cert=\"%s\"} %lld\n", c->name,
			    (long long)d.next_update);
	}
	put(t, "# HELP kgate_certificate_not_after_seconds notAfter of each certificate entry's "
	       "first certificate (a server chain's leaf), Unix time.\n"
	       "# TYPE kgate_certificate_not_after_seconds gauge\n%s",
	    after.buf ? after.buf : "");
	put(t, "# HELP kgate_crl_next_update_seconds nextUpdate of each CA entry's CRL in force, "
	       "Unix time; absent when the CRL has none.\n"
	       "# TYPE kgate_crl_next_update_seconds gauge\n%s", next.buf ? next.buf : "");
	put(t, "# HELP kgate_crl_reloads_total New CRLs offered for each CA entry (file watch, "
	       "fetch), by result: applied, or refused (the previous CRL stays in force).\n"
	       "# TYPE kgate_crl_reloads_total counter\n%s", reloads.buf ? reloads.buf : "");
	put(t, "# HELP kgate_crl_revoked_entries Revoked certificates listed in each CA entry's "
	       "CRL in force.\n"
	       "# TYPE kgate_crl_revoked_entries gauge\n%s", revoked.buf ? revoked.buf : "");
	put(t, "# HELP kgate_crl_load_seconds How long reading, parsing and checking the CRL in "
	       "force took (off the workers).\n"
	       "# TYPE kgate_crl_load_seconds gauge\n%s", load.buf ? load.buf : "");
	t->failed |= after.failed || next.failed || reloads.failed || revoked.failed || load.failed;
	free(after.buf);
	free(next.buf);
	free(reloads.buf);
	free(revoked.buf);
	free(load.buf);
}

char *kg_metrics_text(struct kg_runtime *rt, const struct kg_config *cfg)
{
	struct kg_counters s;
	struct text t = {0};
	uint64_t active = 0;
	sum_workers(rt, &s);
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++)
		active += atomic_load(&rt->slots[i].active);
	/* The worker counters, from their table: rows of one family are
	 * adjacent, so HELP and TYPE go before the first row of each. */
	for (size_t i = 0; i < KG_COUNTER_COUNT; i++) {
		const struct kg_counter_info *k = &kg_counter_table[i];
		if (i == 0 || strcmp(k->family, kg_counter_table[i - 1].family) != 0)
			put(&t, "# HELP kgate_%s %s\n# TYPE kgate_%s counter\n", k->family, k->help,
			    k->family);
		put(&t, "kgate_%s%s%s%s %llu\n", k->family, *k->labels ? "{" : "", k->labels,
		    *k->labels ? "}" : "", (unsigned long long)kg_counter_read(&s, i));
	}
	metric(&t, "connections_active", "gauge", "Open client connections.", active);
	metric(&t, "http_tunnels_active", "gauge", "Open WebSocket tunnels on https listeners.",
	       tunnels_active(&s));
	put(&t, "# HELP kgate_connections_by_path_total Connections that started forwarding, per path.\n"
		"# TYPE kgate_connections_by_path_total counter\n");
	for (int p = KG_PATH_NONE + 1; p < KG_PATH_COUNT; p++)
		put(&t, "kgate_connections_by_path_total{path=\"%s\"} %llu\n",
		    kg_path_name((enum kg_path)p),
		    (unsigned long long)atomic_load_explicit(&s.path[p], memory_order_relaxed));
	uint64_t why[KG_HS_REASONS];
	sum_reasons(rt, why);
	put(&t, "# HELP kgate_handshake_failures_by_reason_total Failed handshakes by reason.\n"
		"# TYPE kgate_handshake_failures_by_reason_total counter\n");
	for (int r = 0; r < KG_HS_REASONS; r++)
		put(&t, "kgate_handshake_failures_by_reason_total{reason=\"%s\"} %llu\n",
		    kg_hs_reason_names[r], (unsigned long long)why[r]);
	unsigned long long staple_ok, staple_failed;
	kg_staple_counts(&staple_ok, &staple_failed);
	put(&t, "# HELP kgate_ocsp_staple_fetches_total Fetches of server certificates' OCSP "
		"responses for stapling, by result.\n"
		"# TYPE kgate_ocsp_staple_fetches_total counter\n"
		"kgate_ocsp_staple_fetches_total{result=\"ok\"} %llu\n"
		"kgate_ocsp_staple_fetches_total{result=\"failed\"} %llu\n",
	    staple_ok, staple_failed);
	put(&t, "# HELP kgate_listener_connections_active Open connections per listener.\n"
		"# TYPE kgate_listener_connections_active gauge\n");
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		const struct kg_listener_slot *l = &rt->slots[i];
		if (l->used)
			put(&t, "kgate_listener_connections_active{listener=\"%s\"} %u\n", l->name,
			    atomic_load(&l->active));
	}
	put(&t, "# HELP kgate_listener_handshakes_total Handshakes per listener and result.\n"
		"# TYPE kgate_listener_handshakes_total counter\n");
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		const struct kg_listener_slot *l = &rt->slots[i];
		if (!l->used)
			continue;
		put(&t, "kgate_listener_handshakes_total{listener=\"%s\",result=\"ok\"} %llu\n",
		    l->name, (unsigned long long)atomic_load(&l->counters.handshakes));
		put(&t, "kgate_listener_handshakes_total{listener=\"%s\",result=\"failed\"} %llu\n",
		    l->name, (unsigned long long)atomic_load(&l->counters.handshake_failed));
	}
	put(&t, "# HELP kgate_listener_access_decisions_total Access rule decisions on client "
		"certificates per listener.\n"
		"# TYPE kgate_listener_access_decisions_total counter\n");
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		const struct kg_listener_slot *l = &rt->slots[i];
		if (!l->used)
			continue;
		put(&t, "kgate_listener_access_decisions_total{listener=\"%s\",decision=\"allow\"} "
			"%llu\n", l->name, (unsigned long long)atomic_load(&l->counters.access_allowed));
		put(&t, "kgate_listener_access_decisions_total{listener=\"%s\",decision=\"deny\"} "
			"%llu\n", l->name, (unsigned long long)atomic_load(&l->counters.access_denied));
	}
	put(&t, "# HELP kgate_listener_route_requests_total Requests of https listeners with "
		"routes, per route; (default): no route matched, sent to the default group; "
		"(none): no route matched and no default group (404).\n"
		"# TYPE kgate_listener_route_requests_total counter\n");
	for (size_t i = 0; i < KG_MAX_LISTENERS; i++) {
		struct kg_listener_slot *l = &rt->slots[i];
		struct kg_listener_rt *snap = l->used ? kg_listener_acquire(l) : NULL;
		const struct kg_routes *routes = snap ? snap->conf->routes : NULL;
		for (size_t r = 0; r < kg_routes_count(routes); r++)
			put(&t, "kgate_listener_route_requests_total{listener=\"%s\",route=\"%s\"} "
				"%llu\n", l->name, kg_routes_name(routes, r),
			    (unsigned long long)atomic_load(&l->counters.routed[r]));
		if (routes) {
			put(&t, "kgate_listener_route_requests_total{listener=\"%s\",route=\"%s\"} "
				"%llu\n", l->name, KG_ROUTE_DEFAULT,
			    (unsigned long long)atomic_load(&l->counters.route_default));
			put(&t, "kgate_listener_route_requests_total{listener=\"%s\",route=\"%s\"} "
				"%llu\n", l->name, KG_ROUTE_NONE,
			    (unsigned long long)atomic_load(&l->counters.route_not_found));
		}
		kg_listener_put(snap);
	}
	backend_metrics(&t, rt);
	cert_metrics(&t, cfg);
	if (rt->store) {
		const struct kg_store_status *ss = rt->store;
		uint64_t contact = atomic_load(&ss->last_contact_ms);
		metric(&t, "store_reachable", "gauge",
		       "1 when the store (--store) answered the last request.",
		       atomic_load(&ss->reachable));
		metric(&t, "store_applied_revision", "gauge",
		       "The store revision of the state this instance runs (0: none applied).",
		       (uint64_t)atomic_load(&ss->applied_revision));
		/* No contact yet reads as the time since start. */
		metric(&t, "store_seconds_since_contact", "gauge",
		       "Seconds since the store last answered.",
		       (kg_now_ms() - (contact ? contact : rt->started_ms)) / 1000);
		metric(&t, "store_documents_refused_total", "counter",
		       "Store documents that did not validate and were not applied, and "
		       "ticket key sets that did not open.",
		       atomic_load(&ss->documents_refused));
	}
	put(&t, "# HELP kgate_worker_connections Connections each worker owns now (accepted "
		"connections are spread evenly over the workers).\n"
		"# TYPE kgate_worker_connections gauge\n");
	for (unsigned i = 0; i < rt->n_workers; i++)
		put(&t, "kgate_worker_connections{worker=\"%u\"} %u\n", i,
		    (unsigned)atomic_load(&rt->workers[i]->n_conns));
	steering_metrics(&t, rt);
	put(&t, "# HELP kgate_io_uring_ring_info Each worker's io_uring ring: set-up flags, "
		"whether SINGLE_ISSUER|DEFER_TASKRUN was refused, the kernel's feature flags.\n"
		"# TYPE kgate_io_uring_ring_info gauge\n");
	for (unsigned i = 0; i < rt->n_workers; i++) {
		const struct kg_ring_info *ri = &rt->workers[i]->ring_info;
		char features[512];
		kg_ring_features_format(ri->features, features, sizeof(features));
		put(&t, "kgate_io_uring_ring_info{worker=\"%u\",setup=\"%s\",fallback=\"%s\","
			"features=\"%s\",features_mask=\"0x%x\"} 1\n", i,
		    kg_ring_setup_name(ri->setup_flags), ri->fallback_err ? "true" : "false",
		    features, ri->features);
	}
	if (t.failed) {
		free(t.buf);
		return NULL;
	}
	return t.buf;
}

int kg_metrics_open(const char *hostport, char *err, size_t errlen)
{
	struct sockaddr_storage addr;
	socklen_t len;
	if (kg_parse_hostport(hostport, &addr, &len) < 0) {
		return kg_fail(err, errlen, EINVAL, "--metrics %s: expected IP:PORT (\"127.0.0.1:9100\")",
			       hostport);
	}
	int fd = kg_listener_open(&addr, len, NULL);
	if (fd < 0) {
		return kg_fail_errno(err, errlen, -fd, "--metrics %s", hostport);
	}
	return fd;
}

void kg_metrics_serve(struct kg_runtime *rt, const struct kg_config *cfg, int client)
{
	char req[2048];
	size_t got = 0;
	/* Read the request head within a bounded time: a silent client must
	 * not hold the control thread. */
	while (got < sizeof(req) - 1 && !memmem(req, got, "\r\n\r\n", 4)) {
		struct pollfd p = {.fd = client, .events = POLLIN};
		if (poll(&p, 1, HTTP_READ_MS) <= 0)
			return;
		ssize_t n = recv(client, req + got, sizeof(req) - 1 - got, 0);
		if (n <= 0)
			return;
		got += (size_t)n;
	}
	req[got] = '\0';
	const char *status = "200 OK";
	char *body = NULL;
	if (strncmp(req, "GET /metrics ", 13) == 0 || strncmp(req, "GET / ", 6) == 0) {
		body = kg_metrics_text(rt, cfg);
	} else if (strncmp(req, "GET /ready ", 11) == 0) {
		/* For routing (kgate-anycast): the answer is a status code, the
		 * body only says why to a person. */
		int r = atomic_load(&rt->readiness);
		status = r == KG_READINESS_SERVING ? "200 OK" : "503 Service Unavailable";
		body = strdup(r == KG_READINESS_SERVING ? "ready\n"
			      : r == KG_READINESS_STARTING ? "starting\n" : "draining\n");
		if (!body)
			status = "500 Internal Server Error";
	} else {
		status = "404 Not Found";
	}
	char head[256];
	size_t blen = body ? strlen(body) : 0;
	snprintf(head, sizeof(head),
		 "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
		 "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, blen);
	if (kg_send_all(client, head, strlen(head)) == 0 && body)
		kg_send_all(client, body, blen);
	free(body);
}
