#include "pki.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>

#include "subject.h"

/* ---- parameters ---- */

int kg_key_spec_parse(const char *text, struct kg_key_spec *out, struct kg_err *err)
{
	char *end;

	if (strcmp(text, "ec-p256") == 0) {
		*out = (struct kg_key_spec){EVP_PKEY_EC, NID_X9_62_prime256v1};
		return 0;
	}
	if (strcmp(text, "ec-p384") == 0) {
		*out = (struct kg_key_spec){EVP_PKEY_EC, NID_secp384r1};
		return 0;
	}
	if (strncmp(text, "rsa-", 4) == 0) {
		errno = 0;
		long bits = strtol(text + 4, &end, 10);
		if (errno == 0 && *end == '\0' && end != text + 4) {
			if (bits < 2048)
				return kg_errf(err, EINVAL,
					       "--key %s: RSA keys below 2048 bits are weak (factorable with public resources); use rsa-2048 or larger, or ec-p256",
					       text);
			if (bits == 2048 || bits == 3072 || bits == 4096) {
				*out = (struct kg_key_spec){EVP_PKEY_RSA, (int)bits};
				return 0;
			}
		}
	}
	return kg_errf(err, EINVAL,
		       "--key %s: unknown key type (ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096)",
		       text);
}

int kg_digest_parse(const char *text, const EVP_MD **out, struct kg_err *err)
{
	if (strcasecmp(text, "md5") == 0 || strcasecmp(text, "sha1") == 0 ||
	    strcasecmp(text, "sha-1") == 0)
		return kg_errf(err, EINVAL,
			       "--digest %s: refused: %s signatures can be forged (collision attacks); use sha256, sha384 or sha512",
			       text, strncasecmp(text, "md5", 3) == 0 ? "MD5" : "SHA-1");
	if (strcmp(text, "sha256") == 0)
		*out = EVP_sha256();
	else if (strcmp(text, "sha384") == 0)
		*out = EVP_sha384();
	else if (strcmp(text, "sha512") == 0)
		*out = EVP_sha512();
	else
		return kg_errf(err, EINVAL, "--digest %s: unknown digest (sha256, sha384, sha512)",
			       text);
	return 0;
}

/* max_days 0: no ceiling but KG_MAX_DAYS. */
static int days_check(int days, int max_days, bool force, struct kg_err *err)
{
	if (days < 1 || days > KG_MAX_DAYS)
		return kg_errf(err, EINVAL, "--days %d: not a number of days from 1 to %d", days,
			       KG_MAX_DAYS);
	if (max_days > 0 && days > max_days && !force)
		return kg_errf(err, EINVAL,
			       "--days %d: leaf certificates valid beyond %d days are refused (long-lived certificates outlast key hygiene and revocation); use --force to insist",
			       days, max_days);
	return 0;
}

int kg_days_parse(const char *text, int max_days, bool force, int *out, struct kg_err *err)
{
	char *end;
	long days;

	errno = 0;
	days = strtol(text, &end, 10);
	if (errno || *end || end == text || days < 1 || days > KG_MAX_DAYS)
		return kg_errf(err, EINVAL, "--days %s: not a number of days from 1 to %d", text,
			       KG_MAX_DAYS);
	*out = (int)days;
	return days_check(*out, max_days, force, err);
}

/* ---- small helpers ---- */

static int path_join(char *buf, const char *dir, const char *name, struct kg_err *err)
{
	int n = snprintf(buf, PATH_MAX, "%s/%s", dir, name);

	if (n < 0 || n >= PATH_MAX)
		return kg_errf(err, ENAMETOOLONG, "%s/%s: path too long", dir, name);
	return 0;
}

static int path_suffix(char *buf, const char *prefix, const char *ext, struct kg_err *err)
{
	int n = snprintf(buf, PATH_MAX, "%s%s", prefix, ext);

	if (n < 0 || n >= PATH_MAX)
		return kg_errf(err, ENAMETOOLONG, "%s%s: path too long", prefix, ext);
	return 0;
}

static EVP_PKEY *key_generate(const struct kg_key_spec *spec, struct kg_err *err)
{
	EVP_PKEY *key;

	if (spec->type == EVP_PKEY_RSA)
		key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)spec->param);
	else
		key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", OBJ_nid2sn(spec->param));
	if (!key)
		kg_err_ssl(err, EIO, "key generation");
	return key;
}

/* A memory BIO's contents, staged into txn. */
static int txn_add_bio(struct kg_txn *txn, const char *path, BIO *bio, mode_t mode,
		       bool replace, struct kg_err *err)
{
	char *data;
	long len = BIO_get_mem_data(bio, &data);

	if (len < 0)
		return kg_errf(err, EIO, "%s: no data", path);
	return kg_txn_add(txn, path, data, (size_t)len, mode, replace, err);
}

static int stage_key(struct kg_txn *txn, const char *path, EVP_PKEY *key, const char *pass,
		     bool replace, struct kg_err *err)
{
	BIO *bio = BIO_new(BIO_s_mem());
	int ret;

	if (!bio)
		return kg_errf(err, ENOMEM, "%s: out of memory", path);
	/* PKCS#8 with PBES2/AES-256-CBC when a passphrase is given. */
	if (!PEM_write_bio_PrivateKey(bio, key, pass ? EVP_aes_256_cbc() : NULL,
				      (const unsigned char *)pass, pass ? (int)strlen(pass) : 0,
				      NULL, NULL))
		ret = kg_err_ssl(err, EIO, "%s: cannot encode the key", path);
	else
		ret = txn_add_bio(txn, path, bio, 0600, replace, err);
	BIO_free(bio);
	return ret;
}

static int stage_cert(struct kg_txn *txn, const char *path, X509 *cert, bool replace,
		      struct kg_err *err)
{
	BIO *bio = BIO_new(BIO_s_mem());
	int ret;

	if (!bio)
		return kg_errf(err, ENOMEM, "%s: out of memory", path);
	if (!PEM_write_bio_X509(bio, cert))
		ret = kg_err_ssl(err, EIO, "%s: cannot encode the certificate", path);
	else
		ret = txn_add_bio(txn, path, bio, 0644, replace, err);
	BIO_free(bio);
	return ret;
}

