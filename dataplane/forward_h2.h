/* Paths h2-userspace-tls and h2-ktls: https connections whose client chose
 * HTTP/2 (ALPN h2), each stream balanced on its own to HTTP/1.1 backends,
 * or with backend_protocol h2 to a stream on one of the worker's HTTP/2
 * backend connections; WebSocket streams (RFC 8441 extended CONNECT) as
 * HTTP/1.1 upgrades (forward_h2.c). */
#ifndef KGATE_FORWARD_H2_H
#define KGATE_FORWARD_H2_H

#include "fwd.h"

extern const struct kg_fwd_ops kg_fwd_h2_ops;

#endif
