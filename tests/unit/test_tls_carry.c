/* tls_carry.c: what an upgraded process takes from the old one's session
 * text. A real session's round trip across an upgrade is in
 * tests/integration/test_upgrade.py (test_resumption_survives_the_upgrade). */
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <openssl/ssl.h>

#include "tls_carry.h"

static SSL_CTX *server_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	cr_assert_not_null(ctx);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	cr_assert_eq(kg_tls_carry_setup(ctx), 0);
	return ctx;
}

Test(tls_carry, import_takes_only_well_formed_lines_of_its_listener)
{
	static const struct {
		const char *text;
		int taken;
	} cases[] = {
		{"", 0},
		{"\n\n", 0},
		{"web\t0a0b\tAAAA\n", 1},
		{"web\t0a0b\tAAAA\nweb\t0c\tAAECAw==\n", 2},
		{"other\t0a0b\tAAAA\n", 0},              /* another listener's */
		{"webx\t0a0b\tAAAA\n", 0},
		{"web\t0a0\tAAAA\n", 0},                 /* odd hex */
		{"web\t0A0B\tAAAA\n", 0},                /* upper case is not what we write */
		{"web\t\tAAAA\n", 0},                    /* no id */
		{"web\t0a0b\t\n", 0},                    /* no session */
		{"web\t0a0b\tAAA\n", 0},                 /* base64 not in quads */
		{"web\t0a0b\tA*AA\n", 0},                /* not base64 */
		{"web\t0a0b\n", 0},
		{"web\n", 0},
		{"web\t0000000000000000000000000000000000000000000000000000000000000000ff\tAAAA\n", 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		SSL_CTX *ctx = server_ctx();
		cr_expect_eq(kg_tls_carry_import(ctx, "web", cases[i].text), cases[i].taken,
			     "case %zu: %s", i, cases[i].text);
		SSL_CTX_free(ctx);
	}
}

Test(tls_carry, export_empties_the_cache_and_import_serves_the_sessions)
{
	SSL_CTX *ctx = server_ctx();
	SSL *probe = SSL_new(ctx);
	cr_assert_not_null(probe);
	/* ECDHE-ECDSA-AES128-GCM-SHA256: a session is encoded with its cipher. */
	const SSL_CIPHER *cipher = SSL_CIPHER_find(probe, (const unsigned char *)"\xc0\x2b");
	SSL_SESSION *s = SSL_SESSION_new();
	cr_assert_not_null(s);
	cr_assert_eq(SSL_SESSION_set_cipher(s, cipher), 1);
	SSL_free(probe);
	static const unsigned char id[] = {1, 2, 3, 4};
	static const unsigned char key[48] = {9};
	cr_assert_eq(SSL_SESSION_set1_id(s, id, sizeof(id)), 1);
	cr_assert_eq(SSL_SESSION_set1_master_key(s, key, sizeof(key)), 1);
	cr_assert_eq(SSL_SESSION_set_protocol_version(s, TLS1_2_VERSION), 1);
	cr_assert_eq(SSL_SESSION_set_time(s, (long)time(NULL)), (long)time(NULL));
	cr_assert_eq(SSL_SESSION_set_timeout(s, 300), 1);
	cr_assert_eq(SSL_CTX_add_session(ctx, s), 1);
	SSL_SESSION_free(s);
	cr_assert_eq(SSL_CTX_sess_number(ctx), 1);

	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	cr_assert_not_null(f);
	cr_expect_eq(kg_tls_carry_export(ctx, "web", f), 1);
	cr_assert_eq(fclose(f), 0);
	cr_expect_eq(SSL_CTX_sess_number(ctx), 0, "the cache went with the export");
	cr_expect_eq(strncmp(text, "web\t01020304\t", 13), 0, "%s", text);
	SSL_CTX_free(ctx);

	/* The next process: the session, by its id, once. */
	ctx = server_ctx();
	cr_assert_eq(kg_tls_carry_import(ctx, "web", text), 1);
	SSL_SESSION *got = NULL;
	SSL *ssl = SSL_new(ctx);
	cr_assert_not_null(ssl);
	int copy = 1;
	SSL_SESSION *(*get)(SSL *, const unsigned char *, int, int *) = SSL_CTX_sess_get_get_cb(ctx);
	cr_assert_not_null(get);
	got = get(ssl, id, sizeof(id), &copy);
	cr_assert_not_null(got);
	cr_expect_eq(copy, 0);
	unsigned got_len = 0;
	const unsigned char *got_id = SSL_SESSION_get_id(got, &got_len);
	cr_expect(got_len == sizeof(id) && memcmp(got_id, id, sizeof(id)) == 0);
	SSL_SESSION_free(got);
	cr_expect_null(get(ssl, id, sizeof(id), &copy), "a carried session is handed out once");
	static const unsigned char other[] = {1, 2, 3, 5};
	cr_expect_null(get(ssl, other, sizeof(other), &copy));
	SSL_free(ssl);
	SSL_CTX_free(ctx);
	free(text);
}
