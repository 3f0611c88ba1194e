/* The https listener's request side (http.c, as forward_http.c drives it):
 * kg_http_feed over a connection's bytes, head by head, with the listener's
 * default limits (16 KiB of head, 100 fields), then kg_http_build_request
 * with kgate's identity headers, then the body and the next pipelined
 * request.
 *
 * Input: one control byte, then the client's bytes. The control byte's low
 * four bits + 1 is the size of each read (bit 7 set: one read takes all
 * that fits), so heads and bodies arrive split at every point; bits 4-5
 * pick underscores_in_headers (drop, reject, allow, drop) and bit 6 makes
 * the client a trusted proxy.
 *
 * Besides "no crash" it checks what a backend relies on:
 * - an accepted head has no smuggling shape: CRLF line ends only (no bare
 *   LF), no obs-fold, at most one Content-Length, never Content-Length
 *   with Transfer-Encoding, no Transfer-Encoding in HTTP/1.0 or without
 *   chunked as the last coding, one Host;
 * - the forwarded head re-parses cleanly as one whole head, with the same
 *   method, target, version and body framing;
 * - it carries each identity header exactly once, with kgate's value
 *   (after a trusted proxy's own values for X-Forwarded-For and
 *   Forwarded), no other name that kgate reserves in any case or with '_'
 *   for '-', no name with '_' unless underscores are allowed, and no
 *   hop-by-hop header; a refusal for an underscore names a header that
 *   has one;
 * - a refusal is 400 or 431 with a reason; byte accounting stays within
 *   what was read. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <kgate/limits.h>

#include "config.h"
#include "fuzz_util.h"
#include "http.h"

#define MAX_HEADER_BYTES 16384 /* the listener defaults (config.c parse_http) */
#define MAX_FIELDS 100
#define MAX_REQUESTS 8         /* pipelined requests followed per input */

static struct kg_http_ident ident;
static size_t extra_len; /* at most what kgate adds to a head */
static bool verbose; /* KF_HTTP_VERBOSE=1: one line per head, accepted or why not */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* kgate's values: "kgate-<n>", never something a client could know;
	 * every header on. */
	ident.headers = (1u << KG_HDR_COUNT) - 1;
	for (int h = 0; h < KG_HDR_COUNT; h++) {
		if (h == KG_HDR_X_FORWARDED_FOR || h == KG_HDR_FORWARDED)
			continue;
		KF_FAIL_IF(kg_buf_printf(&ident.lines, "%s: kgate-%d\r\n", kg_ident_header_names[h],
					 h) < 0);
	}
	snprintf(ident.xff, sizeof(ident.xff), "kgate-%d", KG_HDR_X_FORWARDED_FOR);
	snprintf(ident.forwarded, sizeof(ident.forwarded), "kgate-%d", KG_HDR_FORWARDED);
	extra_len = ident.lines.len + 2 * 64;
	verbose = getenv("KF_HTTP_VERBOSE") != NULL;
	return 0;
}

static bool name_is(const struct kg_http_msg *m, const struct kg_http_field *f, const char *name)
{
	size_t n = strlen(name);
	return f->name.len == n && strncasecmp((const char *)m->base + f->name.off, name, n) == 0;
}

static unsigned count(const struct kg_http_msg *m, const char *name)
{
	unsigned n = 0;
	for (unsigned i = 0; i < m->n_fields; i++)
		n += name_is(m, &m->fields[i], name);
	return n;
}

/* The accepted head, byte by byte, independently of llhttp. max: its
 * size limit (the forwarded head may outgrow the client's limit by the
 * identity headers). */
static void check_head_shape(const struct kg_http_msg *m, size_t max)
{
	const unsigned char *h = m->base;
	KF_FAIL_IF(m->head_len < 4 || m->head_len > max);
	KF_FAIL_IF(memcmp(h + m->head_len - 4, "\r\n\r\n", 4) != 0);
	for (uint32_t i = 0; i < m->head_len; i++) {
		KF_FAIL_IF(h[i] == '\n' && (i == 0 || h[i - 1] != '\r')); /* bare LF */
		KF_FAIL_IF(h[i] == '\r' && (i + 1 == m->head_len || h[i + 1] != '\n'));
		KF_FAIL_IF(h[i] == '\0');
		/* obs-fold: a line (other than the final empty one) starting with SP/HTAB */
		KF_FAIL_IF(h[i] == '\n' && i + 1 < m->head_len && (h[i + 1] == ' ' || h[i + 1] == '\t'));
	}
	unsigned cl = count(m, "content-length"), te = count(m, "transfer-encoding");
	KF_FAIL_IF(cl > 1);
	KF_FAIL_IF(cl && te);
	KF_FAIL_IF(te && kg_http_minor(m) == 0);
	/* RFC 9112 6.3: a request whose last transfer coding is not chunked
	 * has no knowable length; its head must not reach a backend. */
	KF_FAIL_IF(te && !(m->parser.flags & F_CHUNKED));
	KF_FAIL_IF(count(m, "host") > 1);
	KF_FAIL_IF(kg_http_minor(m) == 1 && count(m, "host") != 1);
	KF_FAIL_IF(m->url.len == 0);
}

