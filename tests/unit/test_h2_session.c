/* h2_session.c against a real nghttp2 client session in the same process
 * (client bytes -> kg_h2_feed, kg_h2_output -> client), and against raw
 * frames for what no well-behaved client sends: malformed requests and the
 * abuse limits, each attacked and its answer (RST_STREAM / GOAWAY code,
 * on_abuse kind) read back. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <nghttp2/nghttp2.h>

#include "h2_session.h"

#define MAX_IDS 64

/* ---- the forwarder's side: what the session handed over ---- */

struct fwd {
	struct kg_h2 *h;
	int n_requests;
	int32_t last_id;
	char method[16], path[256], authority[128], scheme[16];
	char fields[2048]; /* "name: value\n"... of the last request */
	int64_t content_length;
	bool end_stream;
	size_t body[MAX_IDS];
	int body_end[MAX_IDS];
	int closes[MAX_IDS];
	uint32_t close_code[MAX_IDS];
	int room[MAX_IDS];
	int abuse[KG_H2_ABUSE_KINDS];
	int32_t abuse_id;
	int refuse;     /* on_request returns -EPERM */
	bool auto_answer; /* answer "ok" to each request at once */
	bool consume;   /* pass body bytes on at once */
	bool room_ends; /* on_send_room queues "tail" and the end */
};

static int32_t slot(int32_t id)
{
	cr_assert(id > 0 && id < 2 * MAX_IDS, "stream id %d out of the test's range", id);
	return id / 2;
}

static int f_request(void *ctx, int32_t id, const struct kg_h2_request *req)
{
	struct fwd *f = ctx;
	f->n_requests++;
	f->last_id = id;
	snprintf(f->method, sizeof(f->method), "%s", req->method);
	snprintf(f->path, sizeof(f->path), "%s", req->path ? req->path : "");
	snprintf(f->scheme, sizeof(f->scheme), "%s", req->scheme ? req->scheme : "");
	snprintf(f->authority, sizeof(f->authority), "%s", req->authority ? req->authority : "");
	f->fields[0] = '\0';
	for (size_t i = 0; i < req->n_fields; i++) {
		size_t l = strlen(f->fields);
		snprintf(f->fields + l, sizeof(f->fields) - l, "%s: %s\n", req->fields[i].name,
			 req->fields[i].value);
	}
	f->content_length = req->content_length;
	f->end_stream = req->end_stream;
	if (f->refuse)
		return -EPERM;
	kg_h2_set_stream_user(f->h, id, f);
	if (f->auto_answer) {
		cr_assert_eq(kg_h2_respond(f->h, id, 200, NULL, 0, false), 0);
		cr_assert_eq(kg_h2_send_data(f->h, id, "ok", 2, true, 0), 0);
	}
	return 0;
}

static void f_body(void *ctx, int32_t id, void *user, const uint8_t *p, size_t n)
{
	struct fwd *f = ctx;
	(void)p;
	cr_assert_eq(user, f, "the stream user pointer comes back");
	f->body[slot(id)] += n;
	if (f->consume)
		cr_assert_eq(kg_h2_consume(f->h, id, n), 0);
}

static void f_body_end(void *ctx, int32_t id, void *user)
{
	struct fwd *f = ctx;
	(void)user;
	f->body_end[slot(id)]++;
}

static void f_room(void *ctx, int32_t id, void *user)
{
	struct fwd *f = ctx;
	(void)user;
	f->room[slot(id)]++;
	if (f->room_ends)
		cr_assert_eq(kg_h2_send_data(f->h, id, "tail", 4, true, 0), 0);
}

static void f_close(void *ctx, int32_t id, void *user, uint32_t code)
{
	struct fwd *f = ctx;
	(void)user;
	f->closes[slot(id)]++;
	f->close_code[slot(id)] = code;
}

static void f_abuse(void *ctx, int32_t id, enum kg_h2_abuse kind)
{
	struct fwd *f = ctx;
	cr_assert(kind < KG_H2_ABUSE_KINDS);
	f->abuse[kind]++;
	f->abuse_id = id;
}

static const struct kg_h2_handler handler = {
	.on_request = f_request,
	.on_body = f_body,
	.on_body_end = f_body_end,
	.on_send_room = f_room,
	.on_stream_close = f_close,
	.on_abuse = f_abuse,
};

static struct kg_h2_limits limits(void)
{
	return (struct kg_h2_limits){
		.max_concurrent_streams = 8,
		.max_header_list_bytes = 16384,
		.stream_window = 16384,
		.reset_budget = 20,
		.control_budget = 20,
	};
}

/* ---- the client: a real nghttp2 session ---- */

struct cli {
	nghttp2_session *s;
	int status[MAX_IDS];
	size_t body[MAX_IDS];
	char body_text[MAX_IDS][64];
	char trailer[MAX_IDS][128];
	int closed[MAX_IDS];
	uint32_t close_code[MAX_IDS];
	bool goaway;
	uint32_t goaway_code;
	int32_t goaway_last;
	bool no_window_updates;
};

static int c_header(nghttp2_session *s, const nghttp2_frame *fr, const uint8_t *name,
		    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	(void)s;
	(void)flags;
	struct cli *c = ud;
	int32_t i = slot(fr->hd.stream_id);
	if (namelen == 7 && memcmp(name, ":status", 7) == 0)
		c->status[i] = atoi((const char *)value);
	else if (fr->headers.cat == NGHTTP2_HCAT_HEADERS && c->status[i])
		snprintf(c->trailer[i], sizeof(c->trailer[i]), "%.*s: %.*s", (int)namelen, name,
			 (int)valuelen, value);
	return 0;
}

static int c_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *p, size_t n,
		  void *ud)
{
	(void)s;
	(void)flags;
	struct cli *c = ud;
	int32_t i = slot(id);
	size_t have = strlen(c->body_text[i]);
	if (have + 1 < sizeof(c->body_text[i]))
		snprintf(c->body_text[i] + have, sizeof(c->body_text[i]) - have, "%.*s",
			 (int)(n < 60 ? n : 60), p);
	c->body[i] += n;
	return 0;
}

static int c_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
	(void)s;
	struct cli *c = ud;
	c->closed[slot(id)]++;
	c->close_code[slot(id)] = code;
	return 0;
}

static int c_frame(nghttp2_session *s, const nghttp2_frame *fr, void *ud)
{
	(void)s;
	struct cli *c = ud;
	if (fr->hd.type == NGHTTP2_GOAWAY) {
		c->goaway = true;
		c->goaway_code = fr->goaway.error_code;
		c->goaway_last = fr->goaway.last_stream_id;
	}
	return 0;
}

static void cli_init(struct cli *c, bool manual_window)
{
	memset(c, 0, sizeof(*c));
	nghttp2_session_callbacks *cb;
	cr_assert_eq(nghttp2_session_callbacks_new(&cb), 0);
	nghttp2_session_callbacks_set_on_header_callback(cb, c_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_data);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, c_close);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_frame);
	nghttp2_option *opt;
	cr_assert_eq(nghttp2_option_new(&opt), 0);
	nghttp2_option_set_no_auto_window_update(opt, manual_window);
	cr_assert_eq(nghttp2_session_client_new2(&c->s, cb, c, opt), 0);
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cb);
	cr_assert_eq(nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0), 0);
}

/* Moves bytes both ways until neither side has any; returns the last
 * kg_h2_feed result (0, or -EPROTO after a connection error). */
