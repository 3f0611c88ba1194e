/* AES-256-GCM sealing under a KEK read from a file (seal.h). */
#include "seal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "b64.h"
#include "hex.h"

#define KEK_LEN 32
#define KEY_ID_LEN 8
#define NONCE_LEN 12
#define TAG_LEN 16
#define SEAL_VERSION 1
#define HEAD_LEN (1 + KEY_ID_LEN + NONCE_LEN)

struct kg_kek {
	unsigned char key[KEK_LEN];
	unsigned char id[KEY_ID_LEN];
	char id_hex[KG_KEK_ID_HEX];
};

static void hex8(const unsigned char *id, char *out)
{
	for (size_t i = 0; i < KEY_ID_LEN; i++)
		snprintf(out + 2 * i, 3, "%02x", id[i]);
}

/* 64 hex digits, then nothing or one line end ("\n" or "\r\n"). */
static int parse_kek(const unsigned char *text, size_t n, unsigned char *key)
{
	size_t digits = n;
	if (digits > 0 && text[digits - 1] == '\n')
		digits--;
	if (digits > 0 && text[digits - 1] == '\r')
		digits--;
	return kg_hex_decode(key, KEK_LEN, (const char *)text, digits);
}

struct kg_kek *kg_kek_load(const char *path, char *err, size_t errlen)
{
	/* One more than the longest valid file, so that a longer one is seen. */
	unsigned char text[2 * KEK_LEN + 3];
	size_t n = 0;
	struct kg_kek *k = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd == -1) {
		snprintf(err, errlen, "key-encryption key %s: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) == -1) {
		snprintf(err, errlen, "key-encryption key %s: %s", path, strerror(errno));
		goto close_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "key-encryption key %s: not a regular file", path);
		goto close_fd;
	}
	/* Whoever can read the KEK can read every secret in the store. */
	if (st.st_mode & 007) {
		snprintf(err, errlen,
			 "key-encryption key %s: mode %04o lets other users access it; "
			 "chmod 600 %s",
			 path, (unsigned)(st.st_mode & 07777), path);
		goto close_fd;
	}
	for (;;) {
		ssize_t got = read(fd, text + n, sizeof(text) - n);
		if (got == -1 && errno == EINTR)
			continue;
		if (got == -1) {
			snprintf(err, errlen, "key-encryption key %s: %s", path, strerror(errno));
			goto wipe_text;
		}
		if (got == 0 || (n += (size_t)got) == sizeof(text))
			break;
	}
	k = calloc(1, sizeof(*k));
	if (!k) {
		snprintf(err, errlen, "key-encryption key %s: out of memory", path);
		goto wipe_text;
	}
	if (parse_kek(text, n, k->key) < 0) {
		snprintf(err, errlen,
			 "key-encryption key %s: expected 64 hexadecimal digits (32 bytes) and "
			 "an optional newline, as `openssl rand -hex 32 > %s` writes",
			 path, path);
		kg_kek_destroy(k);
		k = NULL;
		goto wipe_text;
	}
	unsigned char digest[SHA256_DIGEST_LENGTH];
	if (!EVP_Digest(k->key, KEK_LEN, digest, NULL, EVP_sha256(), NULL)) {
		snprintf(err, errlen, "key-encryption key %s: SHA-256 failed", path);
		kg_kek_destroy(k);
		k = NULL;
		goto wipe_text;
	}
	memcpy(k->id, digest, KEY_ID_LEN);
	hex8(k->id, k->id_hex);
wipe_text:
	OPENSSL_cleanse(text, sizeof(text));
close_fd:
	close(fd);
	return k;
}

void kg_kek_destroy(struct kg_kek *k)
{
	if (!k)
		return;
	OPENSSL_cleanse(k, sizeof(*k));
	free(k);
}

const char *kg_kek_id(const struct kg_kek *k)
{
	return k->id_hex;
}

bool kg_is_sealed(const char *text)
{
	return text && strncmp(text, KG_SEAL_PREFIX, strlen(KG_SEAL_PREFIX)) == 0;
}

void kg_seal_free(unsigned char *plain, size_t len)
{
	if (!plain)
		return;
	OPENSSL_cleanse(plain, len);
	free(plain);
}

/* One GCM pass: encrypt (enc 1) or decrypt (enc 0) len bytes of in into
 * out, with head and context as associated data. On decryption tag is
 * checked; on encryption it is written. Returns 0, -EBADMSG (tag), -EIO. */
