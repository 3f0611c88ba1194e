/* What all workers share, and how it changes while they run.
 *
 * A listener lives in a fixed slot (its index goes into io_uring user_data
 * and never changes while the listener exists). What a connection needs
 * from its listener — configuration, SSL_CTX, balancer — is an immutable,
 * reference-counted snapshot (struct kg_listener_rt). The control thread
 * publishes a new snapshot by swapping the slot's pointer; a connection
 * takes a reference at accept and keeps the snapshot it started with until
 * it is freed, so a certificate, CRL or backend change applies to new
 * handshakes only and never touches established connections. */
#ifndef KGATE_RUNTIME_H
#define KGATE_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <openssl/ssl.h>

#include <kgate/limits.h>

#include "balancer.h"
#include "config.h"
#include "counters.h"
#include "paths.h"
#include "routes.h"
#include "tls.h"

struct kg_health_group;
struct kg_group_rt;
struct kg_ticket_keys;
struct kg_store_status;

#define KG_MAX_LISTENERS 64
#define KG_FAILED_MAX 512

struct kg_listener_slot;

/* One immutable snapshot of a listener. Only refs changes after publish. */
struct kg_listener_rt {
	atomic_uint refs;
	uint64_t serial;    /* unique per snapshot built: tells snapshots apart after free */
	struct kg_listener_slot *slot;
	struct kg_config_ref *doc;          /* keeps conf alive */
	const struct kg_listener_conf *conf;
	SSL_CTX *ssl_ctx;     /* NULL for tcp listeners */
	enum kg_path plan;  /* the path connections take (paths.h) */
	bool plan_forced;   /* configured explicitly: no fallback per connection */
	/* The backend groups (group.h) the listener sends to, each once, with
	 * a reference: its inline group, or the named groups it refers to
	 * (shared with the other listeners that do). */
	struct kg_group_rt **groups;
	size_t n_groups;
	/* conf->group's runtime: where tcp/tls connections go, and https
	 * requests no route matched; NULL: those get 404. */
	struct kg_group_rt *group;
	/* Per route of conf->routes: its group's runtime (one of groups). */
	struct kg_group_rt **route_group;
};

/* The listener's group runtime whose configuration is named name ("" for
 * its inline backends), or NULL. */
struct kg_group_rt *kg_listener_find_group(const struct kg_listener_rt *l, const char *name);
/* The sum of the cut generations (health.h) of the listener's groups:
 * changes whenever a member of one of them may have to be cut. */
unsigned kg_listener_cut_gen(const struct kg_listener_rt *l);

/* Per-listener counters: shared atomics (relaxed), one increment per
 * connection event, read by stats/metrics. */
struct kg_listener_counters {
	atomic_uint_fast64_t accepted;
	atomic_uint_fast64_t handshakes;
	atomic_uint_fast64_t handshake_failed;
	atomic_uint_fast64_t rejected_limit;
	atomic_uint_fast64_t failed_by_reason[KG_HS_REASONS];
	/* Access rule decisions (listeners with rules or access_default
	 * deny): the rule's name is in the log line of a denial. */
	atomic_uint_fast64_t access_allowed;
	atomic_uint_fast64_t access_denied;
	/* Route decisions of an https listener with routes: requests per
	 * route (by its index in the running routes), those no route matched
	 * that went to the default group, and those answered 404. Reset when
	 * the routes change (their names are the running ones). */
	atomic_uint_fast64_t routed[KG_ROUTES_MAX];
	atomic_uint_fast64_t route_default;
	atomic_uint_fast64_t route_not_found;
};

struct kg_listener_slot {
	uint32_t index;
	pthread_mutex_t lock;          /* orders kg_listener_acquire against swaps */
	struct kg_listener_rt *snap;   /* current snapshot; NULL when not accepting */
	atomic_uint active;            /* connections across workers and snapshots */
	struct kg_listener_counters counters;
	/* Owned by the control thread: */
	bool used;
	char name[KG_NAME_MAX + 1];
	bool listening;                /* workers hold sockets for this slot */
	/* The BPF program steers this slot's connections (steer.h): workers
	 * keep what they accept. Written before the sockets go to the
	 * workers (the posting's lock orders it). */
	bool steered;
	int fds[KG_MAX_WORKERS];       /* theirs while listening (an upgrade passes them on) */
	struct sockaddr_storage bind;  /* where they listen */
	uint64_t routes_digest;        /* which routes the route counters are for */
	char failed[KG_FAILED_MAX];    /* why it could not start ("" = it did or is stopped) */
};

struct kg_worker;
struct kg_inherit;

/* What GET /ready on the metrics port answers (metrics.c), for whatever
 * steers traffic here (kgate-anycast announces the service address only
 * on 200). */
