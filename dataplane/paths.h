/* Forwarding paths (README.md, "Forwarding paths") and how a listener's
 * `forwarding` setting maps onto what the running kernel offers. Decided
 * once per listener at start; a forced path the kernel cannot run is a
 * start-up error, never a silent fallback. */
#ifndef KGATE_PATHS_H
#define KGATE_PATHS_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Each comment starts with the name a user sees (kg_path_name). */
enum kg_path {
	KG_PATH_NONE,
	KG_PATH_USERSPACE,   /* userspace-tls: OpenSSL encrypts, io_uring send/recv */
	KG_PATH_KTLS_SPLICE, /* ktls-splice: kTLS on the client socket, splice both ways */
	KG_PATH_SPLICE,      /* splice: plain tcp, splice both ways */
	KG_PATH_SOCKMAP,     /* sockmap: plain tcp, eBPF sockmap redirect */
	KG_PATH_COPY,        /* userspace-copy: plain tcp through a userspace buffer */
	KG_PATH_HTTP,        /* http-userspace-tls: https, userspace TLS, requests parsed
			      * and balanced one by one */
	KG_PATH_HTTP_KTLS,   /* http-ktls-splice: https, kTLS on the client socket, heads
			      * parsed in userspace, Content-Length bodies spliced */
	KG_PATH_H2,          /* h2-userspace-tls: https that negotiated HTTP/2 (ALPN h2),
			      * userspace TLS, streams balanced one by one */
	KG_PATH_H2_KTLS,     /* h2-ktls: https that negotiated HTTP/2, kTLS on the client
			      * socket, frames read and written as plaintext */
	KG_PATH_COUNT,
};

/* The path starts with a kTLS handoff after the handshake (conn.c). */
static inline bool kg_path_hands_off(enum kg_path p)
{
	return p == KG_PATH_KTLS_SPLICE || p == KG_PATH_HTTP_KTLS || p == KG_PATH_H2_KTLS;
}

/* Requests are parsed and balanced one by one (forward_http.c, and
 * forward_h2.c for streams). */
static inline bool kg_path_is_http(enum kg_path p)
{
	return p == KG_PATH_HTTP || p == KG_PATH_HTTP_KTLS || p == KG_PATH_H2 ||
	       p == KG_PATH_H2_KTLS;
}

/* The path a connection planned for p takes once its handshake agreed on
 * an application protocol (ALPN, alpn[0..len), len 0 for none): an https
 * path whose client chose "h2" moves to its HTTP/2 twin; everything else
 * stays p. */
enum kg_path kg_path_for_alpn(enum kg_path p, const unsigned char *alpn, unsigned len);

struct kg_kernel_caps {
	bool ktls;
	bool sockmap;
	char ktls_why[160];
	char sockmap_why[160];
};

/* Probes the kernel once (kTLS ULP on a loopback pair). Sockmap support is
 * filled in by whoever loads the BPF objects. */
void kg_kernel_probe(struct kg_kernel_caps *caps);

/* The path a listener's connections take. forced is true when the config
 * named the path: a connection that cannot take it is closed rather than
 * moved to another path. Returns 0, or -EOPNOTSUPP with err saying why the
 * configured path cannot run here. */
int kg_path_plan(const struct kg_listener_conf *lc, const struct kg_kernel_caps *caps,
		 enum kg_path *plan, bool *forced, char *err, size_t errlen);

const char *kg_path_name(enum kg_path p);
/* "path_ktls_splice": the key of p's count in the worker.stopped event. */
const char *kg_path_log_key(enum kg_path p);

#endif
