/* One worker thread: its io_uring ring, its listening sockets, its
 * connections. Workers share nothing but the runtime (listeners' SSL_CTX,
 * balancers, the stop flag). Completions are routed without lookups: the
 * op, the connection index and the fd are packed into user_data. */
#ifndef KGATE_WORKER_H
#define KGATE_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include <liburing.h>
#include <pthread.h>
#include <semaphore.h>

#include <kgate/log.h>

#include "bufpool.h"
#include "client_io.h"
#include "heap_trim.h"
#include "ktls.h"
#include "paths.h"
#include "runtime.h"

enum kg_op {
	KG_OP_ACCEPT = 1,   /* idx = listener index */
	KG_OP_CLIENT_RECV,
	KG_OP_CLIENT_SEND,
	KG_OP_BACKEND_CONNECT,
	KG_OP_LINK_TIMEOUT, /* the connect's timeout */
	KG_OP_BACKEND_RECV,
	KG_OP_BACKEND_SEND,
	KG_OP_TICK,
	KG_OP_CANCEL,       /* completion of a cancel request: ignored */
	KG_OP_POLL_IN,      /* splice paths: a socket is readable */
	KG_OP_POLL_OUT,     /* splice paths: a socket is writable */
	KG_OP_SPLICE_BACKOFF,
	/* health.c's active checks; idx = the worker's check index */
	KG_OP_HEALTH_TIMER,
	KG_OP_HEALTH_CONNECT,
	KG_OP_HEALTH_SEND,
	KG_OP_HEALTH_RECV,
	KG_OP_HEALTH_LINK_TIMEOUT,
	KG_OP_WAKE,         /* the command eventfd became readable */
	KG_OP_SOCKMAP_RDHUP, /* sockmap path: a side's peer closed its write half */
	KG_OP_SOCKMAP_PACE,  /* the worker's sockmap pacing timer */
	/* forward_http.c: the backend connection of the current request */
	KG_OP_HTTP_CONNECT,
	KG_OP_HTTP_BACKEND_RECV,
	KG_OP_HTTP_BACKEND_SEND,
};

static inline uint64_t kg_ud_pack(enum kg_op op, uint32_t idx, int fd)
{
	return (uint64_t)op << 56 | (uint64_t)(idx & 0xffffff) << 32 |
	       (uint32_t)fd;
}
static inline enum kg_op kg_ud_op(uint64_t ud) { return (enum kg_op)(ud >> 56); }
static inline uint32_t kg_ud_idx(uint64_t ud) { return (ud >> 32) & 0xffffff; }
static inline int kg_ud_fd(uint64_t ud) { return (int)(uint32_t)ud; }

enum kg_conn_state {
	KG_CONN_HANDSHAKE,
	KG_CONN_CONNECTING,
	KG_CONN_HANDOFF,    /* backend connected, moving the client to kTLS */
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
	SSL *ssl;
	BIO *net_in;  /* ciphertext from the client, read by OpenSSL (owned by ssl) */
	BIO *net_out; /* client_bio.h: OpenSSL's records into c_out (owned by ssl) */
	BIO *out_spill; /* client_bio.h: records behind a full c_out; NULL when unused */
	uint64_t deadline_ms; /* handshake, then idle deadline */
	uint32_t inflight;    /* io_uring operations not yet completed */

	int member;          /* chosen backend, -1 before */
	bool member_counted; /* counted in the member's active connections */
	uint64_t tried;      /* members whose connect failed */
	unsigned connect_attempts;
	struct __kernel_timespec connect_timeout; /* read by the kernel at submit */

	enum kg_path path;   /* the path forwarding took, KG_PATH_NONE before */
	struct kg_ktls_track *ktls; /* while a kTLS handoff is possible */
	struct kg_splice *splice;   /* splice/copy paths */
	struct kg_smconn *sockmap;  /* sockmap path */
	struct kg_http_conn *http;  /* https listeners: per-request state (forward_http.c) */
	bool handoff_wait_flush;    /* handoff waits for OpenSSL's last records to be sent */
	uint32_t handoff_need;      /* handoff reads exactly the rest of a partial record */

