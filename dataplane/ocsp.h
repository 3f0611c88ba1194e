/* OCSP for client certificates (RFC 6960): the listener's "ocsp" setting.
 *
 * A worker asks the responder on its own io_uring ring (connect, HTTP
 * POST, read the answer, each step linked to a timeout) while the
 * handshake that needs the answer is suspended, and remembers answers
 * until their nextUpdate (ocsp_cache.h). Several handshakes that wait for
 * the same certificate share one query.
 *
 * Suspension: OpenSSL 3.0 ignores SSL_set_retry_verify on a server (the
 * handshake simply goes on; it only suspends a client), so the handshake
 * of a listener with ocsp on runs as an OpenSSL async job
 * (SSL_MODE_ASYNC) and the verify callback pauses the job with
 * ASYNC_pause_job: SSL_do_handshake returns SSL_ERROR_WANT_ASYNC, the
 * worker serves other connections, and the connection calls
 * SSL_do_handshake again when the answer is in (kg_ocsp_wait.resume). */
#ifndef KGATE_OCSP_H
#define KGATE_OCSP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <openssl/ocsp.h>
#include <openssl/ssl.h>

#include <kgate/listener_keys.h>

#include "ocsp_cache.h"
#include "ocsp_resp.h"

struct io_uring_sqe;
struct kg_counters;
struct kg_ocsp;
struct kg_ocsp_query;

/* A query's operations on the ring, as the host routes them back. */
enum kg_ocsp_op {
	KG_OCSP_OP_CONNECT,
	KG_OCSP_OP_SEND,
	KG_OCSP_OP_RECV,
	KG_OCSP_OP_LINK_TIMEOUT,
	KG_OCSP_OP_CANCEL, /* never comes back: the host ignores cancels */
};

/* What the worker lends its OCSP client (filled by worker.c, which owns
 * all of it; this module names no worker type, so the worker, the
 * connection and tls.c may call it): SQEs on its ring (never NULL, as
 * kg_worker_sqe promises; sqe_timed: an operation and its linked
 * timeout), its clock and counters, its rate limit of per-connection
 * warnings, and the user_data that routes a completion of op on query
 * slot back to kg_ocsp_on_cqe. */
struct kg_ocsp_host {
	void *worker;
	unsigned id;
	const uint64_t *now_ms;
	struct kg_counters *stats;
	struct io_uring_sqe *(*sqe)(void *worker);
	void (*sqe_timed)(void *worker, struct io_uring_sqe **op, struct io_uring_sqe **timeout);
	bool (*warn_allowed)(void *worker);
	uint64_t (*user_data)(enum kg_ocsp_op op, uint32_t slot, int fd);
};

/* Answers one worker caches, and queries it runs at once (more
 * certificates waiting at the same moment are checked as errors). */
#define KG_OCSP_CACHE_ENTRIES 1024
#define KG_OCSP_QUERIES_MAX 64
/* Largest response read; a real one is one or two KiB. */
#define KG_OCSP_RESPONSE_MAX (64 * 1024)

/* A connection's part in OCSP, embedded in it; set up at accept for a
 * listener with ocsp on and attached to its SSL (kg_ocsp_attach). */
struct kg_ocsp_wait {
	struct kg_ocsp *o;         /* the worker's */
	enum kg_ocsp_mode mode;
	unsigned timeout_ms;
	const char *url;           /* the listener's ocsp_url, NULL: the certificate's AIA */
	/* Called on the worker when the answer is in (the wait has left its
	 * query): the connection calls SSL_do_handshake again. */
	void (*resume)(struct kg_ocsp_wait *wait);
	/* State: the query waited for (NULL when none), and its outcome. */
	struct kg_ocsp_query *q;
	struct kg_ocsp_wait *next;
	bool done;                 /* the outcome below is in */
	bool aborted;              /* the connection is going: refuse at once */
	bool failed;               /* no answer (why says why); else status */
	enum kg_ocsp_status status;
	/* Set by the check for the connection to log after the handshake
	 * step (nothing is logged on the async job's small stack): a
	 * certificate let in by soft mode, and why. */
	bool soft_allowed;
	char why[128];
};

/* NULL when out of memory. h is copied. */
struct kg_ocsp *kg_ocsp_create(const struct kg_ocsp_host *h);
/* Tolerates NULL; nothing may be in flight (kg_ocsp_idle). */
void kg_ocsp_destroy(struct kg_ocsp *o);
/* No query has an operation on the ring. */
bool kg_ocsp_idle(const struct kg_ocsp *o);
/* The drain is over: queries still running are cancelled (their
 * handshakes are being closed), so the worker need not wait out their
 * timeouts before it exits. */
void kg_ocsp_cancel_all(struct kg_ocsp *o);
/* A completion of one of the query operations (idx: the slot). */
void kg_ocsp_on_cqe(struct kg_ocsp *o, enum kg_ocsp_op op, uint32_t idx, int res);

/* Makes ssl's handshake check its client certificate with OCSP through
 * wait (which must outlive ssl's handshake): ssl runs in async mode. 0 or
 * -ENOMEM. */
int kg_ocsp_attach(SSL *ssl, struct kg_ocsp_wait *wait);
/* The handshake is over: back to plain calls for SSL_read/SSL_write. */
void kg_ocsp_handshake_done(SSL *ssl);
/* The connection is going: its wait leaves its query; a handshake paused
 * in its async job is resumed to a refusal so that OpenSSL frees the job
 * (a paused job cannot be freed otherwise). Call before SSL_free. */
void kg_ocsp_abandon(SSL *ssl, struct kg_ocsp_wait *wait);

/* From tls.c's verify callback, at depth 0 once the chain has verified:
 * the client certificate's OCSP check. Returns 1 to let it in (good, or
 * soft mode without an answer) and 0 to refuse it with the verify error
 * set on xs (X509_V_ERR_CERT_REVOKED, X509_V_ERR_OCSP_CERT_UNKNOWN,
 * X509_V_ERR_OCSP_VERIFY_FAILED) and a reason in why. Returns 1 at once
 * when ssl has no wait attached (ocsp off). May pause the async job. */
int kg_ocsp_check(X509_STORE_CTX *xs, SSL *ssl, X509 *cert, char *why, size_t whylen);

#endif
