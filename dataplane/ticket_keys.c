/* The session-ticket key set (ticket_keys.h). */
#include "ticket_keys.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <json-c/json.h>
#include <kgate/log.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "config.h"
#include "errors.h"
#include "hex.h"
#include "state.h"

#define FILE_VERSION 1
/* After a failed rotation (the state directory not writable, a full disk)
 * the control thread tries again this much later, not in a loop. */
#define RETRY_S 60

struct kg_ticket_keys {
	char *path; /* NULL: keys in memory only */
	unsigned rotation_s;
	/* Workers read the keys in every handshake that issues or presents a
	 * ticket, concurrently; one thread rotates them every few hours. A
	 * read lock held for a context setup is nothing next to a handshake
	 * (about 1 ms), and unlike an atomic pointer to a refcounted set it
	 * needs no deferred free (a worker could load the pointer, then the
	 * rotator drop the last reference before the worker takes one). */
	pthread_rwlock_t lock;
	struct kg_ticket_key cur, prev; /* under lock */
	bool has_prev;                  /* under lock */
	int64_t retry_at;               /* rotating thread only: 0, or no rotation before */
	atomic_uint_fast64_t prev_hits;
	EVP_CIPHER *cipher; /* AES-256-CBC, fetched once rather than per ticket */
};

int kg_ticket_key_new(struct kg_ticket_key *k, time_t now, char *err, size_t errlen)
{
	/* The secret parts come from the private DRBG, kept apart from the
	 * one whose output goes on the wire (IVs, the key name). */
	if (RAND_bytes(k->name, sizeof(k->name)) != 1 ||
	    RAND_priv_bytes(k->aes, sizeof(k->aes)) != 1 ||
	    RAND_priv_bytes(k->hmac, sizeof(k->hmac)) != 1)
		return kg_fail(err, errlen, EIO, "ticket keys: the random generator failed");
	k->created = (int64_t)now;
	return 0;
}

/* OpenSSL writes upper-case digits and a NUL; kg_hex_decode takes either case. */
static void hex_encode(char *out, size_t outlen, const unsigned char *in, size_t len)
{
	if (OPENSSL_buf2hexstr_ex(out, outlen, NULL, in, len, '\0') != 1)
		out[0] = '\0'; /* cannot happen: outlen is 2 * len + 1 */
}

int kg_ticket_keys_format(const struct kg_ticket_key *keys, size_t n, char *text, size_t len)
{
	char name[2 * KG_TICKET_NAME_LEN + 1], aes[2 * KG_TICKET_AES_LEN + 1],
		hmac[2 * KG_TICKET_HMAC_LEN + 1];
	if (n < 1 || n > 2 || len < KG_TICKET_KEYS_TEXT_MAX)
		return -EINVAL;
	size_t used = (size_t)snprintf(text, len, "{\n  \"version\": %d,\n  \"keys\": [",
				       FILE_VERSION);
	for (size_t i = 0; i < n; i++) {
		hex_encode(name, sizeof(name), keys[i].name, sizeof(keys[i].name));
		hex_encode(aes, sizeof(aes), keys[i].aes, sizeof(keys[i].aes));
		hex_encode(hmac, sizeof(hmac), keys[i].hmac, sizeof(keys[i].hmac));
		used += (size_t)snprintf(text + used, len - used,
					 "%s\n    {\"name\": \"%s\", \"aes\": \"%s\", "
					 "\"hmac\": \"%s\", \"created\": %lld}",
					 i ? "," : "", name, aes, hmac, (long long)keys[i].created);
	}
	snprintf(text + used, len - used, "\n  ]\n}\n");
	OPENSSL_cleanse(aes, sizeof(aes));
	OPENSSL_cleanse(hmac, sizeof(hmac));
	return 0;
}

/* The file's text for keys[0..n), written atomically. */
static int persist(const char *path, const struct kg_ticket_key *keys, size_t n, char *err,
		   size_t errlen)
{
	char text[KG_TICKET_KEYS_TEXT_MAX];
	int ret = kg_ticket_keys_format(keys, n, text, sizeof(text));
	if (ret < 0)
		return kg_fail(err, errlen, -ret, "%s: cannot format %zu keys", path, n);
	ret = kg_state_write_atomic(path, text, err, errlen);
	OPENSSL_cleanse(text, sizeof(text));
	return ret;
}

