/* Connection lifecycle on a worker (conn.h): accept, the non-blocking TLS
 * handshake over memory BIOs, ciphertext I/O with the client, the start of
 * a forwarding path through its ops (fwd.h), deadlines and close. */
#include "conn.h"

#include <errno.h>
#include <stddef.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include <openssl/err.h>

#include "access.h"
#include "backend.h"
#include "certs.h"
#include "fwd.h"
#include "group.h"
#include "health.h"
#include "ktls.h"
#include "listener.h"
#include "proxy_send.h"
#include "runtime.h"
#include "tls.h"
#include "worker.h"

static void conn_peer(const struct kg_conn *c, char *buf, size_t len)
{
	struct sockaddr_storage peer;
	socklen_t plen = sizeof(peer);
	if (getpeername(c->cfd, (struct sockaddr *)&peer, &plen) == -1)
		snprintf(buf, len, "(unknown peer)");
	else
		kg_sockaddr_format(&peer, buf, len);
}

/* ---- the client's outgoing bytes ----
 *
 * The BIO OpenSSL writes a connection's outgoing ciphertext to, and the
 * outgoing byte queue behind it.
 *
 * Records go straight into the connection's send span (c_out, a pool
 * buffer), so they are copied once between OpenSSL and the socket rather
 * than twice through a memory BIO (the copies were a fifth of the CPU of a
 * 1 MiB response). What does not fit behind the bytes already in c_out
 * queues in a "spill" memory BIO that exists only then; bytes never
 * overtake each other: once something is spilled, everything after it is
 * spilled too until the flush has moved it into c_out.
 * A caller that is about to write more than a record at once says so
 * (kg_client_out_expect): c_out is then a batch buffer, and the records
 * leave in one send.
 * Runs on the connection's worker thread only. */

/* Bytes through a connection's memory BIOs after which an idle visit
 * replaces them: a handshake or a burst leaves their buffers grown. */
#define BIO_TRIM_BYTES 512

/* n more bytes went through the memory BIOs: once they pass the trim
 * threshold, the timer looks soon (kg_conn_on_timer trims when idle). */
static void grew(struct kg_conn *c, size_t n)
{
	bool was_below = c->bio_grown < BIO_TRIM_BYTES;
	c->bio_grown += (uint32_t)n;
	if (was_below && c->bio_grown >= BIO_TRIM_BYTES)
		kg_conn_timer_at(c, c->worker->now_ms + KG_TRIM_IDLE_MS);
}

static pthread_once_t method_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *method; /* process lifetime, built once */

size_t kg_client_spill_pending(const struct kg_conn *c)
{
	if (!c->out_spill)
		return 0;
	size_t n = BIO_ctrl_pending(c->out_spill);
	return n;
}

/* The send span's size: a pool buffer, or a batch buffer. */
static uint32_t out_cap(const struct kg_conn *c)
{
	return c->c_out_batch ? KG_BATCH_BUF_SIZE : KG_POOL_BUF_SIZE;
}

/* Gives the send span's buffer back to its pool. */
static void out_release(struct kg_conn *c)
{
	if (c->c_out_batch)
		kg_batch_put(&c->worker->bufs, c->c_out.data);
	else
		kg_buf_put(&c->worker->bufs, c->c_out.data);
	c->c_out.data = NULL;
	c->c_out_batch = false;
	c->c_out.off = c->c_out.len = 0;
}

/* The span is empty and no send reads it: n bytes that are more than one
 * record go into a batch buffer, so one send carries them all (the
 * per-send kernel path on both sides of the socket, not the bytes, was
 * what a 16 KiB send added). */
static void out_fit_batch(struct kg_conn *c, size_t n)
{
	if (n <= KG_IO_BUF_SIZE || c->c_out_batch)
		return;
	unsigned char *b = kg_batch_get(&c->worker->bufs);
	if (!b)
		return;
	out_release(c);
	c->c_out.data = b;
	c->c_out_batch = true;
}

void kg_client_out_expect(struct kg_conn *c, size_t n)
{
	if (c->c_send_busy || c->c_out.off < c->c_out.len || kg_client_spill_pending(c) > 0)
		return;
	c->c_out.off = c->c_out.len = 0;
	out_fit_batch(c, n);
}

int kg_client_out_write(struct kg_conn *c, const void *data, size_t len)
{
	if (kg_client_spill_pending(c) == 0) {
		/* Sent already: start the span over (a send in flight
		 * reads [off, len), so only then). */
		if (!c->c_send_busy && c->c_out.off >= c->c_out.len)
			c->c_out.off = c->c_out.len = 0;
		if (!c->c_out.data && !(c->c_out.data = kg_buf_get(&c->worker->bufs)))
			return -ENOMEM;
		if (len <= out_cap(c) - c->c_out.len) {
			/* Past c_out.len: a send in flight never reads there. */
			memcpy(c->c_out.data + c->c_out.len, data, len);
			c->c_out.len += (uint32_t)len;
			return 0;
		}
	}
	if (len > INT_MAX)
		return -EMSGSIZE;
	if (!c->out_spill && !(c->out_spill = BIO_new(BIO_s_mem())))
		return -ENOMEM;
	grew(c, len);
	return BIO_write(c->out_spill, data, (int)len) == (int)len ? 0 : -ENOMEM;
}

