/* https listeners: HTTP/1.x over mutual TLS, balanced per request.
 *
 * One request at a time per client connection (pipelined requests wait in
 * the buffer, so responses stay in order):
 *
 *   IDLE --first byte--> HEAD --head parsed--> CONNECT (new backend
 *   connection) or SEND (pooled one) --request sent--> WAIT --response
 *   complete--> IDLE (keep-alive) or CLOSING.
 *
 * The response is read concurrently with the request body (a backend may
 * answer early). Each direction holds at most one buffer: the request side
 * reads the next TLS record only when what it parsed has been sent to the
 * backend, the response side receives again only when the client has taken
 * everything (kg_conn_flush_client drained). Heads are rebuilt (hop-by-hop
 * headers dropped, identity headers replaced); body bytes, chunk framing
 * included, go through untouched.
 *
 * The backend socket in use sits in c->bfd with c->member counted active,
 * so conn.c's close and release paths cover it; between requests it goes
 * back to the worker's pool (backend_pool.h) or is closed.
 *
 * The client's plaintext comes from and goes to a client_io.h source:
 * OpenSSL over memory BIOs (path http-userspace-tls), or the client
 * socket itself after a kTLS handoff (path http-ktls-splice). On kTLS the
 * engine is the same, with three differences: the client socket is polled
 * for readiness instead of receiving through the ring; close_notify goes
 * out with a cmsg after the last queued byte; and a body framed by
 * Content-Length moves with splice (splice_pump.h) once the bytes already
 * buffered in userspace past the head are sent: the request's rest client
 * → pipe → backend, the response's rest backend → pipe → client after the
 * rewritten head has drained, exactly the remaining length either way, so
 * a pipelined request stays in the socket for the parser. The parser
 * never sees a spliced body; it is told the body was skipped
 * (kg_http_skip_body) and starts the next message fresh. Chunked bodies,
 * bodies delimited by the connection's end, and bytes already buffered
 * keep the copy through userspace (plaintext, no userspace crypto). */
#include "forward_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/x509.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "backend.h"
#include "backend_pool.h"
#include "client_io.h"
#include "conn.h"
#include "group.h"
#include "health.h"
#include "http.h"
#include "http_balance.h"
#include "ktls.h"
#include "listener.h"
#include "routes.h"
#include "runtime.h"
#include "sni.h"
#include "splice_pump.h"
#include "tunnel.h"
#include "worker.h"

enum req_state {
	R_IDLE,    /* between requests */
	R_HEAD,    /* reading a request head */
	R_CONNECT, /* connecting to the chosen member */
	R_SEND,    /* sending the head, then the body as it arrives */
	R_WAIT,    /* request sent, response still coming */
	R_CLOSING, /* last response (or an error) flushing; nothing else happens */
	R_TUNNEL,  /* the backend answered 101 to a WebSocket upgrade: bytes both ways */
};

struct kg_http_conn {
	const struct kg_client_io *io; /* where the client's plaintext comes from and goes to */
	enum req_state rstate;
	struct kg_http_msg req;
	struct kg_http_msg resp;

	/* Plaintext from the client: [0, rsent) forwarded or skipped,
	 * [rsent, rparsed) parsed and due to the backend, [rparsed, rlen)
	 * not parsed yet (pipelined requests wait here). Both buffers are
	 * lent (io_buf_get) only while they hold or await bytes: rbuf from a
	 * read until the connection is idle and empty again, bbuf while a
	 * backend connection is attached; an idle keep-alive connection
	 * holds neither (NULL). */
	unsigned char *rbuf;
	uint32_t rcap, rlen, rsent, rparsed;
	/* From the backend: [0, bparsed) handed to OpenSSL, the rest not yet.
	 * bcap bounds a response head; bsize is bbuf's size: bcap, or a
	 * batch (KG_BATCH_BYTES) once the backend sends a body faster than
	 * one buffer per receive (grow_body_buffer). */
	unsigned char *bbuf;
	uint32_t bcap, bsize, blen, bparsed;
	bool b_filled; /* the last receive filled bbuf: the backend had more ready */

	struct kg_http_client who; /* the client's address, identity, policy (http_balance.h) */
	bool drop_logged;        /* the connection's first dropped header was logged */
	struct kg_buf head;      /* the request head for the backend */
	uint32_t head_sent;
	struct kg_buf out;       /* response heads and errors for the client */
	bool sending_head;       /* the send in flight is from head */

	bool body_done;     /* the request message has been parsed to its end */
	bool resp_done;     /* the response message is complete */
	bool resp_started;  /* a final response head went to the client */
	bool close_after;   /* close the client connection after this response */
	bool client_done;   /* the client closed (FIN or close_notify) */
	bool reused;        /* this request's backend socket came from the pool */
	bool retried;       /* already retried once on a fresh connection */
	bool backend_dirty; /* the backend sent bytes past the response */
	bool backend_failed;
	int backend_fail_res;
	bool b_recv_busy, b_send_busy; /* a receive or send on the backend socket in flight */
	bool quickacked;    /* this response's partial arrival was acknowledged at once */

	/* kTLS only: Content-Length bodies spliced, and the readiness polls
	 * of both sockets (the client's also for reading heads). */
	struct kg_pump pump;
	bool c2b_splice;      /* the request body is being spliced */
	bool b2c_wait;        /* the response body will be spliced once the head drained */
	bool b2c_splice;      /* the response body is being spliced */
	bool notify_pending;  /* close_notify goes out once the queue drained */
	bool notify_blocked;  /* it found the socket's send buffer full: POLLOUT armed */
	atomic_uint_fast64_t spliced_c2b, spliced_b2c; /* the hops' counters */
	uint64_t seen_c2b, seen_b2c;       /* what of them went into the stats */

	uint64_t deadline_ms;
	uint64_t idle_since_ms; /* when the last exchange ended (R_IDLE) */
	uint64_t req_start_ms;
	uint64_t bytes_in, bytes_out;
	int status;
	char method[16];
	char target[160];
	/* The route the current request took, for the access log ("" without
	 * routes). */
	const char *route;

	/* WebSocket (RFC 6455) through the request above: the request asked
	 * for an upgrade (its backend socket never goes back to the pool);
	 * after the backend's 101 the connection is a tunnel (R_TUNNEL) until
	 * both streams ended. Userspace TLS copies through rbuf (client →
	 * backend) and bbuf (backend → client), one buffer each way, reading
	 * again only when the other side took everything; kTLS splices both
	 * ways with the pump's hops, unbounded. */
	bool upgrade;
	bool tunnel;          /* opened and not yet accounted for (http_on_close) */
	bool tunnel_wait;     /* kTLS: the 101 head drains; the hops start after */
	bool tunnel_spliced;  /* kTLS: the hops started */
	bool c2b_eof;         /* the client's stream ended (close_notify or FIN) */
	bool c2b_shut;        /* ... and the backend's write side was shut after it */
	bool b2c_eof;         /* the backend's stream ended (close_notify queued after it) */
	bool b2c_pending;     /* userspace: backend bytes queued for the client, not yet sent */
	struct kg_tunnel tun; /* limits and accounting (tunnel.h) */
};

static struct kg_http_conn *http_of(const struct kg_conn *c)
{
	return c->fwd_ctx;
}

/* The request, keep-alive or response deadline: the connection's timer
 * fires by then (a deadline set later than the timer is found when it
 * fires; an earlier one moves it). */
static void set_deadline(struct kg_conn *c, uint64_t at)
{
	http_of(c)->deadline_ms = at;
	kg_conn_timer_at(c, at);
}

static const struct kg_http_conf *conf_of(const struct kg_conn *c)
{
	return &c->listener->conf->http;
}

/* A cap-byte buffer: the worker's send-buffer pool serves the usual size
 * (max_header_bytes up to 16 KiB) and its batch pool a batch, other sizes
 * are allocated. The cap alone decides, so a buffer goes back where it
 * came from. */