static int pump(struct kg_h2 *h, struct cli *c)
{
	int feed_rv = 0;
	for (int round = 0; round < 10000; round++) {
		bool moved = false;
		for (;;) {
			const uint8_t *p;
			ssize_t n = nghttp2_session_mem_send(c->s, &p);
			cr_assert_geq(n, 0);
			if (n == 0)
				break;
			moved = true;
			int rv = kg_h2_feed(h, p, (size_t)n);
			if (rv < 0)
				feed_rv = rv;
		}
		for (;;) {
			const uint8_t *p;
			ssize_t n = kg_h2_output(h, &p);
			cr_assert_geq(n, 0, "kg_h2_output: %zd", n);
			if (n == 0)
				break;
			moved = true;
			ssize_t r = nghttp2_session_mem_recv(c->s, p, (size_t)n);
			cr_assert_eq(r, n, "client mem_recv: %zd", r);
		}
		if (!moved)
			return feed_rv;
	}
	cr_assert_fail("pump did not settle");
	return -1;
}

static int32_t cli_request(struct cli *c, const char *method, const char *path,
			   const nghttp2_nv *extra, size_t n_extra, nghttp2_data_provider *body)
{
	nghttp2_nv nv[16] = {
		{(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), 0},
		{(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, 0},
		{(uint8_t *)":authority", (uint8_t *)"example.test", 10, 12, 0},
		{(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
	};
	cr_assert_leq(n_extra, 12u);
	if (n_extra)
		memcpy(nv + 4, extra, n_extra * sizeof(*extra));
	int32_t id = nghttp2_submit_request(c->s, NULL, nv, 4 + n_extra, body, NULL);
	cr_assert_gt(id, 0);
	return id;
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0}

struct t {
	struct fwd f;
	struct cli c;
	struct kg_h2 *h;
};

static void t_init(struct t *t, const struct kg_h2_limits *l)
{
	memset(&t->f, 0, sizeof(t->f));
	t->h = kg_h2_create(l, true, &handler, &t->f);
	cr_assert_not_null(t->h);
	t->f.h = t->h;
	cli_init(&t->c, false);
}

static void t_fini(struct t *t)
{
	kg_h2_destroy(t->h);
	nghttp2_session_del(t->c.s);
}

Test(h2_session, create_refuses_bad_limits)
{
	struct kg_h2_limits l = limits();
	l.stream_window = 0;
	cr_expect_null(kg_h2_create(&l, false, &handler, NULL));
	l = limits();
	l.max_concurrent_streams = 0;
	cr_expect_null(kg_h2_create(&l, false, &handler, NULL));
	l = limits();
	l.reset_budget = 0;
	cr_expect_null(kg_h2_create(&l, false, &handler, NULL));
	l = limits();
	l.stream_window = 0x80000000u;
	cr_expect_null(kg_h2_create(&l, false, &handler, NULL));
	kg_h2_destroy(NULL);
	cr_expect_str_eq(kg_h2_abuse_names[KG_H2_ABUSE_RAPID_RESET], "rapid_reset");
	for (int k = 0; k < KG_H2_ABUSE_KINDS; k++)
		cr_expect_not_null(kg_h2_abuse_names[k]);
}

Test(h2_session, get_answered_with_body)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	nghttp2_nv extra[] = {NV("user-agent", "t"), NV("cookie", "a=1"), NV("accept", "*/*"),
			      NV("cookie", "b=2")};
	int32_t id = cli_request(&t.c, "GET", "/index.html?q=1", extra, 4, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(t.f.n_requests, 1);
	cr_expect_eq(t.f.last_id, id);
	cr_expect_str_eq(t.f.method, "GET");
	cr_expect_str_eq(t.f.path, "/index.html?q=1");
	cr_expect_str_eq(t.f.scheme, "https");
	cr_expect_str_eq(t.f.authority, "example.test");
	/* cookie crumbs joined at the first crumb's place */
	cr_expect_str_eq(t.f.fields, "user-agent: t\ncookie: a=1; b=2\naccept: */*\n");
	cr_expect(t.f.end_stream);
	cr_expect_eq(t.f.content_length, -1);
	cr_expect_eq(kg_h2_open_streams(t.h), 1u);

	struct kg_h2_field rh[] = {{"content-type", 12, "text/plain", 10},
				   {"connection", 10, "close", 5}};
	struct kg_h2_field hint[] = {{"link", 4, "</a.css>; rel=preload", 21}};
	cr_expect_eq(kg_h2_respond(t.h, id, 101, NULL, 0, false), -EINVAL, "HTTP/2 has no 101");
	cr_expect_eq(kg_h2_respond(t.h, id, 99, NULL, 0, false), -EINVAL);
	cr_expect_eq(kg_h2_respond(t.h, id, 100, NULL, 0, true), -EINVAL, "an interim head ends nothing");
	cr_assert_eq(kg_h2_respond(t.h, id, 100, NULL, 0, false), 0, "interim heads come first");
	cr_assert_eq(kg_h2_respond(t.h, id, 103, hint, 1, false), 0, "as many as the backend sent");
	cr_assert_eq(kg_h2_respond(t.h, id, 200, rh, 2, false), 0);
	cr_expect_eq(kg_h2_respond(t.h, id, 103, hint, 1, false), -EINVAL, "not after the final one");
	cr_expect_eq(kg_h2_respond(t.h, id, 200, NULL, 0, false), -EINVAL, "one head only");
	cr_assert_eq(kg_h2_send_data(t.h, id, "hello ", 6, false, 0), 0);
	cr_assert_eq(kg_h2_send_data(t.h, id, "world", 5, true, 0), 0);
	cr_expect_eq(kg_h2_send_pending(t.h, id), 11u);
	cr_expect_eq(kg_h2_send_data(t.h, id, "x", 1, true, 0), -EINVAL, "after the end");
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.c.status[slot(id)], 200);
	cr_expect_str_eq(t.c.body_text[slot(id)], "hello world");
	cr_expect_eq(t.c.close_code[slot(id)], 0u);
	cr_expect_eq(t.f.closes[slot(id)], 1);
	cr_expect_eq(t.f.close_code[slot(id)], 0u);
	cr_expect_eq(t.f.body_end[slot(id)], 0, "no body: end_stream says so");
	cr_expect_eq(kg_h2_open_streams(t.h), 0u);
	cr_expect_eq(kg_h2_send_data(t.h, id, "x", 1, true, 0), -ENOENT, "the id is dead");
	cr_expect_eq(kg_h2_consume(t.h, id, 1), -ENOENT);
	for (int k = 0; k < KG_H2_ABUSE_KINDS; k++)
		cr_expect_eq(t.f.abuse[k], 0);
	cr_expect_not(kg_h2_done(t.h));
	t_fini(&t);
}

Test(h2_session, refused_by_the_forwarder)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	t.f.refuse = 1;
	int32_t id = cli_request(&t.c, "GET", "/", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.f.n_requests, 1);
	cr_expect_eq(t.c.close_code[slot(id)], NGHTTP2_REFUSED_STREAM);
	cr_expect_eq(t.f.closes[slot(id)], 0, "a refused id never reaches on_stream_close");
	cr_expect_eq(kg_h2_open_streams(t.h), 0u);
	t_fini(&t);
}

/* A request body from a buffer of the test. */
struct src {
	size_t left;
};

static ssize_t src_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *fl,
			nghttp2_data_source *ds, void *ud)
{
	(void)s;
	(void)id;
	(void)ud;
	struct src *b = ds->ptr;
	size_t n = b->left < len ? b->left : len;
	memset(buf, 'b', n);
	b->left -= n;
	if (b->left == 0)
		*fl |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

Test(h2_session, post_bigger_than_the_window)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	const size_t total = 200000;
	/* Until the client has our SETTINGS, its window is the RFC's 64 KiB:
	 * a first request settles that. */
	int32_t first = cli_request(&t.c, "GET", "/", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, first, 200, NULL, 0, true), 0);
	struct src b = {total};
	nghttp2_data_provider dp = {.source.ptr = &b, .read_callback = src_read};
	nghttp2_nv extra[] = {NV("content-length", "200000")};
	int32_t id = cli_request(&t.c, "POST", "/up", extra, 1, &dp);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(t.f.n_requests, 2);
	cr_expect_eq(t.f.content_length, 200000);
	cr_expect_not(t.f.end_stream);
	/* Nothing consumed: the client stops at the stream's window. */
	cr_expect_eq(t.f.body[slot(id)], l.stream_window, "got %zu", t.f.body[slot(id)]);
	/* The forwarder passes bytes on: the window reopens. */
	int rounds = 0;
	size_t consumed = 0;
	while (t.f.body_end[slot(id)] == 0) {
		size_t have = t.f.body[slot(id)];
		cr_assert_eq(kg_h2_consume(t.h, id, have - consumed), 0);
		consumed = have;
		cr_assert_eq(pump(t.h, &t.c), 0);
		cr_assert_lt(++rounds, 100, "the body does not get through");
		cr_assert_leq(t.f.body[slot(id)] - consumed, l.stream_window,
			      "no more than the window unconsumed");
	}
	cr_expect_eq(t.f.body[slot(id)], total);
	cr_expect_eq(t.f.body_end[slot(id)], 1);
	cr_expect_eq(kg_h2_consume(t.h, id, total - consumed), 0);
	cr_expect_eq(kg_h2_consume(t.h, id, 1), -EINVAL, "more than was delivered");
	cr_assert_eq(kg_h2_respond(t.h, id, 204, NULL, 0, true), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.c.status[slot(id)], 204);
	cr_expect_eq(t.f.closes[slot(id)], 1);
	t_fini(&t);
}