/* BIO_new_file with the error in err; NULL on failure. */
static BIO *file_open(const char *path, struct kg_err *err)
{
	BIO *bio;

	errno = 0;
	bio = BIO_new_file(path, "r");
	if (!bio) {
		kg_errf(err, errno ? errno : EIO, "%s: %s", path,
			errno ? strerror(errno) : "cannot open");
		ERR_clear_error();
	}
	return bio;
}

static X509 *cert_load(const char *path, struct kg_err *err)
{
	BIO *bio = file_open(path, err);
	X509 *cert;

	if (!bio)
		return NULL;
	cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	if (!cert)
		kg_err_ssl(err, EINVAL, "%s: not a PEM certificate", path);
	BIO_free(bio);
	return cert;
}

struct pass_ctx {
	const struct kg_ca_pass *src;
	const char *path;
	bool asked;
};

static int pass_cb(char *buf, int size, int rwflag, void *u)
{
	struct pass_ctx *p = u;
	char prompt[PATH_MAX + 32];

	p->asked = true;
	if (p->src->pass) {
		size_t len = strlen(p->src->pass);
		if (len >= (size_t)size)
			return -1;
		memcpy(buf, p->src->pass, len + 1);
		return (int)len;
	}
	if (!p->src->prompt || !isatty(STDIN_FILENO))
		return -1;
	snprintf(prompt, sizeof(prompt), "Passphrase for %s: ", p->path);
	if (EVP_read_pw_string(buf, size, prompt, 0) != 0)
		return -1;
	return (int)strlen(buf);
}

/* Loads a PEM private key; flag names the option that gives its passphrase. */
static EVP_PKEY *key_load(const char *path, const struct kg_ca_pass *src, const char *flag,
			  struct kg_err *err)
{
	struct pass_ctx ctx = {src, path, false};
	BIO *bio = file_open(path, err);
	EVP_PKEY *key;

	if (!bio)
		return NULL;
	key = PEM_read_bio_PrivateKey(bio, NULL, pass_cb, &ctx);
	BIO_free(bio);
	if (key)
		return key;
	if (ctx.asked && !src->pass && !(src->prompt && isatty(STDIN_FILENO))) {
		ERR_clear_error();
		kg_errf(err, EACCES, "%s: the key is encrypted: give %s FILE (or - to be asked)",
			path, flag);
	} else if (ctx.asked) {
		ERR_clear_error();
		kg_errf(err, EACCES, "%s: wrong passphrase (or a damaged key)", path);
	} else {
		kg_err_ssl(err, EINVAL, "%s: not a PEM private key", path);
	}
	return NULL;
}

struct ca {
	char dir[PATH_MAX];
	X509 *cert;
	EVP_PKEY *key;
};

static void ca_close(struct ca *ca)
{
	X509_free(ca->cert);
	ca->cert = NULL;
	EVP_PKEY_free(ca->key);
	ca->key = NULL;
}

/* Loads DIR/ca.pem and, when pass is not NULL, DIR/private/ca.key. */
static int ca_open(struct ca *ca, const char *dir, const struct kg_ca_pass *pass,
		   struct kg_err *err)
{
	char path[PATH_MAX];
	int ret;

	memset(ca, 0, sizeof(*ca));
	if (snprintf(ca->dir, sizeof(ca->dir), "%s", dir) >= (int)sizeof(ca->dir))
		return kg_errf(err, ENAMETOOLONG, "%s: path too long", dir);
	ret = path_join(path, dir, "ca.pem", err);
	if (ret)
		return ret;
	if (!kg_path_exists(path))
		return kg_errf(err, ENOENT, "%s: no CA here (no ca.pem; run 'kgatectl ca init')",
			       dir);
	ca->cert = cert_load(path, err);
	if (!ca->cert)
		return -EINVAL;
	if (!pass)
		return 0;
	ret = path_join(path, dir, "private/ca.key", err);
	if (ret)
		goto close_ca;
	ca->key = key_load(path, pass, "--ca-pass-file", err);
	if (!ca->key) {
		ret = -EACCES;
		goto close_ca;
	}
	if (X509_check_private_key(ca->cert, ca->key) != 1) {
		ret = kg_err_ssl(err, EINVAL, "%s: does not match %s/ca.pem", path, dir);
		goto close_ca;
	}
	return 0;

close_ca:
	ca_close(ca);
	return ret;
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value, struct kg_err *err)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!ext)
		return kg_err_ssl(err, EINVAL, "%s=%s", OBJ_nid2ln(nid), value);
	int ok = X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	if (!ok)
		return kg_err_ssl(err, ENOMEM, "%s", OBJ_nid2ln(nid));
	return 0;
}

/* A certificate body without extensions: v3, serial, names, validity
 * [now, now + days], public key. */
static X509 *cert_new(const BIGNUM *serial, const X509_NAME *subject, const X509_NAME *issuer,
		      EVP_PKEY *pub, time_t now, int days, struct kg_err *err)
{
	X509 *cert = X509_new();
	ASN1_INTEGER *sn = NULL;

	if (!cert)
		goto fail;
	sn = BN_to_ASN1_INTEGER(serial, NULL);
	if (!sn || !X509_set_version(cert, X509_VERSION_3) || !X509_set_serialNumber(cert, sn) ||
	    !X509_set_subject_name(cert, subject) || !X509_set_issuer_name(cert, issuer) ||
	    !X509_time_adj_ex(X509_getm_notBefore(cert), 0, 0, &now) ||
	    !X509_time_adj_ex(X509_getm_notAfter(cert), days, 0, &now) ||
	    !X509_set_pubkey(cert, pub))
		goto fail;
	ASN1_INTEGER_free(sn);
	return cert;

fail:
	kg_err_ssl(err, ENOMEM, "certificate");
	ASN1_INTEGER_free(sn);
	X509_free(cert);
	return NULL;
}

/* ---- init ---- */

struct made_dirs {
	char path[3][PATH_MAX];
	int n;
};

