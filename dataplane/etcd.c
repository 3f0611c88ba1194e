/* etcd's v3 JSON gateway over libcurl (etcd.h). Requests are JSON objects
 * built with json-c; replies are parsed into json-c objects and read with
 * strict type checks, because a reply is input from the network like any
 * other. */
#include "etcd.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "b64.h"
#include "clock.h"

/* A reply or one stream message larger than this is refused rather than
 * buffered: etcd's own request limit is 1.5 MiB, and a whole prefix of
 * kgate's documents stays far below this. */
#define KG_ETCD_MAX_REPLY (64u << 20)
/* How often a watch looks at its stop flag while the stream is idle. */
#define KG_ETCD_STOP_POLL_MS 100

struct kg_etcd {
	char **endpoints;
	size_t n_endpoints;
	char *cert;
	char *key;
	char *ca;
	long timeout_ms;
	/* The endpoint to try first; written by unary calls and watches that
	 * may run on two threads. */
	atomic_size_t current;
	CURL *easy; /* unary calls: one handle keeps its connection alive */
	char curl_err[CURL_ERROR_SIZE]; /* easy's details (TLS alerts, ...) */
	struct curl_slist *headers;
};

static void errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* curl_global_init is not safe to race with itself on every libcurl
 * version: run it once, whichever thread creates the first client. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
	curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int kg_curl_init(char *err, size_t errlen)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_result == CURLE_OK)
		return 0;
	errf(err, errlen, "libcurl: %s", curl_easy_strerror(curl_init_result));
	return -EIO;
}

/* ---- small buffers ---- */

struct kg_buf {
	char *p;
	size_t len;
	size_t cap;
};

static int buf_add(struct kg_buf *b, const char *data, size_t len)
{
	if (len > KG_ETCD_MAX_REPLY - b->len)
		return -E2BIG;
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + len + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	b->p[b->len] = '\0';
	return 0;
}

