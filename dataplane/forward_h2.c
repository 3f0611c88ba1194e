/* https connections that speak HTTP/2: the session (h2_session.h) turns
 * the client's frames into requests, and each stream becomes one HTTP/1.1
 * exchange with a backend of its own choosing, through the worker's
 * keep-alive pool, as forward_http.c does per request.
 *
 * Client side: plaintext from the connection's client_io (OpenSSL over
 * memory BIOs, or the kTLS socket itself) goes into kg_h2_feed; what the
 * session has for the client is taken with kg_h2_output only while the
 * connection's send queue is drained (on_client_drained), so a client that
 * does not read pins one queue, never more.
 *
 * Per stream: a route, a member (http_balance.h), a pooled socket or a new
 * connect, a request head rebuilt by http.c from the stream's field list
 * with the same screening as HTTP/1.1 heads, the body behind it (chunked
 * when the client gave no content-length), and the response parsed by
 * http.c with its body de-chunked into DATA frames. Memory per stream is
 * bounded both ways: the request side holds at most the stream's window
 * (its bytes are released to the client with kg_h2_consume only once the
 * backend took them), the response side one receive buffer plus what the
 * session queues up to the low-water mark (more is read from the backend
 * only after on_send_room).
 *
 * Several backend sockets per client connection: each stream owns its
 * socket; completions carry it in user_data and the stream is found by it
 * (fwd.h on_backend_io, on_connect). A stream's socket is closed only
 * when no operation is in flight on it; conn.c's close kicks them
 * (h2_on_close) and release frees whatever is left (h2_release). The
 * connection's own c->bfd stays -1.
 *
 * With backend_protocol h2 a stream goes to its member as a stream on one
 * of the worker's HTTP/2 backend connections instead (h2_client.h; struct
 * kg_h2b below): the same screened head read back as a field list, bodies
 * both ways with each side's window reopened only as the other side took
 * the bytes, trailers and resets passed on. Those connections belong to
 * the worker, not to a client connection: the worker hands their
 * completions to this file through fwd.h's worker-wide hooks.
 *
 * Session callbacks run inside kg_h2_feed and kg_h2_output: they only
 * record and mark the stream; the marked streams move on afterwards
 * (run_marked), outside the session. */
#include "forward_h2.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "b64.h"
#include "backend.h"
#include "backend_pool.h"
#include "client_io.h"
#include "conn.h"
#include "group.h"
#include "h2_client.h"
#include "h2_session.h"
#include "health.h"
#include "http.h"
#include "http_balance.h"
#include "ktls.h"
#include "listener.h"
#include "routes.h"
#include "runtime.h"
#include "tls.h"
#include "tunnel.h"
#include "worker.h"

_Static_assert(KG_H2_DEFAULT_MAX_STREAMS == KG_H2_MAX_STREAMS_DEFAULT,
	       "limits.h and h2_session.h disagree on the default h2_max_streams");

/* A stream's response queue in the session below this: the backend is
 * read again. One receive buffer above it at most. */
#define H2_SEND_LOW_WATER (16u * 1024u)
/* Plaintext handed to the client per drained send queue: about one
 * pool buffer of records. */
#define H2_OUT_BATCH KG_IO_BUF_SIZE
/* Streams a client may reset (or have refused) per second, burst twice
 * that: beyond, the connection ends (rapid reset, CVE-2023-44487). Real
 * browsers cancel a few streams per navigation. */
#define H2_RESET_BUDGET 100u
/* SETTINGS, PING, PRIORITY and empty frames per second, burst twice. */
#define H2_CONTROL_BUDGET 100u
/* A chunk header written before its size is known: 8 hex digits (leading
 * zeros are valid chunk-size) and CRLF, rewritten as data is added. */
#define CHUNK_HDR 10u
/* Room in a request buffer beyond the head and the window: an open
 * chunk's header and CRLF, one closed chunk's, and the last chunk. */
#define CHUNK_SLACK 64u
/* Abuse log lines: at most one per this long per worker. */
#define ABUSE_LOG_MS 1000u
/* backend_protocol h2: streams a backend connection takes before its
 * SETTINGS say how many it allows (RFC 9113 6.5.2 leaves it unlimited;
 * this is nghttp2's and most servers' default). */
#define H2B_STREAMS_BEFORE_SETTINGS 100u
/* Plaintext gathered from a backend session per send. */
#define H2B_OUT_BATCH (64u * 1024u)
/* RST_STREAM codes (RFC 9113 7). */
#define H2_INTERNAL_ERROR 2u
#define H2_REFUSED_STREAM 7u
#define H2_CANCEL 8u

struct h2_conn;
struct h2_ws;
struct h2_bconn;

struct h2_stream {
	struct h2_conn *owner;
	struct h2_stream *next;      /* the connection's streams */
	struct h2_stream *next_mark; /* marked to move on (run_marked) */
	bool marked;
	int32_t id;
	bool open;       /* the session still has it (on_stream_close not yet) */
	bool answered;   /* END_STREAM or RST_STREAM queued for the client */
	uint64_t deadline_ms;
	uint64_t start_ms;

	/* Request to the backend: [0, osent) sent, [osent, osent +
	 * inflight) in flight, the rest queued; open_chunk is the offset
	 * of the chunk still growing (UINT32_MAX: none). */
	unsigned char *obuf;
	uint32_t ocap, olen, osent, inflight, open_chunk;
	uint32_t queued_data, inflight_data; /* body bytes (not framing) not yet consumed */
	uint32_t drop_consume;               /* body bytes dropped, to release */
	bool has_body, chunked, req_end, final_queued;

	/* Backend. */
	struct kg_group_rt *group;
	int member;
	bool member_counted;
	struct kg_backend_walk walk;
	int fd;
	bool connecting, recv_busy, send_busy, reused, retried, failed, detached;
	bool kicked; /* its operations were told to end (kick_backend) */
	int fail_res;
	int err_status; /* an answer kgate makes, once the stream can take it */
	const char *err_why;

	/* Response. */
	unsigned char *bbuf;
	uint32_t bcap, blen, bparsed;
	struct kg_http_msg resp;
	char trailers[KG_HTTP_TRAILER_BYTES]; /* resp's chunked trailers, kept */
	bool resp_init, head_pending, resp_started, resp_done, dirty, waiting_room, quickacked;

	/* backend_protocol h2: the stream is a stream on a backend HTTP/2
	 * connection (bc), id bid there: 0 before it was opened (bc still
	 * connecting), -1 once closed. Body bytes the client sent before
	 * then wait in pre (at most the stream window, which is released
	 * only as they go on); after, pre keeps a copy of what was sent
	 * until the response begins, so that a stream the backend refused
	 * (REFUSED_STREAM, or above its GOAWAY's last stream: RFC 9113 8.7,
	 * nothing was processed) can be sent once more, on another
	 * connection. A body past REPLAY_MAX is not kept (no_replay), and
	 * such a refusal is a 502 as before. c_*: request body bytes queued in the backend
	 * session and released to the client's window; b_*: response body
	 * bytes queued for the client and consumed on the backend's window,
	 * which therefore reopens only as the client takes them. */
	bool bmode;
	struct h2_bconn *bc;
	struct h2_stream *bnext; /* bc's streams */
	int32_t bid;
	unsigned char *pre;
	uint32_t pre_len, pre_cap;
	bool te_trailers, b_retried, no_replay;
	char *path, *authority;
	uint64_t c_queued, c_released, b_queued, b_consumed;

	/* Access log. */
	int status;
	bool logged;
	char method[16];
	char target[160];
	const char *route;
	uint64_t bytes_in, bytes_out;

	/* An extended CONNECT for websocket (RFC 8441): its section below. */
	struct h2_ws *ws;
};

/* A backend HTTP/2 connection of the worker (backend_protocol h2): a
 * member's socket and its client session (h2_client.h), carrying streams
 * of any of the worker's client connections to the member, up to the
 * backend's limit. */
struct h2_bconn {
	struct kg_h2b *tab;
	uint32_t slot;
	struct h2_bconn *next;
	struct kg_group_rt *group; /* a reference: members stay as they were */
	int member;
	int fd;
	unsigned inflight;
	struct kg_backend_walk walk;
	struct kg_h2c *sess;
	struct h2_stream *streams; /* on it (opened, or waiting for the connect) */
	unsigned assigned;
	uint64_t idle_since_ms;
	unsigned idle_timeout_ms; /* the opening listener's http.pool_idle_timeout_ms */
	char listener[KG_NAME_MAX + 1]; /* the opening listener's name, for log lines */
	bool connecting, recv_busy, send_busy, counted, broken, kicked, goaway;
	unsigned char *rbuf; /* a pool buffer while a receive is armed */
	unsigned char *obuf; /* plaintext in flight: [osent, olen) */
	size_t ocap, olen, osent;
};

struct h2_conn {
	struct kg_conn *c;
	const struct kg_client_io *io;
	struct kg_h2 *h2;
	struct h2_stream *streams;
	struct h2_stream *marked;
	unsigned n_streams;
	bool writing;       /* plaintext handed to the client, not drained yet */
	bool poll_in_armed; /* kTLS: POLLIN on the client socket */
	bool shut;          /* GOAWAY queued (drain, keep-alive timeout) */
	uint64_t shut_at_ms; /* when the keep-alive timeout queued it, 0 before */
	bool ending;        /* closing once the queue drained */
	bool client_done;
	bool feeding;       /* inside kg_h2_feed or kg_h2_output */
	unsigned n_tunnels; /* WebSocket streams past the backend's 101, not yet ended */
	unsigned char *early_copy; /* plaintext that came before forwarding started */
	size_t early_len;
	uint64_t idle_deadline_ms; /* no stream open: keep-alive timeout */
	struct kg_http_client who; /* the client's address, identity, policy (http_balance.h) */
};

static struct h2_conn *h2_of(const struct kg_conn *c)
{
	return c->fwd_ctx;
}

static const struct kg_http_conf *conf_of(const struct kg_conn *c)
{
	return &c->listener->conf->http;
}

static void stream_step(struct h2_stream *s);
static void pump_output(struct kg_conn *c);
static void arm_recv(struct h2_stream *s);
static void route_stream(struct h2_stream *s, const struct kg_h2_request *req);
static void ws_begin_request(struct h2_stream *s, const struct kg_h2_request *req);
static void ws_c2b_end(struct h2_stream *s);
static void ws_reset(struct h2_stream *s);
static void ws_switch(struct h2_stream *s);
static void ws_on_body(struct h2_stream *s, const uint8_t *p, size_t n);
static void ws_step(struct h2_stream *s);
static void ws_on_backend_io(struct h2_conn *h, struct h2_stream *s, int op, int res);
static void ws_check(struct h2_stream *s, uint64_t *next);
static void ws_finish(struct h2_stream *s);
static void ws_free(struct h2_stream *s);
static void bc_unassign(struct h2_stream *s);
static void pick_h2(struct h2_stream *s);
static void pump_backends(struct kg_h2b *t);
static bool h2b_idle(const struct kg_worker *w);

/* ---- marks: streams to move on after a session call ---- */

static void mark(struct h2_stream *s)
{
	if (s->marked)
		return;
	s->marked = true;
	s->next_mark = s->owner->marked;
	s->owner->marked = s;
}

