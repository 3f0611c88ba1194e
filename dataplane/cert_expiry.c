/* Certificate and CRL expiry dates and warnings (cert_expiry.h). */
#include "cert_expiry.h"

#include "crl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <kgate/log.h>

#include "certs.h"

#define DAY_SECONDS 86400

static const int thresholds_days[] = {1, 7, 30}; /* closest first */

int64_t kg_expiry_days_left(time_t when, time_t now)
{
	int64_t left = (int64_t)when - (int64_t)now;
	int64_t days = left / DAY_SECONDS;
	/* Rounded down, not toward zero: an hour past notAfter is day -1. */
	if (left % DAY_SECONDS < 0)
		days--;
	return days;
}

int kg_expiry_threshold(int64_t seconds_left)
{
	if (seconds_left <= 0)
		return 0;
	for (size_t i = 0; i < sizeof(thresholds_days) / sizeof(thresholds_days[0]); i++)
		if (seconds_left <= (int64_t)thresholds_days[i] * DAY_SECONDS)
			return thresholds_days[i];
	return KG_EXPIRY_NONE;
}

int kg_expiry_due(int logged, int64_t seconds_left)
{
	int t = kg_expiry_threshold(seconds_left);
	if (t == KG_EXPIRY_NONE || (logged != KG_EXPIRY_NONE && t >= logged))
		return KG_EXPIRY_NONE;
	return t;
}

static int asn1_to_time(const ASN1_TIME *t, time_t *out)
{
	struct tm tm;
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return -EINVAL;
	time_t v = timegm(&tm);
	if (v == (time_t)-1)
		return -EINVAL;
	*out = v;
	return 0;
}

static int read_cert_dates(const char *path, struct kg_cert_dates *d)
{
	unsigned int len = 0;
	X509 *x = kg_pem_read_cert(path);
	if (!x)
		return -EINVAL;
	int ret = asn1_to_time(X509_get0_notAfter(x), &d->not_after);
	if (ret == 0 && (X509_digest(x, EVP_sha256(), d->cert_md, &len) != 1 ||
			 len != KG_EXPIRY_MD_LEN))
		ret = -EINVAL;
	X509_free(x);
	return ret;
}

/* The CRL in force (crl.h) when there is one: what handshakes use, and
 * no parse of a large file; else the file's. */
static int read_crl_dates(const struct kg_cert_conf *c, struct kg_cert_dates *d)
{
	unsigned int len = 0;
	struct kg_crl_info ci;
	if (kg_crl_info(c, &ci)) {
		d->has_next_update = ci.has_next_update;
		d->next_update = ci.next_update;
		memcpy(d->crl_md, ci.md, KG_EXPIRY_MD_LEN);
		d->has_crl = true;
		return 0;
	}
	X509_CRL *crl = kg_pem_read_crl(c->crl_path);
	if (!crl)
		return -EINVAL;
	int ret = 0;
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	/* nextUpdate is optional in a CRL (RFC 5280 5.1.2.5). */
	if (next) {
		ret = asn1_to_time(next, &d->next_update);
		d->has_next_update = ret == 0;
	}
	if (ret == 0 && (X509_CRL_digest(crl, EVP_sha256(), d->crl_md, &len) != 1 ||
			 len != KG_EXPIRY_MD_LEN))
		ret = -EINVAL;
	d->has_crl = ret == 0;
	X509_CRL_free(crl);
	return ret;
}

int kg_cert_dates_read(const struct kg_cert_conf *c, struct kg_cert_dates *d)
{
	memset(d, 0, sizeof(*d));
	int ret = read_cert_dates(c->cert_path, d);
	if (ret == 0 && c->type == KG_CERT_CA && c->crl_path)
		ret = read_crl_dates(c, d);
	/* A file replaced under us must not leave errors for the next caller. */
	ERR_clear_error();
	return ret;
}

/* What was last logged for one date of one entry. */
struct mark {
	char name[KG_NAME_MAX + 1];
	bool crl;
	unsigned char md[KG_EXPIRY_MD_LEN];
	int logged; /* a threshold, 0 (expired) or KG_EXPIRY_NONE */
};

struct kg_expiry {
	struct mark *marks;
	size_t n;
};

struct kg_expiry *kg_expiry_create(void)
{
	return calloc(1, sizeof(struct kg_expiry));
}

void kg_expiry_destroy(struct kg_expiry *e)
{
	if (!e)
		return;
	free(e->marks);
	free(e);
}

static const struct mark *find_mark(const struct kg_expiry *e, const char *name, bool crl)
{
	for (size_t i = 0; i < e->n; i++)
		if (e->marks[i].crl == crl && strcmp(e->marks[i].name, name) == 0)
			return &e->marks[i];
	return NULL;
}

void kg_format_rfc3339(time_t t, char *out, size_t outlen)
{
	struct tm tm;
	if (!gmtime_r(&t, &tm) || strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, outlen, "%lld", (long long)t);
}

/* Fills m for one date of entry c and logs what is due for it. */
static void check_one(struct mark *m, const struct mark *prev, const struct kg_cert_conf *c,
		      bool crl, time_t when, const unsigned char *md, time_t now)
{
	char at[32];
	snprintf(m->name, sizeof(m->name), "%s", c->name);
	m->crl = crl;
	memcpy(m->md, md, KG_EXPIRY_MD_LEN);
	/* New content (a replaced certificate, a fresh CRL) starts over. */
	m->logged = prev && memcmp(prev->md, md, KG_EXPIRY_MD_LEN) == 0 ? prev->logged
								       : KG_EXPIRY_NONE;
	int due = kg_expiry_due(m->logged, (int64_t)when - (int64_t)now);
	if (due == KG_EXPIRY_NONE)
		return;
	m->logged = due;
	kg_format_rfc3339(when, at, sizeof(at));
	const char *what = crl ? "crl" : "certificate";
	long long days = (long long)kg_expiry_days_left(when, now);
	if (due == 0)
		log_err("cert.past_due", KV("cert", c->name), KV("what", what),
			KV("days_left", days), KV("not_after", at));
	else
		log_warn("cert.expires_soon", KV("cert", c->name), KV("what", what),
			 KV("days_left", days), KV("not_after", at));
}

int kg_expiry_check(struct kg_expiry *e, const struct kg_config *cfg, time_t now)
{
	size_t n = 0;
	struct mark *marks = calloc(cfg->n_certs * 2 + 1, sizeof(*marks));
	if (!marks)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->n_certs; i++) {
		const struct kg_cert_conf *c = &cfg->certs[i];
		const struct mark *pc = find_mark(e, c->name, false), *pl = find_mark(e, c->name, true);
		struct kg_cert_dates d;
		if (kg_cert_dates_read(c, &d) < 0) {
			/* Unreadable now (being replaced, or broken): what was
			 * said about it stays said. */
			if (pc)
				marks[n++] = *pc;
			if (pl)
				marks[n++] = *pl;
			continue;
		}
		check_one(&marks[n++], pc, c, false, d.not_after, d.cert_md, now);
		if (d.has_next_update)
			check_one(&marks[n++], pl, c, true, d.next_update, d.crl_md, now);
	}
	free(e->marks);
	e->marks = marks;
	e->n = n;
	return 0;
}
