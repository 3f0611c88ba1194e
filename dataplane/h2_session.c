/* The HTTP/2 server session of one client connection over libnghttp2
 * (h2_session.h): nghttp2 frames, decodes HPACK and keeps flow control;
 * this file collects each request head into its stream's arena, checks
 * what the forwarder relies on, keeps the response queues and enforces the
 * abuse limits. */
#include "h2_session.h"
#include "h2_block.h"
#include "h2_sendq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <nghttp2/nghttp2.h>

const char *const kg_h2_abuse_names[KG_H2_ABUSE_KINDS] = {
	[KG_H2_ABUSE_STREAMS] = "streams",
	[KG_H2_ABUSE_HEADER_LIST] = "header_list",
	[KG_H2_ABUSE_RAPID_RESET] = "rapid_reset",
	[KG_H2_ABUSE_CONTINUATION] = "continuation",
	[KG_H2_ABUSE_HPACK] = "hpack",
	[KG_H2_ABUSE_CONTROL_FLOOD] = "control_flood",
	[KG_H2_ABUSE_MALFORMED] = "malformed",
	[KG_H2_ABUSE_PROTOCOL] = "protocol",
};

/* nghttp2 takes input in pieces of this size at most, so a connection
 * error found early stops the work a large read would still cost. */
#define FEED_PIECE 16384u
/* The compressed block may be split in at most this many CONTINUATION
 * frames (plus one per 4 KiB of max_header_list_bytes): legitimate
 * clients split at SETTINGS_MAX_FRAME_SIZE (16 KiB), empty or tiny
 * CONTINUATION frames only cost the server (CVE-2024-27316). */
#define CONT_FRAMES_BASE 8u
/* Decoded bytes per compressed byte past which an oversized header list
 * counts as an HPACK bomb (a small block referencing big table entries)
 * rather than a large list a client really sent: real requests rarely pass
 * the limit at all, and then mostly with literal bytes (Huffman: < 2x). */
#define HPACK_BOMB_RATIO 4u
/* Our HPACK encoder's dynamic table (responses): nghttp2's 4 KiB default
 * is per connection, held while it is idle; repeated response fields
 * (content-type, server) fit in 1 KiB. */
#define DEFLATE_TABLE_BYTES 1024u
/* The connection's receive window: this many streams' windows, so that a
 * few uploads in parallel do not wait on each other, while what a client
 * can make the forwarder hold stays a small multiple of one stream's. */
#define CONN_WINDOW_STREAMS 4u
#define MAX_WINDOW 0x7fffffffu

/* A token bucket: rate per second, burst twice that (h2_session.h). */
struct bucket {
	uint64_t milli;   /* tokens x 1000 */
	uint64_t last_ns; /* CLOCK_MONOTONIC of the last refill */
	uint32_t rate;
};

struct kg_h2_stream {
	struct kg_h2 *h;
	struct kg_h2_stream *prev, *next; /* h->streams: freed at destroy */
	int32_t id;
	void *user;

	struct kg_h2_block head; /* the request head being read */
	size_t list_bytes;   /* decoded, RFC 9113 6.5.2 accounting */
	struct kg_h2_field *fields;
	int64_t content_length;
	uint64_t body_seen;     /* DATA payload delivered */
	uint64_t unconsumed;    /* delivered, not yet given back by kg_h2_consume */

	bool too_large;   /* past max_header_list_bytes: answered 431 */
	bool in_trailers; /* the block being read is request trailers */
	bool accepted;    /* on_request took it: the forwarder knows the id */
	bool remote_done; /* the client ended its side */
	bool reset_ours;  /* a reset that is not a malformation (forwarder, refusal) */
	bool malformed;   /* reported as KG_H2_ABUSE_MALFORMED already */
	bool reset_after_head; /* RST_STREAM(NO_ERROR) once our 431 is sent */

	/* response */
	bool responded;   /* head submitted */
	bool data_source; /* with a body: the read callback drains q */
	bool data_end;    /* the forwarder queued its last byte (or trailers) */
	bool deferred;    /* the read callback said DEFERRED: resume on data */
	struct kg_h2_sendq sq; /* on_send_room owed once it is down to its low water */
	nghttp2_nv *trailers; /* one block: nv array, then the strings */
	size_t n_trailers;
};

struct kg_h2 {
	nghttp2_session *s;
	struct kg_h2_limits lim;
	struct kg_h2_handler cb;
	void *ctx;
	nghttp2_mem mem;
	size_t mem_bytes; /* held by nghttp2 and by this file for h */
	struct kg_h2_stream *streams;
	size_t n_open;     /* accepted streams not yet closed */
	uint32_t cont_max; /* CONTINUATION frames per block */
	size_t block_bytes; /* the header block being read: HEADERS + CONTINUATION payloads */
	uint32_t n_cont;    /* its CONTINUATION frames */
	struct bucket resets, control;
	bool conn_error;   /* GOAWAY with an error is queued (or sent) */
	bool fatal;        /* nghttp2 cannot go on: nothing more to send */
	bool shutting;     /* kg_h2_shutdown: no new stream */
	bool dead;         /* being destroyed: no callback any more */
	bool allow_connect_protocol; /* advertised (in force before the client's ACK) */
};

/* ---- memory: every byte held for a connection is counted ---- */