static int mkdir_track(struct made_dirs *made, const char *path, mode_t mode,
		       struct kg_err *err)
{
	if (mkdir(path, mode) == 0) {
		snprintf(made->path[made->n++], PATH_MAX, "%s", path);
		return 0;
	}
	if (errno != EEXIST)
		return kg_errf(err, errno, "%s: mkdir: %s", path, strerror(errno));
	/* An existing folder keeps its content but gets the mode we promise. */
	if (chmod(path, mode) == -1)
		return kg_errf(err, errno, "%s: chmod: %s", path, strerror(errno));
	return 0;
}

static void made_dirs_remove(struct made_dirs *made)
{
	while (made->n > 0)
		rmdir(made->path[--made->n]);
}

static int ca_exists(const char *dir, struct kg_err *err)
{
	static const char *const files[] = {"ca.pem", "private/ca.key", "index.txt", "serial"};
	char path[PATH_MAX];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		int ret = path_join(path, dir, files[i], err);
		if (ret)
			return ret;
		if (kg_path_exists(path))
			return kg_errf(err, EEXIST,
				       "%s: already holds a CA (%s); refusing to overwrite it (--force replaces it and empties its database)",
				       dir, files[i]);
	}
	return 0;
}

static X509 *ca_cert_build(const struct kg_ca_init_opts *o, const X509_NAME *name,
			   EVP_PKEY *key, struct kg_err *err)
{
	BIGNUM *serial = BN_new();
	X509 *cert = NULL;

	/* 127 random bits: unique without a database, positive in DER. */
	if (!serial || !BN_rand(serial, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY)) {
		kg_err_ssl(err, EIO, "CA serial");
		goto free_serial;
	}
	cert = cert_new(serial, name, name, key, time(NULL), o->days, err);
	if (!cert)
		goto free_serial;
	if (add_ext(cert, cert, NID_basic_constraints, "critical,CA:TRUE", err) ||
	    add_ext(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign", err) ||
	    add_ext(cert, cert, NID_subject_key_identifier, "hash", err) ||
	    add_ext(cert, cert, NID_authority_key_identifier, "keyid:always", err))
		goto free_cert;
	if (!X509_sign(cert, key, o->md)) {
		kg_err_ssl(err, EIO, "CA certificate: signing");
		goto free_cert;
	}
	BN_free(serial);
	return cert;

free_cert:
	X509_free(cert);
	cert = NULL;
free_serial:
	BN_free(serial);
	return cert;
}

/* The first leaf serial: given, or 63 random bits so that two CAs made
 * here are unlikely to share serials; then sequential like openssl ca. */
static int first_serial_text(const char *given, char text[KG_SERIAL_HEX_MAX + 1],
			     struct kg_err *err)
{
	char hex[KG_SERIAL_HEX_MAX];
	BIGNUM *bn;
	int ret;

	if (given) {
		if (kg_serial_normalize(given, hex) != 0)
			return kg_errf(err, EINVAL,
				       "--serial %s: not a positive hex number of at most 159 bits",
				       given);
	} else {
		bn = BN_new();
		if (!bn || !BN_rand(bn, 63, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY)) {
			BN_free(bn);
			return kg_err_ssl(err, EIO, "serial");
		}
		ret = kg_serial_format(bn, hex);
		BN_free(bn);
		if (ret)
			return kg_errf(err, -ret, "serial: cannot format");
	}
	snprintf(text, KG_SERIAL_HEX_MAX + 1, "%s\n", hex);
	return 0;
}

int kg_ca_init(const struct kg_ca_init_opts *o, struct kg_err *err)
{
	struct made_dirs made = {.n = 0};
	char path[PATH_MAX], serial[KG_SERIAL_HEX_MAX + 1];
	struct kg_txn *txn = NULL;
	X509_NAME *name;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	int ret;

	ret = days_check(o->days, 0, true, err);
	if (ret)
		return ret;
	name = kg_subject_parse(o->subject, err);
	if (!name)
		return -EINVAL;
	ret = first_serial_text(o->serial, serial, err);
	if (ret)
		goto free_name;
	if (!o->force) {
		ret = ca_exists(o->dir, err);
		if (ret)
			goto free_name;
	}
	key = key_generate(&o->key, err);
	if (!key) {
		ret = -EIO;
		goto free_name;
	}
	cert = ca_cert_build(o, name, key, err);
	if (!cert) {
		ret = -EIO;
		goto free_key;
	}
	/* The CA folder is world-readable (certs, CRL inputs); its key is not. */
	ret = mkdir_track(&made, o->dir, 0755, err);
	if (!ret)
		ret = path_join(path, o->dir, "private", err);
	if (!ret)
		ret = mkdir_track(&made, path, 0700, err);
	if (!ret)
		ret = path_join(path, o->dir, "newcerts", err);
	if (!ret)
		ret = mkdir_track(&made, path, 0755, err);
	if (ret)
		goto remove_dirs;
	txn = kg_txn_create();
	if (!txn) {
		ret = kg_errf(err, ENOMEM, "%s: out of memory", o->dir);
		goto remove_dirs;
	}
	bool rep = o->force;
	if ((ret = path_join(path, o->dir, "private/ca.key", err)) ||
	    (ret = stage_key(txn, path, key, o->key_pass, rep, err)) ||
	    (ret = path_join(path, o->dir, "ca.pem", err)) ||
	    (ret = stage_cert(txn, path, cert, rep, err)) ||
	    (ret = path_join(path, o->dir, "index.txt", err)) ||
	    (ret = kg_txn_add(txn, path, "", 0, 0644, rep, err)) ||
	    /* openssl ca would otherwise refuse a second cert for one subject. */
	    (ret = path_join(path, o->dir, "index.txt.attr", err)) ||
	    (ret = kg_txn_add(txn, path, "unique_subject = no\n", 19, 0644, rep, err)) ||
	    (ret = path_join(path, o->dir, "crlnumber", err)) ||
	    (ret = kg_txn_add(txn, path, "01\n", 3, 0644, rep, err)) ||
	    (ret = path_join(path, o->dir, "serial", err)) ||
	    (ret = kg_txn_add(txn, path, serial, strlen(serial), 0644, rep, err)) ||
	    (ret = kg_txn_commit(txn, err)))
		goto destroy_txn;
	kg_txn_destroy(txn);
	X509_free(cert);
	EVP_PKEY_free(key);
	X509_NAME_free(name);
	return 0;

destroy_txn:
	kg_txn_destroy(txn);
remove_dirs:
	made_dirs_remove(&made);
	X509_free(cert);
free_key:
	EVP_PKEY_free(key);
free_name:
	X509_NAME_free(name);
	return ret;
}

/* ---- issue ---- */

static bool is_ip(const char *s)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

static bool is_dns_name(const char *s)
{
	/* Letters, digits, '-', '.', and a leading "*." wildcard label. */
	if (strncmp(s, "*.", 2) == 0)
		s += 2;
	if (!*s || *s == '.' || s[strlen(s) - 1] == '.' || strstr(s, ".."))
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") ==
	       strlen(s);
}

char *kg_san_build(const char *san, struct kg_err *err)
{
	char *copy = strdup(san), *save = NULL, *out = NULL;
	size_t outlen = 0;
	FILE *f;

	if (!copy || !(f = open_memstream(&out, &outlen))) {
		free(copy);
		kg_errf(err, ENOMEM, "--san: out of memory");
		return NULL;
	}
	int n = 0;
	bool ok = true;
	for (char *tok = strtok_r(copy, ",", &save); tok && ok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		char *colon = strchr(tok, ':');
		const char *val = colon ? colon + 1 : "";
		if (!colon || !*val) {
			kg_errf(err, EINVAL, "--san %s: expected TYPE:value (DNS, IP, email, URI)",
				tok);
			ok = false;
		} else if (strncmp(tok, "DNS:", 4) == 0 && !is_dns_name(val)) {
			kg_errf(err, EINVAL, "--san %s: not a DNS name", tok);
			ok = false;
		} else if (strncmp(tok, "IP:", 3) == 0 && !is_ip(val)) {
			kg_errf(err, EINVAL, "--san %s: not an IPv4 or IPv6 address", tok);
			ok = false;
		} else if (strncmp(tok, "DNS:", 4) && strncmp(tok, "IP:", 3) &&
			   strncmp(tok, "email:", 6) && strncmp(tok, "URI:", 4)) {
			kg_errf(err, EINVAL, "--san %s: unknown type (DNS, IP, email, URI)", tok);
			ok = false;
		} else {
			fprintf(f, "%s%s", n++ ? "," : "", tok);
		}
	}
	if (ok && n == 0) {
		kg_errf(err, EINVAL, "--san: empty list");
		ok = false;
	}
	free(copy);
	if (fclose(f) != 0 || !ok) {
		if (ok)
			kg_errf(err, ENOMEM, "--san: out of memory");
		free(out);
		return NULL;
	}
	return out;
}

/* An extension holding one http:// URL (value_prefix then the URL):
 * option names the command-line option in refusals. Only http: what is
 * fetched there (OCSP answers, CRLs) is signed, and https would need a
 * trust anchor to fetch the data that says whom to trust. */
static int add_url_ext(X509 *cert, X509 *ca, int nid, const char *value_prefix,
		       const char *option, const char *url, struct kg_err *err)
{
	char *value = NULL;
	if (strncmp(url, "http://", 7) != 0 || !url[7] || strpbrk(url, ", \t\r\n"))
		return kg_errf(err, EINVAL, "%s %s: expected an http:// URL without "
					    "spaces or commas", option, url);
	if (asprintf(&value, "%s%s", value_prefix, url) == -1)
		return kg_errf(err, ENOMEM, "%s: out of memory", option);
	int ret = add_ext(cert, ca, nid, value, err);
	free(value);
	return ret;
}

/* The SAN for a server certificate given no --san: its CN. */
static char *san_default(const X509_NAME *name, struct kg_err *err)
{
	char *cn = kg_subject_get(name, NID_commonName);
	char *san = NULL;

	if (!cn) {
		kg_errf(err, EINVAL, "--subject: CN: missing");
		return NULL;
	}
	if (is_ip(cn)) {
		if (asprintf(&san, "IP:%s", cn) == -1)
			san = NULL;
	} else if (is_dns_name(cn)) {
		if (asprintf(&san, "DNS:%s", cn) == -1)
			san = NULL;
	} else {
		kg_errf(err, EINVAL,
			"--subject: CN '%s' is not a host name or IP address; give the server's names with --san",
			cn);
		OPENSSL_free(cn);
		return NULL;
	}
	if (!san)
		kg_errf(err, ENOMEM, "--san: out of memory");
	OPENSSL_free(cn);
	return san;
}

static int leaf_extensions(X509 *cert, X509 *ca, const struct kg_issue_opts *o,
			   const X509_NAME *name, struct kg_err *err)
{
	char *san = NULL;
	int ret;

	/* keyEncipherment only means something for RSA key transport. */
	const char *ku = o->key.type == EVP_PKEY_RSA ? "critical,digitalSignature,keyEncipherment"
						     : "critical,digitalSignature";
	ret = add_ext(cert, ca, NID_basic_constraints, "critical,CA:FALSE", err);
	if (!ret)
		ret = add_ext(cert, ca, NID_key_usage, ku, err);
	if (!ret)
		ret = add_ext(cert, ca, NID_ext_key_usage,
			      o->type == KG_CERT_SERVER ? "serverAuth"
			      : o->type == KG_CERT_PEER ? "serverAuth,clientAuth" : "clientAuth", err);
	if (!ret)
		ret = add_ext(cert, ca, NID_subject_key_identifier, "hash", err);
	if (!ret)
		ret = add_ext(cert, ca, NID_authority_key_identifier, "keyid:always", err);
	/* Where relying parties ask about revocation: the OCSP responder in
	 * Authority Information Access (RFC 5280 4.2.2.1), the CRL in CRL
	 * Distribution Points (4.2.1.13; kgated's crl_url). */
	if (!ret && o->ocsp_url)
		ret = add_url_ext(cert, ca, NID_info_access, "OCSP;URI:", "--ocsp-url",
				  o->ocsp_url, err);
	if (!ret && o->crl_url)
		ret = add_url_ext(cert, ca, NID_crl_distribution_points, "URI:", "--crl-url",
				  o->crl_url, err);
	if (ret)
		return ret;
	if (o->san)
		san = kg_san_build(o->san, err);
	else if (o->type == KG_CERT_SERVER || o->type == KG_CERT_PEER)
		san = san_default(name, err);
	else
		return 0;
	if (!san)
		return -EINVAL;
	ret = add_ext(cert, ca, NID_subject_alt_name, san, err);
	free(san);
	return ret;
}

static int p12_stage(struct kg_txn *txn, const char *path, const char *pass, X509 *cert,
		     EVP_PKEY *key, STACK_OF(X509) *chain, bool replace, struct kg_err *err)
{
	char *cn = kg_subject_get(X509_get_subject_name(cert), NID_commonName);
	unsigned char *der = NULL;
	PKCS12 *p12;
	int len, ret;

	/* AES-256-CBC with PBKDF2 for both bags and an HMAC-SHA256 MAC: what
	 * OpenSSL 3 picks by default, and what current browsers and curl
	 * read (the legacy RC2/3DES bags need OpenSSL's legacy provider). */
	p12 = PKCS12_create(pass, cn, key, cert, chain, NID_aes_256_cbc, NID_aes_256_cbc,
			    PKCS12_DEFAULT_ITER, -1, 0);
	OPENSSL_free(cn);
	if (!p12)
		return kg_err_ssl(err, EIO, "%s: cannot build the PKCS#12 bundle", path);
	if (!PKCS12_set_mac(p12, pass, -1, NULL, 0, PKCS12_DEFAULT_ITER, EVP_sha256())) {
		ret = kg_err_ssl(err, EIO, "%s: cannot add the PKCS#12 MAC", path);
		goto free_p12;
	}
	len = i2d_PKCS12(p12, &der);
	if (len <= 0) {
		ret = kg_err_ssl(err, EIO, "%s: cannot encode the PKCS#12 bundle", path);
		goto free_p12;
	}
	ret = kg_txn_add(txn, path, der, (size_t)len, 0600, replace, err);
	OPENSSL_free(der);
free_p12:
	PKCS12_free(p12);
	return ret;
}

static int p12_stage_one_ca(struct kg_txn *txn, const char *path, const char *pass,
			    X509 *cert, EVP_PKEY *key, X509 *ca, bool replace,
			    struct kg_err *err)
{
	STACK_OF(X509) *chain = sk_X509_new_null();
	int ret;

	if (!chain || !sk_X509_push(chain, ca)) {
		sk_X509_free(chain);
		return kg_errf(err, ENOMEM, "%s: out of memory", path);
	}
	ret = p12_stage(txn, path, pass, cert, key, chain, replace, err);
	sk_X509_free(chain);
	return ret;
}

static int refuse_existing(const char *path, bool force, struct kg_err *err)
{
	if (!force && kg_path_exists(path))
		return kg_errf(err, EEXIST, "%s: exists (use --force to replace it)", path);
	return 0;
}

/* Stages DIR/name holding text, which it frees (NULL: out of memory). */
static int stage_ca_file(struct kg_txn *txn, const char *dir, const char *name, char *text,
			 struct kg_err *err)
{
	char path[PATH_MAX];
	int ret;

	if (!text)
		return kg_errf(err, ENOMEM, "%s/%s: out of memory", dir, name);
	ret = path_join(path, dir, name, err);
	if (!ret)
		ret = kg_txn_add(txn, path, text, strlen(text), 0644, true, err);
	free(text);
	return ret;
}

/* Everything issue stages besides the outputs: newcerts copy, index, serial. */
static int stage_database(struct kg_txn *txn, const struct ca *ca, struct kg_index *idx,
			  const BIGNUM *serial, X509 *cert, const char *serial_hex,
			  struct kg_err *err)
{
	char path[PATH_MAX];
	char *subject;
	const ASN1_TIME *na = X509_get0_notAfter(cert);
	char expires[KG_TIME_MAX];
	int ret;

	if (ASN1_STRING_length(na) >= KG_TIME_MAX)
		return kg_errf(err, EINVAL, "certificate: odd notAfter");
	memcpy(expires, ASN1_STRING_get0_data(na), (size_t)ASN1_STRING_length(na));
	expires[ASN1_STRING_length(na)] = '\0';
	/* The subject as openssl ca records it. */
	subject = X509_NAME_oneline(X509_get_subject_name(cert), NULL, 0);
	if (!subject)
		return kg_errf(err, ENOMEM, "index.txt: out of memory");
	ret = kg_index_add(idx, 'V', expires, serial_hex, subject);
	OPENSSL_free(subject);
	if (ret)
		return kg_errf(err, -ret, "%s/index.txt: cannot add serial %s", ca->dir, serial_hex);

	char name[KG_SERIAL_HEX_MAX + 16];
	snprintf(name, sizeof(name), "newcerts/%s.pem", serial_hex);
	if ((ret = path_join(path, ca->dir, name, err)) ||
	    (ret = stage_cert(txn, path, cert, false, err)))
		return ret;
	ret = stage_ca_file(txn, ca->dir, "index.txt", kg_index_format(idx), err);
	if (ret)
		return ret;
	/* The serial file moves last: a crash before it leaves a serial that
	 * index.txt already holds, which the next issue refuses loudly. */
	return stage_ca_file(txn, ca->dir, "serial", kg_serial_next_text(serial), err);
}

int kg_ca_issue(const struct kg_issue_opts *o, struct kg_issue_result *res, struct kg_err *err)
{
	char cert_path[PATH_MAX], key_path[PATH_MAX], path[PATH_MAX];
	char serial_hex[KG_SERIAL_HEX_MAX];
	time_t now = o->now ? o->now : time(NULL);
	struct ca ca;
	struct kg_index *idx = NULL;
	struct kg_txn *txn = NULL;
	BIGNUM *serial = NULL;
	X509_NAME *name;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	int ret;

	ret = days_check(o->days, KG_LEAF_MAX_DAYS, o->force, err);
	if (ret)
		return ret;
	if (o->p12 && !o->p12_pass)
		return kg_errf(err, EINVAL, "--p12: needs --p12-pass-file (a bundle is never written unprotected)");
	name = kg_subject_parse(o->subject, err);
	if (!name)
		return -EINVAL;
	if ((ret = path_suffix(cert_path, o->out, ".pem", err)) ||
	    (ret = path_suffix(key_path, o->out, ".key", err)) ||
	    (ret = refuse_existing(cert_path, o->force, err)) ||
	    (ret = refuse_existing(key_path, o->force, err)) ||
	    (o->p12 && (ret = refuse_existing(o->p12, o->force, err))))
		goto free_name;
	ret = ca_open(&ca, o->dir, &o->ca_pass, err);
	if (ret)
		goto free_name;
	ret = kg_subject_check_policy(X509_get_subject_name(ca.cert), name, err);
	if (ret)
		goto close_ca;
	if ((ret = path_join(path, o->dir, "index.txt", err)))
		goto close_ca;
	idx = kg_index_load(path, err);
	if (!idx) {
		ret = -EINVAL;
		goto close_ca;
	}
	if ((ret = path_join(path, o->dir, "serial", err)) ||
	    (ret = kg_serial_read(path, &serial, err)))
		goto destroy_idx;
	if (BN_is_zero(serial) || kg_serial_format(serial, serial_hex) != 0) {
		ret = kg_errf(err, EINVAL, "%s: serial 0 is not allowed", path);
		goto free_serial;
	}
	if (kg_index_find(idx, serial_hex)) {
		ret = kg_errf(err, EEXIST,
			      "%s/serial: %s was already issued (index.txt has it); the serial file is out of step",
			      o->dir, serial_hex);
		goto free_serial;
	}
	key = key_generate(&o->key, err);
	if (!key) {
		ret = -EIO;
		goto free_serial;
	}
	cert = cert_new(serial, name, X509_get_subject_name(ca.cert), key, now, o->days, err);
	if (!cert) {
		ret = -ENOMEM;
		goto free_key;
	}
	ret = leaf_extensions(cert, ca.cert, o, name, err);
	if (ret)
		goto free_cert;
	if (!X509_sign(cert, ca.key, o->md)) {
		ret = kg_err_ssl(err, EIO, "certificate: signing");
		goto free_cert;
	}
	txn = kg_txn_create();
	if (!txn) {
		ret = kg_errf(err, ENOMEM, "out of memory");
		goto free_cert;
	}
	/* Outputs first, the CA's database last (see stage_database). */
	if ((ret = stage_cert(txn, cert_path, cert, o->force, err)) ||
	    (ret = stage_key(txn, key_path, key, o->key_pass, o->force, err)) ||
	    (o->p12 && (ret = p12_stage_one_ca(txn, o->p12, o->p12_pass, cert, key, ca.cert,
						 o->force, err))) ||
	    (ret = stage_database(txn, &ca, idx, serial, cert, serial_hex, err)) ||
	    (ret = kg_txn_commit(txn, err)))
		goto destroy_txn;
	if (res) {
		snprintf(res->serial, sizeof(res->serial), "%s", serial_hex);
		const ASN1_TIME *na = X509_get0_notAfter(cert);
		snprintf(res->not_after, sizeof(res->not_after), "%.*s", ASN1_STRING_length(na),
			 (const char *)ASN1_STRING_get0_data(na));
	}

destroy_txn:
	kg_txn_destroy(txn);
free_cert:
	X509_free(cert);
free_key:
	EVP_PKEY_free(key);
free_serial:
	BN_free(serial);
destroy_idx:
	kg_index_destroy(idx);
close_ca:
	ca_close(&ca);
free_name:
	X509_NAME_free(name);
	return ret;
}

/* ---- export-p12 ---- */

static STACK_OF(X509) *certs_load(const char *path, struct kg_err *err)
{
	STACK_OF(X509) *certs;
	BIO *bio = file_open(path, err);
	X509 *x;

	if (!bio)
		return NULL;
	certs = sk_X509_new_null();
	if (!certs) {
		kg_errf(err, ENOMEM, "%s: out of memory", path);
		BIO_free(bio);
		return NULL;
	}
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)))
		if (!sk_X509_push(certs, x)) {
			X509_free(x);
			break;
		}
	ERR_clear_error(); /* the read that ends the loop leaves "no start line" */
	BIO_free(bio);
	if (sk_X509_num(certs) == 0) {
		kg_errf(err, EINVAL, "%s: no PEM certificate in it", path);
		sk_X509_free(certs);
		return NULL;
	}
	return certs;
}

