/* The listener's SSL_CTX, configured once at load so that handshakes do no
 * avoidable work (each setting says what it saves), and the mapping of
 * OpenSSL's results to what the event loop does next. */
#include "tls.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "access.h"
#include "certs.h"
#include "sni.h"
#include "crl.h"
#include "ocsp.h"
#include "staple.h"
#include "ticket_keys.h"
#include "tls_carry.h"

#define KG_TLS12_CIPHERS                                                       \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"           \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"           \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define KG_TLS13_SUITES                                                        \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define KG_TLS_GROUPS "X25519:P-256:P-384"

/* SSL ex_data slot holding why the client certificate was refused
 * ("depth 0, subject CN=..."), written by the verify callback, read by
 * kg_tls_status, freed with the SSL. SSL_CTX ex_data slot holding the
 * listener's ticket key set (OpenSSL's ticket callback has no argument of
 * its own); the key set outlives every SSL_CTX. */
static pthread_once_t note_once = PTHREAD_ONCE_INIT;
static int note_idx = -1, tickets_idx = -1, access_idx = -1, crl_warn_idx = -1;
static int crl_checked_idx = -1;
/* SSL_CTX ex_data: the settings it was built from (kg_tls_conf_of), and a
 * listener's per-entry SSL_CTXs (struct sni_ctxs, freed with it). */
static int conf_idx = -1, sni_idx = -1;

/* The SSL_CTX of each sni entry of a listener, in the listener's order;
 * the ClientHello callback's argument. */
struct sni_ctxs {
	const struct kg_listener_conf *l;
	size_t n;
	SSL_CTX *ctx[];
};

static void note_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
		      void *argp)
{
	free(ptr);
}

static void sni_ctxs_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			  void *argp)
{
	struct sni_ctxs *sc = ptr;
	for (size_t i = 0; sc && i < sc->n; i++)
		SSL_CTX_free(sc->ctx[i]);
	free(sc);
}

/* The CRL in force of a listener's CA and the public key whose signature
 * check it passed (crl.c, off the workers), in its SSL_CTX's ex_data. */
struct crl_checked {
	X509_CRL *crl;
	EVP_PKEY *signer;
};

static void crl_checked_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			     void *argp)
{
	struct crl_checked *ck = ptr;
	if (!ck)
		return;
	X509_CRL_free(ck->crl);
	EVP_PKEY_free(ck->signer);
	free(ck);
}

static void note_init(void)
{
	note_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, note_free);
	tickets_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	access_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	conf_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	sni_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, sni_ctxs_free);
	crl_warn_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	crl_checked_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, crl_checked_free);
}

/* Replaces the SSL's note (why its handshake failed); takes text. */
static void set_note(SSL *ssl, char *text)
{
	if (!text)
		return;
	free(SSL_get_ex_data(ssl, note_idx));
	if (SSL_set_ex_data(ssl, note_idx, text) != 1)
		free(text);
}

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen,
						      const char *fmt, ...)
{
	int n;
	va_list ap;
	va_start(ap, fmt);
	n = vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	unsigned long e = ERR_peek_last_error();
	if (e && n >= 0 && (size_t)n < errlen) {
		const char *r = ERR_reason_error_string(e);
		snprintf(err + n, errlen - (size_t)n, ": %s", r ? r : "unknown OpenSSL error");
	}
	ERR_clear_error();
	return -EINVAL; /* what OpenSSL refused: err says why */
}

static bool has_client_auth_eku(X509 *cert)
{
	return (X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) &&
	       (X509_get_extended_key_usage(cert) & XKU_SSL_CLIENT);
}

static void record_note(X509_STORE_CTX *xs, int depth, X509 *cert, const char *extra)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	char subject[256] = "(none)", *note = NULL;
	if (!ssl || note_idx < 0)
		return;
	if (cert)
		kg_cert_subject(cert, subject, sizeof(subject));
	if (asprintf(&note, "depth %d, subject %s%s", depth, subject, extra) < 0)
		return;
	set_note(ssl, note);
}

/* The access rules of the listener whose SSL_CTX verifies xs, when they
 * refuse inside the handshake; NULL otherwise. */
static const struct kg_listener_conf *access_in_handshake(X509_STORE_CTX *xs, SSL **ssl)
{
	*ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	const struct kg_listener_conf *l =
		*ssl && access_idx >= 0 ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(*ssl), access_idx)
					: NULL;
	return l && kg_tls_access_in_handshake(l) ? l : NULL;
}

/* The access rules, at depth 0 once the whole chain has verified (OpenSSL
 * calls depth 0 last): a denied certificate fails verification, so the
 * handshake ends before any application data, and the reason names the
 * rule and the subject. */
