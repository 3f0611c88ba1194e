/* tls.c: a real handshake between kgate's server SSL_CTX and an OpenSSL
 * client over an in-memory BIO pair, across the mutual-auth matrix,
 * protocol versions and session resumption. The PKI is generated per test. */
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "certgen.h"
#include "ticket_keys.h"
#include "tls.h"

enum client_cert {
	CC_NONE,
	CC_GOOD,
	CC_OTHER_CA,
	CC_REVOKED,
	CC_NO_EKU,
	CC_SERVER_EKU,
	CC_EXPIRED,
	CC_SELF_SIGNED,
	CC_COUNT
};
static const char *const cc_names[CC_COUNT] = {
	NULL, "good", "other", "revoked", "noeku", "servereku", "expired", "selfsigned",
};

static struct tc_dir dir;
static struct kg_cert_conf server_cert, client_ca;

/* Server side: root → intermediate → leaf, the file holds leaf +
 * intermediate (no root), so the client can only verify if kgate sends
 * the intermediate. Client side: a CA with a CRL, and one client
 * certificate per rejection reason. */
static void make_pki(void)
{
	const long day = 86400;
	tc_dir_create(&dir);
	EVP_PKEY *root_key = tc_key(), *int_key = tc_key(), *srv_key = tc_key(),
		 *cca_key = tc_key(), *other_key = tc_key(), *cli_key = tc_key();
	X509 *root = tc_cert(&(struct tc_cert_opts){.cn = "Server Root", .ca = true}, root_key,
			     NULL, NULL);
	X509 *inter = tc_cert(&(struct tc_cert_opts){.cn = "Server Intermediate", .ca = true},
			      int_key, root, root_key);
	X509 *srv = tc_cert(&(struct tc_cert_opts){.cn = "localhost", .eku = TC_EKU_SERVER},
			    srv_key, inter, int_key);
	X509 *cca = tc_cert(&(struct tc_cert_opts){.cn = "Client CA", .ca = true}, cca_key, NULL,
			    NULL);
	X509 *other = tc_cert(&(struct tc_cert_opts){.cn = "Other CA", .ca = true}, other_key,
			      NULL, NULL);
	X509 *clients[CC_COUNT] = {
		[CC_GOOD] = tc_cert(&(struct tc_cert_opts){.cn = "good", .eku = TC_EKU_CLIENT},
				    cli_key, cca, cca_key),
		[CC_OTHER_CA] = tc_cert(&(struct tc_cert_opts){.cn = "other", .eku = TC_EKU_CLIENT},
					cli_key, other, other_key),
		[CC_REVOKED] = tc_cert(&(struct tc_cert_opts){.cn = "revoked", .eku = TC_EKU_CLIENT},
				       cli_key, cca, cca_key),
		[CC_NO_EKU] = tc_cert(&(struct tc_cert_opts){.cn = "noeku"}, cli_key, cca, cca_key),
		[CC_SERVER_EKU] = tc_cert(&(struct tc_cert_opts){.cn = "servereku",
								.eku = TC_EKU_SERVER},
					  cli_key, cca, cca_key),
		[CC_EXPIRED] = tc_cert(&(struct tc_cert_opts){.cn = "expired", .eku = TC_EKU_CLIENT,
							     .not_before = -10 * day,
							     .not_after = -day},
				       cli_key, cca, cca_key),
		[CC_SELF_SIGNED] = tc_cert(&(struct tc_cert_opts){.cn = "selfsigned",
								 .eku = TC_EKU_CLIENT},
					   cli_key, NULL, NULL),
	};
	X509_CRL *crl = tc_crl(cca, cca_key, &clients[CC_REVOKED], 1, day);

	tc_write_certs(tc_file(&dir, "server.pem"), (X509 *[]){srv, inter}, 2);
	tc_write_key(tc_file(&dir, "server.key"), srv_key, NULL);
	tc_write_certs(tc_file(&dir, "root.pem"), &root, 1);
	tc_write_certs(tc_file(&dir, "client-ca.pem"), &cca, 1);
	tc_write_crl(tc_file(&dir, "client-ca.crl"), crl);
	tc_write_key(tc_file(&dir, "client.key"), cli_key, NULL);
	for (int i = CC_GOOD; i < CC_COUNT; i++) {
		char name[64];
		snprintf(name, sizeof(name), "%s.pem", cc_names[i]);
		tc_write_certs(tc_file(&dir, name), &clients[i], 1);
		X509_free(clients[i]);
	}
	X509_CRL_free(crl);
	X509 *all[] = {root, inter, srv, cca, other};
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		X509_free(all[i]);
	EVP_PKEY *keys[] = {root_key, int_key, srv_key, cca_key, other_key, cli_key};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		EVP_PKEY_free(keys[i]);

	server_cert = (struct kg_cert_conf){.name = "web", .type = KG_CERT_SERVER,
					    .cert_path = strdup(tc_file(&dir, "server.pem")),
					    .key_path = strdup(tc_file(&dir, "server.key"))};
	client_ca = (struct kg_cert_conf){.name = "clients", .type = KG_CERT_CA,
					  .cert_path = strdup(tc_file(&dir, "client-ca.pem")),
					  .crl_path = strdup(tc_file(&dir, "client-ca.crl"))};
}