Test(h2_session, unconsumed_body_of_a_closed_stream_reopens_the_connection)
{
	/* Streams that end with bytes the forwarder never passed on must not
	 * eat the connection's window for good. */
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	t.f.auto_answer = true;
	for (int i = 0; i < 12; i++) {
		struct src b = {l.stream_window};
		nghttp2_data_provider dp = {.source.ptr = &b, .read_callback = src_read};
		int32_t id = cli_request(&t.c, "POST", "/", NULL, 0, &dp);
		cr_assert_eq(pump(t.h, &t.c), 0);
		cr_assert_eq(t.f.body[slot(id)], l.stream_window, "stream %d got its body", i);
		cr_assert_eq(t.c.status[slot(id)], 200);
	}
	t_fini(&t);
}

Test(h2_session, response_queue_and_send_room)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	int32_t id = cli_request(&t.c, "GET", "/big", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, id, 200, NULL, 0, false), 0);
	static char chunk[32768];
	memset(chunk, 'r', sizeof(chunk));
	size_t sent = 0;
	for (int i = 0; i < 8; i++) {
		int before = t.f.room[slot(id)];
		cr_assert_eq(kg_h2_send_data(t.h, id, chunk, sizeof(chunk), i == 7, 4096), 0);
		sent += sizeof(chunk);
		cr_assert_eq(pump(t.h, &t.c), 0);
		if (i < 7)
			cr_expect_eq(t.f.room[slot(id)], before + 1, "room after chunk %d", i);
	}
	cr_expect_eq(t.c.body[slot(id)], sent);
	cr_expect_eq(t.f.closes[slot(id)], 1);
	t_fini(&t);
}

Test(h2_session, trailers)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	int32_t id = cli_request(&t.c, "POST", "/grpc", NULL, 0, NULL);
	int32_t id2 = cli_request(&t.c, "GET", "/empty", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, id, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_send_data(t.h, id, "msg", 3, false, 0), 0);
	struct kg_h2_field tr[] = {{"grpc-status", 11, "0", 1}};
	cr_assert_eq(kg_h2_trailers(t.h, id, tr, 1), 0);
	cr_expect_eq(kg_h2_send_data(t.h, id, "x", 1, false, 0), -EINVAL, "after trailers");
	/* trailers with no data at all, on a stream whose queue was deferred */
	cr_assert_eq(kg_h2_respond(t.h, id2, 200, NULL, 0, false), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	struct kg_h2_field tr2[] = {{"x-done", 6, "yes", 3}};
	cr_assert_eq(kg_h2_trailers(t.h, id2, tr2, 1), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_str_eq(t.c.body_text[slot(id)], "msg");
	cr_expect_str_eq(t.c.trailer[slot(id)], "grpc-status: 0");
	cr_expect_str_eq(t.c.trailer[slot(id2)], "x-done: yes");
	cr_expect_eq(t.c.close_code[slot(id)], 0u);
	cr_expect_eq(t.f.closes[slot(id)], 1);
	cr_expect_eq(t.f.closes[slot(id2)], 1);
	t_fini(&t);
}

Test(h2_session, reset_by_the_client)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	int32_t id = cli_request(&t.c, "GET", "/slow", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, id, 200, NULL, 0, false), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(nghttp2_submit_rst_stream(t.c.s, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.f.closes[slot(id)], 1);
	cr_expect_eq(t.f.close_code[slot(id)], NGHTTP2_CANCEL);
	cr_expect_eq(kg_h2_send_data(t.h, id, "x", 1, true, 0), -ENOENT);
	cr_expect_eq(kg_h2_reset(t.h, id, NGHTTP2_CANCEL), -ENOENT);
	cr_expect_eq(kg_h2_open_streams(t.h), 0u);
	t_fini(&t);
}

Test(h2_session, reset_by_the_forwarder)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	int32_t id = cli_request(&t.c, "GET", "/", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, id, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_send_data(t.h, id, "part", 4, false, 0), 0);
	cr_assert_eq(kg_h2_reset(t.h, id, NGHTTP2_INTERNAL_ERROR), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.c.close_code[slot(id)], NGHTTP2_INTERNAL_ERROR);
	cr_expect_eq(t.f.closes[slot(id)], 1);
	cr_expect_eq(t.f.close_code[slot(id)], NGHTTP2_INTERNAL_ERROR);
	cr_expect_eq(t.f.abuse[KG_H2_ABUSE_MALFORMED], 0);
	t_fini(&t);
}

