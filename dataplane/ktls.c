/* Kernel TLS handoff: sequence tracking, key derivation, setsockopt. */
#include "ktls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/kdf.h>

#include "errors.h"
#include "hex.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define TLS_RT_CCS 20
#define TLS_RT_ALERT 21
#define TLS_HS_KEY_UPDATE 24

static int track_index = -1;
static pthread_once_t track_once = PTHREAD_ONCE_INIT;

static void track_index_init(void)
{
	track_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static struct kg_ktls_track *track_of(const SSL *ssl)
{
	if (track_index < 0)
		return NULL;
	return SSL_get_ex_data(ssl, track_index);
}

size_t kg_ktls_keylog_secret(const char *line, unsigned char *out, size_t outlen)
{
	const char *sp = strrchr(line, ' ');
	if (!sp)
		return 0;
	const char *hex = sp + 1;
	size_t n = strlen(hex);
	if (n % 2 != 0 || n / 2 > outlen || kg_hex_decode(out, n / 2, hex, n) < 0)
		return 0;
	return n / 2;
}

static bool starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* OpenSSL logs the application secrets right after it switched its write
 * side to them (the server's Finished was the last record under the
 * handshake keys): that is where the write sequence starts again. */
static void keylog_cb(const SSL *ssl, const char *line)
{
	struct kg_ktls_track *t = track_of(ssl);
	if (!t)
		return;
	if (starts_with(line, "SERVER_TRAFFIC_SECRET_0 ")) {
		t->server_secret_len = kg_ktls_keylog_secret(line, t->server_secret,
						     sizeof(t->server_secret));
		t->wr_seq = 0;
	} else if (starts_with(line, "CLIENT_TRAFFIC_SECRET_0 ")) {
		t->client_secret_len = kg_ktls_keylog_secret(line, t->client_secret,
						     sizeof(t->client_secret));
	}
}

/* Every record header passes here, both ways. A ChangeCipherSpec starts
 * the TLS 1.2 encrypted epoch (sequence 0); TLS 1.3 resets come from
 * keylog_cb and kg_ktls_handshake_done. */
static void msg_cb(int write_p, int version, int content_type, const void *buf,
		   size_t len, SSL *ssl, void *arg)
{
	struct kg_ktls_track *t = arg;
	const unsigned char *p = buf;
	(void)version;
	(void)ssl;
	if (content_type == SSL3_RT_HEADER && len >= 1) {
		uint64_t *seq = write_p ? &t->wr_seq : &t->rd_seq;
		if (p[0] == TLS_RT_CCS)
			*seq = 0;
		else
			(*seq)++;
	} else if (content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
		   p[0] == TLS_HS_KEY_UPDATE) {
		t->rekeyed = true;
	}
}

int kg_ktls_ctx_prepare(SSL_CTX *ctx)
{
	if (pthread_once(&track_once, track_index_init) != 0 || track_index < 0)
		return -ENOMEM;
	SSL_CTX_set_keylog_callback(ctx, keylog_cb);
	return 0;
}

int kg_ktls_track_attach(SSL *ssl, struct kg_ktls_track *t)
{
	if (track_index < 0 || SSL_set_ex_data(ssl, track_index, t) != 1)
		return -ENOMEM;
	memset(t, 0, sizeof(*t));
	SSL_set_msg_callback(ssl, msg_cb);
	SSL_set_msg_callback_arg(ssl, t);
	return 0;
}

void kg_ktls_track_detach(SSL *ssl)
{
	SSL_set_msg_callback(ssl, NULL);
	SSL_set_msg_callback_arg(ssl, NULL);
	if (track_index >= 0)
		SSL_set_ex_data(ssl, track_index, NULL);
}

void kg_ktls_handshake_done(SSL *ssl, struct kg_ktls_track *t)
{
	if (SSL_version(ssl) == TLS1_3_VERSION)
		t->rd_seq = 0;
}

/* Runs OpenSSL KDF `name` with params into out. 0 or -EINVAL. */
static int kdf_run(const char *name, const OSSL_PARAM *params, unsigned char *out,
		   size_t outlen)
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, name, NULL);
	EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	EVP_KDF_free(kdf);
	if (!kctx)
		return -EINVAL;
	int ok = EVP_KDF_derive(kctx, out, outlen, params);
	EVP_KDF_CTX_free(kctx);
	return ok == 1 ? 0 : -EINVAL;
}

/* TLS 1.3 HKDF-Expand-Label(secret, label, "", outlen) (RFC 8446 7.1). */
static int hkdf_expand_label(const EVP_MD *md, const unsigned char *secret,
			     size_t secret_len, const char *label,
			     unsigned char *out, size_t outlen)
{
	unsigned char info[2 + 1 + 255 + 1];
	size_t label_len = strlen("tls13 ") + strlen(label);
	if (label_len > 255)
		return -EINVAL;
	size_t n = 0;
	info[n++] = (unsigned char)(outlen >> 8);
	info[n++] = (unsigned char)outlen;
	info[n++] = (unsigned char)label_len;
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, strlen(label));
	n += strlen(label);
	info[n++] = 0; /* empty context */

	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						 (char *)EVP_MD_get0_name(md), 0),
		OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
						  (void *)secret, secret_len),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
		OSSL_PARAM_construct_end(),
	};
	return kdf_run("HKDF", params, out, outlen);
}

