/* Path userspace-tls: OpenSSL decrypts what the client sends and
 * encrypts what the backend answers; io_uring moves the bytes. Each
 * direction holds at most one buffer of plaintext plus its records, and
 * re-arms its receive only when that has been sent: back-pressure with
 * bounded memory. Backend → client: once a receive filled its buffer
 * (the backend has more ready), the next takes up to a batch (64 KiB, from
 * the worker's batch ring) and its four records leave in one send
 * (bufpool.h), where a record per receive and send made the kernel's
 * per-call path cost more than the copies. Small exchanges keep to the
 * record ring, so the batch ring grows with bulk transfers only.
 *
 * Half-close: client close_notify or FIN → shutdown(backend, SHUT_WR) once
 * everything before it was sent; backend FIN → close_notify to the client,
 * then shutdown(client, SHUT_WR). Both directions done → close. */
#include "forward_user.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "conn.h"
#include "runtime.h"
#include "tls.h"
#include "worker.h"

/* What only this path keeps per connection (c->fwd_ctx). */
struct kg_user {
	struct kg_span b_out; /* plaintext from SSL_read to send to backend, pool buffer */
	bool b_recv_busy, b_send_busy;
	enum kg_ring b_ring; /* the ring of the next (or the pending) backend receive */
	bool backend_eof; /* the backend sent FIN */
	bool c2b_done;    /* backend's write side shut */
	bool b2c_done;    /* client's write side shut after close_notify */
};

static struct kg_user *user_of(const struct kg_conn *c)
{
	return c->fwd_ctx;
}

static void arm_backend_recv(struct kg_conn *c)
{
	struct kg_user *u = user_of(c);
	if (u->b_recv_busy || u->backend_eof || c->state != KG_CONN_FORWARDING)
		return;
	/* No buffer while waiting: the worker's ring lends one on arrival. */
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	kg_bufpool_prep_recv(sqe, c->bfd, u->b_ring);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_BACKEND_RECV, c->idx, c->bfd));
	u->b_recv_busy = true;
	c->inflight++;
}

static void send_backend(struct kg_conn *c)
{
	struct kg_user *u = user_of(c);
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_send(sqe, c->bfd, u->b_out.data + u->b_out.off,
			   u->b_out.len - u->b_out.off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_BACKEND_SEND, c->idx, c->bfd));
	u->b_send_busy = true;
	c->inflight++;
}

static void finish_direction_check(struct kg_conn *c)
{
	if (user_of(c)->c2b_done && user_of(c)->b2c_done)
		kg_conn_close(c, "both directions finished");
}

static void finish_c2b(struct kg_conn *c)
{
	struct kg_user *u = user_of(c);
	if (u->c2b_done)
		return;
	u->c2b_done = true;
	shutdown(c->bfd, SHUT_WR);
	finish_direction_check(c);
}

/* Client → backend: decrypt what OpenSSL has buffered, one buffer at a time. */
static void pump_c2b(struct kg_conn *c)
{
	char reason[256];
	struct kg_user *u = user_of(c);

	if (u->c2b_done || u->b_send_busy || c->state != KG_CONN_FORWARDING)
		return;
	if (u->b_out.off < u->b_out.len) {
		send_backend(c);
		return;
	}
	/* A pool buffer only while there is plaintext to send. */
	u->b_out.off = u->b_out.len = 0;
	if (!u->b_out.data && !(u->b_out.data = kg_buf_get(&c->worker->bufs))) {
		kg_conn_close(c, "out of memory for a send buffer");
		return;
	}
	int n = SSL_read(c->ssl, u->b_out.data, KG_IO_BUF_SIZE);
	if (n <= 0) {
		kg_buf_put(&c->worker->bufs, u->b_out.data);
		u->b_out.data = NULL;
	}
	if (n > 0) {
		u->b_out.off = 0;
		u->b_out.len = (uint32_t)n;
		kg_count_add(&c->worker->stats.forwarded_c2b, (uint64_t)n);
		send_backend(c);
		kg_conn_flush_client(c); /* SSL_read may have queued a reply */
		return;
	}
	enum kg_tls_status st = kg_tls_status(c->ssl, n, reason, sizeof(reason));
	kg_conn_flush_client(c);
	if (c->state != KG_CONN_FORWARDING)
		return;
	switch (st) {
	case KG_TLS_WANT_READ:
	case KG_TLS_WANT_WRITE:
		if (c->client_eof)
			finish_c2b(c); /* FIN without close_notify: end of stream all the same */
		else
			kg_conn_arm_client_recv(c);
		return;
	case KG_TLS_CLOSED:
		finish_c2b(c);
		return;
	case KG_TLS_OK:
	case KG_TLS_WANT_ASYNC: /* async mode ends with the handshake (ocsp.h) */
	case KG_TLS_ERROR:
		kg_worker_warn(c->worker, "tls.client_error",
			       KV("listener", c->listener->conf->name), KV("reason", reason));
		kg_conn_close(c, "TLS error");
		return;
	}
}

