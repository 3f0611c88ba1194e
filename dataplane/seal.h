/* Secrets sealed under a key-encryption key (KEK), so that private keys and
 * session-ticket keys can sit in a shared store (etcd) without being
 * readable there (DESIGN.md, "Beyond one machine").
 *
 * The KEK file holds 64 hexadecimal digits and an optional line end, what
 * `openssl rand -hex 32 > kek` writes; nothing else is accepted, not even
 * 32 raw bytes: one format means a key of the wrong size or a file of the
 * wrong kind is always an error and never a weak key. The file must not be
 * accessible to others (mode & 007 == 0).
 *
 * Sealed text: "kgseal1:" + base64(version | key id | nonce | ciphertext |
 * tag), a printable string that fits in a JSON document.
 *   version  1 byte, 1: AES-256-GCM
 *   key id   8 bytes, the first 8 bytes of SHA-256(KEK): a value sealed
 *            under another KEK is named as such instead of failing as a
 *            forgery
 *   nonce    12 random bytes: random 96-bit nonces stay within GCM's
 *            bounds for 2^32 seals under one KEK (NIST SP 800-38D, 8.3),
 *            far more than a fleet's secrets
 *   tag      16 bytes
 * The associated data is the version, the key id and the caller's context
 * (the etcd key the value is stored under): a sealed value copied to
 * another key does not open there. */
#ifndef KGATE_SEAL_H
#define KGATE_SEAL_H

#include <stdbool.h>
#include <stddef.h>

#define KG_SEAL_PREFIX "kgseal1:"
#define KG_KEK_ID_HEX 17 /* 16 hex digits and a NUL */

struct kg_kek;

/* Reads and checks a KEK file. NULL with err naming the file on failure. */
struct kg_kek *kg_kek_load(const char *path, char *err, size_t errlen);
/* Tolerates NULL; wipes the key. */
void kg_kek_destroy(struct kg_kek *k);
/* The key id in hex, for logs and status ("kek_id=..."). */
const char *kg_kek_id(const struct kg_kek *k);

/* Seals len bytes of plain under k, bound to context. *out: a malloc'd
 * NUL-terminated "kgseal1:..." string. Returns 0, -ENOMEM or -EIO (the
 * random source or the cipher failed). */
int kg_seal(const struct kg_kek *k, const char *context, const void *plain, size_t len,
	    char **out, char *err, size_t errlen);

/* Opens a sealed string. *plain: a malloc'd buffer of *len bytes plus a
 * NUL (also for binary secrets); release it with kg_seal_free, which wipes
 * it. Returns 0 or:
 *   -EINVAL          not sealed text (prefix, base64, too short);
 *   -EPROTONOSUPPORT a version this build does not know;
 *   -EKEYREJECTED    sealed under another KEK (err names both ids);
 *   -EBADMSG         the tag does not verify: changed, or another context;
 *   -ENOMEM. */
int kg_unseal(const struct kg_kek *k, const char *context, const char *text,
	      unsigned char **plain, size_t *len, char *err, size_t errlen);

/* Wipes and frees an opened secret (NULL is fine). */
void kg_seal_free(unsigned char *plain, size_t len);

/* text starts with KG_SEAL_PREFIX: a document field holds a sealed value. */
bool kg_is_sealed(const char *text);

#endif
