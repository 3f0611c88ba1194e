/* Turning a new state document into running listeners, in two phases so a
 * change can be refused before anything moves: prepare builds every new
 * snapshot (SSL_CTX, balancer) and binds every new socket — any failure
 * there changes nothing — and commit, which cannot fail, publishes the
 * snapshots and hands sockets to (or takes them from) the workers.
 * Control thread (or main before it starts) only. */
#ifndef KGATE_APPLY_H
#define KGATE_APPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <kgate/limits.h>

#include "runtime.h"

struct kg_apply_item {
	struct kg_listener_slot *slot;
	const struct kg_listener_conf *conf; /* new configuration; NULL: delete */
	struct kg_listener_rt *snap;         /* to publish; NULL: keep the current one */
	int fds[KG_MAX_WORKERS];             /* new sockets, -1 when none */
	bool listen;    /* give fds to the workers */
	bool unlisten;  /* take the workers' current sockets away first */
	bool release;   /* the slot is free after commit (listener deleted) */
	char failed[KG_FAILED_MAX]; /* not started, and why (nothing else is done) */
};

struct kg_apply_plan {
	struct kg_apply_item items[KG_MAX_LISTENERS];
	size_t n;
	/* The named groups' runtimes for the new document (runtime.h
	 * kg_groups_build), installed in the runtime at commit. */
	struct kg_group_rt *groups[KG_MAX_GROUPS];
	size_t n_groups;
	const struct kg_config *cfg; /* the new document (the caller keeps it) */
};

/* doc->cfg is the new document; its listeners' bind addresses get the
 * kernel-chosen port filled in where the document said 0. changed[i] says
 * whether listener i of the new document differs from the running one
 * (ignored for new listeners). 0, or -errno with err filled and nothing
 * kept: -EADDRINUSE (and other bind errors), -ENOSPC (no free slot),
 * -EINVAL (a snapshot could not be built), -EKEYEXPIRED (a listener that
 * would start uses a certificate that expired since it was stored).
 *
 * A listener starts only when the certificates it uses still pass
 * kg_listener_certs_check. One that does not is planned as failed
 * (slot->failed says why; the others start) at start-up (at_start), and
 * later when it had failed already: a change elsewhere (a CRL update of a
 * CA it shares with running listeners) must not be refused because of it.
 * A change that means to start a listener — a new one, a stopped one
 * started, or must_start (the name `listener start` names; may be NULL) —
 * is refused instead, with the reason. */
int kg_apply_prepare(struct kg_runtime *rt, struct kg_config_ref *doc,
		     const bool *changed, bool at_start, const char *must_start,
		     struct kg_apply_plan *plan, char *err, size_t errlen);
void kg_apply_commit(struct kg_runtime *rt, struct kg_apply_plan *plan);
void kg_apply_abort(struct kg_apply_plan *plan);

/* The workers' listening sockets (still theirs), for an upgrade to pass
 * on; how many were written. */
size_t kg_apply_listen_fds(const struct kg_runtime *rt, int *fds, size_t max);
/* Writes every group's health verdicts (kg_health_export) to f, for an
 * upgrade to pass on: a listener's inline group under the listener's
 * name, a named group under "@" and its name. 0 or -errno. */
int kg_apply_export_health(struct kg_runtime *rt, FILE *f);
/* Moves every listener's cached TLS sessions to f (kg_tls_carry_export). */
int kg_apply_export_sessions(struct kg_runtime *rt, FILE *f);
/* Every worker stops accepting and closes its listening sockets (an
 * upgraded process holds them now): what the workers had accepted is
 * served; what waits in the queues is the new process's. */
void kg_apply_unlisten_all(struct kg_runtime *rt);

/* The used slot of the listener called name, or NULL. */
struct kg_listener_slot *kg_runtime_find(struct kg_runtime *rt, const char *name);

#endif