static int parse_key(const char *path, size_t i, json_object *o, struct kg_ticket_key *k,
		     char *err, size_t errlen)
{
	static const struct {
		const char *key;
		size_t off, len;
	} hex[] = {
		{"name", offsetof(struct kg_ticket_key, name), KG_TICKET_NAME_LEN},
		{"aes", offsetof(struct kg_ticket_key, aes), KG_TICKET_AES_LEN},
		{"hmac", offsetof(struct kg_ticket_key, hmac), KG_TICKET_HMAC_LEN},
	};
	json_object *v = NULL;
	if (!json_object_is_type(o, json_type_object) || json_object_object_length(o) != 4)
		return kg_fail(err, errlen, EINVAL,
			       "%s: keys[%zu]: expected an object with name, aes, hmac and created",
			       path, i);
	for (size_t h = 0; h < sizeof(hex) / sizeof(hex[0]); h++) {
		if (!json_object_object_get_ex(o, hex[h].key, &v) ||
		    !json_object_is_type(v, json_type_string) ||
		    kg_hex_decode((unsigned char *)k + hex[h].off, hex[h].len,
				  json_object_get_string(v), strlen(json_object_get_string(v))) < 0)
			return kg_fail(err, errlen, EINVAL, "%s: keys[%zu].%s: expected %zu hex digits",
				       path, i, hex[h].key, 2 * hex[h].len);
	}
	if (!json_object_object_get_ex(o, "created", &v) || !json_object_is_type(v, json_type_int) ||
	    json_object_get_int64(v) < 0)
		return kg_fail(err, errlen, EINVAL, "%s: keys[%zu].created: expected a Unix time",
			       path, i);
	k->created = json_object_get_int64(v);
	return 0;
}

int kg_ticket_keys_parse(const char *what, const char *text, struct kg_ticket_key keys[2],
			 size_t *n_out, char *err, size_t errlen)
{
	const char *path = what;
	enum json_tokener_error jerr = json_tokener_success;
	json_object *doc = json_tokener_parse_verbose(text, &jerr), *v = NULL, *keys_arr = NULL;
	struct kg_ticket_key k[2];
	int ret;
	size_t n = 0;

	if (!doc || !json_object_is_type(doc, json_type_object)) {
		ret = kg_fail(err, errlen, EINVAL, "%s: not a JSON object (%s)", path,
			      json_tokener_error_desc(jerr));
		goto put_doc;
	}
	if (!json_object_object_get_ex(doc, "version", &v) || !json_object_is_type(v, json_type_int) ||
	    json_object_get_int(v) != FILE_VERSION) {
		ret = kg_fail(err, errlen, EINVAL, "%s: version: expected %d", path, FILE_VERSION);
		goto put_doc;
	}
	if (!json_object_object_get_ex(doc, "keys", &keys_arr) ||
	    !json_object_is_type(keys_arr, json_type_array) ||
	    (n = json_object_array_length(keys_arr)) < 1 || n > 2) {
		ret = kg_fail(err, errlen, EINVAL,
			      "%s: keys: expected an array of 1 or 2 keys (current, previous)", path);
		goto put_doc;
	}
	for (size_t i = 0; i < n; i++) {
		ret = parse_key(path, i, json_object_array_get_idx(keys_arr, i), &k[i], err, errlen);
		if (ret < 0)
			goto wipe_keys;
	}
	if (n == 2 && memcmp(k[0].name, k[1].name, KG_TICKET_NAME_LEN) == 0) {
		ret = kg_fail(err, errlen, EINVAL, "%s: keys[1].name: the same as keys[0].name", path);
		goto wipe_keys;
	}
	memcpy(keys, k, n * sizeof(k[0]));
	*n_out = n;
	ret = 0;
wipe_keys:
	OPENSSL_cleanse(k, sizeof(k));
put_doc:
	json_object_put(doc);
	return ret;
}

/* The file's keys into tk (current, then previous if any). */
static int parse_file(struct kg_ticket_keys *tk, const char *text, char *err, size_t errlen)
{
	struct kg_ticket_key k[2];
	size_t n = 0;
	int ret = kg_ticket_keys_parse(tk->path, text, k, &n, err, errlen);
	if (ret == 0) {
		tk->cur = k[0];
		tk->has_prev = n == 2;
		if (n == 2)
			tk->prev = k[1];
	}
	OPENSSL_cleanse(k, sizeof(k));
	return ret;
}