static int out_write(BIO *b, const char *data, int len)
{
	struct kg_conn *c = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	if (!c || len <= 0)
		return len == 0 ? 0 : -1;
	return kg_client_out_write(c, data, (size_t)len) == 0 ? len : -1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	const struct kg_conn *c = BIO_get_data(b);
	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		/* Bytes are sent by the worker's flush, never held here. */
		return 1;
	case BIO_CTRL_PENDING:
	case BIO_CTRL_WPENDING:
		return c ? (long)kg_client_spill_pending(c) : 0;
	default:
		/* Anything else (kTLS queries included): not supported. */
		return 0;
	}
}

static void build_method(void)
{
	int type = BIO_get_new_index();
	if (type == -1)
		return;
	BIO_METHOD *m = BIO_meth_new(type | BIO_TYPE_SOURCE_SINK, "kgate client out");
	if (!m)
		return;
	if (BIO_meth_set_write(m, out_write) != 1 || BIO_meth_set_ctrl(m, out_ctrl) != 1) {
		BIO_meth_free(m);
		return;
	}
	method = m;
}

BIO *kg_client_bio_new(struct kg_conn *c)
{
	if (pthread_once(&method_once, build_method) != 0 || !method)
		return NULL;
	BIO *b = BIO_new(method);
	if (!b)
		return NULL;
	BIO_set_data(b, c);
	BIO_set_init(b, 1);
	return b;
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

/* Only a connection that may hand off to kTLS owns a receive buffer: it
 * reads the handshake record by record, so the buffer holds the largest
 * record, and behind it the early-data scratch of the handoff. Every other
 * connection receives through the worker's ring. */
static int conn_alloc_c_in(struct kg_conn *c)
{
	c->c_in_cap = KG_TLS_RECORD_MAX;
	c->c_in.data = malloc(c->c_in_cap + KG_KTLS_EARLY_CAP);
	return c->c_in.data ? 0 : -1;
}

/* Gives back every buffer the connection still holds. */
static void conn_release_buffers(struct kg_conn *c)
{
	out_release(c);
	free(c->c_in.data);
	BIO_free(c->out_spill);
	c->out_spill = NULL;
	memset(&c->c_in, 0, sizeof(c->c_in));
}

void kg_conn_drop_tls(struct kg_conn *c)
{
	/* Marked shut down first, or OpenSSL would drop the session from the
	 * cache as if the connection had failed. */
	SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_free(c->ssl);
	c->ssl = NULL;
	free(c->ktls);
	c->ktls = NULL;
	conn_release_buffers(c);
}

void kg_conn_touch(struct kg_conn *c)
{
	c->deadline_ms = c->worker->now_ms + c->listener->conf->idle_timeout_ms;
}

static void ocsp_resume(struct kg_ocsp_wait *wait);

void kg_conn_accept(struct kg_worker *w, uint32_t listener_idx, int fd)
{
	struct kg_listener_slot *slot = &w->rt->slots[listener_idx];
	int one = 1;

	kg_count(w, accepted);
	atomic_fetch_add_explicit(&slot->counters.accepted, 1, memory_order_relaxed);
	/* The connection keeps the snapshot it starts with (runtime.h). One
	 * accepted before a drain began (a multishot accept's last completion,
	 * or one another worker handed over) is served like the rest: closing
	 * it would reset a client the kernel had already accepted. A deleted
	 * listener has no snapshot any more. */
	struct kg_listener_rt *l = kg_listener_acquire(slot);
	if (!l) {
		close(fd);
		return;
	}
	const struct kg_listener_conf *lc = l->conf;
	if (atomic_fetch_add(&slot->active, 1) >= lc->max_connections) {
		atomic_fetch_sub(&slot->active, 1);
		kg_count(w, rejected_limit);
		atomic_fetch_add_explicit(&slot->counters.rejected_limit, 1, memory_order_relaxed);
		kg_worker_warn(w, "conn.limit_reached", KV("listener", lc->name),
			       KV("max_connections", lc->max_connections));
		kg_listener_put(l);
		close(fd);
		return;
	}

	int idx = slot_alloc(w);
	struct kg_conn *c = idx < 0 ? NULL : calloc(1, sizeof(*c));
	if (!c)
		goto refuse;
	c->idx = (uint32_t)idx;
	c->worker = w;
	c->listener = l;
	c->listener_idx = listener_idx;
	c->cfd = fd;
	c->bfd = -1;
	c->member = -1;

	/* Records are forwarded as they come: Nagle would only add latency. */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		log_debug("socket.nodelay_failed", KV("side", "client"), KV_ERRNO(errno));

	if (!l->ssl_ctx) {
		/* Plain tcp: straight to the backend. */
		c->state = KG_CONN_CONNECTING;
		w->conns[idx] = c;
		w->n_conns++;
		kg_worker_conns_changed(w);
		kg_conn_connect_backend(c);
		return;
	}
	if (kg_path_hands_off(l->plan) && conn_alloc_c_in(c) < 0)
		goto free_conn;
	c->state = KG_CONN_HANDSHAKE;
	c->deadline_ms = w->now_ms + lc->handshake_timeout_ms;

	c->ssl = SSL_new(l->ssl_ctx);
	c->net_in = BIO_new(BIO_s_mem());
	c->net_out = kg_client_bio_new(c);
	if (!c->ssl || !c->net_in || !c->net_out) {
		BIO_free(c->net_in);
		BIO_free(c->net_out);
		SSL_free(c->ssl);
		c->ssl = NULL;
		goto free_buf;
	}
	/* From here the SSL owns both BIOs and frees them with itself. */
	SSL_set_bio(c->ssl, c->net_in, c->net_out);
	SSL_set_accept_state(c->ssl);
	if (lc->ocsp != KG_OCSP_OFF && lc->mutual_auth != KG_MTLS_OFF) {
		c->ocsp.o = w->ocsp;
		c->ocsp.mode = lc->ocsp;
		c->ocsp.timeout_ms = lc->ocsp_timeout_ms;
		c->ocsp.url = lc->ocsp_url; /* the snapshot c holds keeps lc */
		c->ocsp.resume = ocsp_resume;
		c->ocsp_on = true;
		if (kg_ocsp_attach(c->ssl, &c->ocsp) < 0) {
			SSL_free(c->ssl);
			c->ssl = NULL;
			goto free_buf;
		}
	}
	if (kg_path_hands_off(l->plan)) {
		c->ktls = malloc(sizeof(*c->ktls));
		if (!c->ktls || kg_ktls_track_attach(c->ssl, c->ktls) < 0) {
			SSL_free(c->ssl);
			c->ssl = NULL;
			goto free_buf;
		}
	}

	w->conns[idx] = c;
	w->n_conns++;
	kg_worker_conns_changed(w);
	kg_wheel_arm(&w->timers, &c->timer, c->deadline_ms);
	kg_conn_arm_client_recv(c);
	return;

free_buf:
	free(c->ktls);
	free(c->c_in.data);
free_conn:
	free(c);
refuse:
	if (idx >= 0)
		w->free_slots[w->n_free++] = (uint32_t)idx;
	kg_count(w, rejected_resources);
	kg_worker_warn(w, "conn.no_slot", KV("listener", lc->name),
		       KV("reason", "out of connection slots or memory"));
	atomic_fetch_sub(&slot->active, 1);
	kg_listener_put(l);
	close(fd);
}

void kg_conn_arm_client_recv(struct kg_conn *c)
{
	if (c->c_recv_busy || c->client_eof || c->state == KG_CONN_CLOSING)
		return;
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	if (c->c_in.data) {
		/* A connection heading for kTLS keeps unfed bytes in c_in,
		 * and during the handoff reads no byte past the record it
		 * needs (after a fallback to userspace-tls, c_in.len stays 0). */
		uint32_t room = c->state == KG_CONN_HANDOFF ? c->handoff_need
							    : c->c_in_cap - c->c_in.len;
		io_uring_prep_recv(sqe, c->cfd, c->c_in.data + c->c_in.len, room, 0);
	} else {
		/* userspace-tls: no buffer while waiting, every byte fed to OpenSSL
		 * on completion. */
		kg_bufpool_prep_recv(sqe, c->cfd, KG_RING_RECORD);
	}
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CLIENT_RECV, c->idx, c->cfd));
	c->c_recv_busy = true;
	c->inflight++;
}