Test(h2_session, shutdown_lets_streams_in_flight_finish)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	int32_t a = cli_request(&t.c, "GET", "/a", NULL, 0, NULL);
	int32_t b = cli_request(&t.c, "GET", "/b", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(t.f.n_requests, 2);
	kg_h2_shutdown(t.h);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect(t.c.goaway);
	cr_expect_eq(t.c.goaway_code, NGHTTP2_NO_ERROR);
	cr_expect_eq(t.c.goaway_last, b);
	cr_expect_not(kg_h2_done(t.h), "two streams open");
	cr_expect_eq(kg_h2_open_streams(t.h), 2u);
	/* A new stream after GOAWAY is not taken. */
	int32_t c = nghttp2_submit_request(t.c.s, NULL,
					   (nghttp2_nv[]){NV(":method", "GET"), NV(":scheme", "https"),
							  NV(":authority", "x"), NV(":path", "/c")},
					   4, NULL, NULL);
	if (c > 0)
		cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.f.n_requests, 2);
	cr_assert_eq(kg_h2_respond(t.h, a, 200, NULL, 0, true), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_not(kg_h2_done(t.h));
	cr_assert_eq(kg_h2_respond(t.h, b, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_send_data(t.h, b, "bye", 3, true, 0), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.c.status[slot(a)], 200);
	cr_expect_str_eq(t.c.body_text[slot(b)], "bye");
	cr_expect_eq(kg_h2_open_streams(t.h), 0u);
	cr_expect(kg_h2_done(t.h));
	t_fini(&t);
}

Test(h2_session, destroy_with_streams_open_calls_nothing)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	cli_request(&t.c, "GET", "/", NULL, 0, NULL);
	int32_t id = cli_request(&t.c, "POST", "/", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, id, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_send_data(t.h, id, "x", 1, false, 0), 0);
	int closes = t.f.closes[1] + t.f.closes[2];
	kg_h2_destroy(t.h);
	cr_expect_eq(t.f.closes[1] + t.f.closes[2], closes);
	nghttp2_session_del(t.c.s);
}

/* ---- raw frames: what a well-behaved client never sends ---- */

struct raw {
	struct fwd f;
	struct kg_h2 *h;
	nghttp2_hd_deflater *def;
	nghttp2_hd_inflater *inf;
	uint8_t in[1 << 16]; /* server output not yet parsed */
	size_t in_len;
	size_t out_bytes;
	/* what came back */
	uint32_t rst[2 * MAX_IDS];  /* RST_STREAM code + 1 per stream id (0: none) */
	int status[2 * MAX_IDS];
	bool goaway;
	uint32_t goaway_code;
	int n_settings_ack, n_ping_ack;
	int feed_rv;
};

static void raw_parse(struct raw *r)
{
	size_t off = 0;
	while (r->in_len - off >= 9) {
		const uint8_t *p = r->in + off;
		size_t len = (size_t)p[0] << 16 | (size_t)p[1] << 8 | p[2];
		if (r->in_len - off < 9 + len)
			break;
		uint8_t type = p[3], flags = p[4];
		int32_t sid = (int32_t)((uint32_t)(p[5] & 0x7f) << 24 | (uint32_t)p[6] << 16 |
					(uint32_t)p[7] << 8 | p[8]);
		const uint8_t *pl = p + 9;
		uint32_t code4 = len >= 4 ? (uint32_t)pl[0] << 24 | (uint32_t)pl[1] << 16 |
						    (uint32_t)pl[2] << 8 | pl[3]
					  : 0;
		if (type == NGHTTP2_RST_STREAM && sid < 2 * MAX_IDS)
			r->rst[sid] = code4 + 1;
		if (type == NGHTTP2_GOAWAY && len >= 8) {
			r->goaway = true;
			r->goaway_code = (uint32_t)pl[4] << 24 | (uint32_t)pl[5] << 16 |
					 (uint32_t)pl[6] << 8 | pl[7];
		}
		if (type == NGHTTP2_SETTINGS && (flags & NGHTTP2_FLAG_ACK))
			r->n_settings_ack++;
		if (type == NGHTTP2_PING && (flags & NGHTTP2_FLAG_ACK))
			r->n_ping_ack++;
		if (type == NGHTTP2_HEADERS) {
			/* the test never sends padded or prioritised responses */
			size_t used = 0;
			for (;;) {
				nghttp2_nv nv;
				int fl = 0;
				ssize_t n = nghttp2_hd_inflate_hd2(r->inf, &nv, &fl, pl + used,
								   len - used, 1);
				cr_assert_geq(n, 0);
				used += (size_t)n;
				if (fl & NGHTTP2_HD_INFLATE_EMIT && nv.namelen == 7 &&
				    memcmp(nv.name, ":status", 7) == 0 && sid < 2 * MAX_IDS)
					r->status[sid] = atoi((const char *)nv.value);
				if (fl & NGHTTP2_HD_INFLATE_FINAL) {
					nghttp2_hd_inflate_end_headers(r->inf);
					break;
				}
				if (!(fl & NGHTTP2_HD_INFLATE_EMIT) && n == 0)
					break;
			}
		}
		off += 9 + len;
	}
	memmove(r->in, r->in + off, r->in_len - off);
	r->in_len -= off;
}

static void raw_drain(struct raw *r)
{
	for (;;) {
		const uint8_t *p;
		ssize_t n = kg_h2_output(r->h, &p);
		cr_assert_geq(n, 0);
		if (n == 0)
			break;
		r->out_bytes += (size_t)n;
		cr_assert_leq(r->in_len + (size_t)n, sizeof(r->in));
		memcpy(r->in + r->in_len, p, (size_t)n);
		r->in_len += (size_t)n;
		raw_parse(r);
	}
}

static void raw_feed(struct raw *r, const void *p, size_t n)
{
	int rv = kg_h2_feed(r->h, p, n);
	if (rv < 0 && r->feed_rv == 0)
		r->feed_rv = rv;
}

