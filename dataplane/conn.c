/* Connection lifecycle on a worker: accept, the non-blocking TLS handshake
 * over memory BIOs, ciphertext I/O with the client, deadlines and close.
 *
 * Ownership: the worker's slot table owns each kg_conn. kg_conn_close()
 * only marks the connection and kicks its in-flight operations; the worker
 * frees it (kg_conn_release_if_idle) once the last completion has arrived,
 * so no handler ever touches freed memory. */
#include "worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "health.h"
#include "listener.h"
#include "tls.h"

static void conn_peer(const struct kg_conn *c, char *buf, size_t len)
{
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	if (getpeername(c->cfd, (struct sockaddr *)&peer, &plen) == -1)
		snprintf(buf, len, "(unknown peer)");
	else
		kg_sockaddr_format(&peer, buf, len);
}

static int slot_alloc(struct kg_worker *w)
{
	if (w->n_free == 0)
		return -1;
	uint32_t idx = w->free_slots[--w->n_free];
	if (idx >= w->high_water)
		w->high_water = idx + 1;
	return (int)idx;
}

void kg_conn_accept(struct kg_worker *w, uint32_t listener_idx, int fd)
{
	struct kg_listener_rt *l = &w->rt->listeners[listener_idx];
	const struct kg_listener_conf *lc = l->conf;
	int one = 1;

	w->stats.accepted++;
	if (w->draining) {
		close(fd);
		return;
	}
	if (atomic_fetch_add(&l->active, 1) >= lc->max_connections) {
		atomic_fetch_sub(&l->active, 1);
		w->stats.rejected_limit++;
		kg_worker_warn(w, "listener %s: max_connections (%u) reached, closing new connection",
			       lc->name, lc->max_connections);
		close(fd);
		return;
	}

	int idx = slot_alloc(w);
	struct kg_conn *c = idx < 0 ? NULL : calloc(1, sizeof(*c));
	if (!c)
		goto refuse;
	c->buf = malloc(4 * KG_IO_BUF_SIZE);
	if (!c->buf)
		goto free_conn;
	c->idx = (uint32_t)idx;
	c->worker = w;
	c->listener = l;
	c->listener_idx = listener_idx;
	c->cfd = fd;
	c->bfd = -1;
	c->member = -1;
	c->c_in.data = c->buf;
	c->c_out.data = c->buf + KG_IO_BUF_SIZE;
	c->b_in.data = c->buf + 2 * KG_IO_BUF_SIZE;
	c->b_out.data = c->buf + 3 * KG_IO_BUF_SIZE;
	c->state = KG_CONN_HANDSHAKE;
	c->deadline_ms = w->now_ms + lc->handshake_timeout_ms;

	/* Records are forwarded as they come: Nagle would only add latency. */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		log_debug("TCP_NODELAY on client socket: %s", strerror(errno));

	c->ssl = SSL_new(l->ssl_ctx);
	c->net_in = BIO_new(BIO_s_mem());
	c->net_out = BIO_new(BIO_s_mem());
	if (!c->ssl || !c->net_in || !c->net_out) {
		BIO_free(c->net_in);
		BIO_free(c->net_out);
		SSL_free(c->ssl);
		goto free_buf;
	}
	/* From here the SSL owns both BIOs and frees them with itself. */
	SSL_set_bio(c->ssl, c->net_in, c->net_out);
	SSL_set_accept_state(c->ssl);

	w->conns[idx] = c;
	w->n_conns++;
	kg_conn_arm_client_recv(c);
	return;

free_buf:
	free(c->buf);
free_conn:
	free(c);
refuse:
	if (idx >= 0)
		w->free_slots[w->n_free++] = (uint32_t)idx;
	atomic_fetch_sub(&l->active, 1);
	w->stats.rejected_limit++;
	kg_worker_warn(w, "listener %s: out of connection slots or memory", lc->name);
	close(fd);
}

void kg_conn_arm_client_recv(struct kg_conn *c)
{
	if (c->c_recv_busy || c->client_eof || c->state == KG_CONN_CLOSING)
		return;
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_recv(sqe, c->cfd, c->c_in.data, KG_IO_BUF_SIZE, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CLIENT_RECV, c->idx, c->cfd));
	c->c_recv_busy = true;
	c->inflight++;
}

static void handshake_failed(struct kg_conn *c, const char *reason)
{
	char peer[64];
	conn_peer(c, peer, sizeof(peer));
	c->worker->stats.handshake_failed++;
	kg_worker_warn(c->worker, "handshake failed from %s on listener %s: %s",
		       peer, c->listener->conf->name, reason);
	/* Send the alert OpenSSL queued, then close. */
	c->close_after_flush = true;
	snprintf(c->close_reason, sizeof(c->close_reason), "handshake failed");
	kg_conn_flush_client(c);
}

