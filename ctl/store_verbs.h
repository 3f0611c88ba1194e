/* The cert, listener and backend verbs against the store (kgatectl --store
 * URL ...): the control request a verb would send to kgated runs instead
 * on the document in etcd, through kgated's own operation code
 * (control_ops.c) in its document-only mode, and a change is written back
 * as a compare-and-swap on the revision read. */
#ifndef KG_CTL_STORE_VERBS_H
#define KG_CTL_STORE_VERBS_H

#include <json-c/json.h>

#include "cmd.h"

/* req is a control request ({"version", "op", "args"}; not consumed).
 * Reads PREFIX/state (revision R; absent: an empty state), materialises
 * it in a private temporary state dir (keys unsealed with --store-kek into
 * 0600 files; the dir is removed before returning), runs the operation on
 * it, and when the operation changed the document, writes it back (keys
 * sealed) if PREFIX/state is still at R (or --expect-revision).
 *
 * Returns 0 with *reply the reply kgated would give (a refusal included:
 * then nothing was written), or an exit status after printing why there
 * is no reply: usage (no --store-kek), an operation only a running kgated
 * answers (status, stats, upgrade), the store unreachable, its document
 * unreadable, or the write lost a race ("changed since it was read"). */
int kg_store_request(const struct kg_cli *cli, json_object *req, json_object **reply);

#endif