static void raw_frame(struct raw *r, uint8_t type, uint8_t flags, int32_t sid, const void *pl,
		      size_t len)
{
	uint8_t hd[9] = {(uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len, type, flags,
			 (uint8_t)(sid >> 24),  (uint8_t)(sid >> 16), (uint8_t)(sid >> 8),
			 (uint8_t)sid};
	raw_feed(r, hd, 9);
	if (len)
		raw_feed(r, pl, len);
}

/* HPACK-encodes nv (this client's own table) into out; returns its size. */
static size_t raw_block(struct raw *r, const nghttp2_nv *nv, size_t n, uint8_t *out, size_t cap)
{
	ssize_t len = nghttp2_hd_deflate_hd(r->def, out, cap, (nghttp2_nv *)nv, n);
	cr_assert_geq(len, 0);
	return (size_t)len;
}

static void raw_headers(struct raw *r, int32_t sid, uint8_t flags, const nghttp2_nv *nv, size_t n)
{
	uint8_t buf[16384];
	size_t len = raw_block(r, nv, n, buf, sizeof(buf));
	raw_frame(r, NGHTTP2_HEADERS, flags | NGHTTP2_FLAG_END_HEADERS, sid, buf, len);
}

/* A session and a raw client's preface with its SETTINGS payload; ack:
 * the client acknowledges the server's SETTINGS, as clients do. */
static void raw_start(struct raw *r, const struct kg_h2_limits *l, bool connect_protocol,
		      const uint8_t *settings, size_t settings_len, bool ack)
{
	memset(r, 0, sizeof(*r));
	r->h = kg_h2_create(l, connect_protocol, &handler, &r->f);
	cr_assert_not_null(r->h);
	r->f.h = r->h;
	cr_assert_eq(nghttp2_hd_deflate_new(&r->def, 4096), 0);
	cr_assert_eq(nghttp2_hd_inflate_new(&r->inf), 0);
	raw_feed(r, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
	raw_frame(r, NGHTTP2_SETTINGS, 0, 0, settings, settings_len);
	raw_drain(r);
	if (ack) {
		raw_frame(r, NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0, NULL, 0);
		raw_drain(r);
	}
	cr_assert_eq(r->feed_rv, 0);
}

static void raw_init(struct raw *r, const struct kg_h2_limits *l, bool connect_protocol)
{
	raw_start(r, l, connect_protocol, NULL, 0, true);
}

static void raw_fini(struct raw *r)
{
	kg_h2_destroy(r->h);
	nghttp2_hd_deflate_del(r->def);
	nghttp2_hd_inflate_del(r->inf);
}

struct bad_case {
	const char *name;
	nghttp2_nv nv[8];
	size_t n;
	const char *data; /* a DATA frame with END_STREAM after the head, or NULL */
	bool accepted;    /* a control case that must pass */
	bool late;        /* found in the body: the head was taken, the stream is reset */
};

#define GET_HEAD NV(":method", "GET"), NV(":scheme", "https"), NV(":authority", "a.test")

static const struct bad_case bad[] = {
	{"control: plain GET", {GET_HEAD, NV(":path", "/")}, 4, NULL, true, false},
	{"control: te trailers", {GET_HEAD, NV(":path", "/"), NV("te", "trailers")}, 5, NULL, true, false},
	{"control: OPTIONS *", {NV(":method", "OPTIONS"), NV(":scheme", "https"),
				NV(":authority", "a"), NV(":path", "*")}, 4, NULL, true, false},
	{"control: CONNECT", {NV(":method", "CONNECT"), NV(":authority", "a:443")}, 2, NULL, true, false},
	{"control: content-length matches", {GET_HEAD, NV(":path", "/"),
					     NV("content-length", "3")}, 5, "abc", true, false},
	{"control: host equals authority", {GET_HEAD, NV(":path", "/"), NV("host", "A.test")}, 5,
	 NULL, true, false},
	{"no :method", {NV(":scheme", "https"), NV(":authority", "a"), NV(":path", "/")}, 3, NULL, false, false},
	{"no :path", {GET_HEAD}, 3, NULL, false, false},
	{"no :scheme", {NV(":method", "GET"), NV(":authority", "a"), NV(":path", "/")}, 3, NULL, false, false},
	{"empty :path", {GET_HEAD, NV(":path", "")}, 4, NULL, false, false},
	{"path not absolute", {GET_HEAD, NV(":path", "x/y")}, 4, NULL, false, false},
	{"two :path", {GET_HEAD, NV(":path", "/"), NV(":path", "/b")}, 5, NULL, false, false},
	{"pseudo after regular", {NV(":method", "GET"), NV(":scheme", "https"), NV("x", "1"),
				  NV(":path", "/")}, 4, NULL, false, false},
	{"unknown pseudo", {GET_HEAD, NV(":path", "/"), NV(":foo", "1")}, 5, NULL, false, false},
	{"response pseudo", {GET_HEAD, NV(":path", "/"), NV(":status", "200")}, 5, NULL, false, false},
	{":protocol not allowed", {NV(":method", "CONNECT"), NV(":scheme", "https"),
				   NV(":authority", "a"), NV(":path", "/"),
				   NV(":protocol", "websocket")}, 5, NULL, false, false},
	{"CONNECT with :path", {NV(":method", "CONNECT"), NV(":authority", "a:443"),
				NV(":path", "/")}, 3, NULL, false, false},
	{"upper-case name", {GET_HEAD, NV(":path", "/"), NV("X-Up", "1")}, 5, NULL, false, false},
	{"space in name", {GET_HEAD, NV(":path", "/"), NV("x y", "1")}, 5, NULL, false, false},
	{"connection", {GET_HEAD, NV(":path", "/"), NV("connection", "close")}, 5, NULL, false, false},
	{"keep-alive", {GET_HEAD, NV(":path", "/"), NV("keep-alive", "5")}, 5, NULL, false, false},
	{"proxy-connection", {GET_HEAD, NV(":path", "/"), NV("proxy-connection", "x")}, 5, NULL, false, false},
	{"transfer-encoding", {GET_HEAD, NV(":path", "/"), NV("transfer-encoding", "chunked")}, 5, NULL, false, false},
	{"upgrade", {GET_HEAD, NV(":path", "/"), NV("upgrade", "h2c")}, 5, NULL, false, false},
	{"te gzip", {GET_HEAD, NV(":path", "/"), NV("te", "gzip")}, 5, NULL, false, false},
	{"CR in value", {GET_HEAD, NV(":path", "/"), NV("x", "a\rb")}, 5, NULL, false, false},
	{"LF in value", {GET_HEAD, NV(":path", "/"), NV("x", "a\nb")}, 5, NULL, false, false},
	{"NUL in value", {GET_HEAD, NV(":path", "/"), {(uint8_t *)"x", (uint8_t *)"a\0b", 1, 3, 0}},
	 5, NULL, false, false},
	{"CRLF in path", {GET_HEAD, NV(":path", "/a\r\nx: y")}, 4, NULL, false, false},
	{"content-length not a number", {GET_HEAD, NV(":path", "/"), NV("content-length", "1x")}, 5, NULL, false, false},
	{"two content-length", {GET_HEAD, NV(":path", "/"), NV("content-length", "3"),
				NV("content-length", "3")}, 6, "abc", false, false},
	{"content-length above DATA", {GET_HEAD, NV(":path", "/"), NV("content-length", "5")}, 5,
	 "abc", false, true},
	{"content-length below DATA", {GET_HEAD, NV(":path", "/"), NV("content-length", "2")}, 5,
	 "abc", false, true},
	{"content-length with END_STREAM head", {GET_HEAD, NV(":path", "/"),
						 NV("content-length", "4")}, 5, NULL, false, false},
	{"host differs from authority", {GET_HEAD, NV(":path", "/"), NV("host", "b.test")}, 5, NULL, false, false},
};

Test(h2_session, validation_refusals)
{
	struct kg_h2_limits l = limits();
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const struct bad_case *c = &bad[i];
		struct raw r;
		raw_init(&r, &l, false);
		raw_headers(&r, 1, c->data ? 0 : NGHTTP2_FLAG_END_STREAM, c->nv, c->n);
		if (c->data)
			raw_frame(&r, NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 1, c->data,
				  strlen(c->data));
		raw_drain(&r);
		if (c->accepted) {
			cr_expect_eq(r.f.n_requests, 1, "%s: taken", c->name);
			cr_expect_eq(r.rst[1], 0u, "%s: not reset", c->name);
			cr_expect_eq(r.f.abuse[KG_H2_ABUSE_MALFORMED], 0, "%s", c->name);
			if (c->data)
				cr_expect_eq(r.f.body[0], strlen(c->data), "%s", c->name);
		} else {
			if (c->late) {
				cr_expect_eq(r.f.n_requests, 1, "%s: head taken", c->name);
				cr_expect_eq(r.f.closes[0], 1, "%s: closed once", c->name);
				cr_expect_eq(r.f.close_code[0], NGHTTP2_PROTOCOL_ERROR, "%s", c->name);
				cr_expect_eq(r.f.body_end[0], 0, "%s: no clean end", c->name);
				size_t cl = strstr(c->name, "below") ? 2 : 3;
				cr_expect_leq(r.f.body[0], cl, "%s: no byte past Content-Length",
					      c->name);
			} else {
				cr_expect_eq(r.f.n_requests, 0, "%s: never reaches the forwarder",
					     c->name);
			}
			cr_expect_eq(r.rst[1], NGHTTP2_PROTOCOL_ERROR + 1,
				     "%s: RST_STREAM(PROTOCOL_ERROR), got %u", c->name, r.rst[1]);
			cr_expect_eq(r.f.abuse[KG_H2_ABUSE_MALFORMED], 1, "%s: on_abuse(malformed)",
				     c->name);
			cr_expect_eq(r.f.abuse_id, 1, "%s", c->name);
			cr_expect_not(r.goaway, "%s: the stream's error only", c->name);
		}
		cr_expect_eq(r.feed_rv, 0, "%s", c->name);
		raw_fini(&r);
	}
}

Test(h2_session, extended_connect_when_allowed)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, true);
	nghttp2_nv nv[] = {NV(":method", "CONNECT"), NV(":scheme", "https"), NV(":authority", "a"),
			   NV(":path", "/chat"), NV(":protocol", "websocket")};
	raw_headers(&r, 1, 0, nv, 5);
	raw_drain(&r);
	cr_expect_eq(r.f.n_requests, 1);
	cr_expect_eq(r.rst[1], 0u);
	raw_fini(&r);
}

