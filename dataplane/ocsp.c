/* OCSP checks of client certificates on the worker's ring (ocsp.h). */
#include "ocsp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>
#include <openssl/async.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#include <kgate/log.h>

#include "clock.h"
#include "counters.h"

/* A query's steps; PH_DONE: decided, waiting for its last completions
 * before the slot is reused. */
enum phase { PH_FREE, PH_CONNECT, PH_SEND, PH_RECV, PH_DONE };

struct kg_ocsp_query {
	enum phase phase;
	unsigned inflight;
	unsigned char id_der[KG_OCSP_ID_MAX];
	size_t id_len;
	OCSP_CERTID *id;
	X509 *issuer;        /* signs the certificate; may sign the answer */
	X509_STORE *store;   /* the listener's trust store: verifies the answer's signer */
	struct kg_ocsp_target target;
	int fd;
	uint64_t started_ms, deadline_ms;
	struct __kernel_timespec link_ts; /* read by the kernel at submit */
	unsigned char *req;  /* HTTP request head and DER body */
	size_t req_len, req_off;
	unsigned char *resp;
	size_t resp_len;
	struct kg_ocsp_wait *waiters;
};

struct kg_ocsp {
	struct kg_ocsp_host h;  /* the worker's ring, clock and counters */
	struct kg_ocsp_cache cache;
	struct kg_ocsp_query q[KG_OCSP_QUERIES_MAX];
};

static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static int wait_idx = -1; /* SSL ex_data: the connection's kg_ocsp_wait */

static void idx_init(void)
{
	wait_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* ---------------------------------------------------------- life cycle */

/* Counted in the worker's own counters (counters.h). */
#define ocsp_count(o, field) kg_count_add(&(o)->h.stats->field, 1)
#define ocsp_now(o) (*(o)->h.now_ms)
/* kg_worker_warn's level test and rate limit, through the host. */
static bool ocsp_warn_allowed(const struct kg_ocsp *o)
{
	return KG_LOG_WARN <= kg_log_level && o->h.warn_allowed(o->h.worker);
}

struct kg_ocsp *kg_ocsp_create(const struct kg_ocsp_host *h)
{
	if (pthread_once(&idx_once, idx_init) != 0 || wait_idx < 0)
		return NULL;
	struct kg_ocsp *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->h = *h;
	if (kg_ocsp_cache_init(&o->cache, KG_OCSP_CACHE_ENTRIES) < 0) {
		free(o);
		return NULL;
	}
	for (size_t i = 0; i < KG_OCSP_QUERIES_MAX; i++)
		o->q[i].fd = -1;
	return o;
}

static void query_clear(struct kg_ocsp_query *q)
{
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
	OCSP_CERTID_free(q->id);
	q->id = NULL;
	X509_free(q->issuer);
	q->issuer = NULL;
	X509_STORE_free(q->store);
	q->store = NULL;
	free(q->req);
	q->req = NULL;
	free(q->resp);
	q->resp = NULL;
}

void kg_ocsp_destroy(struct kg_ocsp *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < KG_OCSP_QUERIES_MAX; i++)
		query_clear(&o->q[i]);
	kg_ocsp_cache_destroy(&o->cache);
	free(o);
}

bool kg_ocsp_idle(const struct kg_ocsp *o)
{
	for (size_t i = 0; o && i < KG_OCSP_QUERIES_MAX; i++)
		if (o->q[i].inflight > 0)
			return false;
	return true;
}

void kg_ocsp_cancel_all(struct kg_ocsp *o)
{
	for (size_t i = 0; o && i < KG_OCSP_QUERIES_MAX; i++) {
		struct kg_ocsp_query *q = &o->q[i];
		if (q->phase == PH_FREE || q->phase == PH_DONE || q->fd < 0)
			continue;
		struct io_uring_sqe *sqe = o->h.sqe(o->h.worker);
		io_uring_prep_cancel_fd(sqe, q->fd, IORING_ASYNC_CANCEL_ALL);
		io_uring_sqe_set_data64(sqe, o->h.user_data(KG_OCSP_OP_CANCEL, (uint32_t)i, -1));
	}
}