static void free_stream(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	struct kg_conn *c = h->c;
	for (struct h2_stream **pp = &h->streams; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	for (struct h2_stream **pp = &h->marked; *pp; pp = &(*pp)->next_mark)
		if (*pp == s) {
			*pp = s->next_mark;
			break;
		}
	h->n_streams--;
	if (h->n_streams == 0)
		h->idle_deadline_ms = c->worker->now_ms + conf_of(c)->keepalive_timeout_ms;
	if (s->resp_init)
		kg_http_msg_free(&s->resp);
	ws_free(s);
	bc_unassign(s);
	free(s->pre);
	free(s->path);
	free(s->authority);
	free(s->obuf);
	if (s->bbuf)
		kg_buf_put(&c->worker->bufs, s->bbuf);
	free(s);
}

/* Moves the marked streams on; a step may mark others (or itself) again. */
static void run_marked(struct h2_conn *h)
{
	do {
		while (h->marked && h->c->state == KG_CONN_FORWARDING) {
			struct h2_stream *s = h->marked;
			h->marked = s->next_mark;
			s->marked = false;
			stream_step(s);
		}
		/* Backend sessions' output may call back and mark streams
		 * (of other connections too: h2b_flush moves those). */
		if (!h2b_idle(h->c->worker) && h->c->state == KG_CONN_FORWARDING)
			pump_backends(h->c->worker->h2b);
	} while (h->marked && h->c->state == KG_CONN_FORWARDING);
}

/* ---- access log ---- */

static void access_log(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	struct kg_conn *c = h->c;
	const struct kg_http_conf *hc = conf_of(c);
	struct kg_worker *w = c->worker;
	if (s->logged)
		return;
	s->logged = true;
	if (!hc->access_log || atomic_load_explicit(&w->stats.http_requests, memory_order_relaxed) %
					   hc->access_log_sample != 0)
		return;
	const char *backend = s->member >= 0 && s->group ? s->group->conf->backends[s->member].address
							 : "";
	/* Not level-tested: the operator asked for these lines. */
	kg_log_always(KG_LOG_INFO, "http.access", KV("listener", c->listener->conf->name),
		      KV("client", h->who.peer), KV("subject", h->who.subject), KV("proto", "h2"),
		      KV("stream", (long long)s->id), KV("method", s->method),
		      KV("target", s->target), KV("status", s->status), KV("route", s->route),
		      KV("backend", backend), KV("bytes_in", s->bytes_in),
		      KV("bytes_out", s->bytes_out), KV("ms", w->now_ms - s->start_ms));
}

/* ---- answers made by kgate ---- */

/* 400, 403, 404, 421, 500, 502, 503, 504 as a response on the stream; a
 * stream whose response had started can only be reset. */
static void answer_error(struct h2_stream *s, int status, const char *why)
{
	struct h2_conn *h = s->owner;
	struct kg_conn *c = h->c;
	struct kg_worker *w = c->worker;
	if (s->answered || !s->open)
		return;
	s->answered = true;
	if (s->resp_started) {
		kg_h2_reset(h->h2, s->id, 2 /* INTERNAL_ERROR */);
		access_log(s);
		return;
	}
	kg_count(w, http_errors);
	kg_worker_warn(w, "http.error_response", KV("listener", c->listener->conf->name),
		       KV("client", h->who.peer), KV("status", status),
		       KV("status_text", kg_http_reason(status)), KV("reason", why));
	s->status = status;
	char body[64];
	int n = snprintf(body, sizeof(body), "%d %s\n", status, kg_http_reason(status));
	char len[16];
	snprintf(len, sizeof(len), "%d", n);
	const struct kg_h2_field f[] = {
		{"content-type", 12, "text/plain", 10},
		{"content-length", 14, len, strlen(len)},
	};
	s->resp_started = true;
	if (kg_h2_respond(h->h2, s->id, status, f, 2, false) < 0 ||
	    kg_h2_send_data(h->h2, s->id, body, (size_t)n, true, H2_SEND_LOW_WATER) < 0)
		kg_h2_reset(h->h2, s->id, 2 /* INTERNAL_ERROR */);
	s->bytes_out += (uint64_t)n;
	access_log(s);
}

/* ---- backend socket ---- */

static bool backend_busy(const struct h2_stream *s)
{
	return s->connecting || s->recv_busy || s->send_busy;
}

/* Gives the stream's socket back to the pool, or closes it. Nothing may
 * be in flight on it. */
static void detach_backend(struct h2_stream *s, bool reusable)
{
	struct kg_conn *c = s->owner->c;
	if (s->fd >= 0) {
		const struct kg_backend_conf *b = &s->group->conf->backends[s->member];
		const struct kg_http_conf *hc = conf_of(c);
		if (!reusable ||
		    !kg_backend_pool_put(c->worker->pool,
					 kg_http_pool_key(c->listener, c->listener_idx, s->group),
					 &b->addr, b->addrlen, s->fd, hc->pool_max_idle,
					 hc->pool_idle_timeout_ms, c->worker->now_ms))
			close(s->fd);
		s->fd = -1;
	}
	if (s->member_counted)
		kg_health_conn_end(s->group->health, (size_t)s->member);
	s->member_counted = false;
	if (s->bbuf)
		kg_buf_put(&c->worker->bufs, s->bbuf);
	s->bbuf = NULL;
	s->blen = s->bparsed = 0;
	s->detached = true;
}

/* Ends what runs on the stream's socket: its operations complete (with an
 * error) and the stream moves on from their completions. */
static void kick_backend(struct h2_stream *s)
{
	struct kg_conn *c = s->owner->c;
	if (s->fd < 0 || s->kicked)
		return;
	s->kicked = true;
	if (s->connecting) {
		struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
		io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_HTTP_CONNECT, c->idx, s->fd), 0);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, c->idx, -1));
	} else {
		shutdown(s->fd, SHUT_RDWR);
	}
}

static void set_deadline(struct h2_stream *s, uint64_t at)
{
	s->deadline_ms = at;
	kg_conn_timer_at(s->owner->c, at);
}

static void attach(struct h2_stream *s, int m, int fd, bool reused)
{
	struct kg_conn *c = s->owner->c;
	s->fd = fd;
	s->member = m;
	s->reused = reused;
	s->failed = false;
	s->detached = false;
	s->kicked = false;
	kg_health_conn_start(s->group->health, (size_t)m);
	s->member_counted = true;
	s->blen = s->bparsed = 0;
	s->resp_done = false;
	s->quickacked = false;
	kg_http_restart(&s->resp);
	s->resp.head_only_response = strcmp(s->method, "HEAD") == 0;
	s->resp.on_body = NULL; /* set again by process_response */
	s->osent = 0;
	s->inflight = 0;
	set_deadline(s, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	if (!s->bbuf && !(s->bbuf = kg_buf_get(&c->worker->bufs))) {
		s->err_status = 500;
		s->err_why = "out of memory for a response buffer";
		return;
	}
	s->bcap = KG_POOL_BUF_SIZE;
}

/* The member for the stream, pooled socket or connect; an answer when
 * none is left. */
static void pick(struct h2_stream *s)
{
	struct kg_conn *c = s->owner->c;
	struct kg_worker *w = c->worker;
	int m, fd, status;
	switch (kg_http_pick(w, c->listener, c->listener_idx, s->group, &s->walk, &m, &fd,
			     &status)) {
	case KG_HTTP_PICK_NONE:
		s->err_status = status;
		s->err_why = status == 502 ? "no backend could be connected" : "no backend in rotation";
		return;
	case KG_HTTP_PICK_POOLED:
		attach(s, m, fd, true);
		return;
	case KG_HTTP_PICK_CONNECT:
		break;
	}
	fd = kg_conn_submit_connect_to(c, s->group, &s->walk, m, KG_OP_HTTP_CONNECT);
	if (fd < 0) {
		s->err_status = 502;
		s->err_why = "no backend socket";
		return;
	}
	kg_count(w, http_backend_connects);
	s->fd = fd;
	s->member = m;
	s->connecting = true;
}

/* The request's next bytes to the backend: the open chunk closed, the
 * last chunk once the client ended, everything queued in one send. */
static void backend_send(struct h2_stream *s)
{
	struct kg_conn *c = s->owner->c;
	if (s->fd < 0 || s->connecting || s->send_busy || s->failed || s->detached)
		return;
	if (s->open_chunk != UINT32_MAX) {
		memcpy(s->obuf + s->olen, "\r\n", 2);
		s->olen += 2;
		s->open_chunk = UINT32_MAX;
	}
	if (s->req_end && s->chunked && !s->final_queued) {
		memcpy(s->obuf + s->olen, "0\r\n\r\n", 5);
		s->olen += 5;
		s->final_queued = true;
	}
	/* A request without a body keeps its head where it is: a pooled
	 * socket found closed sends it again (backend_broke). */
	if (s->osent > 0 && s->has_body) {
		memmove(s->obuf, s->obuf + s->osent, s->olen - s->osent);
		s->olen -= s->osent;
		s->osent = 0;
	}
	if (s->olen == s->osent)
		return;
	s->inflight = s->olen - s->osent;
	s->inflight_data = s->queued_data;
	s->queued_data = 0;
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_send(sqe, s->fd, s->obuf + s->osent, s->inflight, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HTTP_BACKEND_SEND, c->idx, s->fd));
	s->send_busy = true;
	c->inflight++;
}

static void arm_recv(struct h2_stream *s)
{
	struct kg_conn *c = s->owner->c;
	if (s->recv_busy || s->resp_done || s->fd < 0 || s->connecting || s->failed ||
	    s->detached || s->waiting_room || !s->bbuf || s->blen == s->bcap)
		return;
	struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
	io_uring_prep_recv(sqe, s->fd, s->bbuf + s->blen, s->bcap - s->blen, 0);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HTTP_BACKEND_RECV, c->idx, s->fd));
	s->recv_busy = true;
	c->inflight++;
}

/* The request went out in full: the client ended it and every byte
 * reached the backend. */
static bool request_sent(const struct h2_stream *s)
{
	return s->req_end && (!s->chunked || s->final_queued) && s->open_chunk == UINT32_MAX &&
	       s->osent == s->olen && !s->send_busy;
}

/* ---- response ---- */

/* The parsed head goes to the client as status: names lower case
 * (HTTP/2 wants them so; the head is ours to rewrite in place), hop-by-hop
 * fields left out. */
static int send_head(struct h2_stream *s, int status, bool end)
{
	struct h2_conn *h = s->owner;
	unsigned max = s->resp.n_fields;
	struct kg_http_pair *pairs = max ? calloc(max, sizeof(*pairs)) : NULL;
	struct kg_h2_field *f = max ? calloc(max, sizeof(*f)) : NULL;
	if (max && (!pairs || !f)) {
		free(pairs);
		free(f);
		return -ENOMEM;
	}
	int n = kg_http_response_pairs(&s->resp, pairs, max);
	for (int i = 0; i < n; i++) {
		char *name = (char *)pairs[i].name;
		for (size_t k = 0; k < pairs[i].name_len; k++)
			if (name[k] >= 'A' && name[k] <= 'Z')
				name[k] = (char)(name[k] - 'A' + 'a');
		f[i] = (struct kg_h2_field){pairs[i].name, pairs[i].name_len, pairs[i].value,
					    pairs[i].value_len};
	}
	int r = n < 0 ? n : kg_h2_respond(h->h2, s->id, status, f, (size_t)n, end);
	free(pairs);
	free(f);
	return r;
}

static int flush_head(struct h2_stream *s, bool end)
{
	s->head_pending = false;
	int r = send_head(s, s->status, end);
	s->resp_started = true;
	if (end)
		s->answered = true;
	return r;
}

static void on_resp_body(void *ctx, const unsigned char *p, size_t n)
{
	struct h2_stream *s = ctx;
	if (s->answered || !s->open)
		return;
	if (s->head_pending && flush_head(s, false) < 0) {
		s->err_status = 502;
		s->err_why = "response head not sent";
		return;
	}
	if (kg_h2_send_data(s->owner->h2, s->id, p, n, false, H2_SEND_LOW_WATER) == 0) {
		s->bytes_out += n;
		kg_count_add(&s->owner->c->worker->stats.forwarded_b2c, n);
	}
}

/* A chunked response's trailer section as the stream's trailers: 0, or
 * -ENOENT when it had none (or too large a one: dropped). */
static int send_trailers(struct h2_stream *s)
{
	struct kg_http_pair pairs[32];
	struct kg_h2_field f[32];
	unsigned n = kg_http_trailer_pairs(&s->resp, pairs, 32);
	if (n == 0)
		return -ENOENT;
	if (s->head_pending && flush_head(s, false) < 0)
		return -EIO;
	for (unsigned i = 0; i < n; i++)
		f[i] = (struct kg_h2_field){pairs[i].name, pairs[i].name_len, pairs[i].value,
					    pairs[i].value_len};
	return kg_h2_trailers(s->owner->h2, s->id, f, n);
}

/* The response's end: its trailers, or the head with END_STREAM when
 * nothing else was sent, else an empty last DATA frame. */
static void end_response(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	s->resp_done = true;
	if (s->answered || !s->open)
		return;
	int r = send_trailers(s);
	if (r == -ENOENT || r == -EINVAL)
		/* None, or a name HTTP/2 cannot carry: the body ends plainly. */
		r = s->head_pending ? flush_head(s, true)
				    : kg_h2_send_data(h->h2, s->id, NULL, 0, true,
						      H2_SEND_LOW_WATER);
	s->answered = true;
	if (r < 0)
		kg_h2_reset(h->h2, s->id, 2 /* INTERNAL_ERROR */);
	access_log(s);
}

/* Parses what the backend sent; body bytes go to the session as they are
 * de-chunked. */
static void process_response(struct h2_stream *s)
{
	s->resp.on_body = on_resp_body;
	s->resp.body_ctx = s;
	while (!s->resp_done && s->err_status == 0 &&
	       s->bparsed < s->blen + (s->resp.phase == KG_HTTP_PHASE_BODY)) {
		size_t used;
		int status = 0;
		const char *why = "";
		enum kg_http_step st = kg_http_feed(&s->resp, s->bbuf, s->bbuf + s->bparsed,
						    s->blen - s->bparsed, &used, &status, &why);
		s->bparsed += (uint32_t)used;
		switch (st) {
		case KG_HTTP_HEAD: {
			int code = kg_http_status(&s->resp);
			if (code == 101 && s->ws) {
				ws_switch(s);
				return;
			}
			if (code == 101) {
				s->err_status = 502;
				s->err_why = "backend switched protocols";
				return;
			}
			if (code >= 200) {
				s->status = code;
				s->head_pending = true;
				if (kg_http_needs_eof(&s->resp))
					s->dirty = true;
			}
			continue;
		}
		case KG_HTTP_MORE:
			if (s->resp.phase == KG_HTTP_PHASE_HEAD && s->blen == s->bcap) {
				s->err_status = 502;
				s->err_why = "response head too large";
				return;
			}
			goto out;
		case KG_HTTP_DONE: {
			int code = kg_http_status(&s->resp);
			if (code < 200) {
				/* An interim response (100 Continue, 103 Early
				 * Hints) is passed on: a client that sent
				 * "Expect: 100-continue" waits for it before its
				 * body. HTTP/2 has no 101 (a tunnel is not this
				 * path). A failure loses the hint, not the
				 * exchange. The final head follows from offset 0
				 * like every head. */
				if (code != 101 && s->open && !s->answered)
					(void)send_head(s, code, false);
				kg_http_next(&s->resp);
				s->resp.head_only_response = strcmp(s->method, "HEAD") == 0;
				memmove(s->bbuf, s->bbuf + s->bparsed, s->blen - s->bparsed);
				s->blen -= s->bparsed;
				s->bparsed = 0;
				continue;
			}
			if (s->bparsed < s->blen)
				s->dirty = true; /* bytes nobody asked for */
			end_response(s);
			goto out;
		}
		case KG_HTTP_ERROR:
			s->err_status = 502;
			s->err_why = why;
			return;
		}
	}
out:
	if (s->resp.phase != KG_HTTP_PHASE_HEAD && !s->resp_done) {
		/* The head's fields point into the buffer: it goes before the
		 * buffer is reused. */
		if (s->head_pending && s->open && !s->answered && flush_head(s, false) < 0) {
			s->err_status = 502;
			s->err_why = "response head not sent";
			return;
		}
		/* Every body byte went to the session: the buffer is free. */
		s->blen = s->bparsed = 0;
		if (s->open && kg_h2_send_pending(s->owner->h2, s->id) >= H2_SEND_LOW_WATER)
			s->waiting_room = true;
	}
}

