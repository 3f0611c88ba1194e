/* The CRL in force per ca entry (crl.h). */
#include "crl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <kgate/log.h>

#include "clock.h"

#define PEM_LABEL "-----BEGIN X509 CRL-----"

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen,
						      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	kg_text_one_line(err);
	ERR_clear_error();
	return -EINVAL; /* err says why */
}

static const char *last_reason(void)
{
	const char *r = ERR_reason_error_string(ERR_peek_last_error());
	return r ? r : "unknown error";
}

X509_CRL *kg_crl_parse(const void *data, size_t len, char *err, size_t errlen)
{
	X509_CRL *crl = NULL;
	if (len == 0) {
		fail(err, errlen, "empty");
		return NULL;
	}
	if (len > KG_CRL_MAX_BYTES || len > INT32_MAX) {
		fail(err, errlen, "larger than %u bytes", KG_CRL_MAX_BYTES);
		return NULL;
	}
	if (memmem(data, len, PEM_LABEL, strlen(PEM_LABEL))) {
		BIO *b = BIO_new_mem_buf(data, (int)len);
		crl = b ? PEM_read_bio_X509_CRL(b, NULL, NULL, NULL) : NULL;
		BIO_free(b);
	} else {
		const unsigned char *p = data;
		crl = d2i_X509_CRL(NULL, &p, (long)len);
		/* Trailing bytes after the DER object: not one CRL. */
		if (crl && p != (const unsigned char *)data + len) {
			X509_CRL_free(crl);
			fail(err, errlen, "%zu bytes follow the DER CRL",
			     len - (size_t)(p - (const unsigned char *)data));
			return NULL;
		}
	}
	if (!crl) {
		fail(err, errlen, "not a CRL (neither PEM \"X509 CRL\" nor DER): %s", last_reason());
		return NULL;
	}
	ERR_clear_error();
	return crl;
}

int kg_crl_read_file(const char *path, unsigned char **out, size_t *len, char *err,
		     size_t errlen)
{
	struct stat st;
	int ret = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*out = NULL;
	*len = 0;
	if (fd == -1) {
		ret = -errno;
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s is not a regular file", path);
		ret = -EINVAL;
		goto close_fd;
	}
	if (st.st_size > (off_t)KG_CRL_MAX_BYTES) {
		snprintf(err, errlen, "%s is larger than %u bytes", path, KG_CRL_MAX_BYTES);
		ret = -EFBIG;
		goto close_fd;
	}
	unsigned char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		snprintf(err, errlen, "out of memory");
		ret = -ENOMEM;
		goto close_fd;
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			ret = -errno;
			snprintf(err, errlen, "cannot read %s: %s", path, strerror(-ret));
			free(buf);
			goto close_fd;
		}
		if (n == 0)
			break; /* shrank meanwhile: the parse says what is left */
		got += (size_t)n;
	}
	*out = buf;
	*len = got;
close_fd:
	close(fd);
	return ret;
}

void kg_asn1_time_text(const ASN1_TIME *t, char *out, size_t outlen)
{
	struct tm tm;
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1 ||
	    strftime(out, outlen, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(out, outlen, "(unreadable date)");
}

int kg_crl_verify(X509_CRL *crl, STACK_OF(X509) *cas, enum kg_crl_expired mode, time_t now,
		  X509 **signer_out, char *err, size_t errlen)
{
	char when[64], issuer[256] = "(unknown)";
	X509 *signer = NULL;
	if (signer_out)
		*signer_out = NULL;
	/* Partitioned, indirect and delta CRLs change what a CRL covers;
	 * kgate's handshake check (tls.c) relies on full CRLs of one CA. */
	if (X509_CRL_get_ext_by_NID(crl, NID_issuing_distribution_point, -1) >= 0 ||
	    X509_CRL_get_ext_by_NID(crl, NID_delta_crl, -1) >= 0)
		return fail(err, errlen, "the CRL is a delta or partitioned CRL "
					 "(deltaCRLIndicator or issuingDistributionPoint): kgated uses "
					 "full CRLs only");
	for (int i = 0; i < sk_X509_num(cas) && !signer; i++) {
		X509 *ca = sk_X509_value(cas, i);
		if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) == 0)
			signer = ca;
	}
	if (!signer) {
		X509_NAME_oneline(X509_CRL_get_issuer(crl), issuer, sizeof(issuer));
		return fail(err, errlen, "the CRL is issued by %s, which is not in the CA bundle",
			    issuer);
	}
	if ((X509_get_extension_flags(signer) & EXFLAG_KUSAGE) &&
	    !(X509_get_key_usage(signer) & KU_CRL_SIGN))
		return fail(err, errlen, "the CRL's issuer may not sign CRLs (its keyUsage lacks "
					 "cRLSign)");
	if (X509_CRL_verify(crl, X509_get0_pubkey(signer)) != 1)
		return fail(err, errlen, "the CRL names a CA of the bundle as issuer, but its "
					 "signature does not verify with that CA's key");
	/* With reject, OpenSSL refuses every client while the CRL is stale
	 * or premature. */
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	if (mode == KG_CRL_EXPIRED_REJECT && next && X509_cmp_time(next, &now) < 0) {
		kg_asn1_time_text(next, when, sizeof(when));
		fail(err, errlen, "the CRL expired on %s (next update); issue a fresh one", when);
		return -EKEYEXPIRED;
	}
	if (X509_cmp_time(X509_CRL_get0_lastUpdate(crl), &now) > 0) {
		kg_asn1_time_text(X509_CRL_get0_lastUpdate(crl), when, sizeof(when));
		fail(err, errlen, "the CRL is not valid until %s", when);
		return -EKEYEXPIRED;
	}
	if (signer_out)
		*signer_out = signer;
	ERR_clear_error();
	return 0;
}