static void drop_pki(void)
{
	free(server_cert.cert_path);
	free(server_cert.key_path);
	free(client_ca.cert_path);
	free(client_ca.crl_path);
	tc_dir_remove(&dir);
}

static SSL_CTX *server_ctx_tickets(enum kg_mutual_auth mode, bool with_crl,
				   enum kg_session_tickets tickets, struct kg_ticket_keys *tk)
{
	struct kg_cert_conf ca = client_ca;
	if (!with_crl)
		ca.crl_path = NULL;
	struct kg_listener_conf l = {.name = "web", .protocol = KG_PROTO_TLS,
				     .certificate = &server_cert, .mutual_auth = mode,
				     .ca = mode == KG_MTLS_OFF ? NULL : &ca, .verify_depth = 4,
				     .tls_session_cache = KG_TLS_SESSION_CACHE_DEFAULT,
				     .tls_session_tickets = tickets};
	char err[512] = "";
	SSL_CTX *ctx = kg_tls_ctx_create(&l, tk, err, sizeof(err));
	cr_assert_not_null(ctx, "kg_tls_ctx_create: %s", err);
	return ctx;
}

static SSL_CTX *server_ctx(enum kg_mutual_auth mode, bool with_crl)
{
	return server_ctx_tickets(mode, with_crl, KG_SESSION_TICKETS_DEFAULT, NULL);
}

