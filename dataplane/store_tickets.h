/* Session-ticket keys in the store (PREFIX/ticket-keys, DESIGN.md "Beyond
 * one machine"): the key file's text (ticket_keys.h: current and previous
 * key, each with its name, AES and HMAC keys and creation time) sealed
 * under the KEK with the etcd key as the context (seal.h), so the value in
 * etcd is "kgseal1:..." and never key bytes, and a value copied from
 * another key or prefix does not open.
 *
 * Writers (an instance creating or rotating the set, kgatectl store
 * rotate-ticket-keys) compare-and-swap on the mod_revision they read, so
 * of two racing rotations one wins and the other reads the winner's set:
 * etcd is the only coordination. */
#ifndef KGATE_STORE_TICKETS_H
#define KGATE_STORE_TICKETS_H

#include <stddef.h>
#include <stdint.h>

#include "etcd.h"
#include "seal.h"
#include "ticket_keys.h"

/* Opens the value stored at key into keys[0..*n) (current, previous).
 * 0, or with err: -EKEYREJECTED (sealed under another KEK), -EINVAL (not
 * sealed text, or not a key set once opened), -EBADMSG (changed, or
 * sealed for another key), -EPROTONOSUPPORT, -ENOMEM. */
int kg_store_tickets_open(const struct kg_kek *kek, const char *key, const struct kg_etcd_kv *kv,
			  struct kg_ticket_key keys[2], size_t *n, char *err, size_t errlen);

/* Seals keys[0..n) and writes them at key if its mod_revision is still
 * expect (0: the key must not exist). *revision (may be NULL): the
 * mod_revision of the write. -ECANCELED when another writer came first
 * (nothing written), or an etcd error (etcd.h), with err. */
int kg_store_tickets_write(struct kg_etcd *c, const struct kg_kek *kek, const char *key,
			   int64_t expect, const struct kg_ticket_key *keys, size_t n,
			   int64_t *revision, char *err, size_t errlen);

#endif