/* Each block is prefixed with its size; 16 keeps malloc's alignment. */
#define MEM_HDR 16u

static void *mem_malloc(size_t n, void *ud)
{
	struct kg_h2 *h = ud;
	if (n > SIZE_MAX - MEM_HDR)
		return NULL;
	unsigned char *b = malloc(n + MEM_HDR);
	if (!b)
		return NULL;
	memcpy(b, &n, sizeof(n));
	h->mem_bytes += n;
	return b + MEM_HDR;
}

static void mem_free(void *p, void *ud)
{
	struct kg_h2 *h = ud;
	if (!p)
		return;
	unsigned char *b = (unsigned char *)p - MEM_HDR;
	size_t n;
	memcpy(&n, b, sizeof(n));
	h->mem_bytes -= n;
	free(b);
}

static void *mem_calloc(size_t nmemb, size_t size, void *ud)
{
	if (size && nmemb > SIZE_MAX / size)
		return NULL;
	void *p = mem_malloc(nmemb * size, ud);
	if (p)
		memset(p, 0, nmemb * size);
	return p;
}

static void *mem_realloc(void *p, size_t n, void *ud)
{
	struct kg_h2 *h = ud;
	if (!p)
		return mem_malloc(n, ud);
	if (n > SIZE_MAX - MEM_HDR)
		return NULL;
	unsigned char *b = (unsigned char *)p - MEM_HDR;
	size_t old;
	memcpy(&old, b, sizeof(old));
	unsigned char *nb = realloc(b, n + MEM_HDR);
	if (!nb)
		return NULL;
	memcpy(nb, &n, sizeof(n));
	h->mem_bytes = h->mem_bytes - old + n;
	return nb + MEM_HDR;
}

/* ---- rate limits ---- */

static uint64_t now_ns(void)
{
	struct timespec ts;
	/* CLOCK_MONOTONIC cannot fail on Linux; a zero time only means no refill. */
	if (clock_gettime(CLOCK_MONOTONIC, &ts) == -1)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void bucket_init(struct bucket *b, uint32_t rate)
{
	b->rate = rate;
	b->milli = (uint64_t)rate * 2000u;
	b->last_ns = now_ns();
}

/* Takes one token; false when the budget is spent. */
static bool bucket_take(struct bucket *b)
{
	uint64_t now = now_ns();
	uint64_t cap = (uint64_t)b->rate * 2000u;
	if (now > b->last_ns) {
		uint64_t ms = (now - b->last_ns) / 1000000u;
		if (ms >= 2000u) {
			b->milli = cap;
			b->last_ns = now;
		} else if (ms > 0) {
			b->milli += ms * b->rate; /* rate/s = rate milli-tokens per ms */
			if (b->milli > cap)
				b->milli = cap;
			b->last_ns += ms * 1000000u;
		}
	}
	if (b->milli < 1000u)
		return false;
	b->milli -= 1000u;
	return true;
}

/* ---- streams ---- */

static struct kg_h2_stream *stream_of(const struct kg_h2 *h, int32_t id)
{
	if (id <= 0)
		return NULL;
	return nghttp2_session_get_stream_user_data(h->s, id);
}

static void stream_free(struct kg_h2 *h, struct kg_h2_stream *st)
{
	if (st->prev)
		st->prev->next = st->next;
	else
		h->streams = st->next;
	if (st->next)
		st->next->prev = st->prev;
	kg_h2_block_free(&st->head, mem_free, h);
	mem_free(st->fields, h);
	mem_free(st->sq.q, h);
	mem_free(st->trailers, h);
	mem_free(st, h);
}

static void abuse(struct kg_h2 *h, int32_t id, enum kg_h2_abuse kind)
{
	if (!h->dead && h->cb.on_abuse)
		h->cb.on_abuse(h->ctx, id, kind);
}

/* The peer misbehaved across streams: GOAWAY with code, then the end.
 * nghttp2 ignores every frame after this. */
static void conn_abuse(struct kg_h2 *h, enum kg_h2_abuse kind, uint32_t code)
{
	if (h->conn_error)
		return;
	h->conn_error = true;
	abuse(h, 0, kind);
	/* Only NOMEM can fail here; then nothing is queued and feed's caller
	 * closes the connection on -EPROTO anyway. */
	(void)nghttp2_session_terminate_session(h->s, code);
}

static int stream_reset(struct kg_h2 *h, struct kg_h2_stream *st, uint32_t code)
{
	int rv = nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, st->id, code);
	return rv == 0 ? 0 : (rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL);
}

/* A request that fails validation: reset, never handed on. */
static int stream_malformed(struct kg_h2 *h, struct kg_h2_stream *st)
{
	if (!st->malformed) {
		st->malformed = true;
		abuse(h, st->id, KG_H2_ABUSE_MALFORMED);
	}
	return stream_reset(h, st, NGHTTP2_PROTOCOL_ERROR);
}

/* Resets and refusals spend the reset budget (CVE-2023-44487: a client
 * that opens and cancels streams makes the backend work for nothing). */