static void handshake_step(struct kg_conn *c)
{
	char reason[256];
	int ret = SSL_do_handshake(c->ssl);

	if (ret == 1) {
		struct kg_worker *w = c->worker;
		w->stats.handshakes++;
		if (SSL_session_reused(c->ssl))
			w->stats.resumed++;
		if (kg_log_level >= KG_LOG_DEBUG) {
			X509 *peer = SSL_get0_peer_certificate(c->ssl);
			char subject[256] = "(no client certificate)";
			if (peer)
				X509_NAME_oneline(X509_get_subject_name(peer), subject,
						  sizeof(subject));
			log_debug("handshake done on %s: %s %s, client %s",
				  c->listener->conf->name, SSL_get_version(c->ssl),
				  SSL_get_cipher_name(c->ssl), subject);
		}
		kg_conn_flush_client(c);
		c->state = KG_CONN_CONNECTING;
		kg_backend_connect_next(c);
		return;
	}
	switch (kg_tls_status(c->ssl, ret, reason, sizeof(reason))) {
	case KG_TLS_WANT_READ:
	case KG_TLS_WANT_WRITE:
		kg_conn_flush_client(c);
		if (c->client_eof)
			kg_conn_close(c, "client closed during handshake");
		else
			kg_conn_arm_client_recv(c);
		return;
	case KG_TLS_CLOSED:
		handshake_failed(c, "client sent close_notify during handshake");
		return;
	case KG_TLS_OK:
	case KG_TLS_ERROR:
		handshake_failed(c, reason);
		return;
	}
}

void kg_conn_on_client_recv(struct kg_conn *c, int res)
{
	c->inflight--;
	c->c_recv_busy = false;
	if (c->state == KG_CONN_CLOSING)
		return;
	if (res < 0) {
		char why[64];
		snprintf(why, sizeof(why), "client recv: %s", strerror(-res));
		kg_conn_close(c, why);
		return;
	}
	if (res == 0) {
		c->client_eof = true;
	} else {
		if (BIO_write(c->net_in, c->c_in.data, res) != res) {
			kg_conn_close(c, "out of memory buffering client data");
			return;
		}
		if (c->state == KG_CONN_FORWARDING)
			c->deadline_ms = c->worker->now_ms +
					 c->listener->conf->idle_timeout_ms;
	}
	if (c->state == KG_CONN_HANDSHAKE)
		handshake_step(c);
	else if (c->state == KG_CONN_FORWARDING)
		kg_forward_user_on_client_data(c);
}

static void client_drained(struct kg_conn *c)
{
	if (c->close_after_flush)
		kg_conn_close(c, c->close_reason);
	else if (c->state == KG_CONN_FORWARDING)
		kg_forward_user_on_client_drained(c);
}

void kg_conn_flush_client(struct kg_conn *c)
{
	if (c->c_send_busy || c->state == KG_CONN_CLOSING)
		return;
	if (c->c_out.off >= c->c_out.len) {
		int n = BIO_read(c->net_out, c->c_out.data, KG_IO_BUF_SIZE);
		if (n <= 0) {
			c->c_out.off = c->c_out.len = 0;
			client_drained(c);
			return;
		}
		c->c_out.off = 0;
		c->c_out.len = (uint32_t)n;
	}
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_send(sqe, c->cfd, c->c_out.data + c->c_out.off,
			   c->c_out.len - c->c_out.off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CLIENT_SEND, c->idx, c->cfd));
	c->c_send_busy = true;
	c->inflight++;
}

void kg_conn_on_client_send(struct kg_conn *c, int res)
{
	c->inflight--;
	c->c_send_busy = false;
	if (c->state == KG_CONN_CLOSING)
		return;
	if (res <= 0) {
		char why[64];
		snprintf(why, sizeof(why), "client send: %s",
			 res == 0 ? "no progress" : strerror(-res));
		kg_conn_close(c, why);
		return;
	}
	c->c_out.off += (uint32_t)res;
	if (c->state == KG_CONN_FORWARDING)
		c->deadline_ms = c->worker->now_ms + c->listener->conf->idle_timeout_ms;
	kg_conn_flush_client(c);
}

void kg_conn_close(struct kg_conn *c, const char *reason)
{
	if (c->state == KG_CONN_CLOSING)
		return;
	enum kg_conn_state was = c->state;
	c->state = KG_CONN_CLOSING;
	log_debug("connection %u on listener %s closed: %s", c->idx,
		  c->listener->conf->name, reason);
	/* shutdown() completes pending recv/send on these sockets, so the
	 * in-flight count drains promptly; queued data is still sent. */
	shutdown(c->cfd, SHUT_RDWR);
	if (c->bfd >= 0 && was != KG_CONN_CONNECTING)
		shutdown(c->bfd, SHUT_RDWR);
	if (was == KG_CONN_CONNECTING && c->bfd >= 0) {
		struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
		io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_BACKEND_CONNECT, c->idx, c->bfd), 0);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, c->idx, -1));
	}
}

bool kg_conn_release_if_idle(struct kg_conn *c)
{
	if (c->inflight > 0)
		return false;
	struct kg_worker *w = c->worker;
	SSL_free(c->ssl);
	close(c->cfd);
	if (c->bfd >= 0)
		close(c->bfd);
	free(c->buf);
	if (c->member_counted)
		kg_health_conn_end(c->listener->health, (size_t)c->member);
	atomic_fetch_sub(&c->listener->active, 1);
	w->stats.closed++;
	w->conns[c->idx] = NULL;
	w->free_slots[w->n_free++] = c->idx;
	w->n_conns--;
	free(c);
	return true;
}

void kg_conn_check_deadline(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	if (c->state == KG_CONN_CLOSING || w->now_ms < c->deadline_ms)
		return;
	if (c->state == KG_CONN_HANDSHAKE) {
		char peer[64];
		conn_peer(c, peer, sizeof(peer));
		w->stats.handshake_timeout++;
		kg_worker_warn(w, "handshake timeout from %s on listener %s", peer,
			       c->listener->conf->name);
		kg_conn_close(c, "handshake timeout");
	} else if (c->state == KG_CONN_FORWARDING) {
		w->stats.idle_timeout++;
		kg_conn_close(c, "idle timeout");
	}
}