static int gcm(const struct kg_kek *k, int enc, const unsigned char *head, const char *context,
	       const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag)
{
	if (len > INT_MAX)
		return -EIO;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	if (!ctx)
		return -EIO;
	int r = -EIO, n = 0;
	size_t clen = strlen(context);
	const unsigned char *nonce = head + 1 + KEY_ID_LEN;
	if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
	    EVP_CipherInit_ex(ctx, NULL, NULL, k->key, nonce, enc) != 1 ||
	    EVP_CipherUpdate(ctx, NULL, &n, head, HEAD_LEN) != 1 || clen > INT_MAX ||
	    (clen && EVP_CipherUpdate(ctx, NULL, &n, (const unsigned char *)context,
				      (int)clen) != 1) ||
	    (len && EVP_CipherUpdate(ctx, out, &n, in, (int)len) != 1))
		goto free_ctx;
	if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1)
		goto free_ctx;
	if (EVP_CipherFinal_ex(ctx, out + len, &n) != 1) {
		r = enc ? -EIO : -EBADMSG;
		goto free_ctx;
	}
	if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1)
		goto free_ctx;
	r = 0;
free_ctx:
	EVP_CIPHER_CTX_free(ctx);
	return r;
}

int kg_seal(const struct kg_kek *k, const char *context, const void *plain, size_t len,
	    char **out, char *err, size_t errlen)
{
	*out = NULL;
	if (len > INT_MAX - HEAD_LEN - TAG_LEN) {
		snprintf(err, errlen, "seal: a secret of %zu bytes is too large", len);
		return -ENOMEM;
	}
	size_t total = HEAD_LEN + len + TAG_LEN;
	unsigned char *bin = malloc(total);
	if (!bin) {
		snprintf(err, errlen, "seal: out of memory");
		return -ENOMEM;
	}
	bin[0] = SEAL_VERSION;
	memcpy(bin + 1, k->id, KEY_ID_LEN);
	int r = -EIO;
	if (RAND_bytes(bin + 1 + KEY_ID_LEN, NONCE_LEN) != 1) {
		snprintf(err, errlen, "seal: no random bytes for the nonce");
		goto free_bin;
	}
	if (gcm(k, 1, bin, context, plain, len, bin + HEAD_LEN, bin + HEAD_LEN + len) < 0) {
		snprintf(err, errlen, "seal: AES-256-GCM failed");
		goto free_bin;
	}
	char *b64;
	if ((r = kg_b64_encode(bin, total, &b64)) < 0) {
		snprintf(err, errlen, "seal: out of memory");
		goto free_bin;
	}
	size_t plen = strlen(KG_SEAL_PREFIX), blen = strlen(b64);
	*out = malloc(plen + blen + 1);
	if (!*out) {
		snprintf(err, errlen, "seal: out of memory");
		r = -ENOMEM;
		goto free_b64;
	}
	memcpy(*out, KG_SEAL_PREFIX, plen);
	memcpy(*out + plen, b64, blen + 1);
	r = 0;
free_b64:
	free(b64);
free_bin:
	free(bin);
	return r;
}

int kg_unseal(const struct kg_kek *k, const char *context, const char *text,
	      unsigned char **plain, size_t *len, char *err, size_t errlen)
{
	*plain = NULL;
	*len = 0;
	if (!kg_is_sealed(text)) {
		snprintf(err, errlen, "not a sealed value (no \"%s\" prefix)", KG_SEAL_PREFIX);
		return -EINVAL;
	}
	const char *b = text + strlen(KG_SEAL_PREFIX);
	unsigned char *bin;
	size_t n;
	int r = kg_b64_decode(b, strlen(b), &bin, &n);
	if (r < 0) {
		snprintf(err, errlen, "sealed value: %s",
			 r == -EINVAL ? "not base64" : "out of memory");
		return r;
	}
	if (n < HEAD_LEN + TAG_LEN) {
		snprintf(err, errlen, "sealed value: %zu bytes, too short to be one", n);
		r = -EINVAL;
		goto free_bin;
	}
	if (bin[0] != SEAL_VERSION) {
		snprintf(err, errlen, "sealed value: version %u, this build knows %u", bin[0],
			 SEAL_VERSION);
		r = -EPROTONOSUPPORT;
		goto free_bin;
	}
	if (memcmp(bin + 1, k->id, KEY_ID_LEN) != 0) {
		char other[KG_KEK_ID_HEX];
		hex8(bin + 1, other);
		snprintf(err, errlen,
			 "sealed with another key-encryption key (id %s, this one is %s)", other,
			 k->id_hex);
		r = -EKEYREJECTED;
		goto free_bin;
	}
	size_t clen = n - HEAD_LEN - TAG_LEN;
	unsigned char *out = malloc(clen + 1);
	if (!out) {
		snprintf(err, errlen, "sealed value: out of memory");
		r = -ENOMEM;
		goto free_bin;
	}
	r = gcm(k, 0, bin, context, bin + HEAD_LEN, clen, out, bin + HEAD_LEN + clen);
	if (r < 0) {
		/* Nothing of an unauthenticated plaintext may leave. */
		kg_seal_free(out, clen + 1);
		snprintf(err, errlen, "%s",
			 r == -EBADMSG ? "sealed value does not verify: it was changed, or it "
					 "belongs to another key"
				       : "unseal: AES-256-GCM failed");
		goto free_bin;
	}
	out[clen] = '\0';
	*plain = out;
	*len = clen;
free_bin:
	free(bin);
	return r;
}
