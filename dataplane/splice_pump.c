/* See splice_pump.h. Runs on the connection's worker thread only. */
#include "splice_pump.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/limits.h>

#include "client_io.h"
#include "ktls.h"
#include "conn.h"
#include "worker.h"

#define HOP_PIPE_SIZE (64 * 1024)
#define HOP_BURST 16         /* fill/drain rounds per event, for fairness */
#define SPURIOUS_LIMIT 8     /* empty wake-ups in a row before backing off */
#define TLS_RT_APPDATA 23

int kg_hop_init(struct kg_hop *h, bool copy, atomic_uint_fast64_t *counter)
{
	memset(h, 0, sizeof(*h));
	h->src = h->dst = -1;
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

void kg_hop_start(struct kg_hop *h, int src, int dst, uint64_t left)
{
	h->src = src;
	h->dst = dst;
	h->left = left;
	h->src_eof = h->short_eof = h->done = false;
	h->want_in = h->want_out = false;
}

int kg_hop_preload(struct kg_hop *h, const void *p, size_t n)
{
	ssize_t w = -1;
	if (h->queued != 0 || n > h->cap)
		return -ENOBUFS;
	if (h->buf) {
		memcpy(h->buf, p, n);
		w = (ssize_t)n;
	} else {
		w = write(h->pipe_w, p, n);
	}
	if (w != (ssize_t)n)
		return -ENOBUFS;
	h->off = 0;
	h->queued = (uint32_t)n;
	return 0;
}

void kg_hop_free(struct kg_hop *h)
{
	if (h->pipe_r >= 0)
		close(h->pipe_r);
	if (h->pipe_w >= 0)
		close(h->pipe_w);
	h->pipe_r = h->pipe_w = -1;
	free(h->buf);
	h->buf = NULL;
}

/* Source → pipe/buffer, never past `left`. >0 bytes, 0 end of stream,
 * -errno. */
static ssize_t hop_fill(struct kg_hop *h)
{
	ssize_t n;
	size_t room;
	if (h->buf) {
		if (h->queued == 0)
			h->off = 0;
		uint32_t tail = h->off + h->queued;
		room = h->cap - tail;
		if (room > h->left)
			room = (size_t)h->left;
		n = recv(h->src, h->buf + tail, room, MSG_DONTWAIT);
	} else {
		room = h->cap - h->queued;
		if (room > h->left)
			room = (size_t)h->left;
		n = splice(h->src, NULL, h->pipe_w, NULL, room, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
	}
	if (n < 0)
		return -errno;
	h->queued += (uint32_t)n;
	if (h->left != KG_HOP_UNBOUNDED)
		h->left -= (uint64_t)n;
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
	kg_count_add(h->counter, (uint64_t)n);
	return n;
}

static bool would_block(ssize_t e)
{
	return e == -EAGAIN || e == -EWOULDBLOCK;
}

/* The kTLS source refused to splice: read the record behind it. Returns 1
 * to carry on, 0 for end of stream, -1 when the connection was closed. */
static int hop_control_record(struct kg_conn *c, struct kg_hop *h)
{
	unsigned char type, rec[256];
	int n = kg_ktls_recv_record(h->src, &type, rec, sizeof(rec));
	if (n < 0) {
		if (would_block(n))
			return 1;
		kg_conn_close_err(c, "client kTLS record", -n);
		return -1;
	}
	if (type == TLS_RT_APPDATA) {
		/* Data after all: the EINVAL had another cause, and what
		 * recvmsg consumed cannot be put back. */
		kg_conn_close(c, "splice from kTLS socket: invalid argument");
		return -1;
	}
	return kg_client_ktls_control(c, type, rec, (size_t)n) == 0 ? 0 : -1;
}

/* Ends a direction once everything before the end was delivered. Returns
 * false when it has to wait for room to send close_notify. A bounded hop
 * ends without touching the sockets: the streams go on. */
static bool hop_finish(struct kg_hop *h)
{
	if (h->left != KG_HOP_UNBOUNDED) {
		h->short_eof = h->left > 0;
		h->done = true;
		return true;
	}
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
	if (!kg_hop_active(h))
		return false;
	for (int round = 0; round < HOP_BURST; round++) {
		if (h->queued > 0) {
			ssize_t n = hop_drain(h);
			if (would_block(n)) {
				h->want_out = true;
				return moved;
			}
			if (n < 0) {
				kg_conn_close_err(c,
						  h->dst == c->bfd ? "send to backend" : "send to client",
						  (int)-n);
				return moved;
			}
			moved = true;
			continue;
		}
		if (h->left == 0)
			h->src_eof = true;
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
		kg_conn_close_err(c,
				  h->src == c->bfd ? "receive from backend" : "receive from client",
				  (int)-n);
		return moved;
	}
	/* Burst used up: come back through the poll, which fires at once. */
	if ((h->src_eof || h->left == 0) && h->queued == 0) {
		h->src_eof = true;
		if (!hop_finish(h))
			h->want_out = true;
		return moved;
	}
	h->want_in = !h->src_eof && h->queued == 0;
	h->want_out = h->queued > 0;
	return moved;
}

void kg_pump_clear(struct kg_pump *p)
{
	memset(p, 0, sizeof(*p));
	p->c2b.src = p->c2b.dst = p->c2b.pipe_r = p->c2b.pipe_w = -1;
	p->b2c.src = p->b2c.dst = p->b2c.pipe_r = p->b2c.pipe_w = -1;
}

bool kg_pump_move(struct kg_conn *c, struct kg_pump *p)
{
	bool moved = hop_run(c, &p->c2b);
	if (c->state != KG_CONN_FORWARDING)
		return moved;
	moved |= hop_run(c, &p->b2c);
	if (moved)
		p->spurious = 0;
	return moved;
}

void kg_pump_poll(struct kg_conn *c, struct kg_pump *p, int fd, bool out)
{
	bool *armed = fd == c->cfd ? (out ? &p->c_out_armed : &p->c_in_armed)
				   : (out ? &p->b_out_armed : &p->b_in_armed);
	kg_conn_arm_poll(c, fd, out ? POLLOUT : POLLIN | POLLRDHUP,
			 out ? KG_OP_POLL_OUT : KG_OP_POLL_IN, armed);
}

static void arm_backoff(struct kg_conn *c, struct kg_pump *p)
{
	if (p->backoff_armed)
		return;
	p->backoff.tv_sec = 0;
	p->backoff.tv_nsec = 1000000; /* 1 ms */
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_timeout(sqe, &p->backoff, 0, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_SPLICE_BACKOFF, c->idx, -1));
	p->backoff_armed = true;
	c->inflight++;
}

void kg_pump_wait(struct kg_conn *c, struct kg_pump *p, bool moved)
{
	if (!moved && ++p->spurious > SPURIOUS_LIMIT) {
		/* Readiness without anything to move, again and again (seen
		 * with kTLS sockets holding a partial record): wait a little
		 * instead of spinning. */
		arm_backoff(c, p);
		return;
	}
	if (p->backoff_armed)
		return;
	if (p->c2b.want_in)
		kg_pump_poll(c, p, p->c2b.src, false);
	if (p->c2b.want_out)
		kg_pump_poll(c, p, p->c2b.dst, true);
	if (p->b2c.want_in)
		kg_pump_poll(c, p, p->b2c.src, false);
	if (p->b2c.want_out)
		kg_pump_poll(c, p, p->b2c.dst, true);
}

void kg_pump_wait_client_in(struct kg_conn *c, struct kg_pump *p)
{
	if (++p->spurious > SPURIOUS_LIMIT) {
		arm_backoff(c, p);
		return;
	}
	if (!p->backoff_armed)
		kg_pump_poll(c, p, c->cfd, false);
}

bool kg_pump_on_poll(struct kg_conn *c, struct kg_pump *p, int fd, bool out, int res)
{
	c->inflight--;
	if (fd == c->cfd)
		*(out ? &p->c_out_armed : &p->c_in_armed) = false;
	else
		*(out ? &p->b_out_armed : &p->b_in_armed) = false;
	if (c->state != KG_CONN_FORWARDING)
		return false;
	if (res < 0 && res != -ECANCELED) {
		kg_conn_close_err(c, "poll", -res);
		return false;
	}
	return true;
}

bool kg_pump_on_backoff(struct kg_conn *c, struct kg_pump *p)
{
	c->inflight--;
	p->backoff_armed = false;
	p->spurious = 0;
	return c->state == KG_CONN_FORWARDING;
}
