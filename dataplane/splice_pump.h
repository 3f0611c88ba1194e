/* Moving bytes between a connection's two sockets without userspace
 * touching them: socket → pipe → socket with splice(2) (or socket →
 * buffer → socket with recv/send in copy mode), non-blocking, driven by
 * io_uring readiness polls. Readiness plus a non-blocking splice measured
 * no slower than IORING_OP_SPLICE, which runs in io-wq worker threads;
 * and it needs no extra threads.
 *
 * A hop is one direction. It moves a whole stream (the splice/copy paths,
 * forward_splice.c: at the source's end it sends close_notify on a kTLS
 * destination and shuts the destination's write side), or exactly `left`
 * bytes of a longer stream (the https listener on kTLS, forward_http.c: a
 * Content-Length body; the streams go on afterwards). Memory is bounded by
 * one pipe (or buffer) per hop: a hop reads from its source only while
 * the pipe has room, so a stalled reader stops the writer through TCP's
 * own window.
 *
 * On a kTLS source a record that is not application data makes splice
 * fail with EINVAL and stays queued: it is read with recvmsg and handled
 * by kg_client_ktls_control (client_io.h). A pump holds the two hops of
 * a connection and the readiness polls armed for them. */
#ifndef KGATE_SPLICE_PUMP_H
#define KGATE_SPLICE_PUMP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <linux/time_types.h>

#include "counters.h"

struct kg_conn;

#define KG_HOP_UNBOUNDED UINT64_MAX

struct kg_hop {
	int src, dst;         /* -1 while the hop is not started */
	int pipe_r, pipe_w;   /* splice mode */
	unsigned char *buf;   /* copy mode */
	uint32_t off, queued; /* bytes in the pipe/buffer ([off, off+queued) in buf) */
	uint32_t cap;
	uint64_t left;        /* bytes the source may still give, or KG_HOP_UNBOUNDED */
	bool src_ktls, dst_ktls;
	bool src_eof;         /* the source ended, or gave its `left` bytes */
	bool short_eof;       /* the source ended before `left` bytes came */
	bool done;            /* everything delivered (and, unbounded, the end sent) */
	bool want_in, want_out;
	atomic_uint_fast64_t *counter; /* bytes delivered to dst are added here (kg_count_add) */
};

struct kg_pump {
	struct kg_hop c2b, b2c;
	bool c_in_armed, c_out_armed, b_in_armed, b_out_armed;
	bool backoff_armed;
	unsigned spurious;
	struct __kernel_timespec backoff; /* read by the kernel at submit */
};

/* A pipe (or, copy, a buffer) for h, not started. 0 or -errno. */
int kg_hop_init(struct kg_hop *h, bool copy, atomic_uint_fast64_t *counter);
/* Starts h from src to dst for left bytes (KG_HOP_UNBOUNDED: to the
 * source's end). The pipe must be empty (h->queued == 0). */
void kg_hop_start(struct kg_hop *h, int src, int dst, uint64_t left);
/* Queues p ahead of what the source gives (plaintext decrypted before a
 * kTLS handoff). 0, or -ENOBUFS when it does not fit the empty pipe. */
int kg_hop_preload(struct kg_hop *h, const void *p, size_t n);
/* Tolerates a hop that was never initialised (zeroed, fds -1). */
void kg_hop_free(struct kg_hop *h);
/* Forgets the hop's endpoints; its pipe stays for the next start. */
static inline void kg_hop_stop(struct kg_hop *h)
{
	h->src = h->dst = -1;
	h->want_in = h->want_out = false;
}
static inline bool kg_hop_active(const struct kg_hop *h)
{
	return h->src >= 0 && !h->done;
}

/* Sets both hops' endpoints to -1 (nothing started, nothing allocated). */
void kg_pump_clear(struct kg_pump *p);
/* Runs the active hops: true when bytes moved. c may be closing after it. */
bool kg_pump_move(struct kg_conn *c, struct kg_pump *p);
/* After kg_pump_move: arms the readiness polls the hops wait for, or,
 * after many wake-ups
 * that moved nothing (seen with kTLS sockets holding a partial record),
 * a 1 ms backoff (KG_OP_SPLICE_BACKOFF) instead of spinning. */
void kg_pump_wait(struct kg_conn *c, struct kg_pump *p, bool moved);
/* The caller's own read of the client socket found nothing: poll it for
 * POLLIN again, or back off as kg_pump_wait does (a kTLS socket holding
 * a partial record polls readable while recvmsg has nothing to give). */
void kg_pump_wait_client_in(struct kg_conn *c, struct kg_pump *p);
/* Arms one readiness poll on one of c's sockets (fd is c->cfd or c->bfd),
 * unless already armed. */
void kg_pump_poll(struct kg_conn *c, struct kg_pump *p, int fd, bool out);
/* A poll on fd completed with res: counts it off c's in-flight operations
 * and clears its armed flag; a poll error closes c. True when the caller
 * goes on moving bytes (c forwarding, no error). */
bool kg_pump_on_poll(struct kg_conn *c, struct kg_pump *p, int fd, bool out, int res);
/* The backoff timer completed: counted off c's in-flight operations. True
 * when c is still forwarding. */
bool kg_pump_on_backoff(struct kg_conn *c, struct kg_pump *p);

#endif
