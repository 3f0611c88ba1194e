/* Path C: userspace TLS. OpenSSL decrypts what the client sends and
 * encrypts what the backend answers; io_uring moves the bytes. Each
 * direction holds at most one buffer of plaintext plus what OpenSSL has
 * queued for one record, and re-arms its receive only when that has been
 * sent: back-pressure with bounded memory.
 *
 * Half-close: client close_notify or FIN → shutdown(backend, SHUT_WR) once
 * everything before it was sent; backend FIN → close_notify to the client,
 * then shutdown(client, SHUT_WR). Both directions done → close. */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "tls.h"

static void touch(struct kg_conn *c)
{
	c->deadline_ms = c->worker->now_ms + c->listener->conf->idle_timeout_ms;
}

static void arm_backend_recv(struct kg_conn *c)
{
	if (c->b_recv_busy || c->backend_eof || c->state != KG_CONN_FORWARDING)
		return;
	/* No buffer while waiting: the worker's ring lends one on arrival. */
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	kg_bufpool_prep_recv(sqe, c->bfd);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_BACKEND_RECV, c->idx, c->bfd));
	c->b_recv_busy = true;
	c->inflight++;
}

static void send_backend(struct kg_conn *c)
{
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_send(sqe, c->bfd, c->b_out.data + c->b_out.off,
			   c->b_out.len - c->b_out.off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_BACKEND_SEND, c->idx, c->bfd));
	c->b_send_busy = true;
	c->inflight++;
}

static void finish_direction_check(struct kg_conn *c)
{
	if (c->c2b_done && c->b2c_done)
		kg_conn_close(c, "both directions finished");
}

static void finish_c2b(struct kg_conn *c)
{
	if (c->c2b_done)
		return;
	c->c2b_done = true;
	shutdown(c->bfd, SHUT_WR);
	finish_direction_check(c);
}

/* Client → backend: decrypt what OpenSSL has buffered, one buffer at a time. */
static void pump_c2b(struct kg_conn *c)
{
	char reason[256];

	if (c->c2b_done || c->b_send_busy || c->state != KG_CONN_FORWARDING)
		return;
	if (c->b_out.off < c->b_out.len) {
		send_backend(c);
		return;
	}
	/* A pool buffer only while there is plaintext to send. */
	c->b_out.off = c->b_out.len = 0;
	if (!c->b_out.data && !(c->b_out.data = kg_buf_get(&c->worker->bufs))) {
		kg_conn_close(c, "out of memory for a send buffer");
		return;
	}
	int n = SSL_read(c->ssl, c->b_out.data, KG_IO_BUF_SIZE);
	if (n <= 0) {
		kg_buf_put(&c->worker->bufs, c->b_out.data);
		c->b_out.data = NULL;
	}
	if (n > 0) {
		c->b_out.off = 0;
		c->b_out.len = (uint32_t)n;
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
	case KG_TLS_ERROR:
		kg_worker_warn(c->worker, "tls.client_error",
			       KV("listener", c->listener->conf->name), KV("reason", reason));
		kg_conn_close(c, "TLS error");
		return;
	}
}

void kg_forward_user_start(struct kg_conn *c)
{
	arm_backend_recv(c);
	/* The client may have sent application data in the same flight as
	 * its Finished message: it is already in net_in. */
	pump_c2b(c);
}

void kg_forward_user_on_client_data(struct kg_conn *c)
{
	pump_c2b(c);
}

void kg_forward_user_on_backend_send(struct kg_conn *c, int res)
{
	c->inflight--;
	c->b_send_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res <= 0) {
		kg_conn_close_err(c, "backend send", -res);
		return;
	}
	c->b_out.off += (uint32_t)res;
	touch(c);
	pump_c2b(c);
}

void kg_forward_user_on_backend_recv(struct kg_conn *c, int res, const unsigned char *data)
{
	char reason[256];

	c->inflight--;
	c->b_recv_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res == -ENOBUFS) {
		/* Ring empty for now: it grows, and buffers return within
		 * this batch. */
		kg_bufpool_grow(&c->worker->bufs);
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
		c->backend_eof = true;
		/* Queue close_notify; the client's write side is shut once
		 * it and everything before it has been sent. */
		SSL_shutdown(c->ssl);
		ERR_clear_error();
		kg_conn_flush_client(c);
		return;
	}
	touch(c);
	kg_count_add(&c->worker->stats.forwarded_b2c, (uint64_t)res);
	/* Memory BIO: SSL_write takes the whole buffer at once, so the
	 * ring's buffer goes back as soon as this returns. */
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

void kg_forward_user_on_client_drained(struct kg_conn *c)
{
	if (!c->backend_eof) {
		arm_backend_recv(c);
		return;
	}
	if (!c->b2c_done) {
		c->b2c_done = true;
		shutdown(c->cfd, SHUT_WR);
		finish_direction_check(c);
	}
}
