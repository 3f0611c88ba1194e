/* Paths B and P (splice) and the plain copy loop: bytes move socket →
 * pipe → socket with splice(2), or socket → buffer → socket with
 * recv/send, driven by io_uring readiness polls. Readiness plus a
 * non-blocking splice measured no slower than IORING_OP_SPLICE, which
 * runs in io-wq worker threads; and it needs no extra threads.
 *
 * Memory per connection is bounded by one pipe (or buffer) per direction:
 * a direction reads from its source only while its pipe has room, so a
 * reader that stalls stops the writer through TCP's own window.
 *
 * On path B the client socket has kTLS: a record that is not application
 * data makes splice fail with EINVAL and stays queued; it is read with
 * recvmsg (record type in a cmsg). close_notify ends the direction like a
 * FIN; any other alert, and a TLS 1.3 KeyUpdate (this loop does not
 * re-key the kernel), close the connection without corrupting the stream.
 * kTLS sends no close_notify by itself: it is sent before our FIN. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "ktls.h"

#define HOP_PIPE_SIZE (64 * 1024)
#define HOP_BURST 16         /* fill/drain rounds per event, for fairness */
#define SPURIOUS_LIMIT 8     /* empty wake-ups in a row before backing off */
#define TLS_RT_ALERT 21
#define TLS_RT_HANDSHAKE 22

struct kg_hop {
	int src, dst;
	int pipe_r, pipe_w;   /* splice mode */
	unsigned char *buf;   /* copy mode */
	uint32_t off, queued; /* bytes in the pipe/buffer ([off, off+queued) in buf) */
	uint32_t cap;
	bool src_ktls, dst_ktls;
	bool src_eof;
	bool done;
	bool want_in, want_out;
	uint64_t *counter;
};

struct kg_splice {
	struct kg_hop c2b, b2c;
	bool copy;
	bool c_in_armed, c_out_armed, b_in_armed, b_out_armed;
	bool backoff_armed;
	unsigned spurious;
	struct __kernel_timespec backoff;
};

static void close_why(struct kg_conn *c, const char *what, int err)
{
	char why[96];
	snprintf(why, sizeof(why), "%s: %s", what, strerror(err));
	kg_conn_close(c, why);
}

static int hop_init(struct kg_hop *h, int src, int dst, bool copy, uint64_t *counter)
{
	memset(h, 0, sizeof(*h));
	h->src = src;
	h->dst = dst;
	h->pipe_r = h->pipe_w = -1;
	h->counter = counter;
	if (copy) {
		h->cap = KG_IO_BUF_SIZE;
		h->buf = malloc(h->cap);
		return h->buf ? 0 : -ENOMEM;
	}
	int p[2];
	if (pipe2(p, O_NONBLOCK | O_CLOEXEC) == -1)
		return -errno;
	h->pipe_r = p[0];
	h->pipe_w = p[1];
	int sz = fcntl(h->pipe_w, F_GETPIPE_SZ);
	h->cap = sz > 0 ? (uint32_t)sz : HOP_PIPE_SIZE;
	return 0;
}

static void hop_free(struct kg_hop *h)
{
	if (h->pipe_r >= 0)
		close(h->pipe_r);
	if (h->pipe_w >= 0)
		close(h->pipe_w);
	free(h->buf);
}

