/* PROXY v2 header of a connection (proxy_send.h): facts from the sockets
 * and the SSL, bytes from proxy_v2.c. */
#include "proxy_send.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "proxy_v2.h"

static struct kg_pp2_bytes str_bytes(const char *s)
{
	return (struct kg_pp2_bytes){.data = s, .len = s ? strlen(s) : 0};
}

/* "RSA2048", "EC256": the key type and size of a certificate, as HAProxy
 * names it; "" when there is no key. */
static void key_alg_name(X509 *cert, char *out, size_t outlen)
{
	EVP_PKEY *pk = cert ? X509_get0_pubkey(cert) : NULL;
	out[0] = '\0';
	if (!pk)
		return;
	int id = EVP_PKEY_get_base_id(pk);
	const char *name = id == EVP_PKEY_RSA ? "RSA" : id == EVP_PKEY_EC ? "EC" :
			   id == EVP_PKEY_DSA ? "DSA" : OBJ_nid2sn(id);
	if (!name)
		return;
	if (id == EVP_PKEY_RSA || id == EVP_PKEY_EC || id == EVP_PKEY_DSA)
		snprintf(out, outlen, "%s%d", name, EVP_PKEY_get_bits(pk));
	else
		snprintf(out, outlen, "%s", name); /* ED25519: the name says the size */
}

/* The first CN of the client certificate's subject as UTF-8, in *cn
 * (OPENSSL_free it; NULL and 0 when the subject has no CN). -1 when the
 * CN cannot be converted. */
static int client_cn(X509 *peer, unsigned char **cn, size_t *len)
{
	*cn = NULL;
	*len = 0;
	const X509_NAME *subj = X509_get_subject_name(peer);
	int idx = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
	if (idx < 0)
		return 0;
	const ASN1_STRING *v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, idx));
	int n = ASN1_STRING_to_UTF8(cn, v);
	if (n < 0)
		return -EINVAL;
	*len = (size_t)n;
	return 0;
}

/* What the SSL TLV reports about ssl's session, in *s. The CN is copied
 * into *cn (OPENSSL_free it, also after a failure); key_alg is the buffer
 * s->key_alg points into. 0, or -EILSEQ with err filled. */
static int ssl_facts(SSL *ssl, struct kg_pp2_ssl *s, unsigned char **cn, char *key_alg,
		     size_t key_alg_len, char *err, size_t errlen)
{
	X509 *peer = SSL_get0_peer_certificate(ssl);
	X509 *own = SSL_get_certificate(ssl);
	s->client = KG_PP2_CLIENT_SSL;
	/* Spec: 0 only when a certificate was presented and verified. */
	s->verify = 1;
	if (peer) {
		/* A resumed session carries the certificate of the handshake
		 * that created it. */
		s->client |= KG_PP2_CLIENT_CERT_SESS;
		if (!SSL_session_reused(ssl))
			s->client |= KG_PP2_CLIENT_CERT_CONN;
		s->verify = (uint32_t)SSL_get_verify_result(ssl);
		if (client_cn(peer, cn, &s->cn.len) < 0) {
			ERR_clear_error(); /* the next connection starts clean */
			snprintf(err, errlen, "client certificate CN is not valid text");
			return -EILSEQ;
		}
		s->cn.data = *cn;
	}
	s->version = str_bytes(SSL_get_version(ssl));
	s->cipher = str_bytes(SSL_get_cipher_name(ssl));
	int sig = own ? X509_get_signature_nid(own) : NID_undef;
	s->sig_alg = str_bytes(sig != NID_undef ? OBJ_nid2sn(sig) : NULL);
	key_alg_name(own, key_alg, key_alg_len);
	s->key_alg = str_bytes(key_alg);
	return 0;
}

ssize_t kg_proxy_build_v2(int cfd, SSL *ssl, unsigned char *out, size_t cap, char *err,
			  size_t errlen)
{
	struct sockaddr_storage src, dst;
	socklen_t slen = sizeof(src), dlen = sizeof(dst);
	if (getpeername(cfd, (struct sockaddr *)&src, &slen) == -1 ||
	    getsockname(cfd, (struct sockaddr *)&dst, &dlen) == -1) {
		int e = errno;
		snprintf(err, errlen, "client socket address: %s", strerror(e));
		return -e;
	}
	struct kg_pp2_info info = {.src = (struct sockaddr *)&src, .dst = (struct sockaddr *)&dst};
	struct kg_pp2_ssl s = {0};
	unsigned char *cn = NULL;
	char key_alg[32] = "";
	ssize_t n;
	if (ssl) {
		n = ssl_facts(ssl, &s, &cn, key_alg, sizeof(key_alg), err, errlen);
		if (n < 0)
			goto free_cn;
		info.ssl = &s;
		info.authority = str_bytes(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
	}
	n = kg_pp2_write(&info, out, cap);
	if (n < 0)
		snprintf(err, errlen, "%s",
			 n == -EMSGSIZE ? "header larger than its bound (client certificate CN or "
					  "server name too long); refused rather than truncated"
			 : n == -EAFNOSUPPORT ? "client address is neither IPv4 nor IPv6"
					      : strerror((int)-n));
free_cn:
	OPENSSL_free(cn);
	return n;
}

int kg_proxy_send_v2(int cfd, SSL *ssl, int bfd, char *err, size_t errlen)
{
	unsigned char hdr[KG_PP2_MAX];
	ssize_t n = kg_proxy_build_v2(cfd, ssl, hdr, sizeof(hdr), err, errlen);
	if (n < 0)
		return (int)n;
	ssize_t w = send(bfd, hdr, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (w == -1) {
		int e = errno;
		snprintf(err, errlen, "send to backend: %s", strerror(e));
		/* The client's ENOTCONN means something else; keep them apart. */
		return e == ENOTCONN ? -EPIPE : -e;
	}
	if (w != n) {
		snprintf(err, errlen, "backend took %zd of the %zd header bytes", w, n);
		return -EAGAIN;
	}
	return 0;
}