/* ---- abuse limits: each attacked with raw frames ---- */

static void expect_only_abuse(const struct raw *r, enum kg_h2_abuse kind, int n)
{
	for (int k = 0; k < KG_H2_ABUSE_KINDS; k++)
		cr_expect_eq(r->f.abuse[k], k == (int)kind ? n : 0, "on_abuse(%s) x%d, want x%d",
			     kg_h2_abuse_names[k], r->f.abuse[k], k == (int)kind ? n : 0);
}

static const nghttp2_nv get_nv[] = {GET_HEAD, NV(":path", "/")};

/* HPACK integer with an n-bit prefix (RFC 7541 5.1); returns bytes written. */
static size_t hpack_int(uint8_t *out, uint8_t first, unsigned bits, size_t v)
{
	size_t max = (1u << bits) - 1, k = 0;
	if (v < max) {
		out[k++] = (uint8_t)(first | v);
		return k;
	}
	out[k++] = (uint8_t)(first | max);
	v -= max;
	while (v >= 128) {
		out[k++] = (uint8_t)(v % 128 + 128);
		v /= 128;
	}
	out[k++] = (uint8_t)v;
	return k;
}

/* GET https://a/ in static-table references and one literal (no table
 * change): :method GET, :scheme https, :path /, :authority "a". */
static size_t hpack_get(uint8_t *out)
{
	const uint8_t b[] = {0x82, 0x87, 0x84, 0x01, 0x01, 'a'};
	memcpy(out, b, sizeof(b));
	return sizeof(b);
}

Test(h2_abuse, streams_past_the_limit_before_the_ack_are_refused)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	/* no ACK of the server's SETTINGS: a client that opens at once */
	raw_start(&r, &l, false, NULL, 0, false);
	for (int32_t i = 0; i <= (int32_t)l.max_concurrent_streams; i++)
		raw_headers(&r, 2 * i + 1, 0, get_nv, 4);
	raw_drain(&r);
	int32_t last = 2 * (int32_t)l.max_concurrent_streams + 1;
	cr_expect_eq(r.f.n_requests, (int)l.max_concurrent_streams);
	cr_expect_eq(r.rst[last], NGHTTP2_REFUSED_STREAM + 1, "the one past the limit refused");
	cr_expect_eq(r.rst[1], 0u);
	cr_expect_not(r.goaway);
	expect_only_abuse(&r, KG_H2_ABUSE_STREAMS, 1);
	cr_expect_eq(r.f.abuse_id, last);
	cr_expect_eq(kg_h2_open_streams(r.h), l.max_concurrent_streams);
	raw_fini(&r);
}

Test(h2_abuse, streams_past_the_acknowledged_limit_end_the_connection)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	for (int32_t i = 0; i <= (int32_t)l.max_concurrent_streams; i++)
		raw_headers(&r, 2 * i + 1, 0, get_nv, 4);
	raw_drain(&r);
	cr_expect_eq(r.f.n_requests, (int)l.max_concurrent_streams);
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_PROTOCOL_ERROR);
	cr_expect_eq(r.feed_rv, -EPROTO);
	expect_only_abuse(&r, KG_H2_ABUSE_STREAMS, 1);
	cr_expect_eq(r.f.abuse_id, 0);
	/* the streams taken are closed with the connection, each once */
	kg_h2_destroy(r.h);
	r.h = NULL;
	raw_fini(&r);
}

/* count fields of value_len bytes that Huffman cannot shrink */
static void big_fields(nghttp2_nv *nv, size_t count, char *store, size_t value_len)
{
	for (size_t i = 0; i < count; i++) {
		char *name = store + i * (value_len + 16);
		snprintf(name, 16, "x-f%u", (unsigned)(i % 1000));
		char *value = name + 16;
		for (size_t k = 0; k < value_len; k++)
			value[k] = "{}^|~\\"[k % 6]; /* 13+ bit Huffman codes: sent as literals */
		nv[i] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), value_len,
				     NGHTTP2_NV_FLAG_NO_INDEX};
	}
}

Test(h2_abuse, header_list_too_large_is_answered_431)
{
	struct kg_h2_limits l = limits();
	l.max_header_list_bytes = 8192;
	struct raw r;
	raw_init(&r, &l, false);
	static char store[12 * (1000 + 16)];
	nghttp2_nv nv[16] = {GET_HEAD, NV(":path", "/")};
	big_fields(nv + 4, 9, store, 1000); /* 9 x 1037 > 8192, sent in ~9.1 KiB */
	uint8_t buf[16384];
	size_t len = raw_block(&r, nv, 13, buf, sizeof(buf));
	cr_assert_lt(len, 2 * l.max_header_list_bytes);
	raw_frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, buf, len);
	raw_drain(&r);
	cr_expect_eq(r.f.n_requests, 0);
	cr_expect_eq(r.status[1], 431);
	cr_expect_eq(r.rst[1], NGHTTP2_NO_ERROR + 1, "the body is not wanted");
	cr_expect_not(r.goaway);
	expect_only_abuse(&r, KG_H2_ABUSE_HEADER_LIST, 1);
	cr_expect_eq(r.f.abuse_id, 1);
	/* the connection goes on */
	raw_headers(&r, 3, NGHTTP2_FLAG_END_STREAM, get_nv, 4);
	raw_drain(&r);
	cr_expect_eq(r.f.n_requests, 1);
	cr_expect_eq(r.feed_rv, 0);
	raw_fini(&r);
}

Test(h2_abuse, hpack_bomb_ends_the_connection)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	/* Stream 1 puts a 4000-byte field into the server's HPACK table. */
	static uint8_t blk[16384];
	size_t k = hpack_get(blk);
	blk[k++] = 0x40; /* literal with incremental indexing, new name */
	k += hpack_int(blk + k, 0, 7, 6);
	memcpy(blk + k, "x-bomb", 6);
	k += 6;
	k += hpack_int(blk + k, 0, 7, 4000);
	memset(blk + k, 'B', 4000);
	k += 4000;
	raw_frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 1, blk,
		  k);
	raw_drain(&r);
	cr_assert_eq(r.f.n_requests, 1, "the entry's own request is fine");
	size_t before = kg_h2_memory(r.h);
	/* Stream 3: 10000 one-byte references to it: 40 MB decoded. */
	k = hpack_get(blk);
	memset(blk + k, 0xbe, 10000); /* indexed, 62: the newest dynamic entry */
	k += 10000;
	raw_frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 3, blk,
		  k);
	size_t during = kg_h2_memory(r.h);
	raw_drain(&r);
	cr_expect_eq(r.f.n_requests, 1, "the bomb's request never reaches the forwarder");
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	cr_expect_eq(r.feed_rv, -EPROTO);
	expect_only_abuse(&r, KG_H2_ABUSE_HPACK, 1);
	cr_expect_eq(r.f.abuse_id, 0);
	cr_expect_leq(during, before + l.max_header_list_bytes + 4096,
		      "held %zu bytes, %zu before the bomb", during, before);
	cr_expect(kg_h2_done(r.h));
	raw_fini(&r);
}