static int check_access(X509_STORE_CTX *xs, X509 *cert)
{
	SSL *ssl = NULL;
	const struct kg_listener_conf *l = access_in_handshake(xs, &ssl);
	const char *rule = KG_ACCESS_DEFAULT_RULE;
	char subject[256] = "(none)", *note = NULL;

	if (!l || kg_access_eval(l->access_rules, cert, l->access_default, &rule) ==
			  KG_ACCESS_ALLOW)
		return 1;
	/* OpenSSL 3.0 maps this error to the handshake_failure alert: no
	 * verify error maps to access_denied, and it has no public call to
	 * send another alert. */
	X509_STORE_CTX_set_error(xs, X509_V_ERR_APPLICATION_VERIFICATION);
	kg_cert_subject(cert, subject, sizeof(subject));
	if (note_idx >= 0 &&
	    asprintf(&note, "access denied by rule \"%s\" (subject %s)", rule, subject) >= 0)
		set_note(ssl, note);
	return 0;
}

/* crl_expired warn: an expired CRL is still used (a revoked certificate
 * is still refused) but its age is not a reason to refuse. The error is
 * cleared, not only ignored: it would otherwise stay the verify result,
 * and the access rules run only on a clean one. OpenSSL checks
 * revocation before the signatures' depth-0 callback, so this comes first. */
static bool crl_expired_tolerated(X509_STORE_CTX *xs)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	if (X509_STORE_CTX_get_error(xs) != X509_V_ERR_CRL_HAS_EXPIRED || !ssl ||
	    crl_warn_idx < 0 || !SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), crl_warn_idx))
		return false;
	X509_STORE_CTX_set_error(xs, X509_V_OK);
	return true;
}

/* Runs inside OpenSSL's chain verification, once per certificate and per
 * problem. On top of the full chain check (CA, CRL, depth, purpose), the
 * client's own certificate must say it is meant for client authentication:
 * OpenSSL's purpose check lets a certificate without any extendedKeyUsage
 * through, and a CA's server certificate must not open the door. Then the
 * listener's access rules decide. */
static int verify_cb(int ok, X509_STORE_CTX *xs)
{
	int depth = X509_STORE_CTX_get_error_depth(xs);
	X509 *cert = X509_STORE_CTX_get_current_cert(xs);
	const char *extra = "";

	if (!ok && crl_expired_tolerated(xs))
		return 1;

	if (ok && depth == 0 && cert && !has_client_auth_eku(cert)) {
		X509_STORE_CTX_set_error(xs, X509_V_ERR_INVALID_PURPOSE);
		extra = ", no extendedKeyUsage clientAuth";
		ok = 0;
	}
	if (!ok) {
		record_note(xs, depth, cert, extra);
		return ok;
	}
	/* Rules look at verified certificates only: never at one whose
	 * chain, dates or revocation failed. OCSP asks the responder about
	 * the certificates the rules let in only. */
	if (depth == 0 && cert && X509_STORE_CTX_get_error(xs) == X509_V_OK) {
		char why[192];
		if (!check_access(xs, cert))
			return 0;
		SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
		why[0] = '\0';
		if (!kg_ocsp_check(xs, ssl, cert, why, sizeof(why))) {
			char note[200];
			snprintf(note, sizeof(note), ", %s", why);
			record_note(xs, depth, cert, note);
			return 0;
		}
	}
	return ok;
}

static int no_passphrase_cb(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static int apply_policy(SSL_CTX *ctx, char *err, size_t errlen)
{
	/* TLS 1.0/1.1 are deprecated (RFC 8996) and need SHA-1/MD5. */
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
		return fail(err, errlen, "cannot set TLS versions");
	/* TLS 1.2: forward secrecy (ECDHE) and AEAD only; no CBC padding oracles. */
	if (SSL_CTX_set_cipher_list(ctx, KG_TLS12_CIPHERS) != 1)
		return fail(err, errlen, "cannot set TLS 1.2 ciphers");
	/* TLS 1.3 suites are all AEAD; list them so a system policy cannot add others. */
	if (SSL_CTX_set_ciphersuites(ctx, KG_TLS13_SUITES) != 1)
		return fail(err, errlen, "cannot set TLS 1.3 cipher suites");
	/* X25519 first: fastest key exchange, constant time by design. */
	if (SSL_CTX_set1_groups_list(ctx, KG_TLS_GROUPS) != 1)
		return fail(err, errlen, "cannot set key exchange groups");
	SSL_CTX_set_options(ctx,
			    /* Renegotiation is a DoS lever and a known attack surface. */
			    SSL_OP_NO_RENEGOTIATION |
			    /* Our AEAD order wins over a client that prefers weaker. */
			    SSL_OP_CIPHER_SERVER_PREFERENCE |
			    /* Compression leaks plaintext lengths (CRIME). */
			    SSL_OP_NO_COMPRESSION);
	/* Idle connections give their 34 KB of record buffers back. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	/* Never ask a terminal for a key passphrase: the daemon is unattended. */
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase_cb);
	return 0;
}