static void handshake_failed(struct kg_conn *c, const char *reason)
{
	char peer[64];
	conn_peer(c, peer, sizeof(peer));
	kg_count(c->worker, handshake_failed);
	struct kg_listener_counters *lc = &c->listener->slot->counters;
	atomic_fetch_add_explicit(&lc->handshake_failed, 1, memory_order_relaxed);
	enum kg_hs_reason why = kg_tls_failure_reason(c->ssl, reason);
	atomic_fetch_add_explicit(&lc->failed_by_reason[why], 1, memory_order_relaxed);
	if (why == KG_HS_ACCESS_DENIED)
		atomic_fetch_add_explicit(&lc->access_denied, 1, memory_order_relaxed);
	kg_worker_warn(c->worker, "tls.handshake_failed", KV("listener", c->listener->conf->name),
		       KV("client", peer), KV("reason", reason));
	/* Send the alert OpenSSL queued, then close. */
	c->close_after_flush = true;
	snprintf(c->close_reason, sizeof(c->close_reason), "handshake failed");
	kg_conn_flush_client(c);
}

/* HS_WAIT: the handshake is suspended until its OCSP answer is in. */
enum hs_result { HS_MORE, HS_DONE, HS_FAILED, HS_WAIT };

/* ocsp soft let a certificate in without a good answer: said once, after
 * the handshake (the check itself runs on the async job's small stack). */
static void log_ocsp_soft(struct kg_conn *c)
{
	char peer[64], subject[256] = "(none)";
	X509 *cert = SSL_get0_peer_certificate(c->ssl);
	conn_peer(c, peer, sizeof(peer));
	if (cert)
		kg_cert_subject(cert, subject, sizeof(subject));
	kg_worker_warn(c->worker, "ocsp.soft_allowed", KV("listener", c->listener->conf->name),
		       KV("client", peer), KV("subject", subject), KV("reason", c->ocsp.why));
}

