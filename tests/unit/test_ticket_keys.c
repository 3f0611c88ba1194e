/* ticket_keys.c: the key file (made, reloaded, refused when unusable and
 * then left alone), rotation, and the ticket callback that encrypts with
 * the current key and accepts the current and the previous one. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "certgen.h"
#include "config.h"
#include "ticket_keys.h"

#define T0 1800000000 /* a fixed "now": rotation is tested by moving it */
#define HOUR 3600

static struct tc_dir dir;
static char err[1024];

static void setup(void)
{
	tc_dir_create(&dir);
}

static void teardown(void)
{
	tc_dir_remove(&dir);
}

TestSuite(ticket_keys, .init = setup, .fini = teardown);

static const char *key_file(void)
{
	return tc_file(&dir, KG_TICKET_KEYS_FILE);
}

static char *slurp(const char *path)
{
	char *text = NULL;
	cr_assert_eq(kg_read_file(path, &text), 0, "%s", path);
	return text;
}

/* The state folder's key set at now; the test stops when it cannot open. */
static struct kg_ticket_keys *open_at(time_t now)
{
	struct kg_ticket_keys *tk = kg_ticket_keys_open(dir.path, HOUR, now, err, sizeof(err));
	cr_assert_not_null(tk, "%s", err);
	return tk;
}

static bool same_key(const struct kg_ticket_key *a, const struct kg_ticket_key *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}

Test(ticket_keys, generated_persisted_and_reloaded)
{
	struct kg_ticket_key cur, prev, cur2, prev2;
	struct kg_ticket_keys *tk = open_at(T0);
	cr_expect_str_eq(kg_ticket_keys_path(tk), key_file());
	cr_expect_not(kg_ticket_keys_get(tk, &cur, &prev), "a new file has no previous key");
	cr_expect_eq(cur.created, T0);
	static const unsigned char zero[KG_TICKET_AES_LEN];
	cr_expect_neq(memcmp(cur.aes, zero, sizeof(zero)), 0, "key bytes are random");
	cr_expect_neq(memcmp(cur.aes, cur.hmac, sizeof(cur.aes)), 0);
	kg_ticket_keys_close(tk);

	struct stat sb;
	cr_assert_eq(stat(key_file(), &sb), 0);
	cr_expect_eq(sb.st_mode & 07777, 0600, "mode %o", sb.st_mode & 07777);
	cr_expect_eq(access(tc_file(&dir, KG_TICKET_KEYS_FILE ".tmp"), F_OK), -1,
		     "no temp file left");

	tk = open_at(T0 + 10);
	cr_expect_not(kg_ticket_keys_get(tk, &cur2, &prev2));
	cr_expect(same_key(&cur, &cur2), "the same key after a restart");
	kg_ticket_keys_close(tk);
}

Test(ticket_keys, without_state_dir_random_in_memory)
{
	struct kg_ticket_key a, b, prev;
	struct kg_ticket_keys *tk1 = kg_ticket_keys_open(NULL, HOUR, T0, err, sizeof(err));
	struct kg_ticket_keys *tk2 = kg_ticket_keys_open(NULL, HOUR, T0, err, sizeof(err));
	cr_assert(tk1 && tk2, "%s", err);
	cr_expect_null(kg_ticket_keys_path(tk1));
	kg_ticket_keys_get(tk1, &a, &prev);
	kg_ticket_keys_get(tk2, &b, &prev);
	cr_expect_not(same_key(&a, &b));
	cr_expect_eq(tc_count_files(dir.path), 0);
	kg_ticket_keys_close(tk1);
	kg_ticket_keys_close(tk2);
}

/* A file that cannot be used: the error names the file, and the file is
 * left as it was (it may hold an operator's shared keys). */
struct bad_file {
	const char *desc;
	const char *text; /* NULL: a directory in the file's place */
	mode_t mode;
	const char *want;
};

#define HEX32 "00112233445566778899aabbccddeeff"
#define HEX64 HEX32 HEX32
#define KEY(name, aes, hmac, created)                                                          \
	"{\"name\": \"" name "\", \"aes\": \"" aes "\", \"hmac\": \"" hmac "\", \"created\": "   \
	created "}"
#define GOOD_KEY KEY(HEX32, HEX64, HEX64, "1800000000")

