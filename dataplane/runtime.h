/* What all workers share, built once at start-up by main.c and read-only
 * afterwards (but for the atomics). */
#ifndef KGATE_RUNTIME_H
#define KGATE_RUNTIME_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "balancer.h"
#include "config.h"
#include "paths.h"

struct kg_health_group;

struct kg_listener_rt {
	const struct kg_listener_conf *conf;
	SSL_CTX *ssl_ctx;     /* NULL for tcp listeners */
	struct kg_balancer *balancer;
	enum kg_path plan;  /* the path connections take (paths.h) */
	bool plan_forced;   /* configured explicitly: no fallback per connection */
	struct kg_health_group *health; /* member states, drain, active counts */
	atomic_uint active;   /* connections across workers, for max_connections */
};

/* Counters are per worker (no sharing on the hot path) and summed when read. */
struct kg_counters {
	uint64_t accepted;
	uint64_t rejected_limit;    /* max_connections reached */
	uint64_t handshake_failed;
	uint64_t handshake_timeout;
	uint64_t handshakes;
	uint64_t resumed;
	uint64_t backend_connect_failed;
	uint64_t no_backend;        /* every member tried or down */
	uint64_t idle_timeout;
	uint64_t forwarded_c2b;     /* plaintext bytes */
	uint64_t forwarded_b2c;
	uint64_t closed;
	uint64_t path[KG_PATH_COUNT]; /* connections that started forwarding, per path */
	uint64_t ktls_fallback;       /* auto: kTLS handoff impossible, stayed on userspace TLS */
	uint64_t ktls_failed;         /* forced or past the point of return: closed */
	uint64_t health_checks;        /* active checks run by this worker */
	uint64_t health_checks_failed;
	uint64_t cut_unhealthy;        /* connections closed: backend turned unhealthy */
};

struct kg_runtime {
	const struct kg_config *cfg;
	struct kg_listener_rt *listeners;
	size_t n_listeners;
	struct kg_kernel_caps caps;
	unsigned n_workers;   /* health checks are spread over them */
	atomic_bool stopping; /* set by the signal thread: drain and exit */
};

#endif