static void buf_free(struct kg_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- client ---- */

static int check_endpoint(const char *ep, char *err, size_t errlen)
{
	const char *host = NULL;
	if (strncmp(ep, "http://", 7) == 0)
		host = ep + 7;
	else if (strncmp(ep, "https://", 8) == 0)
		host = ep + 8;
	if (!host || !*host || *host == '/' || strpbrk(host, "?# \t\r\n")) {
		errf(err, errlen,
		     "etcd endpoint \"%s\": expected http://HOST:PORT or https://HOST:PORT", ep);
		return -EINVAL;
	}
	return 0;
}

static int dup_opt(const char *s, char **out)
{
	*out = NULL;
	if (!s)
		return 0;
	*out = strdup(s);
	return *out ? 0 : -ENOMEM;
}

static int check_file(const char *what, const char *path, char *err, size_t errlen)
{
	if (path && access(path, R_OK) == -1) {
		errf(err, errlen, "etcd %s %s: %s", what, path, strerror(errno));
		return -errno;
	}
	return 0;
}

struct kg_etcd *kg_etcd_create(const struct kg_etcd_opts *o, char *err, size_t errlen)
{
	if (kg_curl_init(err, errlen) < 0)
		return NULL;
	if (!o->endpoints || o->n_endpoints == 0) {
		errf(err, errlen, "etcd: no endpoint given");
		return NULL;
	}
	for (size_t i = 0; i < o->n_endpoints; i++)
		if (check_endpoint(o->endpoints[i], err, errlen) < 0)
			return NULL;
	/* A certificate without its key (or the reverse) would make curl
	 * fail on every request with a less direct message. */
	if (!o->cert != !o->key) {
		errf(err, errlen,
		     "etcd client certificate and key go together: give both or neither");
		return NULL;
	}
	if (check_file("client certificate", o->cert, err, errlen) < 0 ||
	    check_file("client key", o->key, err, errlen) < 0 ||
	    check_file("CA", o->ca, err, errlen) < 0)
		return NULL;

	struct kg_etcd *c = calloc(1, sizeof(*c));
	if (!c)
		goto fail_oom;
	c->endpoints = calloc(o->n_endpoints, sizeof(*c->endpoints));
	if (!c->endpoints)
		goto fail_oom;
	c->n_endpoints = o->n_endpoints;
	for (size_t i = 0; i < o->n_endpoints; i++) {
		c->endpoints[i] = strdup(o->endpoints[i]);
		if (!c->endpoints[i])
			goto fail_oom;
		/* Paths are appended as "/v3/...". */
		size_t n = strlen(c->endpoints[i]);
		while (n > 0 && c->endpoints[i][n - 1] == '/')
			c->endpoints[i][--n] = '\0';
	}
	if (dup_opt(o->cert, &c->cert) < 0 || dup_opt(o->key, &c->key) < 0 ||
	    dup_opt(o->ca, &c->ca) < 0)
		goto fail_oom;
	c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 5000;
	atomic_init(&c->current, 0);
	c->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (!c->headers)
		goto fail_oom;
	c->easy = curl_easy_init();
	if (!c->easy)
		goto fail_oom;
	return c;

fail_oom:
	errf(err, errlen, "etcd client: out of memory");
	kg_etcd_destroy(c);
	return NULL;
}

void kg_etcd_destroy(struct kg_etcd *c)
{
	if (!c)
		return;
	if (c->easy)
		curl_easy_cleanup(c->easy);
	curl_slist_free_all(c->headers);
	for (size_t i = 0; c->endpoints && i < c->n_endpoints; i++)
		free(c->endpoints[i]);
	free(c->endpoints);
	free(c->cert);
	free(c->key);
	free(c->ca);
	free(c);
}

const char *kg_etcd_endpoint(const struct kg_etcd *c)
{
	return c->endpoints[atomic_load(&c->current) % c->n_endpoints];
}

/* ---- transport ---- */

#define SETOPT(h, opt, val)                                                  \
	do {                                                                 \
		if (curl_easy_setopt((h), (opt), (val)) != CURLE_OK)         \
			return -EINVAL;                                      \
	} while (0)

/* Settings shared by unary calls and watches. Redirects are not followed
 * and only http(s) is spoken: a reply cannot send the client elsewhere. */
static int setup_easy(const struct kg_etcd *c, CURL *h, const char *url, const char *body,
		      bool stream, char *curl_err)
{
	curl_easy_reset(h);
	curl_err[0] = '\0';
	/* libcurl's own words name the cause (an OpenSSL alert, a refused
	 * connect) where curl_easy_strerror only names the class. */
	SETOPT(h, CURLOPT_ERRORBUFFER, curl_err);
	SETOPT(h, CURLOPT_URL, url);
	SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
	/* HTTP/1.1 also over TLS: a watch is then one chunked response, as
	 * FACTS.md measured, and a refused client certificate reads as a TLS
	 * alert rather than an HTTP/2 framing error. */
	SETOPT(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	/* Signals are the daemon's; curl must not use SIGALRM for timeouts. */
	SETOPT(h, CURLOPT_NOSIGNAL, 1L);
	SETOPT(h, CURLOPT_HTTPHEADER, c->headers);
	SETOPT(h, CURLOPT_POSTFIELDS, body);
	SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms);
	/* A watch is open for as long as it runs; its stop flag bounds it. */
	SETOPT(h, CURLOPT_TIMEOUT_MS, stream ? 0L : c->timeout_ms);
	/* A watch can be idle for hours: keep-alive probes find a dead peer. */
	SETOPT(h, CURLOPT_TCP_KEEPALIVE, 1L);
	SETOPT(h, CURLOPT_TCP_KEEPIDLE, 30L);
	SETOPT(h, CURLOPT_TCP_KEEPINTVL, 10L);
	if (c->cert) {
		SETOPT(h, CURLOPT_SSLCERT, c->cert);
		SETOPT(h, CURLOPT_SSLKEY, c->key);
	}
	if (c->ca)
		SETOPT(h, CURLOPT_CAINFO, c->ca);
	/* etcd's certificates name the member's address: verify both. */
	SETOPT(h, CURLOPT_SSL_VERIFYPEER, 1L);
	SETOPT(h, CURLOPT_SSL_VERIFYHOST, 2L);
	return 0;
}

/* Nothing of the request went out: any request may go to the next
 * endpoint without being applied twice. */
static bool nothing_sent(CURLcode rc, CURL *h)
{
	switch (rc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
		return true;
	default:
		break;
	}
	curl_off_t pre = 0;
	/* 0: the transfer never reached the point of sending the request. */
	return curl_easy_getinfo(h, CURLINFO_PRETRANSFER_TIME_T, &pre) == CURLE_OK && pre == 0;
}

static int curl_errno(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct kg_buf *b = arg;
	/* A short count makes curl end the transfer with CURLE_WRITE_ERROR. */
	return buf_add(b, data, n) == 0 ? n : 0;
}

/* A failed transfer in words: the class (curl_easy_strerror) and, when
 * libcurl left one, its detail (an OpenSSL alert, a refused connect).
 * Returns buf. */
static const char *curl_why(CURLcode rc, const char *curl_err, char *buf, size_t len)
{
	if (curl_err[0])
		snprintf(buf, len, "%s: %s", curl_easy_strerror(rc), curl_err);
	else
		snprintf(buf, len, "%s", curl_easy_strerror(rc));
	return buf;
}

/* gRPC status codes (the gateway's "code") that callers tell apart. */
static int grpc_errno(int64_t code)
{
	switch (code) {
	case 4: /* DEADLINE_EXCEEDED */
		return -ETIMEDOUT;
	case 5: /* NOT_FOUND: a lease */
		return -ENOENT;
	case 11: /* OUT_OF_RANGE: a compacted revision */
		return -ERANGE;
	default:
		return -EIO;
	}
}

/* The gateway's error object: {"error": "...", "message": "...", "code":
 * N}, or, in a stream, {"error": {"grpc_code": N, "message": "..."}}.
 * Returns 0 when obj is not one. LeaseGrantResponse has an "error" string
 * of its own, empty when all is well: an empty one is not an error. */
static int gateway_error(json_object *obj, const char *what, char *err, size_t errlen)
{
	json_object *e;
	if (!json_object_is_type(obj, json_type_object) ||
	    !json_object_object_get_ex(obj, "error", &e))
		return 0;
	const char *msg = NULL;
	int64_t code = 0;
	json_object *m, *k;
	if (json_object_is_type(e, json_type_string)) {
		msg = json_object_get_string(e);
		if (!*msg)
			return 0;
		if (json_object_object_get_ex(obj, "code", &k) &&
		    json_object_is_type(k, json_type_int))
			code = json_object_get_int64(k);
	} else if (json_object_is_type(e, json_type_object)) {
		if (json_object_object_get_ex(e, "message", &m) &&
		    json_object_is_type(m, json_type_string))
			msg = json_object_get_string(m);
		if (json_object_object_get_ex(e, "grpc_code", &k) &&
		    json_object_is_type(k, json_type_int))
			code = json_object_get_int64(k);
	} else if (json_object_is_type(e, json_type_null)) {
		return 0;
	}
	errf(err, errlen, "%s: etcd error (gRPC code %" PRId64 "): %s", what, code,
	     msg ? msg : "(no message)");
	return grpc_errno(code);
}

/* POSTs body to path on the first endpoint that answers. idempotent
 * requests (reads) also move on after a failure in mid-request; others
 * only when nothing was sent, so a write is never applied twice. *reply
 * gets the parsed JSON object of a 200 reply without an error object. */
static int request(struct kg_etcd *c, const char *path, json_object *body, bool idempotent,
		   json_object **reply, char *err, size_t errlen)
{
	*reply = NULL;
	const char *text = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN);
	if (!text) {
		errf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	size_t start = atomic_load(&c->current);
	int r = -ECONNREFUSED;
	for (size_t i = 0; i < c->n_endpoints; i++) {
		size_t idx = (start + i) % c->n_endpoints;
		const char *ep = c->endpoints[idx];
		char url[1024];
		if ((size_t)snprintf(url, sizeof(url), "%s%s", ep, path) >= sizeof(url)) {
			errf(err, errlen, "etcd endpoint %s: URL too long", ep);
			return -ENAMETOOLONG;
		}
		struct kg_buf b = {0};
		if (setup_easy(c, c->easy, url, text, false, c->curl_err) < 0 ||
		    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
		    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, &b) != CURLE_OK) {
			errf(err, errlen, "%s: libcurl refused an option", url);
			return -EINVAL;
		}
		CURLcode rc = curl_easy_perform(c->easy);
		if (rc != CURLE_OK) {
			char why[CURL_ERROR_SIZE + 64];
			buf_free(&b);
			errf(err, errlen, "etcd %s%s: %s", ep, path,
			     curl_why(rc, c->curl_err, why, sizeof(why)));
			r = curl_errno(rc);
			if (idempotent || nothing_sent(rc, c->easy))
				continue;
			/* The write may or may not have happened: say so. */
			errf(err, errlen, "etcd %s%s: %s (the request may have been applied)", ep,
			     path, curl_why(rc, c->curl_err, why, sizeof(why)));
			return r;
		}
		atomic_store(&c->current, idx);
		long status = 0;
		if (curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
			status = 0;
		enum json_tokener_error je = json_tokener_success;
		json_object *obj = b.p ? json_tokener_parse_verbose(b.p, &je) : NULL;
		char what[1100];
		snprintf(what, sizeof(what), "etcd %s%s", ep, path);
		r = gateway_error(obj, what, err, errlen);
		if (r == 0 && status != 200) {
			errf(err, errlen, "%s: HTTP status %ld: %.200s", what, status,
			     b.p ? b.p : "");
			r = -EIO;
		} else if (r == 0 && !json_object_is_type(obj, json_type_object)) {
			errf(err, errlen, "%s: reply is not a JSON object%s%s", what,
			     je != json_tokener_success ? ": " : "",
			     je != json_tokener_success ? json_tokener_error_desc(je) : "");
			r = -EBADMSG;
		}
		buf_free(&b);
		if (r < 0) {
			json_object_put(obj);
			return r;
		}
		*reply = obj;
		return 0;
	}
	return r;
}

/* ---- reading replies ---- */

/* The gateway writes 64-bit integers as decimal strings (proto3 JSON) and
 * leaves out fields that are zero. Missing: *out = 0. */
static int get_i64(json_object *obj, const char *key, int64_t *out)
{
	*out = 0;
	json_object *v;
	if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null))
		return 0;
	if (json_object_is_type(v, json_type_int)) {
		errno = 0;
		int64_t x = json_object_get_int64(v);
		if (errno)
			return -EBADMSG;
		*out = x;
		return 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return -EBADMSG;
	const char *s = json_object_get_string(v);
	char *end;
	errno = 0;
	long long x = strtoll(s, &end, 10);
	if (!*s || *end || errno)
		return -EBADMSG;
	*out = x;
	return 0;
}

