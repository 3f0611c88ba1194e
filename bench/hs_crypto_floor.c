/*
 * hs_crypto_floor: the CPU of the public-key and key-schedule operations a
 * TLS 1.3 server performs in one full mTLS handshake, each timed on its
 * own through the EVP calls libssl 3.0 makes for it (issue 19 §2: the
 * floor under CPU per handshake). `openssl speed` times the bare
 * primitives; this adds what OpenSSL 3.0 costs around them per call
 * (provider fetches, contexts, key decoding) when used the way a
 * handshake uses it.
 *
 *   hs_crypto_floor CA.pem CLIENT.pem CLIENT.key SERVER.key [SECONDS]
 *
 * The certificates are the bench's (bench.py: kgatectl ca, EC P-256, the
 * client certificate issued by the CA directly). Prints one line per
 * operation: name, calls, µs of this thread's CPU per call.
 */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct env {
	X509_STORE *store;
	unsigned char *client_der;
	int client_der_len;
	EVP_PKEY *client_key, *server_key, *own_x25519, *peer_x25519;
	unsigned char sig[128];
	size_t sig_len;
	unsigned char tbs[130]; /* 64 spaces, context string, 0, transcript hash */
};

static double thread_cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* CertificateVerify, server side: ECDSA P-256 with SHA-256 over the
 * signed content, a fresh context per signature as in tls_construct_cert_verify. */
static bool op_sign(struct env *e)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char sig[128];
	size_t len = sizeof(sig);
	bool ok = md && EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, e->server_key,
					      NULL) == 1 &&
		  EVP_DigestSign(md, sig, &len, e->tbs, sizeof(e->tbs)) == 1;
	EVP_MD_CTX_free(md);
	return ok;
}

/* The client's CertificateVerify, checked with its certificate's key. */
static bool op_verify(struct env *e)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	bool ok = md && EVP_DigestVerifyInit_ex(md, NULL, "SHA256", NULL, NULL, e->client_key,
						NULL) == 1 &&
		  EVP_DigestVerify(md, e->sig, e->sig_len, e->tbs, sizeof(e->tbs)) == 1;
	EVP_MD_CTX_free(md);
	return ok;
}

/* The server's key share: a fresh X25519 key. */
static bool op_keygen(struct env *e)
{
	(void)e;
	EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	EVP_PKEY_free(k);
	return k != NULL;
}

/* The shared secret with the client's share, from its encoded bytes. */
static bool op_derive(struct env *e)
{
	unsigned char pub[32], secret[32];
	size_t publen = sizeof(pub), slen = sizeof(secret);
	bool ok = false;
	EVP_PKEY *peer = NULL;
	EVP_PKEY_CTX *dc = NULL;
	if (EVP_PKEY_get_raw_public_key(e->peer_x25519, pub, &publen) != 1)
		return false;
	peer = EVP_PKEY_new_raw_public_key_ex(NULL, "X25519", NULL, pub, publen);
	dc = EVP_PKEY_CTX_new_from_pkey(NULL, e->own_x25519, NULL);
	ok = peer && dc && EVP_PKEY_derive_init(dc) == 1 && EVP_PKEY_derive_set_peer(dc, peer) == 1 &&
	     EVP_PKEY_derive(dc, secret, &slen) == 1;
	EVP_PKEY_CTX_free(dc);
	EVP_PKEY_free(peer);
	return ok;
}

/* The client's certificate as libssl decodes it from the Certificate
 * message (and again from a stateless ticket): its EC public key with it,
 * which OpenSSL 3.0 decodes through a freshly built decoder chain. */
static X509 *decode_client(const struct env *e)
{
	const unsigned char *p = e->client_der;
	return d2i_X509(NULL, &p, e->client_der_len);
}

/* The client's certificate as it arrives: decoded, then the chain to the
 * CA verified (one ECDSA verify of the CA's signature, names, dates,
 * purpose). */
static bool op_chain(struct env *e)
{
	X509 *x = decode_client(e);
	X509_STORE_CTX *xs = X509_STORE_CTX_new();
	bool ok = x && xs && X509_STORE_CTX_init(xs, e->store, x, NULL) == 1 &&
		  X509_STORE_CTX_set_purpose(xs, X509_PURPOSE_SSL_CLIENT) == 1 &&
		  X509_verify_cert(xs) == 1;
	X509_STORE_CTX_free(xs);
	X509_free(x);
	return ok;
}

/* The decoding alone. */
static bool op_decode(struct env *e)
{
	X509 *x = decode_client(e);
	X509_free(x);
	return x != NULL;
}

/* One HKDF-Expand-Label as tls13_hkdf_expand makes it in 3.0: the KDF
 * fetched by name, a context, one derive (a handshake makes about 15). */
