/* The HTTP/2 server side of one client connection (RFC 9113), over
 * Debian's libnghttp2 (framing, HPACK, flow control): bytes in, bytes out,
 * requests handed to the forwarder (forward_h2.c) one stream at a time.
 * No I/O and no io_uring here, so unit tests and a libFuzzer harness drive
 * it with frames alone.
 *
 * What this module owns beyond nghttp2:
 * - request validation the forwarder may rely on: pseudo-headers present
 *   and well-formed (RFC 9113 8.3.1), no connection-specific fields
 *   (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade;
 *   TE other than "trailers"), no CR, LF or NUL in names or values, names
 *   lower case, Content-Length a single decimal number that the DATA the
 *   stream carries matches; a stream that fails is reset (PROTOCOL_ERROR),
 *   it never reaches the forwarder (a body that disagrees with its
 *   Content-Length shows only after the head was handed on: then no byte
 *   past it is passed, on_body_end never comes and the stream closes with
 *   PROTOCOL_ERROR);
 * - the abuse limits (enum kg_h2_abuse): each hit is reported through
 *   on_abuse and answered as RFC 9113 says (stream reset, or GOAWAY and
 *   the connection's end when the peer misbehaves across streams);
 * - bounded memory: request fields live in the stream's own arena,
 *   capped by max_header_list_bytes; response bytes queued per stream are
 *   the forwarder's (it waits for on_send_room before queueing more), and
 *   what nghttp2 holds for the connection's output is drained by the
 *   forwarder only while the client takes it (kg_h2_output).
 *
 * Ownership: the forwarder owns the struct kg_h2 (create/destroy); each
 * stream's user pointer is the forwarder's until on_stream_close, after
 * which the id is dead. Every callback runs inside kg_h2_feed or
 * kg_h2_output, on the connection's worker thread. */
#ifndef KGATE_H2_SESSION_H
#define KGATE_H2_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "h2_block.h" /* struct kg_h2_field */

struct kg_h2;

/* Defaults the listener settings start from (config.c). */
#define KG_H2_DEFAULT_MAX_STREAMS 100u      /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define KG_H2_DEFAULT_WINDOW (64u * 1024u)  /* per stream, what a client may send unread */

struct kg_h2_limits {
	uint32_t max_concurrent_streams; /* advertised; a stream beyond it is refused
					  * (REFUSED_STREAM) until the client acknowledged
					  * the setting, then ends the connection (nghttp2:
					  * GOAWAY PROTOCOL_ERROR, RFC 9113 5.4.1) */
	uint32_t max_header_list_bytes;  /* decoded names + values + 32 per field (RFC 9113 6.5.2);
					  * also bounds the compressed block (CONTINUATION) */
	uint32_t stream_window;          /* SETTINGS_INITIAL_WINDOW_SIZE for request bodies */
	uint32_t reset_budget;           /* streams the client may reset (or have refused) per
					  * second, with a burst of 2x: beyond, GOAWAY (rapid reset) */
	uint32_t control_budget;         /* SETTINGS, PING, PRIORITY and empty frames per second
					  * (burst 2x), and queued ACKs at most: beyond, GOAWAY */
};

/* Why a stream or the connection was cut; the forwarder counts and logs. */
enum kg_h2_abuse {
	KG_H2_ABUSE_STREAMS,       /* more concurrent streams than advertised */
	KG_H2_ABUSE_HEADER_LIST,   /* header list (or its compressed block) too large */
	KG_H2_ABUSE_RAPID_RESET,   /* reset budget spent (CVE-2023-44487) */
	KG_H2_ABUSE_CONTINUATION,  /* CONTINUATION frames past the block's bound (CVE-2024-27316) */
	KG_H2_ABUSE_HPACK,         /* HPACK decoding failed or inflated past the bound */
	KG_H2_ABUSE_CONTROL_FLOOD, /* SETTINGS/PING/PRIORITY/empty-frame flood */
	KG_H2_ABUSE_MALFORMED,     /* a request that fails validation (stream reset) */
	KG_H2_ABUSE_PROTOCOL,      /* any other connection error nghttp2 found */
	KG_H2_ABUSE_KINDS,
};
/* "rapid_reset": the label of a kind in metrics and log lines. */
extern const char *const kg_h2_abuse_names[KG_H2_ABUSE_KINDS];

/* A validated request head. Pointers stay valid until on_stream_close. */
struct kg_h2_request {
	const char *method;
	const char *scheme;    /* NULL for CONNECT */
	const char *authority; /* :authority, or NULL (then Host, if any, is among fields) */
	const char *path;      /* NULL for CONNECT */
	const char *protocol;  /* :protocol of an extended CONNECT (RFC 8441), or NULL */
	const struct kg_h2_field *fields; /* regular fields, in arrival order (cookie crumbs
					   * joined with "; ", RFC 9113 8.2.3) */
	size_t n_fields;
	int64_t content_length; /* -1 when absent */
	bool end_stream;        /* HEADERS carried END_STREAM: no body */
};