Test(h2_abuse, hpack_garbage_ends_the_connection)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	const uint8_t blk[] = {0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f}; /* index past any table */
	raw_frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, blk, sizeof(blk));
	raw_drain(&r);
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_COMPRESSION_ERROR);
	expect_only_abuse(&r, KG_H2_ABUSE_HPACK, 1);
	cr_expect_eq(r.f.n_requests, 0);
	raw_fini(&r);
}

Test(h2_abuse, continuation_flood_of_empty_frames)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	uint8_t blk[64];
	size_t k = hpack_get(blk);
	raw_frame(&r, NGHTTP2_HEADERS, 0, 1, blk, k);
	for (int i = 0; i < 100000 && r.feed_rv == 0; i++)
		raw_frame(&r, NGHTTP2_CONTINUATION, 0, 1, NULL, 0);
	raw_drain(&r);
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	cr_expect_eq(r.feed_rv, -EPROTO);
	expect_only_abuse(&r, KG_H2_ABUSE_CONTINUATION, 1);
	cr_expect_eq(r.f.n_requests, 0);
	raw_fini(&r);
}

Test(h2_abuse, continuation_flood_is_cut_before_memory_grows)
{
	/* One literal field of 60000 bytes, sent 1000 bytes a frame: nghttp2
	 * buffers a field until it is whole, so the block's bound is what
	 * keeps memory down. */
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	size_t base = kg_h2_memory(r.h);
	static uint8_t blk[64 + 60000];
	size_t k = hpack_get(blk);
	blk[k++] = 0x00; /* literal without indexing, new name */
	k += hpack_int(blk + k, 0, 7, 1);
	blk[k++] = 'x';
	k += hpack_int(blk + k, 0, 7, 60000);
	memset(blk + k, 'v', 60000);
	k += 60000;
	raw_frame(&r, NGHTTP2_HEADERS, 0, 1, blk, 1000);
	size_t peak = 0;
	for (size_t off = 1000; off < k && r.feed_rv == 0; off += 1000) {
		size_t n = k - off < 1000 ? k - off : 1000;
		raw_frame(&r, NGHTTP2_CONTINUATION, off + n == k ? NGHTTP2_FLAG_END_HEADERS : 0, 1,
			  blk + off, n);
		size_t m = kg_h2_memory(r.h);
		peak = m > peak ? m : peak;
	}
	raw_drain(&r);
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	expect_only_abuse(&r, KG_H2_ABUSE_CONTINUATION, 1);
	/* nghttp2 allocates a literal's declared length (at most 64 KiB,
	 * NGHTTP2_HD_MAX_NV) when it starts reading it: that, the block's
	 * bound and some state; the flood adds nothing past the cut. */
	cr_expect_leq(peak, base + 65536 + l.max_header_list_bytes + 4096, "peak %zu, idle %zu",
		      peak, base);
	fprintf(stderr, "h2 CONTINUATION flood: peak %zu bytes held, %zu idle\n", peak, base);
	raw_fini(&r);
}

Test(h2_abuse, rapid_reset)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	const uint8_t cancel[4] = {0, 0, 0, NGHTTP2_CANCEL};
	int32_t id = 1;
	for (int i = 0; i < 1000 && r.feed_rv == 0; i++, id += 2) {
		raw_headers(&r, id, 0, get_nv, 4);
		raw_frame(&r, NGHTTP2_RST_STREAM, 0, id, cancel, 4);
		raw_drain(&r);
	}
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	cr_expect_eq(r.feed_rv, -EPROTO);
	expect_only_abuse(&r, KG_H2_ABUSE_RAPID_RESET, 1);
	/* the burst is 2x the budget (a slow machine may refill a little) */
	cr_expect_geq(r.f.n_requests, 2 * (int)l.reset_budget);
	cr_expect_leq(r.f.n_requests, 3 * (int)l.reset_budget);
	for (int i = 0; i < MAX_IDS; i++)
		cr_expect_leq(r.f.closes[i], 1, "stream %d closed once", 2 * i + 1);
	raw_fini(&r);
}

Test(h2_abuse, refused_streams_spend_the_reset_budget)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	r.f.refuse = 1;
	for (int32_t id = 1; id < 400 && r.feed_rv == 0; id += 2) {
		raw_headers(&r, id, NGHTTP2_FLAG_END_STREAM, get_nv, 4);
		raw_drain(&r);
	}
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	expect_only_abuse(&r, KG_H2_ABUSE_RAPID_RESET, 1);
	raw_fini(&r);
}

static void flood(uint8_t type, size_t len, bool read_answers)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	const uint8_t payload[8] = {1, 2, 3, 4, 5, 6, 7, 8};
	for (int i = 0; i < 10000 && r.feed_rv == 0; i++) {
		raw_frame(&r, type, 0, 0, payload, len);
		if (read_answers)
			raw_drain(&r);
	}
	cr_expect_eq(r.feed_rv, -EPROTO);
	expect_only_abuse(&r, KG_H2_ABUSE_CONTROL_FLOOD, 1);
	if (read_answers) {
		cr_expect(r.goaway);
		cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
		int acks = type == NGHTTP2_PING ? r.n_ping_ack : r.n_settings_ack - 1;
		cr_expect_leq(acks, 3 * (int)l.control_budget, "%d ACKs", acks);
	} else {
		/* ACKs pile up unread: cut at control_budget of them */
		cr_expect(kg_h2_done(r.h));
	}
	raw_fini(&r);
}

Test(h2_abuse, settings_flood)
{
	flood(NGHTTP2_SETTINGS, 0, true);
}

Test(h2_abuse, ping_flood)
{
	flood(NGHTTP2_PING, 8, true);
}

Test(h2_abuse, ping_flood_never_read)
{
	flood(NGHTTP2_PING, 8, false);
}

Test(h2_abuse, empty_data_flood)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	raw_headers(&r, 1, 0, get_nv, 4);
	for (int i = 0; i < 10000 && r.feed_rv == 0; i++)
		raw_frame(&r, NGHTTP2_DATA, 0, 1, NULL, 0);
	raw_drain(&r);
	cr_expect(r.goaway);
	cr_expect_eq(r.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
	expect_only_abuse(&r, KG_H2_ABUSE_CONTROL_FLOOD, 1);
	raw_fini(&r);
}