/* The access rules once the handshake is done. In the handshake mode the
 * verify callback already refused a denied certificate, and a resumed
 * session was made under the same rules (the session id context digests
 * them, tls.c): what completes was allowed. In the 403 mode the rules are
 * evaluated here, for full and resumed handshakes alike, and a denied
 * connection is marked for the https forwarder. */
static void access_after_handshake(struct kg_conn *c)
{
	/* The rules of the sni entry the ClientHello chose, if one did. */
	const struct kg_listener_conf *l =
		kg_tls_conf_of(c->ssl) ? kg_tls_conf_of(c->ssl) : c->listener->conf;
	struct kg_listener_counters *lc = &c->listener->slot->counters;
	const char *rule = NULL;

	if (!kg_tls_access_on(l))
		return;
	if (kg_tls_access_in_handshake(l) ||
	    kg_access_eval(l->access_rules, SSL_get0_peer_certificate(c->ssl), l->access_default,
			   &rule) == KG_ACCESS_ALLOW) {
		atomic_fetch_add_explicit(&lc->access_allowed, 1, memory_order_relaxed);
		return;
	}
	atomic_fetch_add_explicit(&lc->access_denied, 1, memory_order_relaxed);
	c->access_denied_rule = rule;
	char peer[64], subject[256] = "(none)";
	X509 *cert = SSL_get0_peer_certificate(c->ssl);
	conn_peer(c, peer, sizeof(peer));
	if (cert)
		kg_cert_subject(cert, subject, sizeof(subject));
	kg_worker_warn(c->worker, "tls.access_denied", KV("listener", l->name), KV("client", peer),
		       KV("rule", rule), KV("subject", subject), KV("response", "403"));
}

static enum hs_result handshake_step(struct kg_conn *c)
{
	char reason[256];
	int ret = SSL_do_handshake(c->ssl);

	c->ocsp_paused = false;
	if (ret == 1) {
		struct kg_worker *w = c->worker;
		if (c->ocsp_on) {
			kg_ocsp_handshake_done(c->ssl);
			if (c->ocsp.soft_allowed)
				log_ocsp_soft(c);
		}
		kg_count(w, handshakes);
		atomic_fetch_add_explicit(&c->listener->slot->counters.handshakes, 1,
					  memory_order_relaxed);
		if (SSL_session_reused(c->ssl))
			kg_count(w, resumed);
		if (c->ktls)
			kg_ktls_handshake_done(c->ssl, c->ktls);
		access_after_handshake(c);
		if (kg_log_level >= KG_LOG_DEBUG) {
			X509 *peer = SSL_get0_peer_certificate(c->ssl);
			char subject[256] = "";
			if (peer)
				X509_NAME_oneline(X509_get_subject_name(peer), subject,
						  sizeof(subject));
			log_debug("tls.handshake_done", KV("listener", c->listener->conf->name),
				  KV("worker", w->id), KV("conn", c->idx),
				  KV("version", SSL_get_version(c->ssl)),
				  KV("cipher", SSL_get_cipher_name(c->ssl)),
				  KV("client_cert", (bool)(peer != NULL)), KV("subject", subject));
		}
		return HS_DONE;
	}
	switch (kg_tls_status(c->ssl, ret, reason, sizeof(reason))) {
	case KG_TLS_WANT_READ:
	case KG_TLS_WANT_WRITE:
		return HS_MORE;
	case KG_TLS_WANT_ASYNC:
		c->ocsp_paused = true;
		return HS_WAIT;
	case KG_TLS_CLOSED:
		handshake_failed(c, "client sent close_notify during handshake");
		return HS_FAILED;
	case KG_TLS_OK:
	case KG_TLS_ERROR:
		break;
	}
	handshake_failed(c, reason);
	return HS_FAILED;
}

int kg_conn_feed_openssl(struct kg_conn *c, const unsigned char *p, size_t n)
{
	if (n > 0 && BIO_write(c->net_in, p, (int)n) != (int)n) {
		kg_conn_close(c, "out of memory buffering client data");
		return -ENOMEM;
	}
	grew(c, n);
	return 0;
}

void kg_conn_compact_c_in(struct kg_conn *c)
{
	uint32_t rest = c->c_in.len - c->c_in.off;
	if (c->c_in.off > 0 && rest > 0)
		memmove(c->c_in.data, c->c_in.data + c->c_in.off, rest);
	c->c_in.off = 0;
	c->c_in.len = rest;
}

/* A connection heading for kTLS hands OpenSSL one record at a time and
 * stops at the handshake's last record, so that nothing after it is
 * consumed by OpenSSL before the kernel takes over. */
static enum hs_result handshake_records(struct kg_conn *c)
{
	enum hs_result r = HS_MORE;
	while (r == HS_MORE) {
		size_t avail = c->c_in.len - c->c_in.off;
		size_t rec = kg_tls_record_len(c->c_in.data + c->c_in.off, avail);
		if (rec == 0)
			break;
		if (rec == SIZE_MAX)
			rec = avail;
		if (kg_conn_feed_openssl(c, c->c_in.data + c->c_in.off, rec) < 0)
			return HS_FAILED;
		c->c_in.off += (uint32_t)rec;
		r = handshake_step(c);
	}
	if (r == HS_MORE || r == HS_WAIT)
		kg_conn_compact_c_in(c);
	return r;
}

