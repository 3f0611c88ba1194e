/* A connection's forwarding path as an ops table (HAProxy's mux_ops):
 * the connection core (conn.c) and the worker's dispatch call these and
 * never name a forwarder. One table per forwarder (forward_user.c,
 * forward_splice.c, forward_sockmap.c, forward_http.c), registered for the
 * paths it serves (forwarders.c) before the workers start; a connection
 * picks its table once, when forwarding starts (kg_conn_begin_path).
 *
 * Every member runs on the connection's worker thread. A member that does
 * I/O may close the connection (kg_conn_close) before it returns; the
 * caller checks c->state afterwards. Completion handlers (on_poll,
 * on_backend_io, on_connect) account for their own in-flight operation
 * (c->inflight--). */
#ifndef KGATE_FWD_H
#define KGATE_FWD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "paths.h"

struct kg_conn;
struct kg_listener_rt;
struct kg_worker;

struct kg_fwd_ops {
	const char *name;
	/* Takes the connection over: the forwarder's context in c->fwd_ctx,
	 * early (plaintext the client sent before forwarding started, already
	 * decrypted) queued for the backend. No I/O yet, and c->ssl may still
	 * be read (identity). 0; -EOPNOTSUPP when this path declines the
	 * connection and c should take `fallback` instead; any other -errno
	 * with err filled (the caller closes). */
	int (*start)(struct kg_conn *c, const void *early, size_t early_len, char *err,
		     size_t errlen);
	/* Starts moving bytes, once the caller's hands are off (after a kTLS
	 * handoff released OpenSSL). */
	void (*run)(struct kg_conn *c);
	/* The client's ciphertext was fed to OpenSSL (userspace TLS paths). */
	void (*on_client_data)(struct kg_conn *c);
	/* Everything queued for the client was sent. */
	void (*on_client_drained)(struct kg_conn *c);
	/* A readiness poll (KG_OP_POLL_IN/POLL_OUT/SOCKMAP_RDHUP) on fd, or
	 * the splice backoff timer (KG_OP_SPLICE_BACKOFF), completed. */
	void (*on_poll)(struct kg_conn *c, int op, int fd, int res);
	/* A backend receive or send of the forwarder's own completed on fd
	 * (the socket packed in its user_data: a forwarder with several
	 * backend sockets, one per HTTP/2 stream, finds which by it);
	 * data: a provided buffer's bytes (valid during the call), or NULL. */
	void (*on_backend_io)(struct kg_conn *c, int op, int fd, int res,
			      const unsigned char *data);
	/* A backend connect the forwarder submitted itself on fd completed
	 * (https connects per request or stream); NULL for paths that
	 * connect once, before start. */
	void (*on_connect)(struct kg_conn *c, int fd, int res);
	/* The connection's timer fired (conn.h kg_conn_on_timer): act on a
	 * deadline that passed, and return when to look again (0 once the
	 * connection is closing). A forwarder that moves a deadline earlier
	 * calls kg_conn_timer_at. NULL: the core's idle timeout applies. */
	uint64_t (*check_deadline)(struct kg_conn *c);
	/* kg_conn_close is closing c: cancel what only the forwarder knows of. */
	void (*on_close)(struct kg_conn *c);
	/* Nothing is in flight any more: free c->fwd_ctx. */
	void (*release)(struct kg_conn *c);
	/* A member left the rotation (disabled, or unhealthy under
	 * cut_on_unhealthy; published: the listener's snapshot now). For
	 * forwarders that hold a member per stream, not per connection: end
	 * the streams kg_conn_member_cut names, and return whether c was
	 * closed. NULL: the core closes c when its own member must go. */
	bool (*cut)(struct kg_conn *c, const struct kg_listener_rt *published);
	/* The worker-wide timer of this forwarder (KG_OP_FWD_TIMER, idx = the
	 * path) fired; NULL when it has none. */
	void (*on_worker_timer)(struct kg_worker *w);
	/* Where a connection goes when start declines it. */
	enum kg_path fallback;

	/* Worker-wide work of the forwarder's own, beside its connections
	 * (forward_h2.c: the worker's HTTP/2 backend connections); all NULL
	 * for forwarders without. The worker never names the forwarder: it
	 * calls these for each forwarder that has them (kg_fwd_worker_ops).
	 * on_worker_cqe: a completion of KG_OP_FWD_CONNECT/_LINK_TIMEOUT/
	 * _RECV/_SEND whose idx (kg_fwd_ud_idx) names a path of this table;
	 * after_cqe: after every completion, outside any handler;
	 * on_worker_tick: the worker's tick; worker_idle: nothing of it is
	 * left (the worker may stop); worker_end: the worker and its ring are
	 * gone: free what is left. */
	void (*on_worker_cqe)(struct kg_worker *w, int op, uint32_t slot, int res);
	void (*after_cqe)(struct kg_worker *w);
	void (*on_worker_tick)(struct kg_worker *w);
	bool (*worker_idle)(const struct kg_worker *w);
	void (*worker_end)(struct kg_worker *w);
};

/* The user_data idx of a forwarder's worker-wide completion: its path
 * above, a slot of the forwarder's own below. */
#define KG_FWD_SLOT_BITS 16u
#define KG_FWD_SLOTS (1u << KG_FWD_SLOT_BITS)
static inline uint32_t kg_fwd_ud_idx(enum kg_path path, uint32_t slot)
{
	return (uint32_t)path << KG_FWD_SLOT_BITS | (slot & (KG_FWD_SLOTS - 1));
}
static inline enum kg_path kg_fwd_ud_path(uint32_t idx)
{
	return (enum kg_path)(idx >> KG_FWD_SLOT_BITS);
}
static inline uint32_t kg_fwd_ud_slot(uint32_t idx)
{
	return idx & (KG_FWD_SLOTS - 1);
}

/* Registers ops for path; before the workers start. */
void kg_fwd_register(enum kg_path path, const struct kg_fwd_ops *ops);
/* The ops registered for path, NULL when none. */
const struct kg_fwd_ops *kg_fwd_for(enum kg_path path);
/* The distinct registered tables with worker-wide hooks, *n of them. */
const struct kg_fwd_ops *const *kg_fwd_worker_ops(size_t *n);
/* The phase before a kTLS path: the handoff (handoff.h) runs as the
 * connection's forwarder until it hands over to the path's own. */
void kg_fwd_register_handoff(const struct kg_fwd_ops *ops);
const struct kg_fwd_ops *kg_fwd_handoff(void);

#endif
