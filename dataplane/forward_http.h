/* Paths http-userspace-tls and http-ktls-splice: https listeners, requests
 * parsed and balanced one by one (forward_http.c). */
#ifndef KGATE_FORWARD_HTTP_H
#define KGATE_FORWARD_HTTP_H

#include "fwd.h"

extern const struct kg_fwd_ops kg_fwd_http_ops;

#endif
