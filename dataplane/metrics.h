/* Counters for people and for Prometheus: per-worker counters summed, per
 * listener counters, and a tiny HTTP endpoint (--metrics ADDR:PORT, off by
 * default) served by the control thread. */
#ifndef KGATE_METRICS_H
#define KGATE_METRICS_H

#include <json-c/json.h>

#include "runtime.h"

/* Opens the metrics listening socket (blocking accept on the control
 * thread's poll loop). fd or -errno with err. */
int kg_metrics_open(const char *hostport, char *err, size_t errlen);

/* Answers one HTTP request on client and closes nothing: GET /metrics
 * (and /) the Prometheus text (with the certificate dates of cfg, which
 * the caller keeps alive; NULL: none), GET /ready 200 "ready" while rt->readiness
 * is KG_READINESS_SERVING, else 503 "starting" or "draining". */
void kg_metrics_serve(struct kg_runtime *rt, const struct kg_config *cfg, int client);

/* {"name", "active", "accepted", "handshakes", "handshake_failed",
 * "rejected_limit"} of one listener slot. */
json_object *kg_listener_counters_json(const struct kg_listener_slot *s);

/* `kgatectl stats`: the counters summed over workers, and per listener
 * (only the one named listener when not NULL). */
json_object *kg_stats_json(struct kg_runtime *rt, const char *listener);

/* Prometheus text exposition of everything kg_stats_json reports, and
 * the certificate dates of cfg (NULL: none). */
char *kg_metrics_text(struct kg_runtime *rt, const struct kg_config *cfg);

#endif