/* A base64 field; missing means empty (proto3 leaves out empty bytes). */
static int get_bytes(json_object *obj, const char *key, bool required, unsigned char **out,
		     size_t *len)
{
	*out = NULL;
	*len = 0;
	json_object *v;
	if (!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null)) {
		if (required)
			return -EBADMSG;
		return kg_b64_decode("", 0, out, len);
	}
	if (!json_object_is_type(v, json_type_string))
		return -EBADMSG;
	int r = kg_b64_decode(json_object_get_string(v), (size_t)json_object_get_string_len(v),
			      out, len);
	return r == -EINVAL ? -EBADMSG : r;
}

static void kv_clear(struct kg_etcd_kv *kv)
{
	free(kv->key);
	free(kv->value);
	memset(kv, 0, sizeof(*kv));
}

/* One mvccpb.KeyValue. */
static int parse_kv(json_object *obj, struct kg_etcd_kv *kv)
{
	memset(kv, 0, sizeof(*kv));
	if (!json_object_is_type(obj, json_type_object))
		return -EBADMSG;
	unsigned char *key;
	int r = get_bytes(obj, "key", true, &key, &kv->key_len);
	if (r < 0)
		return r;
	kv->key = (char *)key;
	if ((r = get_bytes(obj, "value", false, &kv->value, &kv->value_len)) < 0 ||
	    (r = get_i64(obj, "create_revision", &kv->create_revision)) < 0 ||
	    (r = get_i64(obj, "mod_revision", &kv->mod_revision)) < 0 ||
	    (r = get_i64(obj, "lease", &kv->lease)) < 0) {
		kv_clear(kv);
		return r;
	}
	return 0;
}

