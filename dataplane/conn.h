/* A client connection on its worker: accept, the TLS handshake over memory
 * BIOs, ciphertext I/O with the client, the backend connect, then a
 * forwarding path (fwd.h) chosen once; deadlines and close.
 *
 * Ownership: the worker's slot table owns each kg_conn. kg_conn_close()
 * only marks the connection and kicks its in-flight operations; the worker
 * frees it (kg_conn_release_if_idle) once the last completion has arrived,
 * so no handler ever touches freed memory. */
#ifndef KGATE_CONN_H
#define KGATE_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/time_types.h>
#include <openssl/ssl.h>

#include <kgate/limits.h>

#include "backend.h"
#include "ocsp.h"
#include "paths.h"
#include "timer_wheel.h"

struct kg_worker;
struct kg_listener_rt;
struct kg_fwd_ops;
struct kg_ktls_track;

enum kg_conn_state {
	KG_CONN_HANDSHAKE,
	KG_CONN_CONNECTING,
	KG_CONN_HANDOFF,    /* backend connected, moving the client to kTLS (handoff.h) */
	KG_CONN_FORWARDING,
	KG_CONN_CLOSING, /* waiting for in-flight operations before free */
};

/* A byte span inside a fixed buffer: [off, len) still to be consumed. */
struct kg_span {
	unsigned char *data;
	uint32_t off;
	uint32_t len;
};

struct kg_conn {
	uint32_t idx;
	enum kg_conn_state state;
	struct kg_worker *worker;
	struct kg_listener_rt *listener; /* snapshot reference held until free */
	uint32_t listener_idx;           /* slot index */
	int cfd; /* client socket */
	int bfd; /* backend socket, -1 until connecting */
	bool reset; /* kg_conn_reset: close with RST, never FIN */
	/* https with access_denied_response 403: the rule that denied the
	 * client's certificate (it lives in the snapshot's document), NULL
	 * when allowed; every request is answered 403. */
	const char *access_denied_rule;
	/* Listeners with ocsp on: the handshake's wait for its client
	 * certificate's OCSP answer (ocsp.h); ocsp_paused while it waits. */
	struct kg_ocsp_wait ocsp;
	bool ocsp_on, ocsp_paused;
	SSL *ssl;
	BIO *net_in;  /* ciphertext from the client, read by OpenSSL (owned by ssl) */
	BIO *net_out; /* kg_client_bio_new: OpenSSL's records into c_out (owned by ssl) */
	BIO *out_spill; /* records behind a full c_out; NULL when unused */
	uint64_t deadline_ms; /* handshake, then idle deadline (pushed by I/O: kg_conn_touch) */
	struct kg_timer timer; /* on the worker's wheel: the next visit (kg_conn_on_timer) */
	uint32_t inflight;    /* io_uring operations not yet completed */

	/* The group member is of (one of the listener snapshot's groups, kept
	 * alive by it): the listener's group for tcp/tls, the request's
	 * route's for https. NULL before a pick. */
	struct kg_group_rt *group;
	int member;          /* chosen backend of group, -1 before */
	bool member_counted; /* counted in the member's active connections */
	struct kg_backend_walk walk; /* the members tried so far (backend.h) */

	enum kg_path path;   /* the path forwarding took, KG_PATH_NONE before */
	const struct kg_fwd_ops *fwd; /* that path's forwarder, NULL before */
	void *fwd_ctx;                /* the forwarder's own state (fwd.h start/release) */
	struct kg_ktls_track *ktls;   /* while a kTLS handoff is possible */
	bool handoff_wait_flush;      /* handoff waits for OpenSSL's last records to be sent */
	uint32_t handoff_need;        /* handoff reads exactly the rest of a partial record */

