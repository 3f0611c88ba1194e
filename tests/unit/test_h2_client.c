/* h2_client.c paired with h2_session.c in memory: the client's output is
 * the server's input and back, so each case reads what one side handed
 * its caller after the bytes settled: heads, bodies, trailers, resets,
 * GOAWAY, the server's stream limit and flow control both ways. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "h2_client.h"
#include "h2_session.h"

#define MAX_IDS 32

struct pair {
	struct kg_h2 *srv;
	struct kg_h2c *cli;
	/* Server side (the kg_h2 forwarder's view). */
	int requests;
	char req_fields[1024];
	char req_path[64];
	size_t req_body[MAX_IDS];
	int req_end[MAX_IDS];
	uint32_t srv_close[MAX_IDS];
	int srv_closed[MAX_IDS];
	bool srv_consume;
	/* Client side. */
	int status[MAX_IDS];
	char resp_fields[MAX_IDS][256];
	size_t resp_body[MAX_IDS];
	bool cli_consume;
	int ended[MAX_IDS];
	char trailers[MAX_IDS][256];
	int cli_closed[MAX_IDS];
	uint32_t cli_close[MAX_IDS];
	int room[MAX_IDS];
	int goaways;
	int32_t goaway_last;
};

static int slot(int32_t id)
{
	cr_assert(id > 0 && id < 2 * MAX_IDS, "stream id %d out of range", id);
	return id / 2;
}

static void join(char *out, size_t cap, const struct kg_h2_field *f, size_t n)
{
	out[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(out);
		snprintf(out + l, cap - l, "%s=%s;", f[i].name, f[i].value);
	}
}

static int s_request(void *ctx, int32_t id, const struct kg_h2_request *req)
{
	struct pair *p = ctx;
	p->requests++;
	snprintf(p->req_path, sizeof(p->req_path), "%s", req->path);
	join(p->req_fields, sizeof(p->req_fields), req->fields, req->n_fields);
	kg_h2_set_stream_user(p->srv, id, p);
	if (req->end_stream)
		p->req_end[slot(id)]++;
	return 0;
}

static void s_body(void *ctx, int32_t id, void *user, const uint8_t *b, size_t n)
{
	struct pair *p = ctx;
	(void)user;
	(void)b;
	p->req_body[slot(id)] += n;
	if (p->srv_consume)
		cr_assert_eq(kg_h2_consume(p->srv, id, n), 0);
}

static void s_body_end(void *ctx, int32_t id, void *user)
{
	struct pair *p = ctx;
	(void)user;
	p->req_end[slot(id)]++;
}

static void s_close(void *ctx, int32_t id, void *user, uint32_t code)
{
	struct pair *p = ctx;
	(void)user;
	p->srv_closed[slot(id)]++;
	p->srv_close[slot(id)] = code;
}

static const struct kg_h2_handler s_handler = {
	.on_request = s_request,
	.on_body = s_body,
	.on_body_end = s_body_end,
	.on_stream_close = s_close,
};

static void c_response(void *ctx, int32_t id, void *user, int status,
		       const struct kg_h2_field *f, size_t n, bool end)
{
	struct pair *p = ctx;
	cr_assert_eq(user, p);
	p->status[slot(id)] = status;
	join(p->resp_fields[slot(id)], sizeof(p->resp_fields[0]), f, n);
	if (end)
		p->ended[slot(id)]++;
}

static void c_data(void *ctx, int32_t id, void *user, const uint8_t *b, size_t n)
{
	struct pair *p = ctx;
	(void)user;
	(void)b;
	p->resp_body[slot(id)] += n;
	if (p->cli_consume)
		cr_assert_eq(kg_h2c_consume(p->cli, id, n), 0);
}

static void c_end(void *ctx, int32_t id, void *user, const struct kg_h2_field *f, size_t n)
{
	struct pair *p = ctx;
	(void)user;
	p->ended[slot(id)]++;
	join(p->trailers[slot(id)], sizeof(p->trailers[0]), f, n);
}

static void c_room(void *ctx, int32_t id, void *user)
{
	struct pair *p = ctx;
	(void)user;
	p->room[slot(id)]++;
}

