/* The session-ticket key set of the process: the keys that encrypt and
 * authenticate TLS session tickets of listeners in "stateless" mode
 * (tls_session_tickets), shared by every listener and worker.
 *
 * A ticket carries the whole session, so whoever has the keys can resume
 * it: a restarted or re-exec'd kgated, a rebuilt SSL_CTX after a listener
 * change, and later another instance sharing the keys. The keys are kept
 * in STATE_DIR/ticket-keys (JSON, mode 0600, written atomically); without
 * a state directory they are random and live in memory only.
 *
 * Tickets are issued with the current key; the current and the previous
 * key are accepted, so a ticket stays valid for at least one rotation
 * interval (which is never shorter than a session's lifetime). */
#ifndef KGATE_TICKET_KEYS_H
#define KGATE_TICKET_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <kgate/limits.h>

#define KG_TICKET_KEYS_FILE "ticket-keys"
#define KG_TICKET_NAME_LEN 16
#define KG_TICKET_AES_LEN 32  /* AES-256-CBC */
#define KG_TICKET_HMAC_LEN 32 /* HMAC-SHA256 */
/* Room for the text of two keys (kg_ticket_keys_format), about 500 bytes. */
#define KG_TICKET_KEYS_TEXT_MAX 1024

struct kg_ticket_key {
	unsigned char name[KG_TICKET_NAME_LEN];
	unsigned char aes[KG_TICKET_AES_LEN];
	unsigned char hmac[KG_TICKET_HMAC_LEN];
	int64_t created; /* Unix time, seconds */
};

struct kg_ticket_keys;

/* Loads dir/ticket-keys, or generates a key and persists it there when the
 * file is missing; dir NULL: a random key in memory. A key older than
 * rotation_s is rotated at once (and persisted). rotation_s 0: never
 * rotated here (store mode, where the store decides; the file is then the
 * cache of the fleet's keys, see kg_ticket_keys_install). A file that cannot be
 * used (not a regular file, readable by others, not JSON, a key of the
 * wrong size) is an error naming the file: it is never replaced, since
 * it may hold an operator's shared keys. NULL with err on failure. */
struct kg_ticket_keys *kg_ticket_keys_open(const char *dir, unsigned rotation_s, time_t now,
					   char *err, size_t errlen);
void kg_ticket_keys_close(struct kg_ticket_keys *tk);

/* The path of the key file, or NULL without a state directory. */
const char *kg_ticket_keys_path(const struct kg_ticket_keys *tk);

/* Rotates when the current key is rotation_s old at now (or always, with
 * force): a new current key, the old one becomes previous, persisted
 * before it is used. 1 when rotated, 0 when not due, -errno with err (the
 * keys in use are then unchanged). Called by one thread at a time (start,
 * then the control thread); workers may issue and accept tickets
 * meanwhile. */
int kg_ticket_keys_rotate(struct kg_ticket_keys *tk, time_t now, bool force, char *err,
			  size_t errlen);

/* Milliseconds from now until the next rotation is due (0 when due,
 * INT64_MAX with rotation_s 0). */
int64_t kg_ticket_keys_due_ms(const struct kg_ticket_keys *tk, time_t now);

/* Replaces the whole set with keys[0..n) (current, then previous if n is
 * 2), as one change for the workers, then writes it to the key file (the
 * cache: an instance that starts while the store is away uses it).
 * Returns 1 when the set changed, 0 when it is the set in use already
 * (nothing written), -EIO with err when the file could not be written (the
 * set is in use all the same: other instances issue tickets under it),
 * -EINVAL for n not 1 or 2. Called by one thread at a time, like rotate. */
int kg_ticket_keys_install(struct kg_ticket_keys *tk, const struct kg_ticket_key *keys, size_t n,
			   char *err, size_t errlen);

/* A new key made from the private random generator, created at now. */
int kg_ticket_key_new(struct kg_ticket_key *k, time_t now, char *err, size_t errlen);

/* The set a rotation makes of cur: next[0] a new key created at now, next[1]
 * cur (now the previous). 0 or -EIO (the random generator failed). */
int kg_ticket_keys_next(const struct kg_ticket_key *cur, time_t now, struct kg_ticket_key next[2],
			char *err, size_t errlen);

/* The key file's text for keys[0..n) (n 1 or 2) into text (len at least
 * KG_TICKET_KEYS_TEXT_MAX); the caller wipes it. 0 or -EINVAL. Written by
 * hand rather than through json-c so that every copy of the key bytes can
 * be wiped afterwards. */
int kg_ticket_keys_format(const struct kg_ticket_key *keys, size_t n, char *text, size_t len);

/* Parses the key file's text: keys[0] current, keys[1] previous, *n 1 or
 * 2. -EINVAL with err starting with what (a path or a store key). */
int kg_ticket_keys_parse(const char *what, const char *text, struct kg_ticket_key keys[2],
			 size_t *n, char *err, size_t errlen);

/* Tickets decrypted with the previous key since the last call (read and
 * reset): how many clients the last rotation made renew their ticket. */
uint64_t kg_ticket_keys_take_previous_hits(struct kg_ticket_keys *tk);

/* Copies the keys in use: current, and previous (false when there is
 * none). For tests and the log line on rotation (never the key bytes). */
bool kg_ticket_keys_get(const struct kg_ticket_keys *tk, struct kg_ticket_key *current,
			struct kg_ticket_key *previous);

/* OpenSSL's ticket key callback (SSL_CTX_set_tlsext_ticket_key_evp_cb)
 * for this key set: enc 1 fills key_name and iv and sets up ctx and hctx
 * with the current key (1, or -1 on error); enc 0 looks key_name up:
 * 1 current, 2 previous (OpenSSL then issues a new ticket), 0 unknown (a
 * full handshake), -1 on error. Thread-safe. */
int kg_ticket_keys_crypt(struct kg_ticket_keys *tk, unsigned char key_name[KG_TICKET_NAME_LEN],
			 unsigned char iv[EVP_MAX_IV_LENGTH], EVP_CIPHER_CTX *ctx,
			 EVP_MAC_CTX *hctx, int enc);

#endif
