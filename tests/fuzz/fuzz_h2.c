/* The HTTP/2 session of https listeners (h2_session.c), "frames in,
 * requests out": a fresh session per input is fed the client's bytes (the
 * harness sends the connection preface itself) in pieces, answers every
 * request the way a forwarder would (a head, some body, an end; sometimes
 * trailers, a reset, a refusal, an answer from inside on_request, a late
 * or partial kg_h2_consume), drains the output after each piece and, for
 * some inputs, drains the connection gracefully halfway.
 *
 * Input: one control byte, then the client's bytes after the preface.
 * Control: low 4 bits pick the piece size (1, 2, 3, 7, 9, 16, 64, 100,
 * 512, 1000, 4096, 16384, then whole input), bit 4 allows extended
 * CONNECT, bit 5 answers inside on_request, bit 6 calls kg_h2_shutdown
 * halfway, bit 7 consumes request bodies only at the answer.
 *
 * Besides "no crash" it checks what the forwarder relies on:
 * - every request handed over passes the harness's own validation
 *   (pseudo-headers by method, regular names lower-case tokens and not
 *   connection-specific, no CR/LF/NUL in values, one Content-Length that
 *   matches the request's, one cookie field);
 * - on_stream_close comes once for each stream taken and never for one
 *   refused; on_body and on_body_end only between the two, body bytes
 *   never past Content-Length, on_body_end at most once and only with all
 *   of it; kg_h2_open_streams equals the streams taken and not closed;
 * - no callback after kg_h2_destroy, and the memory held stays bounded.
 * KF_H2_VERBOSE=1 prints one line per input (requests, closes, result). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "fuzz_util.h"
#include "h2_session.h"

#define SLOTS 512 /* streams tracked per input (ids are hashed) */

struct strm {
	int32_t id; /* 0: free slot */
	bool open, closed, refused, answered, body_end, reset;
	int64_t content_length;
	uint64_t body, consumed;
};

struct harness {
	struct kg_h2 *h;
	uint8_t ctl;
	bool destroyed;
	size_t taken, closed_n;
	struct strm s[SLOTS];
	size_t n_requests;
};

static const struct kg_h2_limits lim = {
	.max_concurrent_streams = 8,
	.max_header_list_bytes = 4096,
	.stream_window = 16384,
	.reset_budget = 50,
	.control_budget = 50,
};

static struct strm *find(struct harness *H, int32_t id, bool add)
{
	size_t i = (size_t)id % SLOTS;
	for (size_t n = 0; n < SLOTS; n++, i = (i + 1) % SLOTS) {
		if (H->s[i].id == id)
			return &H->s[i];
		if (H->s[i].id == 0) {
			if (!add)
				return NULL;
			memset(&H->s[i], 0, sizeof(H->s[i]));
			H->s[i].id = id;
			return &H->s[i];
		}
	}
	return NULL;
}

static bool is_token_lc(const char *p, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c >= 'a' && c <= 'z')
			continue;
		if (c >= '0' && c <= '9')
			continue;
		if (!strchr("!#$%&'*+-.^_`|~", c) || c == '\0')
			return false;
	}
	return true;
}

static bool no_ctl(const char *p, size_t n)
{
	return !memchr(p, '\r', n) && !memchr(p, '\n', n) && !memchr(p, '\0', n) &&
	       strlen(p) == n;
}

static bool eq(const char *p, size_t n, const char *lit)
{
	return n == strlen(lit) && memcmp(p, lit, n) == 0;
}

static void check_request(const struct kg_h2_request *req)
{
	KF_FAIL_IF(!req->method || !*req->method);
	KF_FAIL_IF(!no_ctl(req->method, strlen(req->method)));
	bool connect = strcmp(req->method, "CONNECT") == 0;
	if (connect && !req->protocol) {
		KF_FAIL_IF(req->scheme || req->path || !req->authority);
	} else {
		KF_FAIL_IF(!req->scheme || !req->path);
		KF_FAIL_IF(req->path[0] != '/' && strcmp(req->path, "*") != 0);
	}
	KF_FAIL_IF(req->protocol && (!connect || !req->authority));
	const char *pseudo[] = {req->scheme, req->authority, req->path, req->protocol};
	for (size_t i = 0; i < 4; i++)
		KF_FAIL_IF(pseudo[i] && (!*pseudo[i] || !no_ctl(pseudo[i], strlen(pseudo[i]))));
	int cl = 0, cookie = 0;
	for (size_t i = 0; i < req->n_fields; i++) {
		const struct kg_h2_field *f = &req->fields[i];
		KF_FAIL_IF(strlen(f->name) != f->name_len || !is_token_lc(f->name, f->name_len));
		KF_FAIL_IF(!no_ctl(f->value, f->value_len));
		KF_FAIL_IF(eq(f->name, f->name_len, "connection") ||
			   eq(f->name, f->name_len, "keep-alive") ||
			   eq(f->name, f->name_len, "proxy-connection") ||
			   eq(f->name, f->name_len, "transfer-encoding") ||
			   eq(f->name, f->name_len, "upgrade"));
		if (eq(f->name, f->name_len, "te"))
			KF_FAIL_IF(!eq(f->value, f->value_len, "trailers"));
		if (eq(f->name, f->name_len, "cookie"))
			cookie++;
		if (eq(f->name, f->name_len, "content-length")) {
			cl++;
			KF_FAIL_IF(f->value_len == 0 || f->value_len > 18);
			int64_t v = 0;
			for (size_t k = 0; k < f->value_len; k++) {
				KF_FAIL_IF(f->value[k] < '0' || f->value[k] > '9');
				v = v * 10 + (f->value[k] - '0');
			}
			KF_FAIL_IF(v != req->content_length);
		}
	}
	KF_FAIL_IF(cl > 1 || cookie > 1);
	KF_FAIL_IF(cl == 0 && req->content_length != -1);
	KF_FAIL_IF(req->end_stream && req->content_length > 0);
}