/* TLS 1.2 key block (RFC 5246 6.3): PRF(master, "key expansion",
 * server_random + client_random). */
static int tls12_key_block(SSL *ssl, const EVP_MD *md, unsigned char *out,
			   size_t outlen)
{
	unsigned char master[SSL_MAX_MASTER_KEY_LENGTH];
	unsigned char seed[13 + 2 * SSL3_RANDOM_SIZE];
	size_t mlen = SSL_SESSION_get_master_key(SSL_get_session(ssl), master,
						 sizeof(master));
	if (mlen == 0)
		return -EINVAL;
	memcpy(seed, "key expansion", 13);
	if (SSL_get_server_random(ssl, seed + 13, SSL3_RANDOM_SIZE) != SSL3_RANDOM_SIZE ||
	    SSL_get_client_random(ssl, seed + 13 + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE) !=
		    SSL3_RANDOM_SIZE)
		return -EINVAL;

	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
						 (char *)EVP_MD_get0_name(md), 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, mlen),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof(seed)),
		OSSL_PARAM_construct_end(),
	};
	int ret = kdf_run("TLS1-PRF", params, out, outlen);
	OPENSSL_cleanse(master, sizeof(master));
	return ret;
}

static void put_be64(unsigned char out[8], uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		out[i] = (unsigned char)v;
		v >>= 8;
	}
}

/* Fills one direction. iv is the full per-direction nonce material: 12
 * bytes for TLS 1.3 and for ChaCha20, the 4-byte salt for TLS 1.2 GCM. */
static void fill_crypto(union kg_ktls_crypto *ci, uint16_t version, int nid,
			const unsigned char *key, const unsigned char *iv,
			uint64_t seq)
{
	memset(ci, 0, sizeof(*ci));
	ci->info.version = version;
	if (nid == NID_chacha20_poly1305) {
		ci->info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
		memcpy(ci->chacha.key, key, TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE);
		memcpy(ci->chacha.iv, iv, TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE);
		put_be64(ci->chacha.rec_seq, seq);
		return;
	}
	bool tls13 = version == TLS_1_3_VERSION;
	unsigned char *civ, *csalt, *ckey, *cseq;
	size_t keylen;
	if (nid == NID_aes_128_gcm) {
		ci->info.cipher_type = TLS_CIPHER_AES_GCM_128;
		civ = ci->gcm128.iv;
		csalt = ci->gcm128.salt;
		ckey = ci->gcm128.key;
		cseq = ci->gcm128.rec_seq;
		keylen = TLS_CIPHER_AES_GCM_128_KEY_SIZE;
	} else {
		ci->info.cipher_type = TLS_CIPHER_AES_GCM_256;
		civ = ci->gcm256.iv;
		csalt = ci->gcm256.salt;
		ckey = ci->gcm256.key;
		cseq = ci->gcm256.rec_seq;
		keylen = TLS_CIPHER_AES_GCM_256_KEY_SIZE;
	}
	memcpy(ckey, key, keylen);
	memcpy(csalt, iv, 4);
	put_be64(cseq, seq);
	if (tls13)
		memcpy(civ, iv + 4, 8);
	else
		put_be64(civ, seq); /* TLS 1.2 explicit nonce: the sequence, as OpenSSL does */
}

int kg_ktls_derive(SSL *ssl, const struct kg_ktls_track *t,
		   struct kg_ktls_keys *keys, char *err, size_t errlen)
{
	const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
	int version = SSL_version(ssl);
	if (t->rekeyed) {
		return kg_fail(err, errlen, EPROTO, "KeyUpdate during the handshake window");
	}
	if (!cipher || (version != TLS1_2_VERSION && version != TLS1_3_VERSION)) {
		return kg_fail(err, errlen, EPROTO, "no TLS 1.2/1.3 session");
	}
	int nid = SSL_CIPHER_get_cipher_nid(cipher);
	const EVP_MD *md = SSL_CIPHER_get_handshake_digest(cipher);
	size_t keylen;
	socklen_t infolen;
	switch (nid) {
	case NID_aes_128_gcm:
		keylen = 16;
		infolen = sizeof(struct tls12_crypto_info_aes_gcm_128);
		break;
	case NID_aes_256_gcm:
		keylen = 32;
		infolen = sizeof(struct tls12_crypto_info_aes_gcm_256);
		break;
	case NID_chacha20_poly1305:
		keylen = 32;
		infolen = sizeof(struct tls12_crypto_info_chacha20_poly1305);
		break;
	default:
		return kg_fail(err, errlen, EOPNOTSUPP, "cipher %s has no kernel TLS support",
			       SSL_CIPHER_get_name(cipher));
	}
	if (!md) {
		return kg_fail(err, errlen, EOPNOTSUPP, "no handshake digest for %s",
			       SSL_CIPHER_get_name(cipher));
	}