/* ---- the table of CRLs in force ---------------------------------------- */

struct entry {
	char name[KG_NAME_MAX + 1];
	char *path;          /* the file it was loaded for */
	X509_CRL *crl;       /* in force; NULL before the first load */
	EVP_PKEY *signer;    /* the key crl's signature verified with */
	struct kg_crl_info info;
	struct entry *next;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry *table;

/* table_lock held. */
static struct entry *find(const char *name)
{
	for (struct entry *e = table; e; e = e->next)
		if (strcmp(e->name, name) == 0)
			return e;
	return NULL;
}

/* table_lock held. NULL when out of memory. */
static struct entry *find_or_add(const char *name)
{
	struct entry *e = find(name);
	if (e)
		return e;
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->next = table;
	table = e;
	return e;
}

static STACK_OF(X509) *read_cas(const char *path, char *err, size_t errlen)
{
	STACK_OF(X509) *cas = sk_X509_new_null();
	BIO *b = BIO_new_file(path, "r");
	if (!cas || !b) {
		fail(err, errlen, "cannot read the CA certificates in %s", path);
		goto fail;
	}
	X509 *x;
	while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
		if (!sk_X509_push(cas, x)) {
			X509_free(x);
			fail(err, errlen, "out of memory");
			goto fail;
		}
	}
	ERR_clear_error();
	if (sk_X509_num(cas) == 0) {
		fail(err, errlen, "no CA certificate in %s", path);
		goto fail;
	}
	BIO_free(b);
	return cas;
fail:
	BIO_free(b);
	sk_X509_pop_free(cas, X509_free);
	return NULL;
}

/* Parses and checks a candidate for entry c: the CRL with *key the
 * public key that verified it (a new reference), or NULL with err. */
static X509_CRL *check_candidate(const struct kg_cert_conf *c, const void *data, size_t len,
				 enum kg_crl_expired mode, EVP_PKEY **key, char *err,
				 size_t errlen)
{
	X509 *signer = NULL;
	*key = NULL;
	char why[400];
	X509_CRL *crl = kg_crl_parse(data, len, why, sizeof(why));
	if (!crl) {
		snprintf(err, errlen, "%s", why);
		return NULL;
	}
	STACK_OF(X509) *cas = read_cas(c->cert_path, err, errlen);
	if (!cas || kg_crl_verify(crl, cas, mode, time(NULL), &signer, err, errlen) < 0 ||
	    EVP_PKEY_up_ref(X509_get0_pubkey(signer)) != 1) {
		X509_CRL_free(crl);
		crl = NULL;
	} else {
		*key = X509_get0_pubkey(signer);
	}
	sk_X509_pop_free(cas, X509_free);
	/* OpenSSL sorts the entries at the first lookup, under the CRL's
	 * write lock: with 100,000 entries that would be tens of ms on the
	 * worker whose handshake comes first. Sorted here, off the workers. */
	STACK_OF(X509_REVOKED) *rev = crl ? X509_CRL_get_REVOKED(crl) : NULL;
	if (rev)
		sk_X509_REVOKED_sort(rev);
	return crl;
}

