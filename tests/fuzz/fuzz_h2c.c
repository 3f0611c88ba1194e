/* The HTTP/2 client session of backend connections (h2_client.c), "frames
 * in, responses out": a fresh session per input opens three streams (a GET,
 * a POST with its body still open, a POST that ends at once), then is fed
 * the backend's bytes in pieces, draining its output after each piece the
 * way forward_h2.c does; response bytes are consumed at once or, for some
 * inputs, only when the response ends.
 *
 * Input: one control byte, then the backend's bytes (its SETTINGS first).
 * Control: low 4 bits pick the piece size (1, 2, 3, 7, 9, 16, 64, 100,
 * 512, 1000, 4096, 16384, then whole input), bit 4 queues more body on
 * on_send_room, bit 5 resets the GET halfway, bit 6 opens one more stream
 * halfway, bit 7 delays kg_h2c_consume to the response's end.
 *
 * Besides "no crash" it checks what the forwarder relies on: on_response
 * at most once per stream and before on_data and on_end; on_end at most
 * once; on_stream_close once per stream opened and nothing for it after;
 * kg_h2c_open_streams equals the streams opened and not closed; response
 * fields lower case with no CR, LF or NUL in values (nghttp2's checks);
 * nothing calls back after kg_h2c_destroy. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "h2_client.h"

#define SLOTS 8

struct strm {
	int32_t id;
	bool responded, ended, closed;
	size_t unconsumed;
};

struct harness {
	struct kg_h2c *h;
	uint8_t ctl;
	bool destroyed;
	size_t opened, closed_n;
	struct strm s[SLOTS];
};

static struct strm *find(struct harness *x, int32_t id)
{
	for (size_t i = 0; i < SLOTS; i++)
		if (x->s[i].id == id)
			return &x->s[i];
	abort(); /* a callback for a stream never opened */
}

static void check_fields(const struct kg_h2_field *f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < f[i].name_len; k++)
			if (f[i].name[k] >= 'A' && f[i].name[k] <= 'Z')
				abort();
		for (size_t k = 0; k < f[i].value_len; k++)
			if (f[i].value[k] == '\r' || f[i].value[k] == '\n' || f[i].value[k] == '\0')
				abort();
	}
}

static void on_response(void *ctx, int32_t id, void *user, int status,
			const struct kg_h2_field *f, size_t n, bool end)
{
	struct harness *x = ctx;
	struct strm *s = find(x, id);
	(void)user;
	if (x->destroyed || s->responded || s->closed || status < 200 || status > 999)
		abort();
	check_fields(f, n);
	s->responded = true;
	s->ended = end;
}

static void on_data(void *ctx, int32_t id, void *user, const uint8_t *p, size_t n)
{
	struct harness *x = ctx;
	struct strm *s = find(x, id);
	(void)user;
	(void)p;
	if (x->destroyed || !s->responded || s->ended || s->closed)
		abort();
	if (x->ctl & 0x80) {
		s->unconsumed += n;
		return;
	}
	if (kg_h2c_consume(x->h, id, n) != 0)
		abort();
}

static void on_end(void *ctx, int32_t id, void *user, const struct kg_h2_field *f, size_t n)
{
	struct harness *x = ctx;
	struct strm *s = find(x, id);
	(void)user;
	if (x->destroyed || !s->responded || s->ended || s->closed)
		abort();
	check_fields(f, n);
	s->ended = true;
	if (s->unconsumed && kg_h2c_consume(x->h, id, s->unconsumed) != 0)
		abort();
	s->unconsumed = 0;
}

static void on_send_room(void *ctx, int32_t id, void *user)
{
	struct harness *x = ctx;
	struct strm *s = find(x, id);
	(void)user;
	if (x->destroyed || s->closed)
		abort();
	if (x->ctl & 0x10)
		(void)kg_h2c_send_data(x->h, id, "more body", 9, false, 4096);
}

static void on_stream_close(void *ctx, int32_t id, void *user, uint32_t code)
{
	struct harness *x = ctx;
	struct strm *s = find(x, id);
	(void)user;
	(void)code;
	if (x->destroyed || s->closed)
		abort();
	s->closed = true;
	x->closed_n++;
}

static void on_goaway(void *ctx, int32_t last_id, uint32_t code)
{
	struct harness *x = ctx;
	(void)last_id;
	(void)code;
	if (x->destroyed)
		abort();
}

static const struct kg_h2c_handler handler = {
	.on_response = on_response,
	.on_data = on_data,
	.on_end = on_end,
	.on_send_room = on_send_room,
	.on_stream_close = on_stream_close,
	.on_goaway = on_goaway,
};

static void open_stream(struct harness *x, const char *method, const char *path, bool end)
{
	static const struct kg_h2_field f[] = {{"te", 2, "trailers", 8},
					       {"content-type", 12, "application/grpc", 16}};
	const struct kg_h2c_request req = {.method = method, .scheme = "http",
					   .authority = "backend", .path = path,
					   .fields = f, .n_fields = 2, .end_stream = end};
	int32_t id = kg_h2c_request(x->h, &req, NULL);
	if (id < 0)
		return; /* refused (-EAGAIN after GOAWAY or at the limit) */
	for (size_t i = 0; i < SLOTS; i++)
		if (!x->s[i].id) {
			x->s[i].id = id;
			x->opened++;
			return;
		}
	abort();
}

/* Drains the output as the forwarder does; false once the session failed. */
static bool drain(struct harness *x)
{
	for (;;) {
		const uint8_t *p;
		ssize_t n = kg_h2c_output(x->h, &p);
		if (n < 0)
			return false;
		if (n == 0)
			return true;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const size_t pieces[] = {1, 2, 3, 7, 9, 16, 64, 100, 512, 1000, 4096, 16384};
	if (size < 1)
		return 0;
	struct harness x = {.ctl = data[0]};
	data++;
	size--;
	size_t piece = (x.ctl & 15) < 12 ? pieces[x.ctl & 15] : (size ? size : 1);
	const struct kg_h2c_limits lim = {.stream_window = 16384, .max_header_list_bytes = 4096,
					  .max_streams_default = 4};
	x.h = kg_h2c_create(&lim, &handler, &x);
	if (!x.h)
		return 0;
	open_stream(&x, "GET", "/get", true);
	open_stream(&x, "POST", "/open", false);
	open_stream(&x, "POST", "/ended", false);
	if (x.s[1].id)
		(void)kg_h2c_send_data(x.h, x.s[1].id, "body", 4, false, 4096);
	if (x.s[2].id)
		(void)kg_h2c_send_data(x.h, x.s[2].id, "all", 3, true, 0);
	bool ok = drain(&x);
	size_t half = size / 2;
	for (size_t off = 0; ok && off < size;) {
		size_t n = size - off < piece ? size - off : piece;
		if (kg_h2c_feed(x.h, data + off, n) < 0)
			ok = false;
		off += n;
		if (ok && off >= half && half) {
			half = 0;
			if ((x.ctl & 0x20) && x.s[0].id && !x.s[0].closed)
				(void)kg_h2c_reset(x.h, x.s[0].id, 8);
			if (x.ctl & 0x40)
				open_stream(&x, "GET", "/late", true);
		}
		ok = ok && drain(&x);
		if (kg_h2c_open_streams(x.h) != x.opened - x.closed_n)
			abort();
	}
	(void)kg_h2c_can_open(x.h);
	(void)kg_h2c_done(x.h);
	x.destroyed = true;
	kg_h2c_destroy(x.h);
	return 0;
}
