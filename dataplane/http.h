/* HTTP/1.x message framing for the https listener: llhttp (Debian's
 * node-llhttp sources, built in strict mode) finds where a head ends and
 * where a message ends; this module collects the head's pieces as offsets
 * into the caller's buffer, applies kgate's extra strictness rules, and
 * rebuilds heads with hop-by-hop and identity headers removed or added.
 *
 * Bodies are never copied here: the caller forwards body bytes as they sit
 * in its buffer (chunk framing included), and the parser only says how
 * many of them belong to the current message. */
#ifndef KGATE_HTTP_H
#define KGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include "config.h"

struct kg_http_span {
	uint32_t off;
	uint32_t len;
};

struct kg_http_field {
	struct kg_http_span name;
	struct kg_http_span value;
};

enum kg_http_phase {
	KG_HTTP_PHASE_HEAD, /* collecting the head */
	KG_HTTP_PHASE_BODY, /* head done, body bytes follow */
	KG_HTTP_PHASE_DONE, /* message complete; resume with kg_http_next() */
};

/* The size of a kept trailer section (struct kg_http_msg trailers). */
#define KG_HTTP_TRAILER_BYTES 1024

/* One direction's parser state. The head must stay in one buffer, from
 * offset 0, until the head is complete: spans are offsets into it. */
struct kg_http_msg {
	llhttp_t parser;
	const unsigned char *base; /* the buffer spans point into */
	enum kg_http_phase phase;
	bool is_request;
	bool head_only_response; /* response to HEAD: no body whatever it says */
	struct kg_http_span url;    /* requests */
	struct kg_http_span reason; /* responses */
	struct kg_http_field *fields;
	unsigned n_fields;
	unsigned max_fields;
	bool in_value;
	bool too_many;
	uint32_t head_len; /* bytes of the head, once known */
	bool skipped;            /* the body went past the parser (kg_http_skip_body) */
	/* A request's trailer field name being read (chunked bodies pass
	 * through as they are, so a reserved name there is refused, not
	 * removed): its first bytes and its length. */
	char trailer_name[64];
	uint32_t trailer_len;
	bool reserved_trailer;   /* the message was refused for one (counted) */
	/* A response's trailer section kept for an HTTP/2 client: the caller
	 * points trailers at KG_HTTP_TRAILER_BYTES of its own (NULL: nothing
	 * is kept). "name\0value\0" pairs, names in lower case; a section
	 * past the buffer is dropped whole (trailers_dropped: the body still
	 * passes). Not a buffer in the message: the HTTP/1.1 forwarder never
	 * keeps trailers, and its two messages per connection carried 2 KiB
	 * unused for the connection's life (issue 19 §1). */
	char *trailers;
	bool trailers_dropped;
	uint32_t trailers_len;
	unsigned n_trailers;
	bool skipped_keep_alive; /* kg_http_keep_alive, taken before it did */
	/* Set by a caller that needs the body's content rather than its
	 * bytes as sent (HTTP/2 streams have no chunk framing): called
	 * during kg_http_feed with each piece of de-chunked body, in order.
	 * NULL (the HTTP/1.1 forwarder): nothing is called, and *used still
	 * counts the raw bytes either way. */
	void (*on_body)(void *ctx, const unsigned char *p, size_t n);
	void *body_ctx;
};

enum kg_http_step {
	KG_HTTP_MORE,     /* every byte consumed, the message goes on */
	KG_HTTP_HEAD,     /* the head ended at *used */
	KG_HTTP_DONE,     /* the message ended at *used */
	KG_HTTP_ERROR,    /* malformed: *status says which answer (400, 431, 502) */
};

/* 0, or -ENOMEM. max_fields bounds the header count (431 beyond). */
int kg_http_msg_init(struct kg_http_msg *m, bool is_request, unsigned max_fields);
void kg_http_msg_free(struct kg_http_msg *m);
/* Between messages (after kg_http_next or kg_http_restart, before the
 * next feed): frees the field table, max_fields spans that an idle
 * keep-alive connection would otherwise hold; the next kg_http_feed
 * allocates it again. */
void kg_http_msg_trim(struct kg_http_msg *m);

/* Parses data[0..len). base is the start of the buffer holding the head
 * (data >= base). *used: bytes that belong to the current message from
 * data on (all of them on KG_HTTP_MORE). On KG_HTTP_ERROR, *status is the
 * status to answer with and *why a short reason for the log. */
