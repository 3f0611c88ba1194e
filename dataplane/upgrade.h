/* Binary upgrade without a refused connection: the running kgated (the
 * old process) re-executes the binary on disk as its child (the new
 * process), which inherits across exec the listening sockets, the control
 * and metrics sockets and the state directory's lock. The sockets stay the
 * same kernel objects all along, so a connection waiting in an accept
 * queue is accepted by whichever process accepts next: nothing is reset.
 *
 * The two talk over a socketpair (a SOCK_SEQPACKET channel, one word per
 * message):
 *   new → old  "ready"     state loaded, every listener and worker running
 *   old → new  "released"  the old one stopped accepting and gave up the
 *                          control socket, metrics and lock; it now drains
 * A new process that exits, or is not ready within the timeout, leaves the
 * old one serving as before. The new process learns what it inherits from
 * one environment variable, KGATED_UPGRADE, which it removes at once.
 *
 * Old side: kg_upgrade_spawn, then kg_upgrade_release or kg_upgrade_abandon.
 * New side: kg_inherit_from_env, kg_inherit_take_listener (apply.c),
 * kg_inherit_close_unused, kg_inherit_report_ready. Main thread only. */
#ifndef KGATE_UPGRADE_H
#define KGATE_UPGRADE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <kgate/limits.h>

#include "runtime.h" /* KG_MAX_LISTENERS */
#include "steer.h"   /* KG_STEER_FDS */

#define KG_UPGRADE_ENV "KGATED_UPGRADE"
/* Listening sockets handed over at most: every listener on every worker. */
#define KG_INHERIT_MAX_LISTEN (KG_MAX_LISTENERS * KG_MAX_WORKERS)

/* What the old process hands over; -1 for what it does not have. */
struct kg_upgrade_fds {
	int lock_fd;
	int control_fd;
	int metrics_fd;
	int health_fd;   /* a memfd with the health verdicts (kg_health_export) */
	int sessions_fd; /* a memfd with the TLS sessions (kg_tls_carry_export) */
	/* The steering program and maps (steer.h, kg_steer_fds), all -1
	 * without BPF steering. */
	int steer[KG_STEER_FDS];
	int listen[KG_INHERIT_MAX_LISTEN];
	size_t n_listen;
};

struct kg_upgrade_child {
	pid_t pid;
	int chan;        /* old's end of the channel */
};

/* Starts exe with argv (argv[0] included, NULL-terminated; the caller has
 * dropped what must not run twice, such as --reseed) and the current
 * environment plus KG_UPGRADE_ENV, handing fds over, and waits up to
 * timeout_ms for "ready". 0 with *child filled; or -errno with err
 * saying why (the child was stopped and reaped, the fds are untouched). */
int kg_upgrade_spawn(const char *exe, char *const argv[], const struct kg_upgrade_fds *fds,
		     unsigned timeout_ms, struct kg_upgrade_child *child, char *err,
		     size_t errlen);

/* Tells the new process it owns everything now, and closes the channel. */
void kg_upgrade_release(struct kg_upgrade_child *child);

/* What the new process inherited. Fds still in it are owned by it. */
struct kg_inherit {
	bool active;
	pid_t parent;
	int chan;
	int lock_fd;
	int control_fd;
	int metrics_fd;
	char *health;    /* the old process's health verdicts (kg_health_import), or NULL */
	char *sessions;  /* its TLS sessions (kg_tls_carry_import), or NULL */
	int steer[KG_STEER_FDS]; /* its steering objects (kg_steer_adopt), or -1 */
	int listen[KG_INHERIT_MAX_LISTEN];
	size_t n_listen;
};

/* Reads and removes KG_UPGRADE_ENV. 0 with in->active false when it is
 * not set; 0 with in filled, each fd checked for what it claims to be;
 * -EINVAL with err for a malformed value or an fd that is not what it
 * should be (every fd it names is closed then). Before any thread starts. */
int kg_inherit_from_env(struct kg_inherit *in, char *err, size_t errlen);

/* An inherited listening socket bound to exactly addr (removed from in),
 * or -1. */
int kg_inherit_take_listener(struct kg_inherit *in, const struct sockaddr_storage *addr);

/* Closes the listening sockets nothing took (the new state has fewer
 * workers or listeners than the old one); returns how many. */
size_t kg_inherit_close_unused(struct kg_inherit *in);

/* Sends "ready" and waits up to timeout_ms for "released". true when the
 * old process released everything or is gone (it cannot serve either way);
 * false when it did not answer in time. Closes the channel. */
bool kg_inherit_report_ready(struct kg_inherit *in, unsigned timeout_ms);

/* Closes whatever in still owns (used when start-up fails). */
void kg_inherit_close(struct kg_inherit *in);

#endif