	unsigned char ckey[32], skey[32], civ[12], siv[12];
	int ret = -EINVAL;
	if (version == TLS1_3_VERSION) {
		if (t->client_secret_len == 0 || t->server_secret_len == 0)
			return kg_fail(err, errlen, EPROTO, "TLS 1.3 traffic secrets were not captured");
		if (hkdf_expand_label(md, t->client_secret, t->client_secret_len, "key", ckey, keylen) ||
		    hkdf_expand_label(md, t->client_secret, t->client_secret_len, "iv", civ, 12) ||
		    hkdf_expand_label(md, t->server_secret, t->server_secret_len, "key", skey, keylen) ||
		    hkdf_expand_label(md, t->server_secret, t->server_secret_len, "iv", siv, 12)) {
			ret = kg_fail(err, errlen, EINVAL, "HKDF-Expand-Label failed");
			goto out;
		}
	} else {
		size_t ivlen = nid == NID_chacha20_poly1305 ? 12 : 4;
		unsigned char block[2 * 32 + 2 * 12];
		if (tls12_key_block(ssl, md, block, 2 * keylen + 2 * ivlen) < 0) {
			ret = kg_fail(err, errlen, EINVAL, "TLS 1.2 key expansion failed");
			goto out;
		}
		memcpy(ckey, block, keylen);
		memcpy(skey, block + keylen, keylen);
		memcpy(civ, block + 2 * keylen, ivlen);
		memcpy(siv, block + 2 * keylen + ivlen, ivlen);
		OPENSSL_cleanse(block, sizeof(block));
	}
	uint16_t kver = version == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION;
	fill_crypto(&keys->rx, kver, nid, ckey, civ, t->rd_seq);
	fill_crypto(&keys->tx, kver, nid, skey, siv, t->wr_seq);
	keys->len = infolen;
	ret = 0;
out:
	OPENSSL_cleanse(ckey, sizeof(ckey));
	OPENSSL_cleanse(skey, sizeof(skey));
	OPENSSL_cleanse(civ, sizeof(civ));
	OPENSSL_cleanse(siv, sizeof(siv));
	return ret;
}

int kg_ktls_install(int fd, const struct kg_ktls_keys *keys, bool *ulp_set,
		    char *err, size_t errlen)
{
	*ulp_set = false;
	if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) == -1) {
		int e = errno;
		snprintf(err, errlen, "TCP_ULP tls: %s", strerror(e));
		return -e;
	}
	*ulp_set = true;
	if (setsockopt(fd, SOL_TLS, TLS_RX, &keys->rx, keys->len) == -1) {
		int e = errno;
		snprintf(err, errlen, "TLS_RX: %s", strerror(e));
		return -e;
	}
	if (setsockopt(fd, SOL_TLS, TLS_TX, &keys->tx, keys->len) == -1) {
		int e = errno;
		snprintf(err, errlen, "TLS_TX: %s", strerror(e));
		return -e;
	}
	return 0;
}

int kg_ktls_probe(char *why, size_t whylen)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int lfd = -1, cfd = -1, afd = -1, result = 0;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || cfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) == -1 ||
	    listen(lfd, 1) == -1 || getsockname(lfd, (struct sockaddr *)&a, &alen) == -1 ||
	    connect(cfd, (struct sockaddr *)&a, sizeof(a)) == -1 ||
	    (afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) == -1) {
		snprintf(why, whylen, "probe connection on loopback failed: %s",
			 strerror(errno));
		goto out;
	}
	if (setsockopt(afd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) == -1) {
		if (errno == ENOENT)
			snprintf(why, whylen, "the kernel has no TLS ULP (CONFIG_TLS off, tls module not loadable)");
		else
			snprintf(why, whylen, "TCP_ULP tls: %s", strerror(errno));
		goto out;
	}
	snprintf(why, whylen, "TLS ULP available");
	result = 1;
out:
	if (afd >= 0)
		close(afd);
	if (cfd >= 0)
		close(cfd);
	if (lfd >= 0)
		close(lfd);
	return result;
}

int kg_ktls_send_close_notify(int fd)
{
	unsigned char alert[2] = {1 /* warning */, 0 /* close_notify */};
	char cbuf[CMSG_SPACE(sizeof(unsigned char))];
	struct iovec iov = {.iov_base = alert, .iov_len = sizeof(alert)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	memset(cbuf, 0, sizeof(cbuf));
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_TLS;
	cm->cmsg_type = TLS_SET_RECORD_TYPE;
	cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
	*CMSG_DATA(cm) = TLS_RT_ALERT;
	ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n == (ssize_t)sizeof(alert))
		return 0;
	return n < 0 ? -errno : -EAGAIN;
}

int kg_ktls_recv_record(int fd, unsigned char *type, unsigned char *buf,
			 size_t len)
{
	char cbuf[CMSG_SPACE(sizeof(unsigned char))];
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	*type = 23; /* application data unless the kernel says otherwise */
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm))
		if (cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE)
			*type = *CMSG_DATA(cm);
	return (int)n;
}