static void spend_reset(struct kg_h2 *h)
{
	if (!h->conn_error && !bucket_take(&h->resets))
		conn_abuse(h, KG_H2_ABUSE_RAPID_RESET, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* ---- request validation (beyond nghttp2's own, which runs first) ---- */

static bool has_ctl(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
			return true;
	return false;
}

static bool name_ok(const char *p, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c <= ' ' || c >= 0x7f || (c >= 'A' && c <= 'Z') || c == ':')
			return false;
	}
	return true;
}

static bool name_is(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);
	return n == l && memcmp(p, lit, l) == 0;
}

/* RFC 9113 8.2.2: fields that only mean something on one HTTP/1.1 hop. */
static bool connection_specific(const char *name, size_t n, const char *value, size_t vn)
{
	if (name_is(name, n, "connection") || name_is(name, n, "keep-alive") ||
	    name_is(name, n, "proxy-connection") || name_is(name, n, "transfer-encoding") ||
	    name_is(name, n, "upgrade"))
		return true;
	return name_is(name, n, "te") && !(vn == 8 && strncasecmp(value, "trailers", 8) == 0);
}

/* A single decimal number, as nghttp2 parses it; -1 if not. */
static int64_t parse_length(const char *p, size_t n)
{
	if (n == 0 || n > 18)
		return -1;
	int64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v;
}

/* The head is complete: joins cookie crumbs, checks it, builds the
 * request. 0 and *ok; 0 and !*ok when malformed; -ENOMEM. */
static int build_request(struct kg_h2 *h, struct kg_h2_stream *st, struct kg_h2_request *req,
			 bool *ok)
{
	*ok = false;
	memset(req, 0, sizeof(*req));
	req->content_length = -1;
	/* Cookie crumbs (RFC 9113 8.2.3): one field at the first crumb's place. */
	struct kg_h2_block *b = &st->head;
	size_t cookies = 0, cookie_len = 0, first_cookie = SIZE_MAX;
	for (size_t i = 0; i < b->n; i++) {
		struct kg_h2_field f = kg_h2_block_field(b, i);
		if (name_is(f.name, f.name_len, "cookie")) {
			if (first_cookie == SIZE_MAX)
				first_cookie = i;
			cookie_len += (cookies ? 2 : 0) + f.value_len;
			cookies++;
		}
	}
	if (cookies > 1) {
		uint32_t joined;
		int rv = kg_h2_block_reserve(b, cookie_len, mem_realloc, h, &joined);
		if (rv < 0)
			return rv;
		char *w = b->arena + joined;
		size_t done = 0;
		for (size_t i = first_cookie; i < b->n; i++) {
			struct kg_h2_field f = kg_h2_block_field(b, i);
			if (!name_is(f.name, f.name_len, "cookie"))
				continue;
			if (done++) {
				memcpy(w, "; ", 2);
				w += 2;
			}
			memcpy(w, f.value, f.value_len);
			w += f.value_len;
		}
		b->f[first_cookie].value = joined;
		b->f[first_cookie].value_len = (uint32_t)cookie_len;
	}
	if (b->n) {
		st->fields = mem_calloc(b->n, sizeof(*st->fields), h);
		if (!st->fields)
			return -ENOMEM;
	}
	const char *host = NULL;
	size_t host_len = 0, authority_len = 0;
	for (size_t i = 0; i < b->n; i++) {
		const struct kg_h2_block_field *f = &b->f[i];
		const char *name = b->arena + f->name, *value = b->arena + f->value;
		if (has_ctl(value, f->value_len))
			return 0;
		if (name[0] == ':') {
			const char **slot = NULL;
			if (name_is(name, f->name_len, ":method"))
				slot = &req->method;
			else if (name_is(name, f->name_len, ":scheme"))
				slot = &req->scheme;
			else if (name_is(name, f->name_len, ":authority"))
				slot = &req->authority;
			else if (name_is(name, f->name_len, ":path"))
				slot = &req->path;
			else if (name_is(name, f->name_len, ":protocol"))
				slot = &req->protocol;
			/* Pseudo-headers come first, once each, never empty. */
			if (!slot || *slot || req->n_fields || f->value_len == 0)
				return 0;
			*slot = value;
			if (slot == &req->authority)
				authority_len = f->value_len;
			continue;
		}
		if (!name_ok(name, f->name_len) ||
		    connection_specific(name, f->name_len, value, f->value_len))
			return 0;
		if (name_is(name, f->name_len, "cookie") && cookies > 1 && i != first_cookie)
			continue;
		if (name_is(name, f->name_len, "content-length")) {
			if (req->content_length >= 0)
				return 0;
			req->content_length = parse_length(value, f->value_len);
			if (req->content_length < 0)
				return 0;
		}
		if (name_is(name, f->name_len, "host")) {
			if (host)
				return 0;
			host = value;
			host_len = f->value_len;
		}
		st->fields[req->n_fields++] = (struct kg_h2_field){
			.name = name, .name_len = f->name_len, .value = value, .value_len = f->value_len};
	}
	req->fields = st->fields;
	if (!req->method)
		return 0;
	bool connect = strcmp(req->method, "CONNECT") == 0;
	if (req->protocol) {
		/* RFC 8441 4: only on an extended CONNECT we allowed, with all four. */
		if (!connect || !req->scheme || !req->path || !req->authority ||
		    !h->allow_connect_protocol)
			return 0;
	} else if (connect) {
		/* RFC 9113 8.5: :authority only. */
		if (req->scheme || req->path || !req->authority)
			return 0;
	} else if (!req->scheme || !req->path) {
		return 0;
	}
	if (req->path && req->path[0] != '/' && strcmp(req->path, "*") != 0)
		return 0;
	/* RFC 9113 8.3.1: a Host that names another origin than :authority
	 * would let the two hops disagree on the target. */
	if (host && req->authority &&
	    (host_len != authority_len || strncasecmp(host, req->authority, host_len) != 0))
		return 0;
	if (req->content_length > 0 && st->remote_done)
		return 0;
	*ok = true;
	return 0;
}