int kg_p12_export(const struct kg_p12_opts *o, struct kg_err *err)
{
	struct kg_ca_pass kp = {o->key_pass, true};
	STACK_OF(X509) *cas = NULL;
	struct kg_txn *txn = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert;
	int ret;

	ret = refuse_existing(o->out, o->force, err);
	if (ret)
		return ret;
	cert = cert_load(o->cert, err);
	if (!cert)
		return -EINVAL;
	key = key_load(o->key, &kp, "--key-pass-file", err);
	if (!key) {
		ret = -EACCES;
		goto free_cert;
	}
	if (X509_check_private_key(cert, key) != 1) {
		ret = kg_err_ssl(err, EINVAL, "%s: does not belong to %s", o->key, o->cert);
		goto free_key;
	}
	cas = certs_load(o->ca, err);
	if (!cas) {
		ret = -EINVAL;
		goto free_key;
	}
	bool issued = false;
	for (int i = 0; i < sk_X509_num(cas) && !issued; i++)
		issued = X509_check_issued(sk_X509_value(cas, i), cert) == X509_V_OK;
	if (!issued) {
		ret = kg_errf(err, EINVAL, "%s: did not issue %s", o->ca, o->cert);
		goto free_cas;
	}
	txn = kg_txn_create();
	if (!txn) {
		ret = kg_errf(err, ENOMEM, "out of memory");
		goto free_cas;
	}
	ret = p12_stage(txn, o->out, o->pass, cert, key, cas, o->force, err);
	if (!ret)
		ret = kg_txn_commit(txn, err);
	kg_txn_destroy(txn);
free_cas:
	sk_X509_pop_free(cas, X509_free);
free_key:
	EVP_PKEY_free(key);
free_cert:
	X509_free(cert);
	return ret;
}