enum kg_readiness {
	KG_READINESS_STARTING,  /* 503 "starting": listeners not in place yet */
	KG_READINESS_SERVING,   /* 200 "ready" */
	KG_READINESS_STOPPING,  /* 503 "draining": withdrawing, then draining */
};

struct kg_runtime {
	struct kg_listener_slot slots[KG_MAX_LISTENERS];
	struct kg_worker **workers;    /* set by main before the first apply */
	unsigned n_workers;            /* health checks are spread over them */
	struct kg_kernel_caps caps;    /* probed once at start */
	struct kg_sockmap *sockmap;    /* loaded before the privilege drop; NULL without BPF */
	/* settings.accept_steering as resolved at start: the program and maps
	 * when "bpf" (loaded before the privilege drop, or inherited at an
	 * upgrade), NULL for the userspace hand-over; why, for logs/status. */
	struct kg_steer *steer;
	char steer_why[160];
	struct kg_ticket_keys *tickets; /* session-ticket keys of stateless listeners; set by
					 * main before the first apply, rotated by the control thread */
	atomic_uint drain_timeout_ms;
	atomic_uint withdraw_delay_ms; /* settings.withdraw_delay_ms, read at SIGTERM */
	atomic_int readiness;          /* enum kg_readiness; written by the main thread */
	atomic_bool stopping; /* set by the signal thread: drain and exit */
	/* Set with stopping when the listeners went to an upgraded process:
	 * idle https connections then wait for their next request, answered
	 * with "Connection: close", rather than being closed under a client
	 * that may be sending one (until the drain timeout). */
	atomic_bool handed_over;
	/* At an upgrade the new process holds the listening sockets without
	 * accepting until the old one has stopped (kg_workers_accept): a new
	 * process that fails before then has taken no connection. */
	atomic_bool accept_held;
	uint64_t started_ms;  /* monotonic, for uptime */
	struct kg_inherit *inherit;    /* sockets inherited at an upgrade; start-up only */
	struct kg_store_status *store; /* store mode's status (store.h); NULL: single box */
	/* The named backend groups' runtimes, parallel to the running
	 * document's backend_groups (control thread only; apply.c). */
	struct kg_group_rt *groups[KG_MAX_GROUPS];
	size_t n_groups;
};

/* Initialises the slots (rt->caps is the caller's: kg_kernel_probe); 0 or
 * -errno. kg_runtime_destroy drops every
 * published snapshot (workers must have stopped), then closes rt->tickets. */
int kg_runtime_init(struct kg_runtime *rt);
void kg_runtime_destroy(struct kg_runtime *rt);

/* Worker side: the slot's current snapshot with a reference taken, or NULL
 * when the listener is stopping or gone. Release with kg_listener_put. */
struct kg_listener_rt *kg_listener_acquire(struct kg_listener_slot *s);
void kg_listener_put(struct kg_listener_rt *l);

/* Builds a snapshot for lc (which must belong to doc->cfg): forwarding
 * plan, SSL_CTX (stateless tickets under tickets, see kg_tls_ctx_create)
 * and its groups: the inline one built here (member states carried over
 * from the slot's current snapshot by address), the named ones taken from
 * named[], the runtimes of doc->cfg->groups by index. NULL with err filled
 * on failure; messages start with where ("listeners[0]"), the listener's
 * JSON path. Takes its own doc reference. */
struct kg_listener_rt *kg_listener_build(struct kg_listener_slot *slot,
					 const struct kg_kernel_caps *caps,
					 struct kg_ticket_keys *tickets,
					 struct kg_config_ref *doc,
					 const struct kg_listener_conf *lc,
					 struct kg_group_rt *const *named, const char *where,
					 char *err, size_t errlen);

/* Builds the runtimes of every named group of doc->cfg into out[] (one
 * per group, in order): a group whose definition equals its running one
 * in prev[0..n_prev) takes that one (a reference), others are built and
 * inherit the running one's member states; rebuilt[i] (may be NULL) says
 * which. 0, or -EINVAL with err and nothing kept. */
int kg_groups_build(struct kg_config_ref *doc, struct kg_group_rt *const *prev, size_t n_prev,
		    struct kg_group_rt **out, bool *rebuilt, char *err, size_t errlen);
void kg_groups_put(struct kg_group_rt **g, size_t n);

/* What --check and kgatectl store push validate beyond parsing: every
 * listener's snapshot (SSL_CTX, balancer, forwarding plan) can be built
 * under caps; nothing is bound. 0, or -EINVAL with err. */
int kg_config_check_build(struct kg_config_ref *doc, const struct kg_kernel_caps *caps,
			  char *err, size_t errlen);
/* Publishes snap (may be NULL) in the slot and drops the old one's slot
 * reference. Consumes the caller's reference to snap. */
void kg_listener_publish(struct kg_listener_slot *s, struct kg_listener_rt *snap);

#endif
