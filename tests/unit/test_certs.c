/* certs.c: every certificate entry rule, against a PKI generated at run
 * time (nothing here can expire), table-driven. */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/pem.h>

#include "certgen.h"
#include "certs.h"

static struct tc_dir dir;

/* Writes every file the cases below refer to. */
static void make_pki(void)
{
	const long day = 86400;
	tc_dir_create(&dir);
	EVP_PKEY *ca_key = tc_key(), *other_key = tc_key(), *srv_key = tc_key(),
		 *wrong_key = tc_key(), *leaf2_key = tc_key();
	X509 *ca = tc_cert(&(struct tc_cert_opts){.cn = "Test CA", .ca = true}, ca_key, NULL, NULL);
	X509 *other = tc_cert(&(struct tc_cert_opts){.cn = "Other CA", .ca = true}, other_key,
			      NULL, NULL);
	X509 *ca_old = tc_cert(&(struct tc_cert_opts){.cn = "Old CA", .ca = true,
						      .not_before = -10 * day, .not_after = -day},
			       other_key, NULL, NULL);
	X509 *srv = tc_cert(&(struct tc_cert_opts){.cn = "server", .eku = TC_EKU_SERVER}, srv_key,
			    ca, ca_key);
	X509 *expired = tc_cert(&(struct tc_cert_opts){.cn = "server", .not_before = -10 * day,
						       .not_after = -day}, srv_key, ca, ca_key);
	X509 *future = tc_cert(&(struct tc_cert_opts){.cn = "server", .not_before = day,
						      .not_after = 2 * day}, srv_key, ca, ca_key);
	X509 *leaf2 = tc_cert(&(struct tc_cert_opts){.cn = "leaf2"}, leaf2_key, ca, ca_key);

	tc_write_certs(tc_file(&dir, "ca.pem"), &ca, 1);
	tc_write_certs(tc_file(&dir, "bundle.pem"), (X509 *[]){ca, other}, 2);
	tc_write_certs(tc_file(&dir, "ca-expired.pem"), (X509 *[]){ca, ca_old}, 2);
	tc_write_certs(tc_file(&dir, "server.pem"), (X509 *[]){srv, ca}, 2);
	tc_write_certs(tc_file(&dir, "leaf.pem"), &srv, 1);
	tc_write_certs(tc_file(&dir, "expired.pem"), &expired, 1);
	tc_write_certs(tc_file(&dir, "future.pem"), &future, 1);
	tc_write_certs(tc_file(&dir, "chain-nonca.pem"), (X509 *[]){srv, leaf2}, 2);
	tc_write_certs(tc_file(&dir, "chain-order.pem"), (X509 *[]){srv, other}, 2);
	tc_write_key(tc_file(&dir, "server.key"), srv_key, NULL);
	tc_write_key(tc_file(&dir, "wrong.key"), wrong_key, NULL);
	tc_write_key(tc_file(&dir, "enc.key"), srv_key, "secret");

	X509_CRL *crl = tc_crl(ca, ca_key, &leaf2, 1, day);
	X509_CRL *crl_other = tc_crl(other, other_key, NULL, 0, day);
	X509_CRL *crl_badsig = tc_crl(ca, other_key, NULL, 0, day);
	X509_CRL *crl_expired = tc_crl(ca, ca_key, NULL, 0, -60);
	tc_write_crl(tc_file(&dir, "ca.crl"), crl);
	tc_write_crl(tc_file(&dir, "other.crl"), crl_other);
	tc_write_crl(tc_file(&dir, "badsig.crl"), crl_badsig);
	tc_write_crl(tc_file(&dir, "expired.crl"), crl_expired);

	tc_write_text(tc_file(&dir, "garbage.pem"), "this is not PEM at all\n");
	tc_write_text(tc_file(&dir, "empty.pem"), "");
	/* A PEM cut in the middle of its base64 body, without an END line. */
	BIO *b = BIO_new(BIO_s_mem());
	cr_assert_eq(PEM_write_bio_X509(b, srv), 1);
	char *pem;
	long n = BIO_get_mem_data(b, &pem);
	char *half = strndup(pem, (size_t)n / 2);
	tc_write_text(tc_file(&dir, "truncated.pem"), half);
	/* Same start and end lines, but the body lost some bytes. */
	char *bad = strndup(pem, (size_t)n);
	memmove(bad + 100, bad + 140, strlen(bad + 140) + 1);
	tc_write_text(tc_file(&dir, "corrupt.pem"), bad);
	free(bad);
	free(half);
	BIO_free(b);

	X509_CRL_free(crl);
	X509_CRL_free(crl_other);
	X509_CRL_free(crl_badsig);
	X509_CRL_free(crl_expired);
	X509 *all[] = {ca, other, ca_old, srv, expired, future, leaf2};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		X509_free(all[i]);
	EVP_PKEY *keys[] = {ca_key, other_key, srv_key, wrong_key, leaf2_key};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		EVP_PKEY_free(keys[i]);
}