/* After a handshake step: forwarding once done, else more input. While
 * the handshake waits for OCSP nothing more is read: the client waits
 * for the server's answer (TLS 1.2) or its data stays in the socket
 * (TLS 1.3) until the handshake has decided. */
static void handshake_after(struct kg_conn *c, enum hs_result r)
{
	if (r == HS_FAILED)
		return;
	kg_conn_flush_client(c);
	if (r == HS_WAIT || c->state == KG_CONN_CLOSING)
		return;
	if (c->state == KG_CONN_CLOSING)
		return;
	if (r == HS_DONE && kg_path_is_http(c->listener->plan)) {
		/* https picks a backend per request: forwarding starts now. */
		kg_conn_start_forwarding(c);
	} else if (r == HS_DONE) {
		c->state = KG_CONN_CONNECTING;
		kg_conn_connect_backend(c);
	} else if (c->client_eof) {
		kg_conn_close(c, "client closed during handshake");
	} else {
		kg_conn_arm_client_recv(c);
	}
}

static void handshake_input(struct kg_conn *c)
{
	handshake_after(c, c->ktls ? handshake_records(c) : handshake_step(c));
}

/* The OCSP answer c's handshake waited for is in (ocsp.h): the handshake
 * goes on from where it paused, then with the records that are left. */
static void ocsp_resume(struct kg_ocsp_wait *wait)
{
	struct kg_conn *c = (struct kg_conn *)((char *)wait - offsetof(struct kg_conn, ocsp));
	if (c->state != KG_CONN_HANDSHAKE)
		return; /* closing: kg_ocsp_abandon ends the paused job */
	enum hs_result r = handshake_step(c);
	if (r == HS_MORE && c->ktls)
		r = handshake_records(c);
	handshake_after(c, r);
}

void kg_conn_on_client_recv(struct kg_conn *c, int res, const unsigned char *data)
{
	c->inflight--;
	c->c_recv_busy = false;
	if (c->state == KG_CONN_CLOSING)
		return;
	if (res == -ENOBUFS) {
		/* The ring was empty: it grows, and buffers come back as this
		 * batch of completions is handled, before the new receive is
		 * submitted. */
		kg_bufpool_grow(&c->worker->bufs, KG_RING_RECORD);
		kg_conn_arm_client_recv(c);
		return;
	}
	if (res > 0 && !data && !c->c_in.data) {
		kg_conn_close(c, "client recv completed without a buffer");
		return;
	}
	if (res < 0) {
		kg_conn_close_err(c, "client recv", -res);
		return;
	}
	if (res == 0) {
		c->client_eof = true;
	} else if (c->ktls) {
		c->c_in.len += (uint32_t)res; /* records are fed by the handshake/handoff */
	} else {
		if (kg_conn_feed_openssl(c, data ? data : c->c_in.data, (size_t)res) < 0)
			return;
		if (c->state == KG_CONN_FORWARDING)
			kg_conn_touch(c);
	}
	if (c->state == KG_CONN_HANDSHAKE)
		handshake_input(c);
	else if (c->fwd && c->fwd->on_client_data)
		c->fwd->on_client_data(c); /* forwarding, or the kTLS handoff */
}

static void no_backend(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	kg_count(w, no_backend);
	kg_worker_warn(w, "conn.no_backend", KV("listener", c->listener->conf->name),
		       KV("attempts", c->walk.attempts));
	if (!c->ssl) {
		kg_conn_close(c, "no backend available");
		return;
	}
	/* A clean TLS close tells the client this was deliberate. */
	SSL_shutdown(c->ssl);
	c->close_after_flush = true;
	snprintf(c->close_reason, sizeof(c->close_reason), "no backend available");
	kg_conn_flush_client(c);
}

void kg_conn_connect_backend(struct kg_conn *c)
{
	c->group = c->listener->group; /* tcp and tls listeners always have one */
	int m = c->group ? kg_backend_pick(c->listener, c->group, &c->walk) : -1;
	if (m < 0) {
		no_backend(c);
		return;
	}
	int r = kg_conn_submit_connect(c, m, KG_OP_BACKEND_CONNECT);
	if (r < 0)
		kg_conn_close_err(c, "backend socket", -r);
}

int kg_conn_submit_connect_to(struct kg_conn *c, const struct kg_group_rt *g,
			      struct kg_backend_walk *walk, int m, int op)
{
	int fd = kg_backend_socket(g, m);
	if (fd < 0)
		return fd;
	struct io_uring_sqe *sqe, *tsqe;
	kg_worker_sqe_timed(c->worker, &sqe, &tsqe);
	kg_backend_prep_connect(c->listener, g, walk, m, fd, sqe, tsqe);
	io_uring_sqe_set_data64(sqe, kg_ud_pack((enum kg_op)op, c->idx, fd));
	io_uring_sqe_set_data64(tsqe, kg_ud_pack(KG_OP_LINK_TIMEOUT, c->idx, fd));
	c->inflight += 2; /* the connect and its linked timeout */
	return fd;
}