/* The key file as it is, or generated when missing. */
static int load(struct kg_ticket_keys *tk, time_t now, char *err, size_t errlen)
{
	struct stat sb;
	char *text = NULL;

	if (stat(tk->path, &sb) == -1) {
		if (errno != ENOENT)
			return kg_fail_errno(err, errlen, errno, "%s", tk->path);
		int ret = kg_ticket_key_new(&tk->cur, now, err, errlen);
		return ret < 0 ? ret : persist(tk->path, &tk->cur, 1, err, errlen);
	}
	if (!S_ISREG(sb.st_mode))
		return kg_fail(err, errlen, EINVAL, "%s: not a regular file", tk->path);
	/* Secret keys: a file others can read may have leaked them already. */
	if (sb.st_mode & 077)
		return kg_fail(err, errlen, EPERM,
			       "%s: mode %04o, must be readable by its owner only (0600)", tk->path,
			       (unsigned)(sb.st_mode & 07777));
	int ret = kg_read_file(tk->path, &text);
	if (ret < 0)
		return kg_fail_errno(err, errlen, -ret, "%s", tk->path);
	ret = parse_file(tk, text, err, errlen);
	OPENSSL_cleanse(text, strlen(text));
	free(text);
	return ret;
}

struct kg_ticket_keys *kg_ticket_keys_open(const char *dir, unsigned rotation_s, time_t now,
					   char *err, size_t errlen)
{
	struct kg_ticket_keys *tk = OPENSSL_secure_zalloc(sizeof(*tk));
	if (!tk) {
		kg_fail(err, errlen, ENOMEM, "ticket keys: out of memory");
		return NULL;
	}
	tk->rotation_s = rotation_s;
	atomic_init(&tk->prev_hits, 0);
	if (pthread_rwlock_init(&tk->lock, NULL) != 0) {
		kg_fail(err, errlen, ENOMEM, "ticket keys: cannot create a lock");
		OPENSSL_secure_free(tk);
		return NULL;
	}
	tk->cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
	if (!tk->cipher) {
		kg_fail(err, errlen, ENOSYS, "ticket keys: AES-256-CBC is not available");
		goto close;
	}
	if (dir && asprintf(&tk->path, "%s/" KG_TICKET_KEYS_FILE, dir) < 0) {
		tk->path = NULL;
		kg_fail(err, errlen, ENOMEM, "ticket keys: out of memory");
		goto close;
	}
	if ((tk->path ? load(tk, now, err, errlen) : kg_ticket_key_new(&tk->cur, now, err, errlen)) < 0 ||
	    kg_ticket_keys_rotate(tk, now, false, err, errlen) < 0)
		goto close;
	return tk;
close:
	kg_ticket_keys_close(tk);
	return NULL;
}

void kg_ticket_keys_close(struct kg_ticket_keys *tk)
{
	if (!tk)
		return;
	EVP_CIPHER_free(tk->cipher);
	free(tk->path);
	pthread_rwlock_destroy(&tk->lock);
	/* Wipes the keys on the way out. */
	OPENSSL_secure_clear_free(tk, sizeof(*tk));
}

const char *kg_ticket_keys_path(const struct kg_ticket_keys *tk)
{
	return tk->path;
}

/* When the next rotation is due, Unix time (INT64_MAX: never, the keys
 * are rotated elsewhere); the rotating thread only (it is the only
 * writer, so it reads without the lock). */
static int64_t due_at(const struct kg_ticket_keys *tk)
{
	if (tk->rotation_s == 0)
		return INT64_MAX;
	int64_t at = tk->cur.created + (int64_t)tk->rotation_s;
	return tk->retry_at > at ? tk->retry_at : at;
}

int64_t kg_ticket_keys_due_ms(const struct kg_ticket_keys *tk, time_t now)
{
	int64_t at = due_at(tk);
	if (at == INT64_MAX)
		return INT64_MAX;
	int64_t s = at - (int64_t)now;
	return s > 0 ? s * 1000 : 0;
}

int kg_ticket_keys_next(const struct kg_ticket_key *cur, time_t now, struct kg_ticket_key next[2],
			char *err, size_t errlen)
{
	int ret = kg_ticket_key_new(&next[0], now, err, errlen);
	if (ret == 0)
		next[1] = *cur;
	return ret;
}

/* Replaces the set in use by keys[0..n) under the write lock: a worker
 * sees the old set or the new one, never half of each. */
static void swap_in(struct kg_ticket_keys *tk, const struct kg_ticket_key *keys, size_t n)
{
	pthread_rwlock_wrlock(&tk->lock);
	tk->cur = keys[0];
	tk->has_prev = n == 2;
	if (n == 2)
		tk->prev = keys[1];
	else
		OPENSSL_cleanse(&tk->prev, sizeof(tk->prev));
	pthread_rwlock_unlock(&tk->lock);
}