/* Source → pipe/buffer. >0 bytes, 0 end of stream, -errno. */
static ssize_t hop_fill(struct kg_hop *h)
{
	ssize_t n;
	if (h->buf) {
		if (h->queued == 0)
			h->off = 0;
		uint32_t tail = h->off + h->queued;
		n = recv(h->src, h->buf + tail, h->cap - tail, MSG_DONTWAIT);
	} else {
		n = splice(h->src, NULL, h->pipe_w, NULL, h->cap - h->queued,
			   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	}
	if (n < 0)
		return -errno;
	h->queued += (uint32_t)n;
	return n;
}

/* Pipe/buffer → destination. >0 bytes, -errno. */
static ssize_t hop_drain(struct kg_hop *h)
{
	ssize_t n;
	if (h->buf)
		n = send(h->dst, h->buf + h->off, h->queued, MSG_DONTWAIT | MSG_NOSIGNAL);
	else
		n = splice(h->pipe_r, NULL, h->dst, NULL, h->queued,
			   SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	if (n < 0)
		return -errno;
	h->queued -= (uint32_t)n;
	h->off += (uint32_t)n;
	*h->counter += (uint64_t)n;
	return n;
}

static bool would_block(ssize_t e)
{
	return e == -EAGAIN || e == -EWOULDBLOCK;
}

/* The kTLS source refused to splice: read the control record behind it.
 * Returns 1 to carry on, 0 for end of stream, -1 when the connection was
 * closed. */
static int hop_control_record(struct kg_conn *c, struct kg_hop *h)
{
	unsigned char type, rec[256];
	int n = kg_ktls_recv_control(h->src, &type, rec, sizeof(rec));
	if (n < 0) {
		if (would_block(n))
			return 1;
		close_why(c, "client kTLS record", -n);
		return -1;
	}
	if (type == TLS_RT_ALERT && n >= 2 && rec[1] == 0)
		return 0; /* close_notify */
	if (type == TLS_RT_ALERT) {
		char why[64];
		snprintf(why, sizeof(why), "client sent TLS alert %u", n >= 2 ? rec[1] : 0);
		kg_conn_close(c, why);
		return -1;
	}
	if (type == TLS_RT_HANDSHAKE && n >= 1 && rec[0] == 24) {
		kg_worker_warn(c->worker, "ktls.key_update", KV("listener", c->listener->conf->name),
			       KV("reason", "client sent a TLS 1.3 KeyUpdate; "
					    "kernel re-keying is not used"),
			       KV("action", "close"));
		kg_ktls_send_close_notify(h->src);
		kg_conn_close(c, "KeyUpdate on a kTLS connection");
		return -1;
	}
	if (type == 23) {
		/* Data after all: the EINVAL had another cause, and what
		 * recvmsg consumed cannot be put back. */
		kg_conn_close(c, "splice from kTLS socket: invalid argument");
		return -1;
	}
	char why[64];
	snprintf(why, sizeof(why), "unexpected TLS record type %u", type);
	kg_conn_close(c, why);
	return -1;
}

/* Ends a direction once everything before the end was delivered. Returns
 * false when it has to wait for room to send close_notify. */
static bool hop_finish(struct kg_hop *h)
{
	if (h->dst_ktls) {
		int r = kg_ktls_send_close_notify(h->dst);
		if (r == -EAGAIN || r == -EWOULDBLOCK)
			return false;
		/* Other errors: the peer is gone; the FIN below is moot too. */
	}
	shutdown(h->dst, SHUT_WR);
	h->done = true;
	return true;
}

/* Moves what it can without blocking. Returns true if bytes moved, false
 * otherwise; the connection may be closing afterwards. */
static bool hop_run(struct kg_conn *c, struct kg_hop *h)
{
	bool moved = false;
	h->want_in = h->want_out = false;
	if (h->done)
		return false;
	for (int round = 0; round < HOP_BURST; round++) {
		if (h->queued > 0) {
			ssize_t n = hop_drain(h);
			if (would_block(n)) {
				h->want_out = true;
				return moved;
			}
			if (n < 0) {
				close_why(c, h->dst == c->bfd ? "send to backend" : "send to client",
					  (int)-n);
				return moved;
			}
			moved = true;
			continue;
		}
		if (h->src_eof) {
			if (!hop_finish(h))
				h->want_out = true;
			return moved;
		}
		ssize_t n = hop_fill(h);
		if (n > 0) {
			moved = true;
			continue;
		}
		if (n == 0) {
			h->src_eof = true;
			continue;
		}
		if (would_block(n)) {
			if (h->queued > 0)
				continue;
			h->want_in = true;
			return moved;
		}
		if (n == -EINVAL && h->src_ktls) {
			int r = hop_control_record(c, h);
			if (r < 0)
				return moved;
			if (r == 0)
				h->src_eof = true;
			continue;
		}
		close_why(c, h->src == c->bfd ? "receive from backend" : "receive from client",
			  (int)-n);
		return moved;
	}
	/* Burst used up: come back through the poll, which fires at once. */
	if (h->src_eof && h->queued == 0) {
		if (!hop_finish(h))
			h->want_out = true;
		return moved;
	}
	h->want_in = !h->src_eof && h->queued == 0;
	h->want_out = h->queued > 0;
	return moved;
}

static void arm_poll(struct kg_conn *c, int fd, bool out, bool *armed)
{
	kg_conn_arm_poll(c, fd, out ? POLLOUT : POLLIN | POLLRDHUP,
			 out ? KG_OP_POLL_OUT : KG_OP_POLL_IN, armed);
}

static void arm_backoff(struct kg_conn *c)
{
	struct kg_splice *s = c->splice;
	if (s->backoff_armed)
		return;
	s->backoff.tv_sec = 0;
	s->backoff.tv_nsec = 1000000; /* 1 ms */
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_timeout(sqe, &s->backoff, 0, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_SPLICE_BACKOFF, c->idx, -1));
	s->backoff_armed = true;
	c->inflight++;
}

static void pump(struct kg_conn *c)
{
	struct kg_splice *s = c->splice;
	bool moved = hop_run(c, &s->c2b);
	if (c->state != KG_CONN_FORWARDING)
		return;
	moved |= hop_run(c, &s->b2c);
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (s->c2b.done && s->b2c.done) {
		kg_conn_close(c, "both directions finished");
		return;
	}
	if (moved) {
		s->spurious = 0;
		c->deadline_ms = c->worker->now_ms + c->listener->conf->idle_timeout_ms;
	} else if (++s->spurious > SPURIOUS_LIMIT) {
		/* Readiness without anything to move, again and again (seen
		 * with kTLS sockets holding a partial record): wait a little
		 * instead of spinning. */
		arm_backoff(c);
		return;
	}
	if (s->backoff_armed)
		return;
	if (s->c2b.want_in)
		arm_poll(c, c->cfd, false, &s->c_in_armed);
	if (s->b2c.want_out)
		arm_poll(c, c->cfd, true, &s->c_out_armed);
	if (s->b2c.want_in)
		arm_poll(c, c->bfd, false, &s->b_in_armed);
	if (s->c2b.want_out)
		arm_poll(c, c->bfd, true, &s->b_out_armed);
}

int kg_forward_splice_start(struct kg_conn *c, bool copy, bool client_ktls,
			    const void *head, size_t head_len, char *err, size_t errlen)
{
	struct kg_worker *w = c->worker;
	struct kg_splice *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	int r = hop_init(&s->c2b, c->cfd, c->bfd, copy, &w->stats.forwarded_c2b);
	if (r == 0)
		r = hop_init(&s->b2c, c->bfd, c->cfd, copy, &w->stats.forwarded_b2c);
	if (r < 0) {
		hop_free(&s->c2b);
		hop_free(&s->b2c);
		free(s);
		snprintf(err, errlen, "%s: %s", copy ? "buffer" : "pipe2", strerror(-r));
		return r;
	}
	s->copy = copy;
	s->c2b.src_ktls = client_ktls;
	s->b2c.dst_ktls = client_ktls;
	c->splice = s;

	/* Plaintext the client sent before the handoff, already decrypted
	 * in userspace, goes out first. The pipe is empty and larger. */
	if (head_len > 0) {
		struct kg_hop *h = &s->c2b;
		ssize_t n = -1;
		if (h->buf && head_len <= h->cap) {
			memcpy(h->buf, head, head_len);
			n = (ssize_t)head_len;
		} else if (!h->buf && head_len <= h->cap) {
			n = write(h->pipe_w, head, head_len);
		}
		if (n != (ssize_t)head_len) {
			snprintf(err, errlen, "cannot queue %zu bytes of early data", head_len);
			return -ENOBUFS; /* c->splice is freed with the connection */
		}
		h->queued = (uint32_t)head_len;
	}
	pump(c);
	return 0;
}

void kg_forward_splice_on_poll(struct kg_conn *c, int fd, bool out, int res)
{
	struct kg_splice *s = c->splice;
	c->inflight--;
	if (fd == c->cfd)
		*(out ? &s->c_out_armed : &s->c_in_armed) = false;
	else
		*(out ? &s->b_out_armed : &s->b_in_armed) = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res < 0 && res != -ECANCELED) {
		close_why(c, "poll", -res);
		return;
	}
	pump(c);
}

void kg_forward_splice_on_backoff(struct kg_conn *c)
{
	c->inflight--;
	c->splice->backoff_armed = false;
	c->splice->spurious = 0;
	if (c->state == KG_CONN_FORWARDING)
		pump(c);
}

void kg_forward_splice_free(struct kg_conn *c)
{
	if (!c->splice)
		return;
	hop_free(&c->splice->c2b);
	hop_free(&c->splice->b2c);
	free(c->splice);
	c->splice = NULL;
}
