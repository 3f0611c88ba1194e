/* The CRL in force for each ca entry (kgated(8) CRLS): what listeners
 * verify against, kept in memory so that a CRL file replaced by something
 * unusable (garbage, another signer, another issuer) never reaches a
 * listener. The in-force CRL changes only through kg_crl_offer, which
 * parses and checks the candidate first; SSL_CTX builds take a reference
 * to it (kg_crl_acquire), so the workers see a new CRL only as a new
 * listener snapshot: a pointer swap, never a parse. Any thread; a mutex
 * guards the table (held for lookups and counters, never while parsing). */
#ifndef KGATE_CRL_H
#define KGATE_CRL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/x509.h>

#include "config.h"

/* Largest CRL file or download accepted: a 100,000-entry CRL is about
 * 4.5 MB of PEM (bench/crl_bench.py). */
#define KG_CRL_MAX_BYTES (64u << 20)

/* t, a certificate's or CRL's date, as "2026-12-07 10:00:00 UTC" for
 * messages; "(unreadable date)" when there is none or it cannot be read.
 * Here because CRL and certificate checks (certs.c) both word dates so. */
void kg_asn1_time_text(const ASN1_TIME *t, char *out, size_t outlen);

/* Parses one CRL from data: PEM ("-----BEGIN X509 CRL-----") when the text
 * holds that label, else DER (what CRL distribution points serve). NULL
 * with err saying why. Pure. */
X509_CRL *kg_crl_parse(const void *data, size_t len, char *err, size_t errlen);

/* Reads the file at path (at most KG_CRL_MAX_BYTES) into a malloc'd buffer
 * (*out, *len). 0, or -errno with err naming the file. */
int kg_crl_read_file(const char *path, unsigned char **out, size_t *len, char *err,
		     size_t errlen);

/* Checks crl against the CA certificates cas: a full CRL (no delta, no
 * issuingDistributionPoint: kgate checks what OpenSSL would for those at
 * load, see tls.c), issued by one of them (by name), that CA allowed to
 * sign CRLs (keyUsage cRLSign when it has a keyUsage), signature verifying
 * with its key, lastUpdate not in the future, and nextUpdate not past
 * unless mode is warn. 0 with *signer (may be NULL) that CA, borrowed
 * from cas; -EINVAL (not this CA's CRL, or not supported) or -EKEYEXPIRED
 * (dates), with err saying why. */
int kg_crl_verify(X509_CRL *crl, STACK_OF(X509) *cas, enum kg_crl_expired mode, time_t now,
		  X509 **signer, char *err, size_t errlen);

/* What a candidate CRL did (kg_crl_offer). */
enum kg_crl_outcome {
	KG_CRL_APPLIED,   /* in force now */
	KG_CRL_UNCHANGED, /* the same CRL as the one in force (same digest) */
	KG_CRL_REFUSED,   /* unusable: the previous one stays in force */
};

/* Offers data (a whole file or download, from source: "file", "url" or
 * "control") as the new CRL of ca entry c (c->crl_path keys the entry).
 * Parsing and checking happen here, on the caller's thread; the table is
 * locked only to swap. On KG_CRL_REFUSED err says why and the refusal is
 * counted. */
enum kg_crl_outcome kg_crl_offer(const struct kg_cert_conf *c, const void *data, size_t len,
				 const char *source, char *err, size_t errlen);

/* Counts a refusal for entry name found before a candidate could be
 * offered (the file gone or unreadable), with reason. */
void kg_crl_refused(const char *name, const char *reason);

/* The CRL in force for c (a new reference: X509_CRL_free it), loading and
 * checking c->crl_path the first time, or when the entry's file is
 * another one now (a new CRL stored by the control socket). With signer,
 * also the public key its signature was verified with (a new reference:
 * EVP_PKEY_free it). NULL with err when that first load fails. */
X509_CRL *kg_crl_acquire(const struct kg_cert_conf *c, EVP_PKEY **signer, char *err,
			 size_t errlen);

struct kg_crl_info {
	bool loaded;            /* a CRL is in force for this entry */
	bool has_next_update;
	time_t last_update, next_update;
	size_t revoked;         /* entries */
	time_t applied_at;      /* when the CRL in force was applied */
	uint64_t load_us;       /* its read, parse and check */
	uint64_t applied, refused; /* reloads applied / refused since start */
	char source[16];        /* where the CRL in force came from */
	char last_refusal[256]; /* the last refusal's reason; "" when none */
	unsigned char md[32];   /* SHA-256 of the CRL in force */
};

/* What is in force for entry c's CRL file (a CRL in force for another
 * file of the same entry does not count). false when nothing is: *out
 * then still carries the entry's counters, if any. */
bool kg_crl_info(const struct kg_cert_conf *c, struct kg_crl_info *out);

/* "ok", "expired" (past nextUpdate; with crl_expired reject every client
 * is refused) or "none". */
const char *kg_crl_state(const struct kg_crl_info *i, time_t now);

/* Forgets the entries cfg no longer names as a ca with a CRL (listeners'
 * SSL_CTXs keep their own references). */
void kg_crl_prune(const struct kg_config *cfg);

#endif