static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
		     EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)
{
	struct kg_ticket_keys *tk = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tickets_idx);
	int r = tk ? kg_ticket_keys_crypt(tk, key_name, iv, ctx, hctx, enc) : -1;
	/* A TLS 1.3 client uses a ticket once (RFC 8446 C.4), and OpenSSL
	 * sends no new one after a resumption unless told to renew: the
	 * client's next connection would be a full handshake. */
	if (!enc && r == 1 && SSL_version(ssl) >= TLS1_3_VERSION)
		r = 2;
	return r;
}

/* The session id context: the listener's name, with access rules the
 * rules too, and with OCSP on its mode. A resumed handshake skips certificate verification, so a
 * session (or a stateless ticket, valid across snapshots and restarts)
 * made under other rules must not resume: it gets a full handshake and
 * the rules in force now. Without rules the context is the name alone, so
 * sessions survive listener updates as before. */
static int access_digest(const struct kg_listener_conf *l, unsigned char *out, unsigned *len)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int r = -ENOMEM;
	if (!md)
		return -ENOMEM;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, l->name, strlen(l->name)) != 1)
		goto free_md;
	if (l->sni_index > 0) {
		/* An sni entry: its whole client policy (CA, mutual_auth,
		 * rules), so a session resumes only where the same clients
		 * would get in by a full handshake. */
		unsigned char tag[1] = {1};
		if (EVP_DigestUpdate(md, tag, sizeof(tag)) != 1 ||
		    EVP_DigestUpdate(md, l->client_policy, sizeof(l->client_policy)) != 1)
			goto free_md;
	} else if (l->access_rules || l->access_default != KG_ACCESS_ALLOW) {
		unsigned char tag[3] = {0, (unsigned char)l->access_default,
					(unsigned char)l->access_denied_response};
		if (EVP_DigestUpdate(md, tag, sizeof(tag)) != 1 ||
		    kg_access_digest(l->access_rules, md) < 0)
			goto free_md;
	}
	/* A session made before OCSP was turned on (or made softer) must not
	 * skip the check: resumption skips certificate verification. */
	if (l->ocsp != KG_OCSP_OFF) {
		unsigned char tag[2] = {1, (unsigned char)l->ocsp};
		if (EVP_DigestUpdate(md, tag, sizeof(tag)) != 1)
			goto free_md;
	}
	if (EVP_DigestFinal_ex(md, out, len) == 1)
		r = 0;
free_md:
	EVP_MD_CTX_free(md);
	return r;
}

/* Resumption, in one of two ways (tls_session_tickets):
 * - stateless: the ticket carries the encrypted session (TLS 1.2 and 1.3),
 *   under the process's ticket keys, so it resumes in a restarted kgated
 *   and in a rebuilt SSL_CTX; costs about 240 us per full handshake on
 *   OpenSSL 3.0 (it serialises the session with the client certificate).
 *   Without a key set (kgated --check, tests) OpenSSL's own random
 *   per-SSL_CTX keys are used.
 * - stateful: in TLS 1.3 SSL_OP_NO_TICKET makes OpenSSL issue stateful
 *   tickets (an id into the server cache) instead of encrypting the whole
 *   session each time; in TLS 1.2 it means session-id resumption from the
 *   same cache. The sessions die with the SSL_CTX. */
static int setup_sessions(SSL_CTX *ctx, const struct kg_listener_conf *l,
			  struct kg_ticket_keys *tickets, char *err, size_t errlen)
{
	unsigned char sid_ctx[SSL_MAX_SID_CTX_LENGTH];
	unsigned int sid_len = 0;
	bool stateless = l->tls_session_tickets == KG_TICKETS_STATELESS;

