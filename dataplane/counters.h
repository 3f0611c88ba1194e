/* Worker counters: one table for every place that names them.
 *
 * Each row of KG_COUNTERS is one counter; the struct, the sum over
 * workers, `kgatectl stats` JSON, the Prometheus text and the
 * worker.stopped log line are all generated from it (metrics.c,
 * worker.c), so a counter added here shows up in all five and cannot be
 * forgotten in one. The man page (kgated(8) METRICS) is checked against
 * the table by `kgated --counters` and test_control.
 *
 * Columns: X(field, group, json_key, family, labels, log_key, help)
 *   field    member of struct kg_counters
 *   group    KG_CG_*: the object of the stats JSON the counter sits in
 *   json_key its key there
 *   family   Prometheus family, without the kgate_ prefix; rows of one
 *            family are adjacent and share the first row's help
 *   labels   Prometheus labels of this row's sample ("" for none)
 *   log_key  key in the worker.stopped log event
 *   help     Prometheus HELP text
 *
 * Per-path connection counts (path[], named by paths.h) and handshake
 * failures by reason (per listener, runtime.h) have tables of their own. */
#ifndef KGATE_COUNTERS_H
#define KGATE_COUNTERS_H

#include <stdatomic.h>
#include <stdint.h>

#include "paths.h"

enum kg_counter_group {
	KG_CG_CONNECTIONS,
	KG_CG_HANDSHAKES,
	KG_CG_BYTES,
	KG_CG_BACKENDS,
	KG_CG_COUNT,
};