/* ---- a stream's progress ---- */

/* The backend connection broke before the response ended. A pooled
 * socket the backend had closed while idle gets the request again on a
 * fresh one (once, and only for a request without a body); otherwise
 * 502, or a reset once the response started. */
static void backend_broke(struct h2_stream *s, int res)
{
	if (!s->failed) {
		s->failed = true;
		s->fail_res = res;
		if (backend_busy(s))
			shutdown(s->fd, SHUT_RDWR);
	}
	if (backend_busy(s))
		return;
	bool may_retry = s->reused && !s->retried && !s->resp_started && s->blen == 0 &&
			 !s->has_body && s->open;
	detach_backend(s, false);
	if (may_retry) {
		s->retried = true;
		s->walk.attempts = 0;
		s->detached = false;
		log_debug("http.pool_retry", KV("listener", s->owner->c->listener->conf->name),
			  KV("reason", "pooled backend connection was closed; request sent again"));
		/* The head is still at the start of obuf (no body). */
		s->osent = 0;
		pick(s);
		mark(s);
		return;
	}
	if (!s->err_status) {
		s->err_status = 502;
		s->err_why = s->fail_res == 0 ? "backend connection closed before the response ended"
					      : "backend connection failed before the response ended";
	}
	mark(s);
}

/* ---- backend_protocol h2: streams on the worker's backend connections ---- */

/* A worker's HTTP/2 backend connections (w->h2b, made on first use),
 * shared by all its client connections: per (group, member), as many as
 * the backend's stream limit asks for. Their completions carry the slot
 * (KG_OP_FWD_*, fwd.h on_worker_cqe); client connections whose streams
 * they moved are noted (touched) and moved on by h2b_flush (after_cqe),
 * after the completion, never inside another connection's handler. */
struct kg_h2b {
	struct kg_worker *w;
	struct h2_bconn **slots;
	uint32_t n_slots;
	struct h2_bconn *list;
	uint32_t *touched; /* client connection indices, deduplicated by touch_mark */
	uint32_t n_touched, cap_touched;
	bool touch_all; /* no room to note one: every connection looks */
};

/* Any path of this table: the worker finds the table by it. */
#define UD_IDX(bc) kg_fwd_ud_idx(KG_PATH_H2, (bc)->slot)

static struct kg_h2b *h2b_of(struct kg_worker *w)
{
	if (!w->h2b && (w->h2b = calloc(1, sizeof(*w->h2b))))
		w->h2b->w = w;
	return w->h2b;
}

static bool h2b_idle(const struct kg_worker *w)
{
	return !w->h2b || !w->h2b->list;
}

static struct kg_h2b *tab_of(const struct h2_stream *s)
{
	return s->owner->c->worker->h2b;
}

/* The stream's connection must be moved on after this completion. */
static void touch(struct h2_stream *s)
{
	struct kg_h2b *t = tab_of(s);
	uint32_t idx = s->owner->c->idx;
	for (uint32_t i = 0; i < t->n_touched; i++)
		if (t->touched[i] == idx)
			return;
	if (t->n_touched == t->cap_touched) {
		uint32_t cap = t->cap_touched ? 2 * t->cap_touched : 16;
		uint32_t *nt = realloc(t->touched, cap * sizeof(*nt));
		if (!nt) {
			t->touch_all = true;
			return;
		}
		t->touched = nt;
		t->cap_touched = cap;
	}
	t->touched[t->n_touched++] = idx;
}

static void bmark(struct h2_stream *s)
{
	mark(s);
	touch(s);
}

/* What a refused stream may be sent again with: one stream window of
 * body, the most a client can have sent before the stream is opened. */
#define REPLAY_MAX KG_H2_DEFAULT_WINDOW

static void drop_replay(struct h2_stream *s)
{
	free(s->pre);
	s->pre = NULL;
	s->pre_len = s->pre_cap = 0;
	s->no_replay = true;
}

/* Appends body bytes to pre, grown as needed up to REPLAY_MAX. 0, -E2BIG
 * past it, -ENOMEM. */
static int pre_append(struct h2_stream *s, const uint8_t *p, size_t n)
{
	if (n > REPLAY_MAX - s->pre_len)
		return -E2BIG;
	if (s->pre_len + n > s->pre_cap) {
		uint32_t cap = s->pre_cap ? s->pre_cap : 1024;
		while (cap < s->pre_len + n)
			cap *= 2;
		unsigned char *np = realloc(s->pre, cap);
		if (!np)
			return -ENOMEM;
		s->pre = np;
		s->pre_cap = cap;
	}
	memcpy(s->pre + s->pre_len, p, n);
	s->pre_len += (uint32_t)n;
	return 0;
}

static void bc_set_deadline(struct h2_stream *s)
{
	set_deadline(s, s->owner->c->worker->now_ms + conf_of(s->owner->c)->response_timeout_ms);
}

/* The stream leaves its backend connection; an open stream there is
 * reset (CANCEL: the client is gone, or kgate answered). */
static void bc_unassign(struct h2_stream *s)
{
	struct h2_bconn *bc = s->bc;
	if (!bc)
		return;
	if (s->bid > 0 && !bc->broken) {
		kg_h2c_set_stream_user(bc->sess, s->bid, NULL);
		if (kg_h2c_reset(bc->sess, s->bid, H2_CANCEL) == 0)
			kg_count(bc->tab->w, h2_backend_resets);
	}
	for (struct h2_stream **pp = &bc->streams; *pp; pp = &(*pp)->bnext)
		if (*pp == s) {
			*pp = s->bnext;
			break;
		}
	s->bnext = NULL;
	s->bid = -1;
	s->bc = NULL;
	if (--bc->assigned == 0)
		bc->idle_since_ms = bc->tab->w->now_ms;
}

static void bc_free(struct h2_bconn *bc)
{
	struct kg_h2b *t = bc->tab;
	for (struct h2_bconn **pp = &t->list; *pp; pp = &(*pp)->next)
		if (*pp == bc) {
			*pp = bc->next;
			break;
		}
	t->slots[bc->slot] = NULL;
	if (bc->fd >= 0)
		close(bc->fd);
	if (bc->counted)
		kg_health_conn_end(bc->group->health, (size_t)bc->member);
	if (bc->rbuf)
		kg_buf_put(&t->w->bufs, bc->rbuf);
	kg_h2c_destroy(bc->sess);
	kg_group_put(bc->group);
	free(bc->obuf);
	free(bc);
}

/* Ends the connection's operations; it is freed once none is in flight. */
static void bc_kick(struct h2_bconn *bc)
{
	struct kg_worker *w = bc->tab->w;
	if (bc->fd < 0 || bc->kicked)
		return;
	bc->kicked = true;
	if (bc->connecting) {
		struct io_uring_sqe *sqe = kg_worker_sqe(w);
		io_uring_prep_cancel64(sqe, kg_ud_pack(KG_OP_FWD_CONNECT, UD_IDX(bc), bc->fd), 0);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_CANCEL, 0, -1));
	} else if (bc->inflight > 0) {
		shutdown(bc->fd, SHUT_RDWR);
	}
}

/* The connection ends: its streams are answered 502 (or reset once
 * their response started); why is logged when it is a failure. */
static void bc_break(struct h2_bconn *bc, const char *why, bool failure)
{
	if (bc->broken)
		return;
	bc->broken = true;
	if (failure)
		kg_worker_warn(bc->tab->w, "h2.backend_failed", KV("listener", bc->listener),
			       KV("backend", bc->group->conf->backends[bc->member].address),
			       KV("reason", why));
	while (bc->streams) {
		struct h2_stream *s = bc->streams;
		bc_unassign(s);
		if (!s->answered && !s->err_status) {
			s->err_status = 502;
			s->err_why = "HTTP/2 backend connection failed before the response ended";
		}
		bmark(s);
	}
	if (bc->inflight > 0)
		bc_kick(bc);
}

static void bc_on_response(void *ctx, int32_t id, void *user, int status,
			   const struct kg_h2_field *f, size_t n, bool end)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s || s->answered || !s->open)
		return;
	s->status = status;
	s->resp_started = true;
	s->answered = end;
	if (s->pre)
		drop_replay(s); /* the backend took it: no resend now */
	bc_set_deadline(s);
	if (kg_h2_respond(s->owner->h2, s->id, status, f, n, end) < 0) {
		kg_h2_reset(s->owner->h2, s->id, H2_INTERNAL_ERROR);
		s->answered = true;
	}
	if (s->answered)
		access_log(s);
	bmark(s);
}

/* 100 Continue or 103 Early Hints from the backend: passed on as they
 * came (a failure loses the hint, not the exchange). */
static void bc_on_interim(void *ctx, int32_t id, void *user, int status,
			  const struct kg_h2_field *f, size_t n)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s || s->answered || !s->open || s->resp_started)
		return;
	(void)kg_h2_respond(s->owner->h2, s->id, status, f, n, false);
	bmark(s);
}

static void bc_on_data(void *ctx, int32_t id, void *user, const uint8_t *p, size_t n)
{
	struct h2_bconn *bc = ctx;
	struct h2_stream *s = user;
	if (!s || s->answered || !s->open ||
	    kg_h2_send_data(s->owner->h2, s->id, p, n, false, H2_SEND_LOW_WATER) < 0) {
		/* Nobody takes them: the backend's window reopens at once. */
		(void)kg_h2c_consume(bc->sess, id, n);
		return;
	}
	s->b_queued += n;
	s->bytes_out += n;
	kg_count_add(&bc->tab->w->stats.forwarded_b2c, n);
	bc_set_deadline(s);
	bmark(s);
}

/* The response's end: its trailers (grpc-status) as the client's
 * trailers, or an empty last DATA frame. */
static void bc_on_end(void *ctx, int32_t id, void *user, const struct kg_h2_field *f, size_t n)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s || s->answered || !s->open)
		return;
	struct kg_h2 *h2 = s->owner->h2;
	int r = n ? kg_h2_trailers(h2, s->id, f, n)
		  : kg_h2_send_data(h2, s->id, NULL, 0, true, H2_SEND_LOW_WATER);
	if (r < 0)
		kg_h2_reset(h2, s->id, H2_INTERNAL_ERROR);
	s->answered = true;
	access_log(s);
	bmark(s);
}

static void bc_on_send_room(void *ctx, int32_t id, void *user)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (s)
		bmark(s);
}

/* The backend's stream is over: a reset passes on to the client (as an
 * error response when no response started). */
static void bc_on_stream_close(void *ctx, int32_t id, void *user, uint32_t code)
{
	struct h2_bconn *bc = ctx;
	struct h2_stream *s = user;
	(void)id;
	if (!s)
		return;
	s->bid = -1; /* closed there: bc_unassign sends no reset */
	bc_unassign(s);
	if (code == H2_REFUSED_STREAM && s->open && !s->answered && !s->resp_started &&
	    !s->err_status && !s->b_retried && !s->no_replay) {
		/* Not processed (RFC 9113 8.7): once more, on a connection
		 * pick_h2 finds or opens (never this one if it is going away). */
		s->b_retried = true;
		kg_count(bc->tab->w, h2_backend_retries);
		log_debug("h2.backend_retry", KV("listener", bc->listener),
			  KV("backend", bc->group->conf->backends[bc->member].address),
			  KV("reason", "the backend refused the stream; request sent again"));
		pick_h2(s);
		bmark(s);
		return;
	}
	if (code != 0) {
		kg_count(bc->tab->w, h2_backend_resets);
		if (s->open && !s->answered) {
			if (s->resp_started) {
				kg_h2_reset(s->owner->h2, s->id,
					    code == H2_REFUSED_STREAM ? H2_INTERNAL_ERROR : code);
				s->answered = true;
				access_log(s);
			} else {
				s->err_status = 502;
				s->err_why = code == H2_REFUSED_STREAM ? "HTTP/2 backend refused the stream"
								       : "HTTP/2 backend reset the stream";
			}
		}
	} else if (s->open && !s->answered) {
		/* Closed cleanly without an end we saw: the client must not
		 * wait for one. */
		s->err_status = 502;
		s->err_why = "HTTP/2 backend ended the stream without a response";
	}
	bmark(s);
}

