/* OCSP stapling of a listener's server certificate (kgate.json(5)
 * ocsp_stapling): the certificate's OCSP response, fetched from the
 * responder its AIA names by one thread of its own (libcurl, never on a
 * worker), checked (signature by the issuer or its delegate, validity
 * window), and handed to every handshake whose client asks for it
 * (status_request).
 *
 * Refresh: half-way between thisUpdate and nextUpdate (at least a minute
 * ahead of nextUpdate), retried every KG_STAPLE_RETRY_S after a failure.
 * A failed refresh keeps the last good response until its nextUpdate;
 * after that nothing is stapled (a stale staple is worse than none).
 *
 * Certificates are shared by content: listeners (and their rebuilt
 * SSL_CTXs) with the same certificate and responder share one fetch. */
#ifndef KGATE_STAPLE_H
#define KGATE_STAPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/ssl.h>

#define KG_STAPLE_RETRY_S 30
#define KG_STAPLE_MIN_REFRESH_S 60
#define KG_STAPLE_RESPONSE_MAX (64 * 1024)
#define KG_STAPLE_TIMEOUT_S 10

/* When to fetch again: after a good response valid from this_update to
 * next_update (0: none, then KG_OCSP_DEFAULT_MAX_AGE_S from now), or
 * after a failure (ok false). Pure. */
time_t kg_staple_next_refresh(bool ok, time_t this_update, time_t next_update, time_t now);

/* Turns stapling on for ctx, whose server certificate (and chain) are
 * loaded: finds the issuer (the chain, else ca_path's certificate when it
 * issued it) and the AIA OCSP URL, registers the certificate with the
 * stapler (starting its thread on first use) and sets the status
 * callback. The registration is released with ctx. 0, or -EINVAL with
 * the reason in err. */
int kg_staple_setup(SSL_CTX *ctx, const char *ca_path, char *err, size_t errlen);

/* What `listener show` prints of ctx's staple. */
struct kg_staple_info {
	bool on;             /* stapling set up for this SSL_CTX */
	bool have;           /* a response is stapled now */
	const char *status;  /* "good", "revoked", "unknown"; NULL without a response */
	time_t next_update;  /* of the response stapled (0: none) */
	time_t refresh_at;   /* the next fetch */
	char url[256];
	char error[160];     /* the last failure, "" after a success */
};
void kg_staple_info(SSL_CTX *ctx, struct kg_staple_info *out);

/* Fetches that succeeded / failed since start (metrics). */
void kg_staple_counts(unsigned long long *ok, unsigned long long *failed);

/* Starts the stapler thread (main, once serving; kgated --check and
 * tests never start it, so nothing is fetched there). 0 or -errno. */
int kg_staple_start(void);
/* Stops the stapler thread (main, at exit); registrations may remain. */
void kg_staple_shutdown(void);

#endif
