/* The server SSL_CTX of a tls/https listener, and the one place that maps
 * OpenSSL's return codes to what the event loop does next. */
#ifndef KGATE_TLS_H
#define KGATE_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "config.h"

struct kg_ticket_keys;

/* Builds the SSL_CTX for a listener from its (already validated)
 * certificate entries: TLS 1.2-1.3, AEAD-only, X25519 first, renegotiation
 * off, one session ticket per handshake, stateless (encrypted under
 * tickets, which must outlive the SSL_CTX; NULL: OpenSSL's own keys of
 * this SSL_CTX) or stateful with a bounded server cache, chain built
 * once, client verification per mutual_auth with CRL and clientAuth EKU,
 * then l's access rules (with rules, l must outlive the SSL_CTX: a
 * snapshot holds its document). Returns NULL and fills err on failure. */
SSL_CTX *kg_tls_ctx_create(const struct kg_listener_conf *l, struct kg_ticket_keys *tickets,
			   char *err, size_t errlen);
/* With sni entries (l->sni), the SSL_CTX also holds one SSL_CTX per entry,
 * built the same way from the entry's settings, and switches a
 * handshake to the entry of the ClientHello's server name before it
 * answers (certificate, client CA names, verification, session id
 * context); strict_sni refuses other names with unrecognized_name. */

/* Calls fn on each sni entry's SSL_CTX of a listener's ctx (what the
 * listener's own SSL_CTX needs, e.g. kTLS key tracking, they need too);
 * stops at and returns the first negative result, else 0. */
int kg_tls_ctx_for_each_sni(SSL_CTX *ctx, int (*fn)(SSL_CTX *ctx));

/* The settings (a listener's, or one of its sni entries') under which
 * ssl's handshake runs or ran: after the ClientHello, the entry's. */
const struct kg_listener_conf *kg_tls_conf_of(const SSL *ssl);

/* The start of the reason of a handshake strict_sni refused. */
#define KG_TLS_SNI_REFUSED "strict_sni"

/* Whether l's sessions live in its SSL_CTX's cache (resumption on, stateful),
 * which an upgrade carries over (tls_carry.h). */
bool kg_tls_carries_sessions(const struct kg_listener_conf *l);

/* Frees the certificates the client sent besides its own once forwarding
 * has started and nothing reads them any more (the https identity headers,
 * Client-Cert-Chain included, are made at the start), unless l's sessions
 * are cached and so shared with other connections. About 4 KiB per idle
 * connection for each one (an intermediate, or a root a client sends too). */
void kg_tls_drop_peer_chain(SSL *ssl, const struct kg_listener_conf *l);

/* Whether l has access rules to enforce (rules, or access_default deny). */
bool kg_tls_access_on(const struct kg_listener_conf *l);
/* Whether they refuse inside the handshake (tls, or https with
 * access_denied_response alert); otherwise the https forwarder answers
 * 403 (conn.c evaluates them once the handshake is done). */
bool kg_tls_access_in_handshake(const struct kg_listener_conf *l);

enum kg_tls_status {
	KG_TLS_OK,         /* the call made progress / completed */
	KG_TLS_WANT_READ,  /* needs more ciphertext from the peer */
	KG_TLS_WANT_WRITE, /* cannot happen with memory BIOs; treated as read */
	KG_TLS_WANT_ASYNC, /* the handshake waits in its async job for an OCSP answer (ocsp.h) */
	KG_TLS_CLOSED,     /* clean close_notify from the peer */
	KG_TLS_ERROR,      /* fatal: protocol error, verify failure, EOF without close_notify */
};

/* Maps ret from SSL_do_handshake/SSL_read/SSL_write. On KG_TLS_ERROR,
 * when reason is not NULL, writes one line saying why: the verify result
 * when the client certificate was rejected, else the first queued OpenSSL
 * error. Always clears the error queue so the next call starts clean. */
enum kg_tls_status kg_tls_status(SSL *ssl, int ret, char *reason,
				 size_t reason_len);

/* Why a handshake failed, for counters (stats, metrics). */
enum kg_hs_reason {
	KG_HS_NO_CERT,    /* a certificate was required and none came */
	KG_HS_UNKNOWN_CA, /* chain does not lead to the configured CA */
	KG_HS_EXPIRED,    /* expired or not yet valid (certificate or CRL) */
	KG_HS_REVOKED,    /* listed in the CRL */
	KG_HS_BAD_EKU,    /* no extendedKeyUsage clientAuth / wrong purpose */
	KG_HS_PROTOCOL,   /* everything else: versions, ciphers, garbage, EOF */
	KG_HS_ACCESS_DENIED, /* verified, then refused by the listener's access rules */
	KG_HS_UNKNOWN_SNI, /* strict_sni: no server name, or one no sni entry has */
	KG_HS_OCSP,       /* ocsp hard: the responder gave no usable answer or does not know it */
	KG_HS_REASONS
};

/* Names for the reasons above ("no_cert", "unknown_ca", ...). */
extern const char *const kg_hs_reason_names[KG_HS_REASONS];

/* Classifies a failed handshake from the SSL's verify result and the
 * reason text kg_tls_status wrote for it. */
enum kg_hs_reason kg_tls_failure_reason(const SSL *ssl, const char *reason);

/* Largest TLS record kgate accepts: header, 2^14 plaintext and the
 * 2048 bytes of expansion RFC 8446/5246 allow. */
#define KG_TLS_RECORD_MAX (5 + 16384 + 2048)

/* Record framing on ciphertext the client sent: the length of the
 * complete record starting at p; 0 when more bytes are needed; SIZE_MAX
 * when p does not start a plausible record (OpenSSL gets the bytes and
 * says what is wrong with them). Pure, so it is fuzzed on its own. */
size_t kg_tls_record_len(const unsigned char *p, size_t avail);

#endif