static unsigned char *io_buf_get(struct kg_conn *c, uint32_t cap)
{
	if (cap <= KG_POOL_BUF_SIZE)
		return kg_buf_get(&c->worker->bufs);
	if (cap == KG_BATCH_BYTES)
		return kg_batch_get(&c->worker->bufs);
	return malloc(cap);
}

static void io_buf_put(struct kg_conn *c, unsigned char *buf, uint32_t cap)
{
	if (cap <= KG_POOL_BUF_SIZE)
		kg_buf_put(&c->worker->bufs, buf);
	else if (cap == KG_BATCH_BYTES)
		kg_batch_put(&c->worker->bufs, buf);
	else
		free(buf);
}

static void advance(struct kg_conn *c);
static void maybe_finish(struct kg_conn *c);
static void tunnel_begin(struct kg_conn *c);
static void tunnel_c2b(struct kg_conn *c);
static void tunnel_on_backend_recv(struct kg_conn *c, int res);
static void tunnel_on_backend_send(struct kg_conn *c, int res);
static void tunnel_pump(struct kg_conn *c);
static void tunnel_splice_start(struct kg_conn *c);
static void tunnel_check(struct kg_conn *c);

/* ---- client side ---- */

/* Queues plaintext for the client. 0, or -errno after closing. */
static int client_write(struct kg_conn *c, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	int r = http_of(c)->io->write(c, p, n);
	if (r < 0)
		return r;
	http_of(c)->bytes_out += n;
	kg_count_add(&c->worker->stats.forwarded_b2c, n);
	return 0;
}

/* close_notify after what is queued, then close. */
static void close_gracefully(struct kg_conn *c, const char *reason)
{
	struct kg_http_conn *h = http_of(c);
	h->rstate = R_CLOSING;
	set_deadline(c, c->worker->now_ms + conf_of(c)->request_timeout_ms);
	h->io->end(c);
	if (h->io->kernel)
		h->notify_pending = true; /* on_client_drained sends it */
	else
		c->close_after_flush = true;
	snprintf(c->close_reason, sizeof(c->close_reason), "%s", reason);
	kg_conn_flush_client(c);
}

/* kTLS: everything queued went out; close_notify follows, then close. */
static void send_close_notify(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	int r = kg_ktls_send_close_notify(c->cfd);
	if (r == -EAGAIN || r == -EWOULDBLOCK) {
		h->notify_blocked = true;
		kg_pump_poll(c, &h->pump, c->cfd, true);
		return;
	}
	/* Other errors: the client is gone; closing is all that is left. */
	h->notify_pending = false;
	kg_conn_close(c, c->close_reason);
}

static void access_log(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	const struct kg_http_conf *hc = conf_of(c);
	struct kg_worker *w = c->worker;
	if (!hc->access_log || atomic_load_explicit(&w->stats.http_requests, memory_order_relaxed) %
					   hc->access_log_sample != 0)
		return;
	const char *backend = c->member >= 0 ? c->group->conf->backends[c->member].address : "";
	/* Not level-tested: the operator asked for these lines. */
	kg_log_always(KG_LOG_INFO, "http.access", KV("listener", c->listener->conf->name),
		      KV("client", h->who.peer), KV("subject", h->who.subject), KV("proto", "http/1.1"),
		      KV("method", h->method),
		      KV("target", h->target), KV("status", h->status), KV("route", h->route),
		      KV("backend", backend),
		      KV("bytes_in", h->bytes_in), KV("bytes_out", h->bytes_out),
		      KV("ms", w->now_ms - h->req_start_ms));
}

/* The pool's key for the connection's group (http_balance.h). */
static uint32_t pool_key(const struct kg_conn *c)
{
	return kg_http_pool_key(c->listener, c->listener_idx, c->group);
}

/* The group of the request in h->req: the first route that matches, else
 * the listener's group; counted per route. False when there is neither
 * (the caller answers 404). */
static bool route_request(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	const struct kg_listener_rt *l = c->listener;
	h->route = "";
	if (!l->conf->routes) {
		c->group = l->group;
		return true;
	}
	struct kg_route_req q = {.target = (const char *)h->rbuf + h->req.url.off,
				 .target_len = h->req.url.len,
				 .method = kg_http_method(&h->req),
				 .cert_bits = h->who.route_cert_bits};
	for (unsigned i = 0; i < h->req.n_fields; i++) {
		const struct kg_http_field *f = &h->req.fields[i];
		if (kg_http_name_eq((const char *)h->rbuf + f->name.off, f->name.len, "host")) {
			q.host = (const char *)h->rbuf + f->value.off;
			q.host_len = f->value.len;
			break;
		}
	}
	c->group = kg_http_route(l, &q, &h->route);
	return c->group != NULL;
}

/* Gives the backend socket back to the pool, or closes it. Nothing may be
 * in flight on it. */
static void detach_backend(struct kg_conn *c, bool reusable)
{
	struct kg_http_conn *h = http_of(c);
	if (c->bfd < 0)
		return;
	const struct kg_backend_conf *b = &c->group->conf->backends[c->member];
	const struct kg_http_conf *hc = conf_of(c);
	if (!reusable || !kg_backend_pool_put(c->worker->pool, pool_key(c), &b->addr,
					      b->addrlen, c->bfd, hc->pool_max_idle,
					      hc->pool_idle_timeout_ms, c->worker->now_ms))
		close(c->bfd);
	c->bfd = -1;
	if (c->member_counted)
		kg_health_conn_end(c->group->health, (size_t)c->member);
	c->member_counted = false;
	h->reused = false;
	io_buf_put(c, h->bbuf, h->bsize);
	h->bbuf = NULL;
	h->blen = h->bparsed = 0;
}

/* A response made by kgate: 400, 403, 404, 408, 431, 502, 503, 504. The connection
 * closes after it, since the request stream cannot be trusted to resume.
 * After a response has started, the only honest signal is to close. */
static void reply_error(struct kg_conn *c, int status, const char *why)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	char reason[96];
	snprintf(reason, sizeof(reason), "HTTP %d: %s", status, why);
	if (h->rstate == R_CLOSING)
		return;
	if (c->bfd >= 0) {
		/* Ends the backend's operations; conn.c closes the socket. */
		shutdown(c->bfd, SHUT_RDWR);
	}
	if (h->resp_started) {
		kg_conn_close(c, reason);
		return;
	}
	kg_count(w, http_errors);
	kg_worker_warn(w, "http.error_response", KV("listener", c->listener->conf->name),
		       KV("client", h->who.peer), KV("status", status),
		       KV("status_text", kg_http_reason(status)), KV("reason", why));
	h->status = status;
	if (!h->method[0])
		snprintf(h->method, sizeof(h->method), "-");
	if (kg_http_build_error(&h->out, status) < 0) {
		kg_conn_close(c, "out of memory");
		return;
	}
	h->resp_started = true;
	if (client_write(c, h->out.data, h->out.len) < 0)
		return;
	access_log(c);
	close_gracefully(c, reason);
}

/* The client closed its side: fine between requests, an abort otherwise. */
static void client_gone(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (h->rstate == R_IDLE && h->rlen == h->rparsed)
		close_gracefully(c, "client closed");
	else
		kg_conn_close(c, "client closed mid-request");
}

/* Reads plaintext into rbuf. True when some arrived; false when the
 * caller must wait (a receive or poll is armed) or the connection is
 * closing. */
