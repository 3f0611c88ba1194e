/* Sending the PROXY v2 header (proxy_v2.h) of one connection: the
 * client's address and the address it connected to, and for a TLS client
 * the facts of its session (version, cipher, client certificate CN and
 * verify result, SNI, kgate's own certificate algorithms). Called on the
 * worker once the backend connect completed and before any client byte
 * goes to the backend, on every forwarding path; for a kTLS handoff that
 * is before the SSL is freed. */
#ifndef KGATE_PROXY_SEND_H
#define KGATE_PROXY_SEND_H

#include <stddef.h>
#include <sys/types.h>

#include <openssl/ssl.h>

/* Builds the header for the client socket cfd and its TLS session (ssl,
 * NULL for plain tcp) into out[0..cap). Its length, or -errno with a
 * one-line reason in err: -ENOTCONN when the client is already gone (it
 * reset the connection), -EMSGSIZE when the header would exceed its bound
 * (a huge CN or SNI), -EILSEQ for a CN that is not text. */
ssize_t kg_proxy_build_v2(int cfd, SSL *ssl, unsigned char *out, size_t cap, char *err,
			  size_t errlen);

/* Builds the header and writes it whole to bfd, a freshly connected
 * non-blocking backend socket. A fresh socket's send buffer always takes
 * a header this small (KG_PP2_MAX); a short write is refused (-EAGAIN)
 * rather than queued, since the spec asks for the header at once and no
 * client byte may overtake it. 0, or kg_proxy_build_v2's errors, or the
 * send's -errno (never -ENOTCONN), with a one-line reason in err. */
int kg_proxy_send_v2(int cfd, SSL *ssl, int bfd, char *err, size_t errlen);

#endif