Test(h2_abuse, zero_window_stall_holds_no_more_than_the_queues)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	/* SETTINGS_INITIAL_WINDOW_SIZE = 0, and never a WINDOW_UPDATE */
	const uint8_t zero_window[6] = {0, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0, 0, 0, 0};
	raw_start(&r, &l, false, zero_window, 6, true);
	size_t idle = kg_h2_memory(r.h);
	const size_t queue = 65536, low_water = 16384;
	static uint8_t chunk[65536];
	memset(chunk, 'z', sizeof(chunk));
	for (int32_t i = 0; i < (int32_t)l.max_concurrent_streams; i++) {
		int32_t id = 2 * i + 1;
		raw_headers(&r, id, NGHTTP2_FLAG_END_STREAM, get_nv, 4);
		cr_assert_eq(kg_h2_respond(r.h, id, 200, NULL, 0, false), 0);
		/* the forwarder fills the stream's queue, then waits for room */
		cr_assert_eq(kg_h2_send_data(r.h, id, chunk, queue, false, low_water), 0);
	}
	raw_drain(&r);
	const uint8_t *p;
	cr_expect_eq(kg_h2_output(r.h, &p), 0, "nothing to send into a shut window");
	for (int32_t i = 0; i < (int32_t)l.max_concurrent_streams; i++) {
		cr_expect_eq(kg_h2_send_pending(r.h, 2 * i + 1), queue);
		cr_expect_eq(r.f.room[i], 0, "no room: the forwarder queues no more");
	}
	size_t held = kg_h2_memory(r.h);
	size_t per_stream = (held - idle) / l.max_concurrent_streams;
	fprintf(stderr, "h2 zero-window stall: %zu bytes idle, %zu with %u streams of %zu queued "
			"(%zu per stream)\n",
		idle, held, l.max_concurrent_streams, queue, per_stream);
	cr_expect_leq(per_stream, queue + 8192, "per stream: the queue and a little state");
	cr_expect_not(r.goaway);
	cr_expect_eq(r.feed_rv, 0);
	raw_fini(&r);
}

Test(h2_abuse, memory_per_idle_connection)
{
	/* After the prefaces and one request answered, what a connection
	 * that then idles holds (nghttp2's state and ours). */
	struct t t;
	struct kg_h2_limits l = limits();
	l.max_concurrent_streams = KG_H2_DEFAULT_MAX_STREAMS;
	l.stream_window = KG_H2_DEFAULT_WINDOW;
	l.max_header_list_bytes = 65536;
	t_init(&t, &l);
	size_t fresh = kg_h2_memory(t.h);
	t.f.auto_answer = true;
	nghttp2_nv extra[] = {NV("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"),
			      NV("accept", "text/html,application/xhtml+xml"),
			      NV("accept-language", "en-US,en;q=0.9"),
			      NV("cookie", "session=0123456789abcdef0123456789abcdef")};
	int32_t id = cli_request(&t.c, "GET", "/", extra, 4, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(t.c.status[slot(id)], 200);
	size_t idle = kg_h2_memory(t.h);
	fprintf(stderr, "h2 memory per idle connection: %zu bytes fresh, %zu after one request\n",
		fresh, idle);
	/* nghttp2's 16 KiB output frame buffer is most of it */
	cr_expect_leq(idle, 32768u, "an idle connection stays small");
	t_fini(&t);
}

Test(h2_abuse, request_trailers_too_large_reset_the_stream)
{
	struct kg_h2_limits l = limits();
	l.max_header_list_bytes = 8192;
	struct raw r;
	raw_init(&r, &l, false);
	raw_headers(&r, 1, 0, get_nv, 4);
	raw_drain(&r);
	cr_assert_eq(r.f.n_requests, 1);
	static char store[12 * (1000 + 16)];
	nghttp2_nv nv[12];
	big_fields(nv, 9, store, 1000);
	raw_headers(&r, 1, NGHTTP2_FLAG_END_STREAM, nv, 9);
	raw_drain(&r);
	cr_expect_eq(r.rst[1], NGHTTP2_PROTOCOL_ERROR + 1);
	expect_only_abuse(&r, KG_H2_ABUSE_HEADER_LIST, 1);
	cr_expect_eq(r.f.closes[0], 1);
	cr_expect_eq(r.f.close_code[0], NGHTTP2_PROTOCOL_ERROR);
	cr_expect_eq(r.f.body_end[0], 0);
	cr_expect_not(r.goaway);
	raw_fini(&r);
}

Test(h2_abuse, continuation_flood_on_a_stream_refused_while_draining)
{
	/* The block bound holds for streams nobody keeps state for. */
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	raw_headers(&r, 1, NGHTTP2_FLAG_END_STREAM, get_nv, 4);
	kg_h2_shutdown(r.h);
	raw_drain(&r);
	cr_assert(r.goaway);
	cr_assert_eq(r.goaway_code, NGHTTP2_NO_ERROR);
	cr_assert_not(kg_h2_done(r.h), "stream 1 runs on");
	uint8_t blk[64];
	size_t k = hpack_get(blk);
	raw_frame(&r, NGHTTP2_HEADERS, 0, 3, blk, k);
	int frames = 0;
	for (; frames < 100000 && r.feed_rv == 0; frames++)
		raw_frame(&r, NGHTTP2_CONTINUATION, 0, 3, NULL, 0);
	/* nghttp2 ignores the block of a stream it will not open and shows
	 * us none of its frames: its own CONTINUATION limit (just above ours)
	 * ends the connection, without a GOAWAY. */
	cr_expect_leq(frames, 64, "cut after %d frames", frames);
	cr_expect_eq(r.feed_rv, -EPROTO);
	expect_only_abuse(&r, KG_H2_ABUSE_CONTINUATION, 1);
	cr_expect(kg_h2_done(r.h));
	const uint8_t *p;
	cr_expect_lt(kg_h2_output(r.h, &p), 0);
	cr_expect_eq(r.f.n_requests, 1);
	raw_fini(&r);
}

Test(h2_session, refused_request_with_a_body_is_no_malformation)
{
	struct kg_h2_limits l = limits();
	struct raw r;
	raw_init(&r, &l, false);
	r.f.refuse = 1;
	nghttp2_nv nv[] = {NV(":method", "POST"), NV(":scheme", "https"), NV(":authority", "a"),
			   NV(":path", "/"), NV("content-length", "5")};
	raw_headers(&r, 1, 0, nv, 5);
	raw_frame(&r, NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 1, "hello", 5);
	raw_drain(&r);
	cr_expect_eq(r.f.n_requests, 1);
	cr_expect_eq(r.rst[1], NGHTTP2_REFUSED_STREAM + 1);
	expect_only_abuse(&r, KG_H2_ABUSE_STREAMS, 0);
	cr_expect_eq(r.f.body[0], 0u);
	cr_expect_eq(r.f.body_end[0], 0);
	raw_fini(&r);
}

Test(h2_session, data_queued_from_on_send_room_goes_out)
{
	struct t t;
	struct kg_h2_limits l = limits();
	t_init(&t, &l);
	t.f.room_ends = true;
	int32_t a = cli_request(&t.c, "GET", "/a", NULL, 0, NULL);
	int32_t b = cli_request(&t.c, "GET", "/b", NULL, 0, NULL);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_assert_eq(kg_h2_respond(t.h, a, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_respond(t.h, b, 200, NULL, 0, false), 0);
	/* a: nothing queued, room wanted at once; b: some, then room */
	cr_assert_eq(kg_h2_send_data(t.h, a, NULL, 0, false, 100), 0);
	cr_assert_eq(kg_h2_send_data(t.h, b, "head-", 5, false, 100), 0);
	cr_assert_eq(pump(t.h, &t.c), 0);
	cr_expect_eq(t.f.room[slot(a)], 1);
	cr_expect_str_eq(t.c.body_text[slot(a)], "tail");
	cr_expect_str_eq(t.c.body_text[slot(b)], "head-tail");
	cr_expect_eq(t.f.closes[slot(a)], 1);
	cr_expect_eq(t.f.closes[slot(b)], 1);
	t_fini(&t);
}