	/* Buffers are held only while data is in flight (bufpool.h): receives
	 * on the userspace-tls path use the worker's provided-buffer ring, the
	 * two send spans borrow a pool buffer (data NULL when empty). Only a
	 * connection that may hand off to kTLS owns c_in, for its whole life:
	 * it reads the handshake record by record and keeps unfed bytes. */
	uint32_t c_in_cap;
	struct kg_span c_in;  /* recv from client (ciphertext); kTLS plan only */
	struct kg_span c_out; /* to send to client (ciphertext), pool buffer, written by net_out */
	struct kg_span b_out; /* plaintext from SSL_read to send to backend, pool buffer */
	uint32_t bio_grown;   /* bytes through net_in and out_spill since the last trim */

	bool c_recv_busy, c_send_busy, b_recv_busy, b_send_busy;
	bool client_eof;     /* client sent FIN (with or without close_notify) */
	bool c2b_done;       /* backend's write side shut */
	bool b2c_done;       /* client's write side shut after close_notify */
	bool backend_eof;
	bool close_after_flush; /* send what is queued (an alert), then close */
	char close_reason[96];
};

/* Listening-socket changes posted by the control thread (runtime.h):
 * commands go through a mutex-protected list and an eventfd whose read is
 * armed on the worker's ring, so a sleeping worker wakes at once. The
 * poster waits until every worker has acted on its command. */
enum kg_wcmd_op {
	KG_WCMD_LISTEN,   /* take fd and arm multishot accept on it */
	KG_WCMD_UNLISTEN, /* cancel accept, close the socket; connections stay */
	KG_WCMD_HEALTH,   /* rebuild the health checker from the published listeners */
	KG_WCMD_ADOPT,    /* another worker accepted fd on slot for this one
			   * (accept_balance.h); nobody waits: the worker frees it */
};

struct kg_wcmd_batch {
	pthread_mutex_t lock;
	pthread_cond_t done;
	unsigned pending;
};

struct kg_wcmd {
	enum kg_wcmd_op op;
	uint32_t slot;
	int fd;
	struct kg_wcmd_batch *batch;
	struct kg_wcmd *next;
};

/* What the worker's ring set-up got, for status and metrics: written by
 * the worker before init_done is posted, read-only afterwards. */
struct kg_ring_info {
	unsigned setup_flags; /* IORING_SETUP_* the ring was created with */
	unsigned features;    /* io_uring_params.features, as the kernel filled it */
	int fallback_err;     /* 0, or the -errno that refused SINGLE_ISSUER|DEFER_TASKRUN */
};

/* "SINGLE_ISSUER|DEFER_TASKRUN", or "none" for a plain ring. */
const char *kg_ring_setup_name(unsigned setup_flags);
/* The feature flags as "SINGLE_MMAP,NODROP,..." (bits this build has no
 * name for as "bit17"); cut at len. */
void kg_ring_features_format(unsigned features, char *out, size_t len);

