/* seal.c: KEK files (the `openssl rand -hex 32` format and every way a
 * file can be wrong), sealing round trips, and each way a sealed value can
 * fail to open: another KEK, another context, a changed byte anywhere, a
 * cut value. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "b64.h"
#include "certgen.h"
#include "seal.h"

static struct tc_dir dir;
static char err[512];

static void setup(void)
{
	tc_dir_create(&dir);
	err[0] = '\0';
}

static void teardown(void)
{
	tc_dir_remove(&dir);
}

TestSuite(seal, .init = setup, .fini = teardown);

#define HEX_A "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define HEX_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

/* Writes a KEK file of exactly len bytes with the given mode. */
static const char *kek_file(const char *name, const char *text, size_t len, mode_t mode)
{
	const char *path = tc_file(&dir, name);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f, "%s", path);
	cr_assert_eq(fwrite(text, 1, len, f), len);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(chmod(path, mode), 0);
	return path;
}

static struct kg_kek *load_text(const char *name, const char *text)
{
	return kg_kek_load(kek_file(name, text, strlen(text), 0600), err, sizeof(err));
}

struct kek_case {
	const char *name;
	const char *text;
	size_t len; /* 0: strlen(text) */
	mode_t mode;
	const char *err_has; /* NULL: accepted */
};

static const struct kek_case kek_cases[] = {
	{"hex with newline", HEX_A "\n", 0, 0600, NULL},
	{"hex without newline", HEX_A, 0, 0600, NULL},
	{"hex with CRLF", HEX_A "\r\n", 0, 0400, NULL},
	{"upper-case hex", "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF\n", 0,
	 0640, NULL},
	{"short", "0011223344556677\n", 0, 0600, "expected 64 hexadecimal digits"},
	{"one digit short",
	 "0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 0, 0600,
	 "expected 64 hexadecimal digits"},
	{"too long", HEX_A "00\n", 0, 0600, "expected 64 hexadecimal digits"},
	{"two newlines", HEX_A "\n\n", 0, 0600, "expected 64 hexadecimal digits"},
	{"non-hex", "zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 0,
	 0600, "expected 64 hexadecimal digits"},
	{"empty", "", 0, 0600, "expected 64 hexadecimal digits"},
	{"32 raw bytes", "0123456789abcdef0123456789abcdef", 0, 0600,
	 "expected 64 hexadecimal digits"},
	{"world-readable", HEX_A "\n", 0, 0644, "lets other users access it; chmod 600"},
	{"world-writable", HEX_A "\n", 0, 0602, "mode 0602"},
};

#define N_KEK (sizeof(kek_cases) / sizeof(kek_cases[0]))

ParameterizedTestParameters(seal, kek_file)
{
	static size_t idx[N_KEK];
	for (size_t i = 0; i < N_KEK; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, N_KEK);
}

ParameterizedTest(size_t *i, seal, kek_file, .init = setup, .fini = teardown)
{
	const struct kek_case *c = &kek_cases[*i];
	const char *path =
		kek_file("kek", c->text, c->len ? c->len : strlen(c->text), c->mode);
	struct kg_kek *k = kg_kek_load(path, err, sizeof(err));
	if (!c->err_has) {
		cr_assert_not_null(k, "%s: refused: %s", c->name, err);
		cr_expect_eq(strlen(kg_kek_id(k)), 16, "%s", c->name);
		kg_kek_destroy(k);
		return;
	}
	cr_assert_null(k, "%s: accepted", c->name);
	cr_expect(strstr(err, c->err_has) != NULL, "%s: \"%s\"", c->name, err);
	cr_expect(strstr(err, path) != NULL, "%s: the file is not named: \"%s\"", c->name, err);
}

Test(seal, kek_missing_file_and_directory)
{
	cr_expect_null(kg_kek_load(tc_file(&dir, "nope"), err, sizeof(err)));
	cr_expect(strstr(err, "No such file") != NULL, "%s", err);
	cr_expect_null(kg_kek_load(dir.path, err, sizeof(err)));
	cr_expect(strstr(err, "not a regular file") != NULL, "%s", err);
}

