/* The desired state as it sits in the store (etcd, DESIGN.md "Beyond one
 * machine") and as it sits in a state dir (state.h), converted both ways.
 *
 * A store document is the state document's schema (doc/kgate.json.5.scd)
 * with certificate entries carrying content instead of file names, so one
 * etcd key holds everything and a write is one compare-and-swap:
 *   "cert"  PEM text (certificate chain, or the CA's certificates);
 *   "crl"   PEM text of the CRL (ca entries);
 *   "key"   the private key sealed under the KEK (seal.h), with the
 *           context "<state key>:<certificate name>", so a sealed key
 *           copied to another entry or prefix does not open there.
 * A private key in clear is refused both ways: it is never written to the
 * store, and a store document holding one is not applied.
 *
 * This module converts and checks the shape of what it converts (fields
 * present as strings, PEM text, sealed keys); the rest of the schema is
 * config.c's job (kg_state_parse), run by the caller afterwards. Every
 * refusal names the certificate and the field: "certificates.web.key: ...". */
#ifndef KGATE_STORE_DOC_H
#define KGATE_STORE_DOC_H

#include <stddef.h>

#include <json-c/json.h>

#include "seal.h"
#include "state.h"

/* Store text (len bytes, need not be NUL-terminated) → a new state
 * document whose certificate fields name files under st's certs/ (keys
 * unsealed into 0600 files, written with kg_state_store_file). A file
 * whose content equals the one st->doc names for the same certificate and
 * field is reused, so an unchanged certificate stays unchanged for
 * control_ops.c's "what changed" test; a listener given port 0 keeps the
 * port st->doc holds for the listener of that name. state_key is the etcd key the text
 * was read from (the sealing context). 0 with the document in *out (the
 * caller owns it), or with err: -EINVAL (shape), -EPERM (a clear private
 * key), -EKEYREJECTED (a key sealed under another KEK) or another unseal
 * error (seal.h), -EIO/-ENOMEM. Files written before a failure are left
 * for kg_state_gc. */
int kg_store_doc_to_state(struct kg_state *st, const struct kg_kek *kek, const char *state_key,
			  const char *text, size_t len, json_object **out, char *err,
			  size_t errlen);

/* A state (or configuration) document → a new store document: each file
 * named by a certificate entry (relative paths against base_dir) is read
 * into the entry, keys sealed under kek for state_key. doc is not
 * changed. NULL with err. */
json_object *kg_store_doc_from_state(json_object *doc, const char *base_dir,
				     const struct kg_kek *kek, const char *state_key, char *err,
				     size_t errlen);

/* A store document for display: a copy with every "key" shown as
 * "(sealed)". NULL when out of memory. */
json_object *kg_store_doc_redact(json_object *doc);

#endif