static bool read_client(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (h->client_done) {
		client_gone(c);
		return false;
	}
	if (!h->rbuf && !(h->rbuf = io_buf_get(c, h->rcap))) {
		kg_conn_close(c, "out of memory for a request buffer");
		return false;
	}
	int n = h->io->read(c, h->rbuf + h->rlen, h->rcap - h->rlen);
	if (n > 0) {
		h->rlen += (uint32_t)n;
		kg_count_add(&c->worker->stats.forwarded_c2b, (uint64_t)n);
		h->pump.spurious = 0;
		return true;
	}
	if (h->rstate == R_IDLE && h->rlen == 0) {
		/* Nothing between requests: the buffer goes back. */
		io_buf_put(c, h->rbuf, h->rcap);
		h->rbuf = NULL;
	}
	if (n == KG_CIO_WANT && h->io->kernel) {
		kg_pump_wait_client_in(c, &h->pump);
	} else if (n == KG_CIO_EOF) {
		h->client_done = true;
		client_gone(c);
	}
	return false;
}

/* ---- backend side ---- */

/* Where a receive into bbuf may end: a head stays within bcap, a body
 * may fill the buffer. */
static uint32_t recv_limit(const struct kg_http_conn *h)
{
	if (h->resp.phase == KG_HTTP_PHASE_BODY || h->bsize < h->bcap)
		return h->bsize;
	return h->bcap;
}

static void arm_backend_recv(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (h->b_recv_busy || h->resp_done || c->bfd < 0 || h->rstate == R_CLOSING ||
	    h->blen >= recv_limit(h) || h->b2c_wait || h->b2c_splice)
		return;
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_recv(sqe, c->bfd, h->bbuf + h->blen, recv_limit(h) - h->blen, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HTTP_BACKEND_RECV, c->idx, c->bfd));
	h->b_recv_busy = true;
	c->inflight++;
}

static void send_backend(struct kg_conn *c, const void *p, size_t n, bool head)
{
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_send(sqe, c->bfd, p, n, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HTTP_BACKEND_SEND, c->idx, c->bfd));
	struct kg_http_conn *h = http_of(c);
	h->b_send_busy = true;
	h->sending_head = head;
	c->inflight++;
}

/* Something is in flight on the backend socket: a receive, a send, or a
 * readiness poll of a spliced body. */
static bool backend_busy(const struct kg_conn *c)
{
	const struct kg_http_conn *h = http_of(c);
	return h->b_send_busy || h->b_recv_busy || h->pump.b_in_armed || h->pump.b_out_armed;
}

