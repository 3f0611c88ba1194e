/* A client of etcd's v3 JSON gateway (POST /v3/kv/range, /v3/kv/txn,
 * /v3/lease/..., /v3/watch on the client URL; etcd 3.4 as in Debian 12),
 * for kgated and kgatectl's store mode (DESIGN.md, "Beyond one machine").
 * libcurl carries HTTP(S) and json-c the JSON, so this module only builds
 * requests and reads replies; keys and values are base64 on the wire
 * (b64.h) and plain bytes in this API.
 *
 * Errors: operations return 0 or -errno and write one line of text into the
 * caller's err buffer; constructors return NULL. Distinct codes callers act
 * on:
 *   -ECANCELED    a transaction's compare failed: the key changed since the
 *                 caller read it ("changed since you read it, retry");
 *   -ERANGE       a watch asked for a revision that etcd has compacted away:
 *                 read everything again (kg_etcd_range) and watch from there;
 *   -ENOENT       a lease that etcd no longer knows (expired or revoked);
 *   -ECONNREFUSED no endpoint answered (every one was tried);
 *   -ETIMEDOUT    the request timed out;
 *   -EBADMSG      a reply that is not what the gateway sends (not JSON, wrong
 *                 types, bad base64);
 *   -EIO          an HTTP or gateway error (the err text holds etcd's words).
 *
 * Threads: one client may be used by one thread for unary calls while
 * another thread runs kg_etcd_watch on it: a watch uses its own connection
 * and reads only the client's fixed settings. */
#ifndef KGATE_ETCD_H
#define KGATE_ETCD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kg_etcd;

/* libcurl's global initialisation, once per process whichever thread asks
 * first (it must not race with itself): etcd clients, CRL downloads, the
 * OCSP stapler. 0, or -EIO with err. */
int kg_curl_init(char *err, size_t errlen);

struct kg_etcd_opts {
	/* "http://HOST:PORT" or "https://HOST:PORT", tried in order: a request
	 * that cannot reach one endpoint goes to the next, and the one that
	 * answered is tried first next time. */
	const char *const *endpoints;
	size_t n_endpoints;
	/* etcd's client-certificate TLS (--client-cert-auth): PEM files, or
	 * NULL. ca replaces the system trust store for https endpoints. */
	const char *cert;
	const char *key;
	const char *ca;
	/* Per request, connecting included; 0 means 5000. A watch uses it for
	 * the connect phase only: its stream stays open. */
	long timeout_ms;
};

/* Checks the endpoint list and the TLS files' presence; does not contact
 * etcd. NULL with err on failure. */
struct kg_etcd *kg_etcd_create(const struct kg_etcd_opts *o, char *err, size_t errlen);
/* Tolerates NULL. No watch may be running on c. */
void kg_etcd_destroy(struct kg_etcd *c);

/* The endpoint that answered last (for messages and status output). */
const char *kg_etcd_endpoint(const struct kg_etcd *c);

struct kg_etcd_kv {
	char *key; /* NUL-terminated; key_len excludes the NUL */
	size_t key_len;
	unsigned char *value; /* NUL-terminated for text values; may hold NULs */
	size_t value_len;
	int64_t create_revision;
	int64_t mod_revision;
	int64_t lease; /* 0: none */
};

struct kg_etcd_range {
	struct kg_etcd_kv *kvs; /* sorted by key (etcd's order) */
	size_t n;
	int64_t revision; /* the store's revision when it was read */
};

/* Reads one key (prefix false) or every key that starts with key (prefix
 * true). A missing key is not an error: out->n is 0. out must be released
 * with kg_etcd_range_free, also after a failure. */
int kg_etcd_range(struct kg_etcd *c, const char *key, bool prefix, struct kg_etcd_range *out,
		  char *err, size_t errlen);
void kg_etcd_range_free(struct kg_etcd_range *r);

enum kg_etcd_op_type {
	KG_ETCD_OP_PUT,
	KG_ETCD_OP_DELETE, /* one key */
};

struct kg_etcd_op {
	enum kg_etcd_op_type type;
	const char *key;
	const void *value; /* put only */
	size_t value_len;
	int64_t lease; /* put only; 0: none */
};

