/* crl.c: parsing (PEM, DER, garbage), checking against a CA bundle, and
 * the table of CRLs in force (a refused candidate leaves the previous
 * one; the same CRL again changes nothing). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "certgen.h"
#include "crl.h"

static struct tc_dir dir;
static X509 *ca, *other, *victim;
static EVP_PKEY *ca_key, *other_key;

static void make_pki(void)
{
	tc_dir_create(&dir);
	ca_key = tc_key();
	other_key = tc_key();
	EVP_PKEY *vkey = tc_key();
	ca = tc_cert(&(struct tc_cert_opts){.cn = "CRL CA", .ca = true}, ca_key, NULL, NULL);
	other = tc_cert(&(struct tc_cert_opts){.cn = "Other CA", .ca = true}, other_key, NULL, NULL);
	victim = tc_cert(&(struct tc_cert_opts){.cn = "victim", .eku = TC_EKU_CLIENT}, vkey, ca,
			 ca_key);
	EVP_PKEY_free(vkey);
	tc_write_certs(tc_file(&dir, "ca.pem"), &ca, 1);
}

static void drop_pki(void)
{
	X509_free(ca);
	X509_free(other);
	X509_free(victim);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(other_key);
	tc_dir_remove(&dir);
}

/* crl as PEM text (malloc'd; *len its length). */
static char *pem_of(X509_CRL *crl, size_t *len)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data;
	cr_assert(b && PEM_write_bio_X509_CRL(b, crl) == 1);
	long n = BIO_get_mem_data(b, &data);
	char *out = malloc((size_t)n);
	cr_assert(out);
	memcpy(out, data, (size_t)n);
	*len = (size_t)n;
	BIO_free(b);
	return out;
}

Test(crl, parse_pem_der_and_garbage, .init = make_pki, .fini = drop_pki)
{
	char err[256];
	size_t len;
	X509_CRL *crl = tc_crl(ca, ca_key, &victim, 1, 3600);
	char *pem = pem_of(crl, &len);
	X509_CRL *p = kg_crl_parse(pem, len, err, sizeof(err));
	cr_assert_not_null(p, "%s", err);
	cr_expect_eq(X509_CRL_cmp(p, crl), 0);
	X509_CRL_free(p);

	unsigned char *der = NULL;
	int dlen = i2d_X509_CRL(crl, &der);
	cr_assert_gt(dlen, 0);
	p = kg_crl_parse(der, (size_t)dlen, err, sizeof(err));
	cr_expect_not_null(p, "%s", err);
	X509_CRL_free(p);

	/* Trailing bytes after the DER object, a truncated one, garbage. */
	unsigned char *longer = malloc((size_t)dlen + 4);
	memcpy(longer, der, (size_t)dlen);
	memset(longer + dlen, 0, 4);
	cr_expect_null(kg_crl_parse(longer, (size_t)dlen + 4, err, sizeof(err)));
	cr_expect(strstr(err, "follow the DER CRL"), "%s", err);
	cr_expect_null(kg_crl_parse(der, (size_t)dlen / 2, err, sizeof(err)));
	cr_expect(strstr(err, "not a CRL"), "%s", err);
	cr_expect_null(kg_crl_parse("garbage", 7, err, sizeof(err)));
	cr_expect_null(kg_crl_parse("", 0, err, sizeof(err)));
	cr_expect(strstr(err, "empty"), "%s", err);
	static const char broken[] = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
	cr_expect_null(kg_crl_parse(broken, sizeof(broken) - 1, err, sizeof(err)));
	cr_expect_eq(ERR_peek_error(), 0, "error queue left clean");
	free(longer);
	OPENSSL_free(der);
	free(pem);
	X509_CRL_free(crl);
}

static const struct {
	const char *desc;
	bool other_issuer, other_key;
	long next_update;
	enum kg_crl_expired mode;
	int want;
	const char *msg;
} verify_cases[] = {
	{"good", false, false, 3600, KG_CRL_EXPIRED_REJECT, 0, NULL},
	{"another CA's", true, true, 3600, KG_CRL_EXPIRED_REJECT, -EINVAL, "not in the CA bundle"},
	{"our name, another key", false, true, 3600, KG_CRL_EXPIRED_REJECT, -EINVAL,
	 "signature does not verify"},
	{"expired, reject", false, false, -60, KG_CRL_EXPIRED_REJECT, -EKEYEXPIRED, "expired on"},
	{"expired, warn", false, false, -60, KG_CRL_EXPIRED_WARN, 0, NULL},
};