/* A client that verifies the server against the server root only. */
static SSL_CTX *client_ctx(enum client_cert cc, int min_version, int max_version)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	cr_assert_not_null(ctx);
	if (min_version < TLS1_2_VERSION) {
		/* Let the old protocol out of the client so the server refuses it. */
		SSL_CTX_set_security_level(ctx, 0);
		cr_assert_eq(SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0"), 1);
	}
	cr_assert_eq(SSL_CTX_set_min_proto_version(ctx, min_version), 1);
	cr_assert_eq(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
	cr_assert_eq(SSL_CTX_load_verify_file(ctx, tc_file(&dir, "root.pem")), 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (cc != CC_NONE) {
		char name[64];
		snprintf(name, sizeof(name), "%s.pem", cc_names[cc]);
		cr_assert_eq(SSL_CTX_use_certificate_file(ctx, tc_file(&dir, name), SSL_FILETYPE_PEM), 1);
		cr_assert_eq(SSL_CTX_use_PrivateKey_file(ctx, tc_file(&dir, "client.key"),
							 SSL_FILETYPE_PEM), 1);
	}
	return ctx;
}

struct pair {
	SSL *s, *c;
	bool s_done, c_done, s_failed;
	char reason[256];
};

static void pair_open(struct pair *p, SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *resume)
{
	BIO *sb, *cb;
	memset(p, 0, sizeof(*p));
	p->s = SSL_new(sctx);
	p->c = SSL_new(cctx);
	cr_assert(p->s && p->c);
	cr_assert_eq(BIO_new_bio_pair(&sb, 0, &cb, 0), 1);
	/* Each SSL owns its end of the pair from here on. */
	SSL_set_bio(p->s, sb, sb);
	SSL_set_bio(p->c, cb, cb);
	SSL_set_accept_state(p->s);
	SSL_set_connect_state(p->c);
	if (resume)
		cr_assert_eq(SSL_set_session(p->c, resume), 1);
}

static void pair_close(struct pair *p)
{
	SSL_free(p->s);
	SSL_free(p->c);
}

/* Steps both ends until the server finished or failed (or nothing moves). */
static void handshake(struct pair *p)
{
	for (int round = 0; round < 32 && !p->s_done && !p->s_failed; round++) {
		if (!p->c_done) {
			int r = SSL_do_handshake(p->c);
			p->c_done = r == 1;
			ERR_clear_error();
		}
		int r = SSL_do_handshake(p->s);
		if (r == 1) {
			p->s_done = true;
			continue;
		}
		enum kg_tls_status st = kg_tls_status(p->s, r, p->reason, sizeof(p->reason));
		cr_assert_eq(ERR_peek_error(), 0, "kg_tls_status leaves the error queue empty");
		p->s_failed = st == KG_TLS_ERROR || st == KG_TLS_CLOSED;
	}
	if (!p->c_done && p->s_done) {
		p->c_done = SSL_do_handshake(p->c) == 1;
		ERR_clear_error();
	}
}

/* One byte each way through kg_tls_status; in TLS 1.3 this is also where
 * the client processes the server's ticket or alert. */
static bool exchange(struct pair *p)
{
	char buf[8];
	if (SSL_write(p->s, "s", 1) != 1)
		return false;
	int r = SSL_read(p->c, buf, sizeof(buf));
	ERR_clear_error();
	if (r != 1 || buf[0] != 's' || SSL_write(p->c, "c", 1) != 1)
		return false;
	r = SSL_read(p->s, buf, sizeof(buf));
	return kg_tls_status(p->s, r, NULL, 0) == KG_TLS_OK && buf[0] == 'c';
}

struct hs_case {
	const char *desc;
	enum kg_mutual_auth mode;
	enum client_cert cc;
	int min_version, max_version;
	bool no_crl;
	const char *want; /* NULL: success, else a fragment of the server's reason */
};

#define T12 TLS1_2_VERSION, TLS1_2_VERSION
#define T13 TLS1_3_VERSION, TLS1_3_VERSION
#define REJ "client certificate rejected: "

static const struct hs_case cases[] = {
	{"required, valid cert, 1.3", KG_MTLS_REQUIRED, CC_GOOD, T13, false, NULL},
	{"required, valid cert, 1.2", KG_MTLS_REQUIRED, CC_GOOD, T12, false, NULL},
	{"required, no cert, 1.3", KG_MTLS_REQUIRED, CC_NONE, T13, false,
	 "client certificate required: peer did not return a certificate"},
	{"required, no cert, 1.2", KG_MTLS_REQUIRED, CC_NONE, T12, false,
	 "peer did not return a certificate"},
	{"optional, no cert, 1.3", KG_MTLS_OPTIONAL, CC_NONE, T13, false, NULL},
	{"optional, no cert, 1.2", KG_MTLS_OPTIONAL, CC_NONE, T12, false, NULL},
	{"optional, valid cert", KG_MTLS_OPTIONAL, CC_GOOD, T13, false, NULL},
	{"optional, cert from another CA", KG_MTLS_OPTIONAL, CC_OTHER_CA, T13, false,
	 REJ "unable to get local issuer certificate (depth 0, subject CN=other,O=kgate test)"},
	{"off, no cert", KG_MTLS_OFF, CC_NONE, T13, false, NULL},
	{"off, cert not asked for", KG_MTLS_OFF, CC_GOOD, T13, false, NULL},
	{"required, cert from another CA", KG_MTLS_REQUIRED, CC_OTHER_CA, T13, false,
	 REJ "unable to get local issuer certificate (depth 0, subject CN=other"},
	{"required, revoked, 1.3", KG_MTLS_REQUIRED, CC_REVOKED, T13, false,
	 REJ "certificate revoked (depth 0, subject CN=revoked"},
	{"required, revoked, 1.2", KG_MTLS_REQUIRED, CC_REVOKED, T12, false, REJ "certificate revoked"},
	{"required, revoked but no CRL configured", KG_MTLS_REQUIRED, CC_REVOKED, T13, true, NULL},
	{"required, no EKU", KG_MTLS_REQUIRED, CC_NO_EKU, T13, false,
	 REJ "unsuitable certificate purpose (depth 0, subject CN=noeku,O=kgate test, no "
	     "extendedKeyUsage clientAuth)"},
	{"required, serverAuth-only EKU", KG_MTLS_REQUIRED, CC_SERVER_EKU, T13, false,
	 REJ "unsuitable certificate purpose (depth 0, subject CN=servereku"},
	{"required, expired", KG_MTLS_REQUIRED, CC_EXPIRED, T12, false,
	 REJ "certificate has expired (depth 0, subject CN=expired"},
	{"required, self-signed", KG_MTLS_REQUIRED, CC_SELF_SIGNED, T13, false,
	 REJ "self-signed certificate (depth 0, subject CN=selfsigned"},
	{"TLS 1.1 client", KG_MTLS_REQUIRED, CC_GOOD, TLS1_VERSION, TLS1_1_VERSION, false,
	 "unsupported protocol"},
	{"client 1.2-1.3 gets 1.3", KG_MTLS_REQUIRED, CC_GOOD, TLS1_2_VERSION, TLS1_3_VERSION,
	 false, NULL},
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

TC_INDEX_PARAMS(tls, handshake, N_CASES)

ParameterizedTest(size_t *i, tls, handshake, .init = make_pki, .fini = drop_pki)
{
	const struct hs_case *tc = &cases[*i];
	SSL_CTX *sctx = server_ctx(tc->mode, !tc->no_crl);
	SSL_CTX *cctx = client_ctx(tc->cc, tc->min_version, tc->max_version);
	struct pair p;
	pair_open(&p, sctx, cctx, NULL);
	handshake(&p);
	if (!tc->want) {
		cr_expect(p.s_done && p.c_done, "%s: failed: %s", tc->desc, p.reason);
		cr_expect_eq(SSL_version(p.s), tc->max_version, "%s: version", tc->desc);
		cr_expect(exchange(&p), "%s: data exchange", tc->desc);
		/* Leaf + intermediate: the built chain, without the root. */
		cr_expect_eq(sk_X509_num(SSL_get_peer_cert_chain(p.c)), 2, "%s: chain", tc->desc);
		X509 *peer = SSL_get0_peer_certificate(p.s);
		bool sent = tc->cc != CC_NONE && tc->mode != KG_MTLS_OFF;
		cr_expect_eq(peer != NULL, sent, "%s: client certificate seen", tc->desc);
	} else {
		cr_expect(p.s_failed, "%s: server accepted", tc->desc);
		cr_expect(strstr(p.reason, tc->want), "%s:\n  reason \"%s\"\n  wanted \"%s\"",
			  tc->desc, p.reason, tc->want);
		/* Under TLS 1.3 the client may believe it is done; the alert must
		 * still reach it at its first read. */
		if (p.c_done)
			cr_expect(!exchange(&p), "%s: client could talk after rejection", tc->desc);
	}
	pair_close(&p);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

/* A full handshake on a fresh pair; returns the client's session. */
static SSL_SESSION *first_session(SSL_CTX *sctx, SSL_CTX *cctx)
{
	struct pair p;
	pair_open(&p, sctx, cctx, NULL);
	handshake(&p);
	cr_assert(p.s_done && p.c_done, "first handshake: %s", p.reason);
	cr_assert(exchange(&p));
	cr_expect_not(SSL_session_reused(p.s));
	SSL_SESSION *sess = SSL_get1_session(p.c);
	cr_assert_not_null(sess);
	cr_assert(SSL_SESSION_is_resumable(sess), "client got a resumable session");
	SSL_shutdown(p.c);
	SSL_shutdown(p.s);
	pair_close(&p);
	return sess;
}

static size_t ticket_len(const SSL_SESSION *sess)
{
	const unsigned char *tick;
	size_t len = 0;
	SSL_SESSION_get0_ticket(sess, &tick, &len);
	return len;
}

static bool same_ticket(const SSL_SESSION *a, const SSL_SESSION *b)
{
	const unsigned char *ta, *tb;
	size_t la = 0, lb = 0;
	SSL_SESSION_get0_ticket(a, &ta, &la);
	SSL_SESSION_get0_ticket(b, &tb, &lb);
	return la == lb && (la == 0 || memcmp(ta, tb, la) == 0);
}

/* Offers a copy of sess to sctx: true when the server resumed it (then
 * with the client's identity kept). A copy, because an OpenSSL client
 * marks a session it resumed not resumable once a new ticket arrives.
 * renewed: whether the client holds another ticket afterwards. */
static bool offer_session_renewed(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *sess,
				  bool *renewed)
{
	struct pair p;
	SSL_SESSION *copy = SSL_SESSION_dup(sess);
	cr_assert_not_null(copy);
	pair_open(&p, sctx, cctx, copy);
	SSL_SESSION_free(copy);
	handshake(&p);
	cr_assert(p.s_done && p.c_done, "second handshake: %s", p.reason);
	cr_expect(exchange(&p));
	bool reused = SSL_session_reused(p.s);
	cr_expect_eq(SSL_session_reused(p.c), reused, "client and server agree");
	cr_expect_not_null(SSL_get0_peer_certificate(p.s), "client identity kept");
	cr_expect_eq(SSL_get_verify_result(p.s), X509_V_OK);
	*renewed = !same_ticket(SSL_get0_session(p.c), sess);
	pair_close(&p);
	return reused;
}

static bool offer_session(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *sess)
{
	bool renewed;
	return offer_session_renewed(sctx, cctx, sess, &renewed);
}

static void resume_stateful(int version)
{
	SSL_CTX *sctx = server_ctx_tickets(KG_MTLS_REQUIRED, true, KG_TICKETS_STATEFUL, NULL);
	SSL_CTX *cctx = client_ctx(CC_GOOD, version, version);
	SSL_SESSION *sess = first_session(sctx, cctx);
	if (version == TLS1_3_VERSION) {
		/* A stateful ticket is an id into the server cache, not the
		 * encrypted session with the client certificate inside. */
		size_t len = ticket_len(sess);
		cr_expect(len > 0 && len <= 64, "ticket of %zu bytes is not stateful", len);
	}
	cr_expect_eq(SSL_CTX_sess_number(sctx), 1, "server cache holds the session");
	cr_expect(offer_session(sctx, cctx, sess), "server resumed");
	/* The session lives in that SSL_CTX only: a rebuilt one (a listener
	 * change, a restart) makes a full handshake. */
	SSL_CTX *rebuilt = server_ctx_tickets(KG_MTLS_REQUIRED, true, KG_TICKETS_STATEFUL, NULL);
	cr_expect_not(offer_session(rebuilt, cctx, sess), "rebuilt SSL_CTX resumed");
	SSL_CTX_free(rebuilt);
	SSL_SESSION_free(sess);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

/* Stateless tickets under one key set: any SSL_CTX built with it resumes
 * (a listener change, a restart that reloads the keys), until the key
 * that made the ticket is rotated out. */
static void resume_stateless(int version)
{
	char err[512];
	struct kg_ticket_keys *tk = kg_ticket_keys_open(NULL, 3600, 1000000, err, sizeof(err));
	cr_assert_not_null(tk, "%s", err);
	SSL_CTX *sctx = server_ctx_tickets(KG_MTLS_REQUIRED, true, KG_TICKETS_STATELESS, tk);
	SSL_CTX *cctx = client_ctx(CC_GOOD, version, version);
	SSL_SESSION *sess = first_session(sctx, cctx);
	/* The ticket carries the session, the client certificate inside. */
	cr_expect_gt(ticket_len(sess), 256, "ticket of %zu bytes is not stateless",
		     ticket_len(sess));
	cr_expect_eq(SSL_CTX_sess_number(sctx), 0, "no server cache");
	bool renewed;
	cr_expect(offer_session_renewed(sctx, cctx, sess, &renewed), "server resumed");
	/* TLS 1.3 tickets are for one use: a resumption brings a new one. */
	if (version == TLS1_3_VERSION)
		cr_expect(renewed, "no new ticket after a TLS 1.3 resumption");
	SSL_CTX *rebuilt = server_ctx_tickets(KG_MTLS_REQUIRED, true, KG_TICKETS_STATELESS, tk);
	cr_expect(offer_session(rebuilt, cctx, sess), "rebuilt SSL_CTX resumed");
	/* Another listener's SSL_CTX (another session id context) does not. */
	struct kg_listener_conf other = {.name = "other", .protocol = KG_PROTO_TLS,
					 .certificate = &server_cert, .mutual_auth = KG_MTLS_REQUIRED,
					 .ca = &client_ca, .verify_depth = 4,
					 .tls_session_cache = KG_TLS_SESSION_CACHE_DEFAULT,
					 .tls_session_tickets = KG_TICKETS_STATELESS};
	SSL_CTX *octx = kg_tls_ctx_create(&other, tk, err, sizeof(err));
	cr_assert_not_null(octx, "%s", err);
	cr_expect_not(offer_session(octx, cctx, sess), "another listener resumed");
	SSL_CTX_free(octx);
	cr_assert_eq(kg_ticket_keys_rotate(tk, 1000000, true, err, sizeof(err)), 1, "%s", err);
	cr_expect(offer_session(rebuilt, cctx, sess), "resumed under the previous key");
	cr_expect_eq(kg_ticket_keys_take_previous_hits(tk), 1);
	cr_assert_eq(kg_ticket_keys_rotate(tk, 1000000, true, err, sizeof(err)), 1, "%s", err);
	cr_expect_not(offer_session(rebuilt, cctx, sess), "resumed after two rotations");
	SSL_CTX_free(rebuilt);
	SSL_SESSION_free(sess);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	kg_ticket_keys_close(tk);
}

Test(tls, resumption_stateful_tls13, .init = make_pki, .fini = drop_pki)
{
	resume_stateful(TLS1_3_VERSION);
}

Test(tls, resumption_stateful_tls12, .init = make_pki, .fini = drop_pki)
{
	resume_stateful(TLS1_2_VERSION);
}

Test(tls, resumption_stateless_tls13, .init = make_pki, .fini = drop_pki)
{
	resume_stateless(TLS1_3_VERSION);
}

Test(tls, resumption_stateless_tls12, .init = make_pki, .fini = drop_pki)
{
	resume_stateless(TLS1_2_VERSION);
}

/* The negotiation policy seen from clients that want something else. */
struct policy_case {
	const char *desc;
	int version;
	const char *ciphers, *groups; /* client's lists; NULL keeps the default */
	const char *want_reason;      /* NULL: must succeed */
	const char *want_cipher;
	int want_group;               /* NID, 0: not checked */
};

static const struct policy_case policies[] = {
	{"1.2 CBC or non-ECDHE only", TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA:AES128-GCM-SHA256",
	 NULL, "no shared cipher", NULL, 0},
	{"1.2 any cipher: ECDHE+AES-GCM chosen", TLS1_2_VERSION, "ALL", NULL, NULL,
	 "ECDHE-ECDSA-AES128-GCM-SHA256", 0},
	{"1.2 server order: X25519 first", TLS1_2_VERSION, NULL, "P-256:X25519", NULL, NULL,
	 NID_X25519},
	{"1.3 X25519 by default", TLS1_3_VERSION, NULL, NULL, NULL, "TLS_AES_128_GCM_SHA256",
	 NID_X25519},
	{"1.3 group outside the list", TLS1_3_VERSION, NULL, "P-521", "", NULL, 0},
};

#define N_POLICIES (sizeof(policies) / sizeof(policies[0]))

TC_INDEX_PARAMS(tls, policy, N_POLICIES)

ParameterizedTest(size_t *i, tls, policy, .init = make_pki, .fini = drop_pki)
{
	const struct policy_case *pc = &policies[*i];
	SSL_CTX *sctx = server_ctx(KG_MTLS_OFF, false);
	SSL_CTX *cctx = client_ctx(CC_NONE, pc->version, pc->version);
	if (pc->ciphers)
		cr_assert_eq(SSL_CTX_set_cipher_list(cctx, pc->ciphers), 1);
	if (pc->groups)
		cr_assert_eq(SSL_CTX_set1_groups_list(cctx, pc->groups), 1);
	struct pair p;
	pair_open(&p, sctx, cctx, NULL);
	handshake(&p);
	if (pc->want_reason) {
		cr_expect(p.s_failed, "%s: accepted", pc->desc);
		cr_expect(strstr(p.reason, pc->want_reason), "%s: %s", pc->desc, p.reason);
	} else {
		cr_assert(p.s_done, "%s: %s", pc->desc, p.reason);
		if (pc->want_cipher)
			cr_expect_str_eq(SSL_get_cipher_name(p.s), pc->want_cipher, "%s", pc->desc);
		if (pc->want_group)
			cr_expect_eq(SSL_get_negotiated_group(p.s), pc->want_group, "%s", pc->desc);
	}
	pair_close(&p);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

Test(tls, status_mapping, .init = make_pki, .fini = drop_pki)
{
	char reason[256];
	SSL_CTX *sctx = server_ctx(KG_MTLS_OFF, false);
	SSL *s = SSL_new(sctx);
	BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
	cr_assert(s && rb && wb);
	BIO_set_mem_eof_return(rb, -1); /* empty means "no data yet", like a socket */
	SSL_set_bio(s, rb, wb);
	SSL_set_accept_state(s);
	cr_expect_eq(kg_tls_status(s, SSL_do_handshake(s), reason, sizeof(reason)),
		     KG_TLS_WANT_READ);
	cr_expect_str_eq(reason, "");
	static const char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	cr_assert_eq(BIO_write(rb, garbage, sizeof(garbage) - 1), (int)sizeof(garbage) - 1);
	cr_expect_eq(kg_tls_status(s, SSL_do_handshake(s), reason, sizeof(reason)), KG_TLS_ERROR);
	cr_expect(reason[0], "a reason is given");
	cr_expect_eq(ERR_peek_error(), 0);
	SSL_free(s);

	/* After a handshake: close_notify is CLOSED, a bare EOF is fatal. */
	SSL_CTX *cctx = client_ctx(CC_NONE, T13);
	struct pair p;
	pair_open(&p, sctx, cctx, NULL);
	handshake(&p);
	cr_assert(p.s_done && exchange(&p));
	char buf[8];
	cr_expect_eq(kg_tls_status(p.s, SSL_read(p.s, buf, sizeof(buf)), NULL, 0), KG_TLS_WANT_READ);
	SSL_shutdown(p.c);
	cr_expect_eq(kg_tls_status(p.s, SSL_read(p.s, buf, sizeof(buf)), reason, sizeof(reason)),
		     KG_TLS_CLOSED);
	pair_close(&p);

	pair_open(&p, sctx, cctx, NULL);
	handshake(&p);
	cr_assert(p.s_done && exchange(&p));
	cr_assert_eq(BIO_shutdown_wr(SSL_get_wbio(p.c)), 1);
	cr_expect_eq(kg_tls_status(p.s, SSL_read(p.s, buf, sizeof(buf)), reason, sizeof(reason)),
		     KG_TLS_ERROR);
	cr_expect(strstr(reason, "unexpected eof") || strstr(reason, "unexpected EOF"), "%s", reason);
	pair_close(&p);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

Test(tls, ctx_errors_are_reported, .init = make_pki, .fini = drop_pki)
{
	char err[512];
	struct kg_cert_conf bad = server_cert;
	bad.key_path = strdup(tc_file(&dir, "client.key")); /* another key */
	struct kg_listener_conf l = {.name = "web", .certificate = &bad, .verify_depth = 4};
	cr_expect_null(kg_tls_ctx_create(&l, NULL, err, sizeof(err)));
	cr_expect(strstr(err, "certificate \"web\""), "%s", err);
	free(bad.key_path);

	bad = server_cert;
	bad.cert_path = strdup(tc_file(&dir, "missing.pem"));
	cr_expect_null(kg_tls_ctx_create(&l, NULL, err, sizeof(err)));
	cr_expect(strstr(err, "cannot load"), "%s", err);
	free(bad.cert_path);

	struct kg_cert_conf ca = client_ca;
	ca.crl_path = strdup(tc_file(&dir, "missing.crl"));
	l = (struct kg_listener_conf){.name = "web", .certificate = &server_cert, .ca = &ca,
				      .mutual_auth = KG_MTLS_REQUIRED, .verify_depth = 4};
	cr_expect_null(kg_tls_ctx_create(&l, NULL, err, sizeof(err)));
	cr_expect(strstr(err, "CRL"), "%s", err);
	free(ca.crl_path);
	cr_expect_eq(ERR_peek_error(), 0, "error queue left clean");
}