/* ---- revoke ---- */

static int serial_of_cert(const char *path, const struct ca *ca, char out[KG_SERIAL_HEX_MAX],
			  struct kg_err *err)
{
	X509 *cert = cert_load(path, err);
	BIGNUM *bn = NULL;
	int ret = 0;

	if (!cert)
		return -EINVAL;
	/* Name chaining and the signature: a look-alike from another CA with
	 * a colliding serial must not revoke one of ours. */
	if (X509_check_issued(ca->cert, cert) != X509_V_OK ||
	    X509_verify(cert, X509_get0_pubkey(ca->cert)) != 1) {
		ERR_clear_error();
		ret = kg_errf(err, EINVAL, "%s: not issued by the CA in %s", path, ca->dir);
		goto free_cert;
	}
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	if (!bn || kg_serial_format(bn, out) != 0)
		ret = kg_errf(err, EINVAL, "%s: unusable serial number", path);
	BN_free(bn);
free_cert:
	X509_free(cert);
	return ret;
}

int kg_ca_revoke(const char *dir, const char *serial, const char *cert_path, int reason,
		 char serial_out[KG_SERIAL_HEX_MAX], struct kg_err *err)
{
	char path[PATH_MAX], hex[KG_SERIAL_HEX_MAX];
	struct kg_index_entry *e;
	struct kg_index *idx = NULL;
	struct kg_txn *txn = NULL;
	char *text = NULL;
	struct ca ca;
	int ret;

	if (!serial == !cert_path)
		return kg_errf(err, EINVAL, "revoke: give exactly one of --serial and --cert");
	if (reason != KG_REASON_NONE && !kg_reason_name(reason))
		return kg_errf(err, EINVAL, "--reason: unknown reason code %d", reason);
	ret = ca_open(&ca, dir, NULL, err);
	if (ret)
		return ret;
	if (serial && kg_serial_normalize(serial, hex) != 0) {
		ret = kg_errf(err, EINVAL, "--serial %s: not a positive hex serial number", serial);
		goto close_ca;
	}
	if (cert_path && (ret = serial_of_cert(cert_path, &ca, hex, err)))
		goto close_ca;
	if ((ret = path_join(path, dir, "index.txt", err)))
		goto close_ca;
	idx = kg_index_load(path, err);
	if (!idx) {
		ret = -EINVAL;
		goto close_ca;
	}
	e = kg_index_find(idx, hex);
	if (!e) {
		ret = kg_errf(err, ENOENT, "serial %s: not in %s (not issued by this CA)", hex, path);
		goto destroy_idx;
	}
	ret = kg_index_revoke(e, time(NULL), reason);
	if (ret == -EALREADY) {
		kg_errf(err, EALREADY, "serial %s: already revoked (%s)", hex, e->revoked);
		goto destroy_idx;
	}
	if (ret) {
		kg_errf(err, -ret, "serial %s: cannot record the revocation", hex);
		goto destroy_idx;
	}
	text = kg_index_format(idx);
	txn = kg_txn_create();
	if (!text || !txn) {
		ret = kg_errf(err, ENOMEM, "%s: out of memory", path);
		goto destroy_txn;
	}
	ret = kg_txn_add(txn, path, text, strlen(text), 0644, true, err);
	if (!ret)
		ret = kg_txn_commit(txn, err);
	if (!ret && serial_out)
		memcpy(serial_out, hex, sizeof(hex));
destroy_txn:
	kg_txn_destroy(txn);
	free(text);
destroy_idx:
	kg_index_destroy(idx);
close_ca:
	ca_close(&ca);
	return ret;
}

