/* The PROXY protocol version 2 header (HAProxy's doc/proxy-protocol.txt),
 * written by a `tcp` or `tls` listener with "proxy_protocol": "v2" to the
 * backend right after connect, before any client byte.
 *
 * Pure: no sockets and no OpenSSL, so the writer is unit-tested against
 * the spec's byte layout and fuzzed on its own (tests/fuzz/fuzz_proxy_v2.c).
 * proxy_send.c gathers the facts from a connection and sends the result. */
#ifndef KGATE_PROXY_V2_H
#define KGATE_PROXY_V2_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Wire constants of the spec (section 2.2). */
#define KG_PP2_SIG "\r\n\r\n\0\r\nQUIT\n"
#define KG_PP2_SIG_LEN 12
#define KG_PP2_FIXED_LEN 16       /* signature, ver_cmd, fam, len */
#define KG_PP2_VER_CMD_PROXY 0x21 /* version 2, command PROXY */
#define KG_PP2_FAM_TCP4 0x11
#define KG_PP2_FAM_TCP6 0x21

#define KG_PP2_TYPE_AUTHORITY 0x02
#define KG_PP2_TYPE_UNIQUE_ID 0x05
#define KG_PP2_TYPE_SSL 0x20
#define KG_PP2_SUBTYPE_SSL_VERSION 0x21
#define KG_PP2_SUBTYPE_SSL_CN 0x22
#define KG_PP2_SUBTYPE_SSL_CIPHER 0x23
#define KG_PP2_SUBTYPE_SSL_SIG_ALG 0x24
#define KG_PP2_SUBTYPE_SSL_KEY_ALG 0x25

#define KG_PP2_CLIENT_SSL 0x01
#define KG_PP2_CLIENT_CERT_CONN 0x02
#define KG_PP2_CLIENT_CERT_SESS 0x04

/* The spec bounds a unique ID to 128 bytes. */
#define KG_PP2_UNIQUE_ID_MAX 128

/* The largest header kgate sends. Every field at its standard maximum
 * (IPv6, CN 64, SNI 255, unique ID 128, OpenSSL's version/cipher/algorithm
 * names) takes about 600 bytes; the bound keeps the header well inside
 * one segment, as the spec asks ("sent at once"), and inside a fresh
 * socket's send buffer. A header that would be larger is refused, never
 * truncated: a cut CN could name someone else. */
#define KG_PP2_MAX 1024

/* Bytes with an explicit length: a certificate's CN may hold any byte,
 * NUL included. len 0 = the field is left out. */
struct kg_pp2_bytes {
	const void *data;
	size_t len;
};

/* The PP2_TYPE_SSL TLV, for connections that arrived over TLS. */
struct kg_pp2_ssl {
	uint8_t client;  /* KG_PP2_CLIENT_* bits; KG_PP2_CLIENT_SSL always set by kgate */
	uint32_t verify; /* 0: the client presented a certificate and it verified */
	struct kg_pp2_bytes version; /* "TLSv1.3" */
	struct kg_pp2_bytes cn;      /* client certificate subject CN, UTF-8 */
	struct kg_pp2_bytes cipher;  /* "TLS_AES_128_GCM_SHA256" */
	struct kg_pp2_bytes sig_alg; /* signature algorithm of kgate's own certificate */
	struct kg_pp2_bytes key_alg; /* key algorithm and size of kgate's own certificate */
};

struct kg_pp2_info {
	const struct sockaddr *src; /* the client (getpeername) */
	const struct sockaddr *dst; /* where it connected to (getsockname) */
	const struct kg_pp2_ssl *ssl;    /* NULL: plain tcp, no SSL TLV */
	struct kg_pp2_bytes authority;   /* SNI host name */
	struct kg_pp2_bytes unique_id;   /* at most KG_PP2_UNIQUE_ID_MAX */
};

/* Writes the header for info into out[0..cap). Both addresses must be
 * AF_INET or AF_INET6; an IPv4 address next to an IPv6 one is written as
 * IPv4-mapped IPv6. Returns the header's length, or -EAFNOSUPPORT (other
 * families), -EINVAL (missing address, a length without data, unique ID
 * over 128 bytes), -EMSGSIZE (a TLV over 65535 bytes, or the whole over
 * KG_PP2_MAX) or -ENOSPC (over cap). Nothing is written on a refusal. */
ssize_t kg_pp2_write(const struct kg_pp2_info *info, unsigned char *out, size_t cap);

#endif