int kg_conn_submit_connect(struct kg_conn *c, int m, int op)
{
	int fd = kg_conn_submit_connect_to(c, c->group, &c->walk, m, op);
	if (fd < 0)
		return fd;
	c->member = m;
	c->bfd = fd;
	return 0;
}

void kg_conn_connect_failed_to(struct kg_conn *c, const struct kg_group_rt *g,
			       struct kg_backend_walk *walk, int m, int fd, int res)
{
	struct kg_worker *w = c->worker;
	const char *why = kg_backend_connect_failed(g, walk, m, res, w->now_ms);
	kg_count(w, backend_connect_failed);
	kg_worker_warn(w, "backend.connect_failed", KV("listener", c->listener->conf->name),
		       KV("backend", g->conf->backends[m].address), KV("err", why));
	close(fd);
}

void kg_conn_connect_failed(struct kg_conn *c, int res)
{
	kg_conn_connect_failed_to(c, c->group, &c->walk, c->member, c->bfd, res);
	c->bfd = -1;
}

void kg_conn_on_backend_connect(struct kg_conn *c, int res)
{
	c->inflight--;
	if (c->state == KG_CONN_CLOSING)
		return;
	if (res == 0) {
		kg_health_conn_start(c->group->health, (size_t)c->member);
		c->member_counted = true;
		kg_conn_start_forwarding(c);
		return;
	}
	kg_conn_connect_failed(c, res);
	kg_conn_connect_backend(c);
}

/* Where a connection's member state lives now: a connection keeps the
 * snapshot it started with, but the control plane (disable) and the
 * checkers change the members of the published one only. A member the
 * published snapshot no longer has was removed: its connections finish. */
static enum kg_health_cut cut_reason(const struct kg_conn *c, const struct kg_group_rt *group,
				     int member, const struct kg_listener_rt *published)
{
	if (!published || published == c->listener)
		return kg_health_should_cut(group->health, (size_t)member);
	/* The same group in the published snapshot (a named group by name,
	 * the inline one as ""), the same member by address. */
	struct kg_group_rt *g = kg_listener_find_group(published, group->conf->name);
	int m = g ? kg_health_member_index(g->health, group->conf->backends[member].address) : -1;
	return m < 0 ? KG_CUT_NONE : kg_health_should_cut(g->health, (size_t)m);
}

int kg_conn_member_cut(struct kg_conn *c, const struct kg_group_rt *g, int m,
		       const struct kg_listener_rt *published)
{
	enum kg_health_cut why = cut_reason(c, g, m, published);
	if (why == KG_CUT_UNHEALTHY)
		kg_count(c->worker, cut_unhealthy);
	else if (why == KG_CUT_DISABLED)
		kg_count(c->worker, cut_disabled);
	return (int)why;
}

bool kg_conn_cut_if_needed(struct kg_conn *c, const struct kg_listener_rt *published)
{
	switch (kg_conn_member_cut(c, c->group, c->member, published)) {
	case KG_CUT_UNHEALTHY:
		kg_conn_close(c, "backend unhealthy");
		return true;
	case KG_CUT_DISABLED:
		kg_conn_close(c, "backend disabled");
		return true;
	default:
		return false;
	}
}

bool kg_conn_cut_now(struct kg_conn *c)
{
	struct kg_listener_rt *published = kg_listener_acquire(c->listener->slot);
	bool cut = kg_conn_cut_if_needed(c, published);
	kg_listener_put(published);
	return cut;
}

int kg_conn_begin_path(struct kg_conn *c, enum kg_path path, const void *early,
		       size_t early_len)
{
	char err[160];
	if (c->ssl) {
		/* The protocol the handshake agreed on may pick another
		 * forwarder for the same path (paths.h). */
		const unsigned char *alpn = NULL;
		unsigned alpn_len = 0;
		SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
		path = kg_path_for_alpn(path, alpn, alpn_len);
	}
	for (;;) {
		const struct kg_fwd_ops *ops = kg_fwd_for(path);
		if (!ops) {
			kg_conn_close(c, "no forwarder for the path");
			return -ENOPROTOOPT;
		}
		c->state = KG_CONN_FORWARDING;
		c->path = path;
		c->fwd = ops;
		snprintf(err, sizeof(err), "%s: cannot start", ops->name);
		int r = ops->start(c, early, early_len, err, sizeof(err));
		if (r == 0) {
			kg_count_add(&c->worker->stats.path[path], 1);
			/* The forwarder took what it needs from the handshake. */
			if (c->ssl)
				kg_tls_drop_peer_chain(c->ssl, c->listener->conf);
			/* The workers' cut scan runs once per change, and skipped
			 * c while it connected or handed off: a member that left
			 * the rotation meanwhile is caught here. */
			if (c->member_counted && kg_conn_cut_now(c))
				return -ECONNABORTED;
			return 0;
		}
		if (r != -EOPNOTSUPP || ops->fallback == KG_PATH_NONE || ops->fallback == path) {
			kg_conn_close(c, err);
			return r;
		}
		path = ops->fallback;
	}
}