static void fill_info(struct kg_crl_info *i, X509_CRL *crl, const char *source, uint64_t us)
{
	struct tm tm;
	unsigned int len = 0;
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED(crl);
	i->loaded = true;
	i->last_update = ASN1_TIME_to_tm(X509_CRL_get0_lastUpdate(crl), &tm) == 1 ? timegm(&tm) : 0;
	i->has_next_update = next && ASN1_TIME_to_tm(next, &tm) == 1;
	i->next_update = i->has_next_update ? timegm(&tm) : 0;
	i->revoked = rev ? (size_t)sk_X509_REVOKED_num(rev) : 0;
	i->applied_at = time(NULL);
	i->load_us = us;
	snprintf(i->source, sizeof(i->source), "%s", source);
	if (X509_CRL_digest(crl, EVP_sha256(), i->md, &len) != 1)
		memset(i->md, 0, sizeof(i->md));
	ERR_clear_error();
}

/* table_lock held: makes crl and key (owned by the table from here, unless
 * this fails) entry e's CRL in force for path. */
static int install(struct entry *e, const char *path, X509_CRL *crl, EVP_PKEY *key,
		   const char *source, uint64_t us)
{
	if (!e->path || strcmp(e->path, path) != 0) {
		char *copy = strdup(path);
		if (!copy)
			return -ENOMEM;
		free(e->path);
		e->path = copy;
	}
	X509_CRL_free(e->crl);
	EVP_PKEY_free(e->signer);
	e->crl = crl;
	e->signer = key;
	fill_info(&e->info, crl, source, us);
	return 0;
}

enum kg_crl_outcome kg_crl_offer(const struct kg_cert_conf *c, const void *data, size_t len,
				 const char *source, char *err, size_t errlen)
{
	uint64_t t0 = kg_now_us();
	EVP_PKEY *key = NULL;
	X509_CRL *crl = c->crl_path ? check_candidate(c, data, len, c->crl_expired, &key, err,
						      errlen)
				    : NULL;
	uint64_t us = kg_now_us() - t0;
	unsigned char md[32];
	unsigned int mdlen = 0;
	enum kg_crl_outcome out = KG_CRL_REFUSED;

	if (!c->crl_path)
		snprintf(err, errlen, "certificate %s has no crl", c->name);
	if (crl && X509_CRL_digest(crl, EVP_sha256(), md, &mdlen) != 1) {
		snprintf(err, errlen, "out of memory");
		X509_CRL_free(crl);
		EVP_PKEY_free(key);
		crl = NULL;
	}
	pthread_mutex_lock(&table_lock);
	struct entry *e = find_or_add(c->name);
	if (!e) {
		X509_CRL_free(crl);
		EVP_PKEY_free(key);
		snprintf(err, errlen, "out of memory");
		goto unlock;
	}
	if (!crl) {
		e->info.refused++;
		snprintf(e->info.last_refusal, sizeof(e->info.last_refusal), "%s", err);
		goto unlock;
	}
	if (e->crl && e->path && strcmp(e->path, c->crl_path) == 0 &&
	    memcmp(e->info.md, md, sizeof(md)) == 0) {
		X509_CRL_free(crl);
		EVP_PKEY_free(key);
		out = KG_CRL_UNCHANGED;
		goto unlock;
	}
	/* A CRL older than the one in force would forget revocations made
	 * since (a stale mirror, a file and a URL out of step). */
	if (e->crl && e->path && strcmp(e->path, c->crl_path) == 0 &&
	    ASN1_TIME_compare(X509_CRL_get0_lastUpdate(crl), X509_CRL_get0_lastUpdate(e->crl)) < 0) {
		X509_CRL_free(crl);
		EVP_PKEY_free(key);
		snprintf(err, errlen, "older than the CRL in force (an earlier lastUpdate)");
		e->info.refused++;
		snprintf(e->info.last_refusal, sizeof(e->info.last_refusal), "%s", err);
		goto unlock;
	}
	if (install(e, c->crl_path, crl, key, source, us) < 0) {
		X509_CRL_free(crl);
		EVP_PKEY_free(key);
		snprintf(err, errlen, "out of memory");
		e->info.refused++;
		goto unlock;
	}
	e->info.applied++;
	out = KG_CRL_APPLIED;
unlock:
	pthread_mutex_unlock(&table_lock);
	ERR_clear_error();
	return out;
}