struct kg_worker {
	unsigned id;
	pthread_t thread;
	struct io_uring ring;
	struct kg_runtime *rt;
	int listen_fds[KG_MAX_LISTENERS];  /* per listener slot, -1 when none */
	bool accept_armed[KG_MAX_LISTENERS];
	struct kg_wcmd *unlisten[KG_MAX_LISTENERS]; /* waiting for the accept's last CQE */
	pthread_mutex_t cmd_lock;
	struct kg_wcmd *cmds;  /* posted, not yet taken (guarded by cmd_lock) */
	int wake_fd;           /* eventfd */
	uint64_t wake_buf;     /* target of the armed eventfd read */
	struct kg_conn **conns; /* slot table, NULL when free */
	uint32_t *free_slots;   /* stack of free indices */
	uint32_t n_free;
	uint32_t capacity;
	/* Written by this worker, read by the others when they accept
	 * (accept_balance.h): connections in the slot table, and connections
	 * another worker handed over that this one has not adopted yet. */
	_Atomic uint32_t n_conns;
	_Atomic uint32_t incoming;
	uint32_t high_water;    /* slots [0, high_water) may be in use */
	uint64_t now_ms;
	struct __kernel_timespec tick_interval;
	int init_result;   /* 0 or -errno from ring set-up, read by main */
	struct kg_ring_info ring_info;
	sem_t init_done;
	bool draining;
	uint64_t drain_deadline_ms;
	struct kg_counters stats;
	uint32_t n_sockmap;         /* connections on the sockmap path */
	struct kg_heap_trim heap_trim; /* when to give freed heap back */
	bool sockmap_timer_armed;
	struct __kernel_timespec sockmap_pace;
	struct kg_bufpool bufs; /* I/O buffers lent to connections while data is in flight */
	struct kg_health_checker *health; /* this worker's share of the checks */
#define KG_WORKER_RETIRED_MAX 16
	struct kg_health_checker *retired[KG_WORKER_RETIRED_MAX]; /* stopped, completions due */
	size_t n_retired;
	struct kg_backend_pool *pool;     /* idle backend connections of https listeners */
	uint64_t log_window_ms; /* rate limit of per-connection warnings */
	unsigned log_in_window;
	unsigned log_suppressed;
};

/* Creates a worker without listening sockets; listeners arrive through
 * kg_workers_listen once it runs. NULL on failure. */
struct kg_worker *kg_worker_create(unsigned id, struct kg_runtime *rt);
int kg_worker_start(struct kg_worker *w);
void kg_worker_join(struct kg_worker *w);
void kg_worker_destroy(struct kg_worker *w);

/* Control thread only, workers running: hands fds[w] (one socket per
 * worker, ownership passes) to every worker of rt for slot, or makes every
 * worker close its socket of slot. Return when all workers have done it. */
void kg_workers_listen(struct kg_runtime *rt, uint32_t slot, int *fds);
void kg_workers_unlisten(struct kg_runtime *rt, uint32_t slot);
/* Every worker rebuilds its health checker from the listeners published
 * now (after snapshots changed). */
void kg_workers_recheck(struct kg_runtime *rt);

/* Helpers used by conn.c / forward_user.c / backend.c, all on the worker's
 * own thread. kg_worker_sqe never returns NULL: when the SQ ring is full it
 * submits first. */
struct io_uring_sqe *kg_worker_sqe(struct kg_worker *w);
uint64_t kg_now_ms(void);
/* Rate-limited warning for per-connection events (10 lines/s per worker):
 * kg_worker_warn(w, "event.id", KV(...), ...) like log_warn. The worker's
 * own key (worker=) is added by the caller when it matters. */
bool kg_worker_warn_allowed(struct kg_worker *w);
#define kg_worker_warn(w, ...)                                                 \
	do {                                                                   \
		if (KG_LOG_WARN <= kg_log_level && kg_worker_warn_allowed(w))  \
			kg_log_always(KG_LOG_WARN, __VA_ARGS__);               \
	} while (0)

/* An idle connection's memory BIOs are trimmed once no byte has moved
 * for this long (checked on the worker's 100 ms tick). */
#define KG_TRIM_IDLE_MS 100

/* conn.c */
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
void kg_conn_check_deadline(struct kg_conn *c);
void kg_conn_arm_client_recv(struct kg_conn *c);
void kg_conn_flush_client(struct kg_conn *c);
/* On the tick: an idle connection's memory BIOs, grown by a burst, are
 * replaced by empty ones (OpenSSL's memory BIOs never shrink). */
void kg_conn_trim_idle(struct kg_conn *c);