/* The request goes to member m over fd. */
static void attach_backend(struct kg_conn *c, int m, int fd, bool reused)
{
	struct kg_http_conn *h = http_of(c);
	c->bfd = fd;
	c->member = m;
	kg_health_conn_start(c->group->health, (size_t)m);
	c->member_counted = true;
	/* A member disabled while this connect was on its way: the workers'
	 * cut scan has run for that change already. */
	if (kg_conn_cut_now(c))
		return;
	h->reused = reused;
	h->backend_dirty = false;
	h->backend_failed = false;
	h->blen = h->bparsed = 0;
	h->resp_done = false;
	kg_http_restart(&h->resp);
	h->resp.head_only_response = kg_http_is_head_method(&h->req);
	h->rstate = R_SEND;
	set_deadline(c, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	h->b_filled = false;
	if (!h->bbuf) {
		h->bsize = h->bcap;
		h->bbuf = io_buf_get(c, h->bsize);
	}
	if (!h->bbuf) {
		kg_conn_close(c, "out of memory for a response buffer"); /* closes fd too */
		return;
	}
	arm_backend_recv(c);
}

/* Smooth weighted round robin over members in rotation, per request: a
 * pooled connection of the chosen member if there is a live one, else a
 * new connect (failed ones are skipped, up to connect_retries more). */
static void pick_backend(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	int m, fd, status;

	switch (kg_http_pick(w, c->listener, c->listener_idx, c->group, &c->walk, &m, &fd,
			     &status)) {
	case KG_HTTP_PICK_NONE:
		reply_error(c, status, status == 502 ? "no backend could be connected"
						     : "no backend in rotation");
		return;
	case KG_HTTP_PICK_POOLED:
		attach_backend(c, m, fd, true);
		advance(c);
		return;
	case KG_HTTP_PICK_CONNECT:
		break;
	}
	int r = kg_conn_submit_connect(c, m, KG_OP_HTTP_CONNECT);
	if (r < 0) {
		char why[64];
		snprintf(why, sizeof(why), "backend socket: %s", strerror(-r));
		reply_error(c, 502, why);
		return;
	}
	kg_count(w, http_backend_connects);
	h->rstate = R_CONNECT;
}

static void on_connect(struct kg_conn *c, int fd, int res)
{
	struct kg_http_conn *h = http_of(c);
	c->inflight--;
	if (c->state != KG_CONN_FORWARDING || h->rstate != R_CONNECT)
		return;
	if (res == 0) {
		/* fd is c->bfd, the one backend socket: attached afresh. */
		c->bfd = -1;
		attach_backend(c, c->member, fd, false);
		advance(c);
		return;
	}
	kg_conn_connect_failed(c, res);
	pick_backend(c);
}

/* The backend connection broke (reset, EOF before the response ended, a
 * send error). Once nothing is in flight on it: a pooled connection that
 * the backend had closed while idle gets the request again on a fresh one
 * (once, and only for a request without a body: nothing was lost);
 * otherwise 502, or a close if the response had started. */
static void backend_broke(struct kg_conn *c, int res)
{
	struct kg_http_conn *h = http_of(c);
	if (!h->backend_failed) {
		h->backend_failed = true;
		h->backend_fail_res = res;
		if (backend_busy(c))
			shutdown(c->bfd, SHUT_RDWR); /* completes the other operation */
	}
	if (backend_busy(c))
		return;
	bool may_retry = h->reused && !h->retried && !h->resp_started && h->bparsed == 0 &&
			 h->blen == 0 && !kg_http_has_body(&h->req);
	detach_backend(c, false);
	if (may_retry) {
		h->retried = true;
		h->head_sent = 0;
		c->walk.attempts = 0;
		log_debug("http.pool_retry", KV("listener", c->listener->conf->name),
			  KV("reason", "pooled backend connection was closed; request sent again"));
		pick_backend(c);
		return;
	}
	char why[96];
	snprintf(why, sizeof(why), "backend connection %s before the response ended",
		 h->backend_fail_res == 0 ? "closed" : strerror(-h->backend_fail_res));
	reply_error(c, 502, why);
}

/* ---- spliced bodies (kTLS) ---- */

/* The hops' byte counters into the worker's stats and the access log. */
static void account_spliced(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_counters *st = &c->worker->stats;
	uint64_t spliced_c2b = atomic_load_explicit(&h->spliced_c2b, memory_order_relaxed);
	uint64_t spliced_b2c = atomic_load_explicit(&h->spliced_b2c, memory_order_relaxed);
	uint64_t in = spliced_c2b - h->seen_c2b, out = spliced_b2c - h->seen_b2c;
	h->seen_c2b = spliced_c2b;
	h->seen_b2c = spliced_b2c;
	kg_count_add(&st->forwarded_c2b, in);
	kg_count_add(&st->http_spliced_c2b, in);
	kg_count_add(&st->forwarded_b2c, out);
	kg_count_add(&st->http_spliced_b2c, out);
	h->bytes_in += in;
	h->bytes_out += out;
}

/* Starts hop for left bytes from src to dst; its pipe is made on first
 * use and kept for the connection's life. False when no pipe could be
 * made: the body is copied instead. */
static bool start_hop(struct kg_conn *c, struct kg_hop *hop, atomic_uint_fast64_t *counter, int src,
		      int dst, uint64_t left)
{
	if (hop->queued > 0)
		return false; /* an abandoned body's bytes: never ahead of another's */
	if (hop->pipe_r < 0) {
		int r = kg_hop_init(hop, false, counter);
		if (r < 0) {
			kg_hop_free(hop);
			kg_hop_stop(hop);
			log_debug("http.body_copied", KV("listener", c->listener->conf->name),
				  KV("reason", "no pipe for splicing"), KV_ERRNO(-r));
			return false;
		}
	}
	kg_hop_start(hop, src, dst, left);
	hop->src_ktls = src == c->cfd;
	hop->dst_ktls = dst == c->cfd;
	return true;
}

/* A spliced body's hop, *running, ended: 1 when it delivered its whole
 * length, 0 when it goes on, -1 after closing c (the source ended early:
 * short_why). */
static int body_end(struct kg_conn *c, struct kg_hop *hop, bool *running, const char *short_why)
{
	if (!*running || !hop->done)
		return 0;
	*running = false;
	kg_hop_stop(hop);
	if (hop->short_eof) {
		kg_conn_close(c, short_why);
		return -1;
	}
	return 1;
}

/* Runs the spliced bodies and notices their ends: a request body spliced
 * to its end completes the request, a response body the response. The
 * caller goes on with advance/maybe_finish. */
static void pump_bodies(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (!h->c2b_splice && !h->b2c_splice)
		return; /* the wake-up was for a head or close_notify */
	bool moved = kg_pump_move(c, &h->pump);
	account_spliced(c);
	if (c->state != KG_CONN_FORWARDING || h->rstate == R_CLOSING)
		return;
	if (moved)
		set_deadline(c, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	int r = body_end(c, &h->pump.c2b, &h->c2b_splice, "client closed mid-request");
	if (r < 0)
		return;
	if (r > 0) {
		kg_http_skip_body(&h->req);
		h->body_done = true;
	}
	r = body_end(c, &h->pump.b2c, &h->b2c_splice, "backend closed mid-response");
	if (r < 0)
		return;
	if (r > 0) {
		kg_http_skip_body(&h->resp);
		h->resp_done = true;
	}
	kg_pump_wait(c, &h->pump, moved);
}

/* The request side has sent everything it parsed and the body goes on:
 * on kTLS a Content-Length body is spliced from here. True when the splice
 * started (it may have ended already: body_done). */
static bool start_c2b_splice(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	uint64_t left = h->io->kernel ? kg_http_body_left(&h->req) : 0;
	if (left == 0 || h->rparsed != h->rlen || h->client_done ||
	    !start_hop(c, &h->pump.c2b, &h->spliced_c2b, c->cfd, c->bfd, left))
		return false;
	h->c2b_splice = true;
	pump_bodies(c);
	return true;
}

/* ---- request side ---- */

/* Counts what the request rewrite dropped or refused, and logs the
 * connection's first such header at debug level: a client that sends them
 * on every request is told about once, not per request. */
static void count_screened(struct kg_conn *c, const struct kg_http_screen *sc)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	kg_count_add(&w->stats.http_hdr_dropped_reserved, sc->dropped[KG_HTTP_DROP_RESERVED]);
	kg_count_add(&w->stats.http_hdr_dropped_underscore, sc->dropped[KG_HTTP_DROP_UNDERSCORE]);
	if (sc->rejected)
		kg_count(w, http_rejected_underscore);
	bool any = sc->rejected || sc->dropped[KG_HTTP_DROP_RESERVED] ||
		   sc->dropped[KG_HTTP_DROP_UNDERSCORE];
	if (!any || h->drop_logged)
		return;
	h->drop_logged = true;
	if (kg_log_level < KG_LOG_DEBUG)
		return; /* the name is copied only for a line that is written */
	char name[80];
	snprintf(name, sizeof(name), "%.*s", (int)sc->first_len, sc->first);
	log_debug("http.header_dropped", KV("listener", c->listener->conf->name),
		  KV("client", h->who.peer), KV("header", name),
		  KV("reason", kg_http_drop_names[sc->first_why]),
		  KV("action", sc->rejected ? "reject" : "drop"));
}

/* Whether the host named by value[0..len) (a Host value) is served under the client policy of
 * the connection's handshake: by the sni entry with that name, else by
 * the listener's own settings, which strict_sni gives no name. */
static bool host_allowed(struct kg_conn *c, const char *value, size_t len)
{
	return kg_http_host_allowed(c->listener->conf, http_of(c)->who.policy, value, len);
}

/* On a listener with sni entries: true when the request is for a host
 * that another client policy serves (RFC 9110 15.5.20 421). A client that
 * connected under a name without client certificates must not reach,
 * on the same connection, a name that requires them. Every Host field
 * counts (an absolute-form target, which could name another host, is
 * refused by http.c); a request without one is for the listener's own
 * settings. */
static bool misdirected(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	const char *base = (const char *)h->rbuf;
	bool named = false;
	if (c->listener->conf->n_sni == 0)
		return false;
	for (unsigned i = 0; i < h->req.n_fields; i++) {
		const struct kg_http_field *f = &h->req.fields[i];
		if (!kg_http_name_eq(base + f->name.off, f->name.len, "host"))
			continue;
		named = true;
		if (!host_allowed(c, base + f->value.off, f->value.len))
			return true;
	}
	return !named && !host_allowed(c, "", 0);
}

static void start_request(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	kg_count(w, http_requests);
	snprintf(h->method, sizeof(h->method), "%s", kg_http_method(&h->req));
	snprintf(h->target, sizeof(h->target), "%.*s", (int)h->req.url.len,
		 (const char *)h->rbuf + h->req.url.off);
	h->close_after = !kg_http_keep_alive(&h->req) || w->draining;
	/* The last request's member (and group) are not this one's: the
	 * access log and errors must not name them (the backend socket went
	 * back to the pool when that exchange ended). */
	c->member = -1;
	c->group = NULL;
	if (c->access_denied_rule) {
		/* access_denied_response 403: nothing reaches a backend, and the
		 * connection closes after the answer. */
		char why[128];
		snprintf(why, sizeof(why), "access denied by rule \"%.80s\"", c->access_denied_rule);
		reply_error(c, 403, why);
		return;
	}
	if (c->listener->conf->backend_protocol == KG_BP_H2) {
		/* Requests are not translated from HTTP/1.1 into HTTP/2 streams
		 * (gRPC needs HTTP/2 end to end anyway). */
		reply_error(c, 505, "backend_protocol is h2: this listener forwards HTTP/2 only");
		return;
	}
	if (misdirected(c)) {
		kg_count(w, http_misdirected);
		reply_error(c, 421, "the Host is served under another client policy than this "
				    "connection's server name");
		return;
	}
	struct kg_http_screen screen;
	int r = kg_http_build_request(&h->head, &h->req, &h->who.ident, &screen);
	count_screened(c, &screen);
	if (r == -EPERM) {
		reply_error(c, 400, "underscore in a header name");
		return;
	}
	/* A WebSocket handshake keeps the Upgrade and Connection the builder
	 * dropped as hop-by-hop; the Sec-WebSocket-* fields pass as any. */
	h->upgrade = r == 0 && kg_http_websocket_upgrade(&h->req);
	if (h->upgrade)
		r = kg_http_add_upgrade(&h->head);
	if (r < 0) {
		reply_error(c, 500, "out of memory");
		return;
	}
	h->head_sent = 0;
	h->quickacked = false;
	h->rsent = h->rparsed; /* the client's own head is replaced by h->head */
	h->bytes_in = h->req.head_len;
	h->retried = false;
	c->walk.tried = 0;
	c->walk.attempts = 0;
	if (!route_request(c)) {
		reply_error(c, 404, "no route matched and no default group");
		return;
	}
	pick_backend(c);
}

/* Parses the request head from rbuf. False when more bytes are needed. */
static bool parse_head(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	const struct kg_http_conf *hc = conf_of(c);
	size_t used;
	int status = 0;
	const char *why = "";

	if (h->rstate == R_IDLE) {
		h->rstate = R_HEAD;
		h->req_start_ms = c->worker->now_ms;
		set_deadline(c, c->worker->now_ms + hc->request_timeout_ms);
		h->status = 0;
		h->method[0] = h->target[0] = '\0';
		h->route = "";
		h->resp_started = false;
		h->body_done = false;
		h->bytes_in = h->bytes_out = 0;
	}
	enum kg_http_step st = kg_http_feed(&h->req, h->rbuf, h->rbuf + h->rparsed,
					    h->rlen - h->rparsed, &used, &status, &why);
	h->rparsed += (uint32_t)used;
	switch (st) {
	case KG_HTTP_MORE:
		if (h->rlen >= hc->max_header_bytes || h->rlen == h->rcap) {
			reply_error(c, 431, "request head too large");
			return true;
		}
		return false;
	case KG_HTTP_HEAD:
		if (h->req.head_len > hc->max_header_bytes) {
			reply_error(c, 431, "request head too large");
			return true;
		}
		start_request(c);
		return true;
	case KG_HTTP_DONE: /* not before the head */
	case KG_HTTP_ERROR:
		break;
	}
	reply_error(c, status ? status : 400, why);
	return true;
}

/* Parses body bytes [rparsed, rlen); they are sent as they are. */
static void parse_body(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	size_t used;
	int status = 0;
	const char *why = "";
	enum kg_http_step st = kg_http_feed(&h->req, h->rbuf, h->rbuf + h->rparsed,
					    h->rlen - h->rparsed, &used, &status, &why);
	h->rparsed += (uint32_t)used;
	h->bytes_in += used;
	if (st == KG_HTTP_DONE) {
		h->body_done = true;
	} else if (st == KG_HTTP_ERROR) {
		if (h->req.reserved_trailer)
			kg_count(c->worker, http_rejected_trailer);
		reply_error(c, 400, why);
	}
}

/* Moves pipelined bytes to the front: a head is parsed from offset 0. */
static void compact_request(struct kg_http_conn *h)
{
	uint32_t rest = h->rlen - h->rparsed;
	if (rest > 0 && h->rparsed > 0)
		memmove(h->rbuf, h->rbuf + h->rparsed, rest);
	h->rlen = rest;
	h->rparsed = h->rsent = 0;
}

/* Does whatever the request side can do now, until it has to wait. */
static void advance(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	for (;;) {
		if (c->state != KG_CONN_FORWARDING)
			return;
		switch (h->rstate) {
		case R_IDLE:
		case R_HEAD:
			if (h->rlen > h->rparsed && parse_head(c))
				continue;
			if (h->rlen == h->rcap) {
				reply_error(c, 431, "request head too large");
				return;
			}
			if (!read_client(c))
				return;
			continue;
		case R_SEND:
			if (h->b_send_busy || h->c2b_splice)
				return;
			if (h->head_sent < h->head.len) {
				send_backend(c, h->head.data + h->head_sent,
					     h->head.len - h->head_sent, true);
				return;
			}
			if (h->rsent < h->rparsed) {
				send_backend(c, h->rbuf + h->rsent, h->rparsed - h->rsent, false);
				return;
			}
			if (h->body_done) {
				h->rstate = R_WAIT;
				maybe_finish(c);
				return;
			}
			if (h->rparsed == h->rlen)
				h->rlen = h->rsent = h->rparsed = 0; /* all sent: reuse the buffer */
			{
				uint32_t before = h->rparsed;
				parse_body(c);
				if (h->rstate != R_SEND)
					return;
				if (h->rparsed > before || h->body_done)
					continue;
			}
			if (start_c2b_splice(c))
				continue;
			if (!read_client(c))
				return;
			continue;
		case R_TUNNEL:
			tunnel_c2b(c);
			return;
		case R_CONNECT:
		case R_WAIT:
		case R_CLOSING:
			return;
		}
	}
}

static void on_client_data(struct kg_conn *c)
{
	advance(c);
}

static void on_backend_send(struct kg_conn *c, int res)
{
	struct kg_http_conn *h = http_of(c);
	c->inflight--;
	h->b_send_busy = false;
	if (c->state != KG_CONN_FORWARDING || h->rstate == R_CLOSING)
		return;
	if (h->rstate == R_TUNNEL) {
		tunnel_on_backend_send(c, res);
		return;
	}
	if (h->resp_done) {
		/* The response ended while the request was still going out:
		 * maybe_finish shut the socket and waited for this send. */
		maybe_finish(c);
		return;
	}
	if (h->backend_failed || res <= 0) {
		backend_broke(c, res == 0 ? -EPIPE : res);
		return;
	}
	if (h->sending_head)
		h->head_sent += (uint32_t)res;
	else
		h->rsent += (uint32_t)res;
	set_deadline(c, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	if (h->resp_done)
		maybe_finish(c);
	else
		advance(c);
}

/* ---- response side ---- */

/* Parses what the backend sent and hands it to OpenSSL: the head rebuilt,
 * body bytes as they are. */
static void process_response(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	while (!h->resp_done && h->bparsed < h->blen + (h->resp.phase == KG_HTTP_PHASE_BODY)) {
		size_t used;
		int status = 0;
		const char *why = "";
		uint32_t from = h->bparsed;
		enum kg_http_step st = kg_http_feed(&h->resp, h->bbuf, h->bbuf + from,
						    h->blen - from, &used, &status, &why);
		h->bparsed += (uint32_t)used;
		switch (st) {
		case KG_HTTP_HEAD: {
			int code = kg_http_status(&h->resp);
			bool interim = code < 200;
			if (code == 101) {
				if (!h->upgrade || !kg_http_websocket_upgrade(&h->resp)) {
					reply_error(c, 502, "backend switched protocols unasked");
					return;
				}
				/* A backend cannot have read a head still on its
				 * way: bytes of both would interleave. */
				if (h->rstate != R_WAIT) {
					reply_error(c, 502, "backend switched protocols before the "
							    "request was sent");
					return;
				}
				tunnel_begin(c);
				return;
			}
			if (!interim) {
				h->status = code;
				h->close_after = h->close_after || kg_http_needs_eof(&h->resp) ||
						 c->worker->draining;
			}
			bool ka10 = kg_http_minor(&h->req) == 0;
			if (kg_http_build_response(&h->out, &h->resp, !interim && h->close_after,
						   !interim && ka10) < 0) {
				kg_conn_close(c, "out of memory");
				return;
			}
			if (!interim)
				h->resp_started = true;
			if (client_write(c, h->out.data, h->out.len) < 0)
				return;
			continue;
		}
		case KG_HTTP_MORE:
			if (h->resp.phase == KG_HTTP_PHASE_BODY &&
			    client_write(c, h->bbuf + from, used) < 0)
				return;
			if (h->io->kernel && kg_http_body_left(&h->resp) > 0) {
				/* The rest is spliced once the head and the
				 * bytes above reached the socket: on_client_drained. */
				h->b2c_wait = true;
				kg_conn_flush_client(c);
				return;
			}
			if (h->resp.phase == KG_HTTP_PHASE_HEAD && h->blen >= h->bcap) {
				reply_error(c, 502, "response head too large");
				return;
			}
			goto out;
		case KG_HTTP_DONE:
			if (client_write(c, h->bbuf + from, used) < 0)
				return;
			if (kg_http_status(&h->resp) < 200) {
				/* The final response follows; its head is parsed
				 * from offset 0 like every head. */
				kg_http_next(&h->resp);
				h->resp.head_only_response = kg_http_is_head_method(&h->req);
				memmove(h->bbuf, h->bbuf + h->bparsed, h->blen - h->bparsed);
				h->blen -= h->bparsed;
				h->bparsed = 0;
				continue;
			}
			h->resp_done = true;
			if (h->bparsed < h->blen)
				h->backend_dirty = true; /* bytes nobody asked for */
			goto out;
		case KG_HTTP_ERROR:
			if (h->resp_started) {
				kg_conn_close(c, "malformed response body from backend");
				return;
			}
			reply_error(c, 502, why);
			return;
		}
	}
out:
	kg_conn_flush_client(c);
	if (c->state != KG_CONN_FORWARDING || h->rstate == R_CLOSING)
		return;
	if (h->resp_done)
		maybe_finish(c);
	else if (h->resp.phase == KG_HTTP_PHASE_HEAD)
		arm_backend_recv(c); /* nothing went to the client: read on */
}

/* A response came in part (typically its head) and the rest is due.
 * Many backends (Python's http.server, small servers) write the head and
 * the body in two sends with Nagle on: the body waits until the head is
 * acknowledged, and this socket, in delayed-ACK ("ping-pong") mode after
 * the request it sent, would acknowledge 40 ms later. TCP_QUICKACK sends
 * the pending ACK now and leaves ping-pong mode for the rest of this
 * response. Once per response: a response that arrives in one read costs
 * nothing. A refused setsockopt only means the 40 ms stay: not an error. */
static void ack_partial_response(struct kg_conn *c)
{
	http_of(c)->quickacked = true;
	kg_http_quickack(c->worker, c->bfd);
}

static void on_backend_recv(struct kg_conn *c, int res)
{
	struct kg_http_conn *h = http_of(c);
	c->inflight--;
	h->b_recv_busy = false;
	if (c->state != KG_CONN_FORWARDING || h->rstate == R_CLOSING)
		return;
	if (h->rstate == R_TUNNEL) {
		tunnel_on_backend_recv(c, res);
		return;
	}
	if (h->backend_failed) {
		backend_broke(c, h->backend_fail_res);
		return;
	}
	if (res < 0) {
		backend_broke(c, res);
		return;
	}
	if (res == 0) {
		if (kg_http_eof(&h->resp) == KG_HTTP_DONE) {
			/* The body ran to the connection's end (close_after is set). */
			h->resp_done = true;
			h->backend_dirty = true;
			kg_conn_flush_client(c);
			if (c->state == KG_CONN_FORWARDING)
				maybe_finish(c);
			return;
		}
		backend_broke(c, 0);
		return;
	}
	h->blen += (uint32_t)res;
	h->b_filled = h->blen >= recv_limit(h);
	set_deadline(c, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	process_response(c);
	if (c->state == KG_CONN_FORWARDING && c->bfd >= 0 && !h->resp_done && !h->quickacked &&
	    h->rstate != R_TUNNEL)
		ack_partial_response(c);
}

/* bbuf is empty in the middle of a response body. When the last receive
 * filled it, the backend sends faster than a buffer per receive: a batch
 * buffer takes up to four records' worth per receive, and they leave in
 * one send (kg_client_out_expect), a quarter of the calls on both
 * sockets. It goes back when the backend connection is detached, at the
 * end of the exchange, so an idle connection holds none; a slow body
 * (events, a trickle) never fills the buffer and keeps the small one. */
static void grow_body_buffer(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (!h->b_filled || h->bsize >= KG_BATCH_BYTES)
		return;
	unsigned char *b = io_buf_get(c, KG_BATCH_BYTES);
	if (!b)
		return; /* the buffer it has serves, a receive at a time */
	io_buf_put(c, h->bbuf, h->bsize);
	h->bbuf = b;
	h->bsize = KG_BATCH_BYTES;
}

static void on_client_drained(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (h->rstate == R_CLOSING) {
		if (h->notify_pending)
			send_close_notify(c);
		return;
	}
	if (h->rstate == R_TUNNEL) {
		if (h->tunnel_wait) {
			h->tunnel_wait = false;
			tunnel_c2b(c); /* starts the hops once the early bytes went */
		} else if (h->b2c_pending) {
			/* The client took the last bytes: the buffer takes more. */
			h->b2c_pending = false;
			arm_backend_recv(c);
		}
		return;
	}
	if (h->b2c_wait && c->bfd >= 0) {
		h->b2c_wait = false;
		h->blen = h->bparsed = 0; /* all of it went to the client */
		if (start_hop(c, &h->pump.b2c, &h->spliced_b2c, c->bfd, c->cfd,
			      kg_http_body_left(&h->resp))) {
			h->b2c_splice = true;
			pump_bodies(c);
			if (c->state == KG_CONN_FORWARDING && h->resp_done)
				maybe_finish(c);
			return;
		}
		arm_backend_recv(c); /* no pipe: copy */
		return;
	}
	if (c->bfd < 0 || h->resp_done || h->b_recv_busy ||
	    h->resp.phase != KG_HTTP_PHASE_BODY || h->bparsed < h->blen)
		return;
	/* The client took everything: the buffer is free for more. */
	h->blen = h->bparsed = 0;
	grow_body_buffer(c);
	arm_backend_recv(c);
}

/* The response is complete. Once the request is sent too and nothing is in
 * flight on the backend socket, the exchange ends: log, park or close the
 * backend connection, and go on with the next request or close. */
static void maybe_finish(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	if (!h->resp_done || h->rstate == R_CLOSING)
		return;
	if (h->rstate != R_WAIT) {
		/* The backend answered before the whole request was read: the
		 * rest of the client's stream cannot be resynchronised. */
		h->close_after = true;
		h->backend_dirty = true;
		if (h->c2b_splice) {
			h->c2b_splice = false;
			kg_hop_stop(&h->pump.c2b);
		}
		if (backend_busy(c)) {
			shutdown(c->bfd, SHUT_RDWR);
			return; /* back here from the send's or poll's completion */
		}
	}
	if (backend_busy(c))
		return;
	/* A backend asked for an upgrade that it refused may still think of
	 * one: its socket is not lent to another client. */
	bool reusable = !h->backend_dirty && !h->upgrade && kg_http_keep_alive(&h->resp) &&
			!w->draining;
	if (!reusable)
		log_debug("http.backend_not_kept", KV("listener", c->listener->conf->name),
			  KV("reason", h->backend_dirty ? "stream not clean"
				       : h->upgrade   ? "upgrade request"
				       : w->draining  ? "draining"
						      : "backend did not keep it"));
	access_log(c);
	detach_backend(c, reusable);
	h->resp_done = false; /* the exchange is over: nothing is left to finish */
	if (h->close_after) {
		close_gracefully(c, "response sent, connection not kept");
		return;
	}
	h->rstate = R_IDLE;
	set_deadline(c, w->now_ms + conf_of(c)->keepalive_timeout_ms);
	/* The timer looks again once the connection has been idle a while,
	 * to trim (http_check_deadline); a busy one's timer is already set
	 * sooner, so this moves nothing. */
	h->idle_since_ms = w->now_ms;
	kg_conn_timer_at(c, w->now_ms + KG_TRIM_IDLE_MS);
	compact_request(h);
	kg_http_next(&h->req);
	advance(c);
}

/* ---- WebSocket tunnel ---- */

/* Bytes moved: the idle deadline moves later, which needs no timer call
 * (the timer finds it when it fires). */
static void tunnel_touch(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	kg_tunnel_touch(&h->tun, c->worker->now_ms);
	h->deadline_ms = kg_tunnel_deadline(&h->tun, c->listener->conf);
}

/* Who the tunnel's events name. */
static struct kg_tunnel_who tunnel_who(const struct kg_conn *c)
{
	return (struct kg_tunnel_who){.listener = c->listener->conf->name,
				      .client = http_of(c)->who.peer,
				      .backend = c->group->conf->backends[c->member].address};
}

/* The backend answered 101 to a WebSocket upgrade, its head parsed into
 * h->resp: the 101 goes to the client, and from here the connection is a
 * byte tunnel. What sits behind either head is the new protocol's: the
 * backend's first frames follow the 101, the client's (sent before it
 * saw the 101) go to the backend first. Nothing is in flight on the
 * backend socket (its receive just completed; the request was sent). */
static void tunnel_begin(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	if (kg_http_build_response(&h->out, &h->resp, false, false) < 0 ||
	    kg_http_add_upgrade(&h->out) < 0) {
		kg_conn_close(c, "out of memory");
		return;
	}
	h->status = 101;
	h->resp_started = true;
	h->rstate = R_TUNNEL;
	h->tunnel = true;
	h->c2b_eof = h->c2b_shut = h->b2c_eof = h->b2c_pending = h->tunnel_spliced = false;
	const struct kg_tunnel_who who = tunnel_who(c);
	kg_tunnel_open(&h->tun, w, &who, h->target, h->io->kernel ? "splice" : "copy");
	tunnel_touch(c);
	set_deadline(c, h->deadline_ms);
	if (client_write(c, h->out.data, h->out.len) < 0 ||
	    client_write(c, h->bbuf + h->bparsed, h->blen - h->bparsed) < 0)
		return;
	h->blen = h->bparsed = 0;
	h->bytes_in += h->rlen - h->rparsed; /* sent by tunnel_c2b, on either path */
	h->rparsed = h->rlen;
	/* kTLS: on_client_drained starts the hops; userspace: it receives
	 * from the backend. */
	if (h->io->kernel)
		h->tunnel_wait = true;
	else
		h->b2c_pending = true;
	kg_conn_flush_client(c);
	if (c->state == KG_CONN_FORWARDING && h->rstate == R_TUNNEL)
		tunnel_c2b(c);
}

/* One side's stream ended and was passed on (the backend's write side
 * shut, or close_notify queued for the client). When both have, the
 * tunnel is over: what is queued for the client goes out, then the
 * connection closes. */
static void tunnel_side_ended(struct kg_conn *c, enum kg_tunnel_end side)
{
	struct kg_http_conn *h = http_of(c);
	kg_tunnel_side_ended(&h->tun, side);
	if (!h->c2b_shut || !h->b2c_eof)
		return;
	if (h->io->kernel) {
		kg_conn_close(c, "tunnel ended"); /* the hops sent close_notify and FIN */
		return;
	}
	snprintf(c->close_reason, sizeof(c->close_reason), "tunnel ended");
	c->close_after_flush = true;
	kg_conn_flush_client(c);
}

/* Client → backend: first the bytes that came behind the request head
 * (on both paths); then, on kTLS, the c2b hop (once the 101 drained too),
 * on userspace TLS one buffer (rbuf) at a time, the next read waiting
 * until the backend took all of the last. */
static void tunnel_c2b(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	while (c->state == KG_CONN_FORWARDING && h->rstate == R_TUNNEL && !h->b_send_busy) {
		if (h->rsent < h->rlen) {
			send_backend(c, h->rbuf + h->rsent, h->rlen - h->rsent, false);
			return;
		}
		h->rlen = h->rsent = h->rparsed = 0;
		if (h->io->kernel) {
			if (!h->tunnel_wait && !h->tunnel_spliced)
				tunnel_splice_start(c);
			return;
		}
		if (h->c2b_eof) {
			if (!h->c2b_shut) {
				/* The client's end goes on as the backend's FIN. */
				h->c2b_shut = true;
				shutdown(c->bfd, SHUT_WR);
				tunnel_side_ended(c, KG_TUNNEL_CLIENT);
			}
			return;
		}
		if (!h->rbuf && !(h->rbuf = io_buf_get(c, h->rcap))) {
			kg_conn_close(c, "out of memory for a tunnel buffer");
			return;
		}
		int n = h->io->read(c, h->rbuf, h->rcap);
		if (n > 0) {
			h->rlen = (uint32_t)n;
			h->bytes_in += (uint64_t)n;
			kg_count_add(&c->worker->stats.forwarded_c2b, (uint64_t)n);
			tunnel_touch(c);
			continue;
		}
		if (n != KG_CIO_EOF)
			return; /* a receive is armed (on_client_data comes back), or closed */
		h->c2b_eof = true;
	}
}

static void tunnel_on_backend_send(struct kg_conn *c, int res)
{
	struct kg_http_conn *h = http_of(c);
	if (res <= 0) {
		kg_conn_close_err(c, "tunnel backend send", res == 0 ? EPIPE : -res);
		return;
	}
	h->rsent += (uint32_t)res;
	tunnel_touch(c);
	tunnel_c2b(c);
}

/* Userspace TLS: backend → client. OpenSSL takes the bytes into records
 * at once; the next receive waits until the client took them
 * (on_client_drained). */
static void tunnel_on_backend_recv(struct kg_conn *c, int res)
{
	struct kg_http_conn *h = http_of(c);
	if (res < 0) {
		kg_conn_close_err(c, "tunnel backend recv", -res);
		return;
	}
	if (res == 0) {
		h->b2c_eof = true;
		h->io->end(c); /* close_notify behind the last bytes */
		kg_conn_flush_client(c);
		if (c->state == KG_CONN_FORWARDING)
			tunnel_side_ended(c, KG_TUNNEL_BACKEND);
		return;
	}
	tunnel_touch(c);
	if (client_write(c, h->bbuf, (size_t)res) < 0)
		return;
	h->b2c_pending = true;
	kg_conn_flush_client(c);
}

/* kTLS: the 101 (and the backend's bytes behind it) reached the client,
 * the client's bytes behind its request head the backend; both directions
 * splice from here, each to its source's end (the hop passes a client's
 * close_notify on as a FIN, and a backend's FIN as close_notify and FIN). */
static void tunnel_splice_start(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	h->tunnel_spliced = true;
	if (!start_hop(c, &h->pump.c2b, &h->spliced_c2b, c->cfd, c->bfd, KG_HOP_UNBOUNDED) ||
	    !start_hop(c, &h->pump.b2c, &h->spliced_b2c, c->bfd, c->cfd, KG_HOP_UNBOUNDED)) {
		kg_conn_close(c, "tunnel: no pipe for splicing");
		return;
	}
	tunnel_pump(c);
}

/* kTLS: a wake-up for either socket (or the backoff). */
static void tunnel_pump(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (!h->tunnel_spliced)
		return; /* the 101 or the early bytes are on their way: no hop runs yet */
	bool moved = kg_pump_move(c, &h->pump);
	account_spliced(c);
	if (c->state != KG_CONN_FORWARDING || h->rstate != R_TUNNEL)
		return;
	if (moved)
		tunnel_touch(c);
	if (h->pump.c2b.done && !h->c2b_shut) {
		h->c2b_eof = h->c2b_shut = true;
		tunnel_side_ended(c, KG_TUNNEL_CLIENT);
	}
	if (c->state == KG_CONN_FORWARDING && h->pump.b2c.done && !h->b2c_eof) {
		h->b2c_eof = true;
		tunnel_side_ended(c, KG_TUNNEL_BACKEND);
	}
	if (c->state == KG_CONN_FORWARDING)
		kg_pump_wait(c, &h->pump, moved);
}

/* The tunnel's deadline passed: no byte for tunnel_idle_timeout_ms, or
 * tunnel_max_lifetime_s is up. Both sides are told (close_notify to the
 * client, FIN to the backend) and the connection closes. */
static void tunnel_check(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	h->deadline_ms = kg_tunnel_deadline(&h->tun, c->listener->conf);
	enum kg_tunnel_end cut = kg_tunnel_expired(&h->tun, c->listener->conf, c->worker->now_ms);
	if (cut == KG_TUNNEL_OPEN)
		return;
	bool life = cut == KG_TUNNEL_LIFETIME;
	shutdown(c->bfd, SHUT_RDWR); /* ends the backend's operations in flight */
	kg_hop_stop(&h->pump.c2b);
	kg_hop_stop(&h->pump.b2c);
	close_gracefully(c, life ? "tunnel_max_lifetime_s reached" : "tunnel idle timeout");
}

/* The connection is closing with a tunnel open: count and log why it
 * ended, and write its access log line (status 101, the bytes both ways
 * over its life). */
static void tunnel_closed(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	h->tunnel = false;
	if (h->io->kernel)
		account_spliced(c);
	const struct kg_tunnel_who who = tunnel_who(c);
	kg_tunnel_closed(&h->tun, w, &who, h->c2b_shut && h->b2c_eof, h->bytes_in, h->bytes_out);
	access_log(c);
}

/* ---- lifecycle ---- */

/* Takes what it needs from c->ssl (identity, subject) and early (plaintext
 * the client sent before forwarding started), without any I/O. */
static int http_start(struct kg_conn *c, const void *early, size_t early_len, char *err,
		      size_t errlen)
{
	const struct kg_http_conf *hc = conf_of(c);
	struct kg_http_conn *h = calloc(1, sizeof(*h));
	snprintf(err, errlen, "out of memory for HTTP state");
	if (!h)
		return -ENOMEM;
	c->fwd_ctx = h;
	h->io = c->path == KG_PATH_HTTP_KTLS ? &kg_client_io_ktls : &kg_client_io_openssl;
	kg_pump_clear(&h->pump);
	h->rcap = hc->max_header_bytes > KG_IO_BUF_SIZE ? hc->max_header_bytes : KG_IO_BUF_SIZE;
	h->bcap = h->rcap;
	if (early_len > h->rcap)
		h->rcap = (uint32_t)early_len; /* at most a record and a bit (conn.c) */
	if (kg_http_msg_init(&h->req, true, hc->max_headers) < 0 ||
	    kg_http_msg_init(&h->resp, false, hc->max_headers) < 0)
		return -ENOMEM;

	/* The identity comes from the handshake: after a kTLS handoff the
	 * SSL object is gone, so it is taken now. */
	if (kg_http_client_init(&h->who, c) < 0)
		return -ENOMEM;
	h->route = "";

	if (early_len > 0) {
		if (!(h->rbuf = io_buf_get(c, h->rcap)))
			return -ENOMEM;
		memcpy(h->rbuf, early, early_len);
	}
	h->rlen = (uint32_t)early_len;
	kg_count_add(&c->worker->stats.forwarded_c2b, early_len);
	h->rstate = R_IDLE;
	set_deadline(c, c->worker->now_ms + hc->request_timeout_ms);
	return 0;
}

static void http_run(struct kg_conn *c)
{
	/* Application data may have come with the client's Finished. */
	advance(c);
}

/* kTLS: a wake-up for the client or the backend socket. */
static void resume(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (h->rstate == R_CLOSING) {
		if (h->notify_blocked && !h->pump.c_out_armed)
			send_close_notify(c);
		return;
	}
	if (h->rstate == R_TUNNEL) {
		tunnel_pump(c);
		return;
	}
	pump_bodies(c);
	/* The request side first: a request body spliced to its end moves
	 * it to R_WAIT, so a response that ended too is not taken for an
	 * early one. */
	advance(c);
	if (c->state == KG_CONN_FORWARDING && h->resp_done)
		maybe_finish(c);
}

/* kTLS: a readiness poll (spliced bodies, heads, close_notify) or the
 * splice backoff completed. */
static void http_on_poll(struct kg_conn *c, int op, int fd, int res)
{
	struct kg_pump *p = &http_of(c)->pump;
	bool go = op == KG_OP_SPLICE_BACKOFF ? kg_pump_on_backoff(c, p)
					     : kg_pump_on_poll(c, p, fd, op == KG_OP_POLL_OUT, res);
	if (go)
		resume(c);
}

/* Deadlines: request, keep-alive and response. */
static void http_deadline_passed(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	struct kg_worker *w = c->worker;
	if (w->draining && h->rstate == R_IDLE && h->rlen == 0 &&
	    !atomic_load_explicit(&w->rt->handed_over, memory_order_relaxed)) {
		close_gracefully(c, "draining");
		return;
	}
	if (w->now_ms < h->deadline_ms)
		return;
	switch (h->rstate) {
	case R_IDLE:
		kg_count(w, idle_timeout);
		if (h->rlen > 0)
			reply_error(c, 408, "request not complete in time");
		else
			close_gracefully(c, "keep-alive timeout");
		return;
	case R_HEAD:
		reply_error(c, 408, "request head not complete in time");
		return;
	case R_CONNECT:
		return; /* the connect has its own linked timeout */
	case R_SEND:
	case R_WAIT:
		reply_error(c, 504, "backend response timeout");
		return;
	case R_CLOSING:
		kg_conn_close(c, "client did not take the last response in time");
		return;
	case R_TUNNEL:
		tunnel_check(c);
		return;
	}
}

/* Between requests, with no byte of the next one yet, a connection needs
 * none of the per-exchange memory: the two header-field tables and the
 * rebuilt request and response heads (about 6 KiB with the default
 * max_headers). Kept while requests follow each other, so that a busy
 * connection allocates nothing per request; given back after
 * KG_TRIM_IDLE_MS of quiet, and allocated again by the next request. */
static bool holds_exchange_memory(const struct kg_http_conn *h)
{
	return h->rstate == R_IDLE && h->rlen == 0 &&
	       (h->req.fields || h->resp.fields || h->head.data || h->out.data);
}

static void trim_exchange_memory(struct kg_http_conn *h)
{
	kg_http_msg_trim(&h->req);
	kg_http_msg_trim(&h->resp);
	kg_buf_free(&h->head);
	h->head_sent = 0;
	kg_buf_free(&h->out);
}

static uint64_t http_check_deadline(struct kg_conn *c)
{
	if (c->state == KG_CONN_FORWARDING)
		http_deadline_passed(c);
	if (c->state != KG_CONN_FORWARDING)
		return 0;
	struct kg_http_conn *h = http_of(c);
	uint64_t next = h->deadline_ms;
	if (holds_exchange_memory(h)) {
		uint64_t at = h->idle_since_ms + KG_TRIM_IDLE_MS;
		if (c->worker->now_ms >= at)
			trim_exchange_memory(h);
		else if (at < next)
			next = at;
	}
	return next;
}

static void http_on_close(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (!h)
		return; /* http_start ran out of memory before its context existed */
	if (h->tunnel)
		tunnel_closed(c);
	if (h->rstate == R_CONNECT && c->bfd >= 0) {
		struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
		io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_HTTP_CONNECT, c->idx, c->bfd), 0);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, c->idx, -1));
	}
}

