/* The control socket server: one thread, one request at a time (so
 * concurrent kgatectl clients are serialized), also serving the metrics
 * endpoint and rotating the session-ticket keys (ops->rt->tickets) when
 * they are due. See include/kgate/control.h for the protocol. */
#ifndef KGATE_CONTROL_H
#define KGATE_CONTROL_H

#include <stddef.h>
#include <sys/types.h>

#include "control_ops.h"

struct kg_control;

/* Binds path (replacing a stale socket; refusing if a live daemon answers
 * there), mode 0600, or 0660 owned by group when group != (gid_t)-1;
 * or, when inherited_fd >= 0, serves that listening socket (already bound
 * at path by the kgated this one upgrades, upgrade.h) and takes it over.
 * metrics_fd (or -1) is served too; path NULL serves only metrics (and
 * neither: the thread only rotates ticket keys). Starts the thread. NULL
 * with err (inherited_fd is then closed). */
struct kg_control *kg_control_start(struct kg_ops *ops, const char *path, gid_t group,
				    int inherited_fd, int metrics_fd, char *err, size_t errlen);
/* Stops the thread (after the request in progress) and removes the socket. */
void kg_control_stop(struct kg_control *c);
/* The same, but the socket file stays: an upgraded kgated serves it now. */
void kg_control_hand_over(struct kg_control *c);
/* The listening control socket's fd (-1 when there is none). */
int kg_control_fd(const struct kg_control *c);

#endif