/* backend.c */
void kg_backend_connect_next(struct kg_conn *c);
void kg_backend_on_connect(struct kg_conn *c, int res);
/* A socket for member b in c->bfd, its connect submitted (completion op)
 * with the listener's connect timeout linked. 0, or -errno when no socket
 * could be made. */
int kg_backend_submit_connect(struct kg_conn *c, const struct kg_backend_conf *b,
			      enum kg_op op);
/* The connect to c->member failed with res: counted, logged, a passive
 * health failure, the member marked tried, c->bfd closed. */
void kg_backend_connect_failed(struct kg_conn *c, int res);

/* conn.c: one readiness poll on fd (one of the connection's sockets),
 * completing as op; no-op while *armed. */
void kg_conn_arm_poll(struct kg_conn *c, int fd, unsigned mask, enum kg_op op, bool *armed);
/* conn.c: the backend is connected; start the listener's path. */
void kg_conn_start_forwarding(struct kg_conn *c);

/* forward_splice.c: the ktls-splice and splice paths, and the plain copy
 * loop (userspace-copy). head is plaintext to send to the backend first
 * (decrypted before a kTLS handoff). 0, or -errno with err filled: the
 * caller closes. */
int kg_forward_splice_start(struct kg_conn *c, bool copy, bool client_ktls,
			    const void *head, size_t head_len, char *err, size_t errlen);
void kg_forward_splice_on_poll(struct kg_conn *c, int fd, bool out, int res);
void kg_forward_splice_on_backoff(struct kg_conn *c);
void kg_forward_splice_free(struct kg_conn *c);

/* forward_sockmap.c: the sockmap path. start returns false
 * when the pair could not be added and the caller should splice instead. */
bool kg_forward_sockmap_start(struct kg_conn *c);
void kg_forward_sockmap_on_poll(struct kg_conn *c, enum kg_op op, int fd, int res);
void kg_forward_sockmap_pace_all(struct kg_worker *w);
void kg_forward_sockmap_free(struct kg_conn *c);

/* forward_user.c: userspace-tls, OpenSSL in userspace */
void kg_forward_user_start(struct kg_conn *c);
void kg_forward_user_on_client_data(struct kg_conn *c);
void kg_forward_user_on_backend_recv(struct kg_conn *c, int res, const unsigned char *data);
void kg_forward_user_on_backend_send(struct kg_conn *c, int res);
void kg_forward_user_on_client_drained(struct kg_conn *c);

/* forward_http.c: https listeners, per-request forwarding over userspace
 * TLS or kTLS (io, client_io.h). start takes what it needs from c->ssl
 * (identity, subject) and early (plaintext the client sent before
 * forwarding started), without any I/O: 0, or -ENOMEM (the caller
 * closes). run starts the engine once the caller's hands are off. */
int kg_forward_http_start(struct kg_conn *c, const struct kg_client_io *io, const void *early,
			  size_t early_len);
void kg_forward_http_run(struct kg_conn *c);
/* kTLS: a readiness poll (spliced bodies, heads, close_notify) or the
 * splice backoff completed. */
void kg_forward_http_on_poll(struct kg_conn *c, int fd, bool out, int res);
void kg_forward_http_on_backoff(struct kg_conn *c);
void kg_forward_http_on_client_data(struct kg_conn *c);
void kg_forward_http_on_client_drained(struct kg_conn *c);
void kg_forward_http_on_connect(struct kg_conn *c, int res);
void kg_forward_http_on_backend_recv(struct kg_conn *c, int res);
void kg_forward_http_on_backend_send(struct kg_conn *c, int res);
/* Deadlines (request, keep-alive, response): called on the worker's tick. */
void kg_forward_http_check_deadline(struct kg_conn *c);
/* kg_conn_close is closing c: cancel what only this module knows about. */
void kg_forward_http_on_close(struct kg_conn *c);
void kg_forward_http_free(struct kg_conn *c);

#endif