	if (l->tls_session_cache == 0 || !stateless)
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	if (l->tls_session_cache == 0) {
		/* No resumption at all: no ticket is sent (a TLS 1.3 ticket
		 * would name a session nobody keeps) and nothing is cached. */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		if (SSL_CTX_set_num_tickets(ctx, 0) != 1)
			return fail(err, errlen, "cannot set the number of session tickets");
		return 0;
	}
	/* One ticket: a client resumes one connection at a time, and each
	 * stateless ticket costs a session serialisation. */
	if (SSL_CTX_set_num_tickets(ctx, 1) != 1)
		return fail(err, errlen, "cannot set the number of session tickets");
	if (stateless) {
		/* The ticket carries the session: a server cache would only
		 * cost memory. */
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		if (tickets && (SSL_CTX_set_ex_data(ctx, tickets_idx, tickets) != 1 ||
				SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb) != 1))
			return fail(err, errlen, "cannot set the session ticket keys");
	} else {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
		/* The cache is handed to the next process at an upgrade. */
		if (kg_tls_carry_setup(ctx) < 0)
			return fail(err, errlen, "cannot set the session cache callbacks");
		/* Bounded: the cache must not grow with the number of clients. */
		SSL_CTX_sess_set_cache_size(ctx, l->tls_session_cache);
	}
	/* Short lifetime bounds how long a revoked client can still resume;
	 * a stateless ticket older than this is refused too. */
	SSL_CTX_set_timeout(ctx, KG_TLS_SESSION_TIMEOUT_S);
	/* Required with client verification, else OpenSSL refuses to resume;
	 * per listener so a session never crosses to another listener's CA
	 * (a stateless ticket, whose keys all listeners share, included). */
	if (access_digest(l, sid_ctx, &sid_len) < 0 ||
	    SSL_CTX_set_session_id_context(ctx, sid_ctx, sid_len) != 1)
		return fail(err, errlen, "cannot set the session id context");
	return 0;
}

static int load_server_cert(SSL_CTX *ctx, const struct kg_cert_conf *c, char *err,
			    size_t errlen)
{
	if (SSL_CTX_use_certificate_chain_file(ctx, c->cert_path) != 1)
		return fail(err, errlen, "certificate \"%s\": cannot load %s", c->name, c->cert_path);
	if (SSL_CTX_use_PrivateKey_file(ctx, c->key_path, SSL_FILETYPE_PEM) != 1)
		return fail(err, errlen, "certificate \"%s\": cannot load key %s", c->name,
			    c->key_path);
	if (SSL_CTX_check_private_key(ctx) != 1)
		return fail(err, errlen, "certificate \"%s\": key does not match the certificate",
			    c->name);
	/* Build the chain to send once, from the file's own certificates only
	 * (never from the client CA store); an incomplete chain is fine, a
	 * server does not send the root. NO_AUTO_CHAIN then stops OpenSSL
	 * from rebuilding and re-verifying it on every handshake. */
	if (SSL_CTX_build_cert_chain(ctx, SSL_BUILD_CHAIN_FLAG_CHECK | SSL_BUILD_CHAIN_FLAG_NO_ROOT |
					     SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR |
					     SSL_BUILD_CHAIN_FLAG_CLEAR_ERROR) == 0)
		return fail(err, errlen, "certificate \"%s\": cannot build the chain", c->name);
	SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
	return 0;
}

/* A CRL problem, reported as OpenSSL's own check reports it: the error
 * set, then the verify callback asked whether to go on. */
static int crl_problem(X509_STORE_CTX *xs, int error)
{
	X509_STORE_CTX_verify_cb cb = X509_STORE_CTX_get_verify_cb(xs);
	X509_STORE_CTX_set_error(xs, error);
	return cb ? cb(0, xs) : 0;
}

/* The X509_STORE's check_crl, in place of OpenSSL's, which verifies the
 * CRL's signature on every handshake: a hash of the whole CRL, 2 ms of a
 * worker per full handshake with 100,000 entries (bench/crl_bench.py).
 * The CRL in force was verified when it was loaded, with the same CA key;
 * when the issuer at hand has that key, the signature is not checked
 * again, otherwise it is. The rest is OpenSSL's check for a full CRL
 * (crl.c refuses delta and partitioned ones): the issuer may sign CRLs,
 * and the CRL is current. Revocation itself (the serial lookup, critical
 * extensions) stays OpenSSL's. */
