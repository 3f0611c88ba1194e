/* What OCSP responders say and where they are: the responder URL kgate
 * accepts (ocsp_url, a certificate's AIA) and the check of a response
 * against the certificate it is about. Pure OpenSSL, no I/O: the
 * workers' client (ocsp.h), the stapler (staple.h) and config.c use it. */
#ifndef KGATE_OCSP_RESP_H
#define KGATE_OCSP_RESP_H

#include <stddef.h>
#include <time.h>

#include <sys/socket.h>

#include <openssl/ocsp.h>

/* What a responder said about one certificate. */
enum kg_ocsp_status {
	KG_OCSP_GOOD,
	KG_OCSP_REVOKED,
	KG_OCSP_UNKNOWN,
};

/* How long an answer without nextUpdate is trusted (RFC 6960 leaves it
 * to the client), and how far the responder's clock may be off. */
#define KG_OCSP_DEFAULT_MAX_AGE_S 3600
#define KG_OCSP_CLOCK_SKEW_S 300
#define KG_OCSP_URL_MAX 255

/* Where a responder URL points: http only (the answer is signed, RFC 6960
 * A.1), with an IP address or "localhost", because a worker must never
 * block in a DNS lookup. */
struct kg_ocsp_target {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char host[KG_OCSP_URL_MAX + 1]; /* for the Host header, as written */
	char path[KG_OCSP_URL_MAX + 1]; /* "/" when the URL has none */
};

/* Parses "http://ADDRESS[:PORT][/PATH]" (ADDRESS an IPv4 address, [IPv6]
 * or localhost). 0, or -EINVAL with the reason in err. Pure. */
int kg_ocsp_url_parse(const char *url, struct kg_ocsp_target *t, char *err, size_t errlen);

/* Checks an OCSP response (DER) about id: successful, signed by the
 * issuer or its delegated responder (OCSP_basic_verify with certs, store
 * and flags), within thisUpdate..nextUpdate with KG_OCSP_CLOCK_SKEW_S.
 * 0 with the status and the window (next_update 0: none), or -1 with
 * why. */
int kg_ocsp_response_check(const unsigned char *der, size_t len, OCSP_CERTID *id,
			   STACK_OF(X509) *certs, X509_STORE *store, unsigned long flags,
			   enum kg_ocsp_status *status, time_t *this_update, time_t *next_update,
			   char *why, size_t whylen);

/* The names of the outcomes counted and logged ("good", "revoked",
 * "unknown"). */
const char *kg_ocsp_status_name(enum kg_ocsp_status s);

#endif