#define N_VERIFY (sizeof(verify_cases) / sizeof(verify_cases[0]))

TC_INDEX_PARAMS(crl, verify, N_VERIFY)

ParameterizedTest(size_t *i, crl, verify, .init = make_pki, .fini = drop_pki)
{
	char err[256] = "";
	__typeof__(verify_cases[0]) *tc = &verify_cases[*i];
	X509_CRL *crl = tc_crl(tc->other_issuer ? other : ca, tc->other_key ? other_key : ca_key,
			       NULL, 0, tc->next_update);
	STACK_OF(X509) *cas = sk_X509_new_null();
	cr_assert(cas && sk_X509_push(cas, ca));
	X509 *signer = NULL;
	int r = kg_crl_verify(crl, cas, tc->mode, time(NULL), &signer, err, sizeof(err));
	cr_expect(r == 0 ? signer == ca : signer == NULL, "%s: signer", tc->desc);
	cr_expect_eq(r, tc->want, "%s: %d (%s)", tc->desc, r, err);
	if (tc->msg)
		cr_expect(strstr(err, tc->msg), "%s: \"%s\"", tc->desc, err);
	sk_X509_free(cas);
	X509_CRL_free(crl);
}

Test(crl, offer_keeps_previous_on_refusal, .init = make_pki, .fini = drop_pki)
{
	char err[256];
	size_t len;
	struct kg_cert_conf c = {.name = "clients", .type = KG_CERT_CA};
	c.cert_path = strdup(tc_file(&dir, "ca.pem"));
	c.crl_path = strdup(tc_file(&dir, "ca.crl"));
	X509_CRL *first = tc_crl(ca, ca_key, NULL, 0, 3600);
	X509_CRL *second = tc_crl(ca, ca_key, &victim, 1, 3600);
	X509_CRL *forged = tc_crl(ca, other_key, NULL, 0, 3600);
	tc_write_crl(c.crl_path, first);

	X509_CRL *got = kg_crl_acquire(&c, NULL, err, sizeof(err));
	cr_assert_not_null(got, "%s", err);
	cr_expect_eq(X509_CRL_cmp(got, first), 0);
	X509_CRL_free(got);
	struct kg_crl_info info;
	cr_assert(kg_crl_info(&c, &info));
	cr_expect_eq(info.revoked, 0);
	cr_expect_str_eq(kg_crl_state(&info, time(NULL)), "ok");

	char *pem = pem_of(forged, &len);
	cr_expect_eq(kg_crl_offer(&c, pem, len, "file", err, sizeof(err)), KG_CRL_REFUSED);
	cr_expect(strstr(err, "signature does not verify"), "%s", err);
	free(pem);
	cr_expect_eq(kg_crl_offer(&c, "junk", 4, "file", err, sizeof(err)), KG_CRL_REFUSED);
	got = kg_crl_acquire(&c, NULL, err, sizeof(err));
	cr_expect_eq(X509_CRL_cmp(got, first), 0, "a refused CRL replaced the one in force");
	X509_CRL_free(got);
	cr_assert(kg_crl_info(&c, &info));
	cr_expect_eq(info.refused, 2);
	cr_expect_eq(info.applied, 0);
	cr_expect(strncmp(info.last_refusal, "not a CRL", 9) == 0, "%s", info.last_refusal);

	pem = pem_of(second, &len);
	cr_expect_eq(kg_crl_offer(&c, pem, len, "file", err, sizeof(err)), KG_CRL_APPLIED);
	cr_expect_eq(kg_crl_offer(&c, pem, len, "file", err, sizeof(err)), KG_CRL_UNCHANGED);
	free(pem);
	cr_assert(kg_crl_info(&c, &info));
	cr_expect_eq(info.revoked, 1);
	cr_expect_eq(info.applied, 1);
	cr_expect_str_eq(info.source, "file");

	/* A config without the entry forgets it. */
	struct kg_config empty = {0};
	kg_crl_prune(&empty);
	cr_expect_not(kg_crl_info(&c, &info));
	cr_expect_eq(info.applied, 0);
	X509_CRL_free(first);
	X509_CRL_free(second);
	X509_CRL_free(forged);
	free(c.cert_path);
	free(c.crl_path);
}
