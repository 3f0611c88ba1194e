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
static int note_idx = -1, tickets_idx = -1, access_idx = -1;

static void note_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
		      void *argp)
{
	free(ptr);
}

static void note_init(void)
{
	note_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, note_free);
	tickets_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	access_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
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
	free(SSL_get_ex_data(ssl, note_idx));
	if (SSL_set_ex_data(ssl, note_idx, note) != 1)
		free(note);
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
	    asprintf(&note, "access denied by rule \"%s\" (subject %s)", rule, subject) >= 0) {
		free(SSL_get_ex_data(ssl, note_idx));
		if (SSL_set_ex_data(ssl, note_idx, note) != 1)
			free(note);
	}
	return 0;
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
	if (l->access_rules || l->access_default != KG_ACCESS_ALLOW) {
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

static int load_crl(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
	BIO *b = BIO_new_file(path, "r");
	if (!b)
		return fail(err, errlen, "cannot open CRL %s", path);
	X509_CRL *crl = PEM_read_bio_X509_CRL(b, NULL, no_passphrase_cb, NULL);
	BIO_free(b);
	if (!crl)
		return fail(err, errlen, "cannot read CRL %s", path);
	int ok = X509_STORE_add_crl(SSL_CTX_get_cert_store(ctx), crl);
	X509_CRL_free(crl);
	if (ok != 1)
		return fail(err, errlen, "cannot use CRL %s", path);
	/* Revocation is checked for the client's certificate (the CRL is
	 * the issuing CA's); a missing or stale CRL then fails closed. */
	X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_CRL_CHECK);
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
		int r = load_crl(ctx, ca->crl_path, err, errlen);
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

SSL_CTX *kg_tls_ctx_create(const struct kg_listener_conf *l, struct kg_ticket_keys *tickets,
			   char *err, size_t errlen)
{
	if (pthread_once(&note_once, note_init) != 0 || note_idx < 0 || tickets_idx < 0 ||
	    access_idx < 0) {
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
	    (l->ocsp_stapling &&
	     kg_staple_setup(ctx, l->ca ? l->ca->cert_path : NULL, err, errlen) < 0)) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

#define NO_CERT_TEXT "client certificate required"

const char *const kg_hs_reason_names[KG_HS_REASONS] = {
	"no_cert", "unknown_ca", "expired", "revoked", "bad_eku", "protocol", "access_denied",
	"ocsp"};

enum kg_hs_reason kg_tls_failure_reason(const SSL *ssl, const char *reason)
{
	switch (SSL_get_verify_result(ssl)) {
	case X509_V_OK:
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

	if (vr == X509_V_ERR_APPLICATION_VERIFICATION && note_idx >= 0 &&
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