/* Early plaintext (decrypted before a kTLS handoff that fell back here)
 * goes to the backend first, in the send buffer. */
static int user_start(struct kg_conn *c, const void *early, size_t early_len, char *err,
		      size_t errlen)
{
	struct kg_user *u = calloc(1, sizeof(*u));
	if (!u) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	c->fwd_ctx = u;
	if (early_len == 0)
		return 0;
	if (early_len > KG_IO_BUF_SIZE || !(u->b_out.data = kg_buf_get(&c->worker->bufs))) {
		snprintf(err, errlen, "no room for %zu bytes of early data", early_len);
		return -ENOBUFS;
	}
	memcpy(u->b_out.data, early, early_len);
	u->b_out.len = (uint32_t)early_len;
	kg_count_add(&c->worker->stats.forwarded_c2b, early_len);
	return 0;
}

static void user_run(struct kg_conn *c)
{
	arm_backend_recv(c);
	/* The client may have sent application data in the same flight as
	 * its Finished message: it is already in net_in. */
	pump_c2b(c);
}

static void user_on_client_data(struct kg_conn *c)
{
	pump_c2b(c);
}

static void on_backend_send(struct kg_conn *c, int res)
{
	struct kg_user *u = user_of(c);
	c->inflight--;
	u->b_send_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res <= 0) {
		kg_conn_close_err(c, "backend send", -res);
		return;
	}
	u->b_out.off += (uint32_t)res;
	kg_conn_touch(c);
	pump_c2b(c);
}

static void on_backend_recv(struct kg_conn *c, int res, const unsigned char *data)
{
	char reason[256];
	struct kg_user *u = user_of(c);

	c->inflight--;
	u->b_recv_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res == -ENOBUFS) {
		/* Ring empty for now: it grows, and buffers return within
		 * this batch. A batch receive takes a record's buffer
		 * meanwhile rather than wait: more bulk connections than
		 * the batch ring's cap only lose the batching. */
		kg_bufpool_grow(&c->worker->bufs, u->b_ring);
		u->b_ring = KG_RING_RECORD;
		arm_backend_recv(c);
		return;
	}
	if (res > 0 && !data) {
		kg_conn_close(c, "backend recv completed without a buffer");
		return;
	}
	if (res < 0) {
		kg_conn_close_err(c, "backend recv", -res);
		return;
	}
	if (res == 0) {
		u->backend_eof = true;
		/* Queue close_notify; the client's write side is shut once
		 * it and everything before it has been sent. */
		SSL_shutdown(c->ssl);
		ERR_clear_error();
		kg_conn_flush_client(c);
		return;
	}
	kg_conn_touch(c);
	kg_count_add(&c->worker->stats.forwarded_b2c, (uint64_t)res);
	/* A full buffer: the backend likely has more ready. */
	u->b_ring = res >= (u->b_ring == KG_RING_BATCH ? KG_BATCH_BYTES : KG_IO_BUF_SIZE)
			    ? KG_RING_BATCH
			    : KG_RING_RECORD;
	/* Memory BIO: SSL_write takes the whole buffer at once, so the
	 * ring's buffer goes back as soon as this returns; its records go
	 * into one send span. */
	kg_client_out_expect(c, (size_t)res);
	int n = SSL_write(c->ssl, data, res);
	if (n != res) {
		kg_tls_status(c->ssl, n, reason, sizeof(reason));
		kg_worker_warn(c->worker, "tls.write_failed",
			       KV("listener", c->listener->conf->name), KV("reason", reason));
		kg_conn_close(c, "TLS write failed");
		return;
	}
	kg_conn_flush_client(c);
}

static void user_on_backend_io(struct kg_conn *c, int op, int fd, int res,
			       const unsigned char *data)
{
	(void)fd; /* c->bfd, the one backend socket */
	if (op == KG_OP_BACKEND_SEND)
		on_backend_send(c, res);
	else
		on_backend_recv(c, res, data);
}

static void user_on_client_drained(struct kg_conn *c)
{
	struct kg_user *u = user_of(c);
	if (!u->backend_eof) {
		arm_backend_recv(c);
		return;
	}
	if (!u->b2c_done) {
		u->b2c_done = true;
		shutdown(c->cfd, SHUT_WR);
		finish_direction_check(c);
	}
}

static void user_release(struct kg_conn *c)
{
	struct kg_user *u = user_of(c);
	if (!u)
		return;
	kg_buf_put(&c->worker->bufs, u->b_out.data);
	free(u);
	c->fwd_ctx = NULL;
}

const struct kg_fwd_ops kg_fwd_user_ops = {
	.name = "userspace-tls",
	.start = user_start,
	.run = user_run,
	.on_client_data = user_on_client_data,
	.on_client_drained = user_on_client_drained,
	.on_backend_io = user_on_backend_io,
	.release = user_release,
};