/* Compare-and-swap: applies ops, all or none, only if compare_key's
 * mod_revision equals expect (0: the key must not exist). *revision (may be
 * NULL) gets the store's revision after the transaction. Returns -ECANCELED
 * when the compare failed, with nothing written. */
int kg_etcd_txn(struct kg_etcd *c, const char *compare_key, int64_t expect,
		const struct kg_etcd_op *ops, size_t n_ops, int64_t *revision, char *err,
		size_t errlen);

/* An unconditional put (lease 0: none). */
int kg_etcd_put(struct kg_etcd *c, const char *key, const void *value, size_t len,
		int64_t lease, int64_t *revision, char *err, size_t errlen);

/* Grants a lease of ttl_s seconds; *id gets its id. */
int kg_etcd_lease_grant(struct kg_etcd *c, int64_t ttl_s, int64_t *id, char *err,
			size_t errlen);
/* One keep-alive: renews the lease to its full TTL, which goes into *ttl_s
 * (may be NULL). -ENOENT when the lease has expired: its keys are gone, so
 * the caller must grant a new one and put them again. */
int kg_etcd_lease_keepalive(struct kg_etcd *c, int64_t id, int64_t *ttl_s, char *err,
			    size_t errlen);
/* Ends a lease now and deletes its keys (a clean stop). */
int kg_etcd_lease_revoke(struct kg_etcd *c, int64_t id, char *err, size_t errlen);

enum kg_etcd_event_type {
	KG_ETCD_EV_CREATED, /* the watch is in place; only revision is set */
	KG_ETCD_EV_PUT,
	KG_ETCD_EV_DELETE, /* kv.value is empty */
};

struct kg_etcd_event {
	enum kg_etcd_event_type type;
	struct kg_etcd_kv kv; /* valid during the callback only */
	int64_t revision;     /* the header revision of the message */
};

/* Called for each event in the order etcd sent them, on the watching
 * thread. Returns 0 to go on, or a -errno that ends the watch and is what
 * kg_etcd_watch returns. */
typedef int (*kg_etcd_watch_fn)(void *arg, const struct kg_etcd_event *ev);

struct kg_etcd_watch_req {
	const char *prefix;
	int64_t start_revision; /* 0: from now */
	kg_etcd_watch_fn fn;
	void *arg;
	/* Set by any thread to end the watch; seen within about 100 ms. */
	const atomic_bool *stop;
	/* 0, or a kg_now_ms() time at which the watch ends (-ETIME): for a
	 * caller that has work due then, such as a ticket-key rotation. */
	uint64_t until_ms;
};

/* Watches every key under req->prefix and blocks until the watch ends:
 *   0          *req->stop was set;
 *   -ERANGE    start_revision is compacted; *compact_revision (may be NULL)
 *              gets the oldest revision still kept;
 *   -EPIPE     etcd ended the stream or canceled the watch (watch again from
 *              the last revision seen + 1);
 *   -ETIME     req->until_ms has come (watch again when done);
 *   fn's -errno, or an error as for any request. */
int kg_etcd_watch(struct kg_etcd *c, const struct kg_etcd_watch_req *req,
		  int64_t *compact_revision, char *err, size_t errlen);

/* The watch stream's parser, apart so that tests feed it canned replies:
 * JSON objects one after another, cut anywhere by the transport. */
struct kg_etcd_stream;

struct kg_etcd_stream *kg_etcd_stream_create(kg_etcd_watch_fn fn, void *arg);
void kg_etcd_stream_destroy(struct kg_etcd_stream *s);
/* Parses len more bytes and calls fn for each complete message's events.
 * Returns 0 (more wanted), -ERANGE (compacted: see
 * kg_etcd_stream_compact_revision), -EPIPE (canceled), -EBADMSG, -EIO (a
 * gateway error object), or fn's -errno; after a non-zero return the
 * stream is finished and further feeds return the same value. */
int kg_etcd_stream_feed(struct kg_etcd_stream *s, const char *data, size_t len, char *err,
			size_t errlen);
int64_t kg_etcd_stream_compact_revision(const struct kg_etcd_stream *s);

#endif
