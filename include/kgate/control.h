/* The control protocol shared by kgated and kgatectl.
 *
 * One request per connection on the Unix control socket: the client sends
 * one JSON object and shuts down its write side; the daemon answers with
 * one JSON object and closes.
 *
 *   request: {"version": 1, "op": "listener.create", "args": {...}}
 *   reply:   {"version": 1, "ok": true, "result": ...}
 *        or  {"version": 1, "ok": false,
 *             "error": {"code": "not_found", "message": "listener web: no such listener"}}
 *
 * Codes are stable (scripts match on them); messages are for people. */
#ifndef KGATE_CONTROL_PROTO_H
#define KGATE_CONTROL_PROTO_H

#define KG_CONTROL_VERSION 1
/* Certificates and CRLs travel inline: a 100,000-entry CRL is about 5 MB
 * of PEM (bench/crl_bench.py); the socket is the operator's (0600/group). */
#define KG_CONTROL_MAX_REQUEST (32u << 20)
#define KG_CONTROL_MAX_REPLY (16u << 20)
#define KG_CONTROL_SOCKET_NAME "control.sock" /* in the state directory */

#define KG_ERR_BAD_REQUEST "bad_request"        /* not JSON, not an object, missing op */
#define KG_ERR_TOO_LARGE "too_large"            /* request over KG_CONTROL_MAX_REQUEST */
#define KG_ERR_TIMEOUT "timeout"                /* request not complete in time */
#define KG_ERR_VERSION "unsupported_version"
#define KG_ERR_UNKNOWN_OP "unknown_op"
#define KG_ERR_INVALID "invalid_argument"       /* a value or the resulting state is invalid */
#define KG_ERR_NOT_FOUND "not_found"
#define KG_ERR_EXISTS "already_exists"
#define KG_ERR_IN_USE "in_use"                  /* e.g. deleting a certificate a listener uses */
#define KG_ERR_ADDRESS_IN_USE "address_in_use"  /* cannot listen on the address */
#define KG_ERR_LIMIT "limit_reached"
#define KG_ERR_PERSIST "persist_failed"         /* nothing changed: the state could not be saved */
#define KG_ERR_DENIED "permission_denied"      /* peer credentials not allowed */
#define KG_ERR_INTERNAL "internal"
#define KG_ERR_BUSY "busy"                      /* an upgrade is handing over: retry */
#define KG_ERR_UPGRADE_FAILED "upgrade_failed"  /* the new process did not take over */
#define KG_ERR_STORE_MODE "store_mode"          /* kgated follows a store: change it there */

#endif