static void bc_on_goaway(void *ctx, int32_t last_id, uint32_t code)
{
	struct h2_bconn *bc = ctx;
	bc->goaway = true;
	kg_count(bc->tab->w, h2_backend_goaway);
	log_info("h2.backend_goaway", KV("listener", bc->listener),
		 KV("backend", bc->group->conf->backends[bc->member].address),
		 KV("last_stream", (long long)last_id), KV("code", code));
}

static const struct kg_h2c_handler bc_handler = {
	.on_response = bc_on_response,
	.on_interim = bc_on_interim,
	.on_data = bc_on_data,
	.on_end = bc_on_end,
	.on_send_room = bc_on_send_room,
	.on_stream_close = bc_on_stream_close,
	.on_goaway = bc_on_goaway,
};

static int take_slot(struct kg_h2b *t, struct h2_bconn *bc)
{
	for (uint32_t i = 0; i < t->n_slots; i++)
		if (!t->slots[i]) {
			t->slots[i] = bc;
			bc->slot = i;
			return 0;
		}
	uint32_t n = t->n_slots ? 2 * t->n_slots : 8;
	if (n > KG_FWD_SLOTS)
		return -ENOSPC;
	struct h2_bconn **ns = realloc(t->slots, n * sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	memset(ns + t->n_slots, 0, (n - t->n_slots) * sizeof(*ns));
	t->slots = ns;
	bc->slot = t->n_slots;
	t->slots[t->n_slots] = bc;
	t->n_slots = n;
	return 0;
}

/* A new backend connection to member m, for stream s (whose walk it
 * continues). NULL with the stream's answer set. */
static struct h2_bconn *bc_open(struct h2_stream *s, int m)
{
	struct kg_conn *c = s->owner->c;
	struct kg_worker *w = c->worker;
	struct kg_h2b *t = h2b_of(w);
	const struct kg_h2c_limits lim = {
		.stream_window = KG_H2_DEFAULT_WINDOW,
		.max_header_list_bytes = conf_of(c)->max_header_bytes,
		.max_streams_default = H2B_STREAMS_BEFORE_SETTINGS,
	};
	struct h2_bconn *bc = t ? calloc(1, sizeof(*bc)) : NULL;
	if (!bc || !(bc->sess = kg_h2c_create(&lim, &bc_handler, bc)) || take_slot(t, bc) < 0) {
		if (bc)
			kg_h2c_destroy(bc->sess);
		free(bc);
		s->err_status = 500;
		s->err_why = "out of memory for an HTTP/2 backend connection";
		return NULL;
	}
	bc->tab = t;
	bc->group = kg_group_get(s->group);
	bc->member = m;
	bc->walk = s->walk;
	bc->idle_timeout_ms = conf_of(c)->pool_idle_timeout_ms;
	snprintf(bc->listener, sizeof(bc->listener), "%s", c->listener->conf->name);
	bc->fd = kg_backend_socket(s->group, m);
	if (bc->fd < 0) {
		bc_free(bc);
		s->err_status = 502;
		s->err_why = "no backend socket";
		return NULL;
	}
	struct io_uring_sqe *sqe, *tsqe;
	kg_worker_sqe_timed(w, &sqe, &tsqe);
	kg_backend_prep_connect(c->listener, s->group, &bc->walk, m, bc->fd, sqe, tsqe);
	io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_FWD_CONNECT, UD_IDX(bc), bc->fd));
	io_uring_sqe_set_data64(tsqe, kg_ud_pack(KG_OP_FWD_LINK_TIMEOUT, UD_IDX(bc), bc->fd));
	bc->inflight = 2; /* the connect and its linked timeout */
	s->walk.attempts = bc->walk.attempts;
	bc->connecting = true;
	bc->next = t->list;
	t->list = bc;
	kg_count(w, http_backend_connects);
	kg_count(w, h2_backend_conns);
	return bc;
}

/* The member for the stream (smooth weighted round robin, per stream),
 * and a backend connection to it with room, or a new one. */
static void pick_h2(struct h2_stream *s)
{
	struct kg_conn *c = s->owner->c;
	int m = kg_backend_pick(c->listener, s->group, &s->walk);
	if (m < 0) {
		kg_count(c->worker, no_backend);
		bool tried = s->walk.tried || s->walk.attempts > c->listener->conf->connect_retries;
		s->err_status = tried ? 502 : 503;
		s->err_why = tried ? "no backend could be connected" : "no backend in rotation";
		return;
	}
	s->member = m;
	struct h2_bconn *bc = c->worker->h2b ? c->worker->h2b->list : NULL;
	for (; bc; bc = bc->next) {
		if (bc->group != s->group || bc->member != m || bc->broken || bc->kicked ||
		    bc->goaway)
			continue;
		if (bc->connecting ? bc->assigned < H2B_STREAMS_BEFORE_SETTINGS
				   : kg_h2c_can_open(bc->sess))
			break;
	}
	if (!bc && !(bc = bc_open(s, m)))
		return;
	s->bc = bc;
	s->bid = 0;
	s->bnext = bc->streams;
	bc->streams = s;
	bc->assigned++;
}

/* The stream's request on its backend connection: the head kgate built
 * for an HTTP/1.1 backend (screened, identity added: http.c), read back
 * as a field list, names in lower case, Host as :authority, and te:
 * trailers when the client sent it (gRPC needs it). */
static void bc_submit(struct h2_stream *s)
{
	struct h2_bconn *bc = s->bc;
	size_t lines = 0;
	for (uint32_t i = 0; i < s->olen; i++)
		lines += s->obuf[i] == '\n';
	struct kg_h2_field *f = calloc(lines + 1, sizeof(*f));
	if (!f) {
		s->err_status = 500;
		s->err_why = "out of memory";
		return;
	}
	size_t n = 0;
	char *p = memchr(s->obuf, '\n', s->olen);
	char *end = (char *)s->obuf + s->olen;
	const char *authority = s->authority;
	while (p && ++p < end && n < lines) {
		char *eol = memchr(p, '\r', (size_t)(end - p));
		char *colon = eol ? memchr(p, ':', (size_t)(eol - p)) : NULL;
		if (!eol || !colon)
			break; /* the blank line ending the head */
		for (char *k = p; k < colon; k++)
			if (*k >= 'A' && *k <= 'Z')
				*k = (char)(*k - 'A' + 'a');
		char *v = colon + 1;
		while (v < eol && *v == ' ')
			v++;
		struct kg_h2_field fl = {p, (size_t)(colon - p), v, (size_t)(eol - v)};
		p = memchr(eol, '\n', (size_t)(end - eol));
		/* HTTP/1.1 framing and hop-by-hop names have no place in HTTP/2
		 * (RFC 9113 8.2.2); the Host line is :authority. */
		if (fl.name_len == 4 && memcmp(fl.name, "host", 4) == 0) {
			if (!authority) {
				*eol = '\0';
				authority = v;
			}
			continue;
		}
		if ((fl.name_len == 17 && memcmp(fl.name, "transfer-encoding", 17) == 0) ||
		    (fl.name_len == 10 && memcmp(fl.name, "connection", 10) == 0) ||
		    (fl.name_len == 2 && memcmp(fl.name, "te", 2) == 0))
			continue;
		f[n++] = fl;
	}
	if (s->te_trailers)
		f[n++] = (struct kg_h2_field){"te", 2, "trailers", 8};
	const struct kg_h2c_request req = {
		.method = s->method, .scheme = "http", .authority = authority, .path = s->path,
		.fields = f, .n_fields = n, .end_stream = !s->has_body};
	int32_t id = kg_h2c_request(bc->sess, &req, s);
	free(f);
	if (id == -EAGAIN) {
		/* Full after all (the backend allows fewer streams than
		 * assumed while connecting): another connection. */
		bc_unassign(s);
		pick_h2(s);
		mark(s);
		return;
	}
	if (id < 0) {
		s->err_status = id == -ENOMEM ? 500 : 400;
		s->err_why = id == -ENOMEM ? "out of memory" : "request field not valid for HTTP/2";
		return;
	}
	s->bid = id;
	kg_count(s->owner->c->worker, h2_backend_streams);
	bc_set_deadline(s);
	if (s->has_body && (s->pre_len || s->req_end)) {
		if (kg_h2c_send_data(bc->sess, id, s->pre, s->pre_len, s->req_end,
				     KG_H2_DEFAULT_WINDOW / 2) < 0) {
			s->err_status = 500;
			s->err_why = "out of memory";
			return;
		}
		/* A resend queues again what the client's window already got
		 * back: c_queued counts what this stream carries. pre stays, a
		 * copy (bc_body). */
		s->c_queued = s->pre_len;
	}
}

/* A request body chunk from the client (bmode). */
static void bc_body(struct h2_stream *s, const uint8_t *p, size_t n)
{
	if (s->bid > 0) {
		if (kg_h2c_send_data(s->bc->sess, s->bid, p, n, false, KG_H2_DEFAULT_WINDOW / 2) <
		    0) {
			s->err_status = 500;
			s->err_why = "out of memory";
			s->drop_consume += (uint32_t)n;
		} else {
			s->c_queued += n;
			bc_set_deadline(s); /* the exchange moves: a stream, not a wait */
			/* The copy for a resend, while one may still come. */
			if (!s->no_replay && !s->resp_started && pre_append(s, p, n) < 0)
				drop_replay(s);
		}
		mark(s);
		return;
	}
	if (s->bid < 0 || s->answered || s->err_status) {
		s->drop_consume += (uint32_t)n;
		mark(s);
		return;
	}
	/* Not opened yet (connecting): the session's window bounds this. */
	int rv = pre_append(s, p, n);
	if (rv < 0) {
		s->err_status = 500;
		s->err_why = rv == -ENOMEM ? "out of memory" : "request body past the stream window";
		s->drop_consume += (uint32_t)n;
		mark(s);
	}
}

static void bc_body_end(struct h2_stream *s)
{
	if (s->bid > 0 && kg_h2c_send_data(s->bc->sess, s->bid, NULL, 0, true, 0) < 0) {
		s->err_status = 500;
		s->err_why = "out of memory";
	}
	mark(s);
}

/* A bmode stream's next step. */
static void stream_step_b(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	if (!s->open) {
		bc_unassign(s);
		if (!s->logged)
			access_log(s);
		free_stream(s);
		return;
	}
	if (s->err_status) {
		bc_unassign(s);
		answer_error(s, s->err_status, s->err_why);
		s->err_status = 0;
		s->err_why = NULL;
		return;
	}
	if (!s->bc)
		return;
	if (s->bid == 0 && !s->bc->connecting) {
		bc_submit(s);
		if (s->err_status) {
			mark(s);
			return;
		}
	}
	if (s->bid <= 0)
		return;
	/* Flow control, both ways: the client's window reopens for body
	 * bytes the backend session framed, the backend's for response bytes
	 * the client session framed. */
	uint64_t framed = s->c_queued - kg_h2c_send_pending(s->bc->sess, s->bid);
	if (framed > s->c_released) {
		kg_h2_consume(h->h2, s->id, (size_t)(framed - s->c_released));
		s->c_released = framed;
	}
	uint64_t taken = s->b_queued - kg_h2_send_pending(h->h2, s->id);
	if (taken > s->b_consumed) {
		kg_h2c_consume(s->bc->sess, s->bid, (size_t)(taken - s->b_consumed));
		s->b_consumed = taken;
	}
}

/* Moves a backend connection's bytes: its session's output out, a
 * receive armed; frees it once it is over and quiet. */
static void bc_io(struct h2_bconn *bc)
{
	struct kg_worker *w = bc->tab->w;
	bool live = !bc->broken && !bc->connecting && !bc->kicked;
	if (live && !bc->send_busy) {
		bc->olen = bc->osent = 0;
		while (bc->olen < H2B_OUT_BATCH) {
			const uint8_t *p;
			ssize_t n = kg_h2c_output(bc->sess, &p);
			if (n < 0) {
				bc_break(bc, "HTTP/2 backend session failed", true);
				break;
			}
			if (n == 0)
				break;
			if (bc->olen + (size_t)n > bc->ocap) {
				size_t cap = bc->olen + (size_t)n + H2B_OUT_BATCH;
				unsigned char *nb = realloc(bc->obuf, cap);
				if (!nb) {
					bc_break(bc, "out of memory", true);
					break;
				}
				bc->obuf = nb;
				bc->ocap = cap;
			}
			memcpy(bc->obuf + bc->olen, p, (size_t)n);
			bc->olen += (size_t)n;
		}
		if (!bc->broken && bc->olen > 0) {
			struct io_uring_sqe *sqe = kg_worker_sqe(w);
			io_uring_prep_send(sqe, bc->fd, bc->obuf, bc->olen, MSG_NOSIGNAL);
			io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_FWD_SEND, UD_IDX(bc), bc->fd));
			bc->send_busy = true;
			bc->inflight++;
		}
	}
	if (!bc->broken && live && !bc->recv_busy) {
		if (!bc->rbuf && !(bc->rbuf = kg_buf_get(&w->bufs))) {
			bc_break(bc, "out of memory for a receive buffer", true);
		} else {
			struct io_uring_sqe *sqe = kg_worker_sqe(w);
			io_uring_prep_recv(sqe, bc->fd, bc->rbuf, KG_POOL_BUF_SIZE, 0);
			io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_FWD_RECV, UD_IDX(bc), bc->fd));
			bc->recv_busy = true;
			bc->inflight++;
		}
	}
	if (!bc->broken && bc->assigned == 0 && !bc->connecting && !bc->send_busy &&
	    kg_h2c_done(bc->sess))
		bc_break(bc, "backend connection over", false);
	if (bc->broken) {
		if (bc->inflight > 0)
			bc_kick(bc);
		else
			bc_free(bc);
	}
}