static int check_crl(X509_STORE_CTX *xs, X509_CRL *crl)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
	const struct crl_checked *ck =
		ssl ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), crl_checked_idx) : NULL;
	STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(xs);
	int depth = X509_STORE_CTX_get_error_depth(xs), last = sk_X509_num(chain) - 1;
	X509 *issuer = X509_STORE_CTX_get0_current_issuer(xs);
	if (!issuer && last >= 0)
		issuer = sk_X509_value(chain, depth < last ? depth + 1 : last);
	if (!issuer)
		return crl_problem(xs, X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER);
	if ((X509_get_extension_flags(issuer) & EXFLAG_KUSAGE) &&
	    !(X509_get_key_usage(issuer) & KU_CRL_SIGN) &&
	    !crl_problem(xs, X509_V_ERR_KEYUSAGE_NO_CRL_SIGN))
		return 0;
	int cmp = X509_cmp_current_time(X509_CRL_get0_lastUpdate(crl));
	if (cmp == 0 && !crl_problem(xs, X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD))
		return 0;
	if (cmp > 0 && !crl_problem(xs, X509_V_ERR_CRL_NOT_YET_VALID))
		return 0;
	const ASN1_TIME *next = X509_CRL_get0_nextUpdate(crl);
	cmp = next ? X509_cmp_current_time(next) : 1;
	if (cmp == 0 && !crl_problem(xs, X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD))
		return 0;
	if (cmp < 0 && !crl_problem(xs, X509_V_ERR_CRL_HAS_EXPIRED))
		return 0;
	EVP_PKEY *key = X509_get0_pubkey(issuer);
	bool checked = ck && ck->crl == crl && key && EVP_PKEY_eq(key, ck->signer) == 1;
	if (!checked && (!key || X509_CRL_verify(crl, key) <= 0) &&
	    !crl_problem(xs, key ? X509_V_ERR_CRL_SIGNATURE_FAILURE
				 : X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY))
		return 0;
	return 1;
}

/* The CRL in force for ca (crl.h): shared with the other listeners of
 * the same CA, never re-read here, so a CRL file replaced by garbage
 * cannot reach a rebuilt listener. */
static int load_crl(SSL_CTX *ctx, const struct kg_cert_conf *ca, char *err, size_t errlen)
{
	char why[600];
	struct crl_checked *ck = calloc(1, sizeof(*ck));
	if (!ck)
		return fail(err, errlen, "out of memory");
	ck->crl = kg_crl_acquire(ca, &ck->signer, why, sizeof(why));
	if (!ck->crl) {
		free(ck);
		return fail(err, errlen, "ca \"%s\": %s", ca->name, why);
	}
	if (SSL_CTX_set_ex_data(ctx, crl_checked_idx, ck) != 1) {
		crl_checked_free(NULL, ck, NULL, 0, 0, NULL);
		return fail(err, errlen, "cannot attach the CRL");
	}
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	if (X509_STORE_add_crl(store, ck->crl) != 1)
		return fail(err, errlen, "ca \"%s\": cannot use CRL %s", ca->name, ca->crl_path);
	X509_STORE_set_check_crl(store, check_crl);
	/* Revocation is checked for the client's certificate (the CRL is
	 * the issuing CA's); a missing or stale CRL then fails closed,
	 * unless crl_expired is warn (verify_cb). */
	X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_CRL_CHECK);
	if (ca->crl_expired == KG_CRL_EXPIRED_WARN &&
	    SSL_CTX_set_ex_data(ctx, crl_warn_idx, (void *)ca) != 1)
		return fail(err, errlen, "cannot attach the CRL policy");
	return 0;
}

static int setup_client_auth(SSL_CTX *ctx, const struct kg_listener_conf *l, char *err,
			     size_t errlen)
{
	if (l->mutual_auth == KG_MTLS_OFF || !l->ca) {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		return 0;
	}
	const struct kg_cert_conf *ca = l->ca;
	if (SSL_CTX_load_verify_file(ctx, ca->cert_path) != 1)
		return fail(err, errlen, "ca \"%s\": cannot load %s", ca->name, ca->cert_path);
	if (ca->crl_path) {
		int r = load_crl(ctx, ca, err, errlen);
		if (r < 0)
			return r;
	}
	/* The CA list in CertificateRequest lets browsers offer the right cert. */
	STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca->cert_path);
	if (!names)
		return fail(err, errlen, "ca \"%s\": cannot read CA names from %s", ca->name,
			    ca->cert_path);
	SSL_CTX_set_client_CA_list(ctx, names);
	/* Chain certificates must be CAs allowed to issue client certificates. */
	if (SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) != 1)
		return fail(err, errlen, "cannot set the verification purpose");
	/* Bounds the work an attacker's long chain can cause. */
	SSL_CTX_set_verify_depth(ctx, (int)l->verify_depth);
	int mode = SSL_VERIFY_PEER;
	if (l->mutual_auth == KG_MTLS_REQUIRED)
		mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
	SSL_CTX_set_verify(ctx, mode, verify_cb);
	/* The verify callback's access rules: l lives in the document the
	 * snapshot holds, as long as this SSL_CTX (tls.h). */
	if (kg_tls_access_on(l) && SSL_CTX_set_ex_data(ctx, access_idx, (void *)l) != 1)
		return fail(err, errlen, "cannot attach the access rules");
	return 0;
}