struct kg_h2_handler {
	/* A request head arrived on a new stream. 0 to take it (the forwarder
	 * answers later, and may kg_h2_set_stream_user now); -errno to have
	 * it reset with REFUSED_STREAM. */
	int (*on_request)(void *ctx, int32_t id, const struct kg_h2_request *req);
	/* Request body bytes (valid during the call). The stream's window
	 * reopens only as the forwarder calls kg_h2_consume. */
	void (*on_body)(void *ctx, int32_t id, void *stream_user, const uint8_t *p, size_t n);
	/* The client ended its side (END_STREAM; request trailers are dropped).
	 * Not called when the head itself ended the stream (req->end_stream). */
	void (*on_body_end)(void *ctx, int32_t id, void *stream_user);
	/* The stream's response queue fell below what kg_h2_send_data said
	 * to wait for: more may be queued. */
	void (*on_send_room)(void *ctx, int32_t id, void *stream_user);
	/* The stream is over: answered in full, or reset by either side
	 * (error_code is the RST_STREAM/GOAWAY code, 0 for a clean end).
	 * The forwarder releases what it holds for it; the id is dead. */
	void (*on_stream_close)(void *ctx, int32_t id, void *stream_user, uint32_t error_code);
	/* An abuse limit was hit (stream_id 0: the connection's). */
	void (*on_abuse)(void *ctx, int32_t stream_id, enum kg_h2_abuse kind);
};

/* NULL on ENOMEM or bad limits. Queues the server preface (SETTINGS);
 * allow_connect_protocol sets SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441). */
struct kg_h2 *kg_h2_create(const struct kg_h2_limits *limits, bool allow_connect_protocol,
			   const struct kg_h2_handler *handler, void *ctx);
/* Frees every stream's state without calling back. Tolerates NULL. */
void kg_h2_destroy(struct kg_h2 *h);

/* Client plaintext in. 0; -EPROTO after a connection error (GOAWAY is
 * queued: send kg_h2_output's bytes, then close); -ENOMEM. */
int kg_h2_feed(struct kg_h2 *h, const uint8_t *p, size_t n);
/* The next bytes for the client: *p valid until the next call into h;
 * 0 when nothing is queued (or the client's windows are shut), < 0 on
 * a fatal error. The caller queues them and calls again. */
ssize_t kg_h2_output(struct kg_h2 *h, const uint8_t **p);

void kg_h2_set_stream_user(struct kg_h2 *h, int32_t id, void *user);
/* n bytes of the stream's request body were passed on: reopen its window. */
int kg_h2_consume(struct kg_h2 *h, int32_t id, size_t n);

/* A response head: final (status 200-999), or interim (1xx but 101,
 * which HTTP/2 does not have: 100 Continue, 103 Early Hints), any number
 * of which may come before the final one and never end the stream. Names
 * must be lower case; connection-specific fields are dropped here.
 * end_stream: no body follows (final heads only). */
int kg_h2_respond(struct kg_h2 *h, int32_t id, int status, const struct kg_h2_field *fields,
		  size_t n, bool end_stream);
/* Queues body bytes (copied); end: the last of them. The forwarder queues
 * more only after on_send_room, once the stream's queue is below
 * low_water bytes. 0, -ENOMEM, -ENOENT when the stream is gone. */
int kg_h2_send_data(struct kg_h2 *h, int32_t id, const void *p, size_t n, bool end,
		    size_t low_water);
/* Bytes queued on the stream not yet framed for the client. */
size_t kg_h2_send_pending(const struct kg_h2 *h, int32_t id);
/* Ends the stream with trailers (after the queued data). */
int kg_h2_trailers(struct kg_h2 *h, int32_t id, const struct kg_h2_field *fields, size_t n);
/* RST_STREAM with code (e.g. INTERNAL_ERROR when the backend failed mid-body). */
int kg_h2_reset(struct kg_h2 *h, int32_t id, uint32_t code);

/* Graceful drain: GOAWAY naming the last stream taken; no new stream is
 * accepted, open ones run on. */
void kg_h2_shutdown(struct kg_h2 *h);
/* Streams still open. */
size_t kg_h2_open_streams(const struct kg_h2 *h);
/* Neither side wants the connection any more (GOAWAY sent or received and
 * no stream open, or a connection error): close once output is drained. */
bool kg_h2_done(const struct kg_h2 *h);
/* Bytes held for the connection: nghttp2's state (HPACK tables, queued
 * frames, streams) and this module's (request arenas, response queues),
 * counted through nghttp2_mem. For metrics and the idle-memory bench. */
size_t kg_h2_memory(const struct kg_h2 *h);

#endif
