/* The stapler: one thread fetching the OCSP responses of listeners'
 * server certificates, and the status callback that staples them
 * (staple.h). */
#include "staple.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#include <kgate/log.h>

#include "certs.h"
#include "etcd.h"
#include "fetch.h"
#include "ocsp_resp.h"

/* One server certificate and its responder, shared by every SSL_CTX that
 * staples it. Fields below lock are guarded by reg.lock. */
struct entry {
	struct entry *next;
	unsigned refs;             /* SSL_CTXs using it */
	unsigned char fp[32];      /* SHA-256 of the certificate */
	X509 *cert, *issuer;
	OCSP_CERTID *id;
	char url[256];
	char subject[128];
	/* lock */
	unsigned char *resp;       /* the DER stapled; NULL: none */
	size_t resp_len;
	enum kg_ocsp_status status;
	time_t expires;            /* nextUpdate (or fetch + default max age) */
	time_t refresh_at;
	bool fetching;
	char error[160];
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct entry *list;
	pthread_t thread;
	bool started, stop;
	atomic_ullong ok, failed;
} reg = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static int ctx_idx = -1; /* SSL_CTX ex_data: its entry, released with it */

time_t kg_staple_next_refresh(bool ok, time_t this_update, time_t next_update, time_t now)
{
	if (!ok)
		return now + KG_STAPLE_RETRY_S;
	if (next_update == 0)
		return now + KG_OCSP_DEFAULT_MAX_AGE_S / 2;
	time_t at = this_update + (next_update - this_update) / 2;
	/* Ahead of nextUpdate by a minute at least, never busier than that. */
	if (at > next_update - KG_STAPLE_MIN_REFRESH_S)
		at = next_update - KG_STAPLE_MIN_REFRESH_S;
	if (at < now + KG_STAPLE_MIN_REFRESH_S)
		at = now + KG_STAPLE_MIN_REFRESH_S;
	return at;
}

static void entry_free(struct entry *e)
{
	X509_free(e->cert);
	X509_free(e->issuer);
	OCSP_CERTID_free(e->id);
	free(e->resp);
	free(e);
}

/* Called with reg.lock held. */
static void entry_put_locked(struct entry *e)
{
	if (--e->refs > 0 || e->fetching)
		return; /* a fetch in progress frees it when done */
	for (struct entry **p = &reg.list; *p; p = &(*p)->next)
		if (*p == e) {
			*p = e->next;
			break;
		}
	entry_free(e);
}

static void ctx_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			void *argp)
{
	if (!ptr)
		return;
	pthread_mutex_lock(&reg.lock);
	entry_put_locked(ptr);
	pthread_mutex_unlock(&reg.lock);
}

static void idx_init(void)
{
	ctx_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_free_cb);
}

/* ------------------------------------------------------------ fetching */

/* POSTs the request for e (RFC 6960 A.1.1) and checks the answer. 0 with
 * the response in *der (malloc'd), or -1 with why. Runs without the lock:
 * e's cert, issuer, id and url never change. */
static int fetch(struct entry *e, unsigned char **der, size_t *der_len,
		 enum kg_ocsp_status *status, time_t *this_update, time_t *next_update,
		 char *why, size_t whylen)
{
	OCSP_REQUEST *req = OCSP_REQUEST_new();
	OCSP_CERTID *id = OCSP_CERTID_dup(e->id);
	unsigned char *reqder = NULL;
	int reqlen = -1, r = -1;
	unsigned char *body = NULL;
	size_t body_len = 0;
	STACK_OF(X509) *certs = sk_X509_new_null();
	X509_STORE *store = X509_STORE_new();

	if (req && id && OCSP_request_add0_id(req, id))
		id = NULL;
	if (req && !id)
		reqlen = i2d_OCSP_REQUEST(req, &reqder);
	if (reqlen <= 0 || !certs || !store || sk_X509_push(certs, e->issuer) <= 0 ||
	    X509_STORE_add_cert(store, e->issuer) != 1) {
		snprintf(why, whylen, "out of memory");
		goto out;
	}
	const struct kg_fetch_req fr = {.url = e->url, .protocols = "http",
					.timeout_ms = KG_STAPLE_TIMEOUT_S * 1000u,
					.max_bytes = KG_STAPLE_RESPONSE_MAX, .post = reqder,
					.post_len = (size_t)reqlen,
					.content_type = "application/ocsp-request"};
	if (kg_fetch(&fr, &body, &body_len, why, whylen) < 0)
		goto out;
	/* The issuer (given in certs, OCSP_TRUSTOTHER) or a responder it
	 * delegated to; the store holds the issuer as the one anchor, and
	 * PARTIAL_CHAIN lets an intermediate be that anchor. */
	X509_VERIFY_PARAM_set_flags(X509_STORE_get0_param(store), X509_V_FLAG_PARTIAL_CHAIN);
	if (kg_ocsp_response_check(body, body_len, e->id, certs, store, OCSP_TRUSTOTHER, status,
				   this_update, next_update, why, whylen) < 0)
		goto out;
	*der = body;
	*der_len = body_len;
	body = NULL;
	r = 0;
out:
	free(body);
	X509_STORE_free(store);
	sk_X509_free(certs);
	OPENSSL_free(reqder);
	OCSP_CERTID_free(id);
	OCSP_REQUEST_free(req);
	ERR_clear_error();
	return r;
}