/* header.revision of a reply: required of every unary reply, so that a
 * JSON object from something that is not etcd is not taken for one. */
static int header_revision(json_object *obj, int64_t *rev)
{
	json_object *h;
	*rev = 0;
	if (!json_object_object_get_ex(obj, "header", &h) ||
	    !json_object_is_type(h, json_type_object))
		return -EBADMSG;
	return get_i64(h, "revision", rev);
}

static int bad_reply(const struct kg_etcd *c, const char *path, const char *why, char *err,
		     size_t errlen)
{
	errf(err, errlen, "etcd %s%s: malformed reply: %s", kg_etcd_endpoint(c), path, why);
	return -EBADMSG;
}

/* ---- building requests ---- */

/* Adds v (which may be NULL after a failed json_object_new_*) as
 * obj[name]; v is released on failure, so callers have nothing to undo. */
static int add_obj(json_object *obj, const char *name, json_object *v)
{
	if (!v)
		return -ENOMEM;
	if (json_object_object_add(obj, name, v) != 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return 0;
}

static int add_b64(json_object *obj, const char *name, const void *data, size_t len)
{
	char *s;
	int r = kg_b64_encode(data, len, &s);
	if (r < 0)
		return r;
	r = add_obj(obj, name, json_object_new_string(s));
	free(s);
	return r;
}

/* proto3 JSON's form of an int64: a decimal string. */
static int add_i64s(json_object *obj, const char *name, int64_t x)
{
	char s[32];
	snprintf(s, sizeof(s), "%" PRId64, x);
	return add_obj(obj, name, json_object_new_string(s));
}

/* "key" and, for a prefix, "range_end": the prefix with its last byte
 * that is not 0xff incremented and the rest cut, etcd's way of saying "all
 * keys that start with it". A prefix of only 0xff bytes (or an empty one)
 * has no such end: "\0" means "to the end of the key space". */
static int add_key_range(json_object *obj, const char *key, bool prefix)
{
	size_t len = strlen(key);
	/* etcd reads an empty key as "\0" only together with range_end. */
	int r = add_b64(obj, "key", len ? key : "", len ? len : 1);
	if (r < 0 || !prefix)
		return r;
	unsigned char *end = malloc(len + 1);
	if (!end)
		return -ENOMEM;
	memcpy(end, key, len);
	size_t n = len;
	while (n > 0 && end[n - 1] == 0xff)
		n--;
	if (n > 0) {
		end[n - 1]++;
		r = add_b64(obj, "range_end", end, n);
	} else {
		r = add_b64(obj, "range_end", "", 1);
	}
	free(end);
	return r;
}

/* ---- operations ---- */

/* A unary call: req (built by the caller; NULL when building it ran out
 * of memory) goes to path, and is released here. The reply must carry
 * header.revision, which goes into *rev (may be NULL); *reply (may be
 * NULL when the caller needs nothing else) gets the reply to release. */
static int call(struct kg_etcd *c, const char *path, json_object *req, bool idempotent,
		json_object **reply, int64_t *rev, char *err, size_t errlen)
{
	json_object *obj = NULL;
	int64_t r_rev = 0;
	if (reply)
		*reply = NULL;
	if (!req) {
		errf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	int r = request(c, path, req, idempotent, &obj, err, errlen);
	json_object_put(req);
	if (r < 0)
		return r;
	if (header_revision(obj, &r_rev) < 0) {
		json_object_put(obj);
		return bad_reply(c, path, "no header.revision", err, errlen);
	}
	if (rev)
		*rev = r_rev;
	if (reply)
		*reply = obj;
	else
		json_object_put(obj);
	return 0;
}

/* Releases obj and returns NULL when building it failed (r < 0). */
static json_object *built(json_object *obj, int r)
{
	if (r < 0) {
		json_object_put(obj);
		return NULL;
	}
	return obj;
}

void kg_etcd_range_free(struct kg_etcd_range *r)
{
	for (size_t i = 0; r->kvs && i < r->n; i++)
		kv_clear(&r->kvs[i]);
	free(r->kvs);
	r->kvs = NULL;
	r->n = 0;
}

int kg_etcd_range(struct kg_etcd *c, const char *key, bool prefix, struct kg_etcd_range *out,
		  char *err, size_t errlen)
{
	static const char path[] = "/v3/kv/range";
	memset(out, 0, sizeof(*out));
	if (!*key && !prefix) {
		errf(err, errlen, "%s: an empty key names nothing", path);
		return -EINVAL;
	}
	json_object *req = json_object_new_object(), *reply;
	req = built(req, req ? add_key_range(req, key, prefix) : -ENOMEM);
	int r = call(c, path, req, true, &reply, &out->revision, err, errlen);
	if (r < 0)
		return r;
	json_object *kvs;
	if (!json_object_object_get_ex(reply, "kvs", &kvs))
		goto put_reply; /* no key matched */
	if (!json_object_is_type(kvs, json_type_array)) {
		r = bad_reply(c, path, "kvs is not an array", err, errlen);
		goto put_reply;
	}
	size_t n = json_object_array_length(kvs);
	out->kvs = calloc(n ? n : 1, sizeof(*out->kvs));
	if (!out->kvs) {
		errf(err, errlen, "%s: out of memory", path);
		r = -ENOMEM;
		goto put_reply;
	}
	for (size_t i = 0; i < n; i++) {
		r = parse_kv(json_object_array_get_idx(kvs, i), &out->kvs[i]);
		if (r < 0) {
			if (r == -EBADMSG)
				bad_reply(c, path, "a key-value is not {key, value, revisions}",
					  err, errlen);
			else
				errf(err, errlen, "%s: out of memory", path);
			goto put_reply;
		}
		out->n = i + 1;
	}
put_reply:
	json_object_put(reply);
	if (r < 0)
		kg_etcd_range_free(out);
	return r;
}

/* One RequestOp of a transaction's success branch. */
static json_object *txn_op(const struct kg_etcd_op *op)
{
	json_object *wrap = json_object_new_object();
	json_object *inner = json_object_new_object();
	if (!wrap || !inner)
		goto put_both;
	if (add_b64(inner, "key", op->key, strlen(op->key)) < 0)
		goto put_both;
	if (op->type == KG_ETCD_OP_PUT) {
		if (add_b64(inner, "value", op->value ? op->value : "", op->value_len) < 0 ||
		    (op->lease && add_i64s(inner, "lease", op->lease) < 0))
			goto put_both;
	}
	if (add_obj(wrap, op->type == KG_ETCD_OP_PUT ? "request_put" : "request_delete_range",
		    inner) < 0)
		goto put_wrap; /* add_obj released inner */
	return wrap;
put_both:
	json_object_put(inner);
put_wrap:
	json_object_put(wrap);
	return NULL;
}

/* The request of kg_etcd_txn: compare mod_revision, then ops. */
static json_object *txn_request(const char *compare_key, int64_t expect,
				const struct kg_etcd_op *ops, size_t n_ops)
{
	json_object *req = json_object_new_object();
	json_object *cmp = json_object_new_object();
	json_object *cmps = json_object_new_array();
	json_object *succ = json_object_new_array();
	if (!req || !cmp || !cmps || !succ)
		goto put_all;
	if (add_b64(cmp, "key", compare_key, strlen(compare_key)) < 0 ||
	    add_obj(cmp, "target", json_object_new_string("MOD")) < 0 ||
	    add_obj(cmp, "result", json_object_new_string("EQUAL")) < 0 ||
	    add_i64s(cmp, "mod_revision", expect) < 0)
		goto put_all;
	if (json_object_array_add(cmps, cmp) != 0)
		goto put_all;
	cmp = NULL;
	for (size_t i = 0; i < n_ops; i++) {
		json_object *op = txn_op(&ops[i]);
		if (!op)
			goto put_all;
		if (json_object_array_add(succ, op) != 0) {
			json_object_put(op);
			goto put_all;
		}
	}
	if (add_obj(req, "compare", cmps) < 0) {
		cmps = NULL;
		goto put_all;
	}
	cmps = NULL;
	if (add_obj(req, "success", succ) < 0) {
		succ = NULL;
		goto put_all;
	}
	return req;
put_all:
	json_object_put(succ);
	json_object_put(cmps);
	json_object_put(cmp);
	json_object_put(req);
	return NULL;
}

int kg_etcd_txn(struct kg_etcd *c, const char *compare_key, int64_t expect,
		const struct kg_etcd_op *ops, size_t n_ops, int64_t *revision, char *err,
		size_t errlen)
{
	static const char path[] = "/v3/kv/txn";
	if (expect < 0) {
		errf(err, errlen, "%s: negative revision %" PRId64, path, expect);
		return -EINVAL;
	}
	json_object *reply, *ok = NULL;
	int64_t rev;
	int r = call(c, path, txn_request(compare_key, expect, ops, n_ops), false, &reply, &rev,
		     err, errlen);
	if (r < 0)
		return r;
	if (revision)
		*revision = rev;
	/* proto3 JSON leaves out false: no "succeeded" is a failed compare. */
	if (json_object_object_get_ex(reply, "succeeded", &ok) &&
	    !json_object_is_type(ok, json_type_boolean)) {
		r = bad_reply(c, path, "succeeded is not a boolean", err, errlen);
	} else if (!ok || !json_object_get_boolean(ok)) {
		errf(err, errlen,
		     "%s changed since it was read (expected revision %" PRId64
		     ", store now at %" PRId64 "): read it again and retry",
		     compare_key, expect, rev);
		r = -ECANCELED;
	}
	json_object_put(reply);
	return r;
}

int kg_etcd_put(struct kg_etcd *c, const char *key, const void *value, size_t len,
		int64_t lease, int64_t *revision, char *err, size_t errlen)
{
	json_object *req = json_object_new_object();
	int r = req ? add_b64(req, "key", key, strlen(key)) : -ENOMEM;
	if (r == 0)
		r = add_b64(req, "value", value ? value : "", len);
	if (r == 0 && lease)
		r = add_i64s(req, "lease", lease);
	return call(c, "/v3/kv/put", built(req, r), false, NULL, revision, err, errlen);
}

int kg_etcd_lease_grant(struct kg_etcd *c, int64_t ttl_s, int64_t *id, char *err,
			size_t errlen)
{
	static const char path[] = "/v3/lease/grant";
	*id = 0;
	if (ttl_s <= 0) {
		errf(err, errlen, "%s: TTL must be positive", path);
		return -EINVAL;
	}
	json_object *req = json_object_new_object(), *reply;
	req = built(req, req ? add_obj(req, "TTL", json_object_new_int64(ttl_s)) : -ENOMEM);
	int r = call(c, path, req, false, &reply, NULL, err, errlen);
	if (r < 0)
		return r;
	if (get_i64(reply, "ID", id) < 0 || *id == 0)
		r = bad_reply(c, path, "no lease ID", err, errlen);
	json_object_put(reply);
	return r;
}

int kg_etcd_lease_keepalive(struct kg_etcd *c, int64_t id, int64_t *ttl_s, char *err,
			    size_t errlen)
{
	static const char path[] = "/v3/lease/keepalive";
	json_object *req = json_object_new_object(), *reply = NULL;
	req = built(req, req ? add_i64s(req, "ID", id) : -ENOMEM);
	if (!req) {
		errf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	/* Renewing twice does no harm: the request is idempotent. */
	int r = request(c, path, req, true, &reply, err, errlen);
	json_object_put(req);
	if (r < 0)
		return r;
	/* keepalive is a stream in gRPC: the gateway wraps its one message. */
	json_object *res;
	int64_t ttl = 0, rev;
	if (!json_object_object_get_ex(reply, "result", &res) ||
	    !json_object_is_type(res, json_type_object) || header_revision(res, &rev) < 0 ||
	    get_i64(res, "TTL", &ttl) < 0) {
		r = bad_reply(c, path, "no result with header and TTL", err, errlen);
	} else if (ttl <= 0) {
		/* etcd answers an unknown lease with TTL 0 (left out), not an
		 * error. */
		errf(err, errlen, "etcd lease %" PRIx64 " has expired: its keys are gone",
		     (uint64_t)id);
		r = -ENOENT;
	} else if (ttl_s) {
		*ttl_s = ttl;
	}
	json_object_put(reply);
	return r;
}

int kg_etcd_lease_revoke(struct kg_etcd *c, int64_t id, char *err, size_t errlen)
{
	json_object *req = json_object_new_object();
	req = built(req, req ? add_i64s(req, "ID", id) : -ENOMEM);
	return call(c, "/v3/lease/revoke", req, false, NULL, NULL, err, errlen);
}

/* ---- the watch stream ---- */

struct kg_etcd_stream {
	json_tokener *tok;
	kg_etcd_watch_fn fn;
	void *arg;
	size_t pending; /* bytes of the message being parsed */
	int result;     /* non-zero: finished */
	int64_t compact_revision;
	char msg[256]; /* the text of result, repeated to later feeds */
};

struct kg_etcd_stream *kg_etcd_stream_create(kg_etcd_watch_fn fn, void *arg)
{
	struct kg_etcd_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->tok = json_tokener_new();
	if (!s->tok) {
		free(s);
		return NULL;
	}
	/* Strict: no single quotes, comments or bare words from a peer.
	 * Trailing characters: the next message follows in the same buffer
	 * (strict mode alone refuses anything after the first value). UTF-8:
	 * keys and values are base64, so anything else is not etcd's. */
	json_tokener_set_flags(s->tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
					       JSON_TOKENER_VALIDATE_UTF8);
	s->fn = fn;
	s->arg = arg;
	return s;
}

void kg_etcd_stream_destroy(struct kg_etcd_stream *s)
{
	if (!s)
		return;
	json_tokener_free(s->tok);
	free(s);
}

int64_t kg_etcd_stream_compact_revision(const struct kg_etcd_stream *s)
{
	return s->compact_revision;
}

static int stream_fail(struct kg_etcd_stream *s, int r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int stream_fail(struct kg_etcd_stream *s, int r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->msg, sizeof(s->msg), fmt, ap);
	va_end(ap);
	s->result = r;
	return r;
}

/* One event of a WatchResponse. */
static int stream_event(struct kg_etcd_stream *s, json_object *e, int64_t rev)
{
	json_object *t, *kv;
	struct kg_etcd_event ev = {.type = KG_ETCD_EV_PUT, .revision = rev};
	if (!json_object_is_type(e, json_type_object))
		return stream_fail(s, -EBADMSG, "watch: an event is not an object");
	/* PUT is the enum's zero: proto3 JSON leaves it out. */
	if (json_object_object_get_ex(e, "type", &t)) {
		const char *name = json_object_is_type(t, json_type_string)
					   ? json_object_get_string(t)
					   : "";
		if (strcmp(name, "DELETE") == 0)
			ev.type = KG_ETCD_EV_DELETE;
		else if (strcmp(name, "PUT") != 0)
			return stream_fail(s, -EBADMSG, "watch: unknown event type");
	}
	if (!json_object_object_get_ex(e, "kv", &kv))
		return stream_fail(s, -EBADMSG, "watch: an event without kv");
	int r = parse_kv(kv, &ev.kv);
	if (r < 0)
		return stream_fail(s, r, "watch: %s",
				   r == -EBADMSG ? "an event's kv is not {key, value, revisions}"
						 : "out of memory");
	r = s->fn(s->arg, &ev);
	kv_clear(&ev.kv);
	if (r < 0)
		return stream_fail(s, r, "watch: ended by its consumer: %s", strerror(-r));
	return 0;
}

/* One message: {"result": WatchResponse} or a gateway error object. */
static int stream_message(struct kg_etcd_stream *s, json_object *obj)
{
	if (!json_object_is_type(obj, json_type_object))
		return stream_fail(s, -EBADMSG, "watch: a message is not a JSON object");
	int r = gateway_error(obj, "watch", s->msg, sizeof(s->msg));
	if (r < 0) {
		s->result = r;
		return r;
	}
	json_object *res, *h, *x;
	if (!json_object_object_get_ex(obj, "result", &res) ||
	    !json_object_is_type(res, json_type_object))
		return stream_fail(s, -EBADMSG, "watch: a message without result");
	int64_t rev = 0;
	/* Every message has a header; a cancel's carries no revision. */
	if (!json_object_object_get_ex(res, "header", &h) ||
	    !json_object_is_type(h, json_type_object))
		return stream_fail(s, -EBADMSG, "watch: a message without header");
	if (get_i64(h, "revision", &rev) < 0)
		return stream_fail(s, -EBADMSG, "watch: header.revision is not a number");
	if (json_object_object_get_ex(res, "created", &x) && json_object_get_boolean(x)) {
		struct kg_etcd_event ev = {.type = KG_ETCD_EV_CREATED, .revision = rev};
		if ((r = s->fn(s->arg, &ev)) < 0)
			return stream_fail(s, r, "watch: ended by its consumer: %s",
					   strerror(-r));
	}
	if (json_object_object_get_ex(res, "events", &x)) {
		if (!json_object_is_type(x, json_type_array))
			return stream_fail(s, -EBADMSG, "watch: events is not an array");
		for (size_t i = 0; i < json_object_array_length(x); i++)
			if ((r = stream_event(s, json_object_array_get_idx(x, i), rev)) < 0)
				return r;
	}
	if (json_object_object_get_ex(res, "canceled", &x) && json_object_get_boolean(x)) {
		int64_t compact = 0;
		if (get_i64(res, "compact_revision", &compact) < 0)
			return stream_fail(s, -EBADMSG, "watch: compact_revision is not a number");
		if (compact > 0) {
			s->compact_revision = compact;
			return stream_fail(s, -ERANGE,
					   "watch: the revision asked for is compacted (oldest "
					   "kept: %" PRId64 "): read everything again",
					   compact);
		}
		json_object *why;
		const char *reason = json_object_object_get_ex(res, "cancel_reason", &why) &&
						     json_object_is_type(why, json_type_string)
					     ? json_object_get_string(why)
					     : "no reason given";
		return stream_fail(s, -EPIPE, "watch: canceled by etcd: %s", reason);
	}
	return 0;
}

int kg_etcd_stream_feed(struct kg_etcd_stream *s, const char *data, size_t len, char *err,
			size_t errlen)
{
	size_t off = 0;
	while (s->result == 0 && off < len) {
		/* json-c counts in int: hand it at most INT_MAX bytes at a time. */
		size_t chunk = len - off > INT_MAX ? INT_MAX : len - off;
		json_object *obj = json_tokener_parse_ex(s->tok, data + off, (int)chunk);
		enum json_tokener_error je = json_tokener_get_error(s->tok);
		if (je == json_tokener_continue) {
			/* The whole rest is part of a message still open. */
			s->pending += chunk;
			off += chunk;
			if (s->pending > KG_ETCD_MAX_REPLY)
				stream_fail(s, -E2BIG, "watch: a message larger than %u bytes",
					    KG_ETCD_MAX_REPLY);
			continue;
		}
		if (je != json_tokener_success) {
			stream_fail(s, -EBADMSG, "watch: not JSON: %s",
				    json_tokener_error_desc(je));
			break;
		}
		size_t used = json_tokener_get_parse_end(s->tok);
		/* Defensive: a parser that consumed nothing would loop forever. */
		if (used == 0)
			used = chunk;
		off += used;
		json_tokener_reset(s->tok);
		s->pending = 0;
		stream_message(s, obj);
		json_object_put(obj);
	}
	if (s->result)
		errf(err, errlen, "%s", s->msg);
	return s->result;
}

/* ---- watch ---- */

struct watch_io {
	CURL *h;
	struct kg_etcd_stream *s;
	struct kg_buf errbody; /* the body of a reply that is not a 200 */
	bool got_data;
};

static size_t on_watch_data(char *data, size_t size, size_t n, void *arg)
{
	struct watch_io *io = arg;
	long status = 0;
	io->got_data = true;
	if (curl_easy_getinfo(io->h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK || status != 200)
		return buf_add(&io->errbody, data, n) == 0 ? n : 0;
	/* A finished stream (error, compaction, cancel) ends the transfer. */
	return kg_etcd_stream_feed(io->s, data, n, NULL, 0) == 0 ? n : 0;
}

static json_object *watch_request(const struct kg_etcd_watch_req *req)
{
	json_object *wrap = json_object_new_object(), *create = json_object_new_object();
	if (!wrap || !create || add_key_range(create, req->prefix, true) < 0 ||
	    (req->start_revision > 0 &&
	     add_i64s(create, "start_revision", req->start_revision) < 0)) {
		json_object_put(create);
		json_object_put(wrap);
		return NULL;
	}
	if (add_obj(wrap, "create_request", create) < 0) {
		json_object_put(wrap);
		return NULL;
	}
	return wrap;
}

/* Runs the transfer on a multi handle so that the stop flag (and the
 * deadline, kg_now_ms() time or 0) is looked at every KG_ETCD_STOP_POLL_MS
 * however quiet the stream is. Returns 1 when stopped by the flag, 2 at
 * the deadline, 0 when the transfer ended (*rc says how), -errno when
 * libcurl's multi interface failed. */
static int watch_run(CURL *h, const atomic_bool *stop, uint64_t until_ms, CURLcode *rc)
{
	CURLM *m = curl_multi_init();
	if (!m)
		return -ENOMEM;
	int r = -EIO;
	if (curl_multi_add_handle(m, h) != CURLM_OK)
		goto cleanup_multi;
	for (;;) {
		int running = 0;
		if (curl_multi_perform(m, &running) != CURLM_OK)
			goto remove_handle;
		if (!running)
			break;
		if (stop && atomic_load(stop)) {
			r = 1;
			goto remove_handle;
		}
		if (until_ms && kg_now_ms() >= until_ms) {
			r = 2;
			goto remove_handle;
		}
		if (curl_multi_poll(m, NULL, 0, KG_ETCD_STOP_POLL_MS, NULL) != CURLM_OK)
			goto remove_handle;
	}
	*rc = CURLE_FAILED_INIT;
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(m, &left)))
		if (msg->msg == CURLMSG_DONE && msg->easy_handle == h)
			*rc = msg->data.result;
	r = stop && atomic_load(stop) ? 1 : 0;
remove_handle:
	curl_multi_remove_handle(m, h);
cleanup_multi:
	curl_multi_cleanup(m);
	return r;
}

int kg_etcd_watch(struct kg_etcd *c, const struct kg_etcd_watch_req *req,
		  int64_t *compact_revision, char *err, size_t errlen)
{
	static const char path[] = "/v3/watch";
	if (compact_revision)
		*compact_revision = 0;
	json_object *body = watch_request(req);
	const char *text = body ? json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN)
				: NULL;
	CURL *h = curl_easy_init();
	int r = -ENOMEM;
	if (!text || !h) {
		errf(err, errlen, "%s: out of memory", path);
		goto cleanup_easy;
	}
	/* Outlives the loop: h points at it until curl_easy_cleanup. */
	char curl_err[CURL_ERROR_SIZE] = "";
	size_t start = atomic_load(&c->current);
	r = -ECONNREFUSED;
	for (size_t i = 0; i < c->n_endpoints; i++) {
		size_t idx = (start + i) % c->n_endpoints;
		const char *ep = c->endpoints[idx];
		char url[1024];
		if ((size_t)snprintf(url, sizeof(url), "%s%s", ep, path) >= sizeof(url)) {
			errf(err, errlen, "etcd endpoint %s: URL too long", ep);
			r = -ENAMETOOLONG;
			goto cleanup_easy;
		}
		struct watch_io io = {.h = h, .s = kg_etcd_stream_create(req->fn, req->arg)};
		if (!io.s) {
			errf(err, errlen, "%s: out of memory", path);
			r = -ENOMEM;
			goto cleanup_easy;
		}
		CURLcode rc = CURLE_OK;
		int run = -EINVAL;
		if (setup_easy(c, h, url, text, true, curl_err) == 0 &&
		    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_watch_data) == CURLE_OK &&
		    curl_easy_setopt(h, CURLOPT_WRITEDATA, &io) == CURLE_OK)
			run = watch_run(h, req->stop, req->until_ms, &rc);
		long status = 0;
		if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
			status = 0;
		int sr = kg_etcd_stream_feed(io.s, "", 0, err, errlen);
		if (compact_revision)
			*compact_revision = kg_etcd_stream_compact_revision(io.s);
		kg_etcd_stream_destroy(io.s);
		if (run == 1) {
			r = 0; /* stopped */
		} else if (run == 2) {
			errf(err, errlen, "etcd %s%s: the watch reached its deadline", ep, path);
			r = -ETIME;
		} else if (run < 0) {
			errf(err, errlen, "%s: libcurl's multi interface failed", path);
			r = run;
		} else if (status != 0 && status != 200) {
			json_object *eo = io.errbody.p ? json_tokener_parse(io.errbody.p) : NULL;
			char what[1100];
			snprintf(what, sizeof(what), "etcd %s%s", ep, path);
			r = gateway_error(eo, what, err, errlen);
			if (r == 0) {
				errf(err, errlen, "%s: HTTP status %ld: %.200s", what, status,
				     io.errbody.p ? io.errbody.p : "");
				r = -EIO;
			}
			json_object_put(eo);
		} else if (sr != 0) {
			r = sr; /* the stream's end: its message is in err */
		} else if (rc == CURLE_OK) {
			errf(err, errlen, "etcd %s%s: the stream ended", ep, path);
			r = -EPIPE;
		} else {
			char why[CURL_ERROR_SIZE + 64];
			errf(err, errlen, "etcd %s%s: %s", ep, path,
			     curl_why(rc, curl_err, why, sizeof(why)));
			r = curl_errno(rc);
			bool next = !io.got_data;
			buf_free(&io.errbody);
			if (next)
				continue;
			if (r != -ETIMEDOUT && r != -ENOMEM)
				r = -EPIPE;
			goto cleanup_easy;
		}
		buf_free(&io.errbody);
		if (status == 200)
			atomic_store(&c->current, idx);
		goto cleanup_easy;
	}
cleanup_easy:
	if (h)
		curl_easy_cleanup(h);
	json_object_put(body);
	return r;
}