int kg_ticket_keys_rotate(struct kg_ticket_keys *tk, time_t now, bool force, char *err,
			  size_t errlen)
{
	struct kg_ticket_key next[2];
	int ret;

	if (!force && (int64_t)now < due_at(tk))
		return 0;
	ret = kg_ticket_keys_next(&tk->cur, now, next, err, errlen);
	/* Keys are persisted before they are used: a ticket issued with a key
	 * that a restart would not find is a resumption lost. */
	if (ret == 0 && tk->path)
		ret = persist(tk->path, next, 2, err, errlen);
	if (ret == 0) {
		swap_in(tk, next, 2);
		tk->retry_at = 0;
		/* How many clients the last key still served: each renewed its
		 * ticket under the key that was current. */
		log_notice("tls.ticket_key_rotated", KV("path", tk->path ? tk->path : "(memory)"),
			   KV("previous_key_decrypts", kg_ticket_keys_take_previous_hits(tk)),
			   KV("next_rotation_s", tk->rotation_s));
	} else {
		tk->retry_at = (int64_t)now + RETRY_S;
	}
	OPENSSL_cleanse(next, sizeof(next));
	return ret < 0 ? ret : 1;
}

int kg_ticket_keys_install(struct kg_ticket_keys *tk, const struct kg_ticket_key *keys, size_t n,
			   char *err, size_t errlen)
{
	if (n < 1 || n > 2)
		return kg_fail(err, errlen, EINVAL, "ticket keys: %zu keys, expected 1 or 2", n);
	/* The rotating thread is the only writer: it reads without the lock. */
	bool same = memcmp(&tk->cur, &keys[0], sizeof(keys[0])) == 0 &&
		    tk->has_prev == (n == 2) &&
		    (n == 1 || memcmp(&tk->prev, &keys[1], sizeof(keys[1])) == 0);
	if (same)
		return 0;
	/* In use first, cached second: the fleet issues tickets under these
	 * keys already, so a cache that cannot be written (a full disk) must
	 * not keep this instance from reading them. */
	swap_in(tk, keys, n);
	if (tk->path && persist(tk->path, keys, n, err, errlen) < 0)
		return -EIO;
	return 1;
}

uint64_t kg_ticket_keys_take_previous_hits(struct kg_ticket_keys *tk)
{
	return atomic_exchange_explicit(&tk->prev_hits, 0, memory_order_relaxed);
}

bool kg_ticket_keys_get(const struct kg_ticket_keys *tk, struct kg_ticket_key *current,
			struct kg_ticket_key *previous)
{
	/* The lock is not const, the keys are. */
	pthread_rwlock_t *lock = (pthread_rwlock_t *)&tk->lock;
	pthread_rwlock_rdlock(lock);
	*current = tk->cur;
	bool has_prev = tk->has_prev;
	if (has_prev)
		*previous = tk->prev;
	pthread_rwlock_unlock(lock);
	return has_prev;
}

/* Sets up ctx and hctx with k (under the read lock). */
static bool use_key(const struct kg_ticket_keys *tk, const struct kg_ticket_key *k,
		    const unsigned char *iv, EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)
{
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac,
						  sizeof(k->hmac)),
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
		OSSL_PARAM_construct_end(),
	};
	if (EVP_MAC_CTX_set_params(hctx, params) != 1)
		return false;
	return enc ? EVP_EncryptInit_ex2(ctx, tk->cipher, k->aes, iv, NULL) == 1
		   : EVP_DecryptInit_ex2(ctx, tk->cipher, k->aes, iv, NULL) == 1;
}

int kg_ticket_keys_crypt(struct kg_ticket_keys *tk, unsigned char key_name[KG_TICKET_NAME_LEN],
			 unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX *ctx,
			 EVP_MAC_CTX *hctx, int enc)
{
	int ret = -1;
	pthread_rwlock_rdlock(&tk->lock);
	if (enc) {
		int ivlen = EVP_CIPHER_get_iv_length(tk->cipher);
		memcpy(key_name, tk->cur.name, KG_TICKET_NAME_LEN);
		if (ivlen > 0 && ivlen <= EVP_MAX_IV_LENGTH && RAND_bytes(iv, ivlen) == 1 &&
		    use_key(tk, &tk->cur, iv, ctx, hctx, 1))
			ret = 1;
	} else if (memcmp(key_name, tk->cur.name, KG_TICKET_NAME_LEN) == 0) {
		ret = use_key(tk, &tk->cur, iv, ctx, hctx, 0) ? 1 : -1;
	} else if (tk->has_prev && memcmp(key_name, tk->prev.name, KG_TICKET_NAME_LEN) == 0) {
		/* 2: valid, and OpenSSL issues a ticket under the current key. */
		ret = use_key(tk, &tk->prev, iv, ctx, hctx, 0) ? 2 : -1;
		if (ret == 2)
			atomic_fetch_add_explicit(&tk->prev_hits, 1, memory_order_relaxed);
	} else {
		ret = 0; /* a key we no longer (or never) had: full handshake */
	}
	pthread_rwlock_unlock(&tk->lock);
	return ret;
}