int kg_ocsp_attach(SSL *ssl, struct kg_ocsp_wait *wait)
{
	if (pthread_once(&idx_once, idx_init) != 0 || wait_idx < 0 ||
	    SSL_set_ex_data(ssl, wait_idx, wait) != 1)
		return -ENOMEM;
	SSL_set_mode(ssl, SSL_MODE_ASYNC);
	return 0;
}

void kg_ocsp_handshake_done(SSL *ssl)
{
	SSL_clear_mode(ssl, SSL_MODE_ASYNC);
}

static void wait_leave(struct kg_ocsp_wait *wait)
{
	struct kg_ocsp_query *q = wait->q;
	if (!q)
		return;
	for (struct kg_ocsp_wait **p = &q->waiters; *p; p = &(*p)->next)
		if (*p == wait) {
			*p = wait->next;
			break;
		}
	wait->q = NULL;
	wait->next = NULL;
}

void kg_ocsp_abandon(SSL *ssl, struct kg_ocsp_wait *wait)
{
	if (!ssl || !wait)
		return;
	wait_leave(wait);
	if (SSL_waiting_for_async(ssl)) {
		wait->aborted = true;
		wait->done = true;
		/* The job returns from its pause, the check refuses, the
		 * handshake fails and OpenSSL frees the job. */
		(void)SSL_do_handshake(ssl);
		ERR_clear_error();
	}
}

/* ------------------------------------------------------------ answers */

/* Judges a complete HTTP response: 0 and *status (with *expires), or
 * -1 with why. */
