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
#include "clock.h"
#include "counters.h"
#include "heap_trim.h"
#include "runtime.h"
#include "timer_wheel.h"

struct kg_conn;

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
	KG_OP_POLL_IN,      /* forwarders: a socket is readable */
	KG_OP_POLL_OUT,     /* forwarders: a socket is writable */
	KG_OP_SPLICE_BACKOFF,
	/* health.c's active checks; idx = the worker's check index */
	KG_OP_HEALTH_TIMER,
	KG_OP_HEALTH_CONNECT,
	KG_OP_HEALTH_SEND,
	KG_OP_HEALTH_RECV,
	KG_OP_HEALTH_LINK_TIMEOUT,
	KG_OP_WAKE,         /* the command eventfd became readable */
	KG_OP_SOCKMAP_RDHUP, /* sockmap path: a side's peer closed its write half */
	KG_OP_FWD_TIMER,     /* a forwarder's worker-wide timer; idx = its path (fwd.h) */
	/* forward_http.c: the backend connection of the current request */
	KG_OP_HTTP_CONNECT,
	KG_OP_HTTP_BACKEND_RECV,
	KG_OP_HTTP_BACKEND_SEND,
	/* ocsp.c: a responder query; idx = the query's slot; in the order
	 * of enum kg_ocsp_op (ocsp.h) */
	KG_OP_OCSP_CONNECT,
	KG_OP_OCSP_SEND,
	KG_OP_OCSP_RECV,
	KG_OP_OCSP_LINK_TIMEOUT,
	/* a forwarder's worker-wide connections (fwd.h on_worker_cqe;
	 * forward_h2.c's HTTP/2 backend connections); idx = kg_fwd_ud_idx */
	KG_OP_FWD_CONNECT,
	KG_OP_FWD_LINK_TIMEOUT,
	KG_OP_FWD_RECV,
	KG_OP_FWD_SEND,
};

static inline uint64_t kg_ud_pack(enum kg_op op, uint32_t idx, int fd)
{
	return (uint64_t)op << 56 | (uint64_t)(idx & 0xffffff) << 32 |
	       (uint32_t)fd;
}
static inline enum kg_op kg_ud_op(uint64_t ud) { return (enum kg_op)(ud >> 56); }
static inline uint32_t kg_ud_idx(uint64_t ud) { return (ud >> 32) & 0xffffff; }
static inline int kg_ud_fd(uint64_t ud) { return (int)(uint32_t)ud; }

/* Listening-socket changes posted by the control thread (runtime.h):
 * commands go through a mutex-protected list and an eventfd whose read is
 * armed on the worker's ring, so a sleeping worker wakes at once. The
 * poster waits until every worker has acted on its command. */
enum kg_wcmd_op {
	KG_WCMD_LISTEN,   /* take fd and arm multishot accept on it */
	KG_WCMD_UNLISTEN, /* cancel accept, close the socket; connections stay */
	KG_WCMD_HEALTH,   /* rebuild the health checker from the published listeners */
	KG_WCMD_ACCEPT,   /* arm accept on every socket held (rt->accept_held cleared) */
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
	/* KGATED_POLL_WAIT (kgated(8) ENVIRONMENT): an eventfd registered
	 * on the ring that the worker waits on with poll(2); -1 when unset. */
	int poll_fd;
	struct kg_conn **conns; /* slot table, NULL when free */
	uint32_t *free_slots;   /* stack of free indices */
	uint32_t n_free;
	uint32_t capacity;
	/* Written by this worker, read by the others when they accept
	 * (accept_balance.h): connections in the slot table, and connections
	 * another worker handed over that this one has not adopted yet. */
	_Atomic uint32_t n_conns;
	_Atomic uint32_t incoming;
	/* Under BPF steering (steer.h): this worker's cells of the mapped
	 * load array, NULL otherwise. conns mirrors n_conns; pending is the
	 * program's count of connections sent here and not accepted yet. */
	uint32_t *steer_conns;
	int32_t *steer_pending;
	uint64_t steer_resync_ms;
	uint32_t high_water;    /* slots [0, high_water) may be in use (drain and cut scans) */
	struct kg_wheel timers; /* connections' deadlines (timer_wheel.h) */
	/* Per listener slot: the snapshot (its serial) and its health group's
	 * cut generation the last cut scan saw (kg_health_cut_gen). */
	uint64_t cut_snap[KG_MAX_LISTENERS];
	unsigned cut_gen[KG_MAX_LISTENERS];
	uint64_t now_ms;
	struct __kernel_timespec tick_at; /* the next tick, absolute (read at submit) */
	int init_result;   /* 0 or -errno from ring set-up, read by main */
	bool ring_open;    /* ring created (kg_worker_ring_create), not yet exited */
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
	void *service; /* the worker service's state (its share of the health checks) */
	struct kg_backend_pool *pool;     /* idle backend connections of https listeners */
	struct kg_h2b *h2b;               /* forward_h2.c's backend connections, its own */
	struct kg_ocsp *ocsp;   /* OCSP queries and answers of client certificates (ocsp.h) */
	uint64_t log_window_ms; /* rate limit of per-connection warnings */
	unsigned log_in_window;
	unsigned log_suppressed;
};

