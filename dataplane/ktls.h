/* Kernel TLS handoff (the ktls-splice and http-ktls-splice paths). After
 * OpenSSL finished the handshake over memory BIOs, kgate derives the
 * traffic keys itself and gives them to the kernel with setsockopt(SOL_TLS,
 * TLS_TX/TLS_RX), so that the kernel encrypts and decrypts records and
 * payload can be spliced.
 *
 * Why kgate derives keys for both directions: the handshake runs over
 * memory BIOs (io_uring does the socket I/O), so OpenSSL's own kTLS, which
 * needs a socket BIO, never engages; and OpenSSL 3.0 cannot offload TLS 1.3
 * receive at all. What kTLS needs besides keys is each direction's record
 * sequence number, which OpenSSL does not expose: a message callback
 * counts the records each way under the current keys (kg_ktls_track).
 *
 * Preconditions for kg_ktls_install (the caller's job, see conn.c): every
 * record OpenSSL wrote was sent, OpenSSL holds no unread record, and no
 * byte of a later record was read from the socket. */
#ifndef KGATE_KTLS_H
#define KGATE_KTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <linux/tls.h>
#include <openssl/ssl.h>

/* Counters fed by OpenSSL callbacks while the handshake runs. */
struct kg_ktls_track {
	uint64_t rd_seq; /* records read under the current read keys */
	uint64_t wr_seq; /* records written under the current write keys */
	unsigned char client_secret[64]; /* TLS 1.3 application traffic secrets */
	unsigned char server_secret[64];
	size_t client_secret_len;
	size_t server_secret_len;
	bool rekeyed; /* a KeyUpdate was seen: counted sequences are void */
};

union kg_ktls_crypto {
	struct tls_crypto_info info;
	struct tls12_crypto_info_aes_gcm_128 gcm128;
	struct tls12_crypto_info_aes_gcm_256 gcm256;
	struct tls12_crypto_info_chacha20_poly1305 chacha;
};

/* Keys for one connection: rx decrypts what the client sends, tx encrypts
 * what the server sends. */
struct kg_ktls_keys {
	union kg_ktls_crypto rx;
	union kg_ktls_crypto tx;
	socklen_t len; /* size of the cipher's crypto_info */
};

/* Once per SSL_CTX of a listener that may hand off to kTLS: installs the
 * keylog callback that captures TLS 1.3 application secrets. */
int kg_ktls_ctx_prepare(SSL_CTX *ctx);
/* One keylog line, "LABEL <client_random hex> <secret hex>": decodes the
 * secret into out. Returns its length, or 0 when the last field is not
 * even-length hex that fits outlen. Pure, so it is fuzzed on its own. */
size_t kg_ktls_keylog_secret(const char *line, unsigned char *out, size_t outlen);

/* Once per SSL, before the handshake: t must live as long as ssl. */
int kg_ktls_track_attach(SSL *ssl, struct kg_ktls_track *t);
/* Stops tracking (the connection stays on userspace TLS); t may be freed. */
void kg_ktls_track_detach(SSL *ssl);
/* Call when SSL_do_handshake returned 1: under TLS 1.3 the client's
 * application keys start here (the Finished it just sent was the last
 * record under handshake keys). */
void kg_ktls_handshake_done(SSL *ssl, struct kg_ktls_track *t);

/* Derives kernel crypto_info for both directions from the finished
 * handshake and the tracked sequence numbers. 0, or -errno with err filled
 * (-EOPNOTSUPP: a cipher the kernel cannot take; -EPROTO: no TLS 1.2/1.3
 * session, a missing secret, a KeyUpdate seen). */
int kg_ktls_derive(SSL *ssl, const struct kg_ktls_track *t,
		   struct kg_ktls_keys *keys, char *err, size_t errlen);

/* Attaches the "tls" ULP to fd and installs RX then TX. 0, or -errno with
 * err filled. After a failure past the ULP step the socket is unusable for
 * userspace TLS too: the caller must close the connection. *ulp_set tells
 * whether that step was passed. */
int kg_ktls_install(int fd, const struct kg_ktls_keys *keys, bool *ulp_set,
		    char *err, size_t errlen);

/* Does this kernel offer the TLS ULP? Probed once on a loopback pair.
 * 1 yes, 0 no (reason in why). */
int kg_ktls_probe(char *why, size_t whylen);

/* kTLS sends no close_notify by itself: one alert record via a cmsg.
 * 0, or -errno (-EAGAIN when the send buffer is full: retry on POLLOUT). */
int kg_ktls_send_close_notify(int fd);

/* recvmsg on a kTLS socket, non-blocking, with the record type: the
 * non-data record that made splice fail with EINVAL, or plaintext (type
 * 23; the kernel stops at a record of another type). Returns the bytes
 * read with *type set (0 with type 23: end of stream), or -errno. */
int kg_ktls_recv_record(int fd, unsigned char *type, unsigned char *buf,
			 size_t len);

#endif