/* ---- nghttp2 callbacks ---- */

static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *ud)
{
	(void)s;
	struct kg_h2 *h = ud;
	if (h->dead || h->conn_error)
		return 0;
	bool control = hd->type == NGHTTP2_SETTINGS || hd->type == NGHTTP2_PING ||
		       hd->type == NGHTTP2_PRIORITY ||
		       (hd->type == NGHTTP2_DATA && hd->length == 0 &&
			!(hd->flags & NGHTTP2_FLAG_END_STREAM));
	if (control && !bucket_take(&h->control)) {
		conn_abuse(h, KG_H2_ABUSE_CONTROL_FLOOD, NGHTTP2_ENHANCE_YOUR_CALM);
		return 0;
	}
	/* A header block is never interleaved with other frames (RFC 9113
	 * 6.10), so one count per connection covers every block, also those
	 * of streams nghttp2 ignores or we refuse. */
	if (hd->type == NGHTTP2_HEADERS) {
		h->block_bytes = hd->length;
		h->n_cont = 0;
	} else if (hd->type == NGHTTP2_CONTINUATION) {
		h->block_bytes += hd->length;
		h->n_cont++;
		if (h->block_bytes > h->lim.max_header_list_bytes || h->n_cont > h->cont_max)
			conn_abuse(h, KG_H2_ABUSE_CONTINUATION, NGHTTP2_ENHANCE_YOUR_CALM);
	}
	return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct kg_h2 *h = ud;
	if (h->dead || h->conn_error)
		return 0;
	struct kg_h2_stream *st = stream_of(h, frame->hd.stream_id);
	if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
		/* Trailers of a request: read for the size check, then dropped. */
		if (st) {
			st->in_trailers = true;
			st->list_bytes = 0;
		}
		return 0;
	}
	if (h->shutting) {
		/* GOAWAY is on its way: the client will retry elsewhere. */
		int rv = nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
						   NGHTTP2_REFUSED_STREAM);
		return rv == 0 || !nghttp2_is_fatal(rv) ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	st = mem_calloc(1, sizeof(*st), h);
	if (!st)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	st->h = h;
	st->id = frame->hd.stream_id;
	st->content_length = -1;
	if (nghttp2_session_set_stream_user_data(s, st->id, st) != 0) {
		mem_free(st, h);
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	st->next = h->streams;
	if (h->streams)
		h->streams->prev = st;
	h->streams = st;
	return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	(void)s;
	(void)flags;
	struct kg_h2 *h = ud;
	if (h->dead || h->conn_error)
		return 0;
	struct kg_h2_stream *st = stream_of(h, frame->hd.stream_id);
	if (!st)
		return 0;
	st->list_bytes += namelen + valuelen + 32;
	if (st->too_large || st->list_bytes > h->lim.max_header_list_bytes) {
		/* Stop storing: the head is answered 431 when it ends. Every
		 * further field costs decoding only, so go on counting; but a
		 * block that inflates far beyond its own size is an HPACK bomb,
		 * and decoding it any further is the attack. */
		st->too_large = true;
		if (st->list_bytes > (size_t)HPACK_BOMB_RATIO * h->block_bytes)
			conn_abuse(h, KG_H2_ABUSE_HPACK, NGHTTP2_ENHANCE_YOUR_CALM);
		return 0;
	}
	if (st->in_trailers)
		return 0;
	if (kg_h2_block_add(&st->head, name, namelen, value, valuelen, mem_realloc, h) < 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	return 0;
}

/* The invalid-header callback makes nghttp2 reset the stream instead of
 * dropping the field: a request is forwarded whole or not at all. */
static int on_invalid_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
			     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
			     void *ud)
{
	(void)s;
	(void)name;
	(void)namelen;
	(void)value;
	(void)valuelen;
	(void)flags;
	(void)frame;
	(void)ud;
	return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

/* Answers a head past max_header_list_bytes: 431, and the stream's end. */
static int refuse_too_large(struct kg_h2 *h, struct kg_h2_stream *st)
{
	abuse(h, st->id, KG_H2_ABUSE_HEADER_LIST);
	st->reset_ours = true;
	if (st->in_trailers)
		return stream_reset(h, st, NGHTTP2_PROTOCOL_ERROR);
	const nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"431", 7, 3, NGHTTP2_NV_FLAG_NONE}};
	int rv = nghttp2_submit_response(h->s, st->id, nv, 1, NULL);
	if (rv != 0)
		return rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL;
	st->responded = true;
	/* RFC 9113 8.1: a complete answer, then RST_STREAM(NO_ERROR) so the
	 * client stops sending the body; only once the answer is out, as
	 * nghttp2 drops what is queued for a stream being reset. */
	st->reset_after_head = !st->remote_done;
	return 0;
}

