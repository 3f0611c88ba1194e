/* The server SSL_CTX of a tls/https listener, and the one place that maps
 * OpenSSL's return codes to what the event loop does next. */
#ifndef KGATE_TLS_H
#define KGATE_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "config.h"

/* Builds the SSL_CTX for a listener from its (already validated)
 * certificate entries: TLS 1.2-1.3, AEAD-only, X25519 first, renegotiation
 * off, stateful TLS 1.3 tickets with a bounded server cache, chain built
 * once, client verification per mutual_auth with CRL and clientAuth EKU.
 * Returns NULL and fills err on failure. */
SSL_CTX *kg_tls_ctx_create(const struct kg_listener_conf *l, char *err,
			   size_t errlen);

enum kg_tls_status {
	KG_TLS_OK,         /* the call made progress / completed */
	KG_TLS_WANT_READ,  /* needs more ciphertext from the peer */
	KG_TLS_WANT_WRITE, /* cannot happen with memory BIOs; treated as read */
	KG_TLS_CLOSED,     /* clean close_notify from the peer */
	KG_TLS_ERROR,      /* fatal: protocol error, verify failure, EOF without close_notify */
};

/* Maps ret from SSL_do_handshake/SSL_read/SSL_write. On KG_TLS_ERROR,
 * when reason is not NULL, writes one line saying why: the verify result
 * when the client certificate was rejected, else the first queued OpenSSL
 * error. Always clears the error queue so the next call starts clean. */
enum kg_tls_status kg_tls_status(SSL *ssl, int ret, char *reason,
				 size_t reason_len);

#endif