static void http_release(struct kg_conn *c)
{
	struct kg_http_conn *h = http_of(c);
	if (!h)
		return;
	kg_http_msg_free(&h->req);
	kg_http_msg_free(&h->resp);
	kg_http_client_free(&h->who);
	kg_buf_free(&h->head);
	kg_buf_free(&h->out);
	kg_hop_free(&h->pump.c2b);
	kg_hop_free(&h->pump.b2c);
	io_buf_put(c, h->rbuf, h->rcap);
	io_buf_put(c, h->bbuf, h->bsize);
	free(h);
	c->fwd_ctx = NULL;
}

static void http_on_backend_io(struct kg_conn *c, int op, int fd, int res,
			       const unsigned char *data)
{
	(void)fd;   /* one backend socket at a time: c->bfd */
	(void)data; /* the engine receives into its own buffer */
	if (op == KG_OP_HTTP_BACKEND_SEND)
		on_backend_send(c, res);
	else
		on_backend_recv(c, res);
}

const struct kg_fwd_ops kg_fwd_http_ops = {
	.name = "http",
	.start = http_start,
	.run = http_run,
	.on_client_data = on_client_data,
	.on_client_drained = on_client_drained,
	.on_poll = http_on_poll,
	.on_backend_io = http_on_backend_io,
	.on_connect = on_connect,
	.check_deadline = http_check_deadline,
	.on_close = http_on_close,
	.release = http_release,
};