/* Makes ctx (an sni entry's) the SSL's for the rest of the handshake.
 * SSL_set_SSL_CTX takes the certificate, key and chain, the session id
 * context and, as ssl->ctx, the CA store and the callbacks the handshake
 * reads from there (verify store, client CA names, key log, ticket keys);
 * but the verify mode, depth and parameters (CRL check, purpose) were
 * copied into the SSL at SSL_new, so they are set again here. */
static int use_entry_ctx(SSL *ssl, SSL_CTX *ctx)
{
	if (SSL_set_SSL_CTX(ssl, ctx) != ctx)
		return -ENOMEM;
	SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), SSL_CTX_get_verify_callback(ctx));
	/* set1 ORs the flags: clear the listener's (its CRL check) first. */
	X509_VERIFY_PARAM *pm = SSL_get0_param(ssl);
	if (X509_VERIFY_PARAM_clear_flags(pm, X509_VERIFY_PARAM_get_flags(pm)) != 1 ||
	    SSL_set1_param(ssl, SSL_CTX_get0_param(ctx)) != 1)
		return -ENOMEM;
	SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(ctx));
	/* The CertificateRequest's CA names need nothing: the SSL has no list
	 * of its own, so OpenSSL takes ssl->ctx's (test_sni checks them). */
	return 0;
}

/* A server name for a log line: printable bytes, at most 80 of them. */
static void printable_name(const char *name, size_t len, char *out, size_t outlen)
{
	size_t n = 0;
	for (size_t i = 0; i < len && n + 1 < outlen && i < 80; i++)
		out[n++] = name[i] > 0x20 && name[i] < 0x7f && name[i] != '"' ? name[i] : '?';
	out[n] = '\0';
}

/* Runs first in the handshake, before any answer and before session
 * resumption is considered: picks the sni entry for the ClientHello's
 * server name, so that the certificate, the CertificateRequest's CA names,
 * the verification and the session id context are all the entry's. A
 * name no entry has gets the listener's own settings, or with strict_sni
 * the unrecognized_name alert. */
static int client_hello_cb(SSL *ssl, int *al, void *arg)
{
	const struct sni_ctxs *sc = arg;
	const unsigned char *ext = NULL;
	const char *name = NULL;
	size_t len = 0, nlen = 0;
	char shown[96], *note = NULL;

	int r = SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &len) == 1
			? kg_sni_from_ext(ext, len, &name, &nlen)
			: -ENOENT;
	if (r == -EINVAL) {
		*al = SSL_AD_DECODE_ERROR;
		return SSL_CLIENT_HELLO_ERROR;
	}
	int e = r == 0 ? kg_config_sni_find(sc->l, name, nlen) : -1;
	if (e >= 0) {
		if (use_entry_ctx(ssl, sc->ctx[e]) == 0)
			return SSL_CLIENT_HELLO_SUCCESS;
		*al = SSL_AD_INTERNAL_ERROR;
		return SSL_CLIENT_HELLO_ERROR;
	}
	if (!sc->l->strict_sni)
		return SSL_CLIENT_HELLO_SUCCESS;
	if (r == 0) {
		printable_name(name, nlen, shown, sizeof(shown));
		if (asprintf(&note, KG_TLS_SNI_REFUSED ": unknown server name \"%s\"", shown) < 0)
			note = NULL;
	} else if (asprintf(&note, KG_TLS_SNI_REFUSED ": no server name") < 0) {
		note = NULL;
	}
	set_note(ssl, note);
	*al = SSL_AD_UNRECOGNIZED_NAME;
	return SSL_CLIENT_HELLO_ERROR;
}

/* The SSL_CTX of each of l's sni entries, made by kg_tls_ctx_create from
 * the entry's settings, and the ClientHello callback that switches to
 * them. The entries' contexts are freed with ctx. */
static int setup_sni(SSL_CTX *ctx, const struct kg_listener_conf *l,
		     struct kg_ticket_keys *tickets, char *err, size_t errlen)
{
	char why[512];
	struct sni_ctxs *sc = calloc(1, sizeof(*sc) + l->n_sni * sizeof(sc->ctx[0]));
	if (!sc)
		return fail(err, errlen, "out of memory");
	sc->l = l;
	if (SSL_CTX_set_ex_data(ctx, sni_idx, sc) != 1) {
		free(sc);
		return fail(err, errlen, "cannot attach the sni entries");
	}
	for (size_t i = 0; i < l->n_sni; i++) {
		sc->ctx[i] = kg_tls_ctx_create(l->sni[i].tls, tickets, why, sizeof(why));
		if (!sc->ctx[i])
			return fail(err, errlen, "sni[%zu]: %s", i, why);
		sc->n++;
	}
	SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, sc);
	return 0;
}