void kg_crl_refused(const char *name, const char *reason)
{
	pthread_mutex_lock(&table_lock);
	struct entry *e = find_or_add(name);
	if (e) {
		e->info.refused++;
		snprintf(e->info.last_refusal, sizeof(e->info.last_refusal), "%s", reason);
	}
	pthread_mutex_unlock(&table_lock);
}

X509_CRL *kg_crl_acquire(const struct kg_cert_conf *c, EVP_PKEY **signer, char *err,
			 size_t errlen)
{
	X509_CRL *crl = NULL;
	EVP_PKEY *key = NULL;
	if (signer)
		*signer = NULL;
	pthread_mutex_lock(&table_lock);
	struct entry *e = find(c->name);
	if (e && e->crl && e->path && strcmp(e->path, c->crl_path) == 0 &&
	    X509_CRL_up_ref(e->crl) == 1) {
		crl = e->crl;
		if (signer && EVP_PKEY_up_ref(e->signer) == 1)
			*signer = e->signer;
	}
	pthread_mutex_unlock(&table_lock);
	if (crl && (!signer || *signer))
		return crl;
	X509_CRL_free(crl);
	crl = NULL;

	/* First use of this file: read and check it outside the lock (a
	 * large CRL takes a while), then install it unless a concurrent
	 * load won. Dates are the validation's business (certs.c, the
	 * listener start check): here only whose CRL it is matters. */
	unsigned char *data = NULL;
	size_t len = 0;
	char why[400];
	uint64_t t0 = kg_now_us();
	if (kg_crl_read_file(c->crl_path, &data, &len, why, sizeof(why)) < 0) {
		snprintf(err, errlen, "CRL: %s", why);
		return NULL;
	}
	crl = check_candidate(c, data, len, KG_CRL_EXPIRED_WARN, &key, why, sizeof(why));
	free(data);
	if (!crl) {
		snprintf(err, errlen, "CRL %s: %s", c->crl_path, why);
		return NULL;
	}
	uint64_t us = kg_now_us() - t0;
	pthread_mutex_lock(&table_lock);
	e = find_or_add(c->name);
	if (e && e->crl && e->path && strcmp(e->path, c->crl_path) == 0) {
		X509_CRL_free(crl); /* loaded meanwhile: use that one */
		EVP_PKEY_free(key);
		crl = e->crl;
		key = e->signer;
	} else if (!e || install(e, c->crl_path, crl, key, "file", us) < 0) {
		X509_CRL_free(crl);
		EVP_PKEY_free(key);
		crl = NULL;
	}
	if (crl && X509_CRL_up_ref(crl) != 1)
		crl = NULL;
	if (crl && signer) {
		if (EVP_PKEY_up_ref(key) == 1) {
			*signer = key;
		} else {
			X509_CRL_free(crl);
			crl = NULL;
		}
	}
	pthread_mutex_unlock(&table_lock);
	if (!crl)
		snprintf(err, errlen, "out of memory");
	return crl;
}

bool kg_crl_info(const struct kg_cert_conf *c, struct kg_crl_info *out)
{
	pthread_mutex_lock(&table_lock);
	struct entry *e = find(c->name);
	bool found = e && e->crl && e->path && c->crl_path && strcmp(e->path, c->crl_path) == 0;
	if (e)
		*out = e->info;
	else
		memset(out, 0, sizeof(*out));
	out->loaded = found;
	pthread_mutex_unlock(&table_lock);
	return found;
}

const char *kg_crl_state(const struct kg_crl_info *i, time_t now)
{
	if (!i->loaded)
		return "none";
	return i->has_next_update && i->next_update < now ? "expired" : "ok";
}

void kg_crl_prune(const struct kg_config *cfg)
{
	pthread_mutex_lock(&table_lock);
	for (struct entry **pe = &table; *pe;) {
		struct entry *e = *pe;
		const struct kg_cert_conf *c = kg_config_find_cert(cfg, e->name);
		if (c && c->type == KG_CERT_CA && c->crl_path) {
			pe = &e->next;
			continue;
		}
		*pe = e->next;
		X509_CRL_free(e->crl);
		EVP_PKEY_free(e->signer);
		free(e->path);
		free(e);
	}
	pthread_mutex_unlock(&table_lock);
}
