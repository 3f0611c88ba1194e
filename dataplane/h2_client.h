/* The HTTP/2 client side of one backend connection (RFC 9113), over
 * Debian's libnghttp2: requests go out as streams, responses come back
 * as a head, DATA and an end (with trailers, gRPC's grpc-status). The
 * twin of h2_session.h: bytes in, bytes out, callbacks per stream, no I/O,
 * so unit tests pair it with a kg_h2 server session in memory.
 *
 * Flow control is the caller's in both directions: response DATA reopens
 * the stream's (and the connection's) window only as the caller calls
 * kg_h2c_consume, once the bytes went on (forward_h2.c: once the client
 * took them), so a slow reader pins at most one stream window here;
 * request body bytes are queued per stream and the caller queues more only
 * after on_send_room.
 *
 * Ownership: the caller owns the struct kg_h2c; each stream's user pointer
 * is the caller's until on_stream_close. Every callback runs inside
 * kg_h2c_feed or kg_h2c_output (never inside kg_h2c_request, kg_h2c_reset
 * or kg_h2c_destroy). */
#ifndef KGATE_H2_CLIENT_H
#define KGATE_H2_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "h2_session.h"

struct kg_h2c;

struct kg_h2c_limits {
	uint32_t stream_window;         /* SETTINGS_INITIAL_WINDOW_SIZE for response bodies */
	uint32_t max_header_list_bytes; /* a response head or trailer block beyond it resets
					 * the stream (INTERNAL_ERROR to the caller) */
	uint32_t max_streams_default;   /* streams assumed allowed before the server's
					 * SETTINGS_MAX_CONCURRENT_STREAMS arrives */
};

/* A request. Fields are the regular ones (lower case, no connection-
 * specific ones but "te: trailers"); the pseudo-headers come from the
 * four strings. Copied by kg_h2c_request. */
struct kg_h2c_request {
	const char *method;
	const char *scheme;
	const char *authority; /* may be NULL */
	const char *path;
	const struct kg_h2_field *fields;
	size_t n_fields;
	bool end_stream; /* no body */
};

struct kg_h2c_handler {
	/* The final response head; fields valid during the call. end_stream:
	 * no body and no trailers follow. */
	void (*on_response)(void *ctx, int32_t id, void *user, int status,
			    const struct kg_h2_field *fields, size_t n, bool end_stream);
	/* An interim head (1xx: 100 Continue, 103 Early Hints), any number
	 * before the final one. Optional. */
	void (*on_interim)(void *ctx, int32_t id, void *user, int status,
			   const struct kg_h2_field *fields, size_t n);
	/* Response body bytes (valid during the call); the window reopens
	 * as the caller calls kg_h2c_consume. */
	void (*on_data)(void *ctx, int32_t id, void *user, const uint8_t *p, size_t n);
	/* The response ended after a body: n trailers (0: END_STREAM on DATA). */
	void (*on_end)(void *ctx, int32_t id, void *user, const struct kg_h2_field *trailers,
		       size_t n);
	/* The request body queue fell to the low-water mark: more may be queued. */
	void (*on_send_room)(void *ctx, int32_t id, void *user);
	/* The stream is over (error_code 0: both sides ended cleanly, else
	 * the RST_STREAM or GOAWAY code; a stream the server's GOAWAY left
	 * unprocessed closes with REFUSED_STREAM). The id is dead. */
	void (*on_stream_close)(void *ctx, int32_t id, void *user, uint32_t error_code);
	/* The server sent GOAWAY: no new stream; those up to last_id run on. */
	void (*on_goaway)(void *ctx, int32_t last_id, uint32_t error_code);
};

/* NULL on ENOMEM or bad limits. Queues the client preface and SETTINGS. */
struct kg_h2c *kg_h2c_create(const struct kg_h2c_limits *limits,
			     const struct kg_h2c_handler *handler, void *ctx);
/* Frees every stream's state without calling back. Tolerates NULL. */
void kg_h2c_destroy(struct kg_h2c *h);

/* Server bytes in. 0; -EPROTO after a connection error (nothing more
 * comes: close); -ENOMEM. */
int kg_h2c_feed(struct kg_h2c *h, const uint8_t *p, size_t n);
/* The next bytes for the server: *p valid until the next call into h;
 * 0 when nothing is queued, < 0 on a fatal error. */
ssize_t kg_h2c_output(struct kg_h2c *h, const uint8_t **p);

/* Whether another stream may be opened now: no GOAWAY either way, no
 * fatal error, fewer open than the server allows. */
bool kg_h2c_can_open(const struct kg_h2c *h);
/* Opens a stream: its id (> 0), or -ENOMEM, -EINVAL (bad field),
 * -EAGAIN (kg_h2c_can_open is false). */
int32_t kg_h2c_request(struct kg_h2c *h, const struct kg_h2c_request *req, void *user);
void kg_h2c_set_stream_user(struct kg_h2c *h, int32_t id, void *user);
/* Queues request body bytes (copied); end: the last of them. The caller
 * queues more after on_send_room, once the queue is at or below
 * low_water. 0, -ENOMEM, -ENOENT (stream gone), -EINVAL (ended). */
int kg_h2c_send_data(struct kg_h2c *h, int32_t id, const void *p, size_t n, bool end,
		     size_t low_water);
/* Request body bytes queued on the stream, not yet framed. */
size_t kg_h2c_send_pending(const struct kg_h2c *h, int32_t id);
/* n bytes of the stream's response body went on: reopen its window. */
int kg_h2c_consume(struct kg_h2c *h, int32_t id, size_t n);
/* RST_STREAM with code; on_stream_close follows from kg_h2c_output. */
int kg_h2c_reset(struct kg_h2c *h, int32_t id, uint32_t code);

size_t kg_h2c_open_streams(const struct kg_h2c *h);
/* The server sent GOAWAY, or the session failed. */
bool kg_h2c_going_away(const struct kg_h2c *h);
/* Neither side wants the connection any more: close once output is sent. */
bool kg_h2c_done(const struct kg_h2c *h);

#endif