static int head_done(struct kg_h2 *h, struct kg_h2_stream *st, const nghttp2_frame *frame)
{
	if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
		st->remote_done = true;
	if (st->too_large && st->responded && !st->accepted)
		return 0; /* trailers of a head answered 431 already */
	if (st->too_large)
		return refuse_too_large(h, st);
	if (st->in_trailers) {
		st->in_trailers = false;
		if (st->accepted && !st->reset_ours && !st->malformed && st->remote_done &&
		    h->cb.on_body_end)
			h->cb.on_body_end(h->ctx, st->id, st->user);
		return 0;
	}
	struct kg_h2_request req;
	bool ok;
	int rv = build_request(h, st, &req, &ok);
	if (rv < 0)
		return rv;
	if (!ok)
		return stream_malformed(h, st);
	/* The arena is final: offsets are no longer needed. */
	kg_h2_block_free_offsets(&st->head, mem_free, h);
	st->content_length = req.content_length;
	req.end_stream = st->remote_done;
	/* Taken before the call: the forwarder may answer inside it. */
	st->accepted = true;
	h->n_open++;
	if (h->cb.on_request(h->ctx, st->id, &req) != 0) {
		st->accepted = false;
		h->n_open--;
		st->reset_ours = true;
		spend_reset(h);
		return stream_reset(h, st, NGHTTP2_REFUSED_STREAM);
	}
	return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	(void)s;
	struct kg_h2 *h = ud;
	if (h->dead || h->conn_error)
		return 0;
	struct kg_h2_stream *st = stream_of(h, frame->hd.stream_id);
	int rv = 0;
	switch (frame->hd.type) {
	case NGHTTP2_HEADERS:
		if (st)
			rv = head_done(h, st, frame);
		break;
	case NGHTTP2_DATA:
		if (!st || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
			break;
		st->remote_done = true;
		/* Streams not (or no longer) the forwarder's had their bytes
		 * given back uncounted. */
		if (!st->accepted || st->reset_ours || st->malformed)
			break;
		if (st->content_length >= 0 && st->body_seen != (uint64_t)st->content_length) {
			rv = stream_malformed(h, st);
			break;
		}
		if (h->cb.on_body_end)
			h->cb.on_body_end(h->ctx, st->id, st->user);
		break;
	case NGHTTP2_RST_STREAM:
		spend_reset(h);
		break;
	default:
		break;
	}
	return rv == -ENOMEM ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *p,
			 size_t n, void *ud)
{
	(void)flags;
	struct kg_h2 *h = ud;
	struct kg_h2_stream *st = h->dead ? NULL : stream_of(h, id);
	if (!st || !st->accepted || h->conn_error || st->reset_ours || st->malformed) {
		/* Nobody takes these bytes: give the window back now. */
		return nghttp2_session_consume(s, id, n) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
	}
	st->body_seen += n;
	if (st->content_length >= 0 && st->body_seen > (uint64_t)st->content_length) {
		int rv = stream_malformed(h, st);
		if (nghttp2_session_consume(s, id, n) != 0 || rv == -ENOMEM)
			return NGHTTP2_ERR_CALLBACK_FAILURE;
		return 0;
	}
	st->unconsumed += n;
	if (h->cb.on_body)
		h->cb.on_body(h->ctx, id, st->user, p, n);
	return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
	struct kg_h2 *h = ud;
	if (h->dead)
		return 0;
	struct kg_h2_stream *st = stream_of(h, id);
	if (!st)
		return 0;
	/* What the forwarder was given but did not pass on goes back to the
	 * connection's window: its stream is gone. */
	if (st->unconsumed && nghttp2_session_consume_connection(s, st->unconsumed) != 0)
		return NGHTTP2_ERR_CALLBACK_FAILURE;
	if (st->accepted) {
		/* The id is dead already for calls made from the callback. */
		st->accepted = false;
		h->n_open--;
		if (h->cb.on_stream_close)
			h->cb.on_stream_close(h->ctx, id, st->user, code);
	}
	(void)nghttp2_session_set_stream_user_data(s, id, NULL);
	stream_free(h, st);
	return 0;
}

static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *frame, int lib_error,
			    void *ud)
{
	struct kg_h2 *h = ud;
	if (h->dead || h->conn_error)
		return 0;
	struct kg_h2_stream *st = stream_of(h, frame->hd.stream_id);
	switch (lib_error) {
	case NGHTTP2_ERR_HTTP_HEADER:
	case NGHTTP2_ERR_HTTP_MESSAGING:
		/* nghttp2 resets the stream (PROTOCOL_ERROR). */
		if (st && !st->malformed) {
			st->malformed = true;
			abuse(h, st->id, KG_H2_ABUSE_MALFORMED);
		}
		return 0;
	case NGHTTP2_ERR_REFUSED_STREAM:
		/* Past max_concurrent_streams before the client acknowledged it. */
		abuse(h, frame->hd.stream_id, KG_H2_ABUSE_STREAMS);
		spend_reset(h);
		return 0;
	case NGHTTP2_ERR_FLOW_CONTROL:
		if (frame->hd.type == NGHTTP2_WINDOW_UPDATE && frame->hd.stream_id != 0) {
			abuse(h, frame->hd.stream_id, KG_H2_ABUSE_PROTOCOL);
			return 0;
		}
		break;
	default:
		break;
	}
	/* Everything else ends the connection (nghttp2 queues the GOAWAY). */
	h->conn_error = true;
	enum kg_h2_abuse kind = KG_H2_ABUSE_PROTOCOL;
	if (lib_error == NGHTTP2_ERR_HEADER_COMP)
		kind = KG_H2_ABUSE_HPACK;
	else if (lib_error == NGHTTP2_ERR_PROTO && frame->hd.type == NGHTTP2_HEADERS &&
		 h->n_open >= nghttp2_session_get_local_settings(
				      s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
		/* nghttp2 ends the connection for a stream past the limit the
		 * client acknowledged (RFC 9113 5.4.1 allows it). */
		kind = KG_H2_ABUSE_STREAMS;
	abuse(h, 0, kind);
	return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	(void)s;
	struct kg_h2 *h = ud;
	if (h->dead)
		return 0;
	if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR &&
	    !h->conn_error) {
		/* A connection error nghttp2 found on its own (HPACK decoding,
		 * frame sizes): no other callback told us. */
		h->conn_error = true;
		abuse(h, 0,
		      frame->goaway.error_code == NGHTTP2_COMPRESSION_ERROR ? KG_H2_ABUSE_HPACK
									    : KG_H2_ABUSE_PROTOCOL);
	} else if (frame->hd.type == NGHTTP2_HEADERS) {
		struct kg_h2_stream *st = stream_of(h, frame->hd.stream_id);
		if (st && st->reset_after_head) {
			st->reset_after_head = false;
			if (stream_reset(h, st, NGHTTP2_NO_ERROR) == -ENOMEM)
				return NGHTTP2_ERR_CALLBACK_FAILURE;
		}
	} else if (frame->hd.type == NGHTTP2_RST_STREAM &&
		   frame->rst_stream.error_code == NGHTTP2_PROTOCOL_ERROR) {
		/* Content-Length against DATA is checked inside nghttp2 with no
		 * callback: its reset is how we learn of it. */
		struct kg_h2_stream *st = stream_of(h, frame->hd.stream_id);
		if (st && !st->malformed && !st->reset_ours) {
			st->malformed = true;
			abuse(h, st->id, KG_H2_ABUSE_MALFORMED);
		}
	}
	return 0;
}

static ssize_t on_read_data(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
			    uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
	struct kg_h2 *h = ud;
	struct kg_h2_stream *st = source->ptr;
	(void)id;
	if (!h->dead && kg_h2_sendq_room_due(&st->sq, st->data_end, length) && h->cb.on_send_room)
		h->cb.on_send_room(h->ctx, st->id, st->user);
	size_t n = kg_h2_sendq_take(&st->sq, buf, length);
	if (st->sq.len == 0 && st->data_end) {
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
		if (st->trailers) {
			*data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
			int rv = nghttp2_submit_trailer(s, st->id, st->trailers, st->n_trailers);
			if (rv != 0)
				return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
		}
		return (ssize_t)n;
	}
	if (n == 0) {
		st->deferred = true;
		return NGHTTP2_ERR_DEFERRED;
	}
	return (ssize_t)n;
}

/* ---- API ---- */

static bool limits_ok(const struct kg_h2_limits *l)
{
	return l && l->max_concurrent_streams > 0 && l->max_header_list_bytes >= 1024 &&
	       l->max_header_list_bytes <= (1u << 24) && l->stream_window > 0 &&
	       l->stream_window <= MAX_WINDOW && l->reset_budget > 0 && l->control_budget > 0;
}

struct kg_h2 *kg_h2_create(const struct kg_h2_limits *limits, bool allow_connect_protocol,
			   const struct kg_h2_handler *handler, void *ctx)
{
	if (!limits_ok(limits) || !handler || !handler->on_request)
		return NULL;
	struct kg_h2 *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	nghttp2_session_callbacks *cbs = NULL;
	nghttp2_option *opt = NULL;
	h->lim = *limits;
	h->cb = *handler;
	h->ctx = ctx;
	h->allow_connect_protocol = allow_connect_protocol;
	h->mem = (nghttp2_mem){.mem_user_data = h,
			       .malloc = mem_malloc,
			       .free = mem_free,
			       .calloc = mem_calloc,
			       .realloc = mem_realloc};
	h->cont_max = CONT_FRAMES_BASE + limits->max_header_list_bytes / 4096u;
	bucket_init(&h->resets, limits->reset_budget);
	bucket_init(&h->control, limits->control_budget);

	if (nghttp2_session_callbacks_new(&cbs) != 0)
		goto fail;
	nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_invalid_header_callback(cbs, on_invalid_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
	nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame);
	nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);

	if (nghttp2_option_new(&opt) != 0)
		goto fail;
	/* Request bodies are flow-controlled by the forwarder (kg_h2_consume). */
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_max_deflate_dynamic_table_size(opt, DEFLATE_TABLE_BYTES);
	/* Closed streams are not kept for the priority tree. */
	nghttp2_option_set_no_closed_streams(opt, 1);
	/* ACKs queued for a client that does not read: the control budget. */
	nghttp2_option_set_max_outbound_ack(opt, limits->control_budget);
	/* nghttp2's own limits sit above ours, so ours (with a report) act
	 * first; theirs remain as a backstop. */
	nghttp2_option_set_max_continuations(opt, h->cont_max + 1);
	nghttp2_option_set_stream_reset_rate_limit(opt, 4ull * limits->reset_budget + 64,
						   2ull * limits->reset_budget);
	if (nghttp2_session_server_new3(&h->s, cbs, h, opt, &h->mem) != 0)
		goto fail;
	nghttp2_option_del(opt);
	opt = NULL;
	nghttp2_session_callbacks_del(cbs);
	cbs = NULL;

	nghttp2_settings_entry iv[5] = {
		{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits->max_concurrent_streams},
		{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits->stream_window},
		{NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits->max_header_list_bytes},
		{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
		{NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
	};
	if (nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, allow_connect_protocol ? 5 : 4) != 0)
		goto fail;
	uint64_t win = (uint64_t)limits->stream_window * CONN_WINDOW_STREAMS;
	if (win > MAX_WINDOW)
		win = MAX_WINDOW;
	if (win > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE &&
	    nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, (int32_t)win) != 0)
		goto fail;
	return h;
fail:
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cbs);
	kg_h2_destroy(h);
	return NULL;
}