static const struct bad_file bad_files[] = {
	{"not JSON", "garbage\n", 0600, "not a JSON object"},
	{"truncated", "{\"version\": 1, \"keys\": [" GOOD_KEY, 0600, "not a JSON object"},
	{"empty", "", 0600, "not a JSON object"},
	{"short key", "{\"version\": 1, \"keys\": [" KEY(HEX32, HEX32, HEX64, "1") "]}", 0600,
	 "keys[0].aes: expected 64 hex digits"},
	{"not hex", "{\"version\": 1, \"keys\": [" KEY("zz112233445566778899aabbccddeeff", HEX64,
						     HEX64, "1") "]}",
	 0600, "keys[0].name: expected 32 hex digits"},
	{"no keys", "{\"version\": 1, \"keys\": []}", 0600, "keys: expected an array of 1 or 2"},
	{"three keys", "{\"version\": 1, \"keys\": [" GOOD_KEY "," GOOD_KEY "," GOOD_KEY "]}", 0600,
	 "keys: expected an array of 1 or 2"},
	{"same name twice", "{\"version\": 1, \"keys\": [" GOOD_KEY "," GOOD_KEY "]}", 0600,
	 "keys[1].name: the same as keys[0].name"},
	{"missing created", "{\"version\": 1, \"keys\": [{\"name\": \"" HEX32 "\", \"aes\": \"" HEX64
			    "\", \"hmac\": \"" HEX64 "\", \"x\": 1}]}",
	 0600, "keys[0].created: expected a Unix time"},
	{"wrong version", "{\"version\": 2, \"keys\": [" GOOD_KEY "]}", 0600, "version: expected 1"},
	{"readable by group", "{\"version\": 1, \"keys\": [" GOOD_KEY "]}", 0640,
	 "mode 0640, must be readable by its owner only (0600)"},
	{"readable by all", "{\"version\": 1, \"keys\": [" GOOD_KEY "]}", 0644, "mode 0644"},
	{"a directory", NULL, 0700, "not a regular file"},
};

#define N_BAD (sizeof(bad_files) / sizeof(bad_files[0]))

static size_t bad_index[N_BAD];

ParameterizedTestParameters(ticket_keys, unusable_file_refused)
{
	for (size_t i = 0; i < N_BAD; i++)
		bad_index[i] = i;
	return cr_make_param_array(size_t, bad_index, N_BAD);
}

ParameterizedTest(size_t *i, ticket_keys, unusable_file_refused)
{
	const struct bad_file *bf = &bad_files[*i];
	if (bf->text) {
		tc_write_text(key_file(), bf->text);
		cr_assert_eq(chmod(key_file(), bf->mode), 0);
	} else {
		cr_assert_eq(mkdir(key_file(), bf->mode), 0);
	}
	err[0] = '\0';
	cr_expect_null(kg_ticket_keys_open(dir.path, HOUR, T0, err, sizeof(err)), "%s: opened",
		       bf->desc);
	cr_expect(strstr(err, key_file()), "%s: error names the file: %s", bf->desc, err);
	cr_expect(strstr(err, bf->want), "%s:\n  error \"%s\"\n  wanted \"%s\"", bf->desc, err,
		  bf->want);
	if (bf->text) {
		char *now = slurp(key_file());
		cr_expect_str_eq(now, bf->text, "%s: the file was changed", bf->desc);
		free(now);
	}
}

Test(ticket_keys, missing_state_dir_is_an_error)
{
	const char *gone = tc_file(&dir, "no/such/dir");
	cr_expect_null(kg_ticket_keys_open(gone, HOUR, T0, err, sizeof(err)));
	cr_expect(strstr(err, gone), "%s", err);
}

Test(ticket_keys, rotation_keeps_the_previous_key)
{
	struct kg_ticket_key first, cur, prev;
	struct kg_ticket_keys *tk = open_at(T0);
	kg_ticket_keys_get(tk, &first, &prev);
	cr_expect_eq(kg_ticket_keys_due_ms(tk, T0), HOUR * 1000);
	cr_expect_eq(kg_ticket_keys_rotate(tk, T0 + HOUR - 1, false, err, sizeof(err)), 0,
		     "rotated before it was due");
	cr_expect_eq(kg_ticket_keys_due_ms(tk, T0 + HOUR - 1), 1000);
	cr_expect_eq(kg_ticket_keys_due_ms(tk, T0 + HOUR + 5), 0);
	cr_assert_eq(kg_ticket_keys_rotate(tk, T0 + HOUR, false, err, sizeof(err)), 1, "%s", err);
	cr_assert(kg_ticket_keys_get(tk, &cur, &prev));
	cr_expect(same_key(&prev, &first), "the old current key is the previous one");
	cr_expect_not(same_key(&cur, &first));
	cr_expect_eq(cur.created, T0 + HOUR);
	cr_expect_eq(kg_ticket_keys_due_ms(tk, T0 + HOUR), HOUR * 1000);
	kg_ticket_keys_close(tk);

	/* The file holds both: a restart finds them. */
	struct kg_ticket_key cur2, prev2;
	tk = open_at(T0 + HOUR + 1);
	cr_assert(kg_ticket_keys_get(tk, &cur2, &prev2));
	cr_expect(same_key(&cur2, &cur) && same_key(&prev2, &prev));
	kg_ticket_keys_close(tk);
}

