/* kgatectl's private CA: a folder that `openssl ca` understands too
 * (DIR/ca.pem, DIR/private/ca.key, DIR/serial, DIR/index.txt,
 * DIR/crlnumber, DIR/newcerts/SERIAL.pem), with safe defaults (EC P-256,
 * SHA-256) and refusals of weak choices. Every operation returns 0 or
 * -errno and fills err with "what: why"; all files are written through a
 * transaction, so a failure leaves the folder and the outputs unchanged. */
#ifndef KG_CTL_PKI_H
#define KG_CTL_PKI_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/evp.h>

#include <kgate/cert_type.h>

#include "fileio.h"
#include "index.h"

#define KG_LEAF_MAX_DAYS 825   /* CA/Browser Forum's old ceiling; above it needs --force */
#define KG_MAX_DAYS 36500

struct kg_key_spec {
	int type;  /* EVP_PKEY_EC or EVP_PKEY_RSA */
	int param; /* curve NID or RSA bits */
};

/* "ec-p256" (default), "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096";
 * RSA below 2048 bits is refused with the reason. */
int kg_key_spec_parse(const char *text, struct kg_key_spec *out, struct kg_err *err);
/* "sha256" (default), "sha384", "sha512"; md5 and sha1 refused with the reason. */
int kg_digest_parse(const char *text, const EVP_MD **out, struct kg_err *err);
/* "--days" values: 1..KG_MAX_DAYS, and at most max_days unless force. */
int kg_days_parse(const char *text, int max_days, bool force, int *out, struct kg_err *err);

/* A --san list, "DNS:a,IP:1.2.3.4,email:..,URI:..": checks each
 * "TYPE:value" so the error names the entry, and returns the list as
 * OpenSSL's v3 config syntax wants it (caller frees), or NULL. */
char *kg_san_build(const char *san, struct kg_err *err);

/* Where the CA key's passphrase comes from, if the key is encrypted. */
struct kg_ca_pass {
	const char *pass;  /* or NULL */
	bool prompt;       /* may ask on the terminal when pass is NULL */
};

struct kg_ca_init_opts {
	const char *dir;
	const char *subject;
	struct kg_key_spec key;
	const EVP_MD *md;
	int days;
	const char *serial;   /* first leaf serial in hex, or NULL for a random one */
	const char *key_pass; /* encrypts private/ca.key when set */
	bool force;           /* replace an existing CA (and empty its database) */
};

struct kg_issue_opts {
	const char *dir;
	enum kg_cert_type type; /* KG_CERT_CLIENT, KG_CERT_SERVER or KG_CERT_PEER */
	const char *subject;
	const char *san;      /* "DNS:a,IP:1.2.3.4,email:..,URI:.." or NULL */
	const char *ocsp_url; /* an http:// OCSP responder for the AIA extension, or NULL */
	const char *crl_url;  /* an http:// CRL distribution point, or NULL */
	int days;
	struct kg_key_spec key;
	const EVP_MD *md;
	const char *out;      /* writes out.pem and out.key */
	const char *key_pass; /* encrypts out.key when set */
	const char *p12;      /* also writes this PKCS#12 bundle when set */
	const char *p12_pass;
	struct kg_ca_pass ca_pass;
	bool force;           /* replace existing output files */
	time_t now;           /* 0: the current time */
};

struct kg_issue_result {
	char serial[KG_SERIAL_HEX_MAX];
	char not_after[KG_TIME_MAX];
};

struct kg_p12_opts {
	const char *cert, *key, *key_pass, *ca, *out, *pass;
	bool force;
};

struct kg_crl_opts {
	const char *dir, *out;
	int days;
	const EVP_MD *md;
	struct kg_ca_pass ca_pass;
	bool force;
};

struct kg_crl_result {
	char number[KG_SERIAL_HEX_MAX];
	size_t revoked;
};

struct kg_ca_entry {
	char serial[KG_SERIAL_HEX_MAX];
	const char *subject;   /* points into the index */
	const char *type;      /* client, server, client+server, other, unknown */
	time_t not_after;
	const char *status;    /* valid, revoked, expired */
	time_t revoked_at;     /* 0 unless revoked */
	const char *reason;    /* NULL unless recorded */
};

struct kg_ca_list {
	struct kg_index *idx;
	struct kg_ca_entry *entries;
	size_t n;
};

int kg_ca_init(const struct kg_ca_init_opts *o, struct kg_err *err);
int kg_ca_issue(const struct kg_issue_opts *o, struct kg_issue_result *res, struct kg_err *err);
int kg_p12_export(const struct kg_p12_opts *o, struct kg_err *err);
/* Revokes by serial (hex) or by certificate file (exactly one of them). */
int kg_ca_revoke(const char *dir, const char *serial, const char *cert_path, int reason,
		 char serial_out[KG_SERIAL_HEX_MAX], struct kg_err *err);
int kg_ca_crl(const struct kg_crl_opts *o, struct kg_crl_result *res, struct kg_err *err);
struct kg_ca_list *kg_ca_list_create(const char *dir, time_t now, struct kg_err *err);
void kg_ca_list_destroy(struct kg_ca_list *list);

#endif