static void answer(struct harness *H, struct strm *st);

static int on_request(void *ctx, int32_t id, const struct kg_h2_request *req)
{
	struct harness *H = ctx;
	KF_FAIL_IF(H->destroyed);
	check_request(req);
	struct strm *st = find(H, id, true);
	KF_FAIL_IF(!st);
	KF_FAIL_IF(st->open || st->closed || st->refused); /* an id is new once */
	H->n_requests++;
	/* Every 5th request is refused. */
	if (H->n_requests % 5 == 4) {
		st->refused = true;
		return -EBUSY;
	}
	st->open = true;
	st->content_length = req->content_length;
	st->body_end = req->end_stream;
	H->taken++;
	kg_h2_set_stream_user(H->h, id, st);
	if (H->ctl & 0x20)
		answer(H, st);
	return 0;
}

static void on_body(void *ctx, int32_t id, void *user, const uint8_t *p, size_t n)
{
	struct harness *H = ctx;
	struct strm *st = user;
	(void)p;
	KF_FAIL_IF(H->destroyed);
	KF_FAIL_IF(!st || st->id != id || !st->open || st->body_end || n == 0);
	st->body += n;
	KF_FAIL_IF(st->content_length >= 0 && st->body > (uint64_t)st->content_length);
	if (!(H->ctl & 0x80)) {
		KF_FAIL_IF(kg_h2_consume(H->h, id, n) != 0);
		st->consumed += n;
	}
}

static void on_body_end(void *ctx, int32_t id, void *user)
{
	struct harness *H = ctx;
	struct strm *st = user;
	KF_FAIL_IF(H->destroyed);
	KF_FAIL_IF(!st || st->id != id || !st->open || st->body_end);
	KF_FAIL_IF(st->content_length >= 0 && st->body != (uint64_t)st->content_length);
	st->body_end = true;
}

static void on_send_room(void *ctx, int32_t id, void *user)
{
	struct harness *H = ctx;
	struct strm *st = user;
	KF_FAIL_IF(H->destroyed);
	KF_FAIL_IF(!st || st->id != id || !st->open);
	/* more body, then the end */
	static const char more[700] = {0};
	int rv = kg_h2_send_data(H->h, id, more, sizeof(more), true, 0);
	KF_FAIL_IF(rv != 0 && rv != -EINVAL);
}

static void on_stream_close(void *ctx, int32_t id, void *user, uint32_t code)
{
	struct harness *H = ctx;
	struct strm *st = user;
	(void)code;
	KF_FAIL_IF(H->destroyed);
	KF_FAIL_IF(!st || st->id != id || !st->open || st->closed || st->refused);
	st->open = false;
	st->closed = true;
	H->closed_n++;
	/* the id is dead for every call */
	KF_FAIL_IF(kg_h2_send_data(H->h, id, "x", 1, true, 0) != -ENOENT);
	KF_FAIL_IF(kg_h2_consume(H->h, id, 1) != -ENOENT);
	KF_FAIL_IF(kg_h2_send_pending(H->h, id) != 0);
}

static void on_abuse(void *ctx, int32_t id, enum kg_h2_abuse kind)
{
	struct harness *H = ctx;
	KF_FAIL_IF(H->destroyed);
	KF_FAIL_IF((int)kind < 0 || kind >= KG_H2_ABUSE_KINDS || !kg_h2_abuse_names[kind]);
	if (getenv("KF_H2_VERBOSE"))
		fprintf(stderr, "h2: stream %d: %s\n", id, kg_h2_abuse_names[kind]);
}

static const struct kg_h2_handler handler = {
	.on_request = on_request,
	.on_body = on_body,
	.on_body_end = on_body_end,
	.on_send_room = on_send_room,
	.on_stream_close = on_stream_close,
	.on_abuse = on_abuse,
};

