#include "certgen.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

EVP_PKEY *tc_key(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");
	cr_assert_not_null(k, "EC key generation");
	return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	cr_assert_not_null(ext, "extension %s", value);
	cr_assert_eq(X509_add_ext(cert, ext, -1), 1);
	X509_EXTENSION_free(ext);
}

X509 *tc_cert(const struct tc_cert_opts *o, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
	static long next_serial = 1000;
	X509 *x = X509_new();
	cr_assert_not_null(x);
	cr_assert_eq(X509_set_version(x, X509_VERSION_3), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), o->serial ? o->serial : next_serial++);
	cr_assert_not_null(X509_gmtime_adj(X509_getm_notBefore(x), o->not_before));
	cr_assert_not_null(X509_gmtime_adj(X509_getm_notAfter(x), o->not_after ? o->not_after : 86400));
	X509_NAME *name = X509_get_subject_name(x);
	cr_assert_eq(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
						(const unsigned char *)"kgate test", -1, -1, 0), 1);
	if (o->ou)
		cr_assert_eq(X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_ASC,
							(const unsigned char *)o->ou, -1, -1, 0), 1);
	cr_assert_eq(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
						(const unsigned char *)o->cn, -1, -1, 0), 1);
	cr_assert_eq(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name), 1);
	cr_assert_eq(X509_set_pubkey(x, key), 1);
	add_ext(x, issuer, NID_subject_key_identifier, "hash");
	add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
	if (o->ca) {
		add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
		add_ext(x, issuer, NID_key_usage, "critical,digitalSignature");
	}
	if (o->san)
		add_ext(x, issuer, NID_subject_alt_name, o->san);
	if (o->eku == TC_EKU_CLIENT)
		add_ext(x, issuer, NID_ext_key_usage, "clientAuth");
	else if (o->eku == TC_EKU_SERVER)
		add_ext(x, issuer, NID_ext_key_usage, "serverAuth");
	cr_assert_gt(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()), 0);
	return x;
}

X509_CRL *tc_crl(X509 *issuer, EVP_PKEY *sign_key, X509 *const *revoked, size_t n,
		 long next_update)
{
	X509_CRL *crl = X509_CRL_new();
	cr_assert_not_null(crl);
	cr_assert_eq(X509_CRL_set_version(crl, X509_CRL_VERSION_2), 1);
	cr_assert_eq(X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer)), 1);
	ASN1_TIME *t = X509_gmtime_adj(NULL, -3600);
	cr_assert_eq(X509_CRL_set1_lastUpdate(crl, t), 1);
	cr_assert_not_null(X509_gmtime_adj(t, next_update));
	cr_assert_eq(X509_CRL_set1_nextUpdate(crl, t), 1);
	for (size_t i = 0; i < n; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		cr_assert_not_null(r);
		cr_assert_eq(X509_REVOKED_set_serialNumber(r, X509_get_serialNumber(revoked[i])), 1);
		cr_assert_not_null(X509_gmtime_adj(t, -60));
		cr_assert_eq(X509_REVOKED_set_revocationDate(r, t), 1);
		cr_assert_eq(X509_CRL_add0_revoked(crl, r), 1);
	}
	ASN1_TIME_free(t);
	cr_assert_eq(X509_CRL_sort(crl), 1);
	cr_assert_gt(X509_CRL_sign(crl, sign_key, EVP_sha256()), 0);
	return crl;
}

static FILE *open_out(const char *path)
{
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "cannot write %s", path);
	return f;
}

void tc_write_certs(const char *path, X509 *const *certs, size_t n)
{
	FILE *f = open_out(path);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(PEM_write_X509(f, certs[i]), 1);
	cr_assert_eq(fclose(f), 0);
}

void tc_write_key(const char *path, EVP_PKEY *key, const char *pass)
{
	FILE *f = open_out(path);
	const EVP_CIPHER *enc = pass ? EVP_aes_256_cbc() : NULL;
	cr_assert_eq(PEM_write_PrivateKey(f, key, enc, (const unsigned char *)pass,
					  pass ? (int)strlen(pass) : 0, NULL, NULL), 1);
	cr_assert_eq(fclose(f), 0);
}

void tc_write_crl(const char *path, X509_CRL *crl)
{
	FILE *f = open_out(path);
	cr_assert_eq(PEM_write_X509_CRL(f, crl), 1);
	cr_assert_eq(fclose(f), 0);
}

void tc_write_text(const char *path, const char *text)
{
	FILE *f = open_out(path);
	cr_assert_eq(fputs(text, f) >= 0 || !text[0], 1);
	cr_assert_eq(fclose(f), 0);
}

void tc_dir_create(struct tc_dir *d)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(d->path, sizeof(d->path), "%s/kgate-test-XXXXXX", tmp ? tmp : "/tmp");
	cr_assert_not_null(mkdtemp(d->path), "mkdtemp");
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

void tc_dir_remove(struct tc_dir *d)
{
	if (d->path[0])
		nftw(d->path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	d->path[0] = '\0';
}

const char *tc_file(const struct tc_dir *d, const char *name)
{
	static char slots[32][PATH_MAX];
	static unsigned next;
	char *out = slots[next++ % 32];
	cr_assert_lt(snprintf(out, PATH_MAX, "%s/%s", d->path, name), PATH_MAX);
	return out;
}

size_t tc_count_files(const char *path)
{
	DIR *d = opendir(path);
	cr_assert_not_null(d, "cannot open %s", path);
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}