static void c_close(void *ctx, int32_t id, void *user, uint32_t code)
{
	struct pair *p = ctx;
	(void)user;
	p->cli_closed[slot(id)]++;
	p->cli_close[slot(id)] = code;
}

static void c_goaway(void *ctx, int32_t last, uint32_t code)
{
	struct pair *p = ctx;
	(void)code;
	p->goaways++;
	p->goaway_last = last;
}

static const struct kg_h2c_handler c_handler = {
	.on_response = c_response,
	.on_data = c_data,
	.on_end = c_end,
	.on_send_room = c_room,
	.on_stream_close = c_close,
	.on_goaway = c_goaway,
};

static void setup_pair(struct pair *p, uint32_t max_streams)
{
	memset(p, 0, sizeof(*p));
	const struct kg_h2_limits sl = {.max_concurrent_streams = max_streams,
					.max_header_list_bytes = 16384,
					.stream_window = 65535,
					.reset_budget = 100,
					.control_budget = 100};
	const struct kg_h2c_limits cl = {.stream_window = 65535,
					 .max_header_list_bytes = 16384,
					 .max_streams_default = 100};
	p->srv = kg_h2_create(&sl, false, &s_handler, p);
	p->cli = kg_h2c_create(&cl, &c_handler, p);
	cr_assert(p->srv && p->cli);
	p->srv_consume = p->cli_consume = true;
}

static void teardown_pair(struct pair *p)
{
	kg_h2c_destroy(p->cli);
	kg_h2_destroy(p->srv);
}

/* Moves bytes both ways until neither side has any. */
static void settle(struct pair *p)
{
	for (int round = 0; round < 10000; round++) {
		bool moved = false;
		const uint8_t *b;
		ssize_t n;
		while ((n = kg_h2c_output(p->cli, &b)) > 0) {
			cr_assert_eq(kg_h2_feed(p->srv, b, (size_t)n), 0);
			moved = true;
		}
		cr_assert_geq(n, 0);
		while ((n = kg_h2_output(p->srv, &b)) > 0) {
			cr_assert_eq(kg_h2c_feed(p->cli, b, (size_t)n), 0);
			moved = true;
		}
		cr_assert_geq(n, 0);
		if (!moved)
			return;
	}
	cr_assert_fail("the pair never settled");
}

static int32_t get(struct pair *p, const char *path, const struct kg_h2_field *f, size_t n,
		   bool end)
{
	const struct kg_h2c_request req = {.method = "POST", .scheme = "http",
					   .authority = "backend", .path = path,
					   .fields = f, .n_fields = n, .end_stream = end};
	return kg_h2c_request(p->cli, &req, p);
}

Test(h2_client, unary_with_trailers)
{
	struct pair p;
	setup_pair(&p, 100);
	const struct kg_h2_field f[] = {{"te", 2, "trailers", 8},
					{"content-type", 12, "application/grpc", 16}};
	int32_t id = get(&p, "/svc/Method", f, 2, false);
	cr_assert_gt(id, 0);
	cr_assert_eq(kg_h2c_send_data(p.cli, id, "hello", 5, true, 0), 0);
	settle(&p);
	cr_assert_eq(p.requests, 1);
	cr_assert_str_eq(p.req_path, "/svc/Method");
	cr_assert(strstr(p.req_fields, "te=trailers;"), "%s", p.req_fields);
	cr_assert_eq(p.req_body[slot(id)], 5);
	cr_assert_eq(p.req_end[slot(id)], 1);

	const struct kg_h2_field rh[] = {{"content-type", 12, "application/grpc", 16}};
	cr_assert_eq(kg_h2_respond(p.srv, id, 200, rh, 1, false), 0);
	cr_assert_eq(kg_h2_send_data(p.srv, id, "world!", 6, false, 0), 0);
	const struct kg_h2_field tr[] = {{"grpc-status", 11, "3", 1},
					 {"grpc-message", 12, "bad arg", 7}};
	cr_assert_eq(kg_h2_trailers(p.srv, id, tr, 2), 0);
	settle(&p);
	cr_assert_eq(p.status[slot(id)], 200);
	cr_assert_str_eq(p.resp_fields[slot(id)], "content-type=application/grpc;");
	cr_assert_eq(p.resp_body[slot(id)], 6);
	cr_assert_eq(p.ended[slot(id)], 1);
	cr_assert_str_eq(p.trailers[slot(id)], "grpc-status=3;grpc-message=bad arg;");
	cr_assert_eq(p.cli_closed[slot(id)], 1);
	cr_assert_eq(p.cli_close[slot(id)], 0);
	cr_assert_eq(kg_h2c_open_streams(p.cli), 0);
	teardown_pair(&p);
}