void kg_conn_run_path(struct kg_conn *c)
{
	if (c->state == KG_CONN_FORWARDING && c->fwd->run)
		c->fwd->run(c);
}

void kg_conn_arm_poll(struct kg_conn *c, int fd, unsigned mask, int op, bool *armed)
{
	if (*armed)
		return;
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_poll_add(sqe, fd, mask);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(op, c->idx, fd));
	*armed = true;
	c->inflight++;
}

/* The PROXY header goes first on every path: the backend socket is fresh
 * and no client byte has been sent to it yet; before a kTLS handoff the
 * SSL still holds the session facts the header reports. False: the connection is
 * closing. */
static bool send_proxy_header(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	char err[160];
	int r = kg_proxy_send_v2(c->cfd, c->ssl, c->bfd, err, sizeof(err));
	if (r == -ENOTCONN) {
		/* The client reset while the backend was connecting: nothing
		 * failed on our side. */
		kg_conn_close(c, "client gone before the backend connected");
		return false;
	}
	if (r < 0) {
		kg_count(w, proxy_failed);
		kg_worker_warn(w, "proxy.header_failed", KV("listener", c->listener->conf->name),
			       KV("reason", err), KV("action", "close"));
		kg_conn_close(c, "PROXY v2 header not sent");
		return false;
	}
	kg_count(w, proxy_sent);
	return true;
}

void kg_conn_start_forwarding(struct kg_conn *c)
{
	enum kg_path plan = c->listener->plan;

	kg_conn_touch(c);
	kg_conn_timer_at(c, c->deadline_ms);
	if (c->listener->conf->proxy_protocol == KG_PP_V2 && !kg_path_is_http(plan) &&
	    !send_proxy_header(c))
		return;
	if (kg_path_hands_off(plan)) {
		c->state = KG_CONN_HANDOFF;
		c->fwd = kg_fwd_handoff();
		c->fwd->run(c);
		return;
	}
	if (kg_conn_begin_path(c, plan, NULL, 0) == 0)
		kg_conn_run_path(c);
}

static void client_drained(struct kg_conn *c)
{
	if (c->close_after_flush)
		kg_conn_close(c, c->close_reason);
	else if (c->fwd && c->fwd->on_client_drained)
		c->fwd->on_client_drained(c); /* forwarding, or the kTLS handoff */
}

void kg_conn_flush_client(struct kg_conn *c)
{
	if (c->c_send_busy || c->state == KG_CONN_CLOSING)
		return;
	if (c->c_out.off >= c->c_out.len) {
		/* OpenSSL writes records into c_out (kg_client_bio_new); what it
		 * spilled behind a full span moves in now. */
		c->c_out.off = c->c_out.len = 0;
		size_t spilled = kg_client_spill_pending(c);
		if (spilled == 0) {
			/* Nothing left to send: the buffer goes back to the pool. */
			out_release(c);
			client_drained(c);
			return;
		}
		out_fit_batch(c, spilled);
		if (!c->c_out.data && !(c->c_out.data = kg_buf_get(&c->worker->bufs))) {
			kg_conn_close(c, "out of memory for a send buffer");
			return;
		}
		int n = BIO_read(c->out_spill, c->c_out.data, (int)out_cap(c));
		if (n <= 0) {
			kg_conn_close(c, "cannot read queued TLS records");
			return;
		}
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
		kg_conn_close_err(c, "client send", -res);
		return;
	}
	c->c_out.off += (uint32_t)res;
	if (c->state == KG_CONN_FORWARDING)
		kg_conn_touch(c);
	kg_conn_flush_client(c);
}

void kg_conn_close_err(struct kg_conn *c, const char *what, int err)
{
	char why[96];
	snprintf(why, sizeof(why), "%s: %s", what, err == 0 ? "no progress" : strerror(err));
	kg_conn_close(c, why);
}

void kg_conn_close(struct kg_conn *c, const char *reason)
{
	if (c->state == KG_CONN_CLOSING)
		return;
	enum kg_conn_state was = c->state;
	c->state = KG_CONN_CLOSING;
	/* The next tick frees it if no completion does first. */
	kg_conn_timer_at(c, c->worker->now_ms);
	log_debug("conn.closed", KV("listener", c->listener->conf->name),
		  KV("worker", c->worker->id), KV("conn", c->idx), KV("reason", reason));
	if (c->fwd && c->fwd->on_close)
		c->fwd->on_close(c);
	/* shutdown() completes pending recv/send/poll on these sockets, so
	 * the in-flight count drains promptly; queued data is still sent.
	 * SHUT_RD wakes them too but sends no FIN, for kg_conn_reset. */
	int how = c->reset ? SHUT_RD : SHUT_RDWR;
	shutdown(c->cfd, how);
	if (c->bfd >= 0 && was != KG_CONN_CONNECTING)
		shutdown(c->bfd, how);
	if (was == KG_CONN_CONNECTING && c->bfd >= 0) {
		struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
		io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_BACKEND_CONNECT, c->idx, c->bfd), 0);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, c->idx, -1));
	}
}

