/* Limits shared by the daemon, kgatectl and the tests. */
#ifndef KGATE_LIMITS_H
#define KGATE_LIMITS_H

#define KG_MAX_BACKENDS 64      /* members per group: tried-member masks are 64-bit */
#define KG_MAX_WEIGHT 256
#define KG_MAX_WORKERS 64
#define KG_IO_BUF_SIZE 16384     /* one TLS record of plaintext */
#define KG_MAX_CONNS_PER_WORKER (1u << 20)
/* TLS sessions kept per listener for resumption; OpenSSL's in-memory cache
 * holds each with its parsed client certificate, about 11 KiB. */
#define KG_TLS_SESSION_CACHE_DEFAULT 20000
#define KG_TLS_SESSION_CACHE_MAX 1000000
/* A TLS session's lifetime, cached or in a ticket: it bounds how long a
 * revoked client can still resume. */
#define KG_TLS_SESSION_TIMEOUT_S 300
/* settings.ticket_key_rotation_s (dataplane/ticket_keys.h). The minimum is
 * the session lifetime: a ticket issued just before a rotation is then
 * still accepted, under the previous key, until it expires. */
#define KG_TICKET_ROTATION_MIN_S KG_TLS_SESSION_TIMEOUT_S
#define KG_TICKET_ROTATION_MAX_S 604800
#define KG_TICKET_ROTATION_DEFAULT_S 43200
/* An https listener's h2_max_streams when not set: the session's own
 * default (dataplane/h2_session.h KG_H2_DEFAULT_MAX_STREAMS, checked equal
 * in forward_h2.c), here for kgatectl's help too. */
#define KG_H2_MAX_STREAMS_DEFAULT 100

#endif