	/* Buffers are held only while data is in flight (bufpool.h): receives
	 * on userspace TLS use the worker's provided-buffer ring, the send span
	 * borrows a pool buffer (data NULL when empty). Only a connection that
	 * may hand off to kTLS owns c_in, for its whole life: it reads the
	 * handshake record by record and keeps unfed bytes. */
	uint32_t c_in_cap;
	struct kg_span c_in;  /* recv from client (ciphertext); kTLS plan only */
	struct kg_span c_out; /* to send to client (ciphertext), pool buffer, written by net_out */
	bool c_out_batch;     /* c_out is a batch buffer (kg_client_out_expect), not a pool one */
	uint32_t bio_grown;   /* bytes through net_in and out_spill since the last trim */

	bool c_recv_busy, c_send_busy;
	bool client_eof;     /* client sent FIN (with or without close_notify) */
	bool close_after_flush; /* send what is queued (an alert), then close */
	char close_reason[96];
};

/* An idle connection's memory BIOs are trimmed once no byte has moved
 * for this long (its timer looks when a burst has grown them). */
#define KG_TRIM_IDLE_MS 100

/* Plaintext a client may pipeline behind its Finished, decrypted before a
 * kTLS handoff: one record and a bit, with room to spare. It sits in a
 * scratch area behind c_in (handoff.c). */
#define KG_KTLS_EARLY_CAP (3 * KG_IO_BUF_SIZE)

void kg_conn_accept(struct kg_worker *w, uint32_t listener_idx, int fd);
/* data: the bytes of a buffer-select receive (the ring's buffer, valid
 * during the call only), NULL when the receive went into c_in. */
void kg_conn_on_client_recv(struct kg_conn *c, int res, const unsigned char *data);
void kg_conn_on_client_send(struct kg_conn *c, int res);
void kg_conn_close(struct kg_conn *c, const char *reason);
/* kg_conn_close with the reason "<what>: <strerror(err)>"; err is a
 * positive errno, 0 for a call that made no progress. */
void kg_conn_close_err(struct kg_conn *c, const char *what, int err);
/* kg_conn_close, but both peers get a reset instead of a FIN: for a
 * connection given up while bytes were still on their way, so that the
 * early end does not look like a clean one. */
void kg_conn_reset(struct kg_conn *c, const char *reason);
/* Frees the connection if nothing is in flight. Returns true if freed. */
bool kg_conn_release_if_idle(struct kg_conn *c);
/* Acts on a deadline that passed (handshake, idle, or the forwarder's):
 * closes c, or returns when the next one is due (0 once c is closing). */
uint64_t kg_conn_check_deadline(struct kg_conn *c);
/* c's timer fired: deadlines, and the memory BIOs' trim once idle. Returns
 * when to look again (0 once c is closing). Nothing calls it between, so
 * an idle connection costs nothing until then. */
uint64_t kg_conn_on_timer(struct kg_conn *c);
/* c must be looked at no later than at: moves its timer earlier when it
 * is set later (a deadline that moves later needs no call: the timer
 * finds it when it fires). */
void kg_conn_timer_at(struct kg_conn *c, uint64_t at);
void kg_conn_arm_client_recv(struct kg_conn *c);
void kg_conn_flush_client(struct kg_conn *c);
/* Pushes the idle deadline to now + the listener's idle timeout (bytes
 * moved). */
void kg_conn_touch(struct kg_conn *c);
/* Hands n bytes of ciphertext from the client to OpenSSL. 0, or -ENOMEM
 * after closing c. */
int kg_conn_feed_openssl(struct kg_conn *c, const unsigned char *p, size_t n);
/* Moves c_in's unconsumed bytes to its start. */
void kg_conn_compact_c_in(struct kg_conn *c);
/* The kernel owns the client's record layer now (handoff.h): OpenSSL, the
 * handoff's tracking and the TLS buffers go; the session stays resumable. */
void kg_conn_drop_tls(struct kg_conn *c);
/* A new BIO for OpenSSL's outgoing records: they go straight into c's send
 * span (c_out, a pool buffer), copied once between OpenSSL and the socket
 * rather than twice through a memory BIO; what does not fit behind the
 * bytes already there waits in a "spill" memory BIO that exists only then,
 * and bytes never overtake each other. NULL when out of memory. The SSL it
 * is given to owns it; c outlives it. */