/* Every backend connection of the worker sends what its session has. */
static void pump_backends(struct kg_h2b *t)
{
	struct h2_bconn *bc = t->list;
	while (bc) {
		struct h2_bconn *next = bc->next;
		bc_io(bc);
		bc = next;
	}
}

static void bc_on_connect(struct h2_bconn *bc, int res)
{
	struct kg_worker *w = bc->tab->w;
	bc->connecting = false;
	if (bc->kicked || bc->broken) {
		bc->broken = true;
		return; /* freed by bc_io once quiet */
	}
	if (res == 0) {
		kg_health_conn_start(bc->group->health, (size_t)bc->member);
		bc->counted = true;
		for (struct h2_stream *s = bc->streams; s; s = s->bnext)
			bmark(s);
		return;
	}
	const char *why = kg_backend_connect_failed(bc->group, &bc->walk, bc->member, res,
						    w->now_ms);
	kg_count(w, backend_connect_failed);
	kg_worker_warn(w, "backend.connect_failed", KV("listener", bc->listener),
		       KV("backend", bc->group->conf->backends[bc->member].address),
		       KV("err", why));
	close(bc->fd);
	bc->fd = -1;
	bc->broken = true;
	/* Each stream walks on: another member, or its answer. */
	while (bc->streams) {
		struct h2_stream *s = bc->streams;
		bc_unassign(s);
		s->bid = 0;
		s->walk.tried |= bc->walk.tried;
		if (s->walk.attempts < bc->walk.attempts)
			s->walk.attempts = bc->walk.attempts;
		pick_h2(s);
		bmark(s);
	}
}

static void bc_on_io(struct h2_bconn *bc, int op, int res)
{
	struct kg_worker *w = bc->tab->w;
	if (op == KG_OP_FWD_SEND) {
		bc->send_busy = false;
		if (res > 0 && !bc->broken) {
			bc->osent += (size_t)res;
			if (bc->osent < bc->olen) {
				struct io_uring_sqe *sqe = kg_worker_sqe(w);
				io_uring_prep_send(sqe, bc->fd, bc->obuf + bc->osent,
						   bc->olen - bc->osent, MSG_NOSIGNAL);
				io_uring_sqe_set_data64(sqe,
							kg_ud_pack(KG_OP_FWD_SEND, UD_IDX(bc), bc->fd));
				bc->send_busy = true;
				bc->inflight++;
			}
		} else if (!bc->broken) {
			bc_break(bc, "backend connection failed", true);
		}
		return;
	}
	bc->recv_busy = false;
	if (res > 0 && !bc->broken) {
		if (kg_h2c_feed(bc->sess, bc->rbuf, (size_t)res) < 0)
			bc_break(bc, "HTTP/2 backend protocol error", true);
	} else if (!bc->broken) {
		/* A backend that closes after its GOAWAY with nothing open
		 * ends the connection as agreed. */
		bool agreed = res == 0 && bc->goaway && bc->assigned == 0;
		bc_break(bc, res == 0 ? "backend closed the connection" : "backend connection failed",
			 !agreed);
	}
}

static void h2b_on_cqe(struct kg_worker *w, int op, uint32_t slot, int res)
{
	struct kg_h2b *t = w->h2b;
	struct h2_bconn *bc = t && slot < t->n_slots ? t->slots[slot] : NULL;
	if (!bc) {
		log_err("h2.stray_backend_completion", KV("worker", w->id), KV("op", op),
			KV("slot", slot));
		return;
	}
	bc->inflight--;
	if (op == KG_OP_FWD_CONNECT)
		bc_on_connect(bc, res);
	else if (op == KG_OP_FWD_SEND || op == KG_OP_FWD_RECV)
		bc_on_io(bc, op, res);
	pump_backends(t);
}

static void h2b_flush(struct kg_worker *w)
{
	struct kg_h2b *t = w->h2b;
	/* Bounded: a round moves streams on, which may touch others; each
	 * connection's own steps settle within it. */
	for (int round = 0; t && (t->n_touched || t->touch_all) && round < 16; round++) {
		bool all = t->touch_all;
		uint32_t n = all ? w->capacity : t->n_touched;
		uint32_t *idx = t->touched;
		t->touch_all = false;
		t->touched = NULL;
		t->n_touched = t->cap_touched = 0;
		for (uint32_t i = 0; i < n; i++) {
			struct kg_conn *c = w->conns[all ? i : idx[i]];
			if (!c)
				continue;
			if (c->state == KG_CONN_FORWARDING && c->fwd == &kg_fwd_h2_ops && c->fwd_ctx) {
				run_marked(h2_of(c));
				pump_output(c);
			}
			if (c->state == KG_CONN_CLOSING)
				kg_conn_release_if_idle(c);
		}
		free(idx);
	}
}

static void h2b_expire(struct kg_worker *w)
{
	struct kg_h2b *t = w->h2b;
	if (!t)
		return;
	for (struct h2_bconn *bc = t->list; bc; bc = bc->next)
		if (!bc->broken && !bc->connecting && bc->assigned == 0 &&
		    (w->draining || w->now_ms >= bc->idle_since_ms + bc->idle_timeout_ms))
			bc_break(bc, "idle", false);
	pump_backends(t);
}

/* The worker's end: what is left is closed (no operation is in flight). */
static void h2b_end(struct kg_worker *w)
{
	struct kg_h2b *t = w->h2b;
	if (!t)
		return;
	while (t->list) {
		struct h2_bconn *bc = t->list;
		while (bc->streams) {
			struct h2_stream *s = bc->streams;
			bc->streams = s->bnext;
			s->bc = NULL;
		}
		/* The worker's buffer pool may be gone already: freed here. */
		free(bc->rbuf);
		bc->rbuf = NULL;
		bc_free(bc);
	}
	free(t->slots);
	free(t->touched);
	free(t);
	w->h2b = NULL;
}

/* Everything a stream does next, from wherever it is. */
static void stream_step(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	struct kg_conn *c = h->c;
	struct kg_worker *w = c->worker;

	if (s->drop_consume && s->open) {
		kg_h2_consume(h->h2, s->id, s->drop_consume);
		s->drop_consume = 0;
	}
	if (s->bmode) {
		stream_step_b(s);
		return;
	}
	if (s->err_status) {
		if (s->fd >= 0 && !s->detached) {
			if (backend_busy(s)) {
				kick_backend(s);
				return; /* back here from the completions */
			}
			detach_backend(s, false);
		}
		answer_error(s, s->err_status, s->err_why);
		s->err_status = 0;
		s->err_why = NULL;
	}
	if (!s->open) {
		/* The client reset it, or it ended: once the socket is quiet
		 * the stream goes. */
		if (s->fd >= 0 && !s->detached) {
			if (backend_busy(s)) {
				kick_backend(s);
				return;
			}
			detach_backend(s, false);
		}
		if (!backend_busy(s)) {
			if (s->ws)
				ws_finish(s); /* a tunnel's end before its access line */
			if (!s->logged)
				access_log(s);
			free_stream(s);
		}
		return;
	}
	if (s->ws && s->status == 101) {
		ws_step(s);
		return;
	}
	if (s->detached || s->fd < 0 || s->connecting)
		return;
	backend_send(s);
	arm_recv(s);
	if (s->resp_done) {
		if (!request_sent(s)) {
			/* The backend answered before the request was all sent:
			 * its stream cannot be resynchronised. */
			s->dirty = true;
			if (backend_busy(s)) {
				shutdown(s->fd, SHUT_RDWR);
				return;
			}
		}
		if (backend_busy(s))
			return;
		/* A backend that refused an upgrade may still think of one
		 * (forward_http.c does not pool it either). */
		bool reusable = !s->dirty && !s->ws && kg_http_keep_alive(&s->resp) &&
				!w->draining;
		detach_backend(s, reusable);
	}
}

/* ---- session callbacks (inside kg_h2_feed / kg_h2_output) ---- */

static struct h2_stream *new_stream(struct h2_conn *h, int32_t id)
{
	struct h2_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	if (kg_http_msg_init(&s->resp, false, conf_of(h->c)->max_headers) < 0) {
		free(s);
		return NULL;
	}
	s->resp_init = true;
	s->resp.trailers = s->trailers; /* chunked trailers become HTTP/2 trailers */
	s->owner = h;
	s->id = id;
	s->open = true;
	s->fd = -1;
	s->member = -1;
	s->open_chunk = UINT32_MAX;
	s->route = "";
	s->start_ms = h->c->worker->now_ms;
	s->next = h->streams;
	h->streams = s;
	h->n_streams++;
	return s;
}

/* Whether the request may go on: the 403 mode of access rules, and 421
 * for a host another client policy serves. 0, or the status. */
static int refuse_status(struct h2_conn *h, const struct kg_h2_request *req, const char **why)
{
	struct kg_conn *c = h->c;
	if (c->access_denied_rule) {
		*why = "access denied by an access rule";
		return 403;
	}
	if (c->listener->conf->n_sni == 0)
		return 0;
	bool named = false;
	if (req->authority) {
		named = true;
		if (!kg_http_host_allowed(c->listener->conf, h->who.policy, req->authority,
					  strlen(req->authority)))
			goto misdirected;
	}
	for (size_t i = 0; i < req->n_fields; i++) {
		const struct kg_h2_field *f = &req->fields[i];
		if (strcmp(f->name, "host") != 0)
			continue;
		named = true;
		if (!kg_http_host_allowed(c->listener->conf, h->who.policy, f->value, f->value_len))
			goto misdirected;
	}
	if (named || kg_http_host_allowed(c->listener->conf, h->who.policy, "", 0))
		return 0;
misdirected:
	kg_count(c->worker, http_misdirected);
	*why = "the Host is served under another client policy than this connection's server name";
	return 421;
}

static void count_screened(struct h2_conn *h, const struct kg_http_screen *sc)
{
	struct kg_worker *w = h->c->worker;
	kg_count_add(&w->stats.http_hdr_dropped_reserved, sc->dropped[KG_HTTP_DROP_RESERVED]);
	kg_count_add(&w->stats.http_hdr_dropped_underscore, sc->dropped[KG_HTTP_DROP_UNDERSCORE]);
	if (sc->rejected)
		kg_count(w, http_rejected_underscore);
}

/* The request head for the backend, and where the stream goes. An answer
 * kgate makes instead is left in err_status. */
static void begin_request(struct h2_stream *s, const struct kg_h2_request *req)
{
	struct h2_conn *h = s->owner;
	struct kg_conn *c = h->c;
	snprintf(s->method, sizeof(s->method), "%s", req->method);
	snprintf(s->target, sizeof(s->target), "%s", req->path ? req->path : "");
	if (req->protocol && c->listener->conf->backend_protocol == KG_BP_H2) {
		/* Not offered on such listeners (h2_start); refused if sent anyway. */
		s->err_status = 400;
		s->err_why = "extended CONNECT is not forwarded to HTTP/2 backends";
		s->req_end = true;
		return;
	}
	if (req->protocol) {
		ws_begin_request(s, req);
		return;
	}
	if (!req->path) {
		/* A plain CONNECT (RFC 9113 8.5): kgate is no forward proxy. */
		s->err_status = 400;
		s->err_why = "CONNECT is not forwarded";
		s->req_end = true;
		return;
	}
	s->has_body = !req->end_stream;
	s->bmode = c->listener->conf->backend_protocol == KG_BP_H2;
	/* HTTP/2 backends frame bodies themselves: no chunking. */
	s->chunked = !s->bmode && s->has_body && req->content_length < 0;
	s->req_end = req->end_stream;
	int status = refuse_status(h, req, &s->err_why);
	if (status) {
		s->err_status = status;
		return;
	}
	const struct kg_http_request_line rl = {
		.method = req->method, .target = req->path, .host = req->authority,
		.chunked = s->chunked};
	struct kg_buf head = {0};
	struct kg_http_screen screen;
	/* struct kg_h2_field and struct kg_http_pair are the same four
	 * members; copied rather than cast. */
	struct kg_http_pair *pairs = req->n_fields ? calloc(req->n_fields, sizeof(*pairs)) : NULL;
	if (req->n_fields && !pairs) {
		s->err_status = 500;
		s->err_why = "out of memory";
		return;
	}
	for (size_t i = 0; i < req->n_fields; i++)
		pairs[i] = (struct kg_http_pair){req->fields[i].name, req->fields[i].name_len,
						 req->fields[i].value, req->fields[i].value_len};
	int r = kg_http_build_request_pairs(&head, &rl, pairs, req->n_fields, &h->who.ident, &screen);
	free(pairs);
	count_screened(h, &screen);
	if (r < 0) {
		kg_buf_free(&head);
		s->err_status = r == -EPERM ? 400 : 500;
		s->err_why = r == -EPERM ? "underscore in a header name" : "out of memory";
		return;
	}
	s->ocap = (uint32_t)head.len +
		  (s->has_body && !s->bmode ? KG_H2_DEFAULT_WINDOW + CHUNK_SLACK : 0);
	s->obuf = malloc(s->ocap);
	if (!s->obuf) {
		kg_buf_free(&head);
		s->err_status = 500;
		s->err_why = "out of memory";
		return;
	}
	memcpy(s->obuf, head.data, head.len);
	s->olen = (uint32_t)head.len;
	s->bytes_in = head.len;
	kg_buf_free(&head);
	route_stream(s, req);
}