int kg_tls_ctx_for_each_sni(SSL_CTX *ctx, int (*fn)(SSL_CTX *ctx))
{
	const struct sni_ctxs *sc = sni_idx >= 0 ? SSL_CTX_get_ex_data(ctx, sni_idx) : NULL;
	for (size_t i = 0; sc && i < sc->n; i++) {
		int r = fn(sc->ctx[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

const struct kg_listener_conf *kg_tls_conf_of(const SSL *ssl)
{
	return conf_idx >= 0 ? SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), conf_idx) : NULL;
}

bool kg_tls_access_on(const struct kg_listener_conf *l)
{
	return l->protocol != KG_PROTO_TCP &&
	       (l->access_rules || l->access_default != KG_ACCESS_ALLOW);
}

bool kg_tls_access_in_handshake(const struct kg_listener_conf *l)
{
	return kg_tls_access_on(l) && (l->protocol == KG_PROTO_TLS ||
				       l->access_denied_response == KG_DENIED_ALERT);
}

bool kg_tls_carries_sessions(const struct kg_listener_conf *l)
{
	/* Stateless tickets carry themselves: the keys are in the state dir. */
	return l->protocol != KG_PROTO_TCP && l->tls_session_cache > 0 &&
	       l->tls_session_tickets == KG_TICKETS_STATEFUL;
}

void kg_tls_drop_peer_chain(SSL *ssl, const struct kg_listener_conf *l)
{
	/* A cached session is shared: another worker may be copying its
	 * chain for a resumption (ssl_session_dup) while this one pops. */
	if (kg_tls_carries_sessions(l))
		return;
	/* The session's own stack, without the leaf on the server side
	 * (SSL_get0_peer_certificate keeps that one): the verified chain
	 * holds the trust store's copies, so these are the last references.
	 * A stateless ticket was sealed during the handshake, and a session
	 * never serialises this stack anyway. */
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	while (chain && sk_X509_num(chain) > 0)
		X509_free(sk_X509_pop(chain));
}

/* ALPN on https listeners: the client's list is walked in our order of
 * preference, h2 first when the listener offers it (arg: the settings the
 * context was built from), then http/1.1. A client that offers neither
 * gets no ALPN answer and speaks HTTP/1.1 as before ALPN existed (RFC
 * 7301 allows the alert, but refusing old clients gains nothing). */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			  const unsigned char *in, unsigned inlen, void *arg)
{
	static const unsigned char both[] = "\x02h2\x08http/1.1";
	static const unsigned char h1[] = "\x08http/1.1";
	const struct kg_listener_conf *l = arg;
	(void)ssl;
	const unsigned char *ours = l->h2 ? both : h1;
	unsigned ours_len = l->h2 ? sizeof(both) - 1 : sizeof(h1) - 1;
	if (SSL_select_next_proto((unsigned char **)out, outlen, ours, ours_len, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *kg_tls_ctx_create(const struct kg_listener_conf *l, struct kg_ticket_keys *tickets,
			   char *err, size_t errlen)
{
	if (pthread_once(&note_once, note_init) != 0 || note_idx < 0 || tickets_idx < 0 ||
	    access_idx < 0 || conf_idx < 0 || sni_idx < 0 || crl_warn_idx < 0 ||
	    crl_checked_idx < 0) {
		fail(err, errlen, "cannot allocate an SSL ex_data index");
		return NULL;
	}
	if (!l->certificate || l->certificate->type != KG_CERT_SERVER) {
		fail(err, errlen, "a TLS listener needs a server certificate");
		return NULL;
	}
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		fail(err, errlen, "cannot create SSL_CTX");
		return NULL;
	}
	if (apply_policy(ctx, err, errlen) < 0 ||
	    setup_sessions(ctx, l, tickets, err, errlen) < 0 ||
	    load_server_cert(ctx, l->certificate, err, errlen) < 0 ||
	    setup_client_auth(ctx, l, err, errlen) < 0 ||
	    (l->n_sni > 0 && setup_sni(ctx, l, tickets, err, errlen) < 0) ||
	    (l->ocsp_stapling &&
	     kg_staple_setup(ctx, l->ca ? l->ca->cert_path : NULL, err, errlen) < 0)) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* l lives in the document the snapshot holds, as long as ctx. */
	if (SSL_CTX_set_ex_data(ctx, conf_idx, (void *)l) != 1) {
		fail(err, errlen, "cannot attach the listener settings");
		SSL_CTX_free(ctx);
		return NULL;
	}
	/* tls listeners relay bytes of any protocol: only https negotiates
	 * one. An sni entry's context gets its own callback, since OpenSSL
	 * asks the context the ClientHello switched to. */
	if (l->protocol == KG_PROTO_HTTPS)
		SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, (void *)l);
	return ctx;
}

#define NO_CERT_TEXT "client certificate required"

const char *const kg_hs_reason_names[KG_HS_REASONS] = {
	"no_cert", "unknown_ca", "expired", "revoked", "bad_eku", "protocol", "access_denied",
	"unknown_sni", "ocsp"};

enum kg_hs_reason kg_tls_failure_reason(const SSL *ssl, const char *reason)
{
	switch (SSL_get_verify_result(ssl)) {
	case X509_V_OK:
		if (strncmp(reason, KG_TLS_SNI_REFUSED, strlen(KG_TLS_SNI_REFUSED)) == 0)
			return KG_HS_UNKNOWN_SNI;
		return strncmp(reason, NO_CERT_TEXT, strlen(NO_CERT_TEXT)) == 0 ? KG_HS_NO_CERT
										: KG_HS_PROTOCOL;
	case X509_V_ERR_CERT_REVOKED:
		return KG_HS_REVOKED;
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_CERT_NOT_YET_VALID:
	case X509_V_ERR_CRL_HAS_EXPIRED:
	case X509_V_ERR_CRL_NOT_YET_VALID:
		return KG_HS_EXPIRED;
	case X509_V_ERR_INVALID_PURPOSE:
		return KG_HS_BAD_EKU;
	case X509_V_ERR_APPLICATION_VERIFICATION: /* only the access rules set it */
		return KG_HS_ACCESS_DENIED;
	case X509_V_ERR_OCSP_VERIFY_FAILED: /* only ocsp.c sets these */
	case X509_V_ERR_OCSP_CERT_UNKNOWN:
		return KG_HS_OCSP;
	default:
		return KG_HS_UNKNOWN_CA;
	}
}

static void describe_error(SSL *ssl, int ssl_err, char *reason, size_t len)
{
	long vr = SSL_get_verify_result(ssl);
	unsigned long e = ERR_peek_error();

	/* With a verify result of OK, only the ClientHello callback writes
	 * a note (strict_sni). */
	if ((vr == X509_V_ERR_APPLICATION_VERIFICATION || vr == X509_V_OK) && note_idx >= 0 &&
	    SSL_get_ex_data(ssl, note_idx)) {
		snprintf(reason, len, "%s", (const char *)SSL_get_ex_data(ssl, note_idx));
	} else if (vr != X509_V_OK) {
		const char *note = note_idx >= 0 ? SSL_get_ex_data(ssl, note_idx) : NULL;
		snprintf(reason, len, "client certificate rejected: %s (%s)",
			 X509_verify_cert_error_string(vr), note ? note : "no details");
	} else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
		   ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
		snprintf(reason, len, NO_CERT_TEXT ": peer did not return a certificate");
	} else if (e) {
		const char *r = ERR_reason_error_string(e);
		if (r)
			snprintf(reason, len, "%s", r);
		else
			ERR_error_string_n(e, reason, len);
	} else if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_SSL) {
		snprintf(reason, len, "unexpected EOF");
	} else {
		snprintf(reason, len, "unexpected SSL_get_error %d", ssl_err);
	}
}