Test(ticket_keys, a_stale_file_is_rotated_at_open)
{
	struct kg_ticket_key first, cur, prev;
	struct kg_ticket_keys *tk = open_at(T0);
	kg_ticket_keys_get(tk, &first, &prev);
	kg_ticket_keys_close(tk);
	tk = open_at(T0 + 2 * HOUR);
	cr_assert(kg_ticket_keys_get(tk, &cur, &prev));
	cr_expect(same_key(&prev, &first));
	cr_expect_eq(cur.created, T0 + 2 * HOUR);
	kg_ticket_keys_close(tk);
}

Test(ticket_keys, failed_rotation_keeps_keys_and_retries_later)
{
	struct kg_ticket_key before, after, prev;
	struct kg_ticket_keys *tk = open_at(T0);
	kg_ticket_keys_get(tk, &before, &prev);
	/* The temp file's name taken by a folder: the write fails. */
	cr_assert_eq(mkdir(tc_file(&dir, KG_TICKET_KEYS_FILE ".tmp"), 0700), 0);
	cr_assert_eq(mkdir(tc_file(&dir, KG_TICKET_KEYS_FILE ".tmp/x"), 0700), 0);
	cr_expect_lt(kg_ticket_keys_rotate(tk, T0 + HOUR, false, err, sizeof(err)), 0);
	cr_expect(strstr(err, key_file()), "%s", err);
	cr_expect_not(kg_ticket_keys_get(tk, &after, &prev), "no previous key appeared");
	cr_expect(same_key(&before, &after), "keys in use unchanged");
	cr_expect_eq(kg_ticket_keys_due_ms(tk, T0 + HOUR), 60000, "retried in a minute");
	kg_ticket_keys_close(tk);
}

/* The callback as OpenSSL drives it: encrypt and MAC a ticket body, then
 * look its key name up to decrypt and check it. */
struct ticket {
	unsigned char name[KG_TICKET_NAME_LEN], iv[EVP_MAX_IV_LENGTH];
	unsigned char body[64], mac[EVP_MAX_MD_SIZE];
	int body_len;
	size_t mac_len;
};

static EVP_MAC_CTX *hmac_ctx(void)
{
	EVP_MAC *mac = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL);
	cr_assert_not_null(mac);
	EVP_MAC_CTX *h = EVP_MAC_CTX_new(mac);
	EVP_MAC_free(mac);
	cr_assert_not_null(h);
	return h;
}

static const char secret[] = "the session, client certificate included";

static void make_ticket(struct kg_ticket_keys *tk, struct ticket *t)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	EVP_MAC_CTX *h = hmac_ctx();
	int n = 0, fin = 0;
	cr_assert_eq(kg_ticket_keys_crypt(tk, t->name, t->iv, c, h, 1), 1);
	cr_assert_eq(EVP_EncryptUpdate(c, t->body, &n, (const unsigned char *)secret,
				       (int)strlen(secret)), 1);
	cr_assert_eq(EVP_EncryptFinal_ex(c, t->body + n, &fin), 1);
	t->body_len = n + fin;
	cr_assert_eq(EVP_MAC_init(h, NULL, 0, NULL), 1);
	cr_assert_eq(EVP_MAC_update(h, t->body, (size_t)t->body_len), 1);
	cr_assert_eq(EVP_MAC_final(h, t->mac, &t->mac_len, sizeof(t->mac)), 1);
	EVP_MAC_CTX_free(h);
	EVP_CIPHER_CTX_free(c);
}

/* The callback's answer for t; when it accepts, the MAC and the
 * plaintext must come out right. */
static int open_ticket(struct kg_ticket_keys *tk, struct ticket *t)
{
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
	EVP_MAC_CTX *h = hmac_ctx();
	int r = kg_ticket_keys_crypt(tk, t->name, t->iv, c, h, 0);
	if (r > 0) {
		unsigned char mac[EVP_MAX_MD_SIZE], plain[64];
		size_t mac_len = 0;
		int n = 0, fin = 0;
		cr_assert_eq(EVP_MAC_init(h, NULL, 0, NULL), 1);
		cr_assert_eq(EVP_MAC_update(h, t->body, (size_t)t->body_len), 1);
		cr_assert_eq(EVP_MAC_final(h, mac, &mac_len, sizeof(mac)), 1);
		cr_expect(mac_len == t->mac_len && memcmp(mac, t->mac, mac_len) == 0, "HMAC");
		cr_assert_eq(EVP_DecryptUpdate(c, plain, &n, t->body, t->body_len), 1);
		cr_assert_eq(EVP_DecryptFinal_ex(c, plain + n, &fin), 1);
		cr_expect_eq((size_t)(n + fin), strlen(secret));
		cr_expect_eq(memcmp(plain, secret, strlen(secret)), 0, "plaintext");
	}
	EVP_MAC_CTX_free(h);
	EVP_CIPHER_CTX_free(c);
	return r;
}