/* SO_LINGER 0 makes close() send RST. Best effort: if it fails, the
 * close is a FIN. */
static void linger_zero(int fd)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) == -1)
		log_warn("conn.linger_failed", KV("fd", fd), KV_ERRNO(errno));
}

void kg_conn_reset(struct kg_conn *c, const char *reason)
{
	if (c->state == KG_CONN_CLOSING)
		return;
	c->reset = true;
	linger_zero(c->cfd);
	linger_zero(c->bfd);
	kg_conn_close(c, reason);
}

bool kg_conn_release_if_idle(struct kg_conn *c)
{
	if (c->inflight > 0)
		return false;
	struct kg_worker *w = c->worker;
	kg_wheel_cancel(&w->timers, &c->timer);
	if (c->fwd && c->fwd->release)
		c->fwd->release(c);
	if (c->ocsp_on)
		kg_ocsp_abandon(c->ssl, &c->ocsp);
	SSL_free(c->ssl);
	free(c->ktls);
	close(c->cfd);
	if (c->bfd >= 0)
		close(c->bfd);
	conn_release_buffers(c);
	if (c->member_counted)
		kg_health_conn_end(c->group->health, (size_t)c->member);
	/* Snapshot first: the slot itself is never freed, only reused once
	 * its active count is back to 0. */
	struct kg_listener_slot *slot = c->listener->slot;
	kg_listener_put(c->listener);
	atomic_fetch_sub(&slot->active, 1);
	kg_count(w, closed);
	w->conns[c->idx] = NULL;
	w->free_slots[w->n_free++] = c->idx;
	w->n_conns--;
	kg_worker_conns_changed(w);
	/* Scans (drain, cuts) look at [0, high_water): it comes down as the
	 * highest slots empty (free slots are reused lowest first). */
	while (w->high_water > 0 && !w->conns[w->high_water - 1])
		w->high_water--;
	free(c);
	return true;
}

uint64_t kg_conn_check_deadline(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	if (c->state == KG_CONN_CLOSING)
		return 0;
	if (c->fwd && c->fwd->check_deadline)
		return c->fwd->check_deadline(c); /* https: request, keep-alive and response timeouts */
	if (w->now_ms < c->deadline_ms)
		return c->deadline_ms;
	if (c->state == KG_CONN_HANDSHAKE) {
		char peer[64];
		conn_peer(c, peer, sizeof(peer));
		kg_count(w, handshake_timeout);
		kg_worker_warn(w, "tls.handshake_timeout", KV("listener", c->listener->conf->name),
			       KV("client", peer));
		kg_conn_close(c, "handshake timeout");
	} else if (c->state == KG_CONN_FORWARDING || c->state == KG_CONN_HANDOFF) {
		kg_count(w, idle_timeout);
		kg_conn_close(c, "idle timeout");
	}
	/* CONNECTING: the connect's linked timeout ends it. */
	return c->state == KG_CONN_CLOSING ? 0 : c->deadline_ms;
}

/* An idle connection's memory BIOs, grown by a burst, are replaced by
 * empty ones (OpenSSL's memory BIOs never shrink). True when that is still
 * to do: the connection was not idle long enough yet. */
static bool trim_idle(struct kg_conn *c)
{
	const struct kg_worker *w = c->worker;
	bool userspace = c->path == KG_PATH_USERSPACE || c->path == KG_PATH_HTTP ||
			 c->path == KG_PATH_H2;
	if (!c->ssl || c->bio_grown < BIO_TRIM_BYTES || c->state == KG_CONN_CLOSING ||
	    (c->state == KG_CONN_FORWARDING && !userspace))
		return false;
	if (c->state != KG_CONN_FORWARDING || c->c_send_busy || c->c_out.data ||
	    BIO_pending(c->net_in) > 0 || kg_client_spill_pending(c) > 0)
		return true;
	/* Idle: no byte moved for KG_TRIM_IDLE_MS (kg_conn_touch pushes the
	 * deadline on every byte). */
	uint64_t idle_ms = c->listener->conf->idle_timeout_ms;
	if (c->deadline_ms > w->now_ms + idle_ms - KG_TRIM_IDLE_MS)
		return true;
	BIO_free(c->out_spill);
	c->out_spill = NULL;
	BIO *in = BIO_new(BIO_s_mem());
	if (!in)
		return true; /* keep the grown one; try again */
	/* The SSL frees the old one and owns the new one. */
	SSL_set0_rbio(c->ssl, in);
	c->net_in = in;
	c->bio_grown = 0;
	return false;
}

uint64_t kg_conn_on_timer(struct kg_conn *c)
{
	bool trim_later = trim_idle(c);
	uint64_t next = kg_conn_check_deadline(c);
	if (next == 0)
		return 0;
	uint64_t trim_at = c->worker->now_ms + KG_TRIM_IDLE_MS;
	return trim_later && trim_at < next ? trim_at : next;
}

void kg_conn_timer_at(struct kg_conn *c, uint64_t at)
{
	if (!kg_timer_armed(&c->timer) || at < c->timer.at)
		kg_wheel_arm(&c->worker->timers, &c->timer, at);
}