/* ---- crl ---- */

static int crl_add_revoked(X509_CRL *crl, const struct kg_index_entry *e, struct kg_err *err)
{
	X509_REVOKED *rev = X509_REVOKED_new();
	ASN1_TIME *when = ASN1_TIME_new();
	ASN1_ENUMERATED *code = NULL;
	ASN1_INTEGER *sn = NULL;
	BIGNUM *bn = NULL;
	int ret = -ENOMEM;

	if (!rev || !when || !BN_hex2bn(&bn, e->serial) || !(sn = BN_to_ASN1_INTEGER(bn, NULL)))
		goto fail;
	if (!ASN1_TIME_set_string(when, e->revoked) || !X509_REVOKED_set_revocationDate(rev, when) ||
	    !X509_REVOKED_set_serialNumber(rev, sn))
		goto fail;
	/* RFC 5280 5.3.1: omit reasonCode rather than send "unspecified". */
	if (e->reason > KG_REASON_UNSPECIFIED) {
		code = ASN1_ENUMERATED_new();
		if (!code || !ASN1_ENUMERATED_set(code, e->reason) ||
		    !X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, code, 0, 0))
			goto fail;
	}
	if (!X509_CRL_add0_revoked(crl, rev))
		goto fail;
	rev = NULL;
	ret = 0;