void kg_h2_destroy(struct kg_h2 *h)
{
	if (!h)
		return;
	h->dead = true;
	/* nghttp2_session_del calls back only through h->mem. */
	nghttp2_session_del(h->s);
	h->s = NULL;
	while (h->streams)
		stream_free(h, h->streams);
	free(h);
}

int kg_h2_feed(struct kg_h2 *h, const uint8_t *p, size_t n)
{
	if (h->fatal)
		return -EPROTO;
	while (n > 0 && !h->conn_error) {
		size_t piece = n < FEED_PIECE ? n : FEED_PIECE;
		ssize_t rv = nghttp2_session_mem_recv(h->s, p, piece);
		if (rv < 0) {
			h->fatal = true;
			if (rv == NGHTTP2_ERR_NOMEM)
				return -ENOMEM;
			if (rv == NGHTTP2_ERR_CALLBACK_FAILURE)
				return -ENOMEM; /* our callbacks fail only for memory */
			abuse(h, 0,
			      rv == NGHTTP2_ERR_FLOODED ? KG_H2_ABUSE_CONTROL_FLOOD
			      : rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ? KG_H2_ABUSE_CONTINUATION
									  : KG_H2_ABUSE_PROTOCOL);
			return -EPROTO;
		}
		p += piece;
		n -= piece;
	}
	return h->conn_error ? -EPROTO : 0;
}

