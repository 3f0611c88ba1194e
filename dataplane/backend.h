/* Backend selection and connect for a connection: ask the balancer for a
 * member that is up and not yet tried, connect through io_uring with a
 * linked timeout, and on refusal or timeout move on to the next member,
 * at most connect_retries times. Runs on the connection's worker thread. */
#ifndef KGATE_BACKEND_H
#define KGATE_BACKEND_H

#include "config.h"

struct kg_conn;

/* Picks the next member and connects (KG_OP_BACKEND_CONNECT), or ends the
 * connection when none is left. */
void kg_backend_connect_next(struct kg_conn *c);
/* KG_OP_BACKEND_CONNECT completed with res. */
void kg_backend_on_connect(struct kg_conn *c, int res);
/* A socket for member b in c->bfd, its connect submitted (completion op)
 * with the listener's connect timeout linked. 0, or -errno when no socket
 * could be made. */
int kg_backend_submit_connect(struct kg_conn *c, const struct kg_backend_conf *b, int op);
/* The connect to c->member failed with res: counted, logged, a passive
 * health failure, the member marked tried, c->bfd closed. */
void kg_backend_connect_failed(struct kg_conn *c, int res);

#endif