static void drop_pki(void)
{
	tc_dir_remove(&dir);
}

struct cert_case {
	const char *desc;
	enum kg_cert_type type;
	const char *cert, *key, *crl; /* file names in the temp dir */
	const char *field;            /* NULL: valid */
	const char *want;             /* fragment of the message */
};

static const struct cert_case cases[] = {
	{"server chain leaf+CA", KG_CERT_SERVER, "server.pem", "server.key", NULL, NULL, NULL},
	{"server leaf only", KG_CERT_SERVER, "leaf.pem", "server.key", NULL, NULL, NULL},
	{"mismatched key", KG_CERT_SERVER, "server.pem", "wrong.key", NULL, "key",
	 "key does not match the certificate"},
	{"expired leaf", KG_CERT_SERVER, "expired.pem", "server.key", NULL, "cert",
	 "the certificate expired on 2"},
	{"not yet valid leaf", KG_CERT_SERVER, "future.pem", "server.key", NULL, "cert",
	 "the certificate is not valid until 2"},
	{"encrypted key", KG_CERT_SERVER, "server.pem", "enc.key", NULL, "key", "is encrypted"},
	{"garbage key", KG_CERT_SERVER, "server.pem", "garbage.pem", NULL, "key",
	 "no PEM private key"},
	{"missing key", KG_CERT_SERVER, "server.pem", "nope.key", NULL, "key",
	 "cannot open"},
	{"garbage cert", KG_CERT_SERVER, "garbage.pem", "server.key", NULL, "cert",
	 "no PEM certificate"},
	{"truncated cert", KG_CERT_SERVER, "truncated.pem", "server.key", NULL, "cert",
	 "certificate 1 in"},
	{"corrupt cert", KG_CERT_SERVER, "corrupt.pem", "server.key", NULL, "cert", "is malformed"},
	{"empty cert", KG_CERT_SERVER, "empty.pem", "server.key", NULL, "cert", "is empty"},
	{"missing cert", KG_CERT_SERVER, "nope.pem", "server.key", NULL, "cert",
	 "No such file or directory"},
	{"non-CA after leaf", KG_CERT_SERVER, "chain-nonca.pem", "server.key", NULL, "cert",
	 "is not a CA certificate; after the leaf"},
	{"chain out of order", KG_CERT_SERVER, "chain-order.pem", "server.key", NULL, "cert",
	 "did not issue certificate 1"},
	{"CA", KG_CERT_CA, "ca.pem", NULL, NULL, NULL, NULL},
	{"CA bundle of two", KG_CERT_CA, "bundle.pem", NULL, NULL, NULL, NULL},
	{"CA with CRL", KG_CERT_CA, "ca.pem", NULL, "ca.crl", NULL, NULL},
	{"CA bundle, CRL of the second", KG_CERT_CA, "bundle.pem", NULL, "other.crl", NULL, NULL},
	{"non-CA as CA", KG_CERT_CA, "leaf.pem", NULL, NULL, "cert", "CA:TRUE"},
	{"server chain as CA", KG_CERT_CA, "server.pem", NULL, NULL, "cert",
	 "certificate 1 (CN=server,O=kgate test) in"},
	{"expired CA in bundle", KG_CERT_CA, "ca-expired.pem", NULL, NULL, "cert",
	 "certificate 2 (CN=Old CA,O=kgate test) expired on"},
	{"garbage CA", KG_CERT_CA, "garbage.pem", NULL, NULL, "cert", "no PEM certificate"},
	{"empty CA", KG_CERT_CA, "empty.pem", NULL, NULL, "cert", "is empty"},
	{"CRL from another CA", KG_CERT_CA, "ca.pem", NULL, "other.crl", "crl",
	 "is not in the CA bundle"},
	{"CRL with a bad signature", KG_CERT_CA, "ca.pem", NULL, "badsig.crl", "crl",
	 "signature does not verify"},
	{"expired CRL", KG_CERT_CA, "ca.pem", NULL, "expired.crl", "crl", "expired on"},
	{"garbage CRL", KG_CERT_CA, "ca.pem", NULL, "garbage.pem", "crl", "no PEM CRL"},
	{"missing CRL", KG_CERT_CA, "ca.pem", NULL, "nope.crl", "crl", "cannot open"},
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

TC_INDEX_PARAMS(certs, validate, N_CASES)

static char *maybe_path(const char *name)
{
	return name ? strdup(tc_file(&dir, name)) : NULL;
}

ParameterizedTest(size_t *i, certs, validate, .init = make_pki, .fini = drop_pki)
{
	const struct cert_case *tc = &cases[*i];
	struct kg_cert_conf c = {.type = tc->type};
	snprintf(c.name, sizeof(c.name), "web");
	c.cert_path = maybe_path(tc->cert);
	c.key_path = maybe_path(tc->key);
	c.crl_path = maybe_path(tc->crl);
	char err[512] = "", full[600] = "", prefix[64];

	int r = kg_cert_validate(&c, err, sizeof(err));
	struct kg_config cfg = {.certs = &c, .n_certs = 1};
	int rf = kg_config_validate_files(&cfg, true, full, sizeof(full));
	char at_start[600] = "";
	int rs = kg_config_validate_files(&cfg, false, at_start, sizeof(at_start));
	/* Only dates can go wrong after an upload: those are told apart. */
	bool dated = tc->want && (strstr(tc->want, "expired on") ||
				  strstr(tc->want, "not valid until"));
	if (!tc->field) {
		cr_expect_eq(r, 0, "%s: unexpected error: %s", tc->desc, err);
		cr_expect_eq(rf, 0, "%s: unexpected error: %s", tc->desc, full);
		cr_expect_eq(rs, 0, "%s: unexpected error: %s", tc->desc, at_start);
	} else {
		int want = dated ? -EKEYEXPIRED : -EINVAL;
		cr_expect_eq(r, want, "%s: returned %d", tc->desc, r);
		cr_expect(strstr(err, tc->want), "%s: \"%s\" lacks \"%s\"", tc->desc, err, tc->want);
		snprintf(prefix, sizeof(prefix), "certificates.web.%s: ", tc->field);
		cr_expect_eq(rf, want);
		cr_expect_eq(rs, dated ? 0 : -EINVAL, "%s: at start %d", tc->desc, rs);
		cr_expect(strncmp(full, prefix, strlen(prefix)) == 0 && strstr(full, err),
			  "%s: \"%s\" should be \"%s%s\"", tc->desc, full, prefix, err);
	}
	free(c.cert_path);
	free(c.key_path);
	free(c.crl_path);
}

Test(certs, validate_files_stops_at_first_bad_entry, .init = make_pki, .fini = drop_pki)
{
	struct kg_cert_conf c[2] = {
		{.name = "good", .type = KG_CERT_CA, .cert_path = maybe_path("ca.pem")},
		{.name = "bad", .type = KG_CERT_SERVER, .cert_path = maybe_path("server.pem"),
		 .key_path = maybe_path("wrong.key")},
	};
	struct kg_config cfg = {.certs = c, .n_certs = 2};
	char err[512];
	cr_expect_eq(kg_config_validate_files(&cfg, true, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "certificates.bad.key: key does not match the certificate"), "%s", err);
	cfg.n_certs = 1;
	cr_expect_eq(kg_config_validate_files(&cfg, true, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 2; i++) {
		free(c[i].cert_path);
		free(c[i].key_path);
	}
}

/* Read access only (as root here every file is readable): the first file
 * missing is named by entry, field and path. */
Test(certs, files_readable_names_the_first_missing_file, .init = make_pki, .fini = drop_pki)
{
	struct kg_cert_conf c[2] = {
		{.name = "clients", .type = KG_CERT_CA, .cert_path = maybe_path("ca.pem"),
		 .crl_path = maybe_path("ca.crl")},
		{.name = "web", .type = KG_CERT_SERVER, .cert_path = maybe_path("server.pem"),
		 .key_path = maybe_path("gone.key")},
	};
	struct kg_config cfg = {.certs = c, .n_certs = 2};
	char err[600] = "", want[600];
	cr_expect_eq(kg_config_files_readable(&cfg, err, sizeof(err)), -ENOENT);
	snprintf(want, sizeof(want), "certificates.web.key: cannot open %s: %s", c[1].key_path,
		 strerror(ENOENT));
	cr_expect_str_eq(err, want);
	cfg.n_certs = 1;
	cr_expect_eq(kg_config_files_readable(&cfg, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 2; i++) {
		free(c[i].cert_path);
		free(c[i].key_path);
		free(c[i].crl_path);
	}
}

Test(certs, name_rules)
{
	static const struct {
		const char *name;
		int valid;
	} names[] = {
		{"web", 1}, {"a", 1}, {"*.example.com", 1}, {"prod/web-1_v2.0", 1},
		{"", 0}, {"with space", 0}, {"quote\"", 0}, {"é", 0}, {"semi;colon", 0},
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cr_expect_eq(kg_cert_name_valid(names[i].name), names[i].valid, "\"%s\"",
			     names[i].name);
	char longest[KG_NAME_MAX + 2];
	memset(longest, 'a', sizeof(longest));
	longest[KG_NAME_MAX] = '\0';
	cr_expect_eq(kg_cert_name_valid(longest), 1, "80 characters");
	longest[KG_NAME_MAX] = 'a';
	longest[KG_NAME_MAX + 1] = '\0';
	cr_expect_eq(kg_cert_name_valid(longest), 0, "81 characters");
}