enum kg_tls_status kg_tls_status(SSL *ssl, int ret, char *reason, size_t reason_len)
{
	int e = SSL_get_error(ssl, ret);
	enum kg_tls_status st;

	switch (e) {
	case SSL_ERROR_NONE: st = KG_TLS_OK; break;
	case SSL_ERROR_ZERO_RETURN: st = KG_TLS_CLOSED; break;
	case SSL_ERROR_WANT_READ: st = KG_TLS_WANT_READ; break;
	case SSL_ERROR_WANT_WRITE: st = KG_TLS_WANT_WRITE; break;
	case SSL_ERROR_WANT_ASYNC: st = KG_TLS_WANT_ASYNC; break;
	/* SYSCALL (EOF or socket error) and a zero return are fatal: retrying
	 * them spins or reads from a dead connection. */
	default: st = KG_TLS_ERROR; break;
	}
	if (reason && reason_len) {
		reason[0] = '\0';
		if (st == KG_TLS_ERROR)
			describe_error(ssl, e, reason, reason_len);
	}
	ERR_clear_error();
	return st;
}

size_t kg_tls_record_len(const unsigned char *p, size_t avail)
{
	if (avail == 0)
		return 0;
	/* Content types 20-23: change_cipher_spec, alert, handshake, data. */
	if (p[0] < 20 || p[0] > 23)
		return SIZE_MAX;
	if (avail < 5)
		return 0;
	size_t len = 5 + ((size_t)p[3] << 8 | p[4]);
	if (len > KG_TLS_RECORD_MAX)
		return SIZE_MAX;
	return avail >= len ? len : 0;
}
