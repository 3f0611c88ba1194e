/* Paths h2-userspace-tls and h2-ktls: https connections whose client chose
 * HTTP/2 (ALPN h2), each stream balanced on its own to HTTP/1.1 backends,
 * or with backend_protocol h2 to a stream on one of the worker's HTTP/2
 * backend connections (forward_h2.c). */
#ifndef KGATE_FORWARD_H2_H
#define KGATE_FORWARD_H2_H

#include "fwd.h"

extern const struct kg_fwd_ops kg_fwd_h2_ops;

/* The worker's HTTP/2 backend connections (backend_protocol h2), shared
 * by its client connections. Worker thread only. */
struct kg_h2b;
/* NULL on ENOMEM. */
struct kg_h2b *kg_h2b_create(struct kg_worker *w);
/* Closes what is left (no operation may be in flight: the ring is gone).
 * Tolerates NULL. */
void kg_h2b_destroy(struct kg_h2b *t);
/* A completion of KG_OP_H2B_* on the connection in slot. */
void kg_h2b_on_cqe(struct kg_worker *w, int op, uint32_t slot, int res);
/* After each completion: moves on the client connections whose streams a
 * backend connection moved. */
void kg_h2b_flush(struct kg_worker *w);
/* On the tick: closes connections without streams past their idle
 * timeout, or all of them once the worker drains. */
void kg_h2b_expire(struct kg_worker *w);
/* No backend connection is left (the worker may stop). */
bool kg_h2b_idle(const struct kg_worker *w);

#endif