/* Where the stream goes (routes, then the listener's group) and its
 * member; 404 in err_status when nothing matches. */
static void route_stream(struct h2_stream *s, const struct kg_h2_request *req)
{
	struct h2_conn *h = s->owner;
	struct kg_conn *c = h->c;
	/* A WebSocket stream routes as its handshake: a GET. */
	struct kg_route_req q = {.target = req->path, .target_len = strlen(req->path),
				 .method = s->ws ? "GET" : req->method,
				 .cert_bits = h->who.route_cert_bits};
	if (req->authority) {
		q.host = req->authority;
		q.host_len = strlen(req->authority);
	} else {
		for (size_t i = 0; i < req->n_fields; i++)
			if (strcmp(req->fields[i].name, "host") == 0) {
				q.host = req->fields[i].value;
				q.host_len = req->fields[i].value_len;
				break;
			}
	}
	s->group = kg_http_route(c->listener, &q, &s->route);
	if (!s->group) {
		s->err_status = 404;
		s->err_why = "no route matched and no default group";
		return;
	}
	if (!s->bmode) {
		pick(s);
		return;
	}
	for (size_t i = 0; i < req->n_fields; i++)
		if (strcmp(req->fields[i].name, "te") == 0)
			s->te_trailers = true; /* h2_session let only "trailers" through */
	if (!(s->path = strdup(req->path)) ||
	    (req->authority && !(s->authority = strdup(req->authority)))) {
		s->err_status = 500;
		s->err_why = "out of memory";
		return;
	}
	pick_h2(s);
}

static int on_request(void *ctx, int32_t id, const struct kg_h2_request *req)
{
	struct h2_conn *h = ctx;
	struct kg_conn *c = h->c;
	if (h->shut || h->ending)
		return -ECONNREFUSED; /* draining: GOAWAY said which streams count */
	struct h2_stream *s = new_stream(h, id);
	if (!s)
		return -ENOMEM;
	kg_h2_set_stream_user(h->h2, id, s);
	kg_count(c->worker, http_requests);
	kg_count(c->worker, h2_streams);
	begin_request(s, req);
	mark(s);
	return 0;
}

static void on_body(void *ctx, int32_t id, void *user, const uint8_t *p, size_t n)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s)
		return;
	s->bytes_in += n;
	if (s->ws) {
		ws_on_body(s, p, n);
		return;
	}
	if (s->bmode) {
		bc_body(s, p, n);
		return;
	}
	if (s->detached || s->err_status || s->answered || !s->obuf || !s->has_body) {
		/* Nobody takes it any more: released unread. */
		s->drop_consume += (uint32_t)n;
		mark(s);
		return;
	}
	if (s->chunked && s->open_chunk == UINT32_MAX) {
		s->open_chunk = s->olen;
		s->olen += CHUNK_HDR;
	}
	if (s->olen + n + CHUNK_SLACK / 2 > s->ocap) {
		/* More than the window the session advertised: it bounds what
		 * a client may send unconsumed, so this is not reached. */
		s->err_status = 500;
		s->err_why = "request body past the stream window";
		s->drop_consume += (uint32_t)n;
		mark(s);
		return;
	}
	memcpy(s->obuf + s->olen, p, n);
	s->olen += (uint32_t)n;
	s->queued_data += (uint32_t)n;
	if (s->chunked) {
		char hdr[CHUNK_HDR + 1];
		snprintf(hdr, sizeof(hdr), "%08x\r\n", s->olen - s->open_chunk - CHUNK_HDR);
		memcpy(s->obuf + s->open_chunk, hdr, CHUNK_HDR);
	}
	mark(s);
}

static void on_body_end(void *ctx, int32_t id, void *user)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s)
		return;
	s->req_end = true;
	if (s->ws)
		ws_c2b_end(s);
	if (s->bmode)
		bc_body_end(s);
	mark(s);
}

static void on_send_room(void *ctx, int32_t id, void *user)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s)
		return;
	s->waiting_room = false;
	mark(s);
}

static void on_stream_close(void *ctx, int32_t id, void *user, uint32_t error_code)
{
	struct h2_stream *s = user;
	(void)ctx;
	(void)id;
	if (!s)
		return;
	s->open = false;
	if (error_code && !s->answered)
		s->answered = true; /* reset: nothing more goes out on it */
	if (s->ws && error_code)
		ws_reset(s);
	mark(s);
}

static void on_abuse(void *ctx, int32_t stream_id, enum kg_h2_abuse kind)
{
	struct h2_conn *h = ctx;
	struct kg_worker *w = h->c->worker;
	switch (kind) {
#define H2_ABUSE_CASE(k, field)                                                                    \
	case k:                                                                                    \
		kg_count(w, field);                                                                \
		break;
		H2_ABUSE_CASE(KG_H2_ABUSE_STREAMS, h2_abuse_streams)
		H2_ABUSE_CASE(KG_H2_ABUSE_HEADER_LIST, h2_abuse_header_list)
		H2_ABUSE_CASE(KG_H2_ABUSE_RAPID_RESET, h2_abuse_rapid_reset)
		H2_ABUSE_CASE(KG_H2_ABUSE_CONTINUATION, h2_abuse_continuation)
		H2_ABUSE_CASE(KG_H2_ABUSE_HPACK, h2_abuse_hpack)
		H2_ABUSE_CASE(KG_H2_ABUSE_CONTROL_FLOOD, h2_abuse_control_flood)
		H2_ABUSE_CASE(KG_H2_ABUSE_MALFORMED, h2_abuse_malformed)
		H2_ABUSE_CASE(KG_H2_ABUSE_PROTOCOL, h2_abuse_protocol)
#undef H2_ABUSE_CASE
	case KG_H2_ABUSE_KINDS:
		return;
	}
	/* kg_worker_warn is rate-limited per worker: a flood of these is one
	 * line now and then, the counters carry the rest. */
	kg_worker_warn(w, "h2.abuse", KV("listener", h->c->listener->conf->name),
		       KV("client", h->who.peer), KV("kind", kg_h2_abuse_names[kind]),
		       KV("stream", (long long)stream_id));
}

static const struct kg_h2_handler handler = {
	.on_request = on_request,
	.on_body = on_body,
	.on_body_end = on_body_end,
	.on_send_room = on_send_room,
	.on_stream_close = on_stream_close,
	.on_abuse = on_abuse,
};

/* ---- client side ---- */

/* close_notify after what is queued, then close. */
static void end_connection(struct kg_conn *c, const char *reason)
{
	struct h2_conn *h = h2_of(c);
	if (h->ending)
		return;
	h->ending = true;
	h->io->end(c);
	if (!h->io->kernel)
		c->close_after_flush = true;
	snprintf(c->close_reason, sizeof(c->close_reason), "%s", reason);
	kg_conn_flush_client(c);
}

/* What the session has for the client, while its send queue is drained:
 * one batch, then wait for on_client_drained. */
static void pump_output(struct kg_conn *c)
{
	struct h2_conn *h = h2_of(c);
	if (c->state != KG_CONN_FORWARDING || h->writing || h->ending)
		return;
	size_t total = 0;
	while (total < H2_OUT_BATCH) {
		const uint8_t *p;
		h->feeding = true;
		ssize_t n = kg_h2_output(h->h2, &p);
		h->feeding = false;
		if (n < 0) {
			kg_conn_close(c, "HTTP/2 session failed");
			return;
		}
		if (n == 0)
			break;
		if (h->io->write(c, p, (size_t)n) < 0)
			return; /* closed */
		total += (size_t)n;
	}
	run_marked(h);
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (total > 0) {
		h->writing = true;
		kg_conn_flush_client(c);
		return;
	}
	if (kg_h2_done(h->h2))
		end_connection(c, h->shut ? "drained" : "HTTP/2 session over");
}

static void feed(struct kg_conn *c, const unsigned char *p, size_t n)
{
	struct h2_conn *h = h2_of(c);
	h->feeding = true;
	int r = kg_h2_feed(h->h2, p, n);
	h->feeding = false;
	if (r == -ENOMEM) {
		kg_conn_close(c, "out of memory for the HTTP/2 session");
		return;
	}
	/* -EPROTO: GOAWAY is queued; it goes out, then kg_h2_done closes. */
	run_marked(h);
}

/* Reads and feeds the client's plaintext until none is left. */
static void read_client(struct kg_conn *c)
{
	struct h2_conn *h = h2_of(c);
	if (h->early_len > 0) {
		size_t n = h->early_len;
		h->early_len = 0;
		feed(c, h->early_copy, n);
		free(h->early_copy);
		h->early_copy = NULL;
	}
	unsigned char *buf = kg_buf_get(&c->worker->bufs);
	if (!buf) {
		kg_conn_close(c, "out of memory for a request buffer");
		return;
	}
	while (c->state == KG_CONN_FORWARDING && !h->client_done) {
		int n = h->io->read(c, buf, KG_IO_BUF_SIZE);
		if (n > 0) {
			kg_count_add(&c->worker->stats.forwarded_c2b, (uint64_t)n);
			kg_conn_touch(c); /* kTLS reads pass by conn.c's receive */
			feed(c, buf, (size_t)n);
			continue;
		}
		if (n == KG_CIO_WANT && h->io->kernel)
			kg_conn_arm_poll(c, c->cfd, POLLIN, KG_OP_POLL_IN, &h->poll_in_armed);
		else if (n == KG_CIO_EOF)
			h->client_done = true;
		break;
	}
	kg_buf_put(&c->worker->bufs, buf);
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (h->client_done) {
		/* Streams cannot be answered to a client that is gone. */
		kg_conn_close(c, h->n_streams ? "client closed mid-stream" : "client closed");
		return;
	}
	pump_output(c);
}

static void h2_on_client_data(struct kg_conn *c)
{
	read_client(c);
}

static void h2_on_client_drained(struct kg_conn *c)
{
	struct h2_conn *h = h2_of(c);
	if (h->ending) {
		if (h->io->kernel) {
			kg_ktls_send_close_notify(c->cfd); /* best effort: closing anyway */
			kg_conn_close(c, c->close_reason);
		}
		return;
	}
	h->writing = false;
	pump_output(c);
}

static void h2_on_poll(struct kg_conn *c, int op, int fd, int res)
{
	struct h2_conn *h = h2_of(c);
	(void)op;
	(void)fd;
	c->inflight--;
	h->poll_in_armed = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (res < 0 && res != -ECANCELED) {
		kg_conn_close_err(c, "poll", -res);
		return;
	}
	read_client(c);
}

/* ---- backend completions ---- */

static struct h2_stream *stream_of_fd(struct h2_conn *h, int fd)
{
	for (struct h2_stream *s = h->streams; s; s = s->next)
		if (s->fd == fd && !s->detached)
			return s;
	return NULL;
}

static void h2_on_connect(struct kg_conn *c, int fd, int res)
{
	struct h2_conn *h = h2_of(c);
	c->inflight--;
	struct h2_stream *s = h ? stream_of_fd(h, fd) : NULL;
	if (!s || !s->connecting) {
		log_err("h2.stray_connect", KV("conn", c->idx), KV("fd", fd));
		return;
	}
	s->connecting = false;
	if (c->state != KG_CONN_FORWARDING || !s->open || s->err_status) {
		/* Cancelled, or nobody wants it any more. */
		detach_backend(s, false); /* closes fd: it was never counted */
		if (c->state == KG_CONN_FORWARDING)
			stream_step(s);
		else
			s->fd = -1;
		return;
	}
	if (res == 0) {
		s->fd = -1;
		attach(s, s->member, fd, false);
		stream_step(s);
		pump_output(c);
		return;
	}
	kg_conn_connect_failed_to(c, s->group, &s->walk, s->member, fd, res);
	s->fd = -1;
	pick(s);
	stream_step(s);
	pump_output(c);
}

static void on_backend_send(struct h2_conn *h, struct h2_stream *s, int res)
{
	struct kg_conn *c = h->c;
	s->send_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (s->failed || s->err_status || !s->open || s->resp_done) {
		stream_step(s);
		return;
	}
	if (res <= 0) {
		backend_broke(s, res == 0 ? -EPIPE : res);
		return;
	}
	s->osent += (uint32_t)res;
	s->inflight -= (uint32_t)res;
	set_deadline(s, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	if (s->inflight > 0) {
		/* The rest of the same bytes, before anything queued since. */
		struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
		io_uring_prep_send(sqe, s->fd, s->obuf + s->osent, s->inflight, MSG_NOSIGNAL);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HTTP_BACKEND_SEND, c->idx, s->fd));
		s->send_busy = true;
		c->inflight++;
		return;
	}
	if (s->inflight_data > 0) {
		/* The backend took them: the client may send as much again. */
		kg_h2_consume(h->h2, s->id, s->inflight_data);
		s->inflight_data = 0;
	}
	stream_step(s);
}

