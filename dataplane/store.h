/* Store mode (kgated --store, DESIGN.md "Beyond one machine"): the desired
 * state lives in etcd under PREFIX/state (store_doc.h) and this instance
 * follows it, keeping the last good state and its revision in the state
 * dir (the cache) so it starts and serves without etcd.
 *
 * Three threads, each with its own etcd client (a watch holds one):
 *   follower: reads PREFIX/state, applies it if its revision is new, then
 *             watches it; each new document goes through
 *             kg_ops_apply_document (the control socket's path, under its
 *             lock). A document that does not convert or validate is
 *             refused (store.document_refused, counted) and the last good
 *             state keeps serving. Compaction or a closed stream: read
 *             again; etcd down: retry with backoff (0.5 s doubling to 5 s).
 *   status:   PREFIX/instances/ID under a 10 s lease kept alive every 3 s,
 *             and PREFIX/members/ID without one (who ever ran, last seen).
 *   tickets:  reads PREFIX/ticket-keys (store_tickets.h) and installs it
 *             into the process's ticket keys (kg_ticket_keys_install, which
 *             also writes the state dir's key file: the cache), then
 *             watches it until its current key is rotation_s old; then any
 *             instance rotates it by a compare-and-swap on its
 *             mod_revision, and the others read the winner's set. Absent:
 *             created (CAS on revision 0) from the keys in use. A value
 *             that does not open (another KEK, garbage) is refused
 *             (store.ticket_keys_refused, counted with the refused
 *             documents), never overwritten, and the keys in use stay.
 *             A watch of its own rather than the follower's widened to
 *             PREFIX/: that one would wake every instance for every
 *             status publication of every other instance, and a key set
 *             needs no stop of the state's two-phase apply (nor waits for
 *             an upgrade's hand-over, -EBUSY). 
 * store.reachable / store.unreachable are logged on changes only. */
#ifndef KGATE_STORE_H
#define KGATE_STORE_H

#include <stdbool.h>
#include <stddef.h>

#include "control_ops.h"
#include "state.h"
#include "store_status.h"

struct kg_ticket_keys;

struct kg_store_opts {
	const char *url;         /* --store */
	const char *cert, *key, *ca; /* etcd client TLS, or NULL */
	const char *kek;         /* --store-kek, required */
	const char *instance_id; /* NULL: the host name */
};

struct kg_store;

/* Parses the URL and loads the KEK (a missing or malformed KEK file is
 * an error here); contacts nothing. NULL with err. */
struct kg_store *kg_store_create(const struct kg_store_opts *o, char *err, size_t errlen);
/* Tolerates NULL; the threads must be stopped. */
void kg_store_destroy(struct kg_store *s);

struct kg_store_status *kg_store_status(struct kg_store *s);

/* Start-up, before the state is parsed: reads PREFIX/state and, when it
 * is newer than the cache and valid, converts it into st and commits it.
 * A document that does not validate is refused (logged, counted) and the
 * cache serves; so does an unreachable store. Returns 0, or -EKEYREJECTED
 * (the document is sealed under another KEK: this instance's KEK is
 * wrong) or -EHOSTUNREACH (no store and no cache: have_cache false), with
 * err. */
int kg_store_sync_initial(struct kg_store *s, struct kg_state *st, bool have_cache, char *err,
			  size_t errlen);

/* Store mode's ticket keys: the tickets thread keeps tk equal to
 * PREFIX/ticket-keys and rotates it every rotation_s (the setting at
 * start). Before kg_store_start; without a call there is no such thread.
 * tk must outlive kg_store_stop, and tk must not be rotated by anyone
 * else (kg_ticket_keys_open with rotation_s 0). */
void kg_store_follow_tickets(struct kg_store *s, struct kg_ticket_keys *tk, unsigned rotation_s);

/* Starts the threads (after the initial apply). 0 or -errno. */
int kg_store_start(struct kg_store *s, struct kg_ops *ops);

/* Stops and joins the threads (within about 100 ms plus one request's
 * timeout). revoke: end the status lease now, so the instance shows as
 * gone at once (a clean stop); false at an upgrade, where the new process
 * publishes under the same id. */
void kg_store_stop(struct kg_store *s, bool revoke);

#endif
