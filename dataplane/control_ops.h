/* Control operations: request → validated change of the state document →
 * applied → persisted → reply (include/kgate/control.h for the wire
 * shape). One operation at a time (the control thread). */
#ifndef KGATE_CONTROL_OPS_H
#define KGATE_CONTROL_OPS_H

#include <stdint.h>
#include <time.h>

#include <json-c/json.h>

#include "apply.h"
#include "runtime.h"
#include "state.h"

struct kg_ops {
	struct kg_state *st;         /* NULL: no state folder, read-only control */
	struct kg_runtime *rt;
	struct kg_config_ref *cur;   /* the running document, parsed */
	struct kg_apply_plan plan;   /* scratch, large */
	const char *version;
	time_t started_wall;
	const char *control_path;
	const char *metrics_addr;
	const char *retry;           /* during listener.start: this listener is changed and must start */
};

/* Applies the document in ops->cur to the (empty) runtime at start-up.
 * 0, or -1 with err. Patches kernel-chosen ports into st->doc. */
int kg_ops_apply_initial(struct kg_ops *ops, char *err, size_t errlen);

/* Handles one parsed request and returns the reply (never NULL unless out
 * of memory). */
json_object *kg_ops_handle(struct kg_ops *ops, json_object *req);

/* A reply for an error found before a request could be parsed. */
json_object *kg_ops_error(const char *code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Writes stats for the Prometheus endpoint and the stats op (metrics.c). */

#endif
