/* Certificate entry checks: everything that would make a listener fail or
 * misbehave at handshake time is refused here, at load, with a sentence an
 * operator can act on. */
#include "certs.h"

#include "crl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <kgate/log.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <kgate/log.h>

#define KG_PEM_MAX_BYTES (1u << 20) /* certificate bundles are kilobytes */

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen,
						      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	kg_text_one_line(err);
	ERR_clear_error();
	return -EINVAL; /* what the file holds is unusable: err says why */
}

void kg_cert_subject(const X509 *x, char *out, size_t outlen)
{
	BIO *b = BIO_new(BIO_s_mem());
	snprintf(out, outlen, "(unknown subject)");
	if (!b)
		return;
	if (X509_NAME_print_ex(b, X509_get_subject_name(x), 0,
			       XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
		char *data;
		long n = BIO_get_mem_data(b, &data);
		if (n > 0)
			snprintf(out, outlen, "%.*s", (int)n, data);
	}
	BIO_free(b);
}

/* Never prompt on a terminal: kgated runs unattended. Records that a
 * passphrase was wanted so the message can say the key is encrypted. */
X509 *kg_pem_read_cert(const char *path)
{
	FILE *f = fopen(path, "re");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	return x;
}

X509_CRL *kg_pem_read_crl(const char *path)
{
	FILE *f = fopen(path, "re");
	X509_CRL *crl = f ? PEM_read_X509_CRL(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	return crl;
}

static int no_passphrase_cb(char *buf, int size, int rwflag, void *asked)
{
	if (asked)
		*(bool *)asked = true;
	return -1;
}

/* Reads a PEM file into a memory BIO, with errno-precise messages. */
static BIO *open_pem(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	struct stat st;
	BIO *b = NULL;
	char *buf = NULL;
	if (!f) {
		fail(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &st) == -1 || !S_ISREG(st.st_mode)) {
		fail(err, errlen, "%s is not a regular file", path);
		goto close_file;
	}
	if (st.st_size == 0) {
		fail(err, errlen, "%s is empty", path);
		goto close_file;
	}
	if (st.st_size > (off_t)KG_PEM_MAX_BYTES) {
		fail(err, errlen, "%s is larger than %u bytes", path, KG_PEM_MAX_BYTES);
		goto close_file;
	}
	buf = malloc((size_t)st.st_size);
	if (!buf) {
		fail(err, errlen, "out of memory");
		goto close_file;
	}
	size_t n = fread(buf, 1, (size_t)st.st_size, f);
	if (ferror(f)) {
		fail(err, errlen, "cannot read %s", path);
		goto free_buf;
	}
	b = BIO_new(BIO_s_mem());
	if (!b || BIO_write(b, buf, (int)n) != (int)n) {
		BIO_free(b);
		b = NULL;
		fail(err, errlen, "out of memory");
	}
free_buf:
	free(buf);
close_file:
	fclose(f);
	return b;
}

/* Before reading from b: does it hold a PEM block whose label ends with
 * label ("PRIVATE KEY", "X509 CRL")? */
static bool pem_has_label(BIO *b, const char *label)
{
	char *data, tail[64];
	long n = BIO_get_mem_data(b, &data);
	snprintf(tail, sizeof(tail), "%s-----", label);
	return n > 0 && memmem(data, (size_t)n, tail, strlen(tail)) != NULL;
}

/* After a failed PEM read: true when the input simply had no (more)
 * object of the wanted kind, false when one was there but broken. */
static bool pem_ran_out(void)
{
	unsigned long e = ERR_peek_last_error();
	return ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

static const char *last_reason(void)
{
	const char *r = ERR_reason_error_string(ERR_peek_last_error());
	return r ? r : "unknown error";
}

/* Reads every certificate of a PEM file, in order; at least one. */
static STACK_OF(X509) *read_certs(const char *path, char *err, size_t errlen)
{
	STACK_OF(X509) *certs = NULL;
	BIO *b = open_pem(path, err, errlen);
	if (!b)
		return NULL;
	certs = sk_X509_new_null();
	if (!certs) {
		fail(err, errlen, "out of memory");
		goto free_bio;
	}
	for (;;) {
		X509 *x = PEM_read_bio_X509(b, NULL, no_passphrase_cb, NULL);
		if (!x) {
			if (!pem_ran_out()) {
				fail(err, errlen, "certificate %d in %s is malformed: %s",
				     sk_X509_num(certs) + 1, path, last_reason());
				goto free_certs;
			}
			ERR_clear_error();
			break;
		}
		if (!sk_X509_push(certs, x)) {
			X509_free(x);
			fail(err, errlen, "out of memory");
			goto free_certs;
		}
	}
	if (sk_X509_num(certs) == 0) {
		fail(err, errlen, "no PEM certificate (-----BEGIN CERTIFICATE-----) in %s", path);
		goto free_certs;
	}
	BIO_free(b);
	return certs;
free_certs:
	sk_X509_pop_free(certs, X509_free);
free_bio:
	BIO_free(b);
	return NULL;
}

/* what: "the certificate", "certificate 2 (CN=...)". */
static int check_dates(X509 *x, const char *what, char *err, size_t errlen)
{
	char when[64];
	int after = X509_cmp_current_time(X509_get0_notAfter(x));
	int before = X509_cmp_current_time(X509_get0_notBefore(x));
	if (after == 0 || before == 0)
		return fail(err, errlen, "%s has a malformed validity date", what);
	if (after < 0) {
		kg_asn1_time_text(X509_get0_notAfter(x), when, sizeof(when));
		fail(err, errlen, "%s expired on %s", what, when);
		return -EKEYEXPIRED;
	}
	if (before > 0) {
		kg_asn1_time_text(X509_get0_notBefore(x), when, sizeof(when));
		fail(err, errlen, "%s is not valid until %s", what, when);
		return -EKEYEXPIRED;
	}
	return 0;
}

static bool is_ca(X509 *x)
{
	return (X509_get_extension_flags(x) & EXFLAG_CA) != 0;
}

static void describe(X509 *x, int index, char *out, size_t outlen)
{
	char subject[256];
	kg_cert_subject(x, subject, sizeof(subject));
	snprintf(out, outlen, "certificate %d (%s)", index, subject);
}

static int check_server_chain(const char *path, STACK_OF(X509) *chain, char *err, size_t errlen)
{
	char what[300];
	int ret = check_dates(sk_X509_value(chain, 0), "the certificate", err, errlen);
	if (ret < 0)
		return ret;
	for (int i = 1; i < sk_X509_num(chain); i++) {
		X509 *x = sk_X509_value(chain, i);
		describe(x, i + 1, what, sizeof(what));
		if (!is_ca(x))
			return fail(err, errlen, "%s in %s is not a CA certificate; after the "
						 "leaf, a chain file holds only its issuing CAs", what, path);
		if (X509_check_issued(x, sk_X509_value(chain, i - 1)) != X509_V_OK)
			return fail(err, errlen, "%s in %s did not issue certificate %d; the chain "
						 "must be in order, leaf first", what, path, i);
		ret = check_dates(x, what, err, errlen);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static EVP_PKEY *read_key(const char *path, char *err, size_t errlen)
{
	bool asked = false;
	BIO *b = open_pem(path, err, errlen);
	if (!b)
		return NULL;
	bool has_key = pem_has_label(b, "PRIVATE KEY");
	EVP_PKEY *key = PEM_read_bio_PrivateKey(b, NULL, no_passphrase_cb, &asked);
	if (!key) {
		if (asked)
			fail(err, errlen, "the private key in %s is encrypted; kgated needs an "
					  "unencrypted PEM key (openssl pkey -in KEY -out PLAIN)", path);
		else if (!has_key)
			fail(err, errlen, "no PEM private key (-----BEGIN PRIVATE KEY-----) in %s", path);
		else
			fail(err, errlen, "the private key in %s is malformed: %s", path, last_reason());
	}
	BIO_free(b);
	return key;
}

static int validate_server(const struct kg_cert_conf *c, const char **field, char *err,
			   size_t errlen)
{
	int ret = -EINVAL;
	*field = "cert";
	STACK_OF(X509) *chain = read_certs(c->cert_path, err, errlen);
	if (!chain)
		return -EINVAL; /* err says why */
	ret = check_server_chain(c->cert_path, chain, err, errlen);
	if (ret < 0)
		goto free_chain;
	ret = -EINVAL;
	*field = "key";
	EVP_PKEY *key = read_key(c->key_path, err, errlen);
	if (!key)
		goto free_chain;
	if (X509_check_private_key(sk_X509_value(chain, 0), key) != 1)
		fail(err, errlen, "key does not match the certificate in %s", c->cert_path);
	else
		ret = 0;
	EVP_PKEY_free(key);
free_chain:
	sk_X509_pop_free(chain, X509_free);
	ERR_clear_error();
	return ret;
}

/* The CRL file of a ca entry, checked as kg_crl_offer checks a new one
 * (crl.c), so a file accepted here is one the watcher would accept. */
static int check_crl(const struct kg_cert_conf *c, STACK_OF(X509) *cas, char *err,
		     size_t errlen)
{
	char why[400];
	unsigned char *data = NULL;
	size_t len = 0;
	if (kg_crl_read_file(c->crl_path, &data, &len, why, sizeof(why)) < 0)
		return fail(err, errlen, "%s", why);
	if (len == 0) {
		free(data);
		return fail(err, errlen, "%s is empty", c->crl_path);
	}
	/* A file must be PEM (a download may be DER: crl.c). */
	if (!memmem(data, len, "-----BEGIN X509 CRL-----", 24)) {
		free(data);
		return fail(err, errlen, "no PEM CRL (-----BEGIN X509 CRL-----) in %s", c->crl_path);
	}
	X509_CRL *crl = kg_crl_parse(data, len, why, sizeof(why));
	free(data);
	if (!crl)
		return fail(err, errlen, "the CRL in %s is malformed: %s", c->crl_path, why);
	int ret = kg_crl_verify(crl, cas, c->crl_expired, time(NULL), NULL, why, sizeof(why));
	X509_CRL_free(crl);
	if (ret < 0) {
		/* "the CRL ..." becomes "the CRL in FILE ...". */
		fail(err, errlen, "the CRL in %s%s", c->crl_path,
		     strncmp(why, "the CRL", 7) == 0 ? why + 7 : why);
		return ret;
	}
	return 0;
}

static int validate_ca(const struct kg_cert_conf *c, const char **field, char *err,
		       size_t errlen)
{
	char what[300];
	int ret = -EINVAL;
	*field = "cert";
	STACK_OF(X509) *cas = read_certs(c->cert_path, err, errlen);
	if (!cas)
		return -EINVAL; /* err says why */
	for (int i = 0; i < sk_X509_num(cas); i++) {
		X509 *x = sk_X509_value(cas, i);
		describe(x, i + 1, what, sizeof(what));
		if (!is_ca(x)) {
			fail(err, errlen, "%s in %s is not a CA certificate (no basicConstraints "
					  "CA:TRUE)", what, c->cert_path);
			ret = -EINVAL;
			goto free_cas;
		}
		ret = check_dates(x, what, err, errlen);
		if (ret < 0)
			goto free_cas;
	}
	if (c->crl_path) {
		*field = "crl";
		ret = check_crl(c, cas, err, errlen);
		if (ret < 0)
			goto free_cas;
	}
	ret = 0;
free_cas:
	sk_X509_pop_free(cas, X509_free);
	return ret;
}

static int validate(const struct kg_cert_conf *c, const char **field, char *err, size_t errlen)
{
	if (c->type == KG_CERT_SERVER)
		return validate_server(c, field, err, errlen);
	return validate_ca(c, field, err, errlen);
}

int kg_cert_validate(const struct kg_cert_conf *cert, char *err, size_t errlen)
{
	const char *field;
	return validate(cert, &field, err, errlen);
}

int kg_config_validate_files(const struct kg_config *cfg, bool dates_fatal, char *err,
			     size_t errlen)
{
	for (size_t i = 0; i < cfg->n_certs; i++) {
		const struct kg_cert_conf *c = &cfg->certs[i];
		const char *field = "cert";
		char msg[512];
		int ret = validate(c, &field, msg, sizeof(msg));
		if (ret == -EKEYEXPIRED && !dates_fatal) {
			log_warn("cert.expired", KV("cert", c->name), KV("field", field),
				 KV("reason", msg), KV("effect", "listeners using it do not start"));
		} else if (ret < 0) {
			snprintf(err, errlen, "certificates.%s.%s: %s", c->name, field, msg);
			return ret;
		}
	}
	return 0;
}

int kg_config_files_readable(const struct kg_config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->n_certs; i++) {
		const struct kg_cert_conf *c = &cfg->certs[i];
		const struct {
			const char *field, *path;
		} files[] = {{"cert", c->cert_path}, {"key", c->key_path}, {"crl", c->crl_path}};
		for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
			if (files[f].path && access(files[f].path, R_OK) == -1) {
				int e = errno;
				snprintf(err, errlen, "certificates.%s.%s: cannot open %s: %s",
					 c->name, files[f].field, files[f].path, strerror(e));
				return -e;
			}
		}
	}
	return 0;
}

static int tls_certs_check(const struct kg_listener_conf *l, char *err, size_t errlen)
{
	const struct kg_cert_conf *used[] = {l->certificate, l->ca};
	for (size_t i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
		char msg[512];
		if (!used[i])
			continue;
		int ret = kg_cert_validate(used[i], msg, sizeof(msg));
		if (ret < 0) {
			snprintf(err, errlen, "certificate %s: %s", used[i]->name, msg);
			return ret;
		}
	}
	return 0;
}

int kg_listener_certs_check(const struct kg_listener_conf *l, char *err, size_t errlen)
{
	int ret = tls_certs_check(l, err, errlen);
	/* An sni entry's certificate and CA are the listener's to serve. */
	for (size_t e = 0; ret == 0 && e < l->n_sni; e++)
		ret = tls_certs_check(l->sni[e].tls, err, errlen);
	return ret;
}