/* Called with reg.lock held: the outcome of a fetch into e. */
static void apply(struct entry *e, int r, unsigned char *der, size_t der_len,
		  enum kg_ocsp_status status, time_t this_update, time_t next_update,
		  const char *why, time_t now)
{
	e->refresh_at = kg_staple_next_refresh(r == 0, this_update, next_update, now);
	if (r < 0) {
		atomic_fetch_add(&reg.failed, 1);
		snprintf(e->error, sizeof(e->error), "%s", why);
		/* The last good response stays until it expires. */
		if (e->resp && e->expires <= now) {
			free(e->resp);
			e->resp = NULL;
			e->resp_len = 0;
		}
		if (e->resp && e->refresh_at > e->expires - 1)
			e->refresh_at = e->expires - 1;
		if (e->refresh_at < now + 1)
			e->refresh_at = now + 1;
		log_warn("ocsp.staple_failed", KV("subject", e->subject), KV("responder", e->url),
			 KV("reason", why), KV("keeping", (bool)(e->resp != NULL)));
		return;
	}
	atomic_fetch_add(&reg.ok, 1);
	free(e->resp);
	e->resp = der;
	e->resp_len = der_len;
	e->status = status;
	e->expires = next_update ? next_update : now + KG_OCSP_DEFAULT_MAX_AGE_S;
	e->error[0] = '\0';
	log_info("ocsp.staple_updated", KV("subject", e->subject), KV("responder", e->url),
		 KV("status", kg_ocsp_status_name(status)), KV("next_update", (long long)e->expires),
		 KV("refresh_at", (long long)e->refresh_at));
}

static void *stapler_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&reg.lock);
	while (!reg.stop) {
		time_t now = time(NULL), next = now + 60;
		struct entry *due = NULL;
		for (struct entry *e = reg.list; e; e = e->next) {
			if (e->refs == 0 || e->fetching)
				continue;
			if (e->refresh_at <= now && !due)
				due = e;
			else if (e->refresh_at < next)
				next = e->refresh_at;
		}
		if (!due) {
			struct timespec ts = {.tv_sec = next};
			pthread_cond_timedwait(&reg.cond, &reg.lock, &ts);
			continue;
		}
		due->fetching = true;
		pthread_mutex_unlock(&reg.lock);
		unsigned char *der = NULL;
		size_t der_len = 0;
		enum kg_ocsp_status status = KG_OCSP_UNKNOWN;
		time_t this_update = 0, next_update = 0;
		char why[160] = "";
		int r = fetch(due, &der, &der_len, &status, &this_update, &next_update, why,
			      sizeof(why));
		pthread_mutex_lock(&reg.lock);
		due->fetching = false;
		apply(due, r, der, der_len, status, this_update, next_update, why, time(NULL));
		if (due->refs == 0) {
			due->refs = 1; /* released while fetching: free it now */
			entry_put_locked(due);
		}
	}
	pthread_mutex_unlock(&reg.lock);
	return NULL;
}

int kg_staple_start(void)
{
	char err[160];
	if (kg_curl_init(err, sizeof(err)) < 0) {
		log_err("ocsp.stapler_failed", KV("reason", err));
		return -EIO;
	}
	pthread_mutex_lock(&reg.lock);
	int r = 0;
	if (!reg.started) {
		reg.stop = false;
		r = -pthread_create(&reg.thread, NULL, stapler_main, NULL);
		reg.started = r == 0;
	}
	pthread_mutex_unlock(&reg.lock);
	if (r < 0)
		log_err("ocsp.stapler_failed", KV_ERRNO(-r));
	return r;
}

void kg_staple_shutdown(void)
{
	pthread_mutex_lock(&reg.lock);
	bool started = reg.started;
	reg.stop = true;
	pthread_cond_broadcast(&reg.cond);
	pthread_mutex_unlock(&reg.lock);
	if (started)
		pthread_join(reg.thread, NULL);
	reg.started = false;
}

/* ----------------------------------------------------------- stapling */

/* Runs in the handshake (any worker) when the client sent status_request:
 * a copy of the current response, if one is good now. */
static int status_cb(SSL *ssl, void *arg)
{
	struct entry *e = arg;
	unsigned char *copy = NULL;
	size_t len = 0;
	if (!e)
		return SSL_TLSEXT_ERR_NOACK;
	pthread_mutex_lock(&reg.lock);
	if (e->resp && e->expires > time(NULL)) {
		copy = OPENSSL_memdup(e->resp, e->resp_len);
		len = e->resp_len;
	}
	pthread_mutex_unlock(&reg.lock);
	if (!copy)
		return SSL_TLSEXT_ERR_NOACK;
	/* OpenSSL owns copy from here, also when the call fails. */
	if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)len) != 1)
		return SSL_TLSEXT_ERR_NOACK;
	return SSL_TLSEXT_ERR_OK;
}