ssize_t kg_h2_output(struct kg_h2 *h, const uint8_t **p)
{
	*p = NULL;
	if (h->fatal)
		return -EPROTO;
	ssize_t n = nghttp2_session_mem_send(h->s, p);
	if (n < 0) {
		h->fatal = true;
		return n == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EPROTO;
	}
	return n;
}

void kg_h2_set_stream_user(struct kg_h2 *h, int32_t id, void *user)
{
	struct kg_h2_stream *st = stream_of(h, id);
	if (st)
		st->user = user;
}

int kg_h2_consume(struct kg_h2 *h, int32_t id, size_t n)
{
	struct kg_h2_stream *st = stream_of(h, id);
	if (!st || !st->accepted)
		return -ENOENT;
	if (n > st->unconsumed)
		return -EINVAL;
	int rv = nghttp2_session_consume(h->s, id, n);
	if (rv != 0)
		return rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EINVAL;
	st->unconsumed -= n;
	return 0;
}

/* Response fields as nghttp2 takes them (it copies them on submit). */
static int make_nv(struct kg_h2 *h, const struct kg_h2_field *fields, size_t n, const char *status,
		   nghttp2_nv **out, size_t *n_out)
{
	nghttp2_nv *nv = mem_calloc(n + 1, sizeof(*nv), h);
	if (!nv)
		return -ENOMEM;
	size_t k = 0;
	if (status)
		nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3,
				       NGHTTP2_NV_FLAG_NONE};
	for (size_t i = 0; i < n; i++) {
		const struct kg_h2_field *f = &fields[i];
		if (!name_ok(f->name, f->name_len) || has_ctl(f->value, f->value_len)) {
			mem_free(nv, h);
			return -EINVAL;
		}
		if (connection_specific(f->name, f->name_len, f->value, f->value_len) ||
		    name_is(f->name, f->name_len, "te"))
			continue;
		nv[k++] = (nghttp2_nv){(uint8_t *)f->name, (uint8_t *)f->value, f->name_len,
				       f->value_len, NGHTTP2_NV_FLAG_NONE};
	}
	*out = nv;
	*n_out = k;
	return 0;
}

static int ng_err(int rv)
{
	if (rv == 0)
		return 0;
	if (rv == NGHTTP2_ERR_NOMEM)
		return -ENOMEM;
	if (rv == NGHTTP2_ERR_STREAM_CLOSED || rv == NGHTTP2_ERR_INVALID_STREAM_ID ||
	    rv == NGHTTP2_ERR_STREAM_CLOSING)
		return -ENOENT;
	return -EINVAL;
}

