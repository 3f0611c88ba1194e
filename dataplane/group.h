/* Backend groups at run time: a group's balancer (its own smooth weighted
 * round robin) and its health state (health.h), built from a
 * kg_group_conf. A named group (backend_groups) is built once per change
 * of its definition and shared by every listener snapshot that sends to
 * it, so its members are checked once and its round robin spans all of
 * those listeners' traffic; a listener's inline backends are a group of
 * its own, built with each of its snapshots.
 *
 * Immutable once built but for refs and the health state inside (which
 * has its own locking); a connection holds a reference to the group whose
 * member it talks to. */
#ifndef KGATE_GROUP_H
#define KGATE_GROUP_H

#include <stdatomic.h>
#include <stddef.h>

#include "config.h"

struct kg_balancer;
struct kg_health_group;

struct kg_group_rt {
	atomic_uint refs;
	const struct kg_group_conf *conf;
	struct kg_config_ref *doc; /* keeps conf alive */
	struct kg_balancer *balancer;
	struct kg_health_group *health;
};

/* Builds gc's runtime (gc must belong to doc->cfg; takes a doc reference).
 * Members of prev (the group's running runtime, may be NULL) that stay
 * keep their health state and counters; the document's drained and
 * disabled flags are applied. owner_key/owner name the group in log lines
 * ("group"/"api", or "listener"/"web" for inline backends; owner must
 * live in doc). NULL with "<where>...: reason" in err. */
struct kg_group_rt *kg_group_build(struct kg_config_ref *doc, const struct kg_group_conf *gc,
				   struct kg_group_rt *prev, const char *owner_key,
				   const char *owner, const char *where, char *err, size_t errlen);
struct kg_group_rt *kg_group_get(struct kg_group_rt *g);
/* Tolerates NULL. */
void kg_group_put(struct kg_group_rt *g);

/* Sets each member's administrative state from gc (the document's
 * drained/disabled flags; members are matched by address). */
void kg_group_sync_admin(struct kg_group_rt *g, const struct kg_group_conf *gc);

#endif
