/* Test PKI made at run time with OpenSSL's API, so no fixture ever
 * expires: keys, CA/leaf certificates with chosen validity and EKU, CRLs,
 * and the temp folder they are written to. Test helpers abort the test
 * (Criterion cr_assert) on failure instead of returning errors. */
#ifndef KG_TEST_CERTGEN_H
#define KG_TEST_CERTGEN_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>

#include <criterion/parameterized.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

/* Parameters 0..count-1 for a table-driven test: Criterion re-executes
 * the binary per test, so tables are passed as indices (their pointers
 * would differ between processes). */
#define TC_INDEX_PARAMS(suite, name, count)                                    \
	ParameterizedTestParameters(suite, name)                               \
	{                                                                      \
		static size_t idx[count];                                      \
		for (size_t i = 0; i < (count); i++)                           \
			idx[i] = i;                                            \
		return cr_make_param_array(size_t, idx, (count));              \
	}

enum tc_eku { TC_EKU_NONE, TC_EKU_CLIENT, TC_EKU_SERVER };

struct tc_cert_opts {
	const char *cn;
	bool ca;
	enum tc_eku eku;
	long not_before; /* seconds relative to now */
	long not_after;  /* seconds relative to now; 0 means +1 day */
	long serial;     /* 0 picks a fresh one */
	const char *ou;  /* subject OU after O, NULL for none */
	const char *san; /* subjectAltName as OpenSSL's config text
			  * ("DNS:a.example,URI:spiffe://x/y"), NULL for none */
};

EVP_PKEY *tc_key(void); /* EC P-256 */
/* issuer NULL: self-signed with key. */
X509 *tc_cert(const struct tc_cert_opts *o, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key);
/* CRL named after issuer, signed with sign_key, revoking certs[0..n). */
X509_CRL *tc_crl(X509 *issuer, EVP_PKEY *sign_key, X509 *const *revoked, size_t n,
		 long next_update);

void tc_write_certs(const char *path, X509 *const *certs, size_t n);
void tc_write_key(const char *path, EVP_PKEY *key, const char *pass);
void tc_write_crl(const char *path, X509_CRL *crl);
void tc_write_text(const char *path, const char *text);

struct tc_dir {
	char path[PATH_MAX];
};
void tc_dir_create(struct tc_dir *d);
void tc_dir_remove(struct tc_dir *d);
/* dir/name in a buffer that stays valid for the test (32 rotating slots). */
const char *tc_file(const struct tc_dir *d, const char *name);
/* Entries of a folder, dot files aside. */
size_t tc_count_files(const char *path);

#endif