/* Work besides connections on every worker's ring, told apart by its ops
 * (KG_OP_HEALTH_*): the active health checks (health_check.h). main
 * registers it before the first worker is created; the worker knows it by
 * this table only. Every member but create runs on the worker thread. */
struct kg_worker_service {
	const char *name;
	/* The worker's state, or NULL when out of memory. */
	void *(*create)(struct kg_worker *w);
	/* The ring is ready: arm the first operations. */
	void (*start)(void *state);
	void (*on_cqe)(void *state, enum kg_op op, uint32_t idx, int res);
	void (*on_tick)(void *state, uint64_t now_ms);
	/* The published listeners changed (kg_workers_recheck). */
	void (*on_listeners_changed)(void *state);
	/* Draining: nothing new starts; completions still arrive. */
	void (*stop)(void *state);
	/* Nothing in flight: the worker may exit. */
	bool (*idle)(const void *state);
	/* Tolerates NULL and a state that never started. */
	void (*destroy)(void *state);
};
void kg_worker_set_service(const struct kg_worker_service *svc);

/* Creates a worker without listening sockets; listeners arrive through
 * kg_workers_listen once it runs. NULL on failure. */
struct kg_worker *kg_worker_create(unsigned id, struct kg_runtime *rt);
/* Creates w's io_uring ring, disabled, on the calling (main) thread; 0 or
 * -errno. Called before privileges are dropped: a ring created while
 * kgated still holds CAP_IPC_LOCK is not charged to the user's locked
 * memory (RLIMIT_MEMLOCK, shared by all the user's processes). The worker
 * thread enables it (kg_worker_start) and so becomes its single issuer. */
int kg_worker_ring_create(struct kg_worker *w);
/* Starts the thread of a worker whose ring exists; 0 or -errno. */
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
/* Clears rt->accept_held and has every worker accept on what it holds;
 * returns once all have armed. */
void kg_workers_accept(struct kg_runtime *rt);

/* Helpers for whatever runs on the worker's own thread (connections,
 * forwarders, health checks). kg_worker_sqe never returns NULL: when the SQ ring is full it
 * submits first. */
struct io_uring_sqe *kg_worker_sqe(struct kg_worker *w);
/* Two SQEs in a row, for an operation and the timeout linked to it
 * (IOSQE_IO_LINK on *op, io_uring_prep_link_timeout on *timeout): both
 * reach the kernel together, so the timeout is always armed. */
void kg_worker_sqe_timed(struct kg_worker *w, struct io_uring_sqe **op,
			 struct io_uring_sqe **timeout);
/* Rate-limited warning for per-connection events (10 lines/s per worker):
 * kg_worker_warn(w, "event.id", KV(...), ...) like log_warn. The worker's
 * own key (worker=) is added by the caller when it matters. */
bool kg_worker_warn_allowed(struct kg_worker *w);
#define kg_worker_warn(w, ...)                                                 \
	do {                                                                   \
		if (KG_LOG_WARN <= kg_log_level && kg_worker_warn_allowed(w))  \
			kg_log_always(KG_LOG_WARN, __VA_ARGS__);               \
	} while (0)

/* Call after n_conns changed: the steering program reads the copy (a plain
 * store into mapped memory, no syscall). */
static inline void kg_worker_conns_changed(struct kg_worker *w)
{
	if (w->steer_conns)
		__atomic_store_n(w->steer_conns,
				 atomic_load_explicit(&w->n_conns, memory_order_relaxed),
				 __ATOMIC_RELAXED);
}
#endif
