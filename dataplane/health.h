/* Backend health: per-member state shared by all workers (kg_health_group,
 * one per listener), fed by the active checks (health_check.h, one checker
 * per worker, on that worker's io_uring ring) and by failures the data path
 * sees.
 *
 * Who checks what: member m of the listener's group gets the global index
 * g = (sum of members of earlier listeners) + m, and worker g % n_workers
 * owns its checks, so checks spread over workers and each member is probed
 * by exactly one of them.
 *
 * State machine per member (only when the listener has a health_check):
 *   unknown   --healthy_threshold successes in a row-->   healthy
 *   unknown   --unhealthy_threshold failures in a row-->  unhealthy
 *   healthy   --unhealthy_threshold failures in a row-->  unhealthy
 *   unhealthy --healthy_threshold successes in a row-->   healthy
 * A failure is a failed active check or a failed backend connect while
 * forwarding (passive detection). A member is in the balancer's rotation
 * when its administrative state (config.h) is ready and it is healthy, or
 * unknown and unknown_is_up.
 *
 * Threads: every function here may be called from any thread unless said
 * otherwise. Each member's state sits behind its own mutex (written once per
 * check, so never contended on the data path); the data path itself only
 * touches atomics (active connection counts) and the balancer's own
 * lock-free select. */
#ifndef KGATE_HEALTH_H
#define KGATE_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "balancer.h"
#include "config.h"

enum kg_member_state {
	KG_MEMBER_UNKNOWN,
	KG_MEMBER_HEALTHY,
	KG_MEMBER_UNHEALTHY,
};

/* "unknown", "healthy", "unhealthy". */
const char *kg_member_state_name(enum kg_member_state s);

struct kg_health_group;

/* Members come from gc->backends; gc, owner and b must outlive the group.
 * Log lines name the owner as owner_key=owner ("listener" for inline
 * backends, "group" for a named group). Sets the balancer's up/down to
 * the initial states (all down when unknown_is_up is false). NULL on
 * ENOMEM. */
struct kg_health_group *kg_health_group_create(const struct kg_group_conf *gc,
					       const char *owner_key, const char *owner,
					       struct kg_balancer *b);
void kg_health_group_destroy(struct kg_health_group *g);

/* Copies what is known about each member of src that is also a member of
 * dst (same address) into dst: health state and counters (when both check
 * the same way) and the administrative state. Used when a listener's snapshot is rebuilt (a
 * backend added, a weight or certificate changed) so members that stay do
 * not start over as unknown. src may be NULL. */
void kg_health_group_inherit(struct kg_health_group *dst, struct kg_health_group *src);

/* Records one check result for a member (active checks call it; tests may
 * too). reason is a short text: "HTTP 200", "connect refused", "timeout
 * after 5000 ms". now_ms is CLOCK_MONOTONIC in milliseconds. Logs one line
 * per state transition and updates the balancer. */
void kg_health_record(struct kg_health_group *g, size_t member, bool ok,
		      const char *reason, uint64_t now_ms);

/* Data path, on the connection's worker: a backend connect to member
 * failed (counts toward unhealthy when checks are configured). */
void kg_health_passive_failure(struct kg_health_group *g, size_t member,
			       const char *reason, uint64_t now_ms);
/* A connection to member was established / has ended (active counts, and
 * the "drained" log line when a drained member's last one ends). */
void kg_health_conn_start(struct kg_health_group *g, size_t member);
void kg_health_conn_end(struct kg_health_group *g, size_t member);
/* Whether established connections to member must be closed now, and why:
 * the member was disabled (kgatectl backend disable), or it is unhealthy
 * and the listener has cut_on_unhealthy. Lock-free: the workers ask for
 * each forwarding connection on their tick. */
enum kg_health_cut { KG_CUT_NONE, KG_CUT_UNHEALTHY, KG_CUT_DISABLED };
/* Changes whenever kg_health_should_cut may have changed for a member
 * (a state transition, an administrative change): the workers look for
 * connections to cut only then, not on every tick. */
unsigned kg_health_cut_gen(const struct kg_health_group *g);
enum kg_health_cut kg_health_should_cut(const struct kg_health_group *g, size_t member);
/* True when the listener cuts connections of unhealthy members at all. */
bool kg_health_cuts(const struct kg_health_group *g);

/* Control plane: the member's administrative state. DRAINED takes it out
 * of rotation for new connections; established ones stay and a log line
 * says when the last ended. DISABLED takes it out of rotation and makes
 * kg_health_should_cut close its established connections. READY puts it
 * back (subject to its health). One log line per change. 0, or -ENOENT
 * for a member index out of range. */
int kg_health_set_admin(struct kg_health_group *g, size_t member, enum kg_admin_state admin);

/* Slow start: recomputes the effective weights of recovering members from
 * the time since they turned healthy and hands them to the balancer when
 * they changed. Idempotent; the checkers call it from their tick while a
 * member they own ramps up. */
void kg_health_slow_start_step(struct kg_health_group *g, uint64_t now_ms);
/* True while some member of the group ramps up. Lock-free. */
bool kg_health_ramping(const struct kg_health_group *g);

/* A copy of one member's state for `kgatectl listener show`. */
struct kg_health_member_info {
	const char *address;       /* from the config; valid while the group is */
	enum kg_member_state state;
	bool checked;              /* the listener has active checks */
	bool in_rotation;          /* receives new connections now */
	enum kg_admin_state admin;
	unsigned active;           /* established connections, all workers */
	unsigned weight;           /* configured */
	unsigned effective_weight; /* lower during slow start */
	uint64_t ms_in_state;      /* since the last transition (or start) */
	bool has_result;           /* at least one check or passive result */
	bool last_ok;
	char last_reason[96];
	uint64_t ms_since_result;
	uint64_t checks_ok, checks_failed, passive_failures;
};

/* Fills out[0..min(n, members)) and returns the number of members. */
size_t kg_health_snapshot(struct kg_health_group *g,
			  struct kg_health_member_info *out, size_t n,
			  uint64_t now_ms);
size_t kg_health_members(const struct kg_health_group *g);

/* Health verdicts across an upgrade (upgrade.h), so a member the old
 * process knows to be down is not tried again as "unknown". One line per
 * checked member: listener, address, check type, state, ok streak, fail
 * streak, since (monotonic ms: the clock is the machine's, shared by both
 * processes). Export writes g's members to f (nothing for an unchecked
 * group); 0 or -errno. */
int kg_health_export(struct kg_health_group *g, const char *listener, FILE *f);
/* Takes the verdicts of text's lines that name listener, for members with
 * the same address and the same kind of check; other or malformed lines
 * are skipped (the text is the old process's, but a verdict is a hint,
 * never worth a failed start). Returns how many members took one. */
size_t kg_health_import(struct kg_health_group *g, const char *listener, const char *text);
/* The index of the member whose configured address is exactly `address`
 * ("127.0.0.1:9001"), or -ENOENT. */
int kg_health_member_index(const struct kg_health_group *g, const char *address);

#endif