/* What the backend receives, parsed the way a backend would. */
static void check_forwarded(const struct kg_http_msg *orig, const struct kg_buf *out,
			    size_t max_len, bool websocket)
{
	static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
					  "upgrade", "proxy-authenticate", "proxy-authorization"};
	struct kg_http_msg re;
	KF_FAIL_IF(kg_http_msg_init(&re, true, MAX_FIELDS + KG_HDR_COUNT) < 0);
	size_t used = 0;
	int status = 0;
	const char *why = NULL;
	const unsigned char *b = (const unsigned char *)out->data;
	enum kg_http_step st = kg_http_feed(&re, b, b, out->len, &used, &status, &why);
	if (st != KG_HTTP_HEAD)
		fprintf(stderr, "forwarded head refused (%d %s):\n%.*s\n", status, why ? why : "",
			(int)out->len, out->data);
	KF_FAIL_IF(st != KG_HTTP_HEAD);
	KF_FAIL_IF(used != out->len || re.head_len != out->len);
	check_head_shape(&re, max_len);
	KF_FAIL_IF(strcmp(kg_http_method(&re), kg_http_method(orig)) != 0);
	KF_FAIL_IF(kg_http_minor(&re) != kg_http_minor(orig));
	KF_FAIL_IF(re.url.len != orig->url.len ||
		   memcmp(re.base + re.url.off, orig->base + orig->url.off, re.url.len) != 0);
	/* Body framing unchanged: the backend reads the same body bytes. */
	KF_FAIL_IF(kg_http_has_body(&re) != kg_http_has_body(orig));
	KF_FAIL_IF((re.parser.flags & F_CHUNKED) != (orig->parser.flags & F_CHUNKED));
	KF_FAIL_IF((re.parser.flags & F_CONTENT_LENGTH) != (orig->parser.flags & F_CONTENT_LENGTH));
	KF_FAIL_IF((orig->parser.flags & F_CONTENT_LENGTH) &&
		   re.parser.content_length != orig->parser.content_length);
	/* Hop-by-hop fields never pass, but for a WebSocket handshake's one
	 * Upgrade and one Connection, kgate's own (a GET without a body). */
	for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
		bool kept = websocket && (strcmp(hop[i], "upgrade") == 0 ||
					  strcmp(hop[i], "connection") == 0);
		KF_FAIL_IF(count(&re, hop[i]) != (kept ? 1u : 0u));
	}
	KF_FAIL_IF(websocket && (!kg_http_websocket_upgrade(&re) || kg_http_has_body(&re)));
	unsigned reserved = 0;
	for (unsigned i = 0; i < re.n_fields; i++) {
		const struct kg_http_field *f = &re.fields[i];
		const char *name = (const char *)re.base + f->name.off;
		reserved += kg_http_name_reserved(name, f->name.len);
		KF_FAIL_IF(ident.underscores != KG_UNDERSCORES_ALLOW &&
			   memchr(name, '_', f->name.len) != NULL);
	}
	/* Only kgate's own, in kgate's spelling: */
	KF_FAIL_IF(reserved != KG_HDR_COUNT);
	for (int h = 0; h < KG_HDR_COUNT; h++) {
		char want[32];
		int n = snprintf(want, sizeof(want), "kgate-%d", h);
		bool appended = ident.trusted && (h == KG_HDR_X_FORWARDED_FOR || h == KG_HDR_FORWARDED);
		unsigned seen = 0;
		for (unsigned i = 0; i < re.n_fields; i++) {
			const struct kg_http_field *f = &re.fields[i];
			if (!name_is(&re, f, kg_ident_header_names[h]))
				continue;
			seen++;
			/* kgate's value last, after a trusted proxy's ", "-joined ones */
			const unsigned char *v = re.base + f->value.off;
			uint32_t len = f->value.len;
			KF_FAIL_IF(len < (uint32_t)n ||
				   memcmp(v + len - (uint32_t)n, want, (size_t)n) != 0);
			KF_FAIL_IF(!appended && len != (uint32_t)n);
			KF_FAIL_IF(appended && len != (uint32_t)n &&
				   (len < (uint32_t)n + 2 || memcmp(v + len - n - 2, ", ", 2) != 0));
		}
		KF_FAIL_IF(seen != 1);
	}
	kg_http_msg_free(&re);
}

/* The client side of one connection: its bytes and the read buffer. */
struct conn {
	const uint8_t *data;
	size_t size, in, piece;
	unsigned char *rbuf;
	size_t cap, rlen, rparsed;
};

/* One client read: what fits, at most `piece` bytes. False at the end. */
static bool read_more(struct conn *c)
{
	size_t n = c->size - c->in;
	if (n > c->piece)
		n = c->piece;
	if (n > c->cap - c->rlen)
		n = c->cap - c->rlen;
	memcpy(c->rbuf + c->rlen, c->data + c->in, n);
	c->rlen += n;
	c->in += n;
	return n > 0;
}

