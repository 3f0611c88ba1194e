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

struct kg_worker;
struct kg_ocsp;
struct kg_ocsp_query;

/* Answers one worker caches, and queries it runs at once (more
 * certificates waiting at the same moment are checked as errors). */
#define KG_OCSP_CACHE_ENTRIES 1024
#define KG_OCSP_QUERIES_MAX 64
/* Largest response read; a real one is one or two KiB. */
#define KG_OCSP_RESPONSE_MAX (64 * 1024)
/* How long an answer without nextUpdate is trusted (RFC 6960 leaves it
 * to the client), and how far the responder's clock may be off. */
#define KG_OCSP_DEFAULT_MAX_AGE_S 3600
#define KG_OCSP_CLOCK_SKEW_S 300
#define KG_OCSP_URL_MAX 255

/* Where a responder URL points: http only (the answer is signed, RFC 6960
 * A.1), with an IP address or "localhost", because a worker must never
 * block in a DNS lookup. */
struct kg_ocsp_target {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char host[KG_OCSP_URL_MAX + 1]; /* for the Host header, as written */
	char path[KG_OCSP_URL_MAX + 1]; /* "/" when the URL has none */
};

/* Parses "http://ADDRESS[:PORT][/PATH]" (ADDRESS an IPv4 address, [IPv6]
 * or localhost). 0, or -EINVAL with the reason in err. Pure. */
int kg_ocsp_url_parse(const char *url, struct kg_ocsp_target *t, char *err, size_t errlen);

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

struct kg_ocsp *kg_ocsp_create(struct kg_worker *w);
/* Tolerates NULL; nothing may be in flight (kg_ocsp_idle). */
void kg_ocsp_destroy(struct kg_ocsp *o);
/* No query has an operation on the ring. */
bool kg_ocsp_idle(const struct kg_ocsp *o);
/* A completion of one of the KG_OP_OCSP_* operations. */
void kg_ocsp_on_cqe(struct kg_ocsp *o, int op, uint32_t idx, int res);

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

/* Checks an OCSP response (DER) about id: successful, signed by the
 * issuer or its delegated responder (OCSP_basic_verify with certs, store
 * and flags), within thisUpdate..nextUpdate with KG_OCSP_CLOCK_SKEW_S.
 * 0 with the status and the window (next_update 0: none), or -1 with
 * why. */
int kg_ocsp_response_check(const unsigned char *der, size_t len, OCSP_CERTID *id,
			   STACK_OF(X509) *certs, X509_STORE *store, unsigned long flags,
			   enum kg_ocsp_status *status, time_t *this_update, time_t *next_update,
			   char *why, size_t whylen);

/* The names of the outcomes counted and logged ("good", "revoked",
 * "unknown"). */
const char *kg_ocsp_status_name(enum kg_ocsp_status s);

#endif
