/* OCSP answers a worker remembers, keyed by the DER of the certificate's
 * CertID (RFC 6960 4.1.1: hash of the issuer name and key, serial).
 *
 * Bounded in entries: when full, an insert replaces the entry that
 * expires first (an expired one before any other). Times are wall-clock
 * seconds, as nextUpdate is. Pure and single-threaded (one per worker),
 * so it is unit tested on its own. */
#ifndef KGATE_OCSP_CACHE_H
#define KGATE_OCSP_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ocsp_resp.h"

/* Longest CertID DER kept: SHA-1 (or SHA-256) hashes and a serial of up
 * to 20 octets fit in well under this. */
#define KG_OCSP_ID_MAX 160

struct kg_ocsp_cache_entry {
	unsigned char id[KG_OCSP_ID_MAX];
	size_t id_len;   /* 0: free */
	enum kg_ocsp_status status;
	time_t expires;  /* nextUpdate, or thisUpdate + the default max age */
};

struct kg_ocsp_cache {
	struct kg_ocsp_cache_entry *e;
	size_t cap;
};

/* 0, or -ENOMEM. cap >= 1. */
int kg_ocsp_cache_init(struct kg_ocsp_cache *c, size_t cap);
void kg_ocsp_cache_destroy(struct kg_ocsp_cache *c);
/* The fresh answer for id at now (expires > now): true and *status set;
 * false when there is none or it has expired (an expired entry is
 * dropped: a stale answer is never trusted). */
bool kg_ocsp_cache_get(struct kg_ocsp_cache *c, const unsigned char *id, size_t id_len,
		       time_t now, enum kg_ocsp_status *status);
/* Remembers status for id until expires (replacing an older answer).
 * 0; -EINVAL for an id longer than KG_OCSP_ID_MAX or an answer already
 * expired at now (nothing is stored). */
int kg_ocsp_cache_put(struct kg_ocsp_cache *c, const unsigned char *id, size_t id_len,
		      enum kg_ocsp_status status, time_t expires, time_t now);
/* Entries held (expired ones not yet replaced included). */
size_t kg_ocsp_cache_count(const struct kg_ocsp_cache *c);

#endif