/* The forwarder's answer, chosen by the stream id. */
static void answer(struct harness *H, struct strm *st)
{
	if (st->answered || !st->open)
		return;
	st->answered = true;
	int32_t id = st->id;
	if (st->consumed < st->body) {
		KF_FAIL_IF(kg_h2_consume(H->h, id, (size_t)(st->body - st->consumed)) != 0);
		st->consumed = st->body;
	}
	static const char body[3000] = {0};
	const struct kg_h2_field hdr[] = {{"content-type", 12, "text/plain", 10},
					  {"connection", 10, "close", 5},
					  {"x-id", 4, "fuzz", 4}};
	switch ((id >> 1) % 6) {
	case 0: /* head only */
		KF_FAIL_IF(kg_h2_respond(H->h, id, 204, hdr, 3, true) != 0);
		break;
	case 1: /* a body, ended at once */
		KF_FAIL_IF(kg_h2_respond(H->h, id, 200, hdr, 3, false) != 0);
		KF_FAIL_IF(kg_h2_send_data(H->h, id, body, 100, true, 0) != 0);
		break;
	case 2: /* a body bigger than the client's window, more on room */
		KF_FAIL_IF(kg_h2_respond(H->h, id, 200, hdr, 2, false) != 0);
		KF_FAIL_IF(kg_h2_send_data(H->h, id, body, sizeof(body), false, 1024) != 0);
		KF_FAIL_IF(kg_h2_send_pending(H->h, id) != sizeof(body));
		break;
	case 3: /* trailers */
		KF_FAIL_IF(kg_h2_respond(H->h, id, 200, NULL, 0, false) != 0);
		KF_FAIL_IF(kg_h2_send_data(H->h, id, body, 10, false, 0) != 0);
		KF_FAIL_IF(kg_h2_trailers(H->h, id,
					  (const struct kg_h2_field[]){{"grpc-status", 11, "0", 1}},
					  1) != 0);
		break;
	case 4: /* the backend failed mid-body */
		KF_FAIL_IF(kg_h2_respond(H->h, id, 200, NULL, 0, false) != 0);
		KF_FAIL_IF(kg_h2_send_data(H->h, id, body, 10, false, 0) != 0);
		KF_FAIL_IF(kg_h2_reset(H->h, id, NGHTTP2_INTERNAL_ERROR) != 0);
		break;
	default: /* an answer with nothing queued yet, then an empty end */
		KF_FAIL_IF(kg_h2_respond(H->h, id, 502, NULL, 0, false) != 0);
		KF_FAIL_IF(kg_h2_send_data(H->h, id, NULL, 0, true, 0) != 0);
		break;
	}
}

static void drain(struct harness *H)
{
	for (int i = 0; i < 100000; i++) {
		const uint8_t *p;
		ssize_t n = kg_h2_output(H->h, &p);
		if (n <= 0)
			return;
	}
	KF_FAIL_IF(1); /* output that never ends */
}

static void check_counts(struct harness *H)
{
	KF_FAIL_IF(kg_h2_open_streams(H->h) != H->taken - H->closed_n);
	/* streams <= 8 with 3 KB queued each, header arenas <= 4 KiB, HPACK
	 * tables 4 KiB + 1 KiB, nghttp2's frame buffer and the literal it is
	 * reading (<= 64 KiB) */
	KF_FAIL_IF(kg_h2_memory(H->h) > 256 * 1024);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t pieces[16] = {1,   2,    3,    7,    9,     16,   64,  100,
					  512, 1000, 4096, 16384, 65536, 65536, 65536, 65536};
	if (size < 1)
		return 0;
	struct harness *H = calloc(1, sizeof(*H));
	KF_FAIL_IF(!H);
	H->ctl = data[0];
	data++;
	size--;
	H->h = kg_h2_create(&lim, (H->ctl & 0x10) != 0, &handler, H);
	KF_FAIL_IF(!H->h);
	int rv = kg_h2_feed(H->h, (const uint8_t *)NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
	KF_FAIL_IF(rv != 0);
	size_t piece = pieces[H->ctl & 0x0f];
	size_t half = size / 2;
	bool shut = false;
	for (size_t off = 0; off < size && rv == 0;) {
		size_t n = size - off < piece ? size - off : piece;
		rv = kg_h2_feed(H->h, data + off, n);
		KF_FAIL_IF(rv != 0 && rv != -EPROTO);
		off += n;
		check_counts(H);
		for (size_t i = 0; i < SLOTS; i++)
			if (H->s[i].id && H->s[i].open)
				answer(H, &H->s[i]);
		drain(H);
		check_counts(H);
		if ((H->ctl & 0x40) && !shut && off >= half) {
			kg_h2_shutdown(H->h);
			shut = true;
		}
	}
	drain(H);
	check_counts(H);
	if (rv == -EPROTO)
		KF_FAIL_IF(kg_h2_feed(H->h, (const uint8_t *)"x", 1) != -EPROTO);
	if (getenv("KF_H2_VERBOSE"))
		fprintf(stderr, "h2: %zu requests, %zu taken, %zu closed, feed %d, done %d, %zu bytes held\n",
			H->n_requests, H->taken, H->closed_n, rv, kg_h2_done(H->h), kg_h2_memory(H->h));
	H->destroyed = true;
	kg_h2_destroy(H->h);
	free(H);
	return 0;
}