static void on_backend_recv(struct h2_conn *h, struct h2_stream *s, int res)
{
	struct kg_conn *c = h->c;
	s->recv_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (s->failed || s->err_status || !s->open) {
		if (s->failed && !s->err_status && s->open)
			backend_broke(s, s->fail_res);
		else
			stream_step(s);
		return;
	}
	if (res < 0) {
		backend_broke(s, res);
		return;
	}
	if (res == 0) {
		if (kg_http_eof(&s->resp) == KG_HTTP_DONE) {
			/* The body ran to the connection's end. */
			s->dirty = true;
			end_response(s);
			stream_step(s);
			return;
		}
		backend_broke(s, 0);
		return;
	}
	s->blen += (uint32_t)res;
	set_deadline(s, c->worker->now_ms + conf_of(c)->response_timeout_ms);
	process_response(s);
	if (!s->resp_done && !s->quickacked && s->fd >= 0 && !s->detached) {
		/* Once per response (http_balance.h). */
		s->quickacked = true;
		kg_http_quickack(c->worker, s->fd);
	}
	stream_step(s);
}

static void h2_on_backend_io(struct kg_conn *c, int op, int fd, int res,
			     const unsigned char *data)
{
	struct h2_conn *h = h2_of(c);
	(void)data; /* streams receive into their own buffers */
	c->inflight--;
	struct h2_stream *s = h ? stream_of_fd(h, fd) : NULL;
	if (!s) {
		log_err("h2.stray_backend_io", KV("conn", c->idx), KV("fd", fd), KV("op", op));
		return;
	}
	if (s->ws && s->status == 101)
		ws_on_backend_io(h, s, op, res);
	else if (op == KG_OP_HTTP_BACKEND_SEND)
		on_backend_send(h, s, res);
	else
		on_backend_recv(h, s, res);
	/* s may be gone now. When c is closing, release closes what is left. */
	if (c->state == KG_CONN_FORWARDING) {
		run_marked(h);
		pump_output(c);
	}
}

/* ---- WebSocket over HTTP/2 (RFC 8441) ---- */

/* An extended CONNECT with :protocol websocket becomes the HTTP/1.1
 * handshake of RFC 6455 to the backend (GET, Connection: upgrade,
 * Upgrade: websocket, a Sec-WebSocket-Key of kgate's: HTTP/2 carries
 * none), with the same screening and identity as every request. The
 * backend's 101, its Sec-WebSocket-Accept checked against that key, is
 * answered to the client with 200 (RFC 8441 5), and from then on the
 * stream's DATA and the backend socket are one tunnel (tunnel.h limits
 * and accounting, as HTTP/1.1 tunnels have). Any other answer is an
 * ordinary response.
 *
 * One buffer each way: client DATA waits in buf (at most the stream's
 * window, as the window reopens only once the backend took the bytes);
 * backend bytes are received into the stream's bbuf and queued in the
 * session, the next receive waiting until that queue fell below the low
 * water mark (on_send_room). Ends pass through: the client's END_STREAM
 * becomes a FIN to the backend, the backend's FIN an END_STREAM; a reset
 * either way (RST_STREAM, a backend error) resets or closes the other. */

/* The stream's window, which bounds the client's unconsumed bytes. */
#define WS_BUF KG_H2_DEFAULT_WINDOW
/* RFC 6455 1.3: appended to the key before hashing. */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
/* RFC 9113 7: a tunnel's resets carry H2_CANCEL (above) or this. */
#define H2_CONNECT_ERROR 0xau

struct h2_ws {
	char key[32];    /* Sec-WebSocket-Key sent to the backend (24 characters) */
	char accept[32]; /* the Sec-WebSocket-Accept its 101 must carry (28) */
	unsigned char *buf; /* client → backend: [0, len) taken from DATA, the first
			     * `inflight` of them being sent */
	uint32_t len, inflight;
	bool c2b_eof;  /* the client's END_STREAM came */
	bool c2b_shut; /* ... and went on as the backend's FIN */
	bool b2c_eof;  /* the backend's FIN came and went on as END_STREAM */
	bool cut;      /* kgate reset the stream (a limit, a backend error) */
	bool reset;    /* the stream closed with a reset, either side's */
	bool live;     /* counted in n_tunnels: the stream open and not cut */
	bool counted;  /* the tunnel's end is counted and logged */
	struct kg_tunnel tun;
};

/* A fresh key and the accept value it calls for (RFC 6455 4.1, 4.2.2). */
static int ws_make_key(struct h2_ws *ws)
{
	unsigned char nonce[16], md[EVP_MAX_MD_SIZE];
	unsigned md_len = 0;
	char *key = NULL, *accept = NULL;
	int r = -EIO;
	if (RAND_bytes(nonce, sizeof(nonce)) != 1)
		return -EIO;
	if (kg_b64_encode(nonce, sizeof(nonce), &key) < 0)
		return -ENOMEM;
	char in[sizeof(ws->key) + sizeof(WS_GUID)];
	int n = snprintf(in, sizeof(in), "%s%s", key, WS_GUID);
	if (EVP_Digest(in, (size_t)n, md, &md_len, EVP_sha1(), NULL) != 1)
		goto free_key;
	if (kg_b64_encode(md, md_len, &accept) < 0) {
		r = -ENOMEM;
		goto free_key;
	}
	snprintf(ws->key, sizeof(ws->key), "%s", key);
	snprintf(ws->accept, sizeof(ws->accept), "%s", accept);
	free(accept);
	r = 0;
free_key:
	free(key);
	return r;
}

/* The handshake for the backend: begin_request's work for an extended
 * CONNECT. Only :protocol websocket is forwarded. */
static void ws_begin_request(struct h2_stream *s, const struct kg_h2_request *req)
{
	struct h2_conn *h = s->owner;
	s->req_end = true; /* the handshake has no body; DATA is the tunnel's */
	if (strcmp(req->protocol, "websocket") != 0) {
		s->err_status = 400;
		s->err_why = "only the websocket :protocol is forwarded";
		return;
	}
	if (!(s->ws = calloc(1, sizeof(*s->ws)))) {
		s->err_status = 500;
		s->err_why = "out of memory";
		return;
	}
	int status = refuse_status(h, req, &s->err_why);
	if (status) {
		s->err_status = status;
		return;
	}
	if (ws_make_key(s->ws) < 0) {
		s->err_status = 500;
		s->err_why = "no WebSocket key";
		return;
	}
	/* The client's fields (a Sec-WebSocket-Key it should not have sent
	 * left out), then kgate's key. */
	struct kg_http_pair *pairs = calloc(req->n_fields + 1, sizeof(*pairs));
	if (!pairs) {
		s->err_status = 500;
		s->err_why = "out of memory";
		return;
	}
	size_t n = 0;
	for (size_t i = 0; i < req->n_fields; i++)
		if (strcmp(req->fields[i].name, "sec-websocket-key") != 0)
			pairs[n++] = (struct kg_http_pair){req->fields[i].name, req->fields[i].name_len,
							   req->fields[i].value,
							   req->fields[i].value_len};
	pairs[n++] = (struct kg_http_pair){"Sec-WebSocket-Key", 17, s->ws->key, strlen(s->ws->key)};
	const struct kg_http_request_line rl = {
		.method = "GET", .target = req->path, .host = req->authority, .chunked = false};
	struct kg_buf head = {0};
	struct kg_http_screen screen;
	int r = kg_http_build_request_pairs(&head, &rl, pairs, n, &h->who.ident, &screen);
	free(pairs);
	count_screened(h, &screen);
	if (r == 0)
		r = kg_http_add_upgrade(&head);
	if (r == 0 && !(s->obuf = malloc(head.len)))
		r = -ENOMEM;
	if (r < 0) {
		kg_buf_free(&head);
		s->err_status = r == -EPERM ? 400 : 500;
		s->err_why = r == -EPERM ? "underscore in a header name" : "out of memory";
		return;
	}
	memcpy(s->obuf, head.data, head.len);
	s->ocap = s->olen = (uint32_t)head.len;
	s->bytes_in = head.len;
	kg_buf_free(&head);
	route_stream(s, req);
}

static struct kg_tunnel_who ws_who(const struct h2_stream *s)
{
	return (struct kg_tunnel_who){.listener = s->owner->c->listener->conf->name,
				      .client = s->owner->who.peer,
				      .backend = s->group->conf->backends[s->member].address};
}

/* The tunnel no longer holds the connection open: its idle timeout
 * rules again (a reset that a client never reads ends by it). */
static void ws_unlive(struct h2_stream *s)
{
	if (!s->ws->live)
		return;
	s->ws->live = false;
	s->owner->n_tunnels--;
	kg_conn_touch(s->owner->c);
}

/* The tunnel's reset: to the client (RST_STREAM) and the backend (its
 * operations end); the stream goes once the session closed it. */
static void ws_cut(struct h2_stream *s, uint32_t code)
{
	struct h2_ws *ws = s->ws;
	if (ws->cut || !s->open)
		return;
	ws->cut = true;
	ws_unlive(s);
	kg_h2_reset(s->owner->h2, s->id, code);
	if (s->fd >= 0 && !s->detached)
		shutdown(s->fd, SHUT_RDWR);
	mark(s);
}

/* The backend answered 101 (its head parsed, the handshake sent in
 * full): the client gets 200 with the backend's fields but the accept
 * (and the hop-by-hop ones), then the bytes behind the 101. */
static void ws_switch(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	struct h2_ws *ws = s->ws;
	struct kg_worker *w = h->c->worker;
	if (!kg_http_websocket_upgrade(&s->resp)) {
		s->err_status = 502;
		s->err_why = "backend switched to another protocol than websocket";
		return;
	}
	if (!request_sent(s)) {
		/* It cannot have read a head still on its way. */
		s->err_status = 502;
		s->err_why = "backend switched protocols before the request was sent";
		return;
	}
	unsigned max = s->resp.n_fields;
	struct kg_http_pair *pairs = calloc(max + 1, sizeof(*pairs));
	struct kg_h2_field *f = calloc(max + 1, sizeof(*f));
	int n = pairs && f ? kg_http_response_pairs(&s->resp, pairs, max) : -ENOMEM;
	bool accepted = false;
	size_t k = 0;
	for (int i = 0; i < n; i++) {
		char *name = (char *)pairs[i].name;
		for (size_t j = 0; j < pairs[i].name_len; j++)
			name[j] = (char)tolower((unsigned char)name[j]);
		if (pairs[i].name_len == 20 && memcmp(name, "sec-websocket-accept", 20) == 0) {
			accepted = pairs[i].value_len == strlen(ws->accept) &&
				   memcmp(pairs[i].value, ws->accept, pairs[i].value_len) == 0;
			continue;
		}
		f[k++] = (struct kg_h2_field){name, pairs[i].name_len, pairs[i].value,
					      pairs[i].value_len};
	}
	int r = n < 0 ? n : accepted ? kg_h2_respond(h->h2, s->id, 200, f, k, false) : -EPROTO;
	free(pairs);
	free(f);
	if (r < 0) {
		s->err_status = 502;
		s->err_why = r == -EPROTO ? "backend's Sec-WebSocket-Accept does not match the key"
					  : "response head not sent";
		return;
	}
	s->status = 101;
	s->resp_started = true;
	ws->live = true;
	h->n_tunnels++;
	const struct kg_tunnel_who who = ws_who(s);
	kg_tunnel_open(&ws->tun, w, &who, s->target, "h2");
	set_deadline(s, kg_tunnel_deadline(&ws->tun, h->c->listener->conf));
	/* The backend's first frames may have come with its 101. */
	uint32_t behind = s->blen - s->bparsed;
	if (behind > 0 &&
	    kg_h2_send_data(h->h2, s->id, s->bbuf + s->bparsed, behind, false, H2_SEND_LOW_WATER) == 0) {
		s->bytes_out += behind;
		kg_count_add(&w->stats.forwarded_b2c, behind);
	}
	s->blen = s->bparsed = 0;
	mark(s);
}

/* Client DATA on a WebSocket stream: held until the backend takes it
 * (in the tunnel, or once its 101 opened it); dropped (released at
 * once) when no tunnel will take it. */
static void ws_on_body(struct h2_stream *s, const uint8_t *p, size_t n)
{
	struct h2_ws *ws = s->ws;
	mark(s);
	if (s->detached || s->err_status || s->answered || ws->cut || ws->c2b_eof ||
	    (s->resp_started && s->status != 101)) {
		s->drop_consume += (uint32_t)n;
		return;
	}
	if (!ws->buf && !(ws->buf = malloc(WS_BUF))) {
		s->drop_consume += (uint32_t)n;
		if (s->status == 101) {
			ws_cut(s, 2 /* INTERNAL_ERROR */);
			return;
		}
		s->err_status = 500;
		s->err_why = "out of memory for a tunnel buffer";
		return;
	}
	if (ws->len + n > WS_BUF) {
		/* The window the session advertised bounds it: not reached. */
		s->drop_consume += (uint32_t)n;
		ws_cut(s, 3 /* FLOW_CONTROL_ERROR */);
		return;
	}
	memcpy(ws->buf + ws->len, p, n);
	ws->len += (uint32_t)n;
}