Test(h2_client, head_only_response_ends_stream)
{
	struct pair p;
	setup_pair(&p, 100);
	int32_t id = get(&p, "/", NULL, 0, true);
	settle(&p);
	cr_assert_eq(p.req_end[slot(id)], 1);
	cr_assert_eq(kg_h2_respond(p.srv, id, 204, NULL, 0, true), 0);
	settle(&p);
	cr_assert_eq(p.status[slot(id)], 204);
	cr_assert_eq(p.ended[slot(id)], 1);
	cr_assert_eq(p.cli_closed[slot(id)], 1);
	teardown_pair(&p);
}

/* A response body the client does not consume stops at the stream
 * window; consuming lets the rest through. */
Test(h2_client, response_flow_control)
{
	struct pair p;
	setup_pair(&p, 100);
	p.cli_consume = false;
	int32_t id = get(&p, "/big", NULL, 0, true);
	settle(&p);
	static uint8_t big[256 * 1024];
	cr_assert_eq(kg_h2_respond(p.srv, id, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_send_data(p.srv, id, big, sizeof(big), true, 0), 0);
	settle(&p);
	cr_assert_eq(p.resp_body[slot(id)], 65535, "stopped at the window: %zu",
		     p.resp_body[slot(id)]);
	cr_assert_gt(kg_h2_send_pending(p.srv, id), 0);
	for (int i = 0; i < 100 && p.ended[slot(id)] == 0; i++) {
		size_t have = p.resp_body[slot(id)];
		static size_t consumed;
		if (i == 0)
			consumed = 0;
		cr_assert_eq(kg_h2c_consume(p.cli, id, have - consumed), 0);
		consumed = have;
		settle(&p);
	}
	cr_assert_eq(p.resp_body[slot(id)], sizeof(big));
	cr_assert_eq(p.ended[slot(id)], 1);
	teardown_pair(&p);
}

/* A request body larger than the server's window goes out as the server
 * consumes, with on_send_room asking for more. */
Test(h2_client, request_body_flow_control)
{
	struct pair p;
	setup_pair(&p, 100);
	p.srv_consume = false;
	int32_t id = get(&p, "/up", NULL, 0, false);
	static uint8_t big[200 * 1024];
	cr_assert_eq(kg_h2c_send_data(p.cli, id, big, sizeof(big), true, 16384), 0);
	settle(&p);
	cr_assert_eq(p.req_body[slot(id)], 65535);
	cr_assert_gt(kg_h2c_send_pending(p.cli, id), 0);
	size_t consumed = 0;
	for (int i = 0; i < 100 && p.req_end[slot(id)] == 0; i++) {
		cr_assert_eq(kg_h2_consume(p.srv, id, p.req_body[slot(id)] - consumed), 0);
		consumed = p.req_body[slot(id)];
		settle(&p);
	}
	cr_assert_eq(p.req_body[slot(id)], sizeof(big));
	cr_assert_eq(p.req_end[slot(id)], 1);

	/* Room is asked for when the queue drains past the low-water mark. */
	int32_t id2 = get(&p, "/up2", NULL, 0, false);
	cr_assert_eq(kg_h2c_send_data(p.cli, id2, "abc", 3, false, 16384), 0);
	settle(&p);
	cr_assert_eq(p.room[slot(id2)], 1);
	cr_assert_eq(kg_h2c_send_data(p.cli, id2, NULL, 0, true, 16384), 0);
	settle(&p);
	cr_assert_eq(p.req_end[slot(id2)], 1);
	teardown_pair(&p);
}

Test(h2_client, resets_both_ways)
{
	struct pair p;
	setup_pair(&p, 100);
	int32_t a = get(&p, "/a", NULL, 0, false);
	int32_t b = get(&p, "/b", NULL, 0, true);
	settle(&p);
	cr_assert_eq(p.requests, 2);
	/* client -> server */
	cr_assert_eq(kg_h2c_reset(p.cli, a, 8 /* CANCEL */), 0);
	settle(&p);
	cr_assert_eq(p.srv_closed[slot(a)], 1);
	cr_assert_eq(p.srv_close[slot(a)], 8);
	cr_assert_eq(p.cli_closed[slot(a)], 1);
	/* server -> client */
	cr_assert_eq(kg_h2_respond(p.srv, b, 200, NULL, 0, false), 0);
	settle(&p);
	cr_assert_eq(kg_h2_reset(p.srv, b, 2 /* INTERNAL_ERROR */), 0);
	settle(&p);
	cr_assert_eq(p.cli_closed[slot(b)], 1);
	cr_assert_eq(p.cli_close[slot(b)], 2);
	cr_assert_eq(p.ended[slot(b)], 0);
	cr_assert_eq(kg_h2c_send_data(p.cli, a, "x", 1, true, 0), -ENOENT);
	teardown_pair(&p);
}

/* The server's SETTINGS_MAX_CONCURRENT_STREAMS bounds what may be open. */
Test(h2_client, server_stream_limit)
{
	struct pair p;
	setup_pair(&p, 2);
	settle(&p); /* SETTINGS exchanged */
	cr_assert(kg_h2c_can_open(p.cli));
	int32_t a = get(&p, "/1", NULL, 0, true);
	int32_t b = get(&p, "/2", NULL, 0, true);
	cr_assert(a > 0 && b > 0);
	cr_assert_not(kg_h2c_can_open(p.cli));
	cr_assert_eq(get(&p, "/3", NULL, 0, true), -EAGAIN);
	settle(&p);
	cr_assert_eq(kg_h2_respond(p.srv, a, 200, NULL, 0, true), 0);
	settle(&p);
	cr_assert(kg_h2c_can_open(p.cli));
	teardown_pair(&p);
}

/* GOAWAY: no new stream, the one in flight finishes. */
Test(h2_client, goaway_lets_inflight_finish)
{
	struct pair p;
	setup_pair(&p, 100);
	int32_t a = get(&p, "/slow", NULL, 0, true);
	settle(&p);
	kg_h2_shutdown(p.srv);
	settle(&p);
	cr_assert_eq(p.goaways, 1);
	cr_assert_eq(p.goaway_last, a);
	cr_assert(kg_h2c_going_away(p.cli));
	cr_assert_not(kg_h2c_can_open(p.cli));
	cr_assert_eq(get(&p, "/new", NULL, 0, true), -EAGAIN);
	cr_assert_not(kg_h2c_done(p.cli));
	cr_assert_eq(kg_h2_respond(p.srv, a, 200, NULL, 0, false), 0);
	cr_assert_eq(kg_h2_send_data(p.srv, a, "late", 4, true, 0), 0);
	settle(&p);
	cr_assert_eq(p.resp_body[slot(a)], 4);
	cr_assert_eq(p.ended[slot(a)], 1);
	cr_assert_eq(p.cli_close[slot(a)], 0);
	cr_assert(kg_h2c_done(p.cli));
	teardown_pair(&p);
}

Test(h2_client, bad_fields_refused)
{
	struct pair p;
	setup_pair(&p, 100);
	const struct kg_h2_field upper[] = {{"X-Up", 4, "v", 1}};
	const struct kg_h2_field crlf[] = {{"x", 1, "a\r\nb: c", 7}};
	const struct kg_h2_field pseudo[] = {{":path", 5, "/x", 2}};
	cr_assert_eq(get(&p, "/", upper, 1, true), -EINVAL);
	cr_assert_eq(get(&p, "/", crlf, 1, true), -EINVAL);
	cr_assert_eq(get(&p, "/", pseudo, 1, true), -EINVAL);
	cr_assert_eq(kg_h2c_open_streams(p.cli), 0);
	const struct kg_h2c_limits bad = {.stream_window = 0, .max_header_list_bytes = 16384,
					  .max_streams_default = 1};
	cr_assert_null(kg_h2c_create(&bad, &c_handler, NULL));
	teardown_pair(&p);
}
