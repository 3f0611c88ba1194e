/* kTLS key derivation and record-sequence tracking, checked without a kTLS
 * kernel: a real OpenSSL client talks to a tracked server over memory
 * BIOs; the keys kg_ktls_derive produces must decrypt the client's next
 * record (what the kernel's TLS_RX would do) and encrypt a record the
 * client accepts (TLS_TX). A wrong key, IV, salt or sequence number fails
 * the AEAD tag. The kernel side is exercised in the VM lane. */
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "certgen.h"
#include "ktls.h"

struct variant {
	int version;        /* TLS1_2_VERSION / TLS1_3_VERSION */
	const char *cipher; /* TLS 1.2 cipher list or TLS 1.3 suite */
	bool early_data;    /* client pipelines a record behind its Finished */
	bool resume;        /* second connection resumes the first one's session */
};

static const struct variant variants[] = {
	{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", false, false},
	{TLS1_3_VERSION, "TLS_AES_256_GCM_SHA384", false, false},
	{TLS1_3_VERSION, "TLS_CHACHA20_POLY1305_SHA256", false, false},
	{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", true, false},
	{TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", false, true},
	{TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", false, false},
	{TLS1_2_VERSION, "ECDHE-ECDSA-AES256-GCM-SHA384", false, false},
	{TLS1_2_VERSION, "ECDHE-ECDSA-CHACHA20-POLY1305", false, false},
	{TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", true, false},
	{TLS1_2_VERSION, "ECDHE-ECDSA-AES128-GCM-SHA256", false, true},
};
#define N_VARIANTS (sizeof(variants) / sizeof(variants[0]))

struct side {
	SSL *ssl;
	BIO *in, *out; /* owned by ssl */
};

static SSL_CTX *server_ctx(const struct variant *v)
{
	EVP_PKEY *key = tc_key();
	struct tc_cert_opts o = {.cn = "localhost", .eku = TC_EKU_SERVER};
	X509 *cert = tc_cert(&o, key, NULL, NULL);
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	cr_assert_not_null(ctx);
	cr_assert_eq(SSL_CTX_use_certificate(ctx, cert), 1);
	cr_assert_eq(SSL_CTX_use_PrivateKey(ctx, key), 1);
	X509_free(cert);
	EVP_PKEY_free(key);
	SSL_CTX_set_min_proto_version(ctx, v->version);
	SSL_CTX_set_max_proto_version(ctx, v->version);
	/* As kgated: stateful TLS 1.3 tickets (one NewSessionTicket record
	 * under the application keys), server session cache. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(ctx, 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"t", 1);
	cr_assert_eq(kg_ktls_ctx_prepare(ctx), 0);
	return ctx;
}

static SSL_CTX *client_ctx(const struct variant *v)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	cr_assert_not_null(ctx);
	SSL_CTX_set_min_proto_version(ctx, v->version);
	SSL_CTX_set_max_proto_version(ctx, v->version);
	if (v->version == TLS1_3_VERSION)
		cr_assert_eq(SSL_CTX_set_ciphersuites(ctx, v->cipher), 1);
	else
		cr_assert_eq(SSL_CTX_set_cipher_list(ctx, v->cipher), 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
	return ctx;
}

static void side_init(struct side *s, SSL_CTX *ctx, bool server)
{
	s->ssl = SSL_new(ctx);
	s->in = BIO_new(BIO_s_mem());
	s->out = BIO_new(BIO_s_mem());
	cr_assert(s->ssl && s->in && s->out);
	SSL_set_bio(s->ssl, s->in, s->out);
	if (server)
		SSL_set_accept_state(s->ssl);
	else
		SSL_set_connect_state(s->ssl);
}

/* Moves everything one side wrote to the other's input. */
static void transfer(struct side *from, struct side *to)
{
	char buf[16384];
	int n;
	while ((n = BIO_read(from->out, buf, sizeof(buf))) > 0)
		cr_assert_eq(BIO_write(to->in, buf, n), n);
}

/* Runs the handshake like kgated: the server sees the client's bytes and
 * reports handshake completion to the tracker. */
static void handshake(struct side *c, struct side *s, struct kg_ktls_track *t,
		      const struct variant *v)
{
	bool server_done = false, client_done = false;
	for (int round = 0; round < 20 && !(server_done && client_done); round++) {
		if (!client_done) {
			int r = SSL_do_handshake(c->ssl);
			client_done = r == 1;
			if (client_done && v->early_data)
				cr_assert_eq(SSL_write(c->ssl, "early", 5), 5);
		}
		transfer(c, s);
		if (!server_done) {
			int r = SSL_do_handshake(s->ssl);
			if (r == 1) {
				server_done = true;
				kg_ktls_handshake_done(s->ssl, t);
			}
		}
		transfer(s, c);
	}
	cr_assert(server_done && client_done, "handshake did not finish");
	/* The client reads what the server sent last (its session ticket). */
	char buf[64];
	cr_assert_leq(SSL_read(c->ssl, buf, sizeof(buf)), 0);
	ERR_clear_error();
	if (v->early_data) {
		int n = SSL_read(s->ssl, buf, sizeof(buf));
		cr_assert_eq(n, 5, "server read %d bytes of early data", n);
		cr_assert_arr_eq(buf, "early", 5);
	}
}

struct aead_params {
	const EVP_CIPHER *cipher;
	unsigned char key[32];
	unsigned char nonce_base[12]; /* salt||iv (TLS 1.3, ChaCha) or salt||0 */
	uint64_t seq;
	bool tls13, chacha;
};

static uint64_t be64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void aead_from(const union kg_ktls_crypto *ci, struct aead_params *a)
{
	memset(a, 0, sizeof(*a));
	a->tls13 = ci->info.version == TLS_1_3_VERSION;
	switch (ci->info.cipher_type) {
	case TLS_CIPHER_AES_GCM_128:
		a->cipher = EVP_aes_128_gcm();
		memcpy(a->key, ci->gcm128.key, 16);
		memcpy(a->nonce_base, ci->gcm128.salt, 4);
		memcpy(a->nonce_base + 4, ci->gcm128.iv, 8);
		a->seq = be64(ci->gcm128.rec_seq);
		break;
	case TLS_CIPHER_AES_GCM_256:
		a->cipher = EVP_aes_256_gcm();
		memcpy(a->key, ci->gcm256.key, 32);
		memcpy(a->nonce_base, ci->gcm256.salt, 4);
		memcpy(a->nonce_base + 4, ci->gcm256.iv, 8);
		a->seq = be64(ci->gcm256.rec_seq);
		break;
	case TLS_CIPHER_CHACHA20_POLY1305:
		a->cipher = EVP_chacha20_poly1305();
		a->chacha = true;
		memcpy(a->key, ci->chacha.key, 32);
		memcpy(a->nonce_base, ci->chacha.iv, 12);
		a->seq = be64(ci->chacha.rec_seq);
		break;
	default:
		cr_assert_fail("unexpected cipher type %u", ci->info.cipher_type);
	}
}

/* The per-record nonce: XOR with the sequence (TLS 1.3 and ChaCha), or
 * salt + explicit nonce carried in the record (TLS 1.2 GCM). */
static void record_nonce(const struct aead_params *a, const unsigned char *explicit,
			 unsigned char nonce[12])
{
	memcpy(nonce, a->nonce_base, 12);
	if (a->tls13 || a->chacha) {
		for (int i = 0; i < 8; i++)
			nonce[4 + i] ^= (unsigned char)(a->seq >> (56 - 8 * i));
	} else {
		memcpy(nonce + 4, explicit, 8);
	}
}

static void tls12_aad(const struct aead_params *a, size_t plain_len, unsigned char aad[13])
{
	for (int i = 0; i < 8; i++)
		aad[i] = (unsigned char)(a->seq >> (56 - 8 * i));
	aad[8] = 23;
	aad[9] = 3;
	aad[10] = 3;
	aad[11] = (unsigned char)(plain_len >> 8);
	aad[12] = (unsigned char)plain_len;
}

/* Decrypts one application-data record as the kernel's RX would. */
static size_t open_record(const union kg_ktls_crypto *ci, const unsigned char *rec,
			  size_t len, unsigned char *out)
{
	struct aead_params a;
	aead_from(ci, &a);
	bool explicit = !a.tls13 && !a.chacha;
	size_t hdr = 5 + (explicit ? 8 : 0);
	cr_assert_gt(len, hdr + 16);
	size_t clen = len - hdr - 16;
	unsigned char nonce[12], aad[13];
	record_nonce(&a, rec + 5, nonce);
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int outl = 0, fin = 0;
	cr_assert_eq(EVP_DecryptInit_ex(ctx, a.cipher, NULL, NULL, NULL), 1);
	cr_assert_eq(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL), 1);
	cr_assert_eq(EVP_DecryptInit_ex(ctx, NULL, NULL, a.key, nonce), 1);
	if (a.tls13) {
		cr_assert_eq(EVP_DecryptUpdate(ctx, NULL, &outl, rec, 5), 1);
	} else {
		tls12_aad(&a, clen, aad);
		cr_assert_eq(EVP_DecryptUpdate(ctx, NULL, &outl, aad, 13), 1);
	}
	cr_assert_eq(EVP_DecryptUpdate(ctx, out, &outl, rec + hdr, (int)clen), 1);
	cr_assert_eq(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16,
					 (void *)(rec + hdr + clen)), 1);
	fin = EVP_DecryptFinal_ex(ctx, out + outl, &outl);
	EVP_CIPHER_CTX_free(ctx);
	cr_assert_eq(fin, 1, "AEAD tag mismatch: wrong key, IV or sequence number");
	if (a.tls13) { /* strip padding and the inner content type */
		while (clen > 0 && out[clen - 1] == 0)
			clen--;
		cr_assert_eq(out[clen - 1], 23, "inner content type %u", out[clen - 1]);
		clen--;
	}
	return clen;
}

/* Encrypts one application-data record as the kernel's TX would. */
static size_t seal_record(const union kg_ktls_crypto *ci, const unsigned char *plain,
			  size_t plen, unsigned char *rec)
{
	struct aead_params a;
	aead_from(ci, &a);
	bool explicit = !a.tls13 && !a.chacha;
	size_t hdr = 5 + (explicit ? 8 : 0);
	unsigned char inner[64], nonce[12], aad[13];
	size_t ilen = plen;
	memcpy(inner, plain, plen);
	if (a.tls13)
		inner[ilen++] = 23;
	size_t total = hdr + ilen + 16;
	rec[0] = 23;
	rec[1] = 3;
	rec[2] = 3;
	rec[3] = (unsigned char)((total - 5) >> 8);
	rec[4] = (unsigned char)(total - 5);
	if (explicit)
		for (int i = 0; i < 8; i++)
			rec[5 + i] = (unsigned char)(a.seq >> (56 - 8 * i));
	record_nonce(&a, rec + 5, nonce);
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int outl = 0;
	cr_assert_eq(EVP_EncryptInit_ex(ctx, a.cipher, NULL, NULL, NULL), 1);
	cr_assert_eq(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL), 1);
	cr_assert_eq(EVP_EncryptInit_ex(ctx, NULL, NULL, a.key, nonce), 1);
	if (a.tls13) {
		cr_assert_eq(EVP_EncryptUpdate(ctx, NULL, &outl, rec, 5), 1);
	} else {
		tls12_aad(&a, ilen, aad);
		cr_assert_eq(EVP_EncryptUpdate(ctx, NULL, &outl, aad, 13), 1);
	}
	cr_assert_eq(EVP_EncryptUpdate(ctx, rec + hdr, &outl, inner, (int)ilen), 1);
	cr_assert_eq(EVP_EncryptFinal_ex(ctx, rec + hdr + ilen, &outl), 1);
	cr_assert_eq(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, rec + hdr + ilen), 1);
	EVP_CIPHER_CTX_free(ctx);
	return total;
}

/* One connection: handshake, derive, then the kernel's view of both
 * directions must interoperate with the client. Returns the client's
 * session for a resumption test. */
static SSL_SESSION *connect_and_check(SSL_CTX *sctx, SSL_CTX *cctx, const struct variant *v,
				      SSL_SESSION *resume)
{
	struct side c, s;
	struct kg_ktls_track t;
	side_init(&s, sctx, true);
	side_init(&c, cctx, false);
	cr_assert_eq(kg_ktls_track_attach(s.ssl, &t), 0);
	if (resume)
		cr_assert_eq(SSL_set_session(c.ssl, resume), 1);
	handshake(&c, &s, &t, v);
	if (resume)
		cr_assert(SSL_session_reused(s.ssl), "session was not resumed");

	struct kg_ktls_keys keys;
	char err[128];
	cr_assert_eq(kg_ktls_derive(s.ssl, &t, &keys, err, sizeof(err)), 0, "%s", err);

	/* client → server: the kernel's RX keys open the client's record */
	unsigned char rec[256], plain[256];
	cr_assert_eq(SSL_write(c.ssl, "ping", 4), 4);
	int n = BIO_read(c.out, rec, sizeof(rec));
	cr_assert_gt(n, 0);
	size_t pl = open_record(&keys.rx, rec, (size_t)n, plain);
	cr_assert_eq(pl, 4);
	cr_assert_arr_eq(plain, "ping", 4);

	/* server → client: a record sealed with the TX keys reads as data */
	size_t rl = seal_record(&keys.tx, (const unsigned char *)"pong", 4, rec);
	cr_assert_eq(BIO_write(c.in, rec, (int)rl), (int)rl);
	char got[16];
	n = SSL_read(c.ssl, got, sizeof(got));
	cr_assert_eq(n, 4, "client rejected the kernel-style record (SSL_read %d)", n);
	cr_assert_arr_eq(got, "pong", 4);

	SSL_SESSION *sess = SSL_get1_session(c.ssl);
	/* As kgated after a handoff: the session stays resumable. */
	SSL_set_shutdown(c.ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_set_shutdown(s.ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_free(c.ssl);
	SSL_free(s.ssl);
	return sess;
}

TC_INDEX_PARAMS(ktls, derived_keys_interoperate, N_VARIANTS)
ParameterizedTest(size_t *i, ktls, derived_keys_interoperate)
{
	const struct variant *v = &variants[*i];
	SSL_CTX *sctx = server_ctx(v), *cctx = client_ctx(v);
	SSL_SESSION *sess = connect_and_check(sctx, cctx, v, NULL);
	if (v->resume) {
		SSL_SESSION *again = connect_and_check(sctx, cctx, v, sess);
		SSL_SESSION_free(again);
	}
	SSL_SESSION_free(sess);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

Test(ktls, key_update_voids_the_handoff)
{
	const struct variant *v = &variants[0];
	SSL_CTX *sctx = server_ctx(v), *cctx = client_ctx(v);
	struct side c, s;
	struct kg_ktls_track t;
	side_init(&s, sctx, true);
	side_init(&c, cctx, false);
	cr_assert_eq(kg_ktls_track_attach(s.ssl, &t), 0);
	handshake(&c, &s, &t, v);
	cr_assert_eq(SSL_key_update(c.ssl, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
	cr_assert_eq(SSL_write(c.ssl, "x", 1), 1);
	transfer(&c, &s);
	char buf[8];
	cr_assert_eq(SSL_read(s.ssl, buf, sizeof(buf)), 1);
	struct kg_ktls_keys keys;
	char err[128];
	cr_assert_eq(kg_ktls_derive(s.ssl, &t, &keys, err, sizeof(err)), -EPROTO);
	cr_assert(strstr(err, "KeyUpdate"), "%s", err);
	SSL_free(c.ssl);
	SSL_free(s.ssl);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

Test(ktls, probe_answers_with_a_reason)
{
	char why[160] = "";
	int r = kg_ktls_probe(why, sizeof(why));
	cr_assert(r == 0 || r == 1);
	cr_assert_neq(why[0], '\0');
}