static int judge(struct kg_ocsp_query *q, enum kg_ocsp_status *status, time_t *expires,
		 char *why, size_t whylen)
{
	const unsigned char *p = q->resp, *end = q->resp + q->resp_len;
	/* "HTTP/1.x 200 ..." then headers, then the DER body. */
	if (q->resp_len < 12 || memcmp(p, "HTTP/1.", 7) != 0) {
		snprintf(why, whylen, "not an HTTP response");
		return -1;
	}
	if (memcmp(p + 8, " 200", 4) != 0) {
		snprintf(why, whylen, "HTTP status %.3s", (const char *)p + 9);
		return -1;
	}
	const unsigned char *body = memmem(p, q->resp_len, "\r\n\r\n", 4);
	if (!body || body + 4 == end) {
		snprintf(why, whylen, "HTTP response without a body");
		return -1;
	}
	body += 4;
	STACK_OF(X509) *chain = sk_X509_new_null();
	time_t this_update = 0, next_update = 0;
	if (!chain || sk_X509_push(chain, q->issuer) <= 0) {
		sk_X509_free(chain);
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	int r = kg_ocsp_response_check(body, (size_t)(end - body), q->id, chain, q->store, 0,
				       status, &this_update, &next_update, why, whylen);
	sk_X509_free(chain); /* the issuer stays the query's */
	*expires = next_update ? next_update : time(NULL) + KG_OCSP_DEFAULT_MAX_AGE_S;
	return r;
}

/* The query's outcome to every handshake waiting for it; the slot is
 * reused once its last completion is in. */
static void finish(struct kg_ocsp *o, struct kg_ocsp_query *q, bool failed,
		   enum kg_ocsp_status status, const char *why)
{
	uint64_t took = ocsp_now(o) - q->started_ms;
	if (took < 10)
		ocsp_count(o, ocsp_lat_10ms);
	else if (took < 100)
		ocsp_count(o, ocsp_lat_100ms);
	else if (took < 1000)
		ocsp_count(o, ocsp_lat_1s);
	else
		ocsp_count(o, ocsp_lat_more);
	if (failed && ocsp_warn_allowed(o))
		kg_log_always(KG_LOG_WARN, "ocsp.query_failed", KV("worker", o->h.id),
			      KV("responder", q->target.host), KV("reason", why));
	else if (!failed)
		log_debug("ocsp.answer", KV("worker", o->h.id), KV("responder", q->target.host),
			  KV("status", kg_ocsp_status_name(status)),
			  KV("ms", took));
	if (q->fd >= 0)
		close(q->fd);
	q->fd = -1;
	q->phase = PH_DONE;
	struct kg_ocsp_wait *list = q->waiters;
	q->waiters = NULL;
	while (list) {
		struct kg_ocsp_wait *wait = list;
		list = wait->next;
		wait->next = NULL;
		wait->q = NULL;
		wait->done = true;
		wait->failed = failed;
		wait->status = status;
		snprintf(wait->why, sizeof(wait->why), "%s", failed ? why : "");
		wait->resume(wait);
	}
	if (q->inflight == 0) {
		query_clear(q);
		q->phase = PH_FREE;
	}
}

static void arm_io(struct kg_ocsp *o, struct kg_ocsp_query *q)
{
	uint32_t idx = (uint32_t)(q - o->q);
	struct io_uring_sqe *sqe, *tsqe;
	enum kg_ocsp_op op;

	o->h.sqe_timed(o->h.worker, &sqe, &tsqe);
	switch (q->phase) {
	case PH_CONNECT:
		io_uring_prep_connect(sqe, q->fd, (const struct sockaddr *)&q->target.addr,
				      q->target.addr_len);
		op = KG_OCSP_OP_CONNECT;
		break;
	case PH_SEND:
		io_uring_prep_send(sqe, q->fd, q->req + q->req_off, q->req_len - q->req_off,
				   MSG_NOSIGNAL);
		op = KG_OCSP_OP_SEND;
		break;
	default:
		io_uring_prep_recv(sqe, q->fd, q->resp + q->resp_len,
				   KG_OCSP_RESPONSE_MAX - q->resp_len, 0);
		op = KG_OCSP_OP_RECV;
		break;
	}
	io_uring_sqe_set_data64(sqe, o->h.user_data(op, idx, q->fd));
	sqe->flags |= IOSQE_IO_LINK;
	uint64_t now = ocsp_now(o);
	uint64_t left = q->deadline_ms > now ? q->deadline_ms - now : 1;
	kg_ms_to_ts(left, &q->link_ts);
	io_uring_prep_link_timeout(tsqe, &q->link_ts, 0);
	io_uring_sqe_set_data64(tsqe, o->h.user_data(KG_OCSP_OP_LINK_TIMEOUT, idx, q->fd));
	q->inflight += 2;
}

/* The POST of RFC 6960 A.1.1: the DER request as the body. */
static int build_request(struct kg_ocsp_query *q)
{
	OCSP_REQUEST *req = OCSP_REQUEST_new();
	OCSP_CERTID *id = OCSP_CERTID_dup(q->id);
	unsigned char *der = NULL;
	int der_len = -1;
	if (req && id && OCSP_request_add0_id(req, id))
		id = NULL; /* the request owns it */
	if (req && !id)
		der_len = i2d_OCSP_REQUEST(req, &der);
	OCSP_CERTID_free(id);
	OCSP_REQUEST_free(req);
	if (der_len <= 0)
		return -ENOMEM;
	char head[2 * KG_OCSP_URL_MAX + 160];
	int hl = snprintf(head, sizeof(head),
			  "POST %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/ocsp-request\r\n"
			  "Content-Length: %d\r\nConnection: close\r\n\r\n",
			  q->target.path, q->target.host, der_len);
	q->req = hl > 0 && (size_t)hl < sizeof(head) ? malloc((size_t)hl + (size_t)der_len) : NULL;
	q->resp = q->req ? malloc(KG_OCSP_RESPONSE_MAX) : NULL;
	if (!q->req || !q->resp) {
		OPENSSL_free(der);
		return -ENOMEM;
	}
	memcpy(q->req, head, (size_t)hl);
	memcpy(q->req + hl, der, (size_t)der_len);
	OPENSSL_free(der);
	q->req_len = (size_t)hl + (size_t)der_len;
	return 0;
}

/* A free slot set up for id, the connect submitted; NULL with why when
 * none could be started. */
static struct kg_ocsp_query *query_start(struct kg_ocsp *o, const unsigned char *der,
					 size_t der_len, OCSP_CERTID *id, X509 *issuer,
					 X509_STORE *store, const struct kg_ocsp_target *t,
					 unsigned timeout_ms, char *why, size_t whylen)
{
	struct kg_ocsp_query *q = NULL;
	for (size_t i = 0; i < KG_OCSP_QUERIES_MAX && !q; i++)
		if (o->q[i].phase == PH_FREE)
			q = &o->q[i];
	if (!q) {
		snprintf(why, whylen, "too many OCSP queries at once (%d)", KG_OCSP_QUERIES_MAX);
		return NULL;
	}
	memcpy(q->id_der, der, der_len);
	q->id_len = der_len;
	q->target = *t;
	q->resp_len = 0;
	q->req_off = 0;
	q->id = OCSP_CERTID_dup(id);
	if (!q->id || X509_up_ref(issuer) != 1) {
		query_clear(q);
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	q->issuer = issuer;
	if (X509_STORE_up_ref(store) != 1) {
		query_clear(q);
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	q->store = store;
	if (build_request(q) < 0) {
		query_clear(q);
		snprintf(why, whylen, "cannot build the OCSP request");
		return NULL;
	}
	q->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (q->fd == -1) {
		snprintf(why, whylen, "socket: %s", strerror(errno));
		query_clear(q);
		return NULL;
	}
	ocsp_count(o, ocsp_queries);
	q->started_ms = ocsp_now(o);
	q->deadline_ms = q->started_ms + timeout_ms;
	q->phase = PH_CONNECT;
	arm_io(o, q);
	return q;
}

static void io_failed(struct kg_ocsp *o, struct kg_ocsp_query *q, const char *what, int res)
{
	char why[128];
	if (res == -ECANCELED) {
		ocsp_count(o, ocsp_query_timeouts);
		snprintf(why, sizeof(why), "%s: timeout after %llu ms", what,
			 (unsigned long long)(q->deadline_ms - q->started_ms));
	} else if (res == 0) {
		snprintf(why, sizeof(why), "%s: connection closed", what);
	} else {
		snprintf(why, sizeof(why), "%s: %s", what, strerror(-res));
	}
	finish(o, q, true, KG_OCSP_UNKNOWN, why);
}

static void on_response(struct kg_ocsp *o, struct kg_ocsp_query *q)
{
	char why[128] = "";
	enum kg_ocsp_status status = KG_OCSP_UNKNOWN;
	time_t expires = 0;
	if (judge(q, &status, &expires, why, sizeof(why)) < 0) {
		finish(o, q, true, status, why);
		return;
	}
	/* An answer already past its nextUpdate was refused above; one
	 * that the cache cannot hold is still this handshake's answer. */
	(void)kg_ocsp_cache_put(&o->cache, q->id_der, q->id_len, status, expires, time(NULL));
	finish(o, q, false, status, NULL);
}

/* Whether the response holds its head and a body of its Content-Length
 * (case-insensitive name); without one the body ends at EOF. */
static bool response_complete(const struct kg_ocsp_query *q)
{
	const char *p = (const char *)q->resp;
	size_t n = q->resp_len;
	const char *end = memmem(p, n, "\r\n\r\n", 4);
	if (!end)
		return false;
	size_t head = (size_t)(end - p) + 4;
	static const char name[] = "\r\ncontent-length:";
	for (size_t i = 0; i + sizeof(name) - 1 < head; i++) {
		if (strncasecmp(p + i, name, sizeof(name) - 1) != 0)
			continue;
		unsigned long len = strtoul(p + i + sizeof(name) - 1, NULL, 10);
		return n - head >= len;
	}
	return false;
}

void kg_ocsp_on_cqe(struct kg_ocsp *o, enum kg_ocsp_op op, uint32_t idx, int res)
{
	if (idx >= KG_OCSP_QUERIES_MAX) {
		log_err("ocsp.bad_completion", KV("worker", o->h.id), KV("query", idx));
		return;
	}
	struct kg_ocsp_query *q = &o->q[idx];
	q->inflight--;
	if (op == KG_OCSP_OP_LINK_TIMEOUT || q->phase == PH_DONE) {
		if (q->phase == PH_DONE && q->inflight == 0) {
			query_clear(q);
			q->phase = PH_FREE;
		}
		return;
	}
	switch (op) {
	case KG_OCSP_OP_CONNECT:
		if (res < 0) {
			io_failed(o, q, "connect", res);
			return;
		}
		q->phase = PH_SEND;
		arm_io(o, q);
		return;
	case KG_OCSP_OP_SEND:
		if (res <= 0) {
			io_failed(o, q, "send", res);
			return;
		}
		q->req_off += (size_t)res;
		if (q->req_off >= q->req_len)
			q->phase = PH_RECV;
		arm_io(o, q);
		return;
	case KG_OCSP_OP_RECV:
		if (res < 0) {
			io_failed(o, q, "receive", res);
			return;
		}
		q->resp_len += (size_t)res;
		if (res > 0 && response_complete(q)) {
			on_response(o, q); /* Content-Length reached: responders may keep the
					    * connection open */
			return;
		}
		if (res > 0 && q->resp_len < KG_OCSP_RESPONSE_MAX) {
			arm_io(o, q);
			return;
		}
		if (res > 0) {
			char why[64];
			snprintf(why, sizeof(why), "response larger than %d bytes",
				 KG_OCSP_RESPONSE_MAX);
			finish(o, q, true, KG_OCSP_UNKNOWN, why);
			return;
		}
		on_response(o, q); /* the responder closed: the answer is whole */
		return;
	default:
		log_err("ocsp.unknown_op", KV("worker", o->h.id), KV("op", (int)op));
	}
}

/* -------------------------------------------------------------- check */

/* The responder: the listener's ocsp_url, else the first http:// URL of
 * the certificate's Authority Information Access. */
static int responder(const struct kg_ocsp_wait *wait, X509 *cert, struct kg_ocsp_target *t,
		     char *why, size_t whylen)
{
	char err[160];
	if (wait->url) {
		if (kg_ocsp_url_parse(wait->url, t, err, sizeof(err)) == 0)
			return 0;
		snprintf(why, whylen, "ocsp_url %.100s", err);
		return -1;
	}
	STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(cert);
	int r = -1;
	snprintf(why, whylen, "the certificate names no OCSP responder and the listener has "
			      "no ocsp_url");
	for (int i = 0; urls && i < sk_OPENSSL_STRING_num(urls) && r < 0; i++) {
		const char *u = sk_OPENSSL_STRING_value(urls, i);
		if (kg_ocsp_url_parse(u, t, err, sizeof(err)) == 0)
			r = 0;
		else
			snprintf(why, whylen, "AIA OCSP URL %.90s", err);
	}
	X509_email_free(urls);
	return r;
}

/* The outcome of wait, as the verify callback's verdict. */
static int decide(X509_STORE_CTX *xs, struct kg_ocsp_wait *wait, char *why, size_t whylen)
{
	struct kg_ocsp *o = wait->o;
	bool hard = wait->mode == KG_OCSP_HARD;
	if (wait->aborted) {
		X509_STORE_CTX_set_error(xs, X509_V_ERR_OCSP_VERIFY_FAILED);
		snprintf(why, whylen, "OCSP check abandoned (connection closing)");
		return 0;
	}
	if (wait->failed) {
		ocsp_count(o, ocsp_error);
		if (!hard) {
			ocsp_count(o, ocsp_soft_allowed);
			wait->soft_allowed = true;
			return 1;
		}
		X509_STORE_CTX_set_error(xs, X509_V_ERR_OCSP_VERIFY_FAILED);
		snprintf(why, whylen, "OCSP: no answer (%s), ocsp hard", wait->why);
		return 0;
	}
	switch (wait->status) {
	case KG_OCSP_GOOD:
		ocsp_count(o, ocsp_good);
		return 1;
	case KG_OCSP_REVOKED:
		ocsp_count(o, ocsp_revoked);
		X509_STORE_CTX_set_error(xs, X509_V_ERR_CERT_REVOKED);
		snprintf(why, whylen, "OCSP: revoked");
		return 0;
	default:
		ocsp_count(o, ocsp_unknown);
		if (!hard) {
			ocsp_count(o, ocsp_soft_allowed);
			snprintf(wait->why, sizeof(wait->why), "responder does not know the certificate");
			wait->soft_allowed = true;
			return 1;
		}
		X509_STORE_CTX_set_error(xs, X509_V_ERR_OCSP_CERT_UNKNOWN);
		snprintf(why, whylen, "OCSP: the responder does not know the certificate, ocsp hard");
		return 0;
	}
}

static void fail_wait(struct kg_ocsp_wait *wait, const char *why)
{
	wait->done = true;
	wait->failed = true;
	snprintf(wait->why, sizeof(wait->why), "%s", why);
}

int kg_ocsp_check(X509_STORE_CTX *xs, SSL *ssl, X509 *cert, char *why, size_t whylen)
{
	struct kg_ocsp_wait *wait = wait_idx >= 0 && ssl ? SSL_get_ex_data(ssl, wait_idx) : NULL;
	if (!wait || wait->mode == KG_OCSP_OFF)
		return 1;
	if (wait->done)
		return decide(xs, wait, why, whylen); /* a retried verification */

	char err[128];
	STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(xs);
	X509 *issuer = chain && sk_X509_num(chain) > 1 ? sk_X509_value(chain, 1) : NULL;
	OCSP_CERTID *id = issuer ? OCSP_cert_to_id(NULL, cert, issuer) : NULL;
	unsigned char der[KG_OCSP_ID_MAX], *p = der;
	int der_len = id ? i2d_OCSP_CERTID(id, NULL) : -1;
	struct kg_ocsp *o = wait->o;
	struct kg_ocsp_target t;

	if (der_len <= 0 || der_len > KG_OCSP_ID_MAX || i2d_OCSP_CERTID(id, &p) != der_len) {
		fail_wait(wait, "cannot make the certificate's OCSP id");
	} else if (kg_ocsp_cache_get(&o->cache, der, (size_t)der_len, time(NULL),
				     &wait->status)) {
		ocsp_count(o, ocsp_cache_hits);
		wait->done = true;
		wait->failed = false;
	} else if (responder(wait, cert, &t, err, sizeof(err)) < 0) {
		fail_wait(wait, err);
	} else if (!ASYNC_get_current_job()) {
		fail_wait(wait, "handshake not in async mode: cannot wait for the responder");
	} else {
		/* Join a query for the same certificate, or start one. */
		struct kg_ocsp_query *q = NULL;
		for (size_t i = 0; i < KG_OCSP_QUERIES_MAX && !q; i++)
			if (o->q[i].phase != PH_FREE && o->q[i].phase != PH_DONE &&
			    o->q[i].id_len == (size_t)der_len &&
			    memcmp(o->q[i].id_der, der, (size_t)der_len) == 0)
				q = &o->q[i];
		if (!q)
			q = query_start(o, der, (size_t)der_len, id, issuer,
					X509_STORE_CTX_get0_store(xs), &t, wait->timeout_ms, err,
					sizeof(err));
		if (!q) {
			fail_wait(wait, err);
		} else {
			wait->q = q;
			wait->next = q->waiters;
			q->waiters = wait;
		}
	}
	OCSP_CERTID_free(id);
	ERR_clear_error();
	/* Suspended here until the answer is in; a resume before it (the
	 * connection calls SSL_do_handshake for another reason) pauses
	 * again. */
	while (!wait->done) {
		if (ASYNC_pause_job() == 0) {
			wait_leave(wait);
			fail_wait(wait, "cannot pause the handshake");
		}
	}
	return decide(xs, wait, why, whylen);
}