#define KG_COUNTERS(X)                                                                           \
	X(accepted, KG_CG_CONNECTIONS, "total", "connections_total", "", "accepted",               \
	  "Client connections accepted.")                                                          \
	X(closed, KG_CG_CONNECTIONS, "closed", "connections_closed_total", "", "closed",           \
	  "Client connections closed.")                                                            \
	X(rejected_limit, KG_CG_CONNECTIONS, "rejected_limit", "connections_rejected_total", "",   \
	  "rejected_limit", "Connections refused by max_connections.")                             \
	X(rejected_resources, KG_CG_CONNECTIONS, "rejected_resources",                             \
	  "connections_rejected_resources_total", "", "rejected_resources",                        \
	  "Connections refused for lack of memory or connection slots.")                           \
	X(idle_timeout, KG_CG_CONNECTIONS, "idle_timeout", "connections_idle_timeout_total", "",   \
	  "idle_timeout", "Connections closed after their idle or keep-alive timeout.")            \
	X(cut_unhealthy, KG_CG_CONNECTIONS, "cut_unhealthy", "connections_cut_total",              \
	  "reason=\"unhealthy\"", "cut_unhealthy",                                                 \
	  "Established connections closed (HTTP/2: streams ended) because their backend left "   \
	  "the rotation.")                                                                         \
	X(cut_disabled, KG_CG_CONNECTIONS, "cut_disabled", "connections_cut_total",                \
	  "reason=\"disabled\"", "cut_disabled", "")                                               \
	X(handed_over, KG_CG_CONNECTIONS, "handed_over", "connections_handed_over_total", "",      \
	  "handed_over", "Connections a worker accepted and gave to a less loaded worker.")        \
	X(ktls_fallback, KG_CG_CONNECTIONS, "ktls_fallback", "ktls_fallback_total", "",            \
	  "ktls_fallback", "Connections that stayed on userspace TLS where auto could not hand "   \
	  "off to kernel TLS.")                                                                    \
	X(ktls_failed, KG_CG_CONNECTIONS, "ktls_failed", "ktls_failures_total", "", "ktls_failed", \
	  "Connections closed because a kernel TLS handoff failed past the point of return.")      \
	X(sockmap_fallback, KG_CG_CONNECTIONS, "sockmap_fallback", "sockmap_fallback_total", "",   \
	  "sockmap_fallback", "Connections the sockmap refused, spliced instead.")                 \
	X(http_requests, KG_CG_CONNECTIONS, "http_requests", "http_requests_total", "",            \
	  "http_requests", "Requests parsed on https listeners.")                                  \
	X(http_errors, KG_CG_CONNECTIONS, "http_errors", "http_errors_total", "", "http_errors",   \
	  "Error responses made by kgate on https listeners (400, 403, 404, 408, 421, 431, 502, 503, 504).")      \
	X(http_hdr_dropped_reserved, KG_CG_CONNECTIONS, "http_headers_dropped_reserved",           \
	  "http_headers_dropped_total", "reason=\"reserved\"", "http_headers_dropped_reserved",    \
	  "Request headers removed by kgate, by reason: reserved (a client's copy of a header "    \
	  "kgate sets or reserves, in any letter case, _ for -), underscore (another name with "   \
	  "an underscore, underscores_in_headers drop).")                                          \
	X(http_hdr_dropped_underscore, KG_CG_CONNECTIONS, "http_headers_dropped_underscore",       \
	  "http_headers_dropped_total", "reason=\"underscore\"",                                   \
	  "http_headers_dropped_underscore", "")                                                   \
	X(http_rejected_underscore, KG_CG_CONNECTIONS, "http_requests_rejected_underscore",        \
	  "http_requests_rejected_total", "reason=\"underscore\"",                                 \
	  "http_rejected_underscore",                                                              \
	  "Requests refused with 400: reason underscore (a header name, underscores_in_headers "  \
	  "reject), reserved_trailer (a chunked request's trailer named like an identity "         \
	  "header).")                                                                              \
	X(http_rejected_trailer, KG_CG_CONNECTIONS, "http_requests_rejected_reserved_trailer",     \
	  "http_requests_rejected_total", "reason=\"reserved_trailer\"", "http_rejected_trailer",  \
	  "")                                                                                      \
	X(http_misdirected, KG_CG_CONNECTIONS, "http_requests_misdirected",                        \
	  "http_requests_misdirected_total", "", "http_misdirected",                               \
	  "Requests answered 421 on https listeners with sni entries: their Host is served "      \
	  "under another client policy than the one their connection's handshake used.")          \
	X(h2_streams, KG_CG_CONNECTIONS, "h2_streams", "h2_streams_total", "", "h2_streams",       \
	  "HTTP/2 streams taken on https listeners (each a request, counted in http_requests "    \
	  "too).")                                                                                 \
	X(h2_goaway_drain, KG_CG_CONNECTIONS, "h2_goaway_drain", "h2_goaway_drain_total", "",      \
	  "h2_goaway_drain", "HTTP/2 connections sent GOAWAY to drain (SIGTERM, upgrade).")         \
	X(h2_backend_conns, KG_CG_CONNECTIONS, "h2_backend_conns", "h2_backend_conns_total", "",  \
	  "h2_backend_conns",                                                                      \
	  "HTTP/2 backend connections opened (backend_protocol h2).")                              \
	X(h2_backend_streams, KG_CG_CONNECTIONS, "h2_backend_streams",                             \
	  "h2_backend_streams_total", "", "h2_backend_streams",                                    \
	  "Streams opened on HTTP/2 backend connections.")                                         \
	X(h2_backend_goaway, KG_CG_CONNECTIONS, "h2_backend_goaway", "h2_backend_goaway_total", "",\
	  "h2_backend_goaway", "GOAWAY frames received from HTTP/2 backends.")                     \
	X(h2_backend_resets, KG_CG_CONNECTIONS, "h2_backend_resets", "h2_backend_resets_total", "",\
	  "h2_backend_resets",                                                                     \
	  "Streams an HTTP/2 backend reset (or refused), passed to the client as a reset or an "  \
	  "error response.")                                                                       \
	X(h2_backend_retries, KG_CG_CONNECTIONS, "h2_backend_retries",                             \
	  "h2_backend_retries_total", "", "h2_backend_retries",                                    \
	  "Streams an HTTP/2 backend refused unprocessed, sent once more on another connection.")  \
	X(h2_abuse_streams, KG_CG_CONNECTIONS, "h2_abuse_streams", "h2_abuse_total",                   \
	  "kind=\"streams\"", "h2_abuse_streams",                                                        \
	  "HTTP/2 streams reset or connections ended for abuse, by kind: streams (beyond " \
	  "h2_max_streams), header_list (header list or block too large), rapid_reset, "  \
	  "continuation (CONTINUATION flood), hpack (bad or inflating HPACK), control_flood " \
	  "(SETTINGS/PING/PRIORITY/empty frames), malformed (a request that fails "       \
	  "validation), protocol (any other connection error).")                                                                                   \
	X(h2_abuse_header_list, KG_CG_CONNECTIONS, "h2_abuse_header_list", "h2_abuse_total",                   \
	  "kind=\"header_list\"", "h2_abuse_header_list",                                                        \
	  "")                                                                                  \
	X(h2_abuse_rapid_reset, KG_CG_CONNECTIONS, "h2_abuse_rapid_reset", "h2_abuse_total",                   \
	  "kind=\"rapid_reset\"", "h2_abuse_rapid_reset",                                                        \
	  "")                                                                                  \
	X(h2_abuse_continuation, KG_CG_CONNECTIONS, "h2_abuse_continuation", "h2_abuse_total",                   \
	  "kind=\"continuation\"", "h2_abuse_continuation",                                                        \
	  "")                                                                                  \
	X(h2_abuse_hpack, KG_CG_CONNECTIONS, "h2_abuse_hpack", "h2_abuse_total",                   \
	  "kind=\"hpack\"", "h2_abuse_hpack",                                                        \
	  "")                                                                                  \
	X(h2_abuse_control_flood, KG_CG_CONNECTIONS, "h2_abuse_control_flood", "h2_abuse_total",                   \
	  "kind=\"control_flood\"", "h2_abuse_control_flood",                                                        \
	  "")                                                                                  \
	X(h2_abuse_malformed, KG_CG_CONNECTIONS, "h2_abuse_malformed", "h2_abuse_total",                   \
	  "kind=\"malformed\"", "h2_abuse_malformed",                                                        \
	  "")                                                                                  \
	X(h2_abuse_protocol, KG_CG_CONNECTIONS, "h2_abuse_protocol", "h2_abuse_total",                   \
	  "kind=\"protocol\"", "h2_abuse_protocol",                                                        \
	  "")                                                                                  \
	X(http_tunnels, KG_CG_CONNECTIONS, "http_tunnels", "http_tunnels_total", "",               \
	  "http_tunnels",                                                                          \
	  "WebSocket tunnels opened on https listeners (the backend answered 101).")              \
	X(http_tunnel_end_client, KG_CG_CONNECTIONS, "http_tunnels_closed_client",                 \
	  "http_tunnels_closed_total", "reason=\"client\"", "http_tunnels_closed_client",         \
	  "WebSocket tunnels ended, by reason: client or backend (that side closed first, the "   \
	  "other followed), idle_timeout (tunnel_idle_timeout_ms), lifetime "                     \
	  "(tunnel_max_lifetime_s), drain (cut at the drain timeout), error (a reset, a TLS "     \
	  "error, a backend cut).")                                                                \
	X(http_tunnel_end_backend, KG_CG_CONNECTIONS, "http_tunnels_closed_backend",               \
	  "http_tunnels_closed_total", "reason=\"backend\"", "http_tunnels_closed_backend", "")   \
	X(http_tunnel_end_idle, KG_CG_CONNECTIONS, "http_tunnels_closed_idle_timeout",             \
	  "http_tunnels_closed_total", "reason=\"idle_timeout\"",                                \
	  "http_tunnels_closed_idle_timeout", "")                                                  \
	X(http_tunnel_end_lifetime, KG_CG_CONNECTIONS, "http_tunnels_closed_lifetime",             \
	  "http_tunnels_closed_total", "reason=\"lifetime\"", "http_tunnels_closed_lifetime", "") \
	X(http_tunnel_end_drain, KG_CG_CONNECTIONS, "http_tunnels_closed_drain",                   \
	  "http_tunnels_closed_total", "reason=\"drain\"", "http_tunnels_closed_drain", "")       \
	X(http_tunnel_end_error, KG_CG_CONNECTIONS, "http_tunnels_closed_error",                   \
	  "http_tunnels_closed_total", "reason=\"error\"", "http_tunnels_closed_error", "")       \
	X(handshakes, KG_CG_HANDSHAKES, "ok", "handshakes_total", "", "handshakes",                \
	  "Completed TLS handshakes.")                                                             \
	X(resumed, KG_CG_HANDSHAKES, "resumed", "handshakes_resumed_total", "", "resumed",         \
	  "Resumed TLS handshakes.")                                                               \
	X(handshake_failed, KG_CG_HANDSHAKES, "failed", "handshake_failures_total", "",            \
	  "handshake_failed", "Failed TLS handshakes.")                                            \
	X(handshake_timeout, KG_CG_HANDSHAKES, "timeout", "handshake_timeouts_total", "",          \
	  "handshake_timeout", "Handshakes that timed out.")                                       \
	X(ocsp_good, KG_CG_HANDSHAKES, "ocsp_good", "ocsp_checks_total", "result=\"good\"",         \
	  "ocsp_good",                                                                             \
	  "Client certificates checked with OCSP (listener ocsp soft or hard), by outcome: good, " \
	  "revoked, unknown (the responder does not know it), error (no usable answer).")         \
	X(ocsp_revoked, KG_CG_HANDSHAKES, "ocsp_revoked", "ocsp_checks_total",                     \
	  "result=\"revoked\"", "ocsp_revoked", "")                                                \
	X(ocsp_unknown, KG_CG_HANDSHAKES, "ocsp_unknown", "ocsp_checks_total",                     \
	  "result=\"unknown\"", "ocsp_unknown", "")                                                \
	X(ocsp_error, KG_CG_HANDSHAKES, "ocsp_error", "ocsp_checks_total", "result=\"error\"",      \
	  "ocsp_error", "")                                                                        \
	X(ocsp_soft_allowed, KG_CG_HANDSHAKES, "ocsp_soft_allowed", "ocsp_soft_allowed_total", "", \
	  "ocsp_soft_allowed",                                                                     \
	  "Client certificates let in by ocsp soft without a good answer (error or unknown).")     \
	X(ocsp_cache_hits, KG_CG_HANDSHAKES, "ocsp_cache_hits", "ocsp_cache_hits_total", "",       \
	  "ocsp_cache_hits", "OCSP checks answered from the worker's cache.")                     \
	X(ocsp_queries, KG_CG_HANDSHAKES, "ocsp_queries", "ocsp_queries_total", "",                \
	  "ocsp_queries", "Queries sent to OCSP responders (one per certificate, shared by the "   \
	  "handshakes waiting for it).")                                                           \
	X(ocsp_query_timeouts, KG_CG_HANDSHAKES, "ocsp_query_timeouts",                            \
	  "ocsp_query_timeouts_total", "", "ocsp_query_timeouts",                                  \
	  "OCSP queries that ran out of ocsp_timeout_ms.")                                         \
	X(ocsp_lat_10ms, KG_CG_HANDSHAKES, "ocsp_queries_under_10ms", "ocsp_queries_by_latency_total", \
	  "within=\"10ms\"", "ocsp_under_10ms",                                                     \
	  "OCSP queries that ended (answer, error or timeout) by how long they took: within "      \
	  "10ms, 100ms, 1s, or longer.")                                                           \
	X(ocsp_lat_100ms, KG_CG_HANDSHAKES, "ocsp_queries_under_100ms",                            \
	  "ocsp_queries_by_latency_total", "within=\"100ms\"", "ocsp_under_100ms", "")              \
	X(ocsp_lat_1s, KG_CG_HANDSHAKES, "ocsp_queries_under_1s", "ocsp_queries_by_latency_total",  \
	  "within=\"1s\"", "ocsp_under_1s", "")                                                     \
	X(ocsp_lat_more, KG_CG_HANDSHAKES, "ocsp_queries_over_1s", "ocsp_queries_by_latency_total", \
	  "within=\"longer\"", "ocsp_over_1s", "")                                                  \
	X(forwarded_c2b, KG_CG_BYTES, "client_to_backend", "bytes_client_to_backend_total", "",    \
	  "bytes_c2b", "Plaintext bytes sent to backends.")                                        \
	X(forwarded_b2c, KG_CG_BYTES, "backend_to_client", "bytes_backend_to_client_total", "",    \
	  "bytes_b2c", "Plaintext bytes sent to clients.")                                         \
	X(http_spliced_c2b, KG_CG_BYTES, "http_spliced_client_to_backend",                         \
	  "http_spliced_bytes_client_to_backend_total", "", "http_spliced_c2b",                    \
	  "Request body and WebSocket tunnel bytes spliced on https listeners over kernel TLS "  \
	  "(part of the bytes "                                                                    \
	  "above).")                                                                               \
	X(http_spliced_b2c, KG_CG_BYTES, "http_spliced_backend_to_client",                         \
	  "http_spliced_bytes_backend_to_client_total", "", "http_spliced_b2c",                    \
	  "Response body and WebSocket tunnel bytes spliced on https listeners over kernel TLS " \
	  "(part of the bytes "                                                                    \
	  "above).")                                                                               \
	X(backend_connect_failed, KG_CG_BACKENDS, "connect_failed",                                \
	  "backend_connect_failures_total", "", "connect_failed", "Failed backend connects.")      \
	X(no_backend, KG_CG_BACKENDS, "no_backend", "no_backend_total", "", "no_backend",          \
	  "Connections or requests refused with no backend left.")                                 \
	X(proxy_sent, KG_CG_BACKENDS, "proxy_headers", "proxy_headers_total", "", "proxy_sent",    \
	  "PROXY v2 headers sent to backends.")                                                    \
	X(proxy_failed, KG_CG_BACKENDS, "proxy_header_failures", "proxy_header_failures_total",    \
	  "", "proxy_failed",                                                                      \
	  "Connections closed because their PROXY v2 header could not be built or sent.")         \
	X(health_checks, KG_CG_BACKENDS, "health_checks", "health_checks_total", "",               \
	  "health_checks", "Active health checks run.")                                            \
	X(health_checks_failed, KG_CG_BACKENDS, "health_checks_failed",                            \
	  "health_checks_failed_total", "", "health_checks_failed",                                \
	  "Active health checks that failed.")                                                     \
	X(http_backend_connects, KG_CG_BACKENDS, "http_connects", "http_backend_connects_total",   \
	  "", "http_backend_connects", "Backend connects made for https requests.")                \
	X(http_pool_reused, KG_CG_BACKENDS, "http_pooled_reuses", "http_pooled_reuses_total", "",  \
	  "http_pool_reused", "https requests sent on a pooled keep-alive backend connection.")  \
	X(http_quickack, KG_CG_BACKENDS, "http_quickacks", "http_backend_quickacks_total", "",      \
	  "http_quickack",                                                                         \
	  "https responses that arrived in parts and were acknowledged to the backend at once "   \
	  "(TCP_QUICKACK), sparing a two-send backend the 40 ms delayed-ACK wait.")