static bool op_hkdf(struct env *e)
{
	(void)e;
	unsigned char secret[32] = {1}, out[32];
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS13-KDF", NULL);
	EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	OSSL_PARAM params[] = {
		OSSL_PARAM_int("mode", &mode),
		OSSL_PARAM_utf8_string("digest", "SHA256", 0),
		OSSL_PARAM_octet_string("key", secret, sizeof(secret)),
		OSSL_PARAM_octet_string("prefix", "tls13 ", 6),
		OSSL_PARAM_octet_string("label", "c hs traffic", 12),
		OSSL_PARAM_octet_string("data", secret, sizeof(secret)),
		OSSL_PARAM_END,
	};
	bool ok = kc && EVP_KDF_derive(kc, out, sizeof(out), params) == 1;
	EVP_KDF_CTX_free(kc);
	EVP_KDF_free(kdf);
	return ok;
}

/* The randomness one handshake draws: server random, X25519 key, ECDSA
 * nonce, ticket IV and nonce: about five 32-byte draws. */
static bool op_rand(struct env *e)
{
	(void)e;
	unsigned char b[32];
	return RAND_bytes(b, sizeof(b)) == 1;
}

static EVP_PKEY *read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	return k;
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	return x;
}

static int setup(struct env *e, char **argv)
{
	X509 *ca = read_cert(argv[1]), *client = read_cert(argv[2]);
	int r = -1;
	e->client_key = read_key(argv[3]);
	e->server_key = read_key(argv[4]);
	e->own_x25519 = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	e->peer_x25519 = EVP_PKEY_Q_keygen(NULL, NULL, "X25519");
	e->store = X509_STORE_new();
	if (!ca || !client || !e->client_key || !e->server_key || !e->own_x25519 || !e->peer_x25519 || !e->store ||
	    X509_STORE_add_cert(e->store, ca) != 1)
		goto out;
	e->client_der = NULL;
	e->client_der_len = i2d_X509(client, &e->client_der);
	if (e->client_der_len <= 0)
		goto out;
	memset(e->tbs, ' ', 64);
	memcpy(e->tbs + 64, "TLS 1.3, client CertificateVerify", 33);
	e->tbs[97] = 0;
	if (RAND_bytes(e->tbs + 98, 32) != 1)
		goto out;
	/* The client's signature the verify op checks. */
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	e->sig_len = sizeof(e->sig);
	if (md && EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, e->client_key, NULL) == 1 &&
	    EVP_DigestSign(md, e->sig, &e->sig_len, e->tbs, sizeof(e->tbs)) == 1)
		r = 0;
	EVP_MD_CTX_free(md);
out:
	X509_free(ca);
	X509_free(client);
	return r;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		bool (*fn)(struct env *);
	} ops[] = {
		{"ecdsa_p256_sign (EVP_DigestSign, fresh ctx)", op_sign},
		{"ecdsa_p256_verify (EVP_DigestVerify, fresh ctx)", op_verify},
		{"x25519_keygen (EVP_PKEY_Q_keygen)", op_keygen},
		{"x25519_derive (peer key from bytes + derive)", op_derive},
		{"client_cert_decode (d2i_X509)", op_decode},
		{"client_cert_decode+chain (d2i_X509 + X509_verify_cert)", op_chain},
		{"hkdf_expand_label (EVP_KDF_fetch + derive)", op_hkdf},
		{"rand_bytes_32", op_rand},
	};
	struct env e = {0};
	double seconds = argc > 5 ? atof(argv[5]) : 1.0;

	if (argc < 5 || seconds <= 0) {
		fprintf(stderr, "usage: %s CA.pem CLIENT.pem CLIENT.key SERVER.key [SECONDS]\n",
			argv[0]);
		return 2;
	}
	if (setup(&e, argv) < 0) {
		fprintf(stderr, "hs_crypto_floor: cannot load the keys and certificates\n");
		ERR_print_errors_fp(stderr);
		return 1;
	}
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		long n = 0;
		/* Warm-up: first fetches fill OpenSSL's method caches. */
		for (int w = 0; w < 50; w++)
			if (!ops[i].fn(&e))
				goto fail;
		double t0 = thread_cpu_us(), t1 = t0;
		while (t1 - t0 < seconds * 1e6) {
			for (int k = 0; k < 20; k++)
				if (!ops[i].fn(&e))
					goto fail;
			n += 20;
			t1 = thread_cpu_us();
		}
		printf("%-58s %8ld calls %9.2f us/call\n", ops[i].name, n, (t1 - t0) / n);
		continue;
fail:
		fprintf(stderr, "hs_crypto_floor: %s failed\n", ops[i].name);
		ERR_print_errors_fp(stderr);
		return 1;
	}
	OPENSSL_free(e.client_der);
	EVP_PKEY_free(e.client_key);
	EVP_PKEY_free(e.server_key);
	EVP_PKEY_free(e.own_x25519);
	EVP_PKEY_free(e.peer_x25519);
	X509_STORE_free(e.store);
	return 0;
}
