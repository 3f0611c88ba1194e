/* Stateful TLS sessions carried across an upgrade (upgrade.h), so a client
 * that resumed before it resumes after it, without paying for stateless
 * tickets on every handshake (bench/results, "tickets").
 *
 * The old process empties each listener's session cache into text, one
 * line per session: listener, session id (hex), the session (DER, base64).
 * The new process keeps those lines per listener, sorted by id, and
 * decodes a session only when a client offers its id (OpenSSL's external
 * lookup, after its own cache missed): a session nobody resumes costs its
 * ~600 bytes until the listener's SSL_CTX goes, and nothing else.
 *
 * Resumption stays within a listener: the session id context (the
 * listener's name) is in the session, and OpenSSL checks it. */
#ifndef KGATE_TLS_CARRY_H
#define KGATE_TLS_CARRY_H

#include <stdio.h>

#include <openssl/ssl.h>

/* Installs the callbacks on a stateful server SSL_CTX (session cache on):
 * the export hook and the lookup of carried sessions. 0 or -ENOMEM. */
int kg_tls_carry_setup(SSL_CTX *ctx);

/* Old side, main thread: writes every session in ctx's cache to f and
 * removes it from the cache (this process takes no new handshake after the
 * hand-over anyway). Returns how many were written, or -errno. */
int kg_tls_carry_export(SSL_CTX *ctx, const char *listener, FILE *f);

/* New side: the sessions of text's lines that name listener become
 * resumable in ctx (set up with kg_tls_carry_setup). Malformed lines are
 * skipped. Returns how many were taken, or -ENOMEM. */
int kg_tls_carry_import(SSL_CTX *ctx, const char *listener, const char *text);

#endif
