/* Control operations: request → validated change of the state document →
 * applied → persisted → reply (include/kgate/control.h for the wire
 * shape). One operation at a time (the control thread). */
#ifndef KGATE_CONTROL_OPS_H
#define KGATE_CONTROL_OPS_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include <json-c/json.h>

#include "apply.h"
#include "runtime.h"
#include "state.h"
#include "store_status.h"

struct kg_ops {
	struct kg_state *st;         /* NULL: no state folder, read-only control */
	/* NULL: document-only mode (kgatectl --store): a change is validated
	 * as kgated would (every kernel feature counted as available, no
	 * socket bound) and persisted in st, and nothing is applied; reads
	 * answer from the document, with what only a running kgated knows
	 * (listening state, health, connections) null; status, stats and
	 * upgrade are refused. */
	struct kg_runtime *rt;
	struct kg_config_ref *cur;   /* the running document, parsed */
	/* Bumped (under change_lock) each time cur is replaced, so the
	 * control thread sees a change made by the store thread too. */
	unsigned long generation;
	struct kg_apply_plan plan;   /* scratch, large */
	const char *version;
	time_t started_wall;
	const char *control_path;
	const char *metrics_addr;
	const char *retry;           /* during listener.start: this listener is changed and must start */
	pthread_mutex_t change_lock; /* held while a change runs (control_ops.c run_op) */
	bool frozen;                 /* changes refused: an upgrade is handing over */
	/* "upgrade" requests: the control thread raises SIGUSR2 and waits for
	 * the main thread's kg_ops_upgrade_done. */
	struct {
		pthread_mutex_t lock;
		pthread_cond_t done;
		unsigned asked, answered;
		bool ok;
		int pid;                 /* the new process */
		char reason[600];        /* why it failed */
	} upgrade;
	unsigned upgrade_wait_ms;    /* how long a request waits for the outcome; 0: no upgrades */
	/* Store mode (store.h): the store is the one source of truth, so the
	 * control socket refuses changes, and the store thread changes the
	 * state: reads then take change_lock too. NULL: single-box mode. */
	struct kg_store_status *store;
};

/* 0 or -errno: ops's locks and condition (kg_ops_destroy releases them). */
int kg_ops_init(struct kg_ops *ops);
void kg_ops_destroy(struct kg_ops *ops);

/* Main thread, after each upgrade attempt: answers every upgrade request
 * made before it. pid: the new process when ok; reason when not. */
void kg_ops_upgrade_done(struct kg_ops *ops, bool ok, int pid, const char *reason);

/* Refuses changes from now on (KG_ERR_BUSY), after the one in progress
 * is applied and persisted; thaw undoes it. Any thread. */
void kg_ops_freeze(struct kg_ops *ops);
void kg_ops_thaw(struct kg_ops *ops);

/* Applies the document in ops->cur to the (empty) runtime at start-up.
 * 0, or -1 with err. Patches kernel-chosen ports into st->doc. */
int kg_ops_apply_initial(struct kg_ops *ops, char *err, size_t errlen);

/* Handles one parsed request and returns the reply (never NULL unless out
 * of memory). */
json_object *kg_ops_handle(struct kg_ops *ops, json_object *req);

/* Store mode: makes the document make() returns (from ops->st, under
 * change_lock, so the control thread and the store thread never race) the
 * running state through the same validate → apply → persist path as a
 * control change. make returns NULL with err to refuse. 0, -EBUSY (an
 * upgrade is handing over: try again later, nothing was refused), or
 * -EINVAL with err (the document was refused; the last good state keeps
 * serving). */
typedef json_object *(*kg_ops_doc_fn)(void *arg, struct kg_state *st, char *err, size_t errlen);
int kg_ops_apply_document(struct kg_ops *ops, kg_ops_doc_fn make, void *arg, char *err,
			  size_t errlen);

/* Store mode: this instance's status for the store, {"ready", "listeners":
 * [{"name", "state"}], "members": {"healthy", "unhealthy", "unknown"}}
 * (taken under change_lock). NULL when out of memory. */
json_object *kg_ops_instance_status(struct kg_ops *ops);

/* The running document (a new reference: kg_config_ref_put it) and the
 * generation it belongs to. Any thread. */
struct kg_config_ref *kg_ops_current(struct kg_ops *ops, unsigned long *generation);

/* The CRL in force for the ca entry ca_name changed (crl.h, from the CRL
 * watcher's thread): rebuilds the snapshots of the listeners verifying
 * clients with it, under change_lock, without changing the document.
 * *rebuilt: how many. 0, -EBUSY (an upgrade is handing over: retry
 * later), or the -errno of kg_apply_prepare with err. */
int kg_ops_crl_changed(struct kg_ops *ops, const char *ca_name, size_t *rebuilt, char *err,
		       size_t errlen);

/* A reply for an error found before a request could be parsed. */
json_object *kg_ops_error(const char *code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Writes stats for the Prometheus endpoint and the stats op (metrics.c). */

#endif