enum kg_http_step kg_http_feed(struct kg_http_msg *m, const unsigned char *base,
			       const unsigned char *data, size_t len, size_t *used,
			       int *status, const char **why);
/* The peer closed: a message delimited by the end of the connection is
 * complete (KG_HTTP_DONE); anything else half-done is KG_HTTP_ERROR. */
enum kg_http_step kg_http_eof(struct kg_http_msg *m);
/* Readies the parser for the next message on the connection. */
void kg_http_next(struct kg_http_msg *m);
/* Readies the parser for a first message (another connection). */
void kg_http_restart(struct kg_http_msg *m);

/* In the body of a message framed by Content-Length, after a feed that
 * asked for more: the body bytes still to come. 0 for anything else
 * (chunked, delimited by the connection's end, no body, head only). */
uint64_t kg_http_body_left(const struct kg_http_msg *m);
/* Those kg_http_body_left bytes were forwarded without the parser (spliced):
 * the message is complete. kg_http_next/kg_http_restart start the next
 * one from a fresh parser state, as the old one stopped mid-body. */
void kg_http_skip_body(struct kg_http_msg *m);

/* After the head: the peer wants the connection kept (RFC 9112 9.3). */
bool kg_http_keep_alive(const struct kg_http_msg *m);
/* After a response head: its body runs until the connection closes. */
bool kg_http_needs_eof(const struct kg_http_msg *m);
/* After the head: the message has a body (Content-Length > 0 or chunked). */
bool kg_http_has_body(const struct kg_http_msg *m);
int kg_http_status(const struct kg_http_msg *m);
const char *kg_http_method(const struct kg_http_msg *m);
bool kg_http_is_head_method(const struct kg_http_msg *m);
unsigned kg_http_minor(const struct kg_http_msg *m);