/* The format `openssl rand -hex 32 > kek` writes, made by openssl itself. */
Test(seal, kek_from_openssl_rand)
{
	char cmd[1024];
	const char *path = tc_file(&dir, "kek");
	snprintf(cmd, sizeof(cmd), "umask 077 && openssl rand -hex 32 > '%s'", path);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
	struct kg_kek *k = kg_kek_load(path, err, sizeof(err));
	cr_assert_not_null(k, "%s", err);
	char *sealed;
	cr_assert_eq(kg_seal(k, "ctx", "x", 1, &sealed, err, sizeof(err)), 0, "%s", err);
	unsigned char *p;
	size_t n;
	cr_assert_eq(kg_unseal(k, "ctx", sealed, &p, &n, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(n, 1);
	kg_seal_free(p, n);
	free(sealed);
	kg_kek_destroy(k);
}

/* The key id is SHA-256's first 8 bytes: fixed by the key alone. */
Test(seal, key_id)
{
	struct kg_kek *a = load_text("a", HEX_A "\n");
	struct kg_kek *a2 = load_text("a2", HEX_A);
	struct kg_kek *b = load_text("b", HEX_B);
	cr_assert(a && a2 && b, "%s", err);
	cr_expect_str_eq(kg_kek_id(a), kg_kek_id(a2));
	cr_expect_str_neq(kg_kek_id(a), kg_kek_id(b));
	/* printf 0011..eeff | xxd -r -p | sha256sum | cut -c1-16 */
	cr_expect_str_eq(kg_kek_id(a), "4773d12e2371bb93");
	kg_kek_destroy(a);
	kg_kek_destroy(a2);
	kg_kek_destroy(b);
}

Test(seal, round_trip)
{
	struct kg_kek *k = load_text("a", HEX_A);
	cr_assert_not_null(k, "%s", err);
	static const unsigned char bin[] = {0, 1, 2, 0xff, 0, 'x'};
	const struct {
		const void *data;
		size_t len;
	} cases[] = {{"", 0}, {"k", 1}, {"-----BEGIN PRIVATE KEY-----\nabc\n", 32}, {bin, 6}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *s1, *s2;
		cr_assert_eq(kg_seal(k, "/kgate/certs/web", cases[i].data, cases[i].len, &s1,
				     err, sizeof(err)),
			     0, "%s", err);
		cr_assert_eq(kg_seal(k, "/kgate/certs/web", cases[i].data, cases[i].len, &s2,
				     err, sizeof(err)),
			     0, "%s", err);
		cr_expect(kg_is_sealed(s1));
		/* A fresh nonce each time: equal secrets do not look equal. */
		cr_expect_str_neq(s1, s2);
		for (const char *c = s1; *c; c++)
			cr_expect(*c > ' ' && *c < 127 && *c != '"' && *c != '\\',
				  "not JSON-safe: %s", s1);
		unsigned char *p;
		size_t n;
		cr_assert_eq(kg_unseal(k, "/kgate/certs/web", s1, &p, &n, err, sizeof(err)), 0,
			     "case %zu: %s", i, err);
		cr_expect_eq(n, cases[i].len);
		cr_expect(n == 0 || memcmp(p, cases[i].data, n) == 0);
		cr_expect_eq(p[n], '\0');
		kg_seal_free(p, n);
		free(s1);
		free(s2);
	}
	kg_kek_destroy(k);
}

Test(seal, wrong_kek_named)
{
	struct kg_kek *a = load_text("a", HEX_A), *b = load_text("b", HEX_B);
	cr_assert(a && b, "%s", err);
	char *s;
	cr_assert_eq(kg_seal(a, "ctx", "secret", 6, &s, err, sizeof(err)), 0, "%s", err);
	unsigned char *p = (unsigned char *)"unchanged";
	size_t n = 99;
	cr_expect_eq(kg_unseal(b, "ctx", s, &p, &n, err, sizeof(err)), -EKEYREJECTED);
	cr_expect_null(p);
	char want[256];
	snprintf(want, sizeof(want),
		 "sealed with another key-encryption key (id %s, this one is %s)", kg_kek_id(a),
		 kg_kek_id(b));
	cr_expect_str_eq(err, want);
	free(s);
	kg_kek_destroy(a);
	kg_kek_destroy(b);
}

Test(seal, other_context_refused)
{
	struct kg_kek *k = load_text("a", HEX_A);
	cr_assert_not_null(k, "%s", err);
	char *s;
	cr_assert_eq(kg_seal(k, "/kgate/certs/web", "secret", 6, &s, err, sizeof(err)), 0);
	unsigned char *p;
	size_t n;
	cr_expect_eq(kg_unseal(k, "/kgate/certs/api", s, &p, &n, err, sizeof(err)), -EBADMSG);
	cr_expect(strstr(err, "does not verify") != NULL, "%s", err);
	cr_expect_eq(kg_unseal(k, "", s, &p, &n, err, sizeof(err)), -EBADMSG);
	free(s);
	kg_kek_destroy(k);
}

/* bin, n re-encoded as sealed text does not open, with error want. */
static void expect_unseal_fails(const struct kg_kek *k, const unsigned char *bin, size_t n,
				int want, const char *what, size_t at)
{
	char *enc, text[256];
	cr_assert_eq(kg_b64_encode(bin, n, &enc), 0);
	snprintf(text, sizeof(text), "%s%s", KG_SEAL_PREFIX, enc);
	free(enc);
	unsigned char *p;
	size_t plen;
	cr_expect_eq(kg_unseal(k, "ctx", text, &p, &plen, err, sizeof(err)), want, "%s %zu: %s",
		     what, at, err);
	cr_expect_null(p, "%s %zu", what, at);
}

/* Each byte of the sealed form changed in turn: version, key id, nonce,
 * ciphertext, tag. None opens; version and key id are named as such. */
Test(seal, every_byte_tampered)
{
	struct kg_kek *k = load_text("a", HEX_A);
	cr_assert_not_null(k, "%s", err);
	char *s;
	cr_assert_eq(kg_seal(k, "ctx", "secret!", 7, &s, err, sizeof(err)), 0);
	const char *b = s + strlen(KG_SEAL_PREFIX);
	unsigned char *bin;
	size_t n;
	cr_assert_eq(kg_b64_decode(b, strlen(b), &bin, &n), 0);
	cr_assert_eq(n, 1 + 8 + 12 + 7 + 16);
	for (size_t i = 0; i < n; i++) {
		bin[i] ^= 0x01;
		int want = i == 0 ? -EPROTONOSUPPORT : i < 9 ? -EKEYREJECTED : -EBADMSG;
		expect_unseal_fails(k, bin, n, want, "byte changed:", i);
		bin[i] ^= 0x01;
	}
	/* Cut in the binary form (valid base64 of fewer bytes): the tag or
	 * the ciphertext is short, so it does not verify or is too short. */
	for (size_t cut = 0; cut < n; cut++)
		expect_unseal_fails(k, bin, cut, cut < 1 + 8 + 12 + 16 ? -EINVAL : -EBADMSG,
				    "cut at", cut);
	free(bin);
	free(s);
	kg_kek_destroy(k);
}

Test(seal, malformed_text)
{
	struct kg_kek *k = load_text("a", HEX_A);
	cr_assert_not_null(k, "%s", err);
	char *s;
	cr_assert_eq(kg_seal(k, "ctx", "secret", 6, &s, err, sizeof(err)), 0);
	const struct {
		const char *text;
		int want;
		const char *err_has;
	} cases[] = {
		{"", -EINVAL, "no \"kgseal1:\" prefix"},
		{"plain secret", -EINVAL, "prefix"},
		{"kgseal2:AAAA", -EINVAL, "prefix"},
		{"kgseal1:", -EINVAL, "too short"},
		{"kgseal1:!!!!", -EINVAL, "not base64"},
		{"kgseal1:AAAAAAAAAAAA", -EINVAL, "too short"},
	};
	unsigned char *p;
	size_t n;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_expect_eq(kg_unseal(k, "ctx", cases[i].text, &p, &n, err, sizeof(err)),
			     cases[i].want, "%s", cases[i].text);
		cr_expect(strstr(err, cases[i].err_has) != NULL, "%s: %s", cases[i].text, err);
	}
	/* Cut at every length: refused, never read past the end. */
	size_t len = strlen(s);
	for (size_t cut = 0; cut < len; cut++) {
		char *t = strndup(s, cut);
		cr_assert_not_null(t);
		cr_expect_neq(kg_unseal(k, "ctx", t, &p, &n, err, sizeof(err)), 0, "cut %zu", cut);
		free(t);
	}
	free(s);
	kg_kek_destroy(k);
}