/* Written by their worker only (kg_count), read by the metrics and
 * control threads: relaxed atomics, so a reader sees a value that is at
 * most slightly stale, never torn, and the writer pays no locked
 * instruction. */
struct kg_counters {
#define KG_COUNTER_FIELD(field, ...) atomic_uint_fast64_t field;
	KG_COUNTERS(KG_COUNTER_FIELD)
#undef KG_COUNTER_FIELD
	atomic_uint_fast64_t path[KG_PATH_COUNT]; /* connections that started forwarding, per path */
};

/* Adds n to a counter of the calling worker's own struct kg_counters. */
static inline void kg_count_add(atomic_uint_fast64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

#define kg_count(w, field) kg_count_add(&(w)->stats.field, 1)

/* One row of the table, for code that walks it (metrics, logs, tests). */
struct kg_counter_info {
	enum kg_counter_group group;
	const char *json_key;
	const char *family;
	const char *labels;
	const char *log_key;
	const char *help;
	size_t offset; /* of the field in struct kg_counters */
};

enum {
#define KG_COUNTER_ONE(field, ...) +1
	KG_COUNTER_COUNT = 0 KG_COUNTERS(KG_COUNTER_ONE)
#undef KG_COUNTER_ONE
};

extern const struct kg_counter_info kg_counter_table[KG_COUNTER_COUNT];
extern const char *const kg_counter_group_names[KG_CG_COUNT];

/* Relaxed read of row i of c. */
uint64_t kg_counter_read(const struct kg_counters *c, size_t i);
/* sum += c, every row and path. */
void kg_counters_accumulate(struct kg_counters *sum, const struct kg_counters *c);

#endif