/* A growable byte buffer for rebuilt heads. */
struct kg_buf {
	char *data;
	size_t len;
	size_t cap;
};
int kg_buf_add(struct kg_buf *b, const void *p, size_t n);
int kg_buf_printf(struct kg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void kg_buf_free(struct kg_buf *b);
/* Gives back what b holds beyond its bytes (a buffer kept for the life of
 * a connection). */
void kg_buf_shrink(struct kg_buf *b);

/* Header names compare case-insensitively with '_' equal to '-' (the way
 * CGI-style servers merge them): true when name[0..len) equals `want`. */
bool kg_http_name_eq(const char *name, size_t len, const char *want);
/* True when a client's header of this name is removed as kgate's own: it
 * equals an identity header's name or starts with a reserved prefix
 * (config.h KG_IDENT_HEADERS, KG_RESERVED_HEADER_PREFIXES), compared as
 * kg_http_name_eq does. */
bool kg_http_name_reserved(const char *name, size_t len);

/* What kgate adds to every request of one connection. */
struct kg_http_ident {
	struct kg_buf lines;     /* complete "Name: value\r\n" lines, fixed per
				  * connection: all but the two below */
	unsigned headers;        /* kg_ident_header bits: which to add */
	bool trusted;            /* the client is a trusted proxy: the two below
				  * are appended to its own values, not replacing them */
	char xff[64];            /* this hop's X-Forwarded-For element (the client's IP) */
	char forwarded[160];     /* this hop's Forwarded element: for=..;proto=https;by=.. */
	enum kg_underscores underscores;
};
void kg_http_ident_free(struct kg_http_ident *id);

/* Why a client's request header was removed or refused. */
enum kg_http_drop {
	KG_HTTP_DROP_RESERVED,   /* a name kgate sets or reserves, in any variant */
	KG_HTTP_DROP_UNDERSCORE, /* another name with '_' (underscores_in_headers) */
	KG_HTTP_DROP_REASONS,
};
extern const char *const kg_http_drop_names[KG_HTTP_DROP_REASONS];

/* What kg_http_build_request did to the client's headers. */
struct kg_http_screen {
	unsigned dropped[KG_HTTP_DROP_REASONS];
	bool rejected;                /* a name with '_' under "reject": nothing was built */
	const char *first;            /* the first header dropped or refused: its name, */
	size_t first_len;             /* in the request's own buffer */
	enum kg_http_drop first_why;
};

/* A header field as two strings: an HTTP/2 field list's, or a message's
 * field seen through its buffer. */
struct kg_http_pair {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

/* The request head to send to the backend: the client's request line and
 * headers minus hop-by-hop ones (Connection, the names it lists, Keep-Alive,
 * Proxy-Connection, TE, Upgrade), minus every reserved name
 * (kg_http_name_reserved), minus or refusing names with '_' as
 * id->underscores says; then X-Forwarded-For and Forwarded for this hop
 * (after a trusted proxy's own values of the same names), then id->lines.
 * Framing headers (Host, Content-Length, Transfer-Encoding) are never
 * dropped. 0, -ENOMEM, or -EPERM when the request must be refused (400:
 * screen->rejected). screen is filled either way. */
int kg_http_build_request(struct kg_buf *out, const struct kg_http_msg *m,
			  const struct kg_http_ident *id, struct kg_http_screen *screen);
/* What an HTTP/1.1 request line and its framing are made of when the
 * request came as HTTP/2 (RFC 9113 8.3.1): method and target (:path),
 * Host from :authority (NULL: the client's own Host field, if any, stays),
 * and whether the body goes chunked (a body without content-length). */
struct kg_http_request_line {
	const char *method;
	const char *target;
	const char *host;
	bool chunked;
};
/* kg_http_build_request for a request that came as a field list: the
 * same screening of the client's fields (reserved names in every variant,
 * hop-by-hop names, underscores, a trusted proxy's X-Forwarded-For and
 * Forwarded kept), the same identity lines; a Host field is dropped when
 * rl->host replaces it. 0, -ENOMEM, or -EPERM (screen->rejected). */
int kg_http_build_request_pairs(struct kg_buf *out, const struct kg_http_request_line *rl,
				const struct kg_http_pair *pairs, size_t n,
				const struct kg_http_ident *id, struct kg_http_screen *screen);
/* A response head's fields for an HTTP/2 client: hop-by-hop ones (and the
 * names Connection lists) and Transfer-Encoding left out, the rest into
 * out[0..cap) pointing into the message's buffer. The count, or -E2BIG. */
int kg_http_response_pairs(const struct kg_http_msg *m, struct kg_http_pair *out, size_t cap);
/* The kept trailer section (m->trailers) as fields into out[0..cap):
 * the count, 0 when none was kept or it was dropped. */
unsigned kg_http_trailer_pairs(const struct kg_http_msg *m, struct kg_http_pair *out,
			       unsigned cap);
/* The response head for the client: status line as HTTP/1.1, hop-by-hop
 * headers removed, then "Connection: close" when close is true, or
 * "Connection: keep-alive" for an HTTP/1.0 client that keeps it. */
int kg_http_build_response(struct kg_buf *out, const struct kg_http_msg *m,
			   bool close, bool keep_alive_10);

/* WebSocket (RFC 6455): a request that asks for one (GET, HTTP/1.1,
 * Upgrade listing websocket, Connection listing upgrade, no body), or a
 * response that grants it (101 with Upgrade listing websocket). Other
 * upgrades (h2c, TLS) are not passed: their Upgrade is dropped as
 * hop-by-hop by the builders above. */
bool kg_http_websocket_upgrade(const struct kg_http_msg *m);
/* Puts "Connection: upgrade" and "Upgrade: websocket" back into a head
 * the builders above made (they drop both as hop-by-hop): for the
 * backend's request and the client's 101. 0, -ENOMEM, or -EINVAL for a
 * buffer that is not a complete head. */
int kg_http_add_upgrade(struct kg_buf *head);

/* A short response made by kgate itself ("HTTP/1.1 503 Service
 * Unavailable", a one-line text body, Connection: close). */
int kg_http_build_error(struct kg_buf *out, int status);
const char *kg_http_reason(int status);

/* The identity kgate tells backends for a connection, from the listener's
 * settings: the client's address (X-Forwarded-For, Forwarded, X-Real-IP),
 * scheme and the listener's port, and the client certificate (subject,
 * issuer, fingerprint, verify result, RFC 9440 Client-Cert and
 * Client-Cert-Chain). local is the listener's address as the client
 * reached it. 0/-ENOMEM (free with kg_http_ident_free either way). */
int kg_http_identity(struct kg_http_ident *id, const struct kg_http_conf *hc, SSL *ssl,
		     const struct sockaddr_storage *peer, const struct sockaddr_storage *local);

#endif