static void ws_c2b_end(struct h2_stream *s)
{
	s->ws->c2b_eof = true;
}

static void ws_reset(struct h2_stream *s)
{
	s->ws->reset = true;
}

/* The tunnel's end, counted and logged once, with its access line. */
static void ws_finish(struct h2_stream *s)
{
	struct h2_ws *ws = s->ws;
	struct h2_conn *h = s->owner;
	if (s->status != 101 || ws->counted)
		return;
	ws->counted = true;
	ws_unlive(s);
	const struct kg_tunnel_who who = ws_who(s);
	kg_tunnel_closed(&ws->tun, h->c->worker, &who,
			 !ws->reset && !ws->cut && ws->c2b_eof && ws->b2c_eof, s->bytes_in,
			 s->bytes_out);
	access_log(s);
}

static void ws_free(struct h2_stream *s)
{
	if (!s->ws)
		return;
	free(s->ws->buf);
	free(s->ws);
	s->ws = NULL;
}

/* An open tunnel stream's next move (stream_step's, once the 101 came;
 * a closed one goes the way of every stream there). */
static void ws_step(struct h2_stream *s)
{
	struct h2_conn *h = s->owner;
	struct h2_ws *ws = s->ws;
	struct kg_conn *c = h->c;
	if (ws->cut || s->detached || s->fd < 0)
		return;
	if (!s->send_busy && ws->len > 0) {
		ws->inflight = ws->len;
		struct io_uring_sqe *sqe = kg_worker_sqe(c->worker);
		io_uring_prep_send(sqe, s->fd, ws->buf, ws->inflight, MSG_NOSIGNAL);
		io_uring_sqe_set_data64(sqe, kg_ud_pack(KG_OP_HTTP_BACKEND_SEND, c->idx, s->fd));
		s->send_busy = true;
		c->inflight++;
	} else if (!s->send_busy && ws->c2b_eof && !ws->c2b_shut) {
		ws->c2b_shut = true;
		shutdown(s->fd, SHUT_WR);
		kg_tunnel_side_ended(&ws->tun, KG_TUNNEL_CLIENT);
	}
	if (!ws->b2c_eof)
		arm_recv(s);
}

/* A completion on a tunnel stream's backend socket. */
static void ws_on_backend_io(struct h2_conn *h, struct h2_stream *s, int op, int res)
{
	struct h2_ws *ws = s->ws;
	struct kg_conn *c = h->c;
	struct kg_worker *w = c->worker;
	if (op == KG_OP_HTTP_BACKEND_SEND)
		s->send_busy = false;
	else
		s->recv_busy = false;
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (!s->open || ws->cut) {
		stream_step(s);
		return;
	}
	if (res < 0 || (res == 0 && op == KG_OP_HTTP_BACKEND_SEND)) {
		/* The backend reset or failed: so does the stream (RFC 9113 8.5). */
		ws_cut(s, H2_CONNECT_ERROR);
	} else if (op == KG_OP_HTTP_BACKEND_SEND) {
		/* The backend took them: the client may send as much again. */
		memmove(ws->buf, ws->buf + res, ws->len - (uint32_t)res);
		ws->len -= (uint32_t)res;
		ws->inflight = 0;
		kg_h2_consume(h->h2, s->id, (size_t)res);
		kg_tunnel_touch(&ws->tun, w->now_ms);
	} else if (res == 0) {
		ws->b2c_eof = true;
		if (kg_h2_send_data(h->h2, s->id, NULL, 0, true, H2_SEND_LOW_WATER) < 0)
			ws_cut(s, 2 /* INTERNAL_ERROR */);
		kg_tunnel_side_ended(&ws->tun, KG_TUNNEL_BACKEND);
	} else {
		if (kg_h2_send_data(h->h2, s->id, s->bbuf, (size_t)res, false, H2_SEND_LOW_WATER) < 0) {
			ws_cut(s, 2 /* INTERNAL_ERROR */);
		} else {
			s->bytes_out += (uint64_t)res;
			kg_count_add(&w->stats.forwarded_b2c, (uint64_t)res);
			kg_tunnel_touch(&ws->tun, w->now_ms);
			if (kg_h2_send_pending(h->h2, s->id) >= H2_SEND_LOW_WATER)
				s->waiting_room = true;
		}
	}
	stream_step(s);
}

/* The tunnel's limits (check_deadline): a stream past one is reset. */
static void ws_check(struct h2_stream *s, uint64_t *next)
{
	struct h2_ws *ws = s->ws;
	const struct kg_listener_conf *lc = s->owner->c->listener->conf;
	if (!s->open || ws->cut)
		return;
	if (kg_tunnel_expired(&ws->tun, lc, s->owner->c->worker->now_ms) != KG_TUNNEL_OPEN) {
		ws_cut(s, H2_CANCEL);
		return;
	}
	uint64_t at = kg_tunnel_deadline(&ws->tun, lc);
	if (at < *next)
		*next = at;
}

/* ---- lifecycle ---- */

static int h2_start(struct kg_conn *c, const void *early, size_t early_len, char *err,
		    size_t errlen)
{
	const struct kg_listener_conf *lc = c->listener->conf;
	const struct kg_http_conf *hc = conf_of(c);
	struct h2_conn *h = calloc(1, sizeof(*h));
	snprintf(err, errlen, "out of memory for HTTP/2 state");
	if (!h)
		return -ENOMEM;
	c->fwd_ctx = h;
	h->c = c;
	h->io = c->path == KG_PATH_H2_KTLS ? &kg_client_io_ktls : &kg_client_io_openssl;
	const struct kg_h2_limits limits = {
		.max_concurrent_streams = lc->h2_max_streams,
		.max_header_list_bytes = hc->max_header_bytes,
		.stream_window = KG_H2_DEFAULT_WINDOW,
		.reset_budget = H2_RESET_BUDGET,
		.control_budget = H2_CONTROL_BUDGET,
	};
	/* SETTINGS_ENABLE_CONNECT_PROTOCOL: WebSocket streams (RFC 8441). */
	/* RFC 8441 tunnels go to HTTP/1.1 backends only: with
	 * backend_protocol h2 the extended CONNECT is not offered. */
	h->h2 = kg_h2_create(&limits, c->listener->conf->backend_protocol != KG_BP_H2, &handler, h);
	if (!h->h2)
		return -ENOMEM;

	/* The identity comes from the handshake: after a kTLS handoff the
	 * SSL object is gone, so it is taken now, once for every stream. */
	if (kg_http_client_init(&h->who, c) < 0)
		return -ENOMEM;
	if (early_len > 0) {
		if (!(h->early_copy = malloc(early_len)))
			return -ENOMEM;
		memcpy(h->early_copy, early, early_len);
		h->early_len = early_len;
		kg_count_add(&c->worker->stats.forwarded_c2b, early_len);
	}
	h->idle_deadline_ms = c->worker->now_ms + hc->keepalive_timeout_ms;
	kg_conn_timer_at(c, h->idle_deadline_ms);
	return 0;
}

static void h2_run(struct kg_conn *c)
{
	/* The server preface (SETTINGS) goes out at once; the client's
	 * preface may have come with its Finished. */
	pump_output(c);
	if (c->state == KG_CONN_FORWARDING)
		read_client(c);
}

/* Deadlines: each stream's response timeout, the connection's keep-alive
 * timeout while no stream is open, and the drain. */
static uint64_t h2_check_deadline(struct kg_conn *c)
{
	struct h2_conn *h = h2_of(c);
	struct kg_worker *w = c->worker;
	if (c->state != KG_CONN_FORWARDING)
		return 0;
	if (w->draining && !h->shut && !h->ending) {
		h->shut = true;
		kg_count(w, h2_goaway_drain);
		kg_h2_shutdown(h->h2);
		pump_output(c);
		if (c->state != KG_CONN_FORWARDING)
			return 0;
	}
	if (w->now_ms >= c->deadline_ms && h->n_tunnels == 0) {
		/* No byte moved to or from the client for idle_timeout_ms: a
		 * client that stopped reading pins nothing longer than that.
		 * While a WebSocket stream is open its own limits rule. */
		kg_count(w, idle_timeout);
		kg_conn_close(c, "idle timeout");
		return 0;
	}
	/* With tunnels open the idle deadline may lie behind: looked at
	 * again an idle timeout from now, or at a tunnel's deadline. */
	uint64_t next = c->deadline_ms > w->now_ms
				? c->deadline_ms
				: w->now_ms + c->listener->conf->idle_timeout_ms;
	for (struct h2_stream *s = h->streams; s; s = s->next) {
		if (s->ws && s->status == 101) {
			ws_check(s, &next);
			continue;
		}
		if (!s->open || s->answered || s->deadline_ms == 0)
			continue;
		if (w->now_ms >= s->deadline_ms) {
			s->deadline_ms = 0;
			if (s->connecting)
				continue; /* the connect has its own linked timeout */
			s->err_status = 504;
			s->err_why = "backend response timeout";
			mark(s);
			continue;
		}
		if (s->deadline_ms < next)
			next = s->deadline_ms;
	}
	run_marked(h);
	pump_output(c);
	if (c->state != KG_CONN_FORWARDING)
		return 0;
	if (h->n_streams == 0 && !h->ending) {
		if (h->shut_at_ms && w->now_ms >= h->shut_at_ms + conf_of(c)->request_timeout_ms) {
			/* GOAWAY did not leave: the client does not read. */
			kg_conn_close(c, "client did not take GOAWAY in time");
			return 0;
		}
		if (!h->shut_at_ms && w->now_ms >= h->idle_deadline_ms) {
			kg_count(w, idle_timeout);
			h->shut = true;
			h->shut_at_ms = w->now_ms;
			kg_h2_shutdown(h->h2);
			pump_output(c); /* GOAWAY, then kg_h2_done ends the connection */
			if (c->state != KG_CONN_FORWARDING)
				return 0;
		}
		uint64_t at = h->shut_at_ms ? h->shut_at_ms + conf_of(c)->request_timeout_ms
					    : h->idle_deadline_ms;
		if (at < next)
			next = at;
	}
	if (h->ending) {
		/* The last bytes have this long to leave. */
		uint64_t at = w->now_ms + conf_of(c)->request_timeout_ms;
		return at < next ? at : next;
	}
	return next;
}

static void h2_on_close(struct kg_conn *c)
{
	struct h2_conn *h = h2_of(c);
	if (!h)
		return;
	for (struct h2_stream *s = h->streams; s; s = s->next)
		if (s->fd >= 0 && !s->detached && backend_busy(s))
			kick_backend(s);
	/* The worker's backend connections serve on; this one's streams
	 * there are reset. */
	for (struct h2_stream *s = h->streams; s; s = s->next)
		bc_unassign(s);
	if (!h2b_idle(c->worker))
		pump_backends(c->worker->h2b); /* the resets go out now */
}

/* fwd.h cut: a member left the rotation (disabled, or unhealthy under
 * cut_on_unhealthy). Unlike an HTTP/1.1 connection, which has one member
 * and is closed, only the streams on that member end: 503 when their
 * response had not begun, a reset when it had (answer_error), a tunnel
 * reset (CANCEL); the connection and its other streams go on. */
static bool h2_cut(struct kg_conn *c, const struct kg_listener_rt *published)
{
	struct h2_conn *h = h2_of(c);
	if (!h)
		return false;
	for (struct h2_stream *s = h->streams; s; s = s->next) {
		bool on_member = s->bmode ? s->bc != NULL : s->fd >= 0 && !s->detached;
		if (!s->open || s->answered || s->err_status || !on_member || !s->group ||
		    s->member < 0)
			continue;
		int why = kg_conn_member_cut(c, s->group, s->member, published);
		if (why == KG_CUT_NONE)
			continue;
		if (s->ws && s->status == 101) {
			ws_cut(s, H2_CANCEL);
			continue;
		}
		s->err_status = 503;
		s->err_why = why == KG_CUT_DISABLED ? "backend disabled" : "backend unhealthy";
		mark(s);
	}
	run_marked(h);
	pump_output(c);
	return c->state != KG_CONN_FORWARDING;
}

static void h2_release(struct kg_conn *c)
{
	struct h2_conn *h = h2_of(c);
	if (!h)
		return;
	while (h->streams) {
		struct h2_stream *s = h->streams;
		if (s->fd >= 0 && !s->detached)
			detach_backend(s, false);
		if (s->ws)
			ws_finish(s);
		if (!s->logged && s->method[0])
			access_log(s);
		free_stream(s);
	}
	kg_h2_destroy(h->h2);
	kg_http_client_free(&h->who);
	free(h->early_copy);
	free(h);
	c->fwd_ctx = NULL;
}

const struct kg_fwd_ops kg_fwd_h2_ops = {
	.name = "h2",
	.start = h2_start,
	.run = h2_run,
	.on_client_data = h2_on_client_data,
	.on_client_drained = h2_on_client_drained,
	.on_poll = h2_on_poll,
	.on_backend_io = h2_on_backend_io,
	.on_connect = h2_on_connect,
	.check_deadline = h2_check_deadline,
	.on_close = h2_on_close,
	.release = h2_release,
	.cut = h2_cut,
	.on_worker_cqe = h2b_on_cqe,
	.after_cqe = h2b_flush,
	.on_worker_tick = h2b_expire,
	.worker_idle = h2b_idle,
	.worker_end = h2b_end,
};