fail:
	if (ret)
		kg_err_ssl(err, -ret, "CRL: serial %s", e->serial);
	ASN1_ENUMERATED_free(code);
	ASN1_INTEGER_free(sn);
	BN_free(bn);
	ASN1_TIME_free(when);
	X509_REVOKED_free(rev);
	return ret;
}

static X509_CRL *crl_build(const struct ca *ca, const struct kg_index *idx,
			   const BIGNUM *number, const struct kg_crl_opts *o, size_t *nrevoked,
			   struct kg_err *err)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *last = NULL, *next = NULL;
	ASN1_INTEGER *num = NULL;
	X509_EXTENSION *aki = NULL;
	X509V3_CTX ctx;
	time_t now = time(NULL);

	*nrevoked = 0;
	if (!crl || !X509_CRL_set_version(crl, 1 /* v2 */) ||
	    !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert)) ||
	    !(last = X509_time_adj_ex(NULL, 0, 0, &now)) ||
	    !(next = X509_time_adj_ex(NULL, o->days, 0, &now)) ||
	    !X509_CRL_set1_lastUpdate(crl, last) || !X509_CRL_set1_nextUpdate(crl, next))
		goto fail;
	for (size_t i = 0; i < idx->n; i++) {
		const struct kg_index_entry *e = &idx->entries[i];
		/* removeFromCRL (8) belongs to delta CRLs, which kgate does not make. */
		if (e->status != 'R' || e->reason == 8)
			continue;
		if (crl_add_revoked(crl, e, err))
			goto free_crl;
		(*nrevoked)++;
	}
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, ca->cert, NULL, NULL, crl, 0);
	aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid:always");
	num = BN_to_ASN1_INTEGER(number, NULL);
	if (!aki || !X509_CRL_add_ext(crl, aki, -1) || !num ||
	    !X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) || !X509_CRL_sort(crl) ||
	    !X509_CRL_sign(crl, ca->key, o->md))
		goto fail;
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(num);
	ASN1_TIME_free(last);
	ASN1_TIME_free(next);
	return crl;