int kg_h2_respond(struct kg_h2 *h, int32_t id, int status, const struct kg_h2_field *fields,
		  size_t n, bool end_stream)
{
	struct kg_h2_stream *st = stream_of(h, id);
	if (!st || !st->accepted)
		return -ENOENT;
	/* 101 has no place in HTTP/2 (RFC 9113 8.6); other 1xx heads are
	 * interim and precede the final one, which ends nothing. */
	bool interim = status >= 100 && status < 200;
	if (st->responded || status < 100 || status > 999 || status == 101 ||
	    (interim && end_stream))
		return -EINVAL;
	char code[4];
	code[0] = (char)('0' + status / 100);
	code[1] = (char)('0' + status / 10 % 10);
	code[2] = (char)('0' + status % 10);
	code[3] = '\0';
	nghttp2_nv *nv;
	size_t k;
	int rv = make_nv(h, fields, n, code, &nv, &k);
	if (rv < 0)
		return rv;
	if (interim) {
		/* A HEADERS frame that does not end the stream: nghttp2 takes
		 * non-final heads only this way (submit_response would end the
		 * head phase). */
		int32_t r = nghttp2_submit_headers(h->s, NGHTTP2_FLAG_NONE, id, NULL, nv, k, NULL);
		mem_free(nv, h);
		return r < 0 ? ng_err(r) : 0;
	}
	nghttp2_data_provider dp = {.source.ptr = st, .read_callback = on_read_data};
	rv = ng_err(nghttp2_submit_response(h->s, id, nv, k, end_stream ? NULL : &dp));
	mem_free(nv, h);
	if (rv < 0)
		return rv;
	st->responded = true;
	st->data_source = !end_stream;
	st->data_end = end_stream;
	return 0;
}

static int wake(struct kg_h2 *h, struct kg_h2_stream *st)
{
	if (!st->deferred)
		return 0;
	st->deferred = false;
	return ng_err(nghttp2_session_resume_data(h->s, st->id));
}

int kg_h2_send_data(struct kg_h2 *h, int32_t id, const void *p, size_t n, bool end,
		    size_t low_water)
{
	struct kg_h2_stream *st = stream_of(h, id);
	if (!st || !st->accepted)
		return -ENOENT;
	if (!st->data_source || st->data_end)
		return -EINVAL;
	int rv = kg_h2_sendq_push(&st->sq, p, n, end, low_water, mem_realloc, h);
	if (rv < 0)
		return rv;
	st->data_end = end;
	return wake(h, st);
}

size_t kg_h2_send_pending(const struct kg_h2 *h, int32_t id)
{
	const struct kg_h2_stream *st = stream_of(h, id);
	return st && st->accepted ? st->sq.len : 0;
}

int kg_h2_trailers(struct kg_h2 *h, int32_t id, const struct kg_h2_field *fields, size_t n)
{
	struct kg_h2_stream *st = stream_of(h, id);
	if (!st || !st->accepted)
		return -ENOENT;
	if (!st->data_source || st->data_end)
		return -EINVAL;
	nghttp2_nv *nv;
	size_t k;
	int rv = make_nv(h, fields, n, NULL, &nv, &k);
	if (rv < 0)
		return rv;
	/* The trailers go out from the read callback, after the queued data:
	 * keep a copy of names and values until then. */
	size_t bytes = 0;
	for (size_t i = 0; i < k; i++)
		bytes += nv[i].namelen + nv[i].valuelen + 2;
	nghttp2_nv *keep = mem_malloc(k * sizeof(*keep) + bytes + 1, h);
	if (!keep) {
		mem_free(nv, h);
		return -ENOMEM;
	}
	uint8_t *w = (uint8_t *)(keep + k);
	for (size_t i = 0; i < k; i++) {
		keep[i] = nv[i];
		memcpy(w, nv[i].name, nv[i].namelen);
		w[nv[i].namelen] = '\0';
		keep[i].name = w;
		w += nv[i].namelen + 1;
		memcpy(w, nv[i].value, nv[i].valuelen);
		w[nv[i].valuelen] = '\0';
		keep[i].value = w;
		w += nv[i].valuelen + 1;
	}
	mem_free(nv, h);
	st->trailers = keep;
	st->n_trailers = k;
	st->data_end = true;
	st->sq.want_room = false;
	return wake(h, st);
}

int kg_h2_reset(struct kg_h2 *h, int32_t id, uint32_t code)
{
	struct kg_h2_stream *st = stream_of(h, id);
	if (!st || !st->accepted)
		return -ENOENT;
	st->reset_ours = true;
	return stream_reset(h, st, code);
}

void kg_h2_shutdown(struct kg_h2 *h)
{
	if (h->shutting || h->conn_error)
		return;
	h->shutting = true;
	/* Only NOMEM fails here: then no GOAWAY goes out, new streams are
	 * still refused, and the caller's drain timeout ends the connection. */
	(void)nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE,
				    nghttp2_session_get_last_proc_stream_id(h->s), NGHTTP2_NO_ERROR,
				    NULL, 0);
}

size_t kg_h2_open_streams(const struct kg_h2 *h)
{
	return h->n_open;
}

bool kg_h2_done(const struct kg_h2 *h)
{
	return h->fatal ||
	       (!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s));
}

size_t kg_h2_memory(const struct kg_h2 *h)
{
	return h->mem_bytes + sizeof(*h);
}
