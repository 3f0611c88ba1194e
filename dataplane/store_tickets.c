/* Session-ticket keys in the store (store_tickets.h). */
#include "store_tickets.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

int kg_store_tickets_open(const struct kg_kek *kek, const char *key, const struct kg_etcd_kv *kv,
			  struct kg_ticket_key keys[2], size_t *n, char *err, size_t errlen)
{
	unsigned char *plain = NULL;
	size_t len = 0;
	const char *text = (const char *)kv->value;
	/* kg_unseal reads a C string: a NUL inside would hide the rest. */
	if (!text || strlen(text) != kv->value_len || !kg_is_sealed(text)) {
		snprintf(err, errlen, "%s: not a sealed value (expected %s..., as kgated and "
			 "kgatectl write it)", key, KG_SEAL_PREFIX);
		return -EINVAL;
	}
	char why[512];
	int r = kg_unseal(kek, key, text, &plain, &len, why, sizeof(why));
	if (r < 0) {
		snprintf(err, errlen, "%s: %s", key, why);
		return r;
	}
	/* kg_unseal NUL-terminates; a NUL inside is not the key file's text. */
	if (strlen((const char *)plain) != len) {
		snprintf(err, errlen, "%s: the sealed value is not a ticket key set", key);
		r = -EINVAL;
		goto free_plain;
	}
	r = kg_ticket_keys_parse(key, (const char *)plain, keys, n, err, errlen);
free_plain:
	kg_seal_free(plain, len);
	return r;
}

int kg_store_tickets_write(struct kg_etcd *c, const struct kg_kek *kek, const char *key,
			   int64_t expect, const struct kg_ticket_key *keys, size_t n,
			   int64_t *revision, char *err, size_t errlen)
{
	char text[KG_TICKET_KEYS_TEXT_MAX], *sealed = NULL;
	int r = kg_ticket_keys_format(keys, n, text, sizeof(text));
	if (r < 0) {
		snprintf(err, errlen, "%s: cannot format %zu keys", key, n);
		goto wipe_text;
	}
	r = kg_seal(kek, key, text, strlen(text), &sealed, err, errlen);
	if (r < 0)
		goto wipe_text;
	struct kg_etcd_op op = {.type = KG_ETCD_OP_PUT, .key = key, .value = sealed,
				.value_len = strlen(sealed)};
	r = kg_etcd_txn(c, key, expect, &op, 1, revision, err, errlen);
	free(sealed);
wipe_text:
	OPENSSL_cleanse(text, sizeof(text));
	return r;
}