fail:
	kg_err_ssl(err, EIO, "CRL");
free_crl:
	X509_EXTENSION_free(aki);
	ASN1_INTEGER_free(num);
	ASN1_TIME_free(last);
	ASN1_TIME_free(next);
	X509_CRL_free(crl);
	return NULL;
}

int kg_ca_crl(const struct kg_crl_opts *o, struct kg_crl_result *res, struct kg_err *err)
{
	char path[PATH_MAX], numpath[PATH_MAX];
	struct kg_index *idx = NULL;
	struct kg_txn *txn = NULL;
	BIGNUM *number = NULL;
	X509_CRL *crl = NULL;
	BIO *bio = NULL;
	char *next = NULL;
	size_t nrev = 0;
	struct ca ca;
	int ret;

	ret = days_check(o->days, 0, true, err);
	if (ret)
		return ret;
	ret = ca_open(&ca, o->dir, &o->ca_pass, err);
	if (ret)
		return ret;
	if ((ret = path_join(path, o->dir, "index.txt", err)) ||
	    (ret = path_join(numpath, o->dir, "crlnumber", err)))
		goto close_ca;
	idx = kg_index_load(path, err);
	if (!idx) {
		ret = -EINVAL;
		goto close_ca;
	}
	if ((ret = kg_serial_read(numpath, &number, err)))
		goto destroy_idx;
	crl = crl_build(&ca, idx, number, o, &nrev, err);
	if (!crl) {
		ret = -EIO;
		goto free_number;
	}
	bio = BIO_new(BIO_s_mem());
	next = kg_serial_next_text(number);
	txn = kg_txn_create();
	if (!bio || !next || !txn || !PEM_write_bio_X509_CRL(bio, crl)) {
		ret = kg_err_ssl(err, ENOMEM, "%s: cannot encode the CRL", o->out);
		goto destroy_txn;
	}
	/* A CRL is republished in place, so its file is replaced. */
	if ((ret = txn_add_bio(txn, o->out, bio, 0644, true, err)) ||
	    (ret = kg_txn_add(txn, numpath, next, strlen(next), 0644, true, err)) ||
	    (ret = kg_txn_commit(txn, err)))
		goto destroy_txn;
	if (res) {
		res->revoked = nrev;
		kg_serial_format(number, res->number);
	}
destroy_txn:
	kg_txn_destroy(txn);
	free(next);
	BIO_free(bio);
	X509_CRL_free(crl);
free_number:
	BN_free(number);
destroy_idx:
	kg_index_destroy(idx);
close_ca:
	ca_close(&ca);
	return ret;
}

/* ---- list ---- */

/* client/server from the EKU of the copy in newcerts/. */
static const char *cert_type(const char *dir, const char *serial)
{
	char path[PATH_MAX];
	BIO *bio;
	X509 *cert;
	const char *type = "unknown";

	if (snprintf(path, sizeof(path), "%s/newcerts/%s.pem", dir, serial) >= (int)sizeof(path))
		return type;
	bio = BIO_new_file(path, "r");
	if (!bio) {
		ERR_clear_error();
		return type;
	}
	cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!cert) {
		ERR_clear_error();
		return type;
	}
	uint32_t xku = X509_get_extended_key_usage(cert);
	bool client = xku != UINT32_MAX && (xku & XKU_SSL_CLIENT);
	bool server = xku != UINT32_MAX && (xku & XKU_SSL_SERVER);
	type = client && server ? "client+server" : client ? "client" : server ? "server" : "other";
	X509_free(cert);
	return type;
}

struct kg_ca_list *kg_ca_list_create(const char *dir, time_t now, struct kg_err *err)
{
	char path[PATH_MAX];
	struct kg_ca_list *list;

	if (path_join(path, dir, "ca.pem", err) != 0)
		return NULL;
	if (!kg_path_exists(path)) {
		kg_errf(err, ENOENT, "%s: no CA here (no ca.pem; run 'kgatectl ca init')", dir);
		return NULL;
	}
	if (path_join(path, dir, "index.txt", err) != 0)
		return NULL;
	list = calloc(1, sizeof(*list));
	if (!list) {
		kg_errf(err, ENOMEM, "out of memory");
		return NULL;
	}
	list->idx = kg_index_load(path, err);
	if (!list->idx)
		goto destroy_list;
	list->entries = calloc(list->idx->n ? list->idx->n : 1, sizeof(*list->entries));
	if (!list->entries) {
		kg_errf(err, ENOMEM, "out of memory");
		goto destroy_list;
	}
	for (size_t i = 0; i < list->idx->n; i++) {
		const struct kg_index_entry *e = &list->idx->entries[i];
		struct kg_ca_entry *c = &list->entries[i];
		memcpy(c->serial, e->serial, sizeof(c->serial));
		c->subject = e->subject;
		c->type = cert_type(dir, e->serial);
		if (kg_time_from_text(e->expires, &c->not_after) != 0)
			c->not_after = 0;
		c->status = kg_index_status(e, now);
		if (e->status == 'R') {
			if (kg_time_from_text(e->revoked, &c->revoked_at) != 0)
				c->revoked_at = 0;
			c->reason = e->rev_info ? kg_reason_name(e->reason) : NULL;
		}
	}
	list->n = list->idx->n;
	return list;

destroy_list:
	kg_ca_list_destroy(list);
	return NULL;
}

void kg_ca_list_destroy(struct kg_ca_list *list)
{
	if (!list)
		return;
	kg_index_destroy(list->idx);
	free(list->entries);
	free(list);
}