Test(ticket_keys, ticket_accepted_until_its_key_is_rotated_out)
{
	struct kg_ticket_keys *tk = open_at(T0);
	struct ticket a, b;
	make_ticket(tk, &a);
	make_ticket(tk, &b);
	cr_expect_neq(memcmp(a.iv, b.iv, 16), 0, "a fresh IV per ticket");
	cr_expect_eq(open_ticket(tk, &a), 1, "current key");
	cr_expect_eq(kg_ticket_keys_take_previous_hits(tk), 0);

	cr_assert_eq(kg_ticket_keys_rotate(tk, T0, true, err, sizeof(err)), 1, "%s", err);
	cr_expect_eq(open_ticket(tk, &a), 2, "previous key: accepted, to be renewed");
	cr_expect_eq(kg_ticket_keys_take_previous_hits(tk), 1);
	cr_expect_eq(kg_ticket_keys_take_previous_hits(tk), 0, "read and reset");

	/* A restart in between changes nothing. */
	kg_ticket_keys_close(tk);
	tk = open_at(T0);
	cr_expect_eq(open_ticket(tk, &a), 2, "previous key after a restart");

	cr_assert_eq(kg_ticket_keys_rotate(tk, T0, true, err, sizeof(err)), 1, "%s", err);
	cr_expect_eq(open_ticket(tk, &a), 0, "unknown after two rotations");
	struct ticket forged = a;
	forged.name[0] ^= 1;
	cr_expect_eq(open_ticket(tk, &forged), 0, "unknown key name");
	kg_ticket_keys_close(tk);
}

/* Store mode: another instance's set, installed whole, opens its tickets
 * and is cached in the key file; the text round-trips; rotation_s 0 never
 * rotates here (the store does). */
Test(ticket_keys, installed_set_opens_the_other_instances_tickets)
{
	struct kg_ticket_keys *other = kg_ticket_keys_open(NULL, HOUR, T0, err, sizeof(err));
	cr_assert_not_null(other, "%s", err);
	cr_assert_eq(kg_ticket_keys_rotate(other, T0, true, err, sizeof(err)), 1, "%s", err);
	struct ticket t;
	make_ticket(other, &t);

	struct kg_ticket_keys *tk = kg_ticket_keys_open(dir.path, 0, T0, err, sizeof(err));
	cr_assert_not_null(tk, "%s", err);
	cr_expect_eq(kg_ticket_keys_due_ms(tk, T0 + 100 * HOUR), INT64_MAX);
	cr_expect_eq(kg_ticket_keys_rotate(tk, T0 + 100 * HOUR, false, err, sizeof(err)), 0);
	cr_expect_eq(open_ticket(tk, &t), 0, "not yet the other's keys");

	struct kg_ticket_key keys[2], parsed[2];
	size_t n = 0;
	cr_assert(kg_ticket_keys_get(other, &keys[0], &keys[1]));
	char text[KG_TICKET_KEYS_TEXT_MAX];
	cr_assert_eq(kg_ticket_keys_format(keys, 2, text, sizeof(text)), 0);
	cr_assert_eq(kg_ticket_keys_parse("x", text, parsed, &n, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(n, 2);
	cr_expect(same_key(&parsed[0], &keys[0]) && same_key(&parsed[1], &keys[1]));

	cr_expect_eq(kg_ticket_keys_install(tk, parsed, n, err, sizeof(err)), 1, "%s", err);
	cr_expect_eq(kg_ticket_keys_install(tk, parsed, n, err, sizeof(err)), 0, "the same set");
	cr_expect_eq(open_ticket(tk, &t), 1, "the other's current key");
	char *cached = slurp(key_file());
	cr_expect_str_eq(cached, text, "cached as the key file");
	free(cached);

	/* One key: the previous one is gone. */
	cr_expect_eq(kg_ticket_keys_install(tk, &parsed[1], 1, err, sizeof(err)), 1, "%s", err);
	cr_expect_eq(open_ticket(tk, &t), 0);
	cr_expect_eq(kg_ticket_keys_install(tk, parsed, 3, err, sizeof(err)), -EINVAL);
	kg_ticket_keys_close(tk);
	kg_ticket_keys_close(other);
}