/* The issuer of leaf: from ctx's chain, else ca_path's certificate. */
static X509 *find_issuer(SSL_CTX *ctx, X509 *leaf, const char *ca_path)
{
	STACK_OF(X509) *chain = NULL;
	if (SSL_CTX_get0_chain_certs(ctx, &chain) == 1)
		for (int i = 0; chain && i < sk_X509_num(chain); i++) {
			X509 *c = sk_X509_value(chain, i);
			if (X509_check_issued(c, leaf) == X509_V_OK && X509_up_ref(c) == 1)
				return c;
		}
	X509 *ca = ca_path ? kg_pem_read_cert(ca_path) : NULL;
	if (ca && X509_check_issued(ca, leaf) == X509_V_OK)
		return ca;
	X509_free(ca);
	return NULL;
}

static struct entry *entry_new(X509 *leaf, X509 *issuer, const char *url,
			       const unsigned char fp[32])
{
	struct entry *e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	memcpy(e->fp, fp, sizeof(e->fp));
	snprintf(e->url, sizeof(e->url), "%s", url);
	kg_cert_subject(leaf, e->subject, sizeof(e->subject));
	e->id = OCSP_cert_to_id(NULL, leaf, issuer);
	if (!e->id || X509_up_ref(leaf) != 1) {
		entry_free(e);
		return NULL;
	}
	e->cert = leaf;
	e->issuer = issuer; /* the caller's reference passes */
	e->refresh_at = 0;  /* at once */
	return e;
}

int kg_staple_setup(SSL_CTX *ctx, const char *ca_path, char *err, size_t errlen)
{
	unsigned char fp[32];
	unsigned fp_len = 0;
	char url[256] = "";
	X509 *leaf = SSL_CTX_get0_certificate(ctx);
	if (pthread_once(&idx_once, idx_init) != 0 || ctx_idx < 0) {
		snprintf(err, errlen, "ocsp_stapling: cannot allocate an SSL_CTX ex_data index");
		return -EINVAL;
	}
	if (!leaf || X509_digest(leaf, EVP_sha256(), fp, &fp_len) != 1) {
		snprintf(err, errlen, "ocsp_stapling: no server certificate");
		return -EINVAL;
	}
	STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
	for (int i = 0; urls && i < sk_OPENSSL_STRING_num(urls) && !url[0]; i++) {
		const char *u = sk_OPENSSL_STRING_value(urls, i);
		if (strncmp(u, "http://", 7) == 0 && strlen(u) < sizeof(url))
			snprintf(url, sizeof(url), "%s", u);
	}
	X509_email_free(urls);
	if (!url[0]) {
		snprintf(err, errlen, "ocsp_stapling: the server certificate names no http OCSP "
				      "responder (Authority Information Access; kgatectl ca issue "
				      "--ocsp-url)");
		return -EINVAL;
	}
	X509 *issuer = find_issuer(ctx, leaf, ca_path);
	if (!issuer) {
		snprintf(err, errlen, "ocsp_stapling: the server certificate's issuer is neither "
				      "in its file nor the listener's ca");
		return -EINVAL;
	}
	pthread_mutex_lock(&reg.lock);
	struct entry *e = reg.list;
	while (e && (memcmp(e->fp, fp, sizeof(fp)) != 0 || strcmp(e->url, url) != 0))
		e = e->next;
	if (e) {
		X509_free(issuer);
	} else if ((e = entry_new(leaf, issuer, url, fp))) {
		e->next = reg.list;
		reg.list = e;
		pthread_cond_broadcast(&reg.cond); /* fetch it now */
	} else {
		X509_free(issuer);
	}
	if (e)
		e->refs++;
	/* From here ctx releases e when it is freed. */
	int ok = e && SSL_CTX_set_ex_data(ctx, ctx_idx, e) == 1;
	if (e && !ok)
		entry_put_locked(e);
	pthread_mutex_unlock(&reg.lock);
	if (!ok) {
		snprintf(err, errlen, "ocsp_stapling: out of memory");
		return -EINVAL;
	}
	SSL_CTX_set_tlsext_status_cb(ctx, status_cb);
	SSL_CTX_set_tlsext_status_arg(ctx, e);
	return 0;
}

void kg_staple_info(SSL_CTX *ctx, struct kg_staple_info *out)
{
	memset(out, 0, sizeof(*out));
	struct entry *e = ctx && ctx_idx >= 0 ? SSL_CTX_get_ex_data(ctx, ctx_idx) : NULL;
	if (!e)
		return;
	out->on = true;
	pthread_mutex_lock(&reg.lock);
	out->have = e->resp && e->expires > time(NULL);
	out->status = out->have ? kg_ocsp_status_name(e->status) : NULL;
	out->next_update = out->have ? e->expires : 0;
	out->refresh_at = e->refresh_at;
	snprintf(out->url, sizeof(out->url), "%s", e->url);
	snprintf(out->error, sizeof(out->error), "%s", e->error);
	pthread_mutex_unlock(&reg.lock);
}

void kg_staple_counts(unsigned long long *ok, unsigned long long *failed)
{
	*ok = atomic_load(&reg.ok);
	*failed = atomic_load(&reg.failed);
}