BIO *kg_client_bio_new(struct kg_conn *c);
/* Appends len bytes to the connection's outgoing queue (c_out, then the
 * spill BIO), as the BIO does for OpenSSL's records; on a kTLS socket the
 * https listener queues plaintext here and the kernel encrypts it when
 * kg_conn_flush_client sends. 0, or -ENOMEM (-EMSGSIZE past INT_MAX). */
int kg_client_out_write(struct kg_conn *c, const void *data, size_t len);
/* The caller is about to queue about n bytes for the client (one
 * SSL_write's plaintext, or plaintext on kTLS). When they are more than a
 * record and nothing is queued or in flight, the send span becomes a batch
 * buffer (bufpool.h) so that they leave in one send; it goes back to the
 * pool once sent, like the pool buffer. Without memory for one, the pool
 * buffer and the spill carry them as before. */
void kg_client_out_expect(struct kg_conn *c, size_t n);
/* Bytes OpenSSL wrote that wait in the spill BIO (not yet in c_out). */
size_t kg_client_spill_pending(const struct kg_conn *c);
/* One readiness poll on fd (one of the connection's sockets), completing
 * as op; no-op while *armed. */
void kg_conn_arm_poll(struct kg_conn *c, int fd, unsigned mask, int op, bool *armed);
/* Connects to the next member (backend.h), or ends the connection when
 * none is left. */
void kg_conn_connect_backend(struct kg_conn *c);
/* Connects c to member m (backend.h) with the listener's connect timeout
 * linked; the completion comes as op. 0, or -errno when no socket could be
 * made. */
int kg_conn_submit_connect(struct kg_conn *c, int m, int op);
/* The connect to c->member failed with res: counted, logged, a passive
 * health failure, the member marked tried, c->bfd closed. */
void kg_conn_connect_failed(struct kg_conn *c, int res);
/* The same two for a forwarder that keeps several backend sockets of its
 * own (one per HTTP/2 stream), with its own group and walk for each:
 * kg_conn_submit_connect_to returns the new socket (the completion comes
 * as op with it in user_data) or -errno, and leaves c->bfd and c->member
 * alone; kg_conn_connect_failed_to closes fd. */
int kg_conn_submit_connect_to(struct kg_conn *c, const struct kg_group_rt *g,
			      struct kg_backend_walk *walk, int m, int op);
void kg_conn_connect_failed_to(struct kg_conn *c, const struct kg_group_rt *g,
			       struct kg_backend_walk *walk, int m, int fd, int res);
/* KG_OP_BACKEND_CONNECT completed with res. */
void kg_conn_on_backend_connect(struct kg_conn *c, int res);
/* c forwards to a member that must leave (disabled, or unhealthy under
 * cut_on_unhealthy) as the listener's published snapshot says (NULL: c's
 * own): closes c, counts it, returns true. kg_conn_cut_now takes the
 * published snapshot itself. */
bool kg_conn_cut_if_needed(struct kg_conn *c, const struct kg_listener_rt *published);
bool kg_conn_cut_now(struct kg_conn *c);
/* For forwarders that hold a member per stream (fwd.h cut): whether what
 * goes to member m of group g (as c's own snapshot knows them) must leave,
 * as the published snapshot says (NULL: c's own); 0 (none),
 * KG_CUT_UNHEALTHY or KG_CUT_DISABLED (health.h enum kg_health_cut),
 * counted in cut_unhealthy / cut_disabled when not none. */
int kg_conn_member_cut(struct kg_conn *c, const struct kg_group_rt *g, int m,
		       const struct kg_listener_rt *published);
/* The backend is connected (or, on https, the handshake is done): start
 * the listener's path, through a kTLS handoff where the plan has one. */
void kg_conn_start_forwarding(struct kg_conn *c);
/* Forwarding on path from now: its forwarder takes c and early (fwd.h
 * start). A path that declines hands over to its fallback. 0, or -errno after
 * closing c. Then kg_conn_run_path starts the bytes moving. */
int kg_conn_begin_path(struct kg_conn *c, enum kg_path path, const void *early,
		       size_t early_len);
void kg_conn_run_path(struct kg_conn *c);

#endif