/* Feeds rbuf[rparsed, rlen) to the parser, accounts for what it used. */
static enum kg_http_step feed(struct conn *c, struct kg_http_msg *req, int *status,
			      const char **why)
{
	size_t used = 0;
	*status = 0;
	*why = NULL;
	enum kg_http_step st = kg_http_feed(req, c->rbuf, c->rbuf + c->rparsed,
					    c->rlen - c->rparsed, &used, status, why);
	KF_FAIL_IF(used > c->rlen - c->rparsed);
	c->rparsed += used;
	return st;
}

/* Parses one request head from offset 0 of rbuf. True with the head
 * accepted; false when the connection ends (refusal, limit, EOF). */
static bool read_head(struct conn *c, struct kg_http_msg *req)
{
	for (;;) {
		if (c->rlen > c->rparsed) {
			int status;
			const char *why;
			enum kg_http_step st = feed(c, req, &status, &why);
			if (st == KG_HTTP_ERROR) {
				if (verbose)
					fprintf(stderr, "refused %d: %s\n", status, why ? why : "?");
				KF_FAIL_IF(status != 400 && status != 431);
				KF_FAIL_IF(!why || !*why);
				return false;
			}
			KF_FAIL_IF(st == KG_HTTP_DONE); /* not before the head */
			if (st == KG_HTTP_HEAD && req->head_len <= MAX_HEADER_BYTES) {
				if (verbose)
					fprintf(stderr, "accepted %s %.*s\n", kg_http_method(req),
						(int)req->url.len, (const char *)c->rbuf + req->url.off);
				return true;
			}
			if (st == KG_HTTP_HEAD || c->rlen >= MAX_HEADER_BYTES || c->rlen == c->cap) {
				if (verbose)
					fprintf(stderr, "refused 431: request head too large\n");
				return false;
			}
		}
		if (!read_more(c))
			return false;
	}
}

/* Follows the body (forwarded as it sits; the buffer is reused once
 * sent). True when the message ended and another may follow. */
static bool read_body(struct conn *c, struct kg_http_msg *req)
{
	for (;;) {
		if (c->rparsed == c->rlen)
			c->rlen = c->rparsed = 0;
		int status;
		const char *why;
		enum kg_http_step st = feed(c, req, &status, &why);
		if (st == KG_HTTP_DONE)
			return true;
		if (st == KG_HTTP_ERROR)
			return false;
		KF_FAIL_IF(st != KG_HTTP_MORE || c->rparsed != c->rlen);
		if (!read_more(c))
			return false;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	/* The read buffer as forward_http.c sizes it. */
	struct conn c = {
		.data = data + 1,
		.size = size - 1,
		.piece = (data[0] & 0x80) ? SIZE_MAX : (size_t)(data[0] & 0x0f) + 1,
		.cap = MAX_HEADER_BYTES > KG_IO_BUF_SIZE ? MAX_HEADER_BYTES : KG_IO_BUF_SIZE,
	};
	c.rbuf = malloc(c.cap);
	struct kg_http_msg req;
	struct kg_buf out = {0};
	KF_FAIL_IF(!c.rbuf || kg_http_msg_init(&req, true, MAX_FIELDS) < 0);
	static const enum kg_underscores settings[] = {KG_UNDERSCORES_DROP, KG_UNDERSCORES_REJECT,
						       KG_UNDERSCORES_ALLOW, KG_UNDERSCORES_DROP};
	ident.underscores = settings[(data[0] >> 4) & 3];
	ident.trusted = (data[0] & 0x40) != 0;
	for (int r = 0; r < MAX_REQUESTS && read_head(&c, &req); r++) {
		KF_FAIL_IF(req.head_len != c.rparsed);
		check_head_shape(&req, MAX_HEADER_BYTES);
		struct kg_http_screen sc;
		int built = kg_http_build_request(&out, &req, &ident, &sc);
		if (built == -EPERM) {
			/* refused: only for a name with '_' under "reject" */
			KF_FAIL_IF(ident.underscores != KG_UNDERSCORES_REJECT || !sc.rejected);
			KF_FAIL_IF(!memchr(sc.first, '_', sc.first_len));
			break;
		}
		KF_FAIL_IF(built < 0);
		/* A WebSocket handshake gets its Upgrade and Connection back, as
		 * forward_http.c does. */
		bool ws = kg_http_websocket_upgrade(&req);
		KF_FAIL_IF(ws && kg_http_add_upgrade(&out) < 0);
		/* A trusted proxy's values are carried over: the head may grow by them. */
		check_forwarded(&req, &out,
				(ident.trusted ? 2 : 1) * MAX_HEADER_BYTES + extra_len, ws);
		if (!read_body(&c, &req))
			break;
		/* Pipelined bytes move to the front for the next head. */
		memmove(c.rbuf, c.rbuf + c.rparsed, c.rlen - c.rparsed);
		c.rlen -= c.rparsed;
		c.rparsed = 0;
		kg_http_next(&req);
	}
	kg_buf_free(&out);
	kg_http_msg_free(&req);
	free(c.rbuf);
	return 0;
}
