/* llhttp glue and head rewriting for the https listener (http.h). */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* ---- parser callbacks ---- */

static struct kg_http_msg *msg_of(llhttp_t *p)
{
	return p->data;
}

/* llhttp may hand a piece of the head in several calls (one per buffer);
 * the head stays in one buffer, so a span grows to the end of the latest
 * piece. */
static void span_extend(struct kg_http_span *s, const struct kg_http_msg *m, const char *at,
			size_t len)
{
	uint32_t off = (uint32_t)((const unsigned char *)at - m->base);
	if (s->len == 0)
		s->off = off;
	s->len = off + (uint32_t)len - s->off;
}

static int on_message_begin(llhttp_t *p)
{
	struct kg_http_msg *m = msg_of(p);
	m->url.len = m->reason.len = 0;
	m->n_fields = 0;
	m->in_value = false;
	m->too_many = false;
	m->trailer_len = 0;
	m->reserved_trailer = false;
	m->trailers_len = 0;
	m->n_trailers = 0;
	m->trailers_dropped = false;
	m->head_len = 0;
	return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
	struct kg_http_msg *m = msg_of(p);
	span_extend(&m->url, m, at, len);
	return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
	struct kg_http_msg *m = msg_of(p);
	span_extend(&m->reason, m, at, len);
	return 0;
}

/* Appends to the kept trailer section; past its end the section is dropped. */
static void keep_trailer_bytes(struct kg_http_msg *m, const char *at, size_t len, bool fold)
{
	if (!m->trailers || m->trailers_dropped)
		return;
	if (len > KG_HTTP_TRAILER_BYTES - m->trailers_len) {
		m->trailers_dropped = true;
		return;
	}
	for (size_t i = 0; i < len; i++) {
		char ch = at[i];
		if (fold && ch >= 'A' && ch <= 'Z')
			ch = (char)(ch - 'A' + 'a');
		m->trailers[m->trailers_len++] = ch;
	}
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
	struct kg_http_msg *m = msg_of(p);
	if (m->phase != KG_HTTP_PHASE_HEAD) {
		keep_trailer_bytes(m, at, len, true);
		/* A trailer: its name is screened when complete; the bytes go
		 * on as the body does. */
		for (size_t i = 0; i < len && m->trailer_len < sizeof(m->trailer_name); i++)
			m->trailer_name[m->trailer_len++] = at[i];
		return 0;
	}
	if (m->in_value || m->n_fields == 0) {
		/* A new field starts. */
		if (m->n_fields == m->max_fields) {
			m->too_many = true;
			llhttp_set_error_reason(p, "too many header fields");
			return -1;
		}
		memset(&m->fields[m->n_fields++], 0, sizeof(m->fields[0]));
		m->in_value = false;
	}
	span_extend(&m->fields[m->n_fields - 1].name, m, at, len);
	return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
	struct kg_http_msg *m = msg_of(p);
	if (m->phase != KG_HTTP_PHASE_HEAD) {
		/* a trailer's value: passed through with the body */
		keep_trailer_bytes(m, at, len, false);
		return 0;
	}
	m->in_value = true;
	span_extend(&m->fields[m->n_fields - 1].value, m, at, len);
	return 0;
}

/* A request trailer named like one of kgate's identity headers: a backend
 * that merges trailers into the header set (older Apache did) would take it
 * for kgate's. Trailers go through with the body, unparsed, so the request
 * is refused instead; the backend never sees it complete. */
static int on_header_field_complete(llhttp_t *p)
{
	struct kg_http_msg *m = msg_of(p);
	if (m->phase == KG_HTTP_PHASE_HEAD)
		return 0;
	size_t len = m->trailer_len;
	m->trailer_len = 0;
	keep_trailer_bytes(m, "", 1, false);
	if (m->is_request && kg_http_name_reserved(m->trailer_name, len)) {
		m->reserved_trailer = true;
		return -1; /* kg_http_feed says why */
	}
	return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
	/* A field with an empty value gets no on_header_value call. */
	struct kg_http_msg *m = msg_of(p);
	m->in_value = true;
	if (m->phase != KG_HTTP_PHASE_HEAD) {
		keep_trailer_bytes(m, "", 1, false);
		if (m->trailers && !m->trailers_dropped)
			m->n_trailers++;
	}
	return 0;
}

unsigned kg_http_trailer_pairs(const struct kg_http_msg *m, struct kg_http_pair *out,
			       unsigned cap)
{
	if (!m->trailers || m->trailers_dropped)
		return 0;
	unsigned n = 0;
	const char *p = m->trailers, *end = m->trailers + m->trailers_len;
	while (n < m->n_trailers && n < cap && p < end) {
		size_t nl = strnlen(p, (size_t)(end - p));
		const char *v = p + nl + 1;
		if (v >= end)
			break;
		size_t vl = strnlen(v, (size_t)(end - v));
		/* llhttp leaves the value's trailing blanks in. */
		while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
			vl--;
		out[n++] = (struct kg_http_pair){p, nl, v, vl};
		p = v + strnlen(v, (size_t)(end - v)) + 1;
	}
	return n;
}

/* Body content, de-chunked: only for a caller that asked (on_body). */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
	struct kg_http_msg *m = msg_of(p);
	if (m->on_body)
		m->on_body(m->body_ctx, (const unsigned char *)at, len);
	return 0;
}

static int on_headers_complete(llhttp_t *p)
{
	(void)p;
	return HPE_PAUSED; /* the caller rewrites the head before body bytes move */
}

static int on_message_complete(llhttp_t *p)
{
	(void)p;
	return HPE_PAUSED; /* pipelined bytes wait for the next request */
}

static const llhttp_settings_t settings = {
	.on_message_begin = on_message_begin,
	.on_url = on_url,
	.on_status = on_status,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_header_field_complete = on_header_field_complete,
	.on_header_value_complete = on_header_value_complete,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

int kg_http_msg_init(struct kg_http_msg *m, bool is_request, unsigned max_fields)
{
	memset(m, 0, sizeof(*m));
	m->fields = calloc(max_fields, sizeof(*m->fields));
	if (!m->fields)
		return -ENOMEM;
	m->max_fields = max_fields;
	m->is_request = is_request;
	llhttp_init(&m->parser, is_request ? HTTP_REQUEST : HTTP_RESPONSE, &settings);
	m->parser.data = m;
	return 0;
}

void kg_http_msg_free(struct kg_http_msg *m)
{
	free(m->fields);
	m->fields = NULL;
}

void kg_http_msg_trim(struct kg_http_msg *m)
{
	kg_http_msg_free(m);
	m->n_fields = 0; /* the spans went with the table */
}

void kg_http_next(struct kg_http_msg *m)
{
	m->phase = KG_HTTP_PHASE_HEAD;
	bool mid_body = m->head_only_response || m->skipped;
	m->head_only_response = false;
	m->skipped = false;
	/* After an Upgrade request llhttp would treat the rest as another
	 * protocol; kgate does not upgrade, so the next message is parsed
	 * from a fresh state. */
	if (!mid_body && llhttp_get_errno(&m->parser) == HPE_PAUSED &&
	    !llhttp_get_upgrade(&m->parser))
		llhttp_resume(&m->parser);
	else
		llhttp_reset(&m->parser);
}

void kg_http_restart(struct kg_http_msg *m)
{
	m->phase = KG_HTTP_PHASE_HEAD;
	m->head_only_response = false;
	m->skipped = false;
	llhttp_reset(&m->parser);
}

/* ---- kgate's rules on top of llhttp's strict mode ---- */

static bool span_is(const struct kg_http_msg *m, struct kg_http_span s, const char *name)
{
	size_t n = strlen(name);
	return s.len == n && strncasecmp((const char *)m->base + s.off, name, n) == 0;
}

static unsigned count_fields(const struct kg_http_msg *m, const char *name)
{
	unsigned n = 0;
	for (unsigned i = 0; i < m->n_fields; i++)
		n += span_is(m, m->fields[i].name, name);
	return n;
}

/* Checks llhttp leaves to the user. 0, or the status to refuse with. */
static int check_head(struct kg_http_msg *m, const char **why)
{
	const unsigned char *h = m->base;
	/* obs-fold (RFC 9112 5.2): a line starting with SP or HTAB continues
	 * the previous field. llhttp joins it; a server must refuse it. */
	for (uint32_t i = 0; i < m->head_len; i++) {
		/* llhttp's strict mode still takes a bare LF as the empty line
		 * that ends the head (found by fuzz_http); other parsers may
		 * not, so a request head that is not all CRLF is refused. (A
		 * backend's response head is rebuilt whole, so leniency there
		 * cannot split a message differently.) */
		if (m->is_request && h[i] == '\n' && (i == 0 || h[i - 1] != '\r')) {
			*why = "bare LF in the head";
			return 400;
		}
		/* Likewise a bare CR, which llhttp skips in the empty lines
		 * before a request line (found by fuzz_http). */
		if (m->is_request && h[i] == '\r' && (i + 1 == m->head_len || h[i + 1] != '\n')) {
			*why = "bare CR in the head";
			return 400;
		}
		if (h[i] == '\n' && i + 1 < m->head_len && (h[i + 1] == ' ' || h[i + 1] == '\t')) {
			*why = "obsolete line folding";
			return m->is_request ? 400 : 502;
		}
	}
	if (llhttp_get_http_major(&m->parser) != 1) {
		*why = "HTTP version not 1.0 or 1.1";
		return m->is_request ? 400 : 502;
	}
	if (!m->is_request)
		return 0;
	/* Transfer-Encoding did not exist in HTTP/1.0: the framing of such a
	 * message cannot be trusted (RFC 9112 6.1). */
	if (llhttp_get_http_minor(&m->parser) == 0 && count_fields(m, "transfer-encoding") > 0) {
		*why = "Transfer-Encoding in an HTTP/1.0 request";
		return 400;
	}
	/* A request whose last transfer coding is not chunked has no length
	 * anyone can know (RFC 9112 6.3). llhttp says so only once body
	 * parsing starts, after the head went to the backend (found by
	 * fuzz_http): refuse it here, before anything is forwarded. Counted
	 * by name: llhttp sets no flag for an empty value. */
	if (count_fields(m, "transfer-encoding") > 0 && !(m->parser.flags & F_CHUNKED)) {
		*why = "Transfer-Encoding without chunked as the last coding";
		return 400;
	}
	unsigned hosts = count_fields(m, "host");
	if (hosts > 1 || (hosts == 0 && llhttp_get_http_minor(&m->parser) == 1)) {
		*why = hosts ? "more than one Host header" : "HTTP/1.1 request without Host";
		return 400;
	}
	bool asterisk = m->url.len == 1 && m->base[m->url.off] == '*' &&
			m->parser.method == HTTP_OPTIONS;
	if (!asterisk && (m->url.len == 0 || m->base[m->url.off] != '/')) {
		/* Only origin-form (and OPTIONS *): kgate is not a forward proxy,
		 * and absolute-form would let the authority disagree with Host. */
		*why = "request target is not a path";
		return 400;
	}
	return 0;
}

enum kg_http_step kg_http_feed(struct kg_http_msg *m, const unsigned char *base,
			       const unsigned char *data, size_t len, size_t *used,
			       int *status, const char **why)
{
	m->base = base;
	if (!m->fields && !(m->fields = calloc(m->max_fields, sizeof(*m->fields)))) {
		/* Trimmed while idle (kg_http_msg_trim), and no memory now. */
		*used = 0;
		*status = m->is_request ? 503 : 502;
		*why = "out of memory for the header fields";
		return KG_HTTP_ERROR;
	}
	if (m->phase == KG_HTTP_PHASE_BODY && m->head_only_response) {
		/* No body follows a response to HEAD, whatever its headers say. */
		*used = 0;
		m->phase = KG_HTTP_PHASE_DONE; /* the parser is reset by kg_http_next */
		return KG_HTTP_DONE;
	}
	llhttp_errno_t e = llhttp_execute(&m->parser, (const char *)data, len);
	if (e == HPE_OK) {
		*used = len;
		return KG_HTTP_MORE;
	}
	if (e == HPE_PAUSED) {
		*used = (size_t)((const unsigned char *)llhttp_get_error_pos(&m->parser) - data);
		if (m->phase == KG_HTTP_PHASE_HEAD) {
			m->phase = KG_HTTP_PHASE_BODY;
			m->head_len = (uint32_t)((data + *used) - base);
			*status = check_head(m, why);
			if (*status)
				return KG_HTTP_ERROR;
			llhttp_resume(&m->parser);
			return KG_HTTP_HEAD;
		}
		m->phase = KG_HTTP_PHASE_DONE;
		return KG_HTTP_DONE;
	}
	if (e == HPE_PAUSED_UPGRADE && m->phase == KG_HTTP_PHASE_BODY) {
		/* An Upgrade request ends here like any other: kgate drops the
		 * Upgrade header, so the backend answers it as plain HTTP. */
		*used = (size_t)((const unsigned char *)llhttp_get_error_pos(&m->parser) - data);
		m->phase = KG_HTTP_PHASE_DONE;
		return KG_HTTP_DONE;
	}
	*used = 0;
	if (m->too_many) {
		*status = m->is_request ? 431 : 502;
		*why = "too many header fields";
	} else if (m->reserved_trailer) {
		*status = 400;
		*why = "a trailer named like a reserved identity header";
	} else {
		*status = m->is_request ? 400 : 502;
		*why = llhttp_get_error_reason(&m->parser);
		if (!*why)
			*why = llhttp_errno_name(e);
	}
	return KG_HTTP_ERROR;
}

enum kg_http_step kg_http_eof(struct kg_http_msg *m)
{
	if (m->phase != KG_HTTP_PHASE_BODY)
		return KG_HTTP_ERROR;
	/* Only a message whose body runs to the connection's end is complete
	 * now; on_message_complete pauses, so finish may say so. */
	if (!llhttp_message_needs_eof(&m->parser))
		return KG_HTTP_ERROR;
	llhttp_errno_t e = llhttp_finish(&m->parser);
	if (e != HPE_OK && e != HPE_PAUSED)
		return KG_HTTP_ERROR;
	m->phase = KG_HTTP_PHASE_DONE;
	return KG_HTTP_DONE;
}

uint64_t kg_http_body_left(const struct kg_http_msg *m)
{
	const llhttp_t *p = &m->parser;
	if (m->phase != KG_HTTP_PHASE_BODY || m->head_only_response || (p->flags & F_CHUNKED) ||
	    !(p->flags & F_CONTENT_LENGTH))
		return 0;
	return p->content_length;
}

void kg_http_skip_body(struct kg_http_msg *m)
{
	/* Mid-body llhttp already knows: the flags and version decide, and a
	 * Content-Length body never needs the connection's end. */
	m->skipped_keep_alive = llhttp_should_keep_alive(&m->parser) != 0;
	m->skipped = true;
	m->phase = KG_HTTP_PHASE_DONE;
}

bool kg_http_keep_alive(const struct kg_http_msg *m)
{
	if (m->skipped)
		return m->skipped_keep_alive;
	return llhttp_should_keep_alive(&m->parser) != 0;
}

bool kg_http_needs_eof(const struct kg_http_msg *m)
{
	return !m->head_only_response && llhttp_message_needs_eof(&m->parser) != 0;
}

bool kg_http_has_body(const struct kg_http_msg *m)
{
	const llhttp_t *p = &m->parser;
	return (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
}

int kg_http_status(const struct kg_http_msg *m)
{
	return m->parser.status_code;
}

const char *kg_http_method(const struct kg_http_msg *m)
{
	return llhttp_method_name((llhttp_method_t)m->parser.method);
}

bool kg_http_is_head_method(const struct kg_http_msg *m)
{
	return m->parser.method == HTTP_HEAD;
}

unsigned kg_http_minor(const struct kg_http_msg *m)
{
	return m->parser.http_minor;
}

/* ---- buffers ---- */

static int buf_reserve(struct kg_buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 1024;
	while (cap < b->len + more)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

int kg_buf_add(struct kg_buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0; /* p may be an empty buffer's NULL */
	if (buf_reserve(b, n) < 0)
		return -ENOMEM;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

int kg_buf_printf(struct kg_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || buf_reserve(b, (size_t)n + 1) < 0)
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

void kg_buf_free(struct kg_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

void kg_buf_shrink(struct kg_buf *b)
{
	if (b->len == 0) {
		kg_buf_free(b);
		return;
	}
	char *p = realloc(b->data, b->len);
	if (p) { /* else the larger block stays: nothing lost */
		b->data = p;
		b->cap = b->len;
	}
}

/* ---- head rewriting ---- */

#define MAX_CONN_TOKENS 16

/* The fields of a request head, from either source: an HTTP/1.x message
 * (spans into its buffer) or an HTTP/2 field list (strings). Screening
 * and rebuilding walk this one view, so both protocols are screened by
 * the same rules. */
struct fields {
	const struct kg_http_msg *m; /* NULL: pairs */
	const struct kg_http_pair *pairs;
	unsigned n;
};

static struct kg_http_pair field_at(const struct fields *fl, unsigned i)
{
	if (!fl->m)
		return fl->pairs[i];
	const struct kg_http_field *f = &fl->m->fields[i];
	const char *base = (const char *)fl->m->base;
	return (struct kg_http_pair){base + f->name.off, f->name.len, base + f->value.off,
				     f->value.len};
}

static bool text_is(const char *p, size_t len, const char *name)
{
	size_t n = strlen(name);
	return len == n && strncasecmp(p, name, n) == 0;
}

struct conn_tokens {
	struct {
		const char *p;
		size_t len;
	} tok[MAX_CONN_TOKENS];
	unsigned n;
};

/* The next comma-separated token of a field value v from *pos (below
 * end): true with *tok and *tok_len set, false when none is left. */
static bool next_token(const char *v, size_t *pos, size_t end, const char **tok,
		       size_t *tok_len)
{
	size_t p = *pos;
	while (p < end && (v[p] == ',' || v[p] == ' ' || v[p] == '\t'))
		p++;
	size_t start = p;
	while (p < end && v[p] != ',' && v[p] != ' ' && v[p] != '\t')
		p++;
	*pos = p;
	*tok = v + start;
	*tok_len = p - start;
	return p > start;
}

/* The comma-separated names in every Connection field. */
static void connection_tokens(const struct fields *fl, struct conn_tokens *t)
{
	t->n = 0;
	for (unsigned i = 0; i < fl->n; i++) {
		struct kg_http_pair f = field_at(fl, i);
		if (!text_is(f.name, f.name_len, "connection"))
			continue;
		size_t pos = 0;
		while (t->n < MAX_CONN_TOKENS &&
		       next_token(f.value, &pos, f.value_len, &t->tok[t->n].p, &t->tok[t->n].len))
			t->n++;
	}
}

static bool is_framing(const char *name, size_t len)
{
	return text_is(name, len, "host") || text_is(name, len, "content-length") ||
	       text_is(name, len, "transfer-encoding");
}

static bool is_hop_by_hop(const struct conn_tokens *t, const char *name, size_t len)
{
	static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "te",
					  "upgrade", "proxy-authenticate", "proxy-authorization"};
	for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
		if (text_is(name, len, hop[i]))
			return true;
	/* A name listed in Connection is hop-by-hop, but framing headers stay:
	 * "Connection: content-length" must not change how the backend reads
	 * the body. */
	if (is_framing(name, len))
		return false;
	for (unsigned i = 0; i < t->n; i++)
		if (t->tok[i].len == len && strncasecmp(t->tok[i].p, name, len) == 0)
			return true;
	return false;
}

static unsigned char name_fold(unsigned char c)
{
	c = (unsigned char)tolower(c);
	return c == '_' ? '-' : c;
}

/* name[0..len) starts with want, folded; *rest gets the length after it. */
static bool name_starts(const char *name, size_t len, const char *want, size_t *rest)
{
	size_t n = strlen(want);
	if (len < n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (name_fold((unsigned char)name[i]) != name_fold((unsigned char)want[i]))
			return false;
	*rest = len - n;
	return true;
}

bool kg_http_name_eq(const char *name, size_t len, const char *want)
{
	size_t rest;
	return name_starts(name, len, want, &rest) && rest == 0;
}

bool kg_http_name_reserved(const char *name, size_t len)
{
	for (int h = 0; h < KG_HDR_COUNT; h++)
		if (kg_http_name_eq(name, len, kg_ident_header_names[h]))
			return true;
	size_t rest;
	for (size_t i = 0; kg_reserved_header_prefixes[i]; i++)
		if (name_starts(name, len, kg_reserved_header_prefixes[i], &rest))
			return true;
	return false;
}

const char *const kg_http_drop_names[KG_HTTP_DROP_REASONS] = {
	[KG_HTTP_DROP_RESERVED] = "reserved",
	[KG_HTTP_DROP_UNDERSCORE] = "underscore",
};

enum fate { KEEP, DROP_HOP, DROP_RESERVED, DROP_UNDERSCORE, REJECT };

/* What becomes of one of the client's request headers. Reserved names go
 * whatever the underscore setting, so "allow" can never let a variant of
 * kgate's own headers through; "reject" refuses any name with '_'. */
static enum fate request_fate(const struct conn_tokens *t, const char *name, size_t len,
			      enum kg_underscores underscores)
{
	bool underscore = memchr(name, '_', len) != NULL;
	if (underscore && underscores == KG_UNDERSCORES_REJECT)
		return REJECT;
	if (kg_http_name_reserved(name, len))
		return DROP_RESERVED;
	if (is_hop_by_hop(t, name, len))
		return DROP_HOP;
	if (underscore && underscores == KG_UNDERSCORES_DROP)
		return DROP_UNDERSCORE;
	return KEEP;
}

static int add_field(struct kg_buf *out, const struct kg_http_pair *f)
{
	if (kg_buf_add(out, f->name, f->name_len) < 0 || kg_buf_add(out, ": ", 2) < 0 ||
	    kg_buf_add(out, f->value, f->value_len) < 0 || kg_buf_add(out, "\r\n", 2) < 0)
		return -ENOMEM;
	return 0;
}

static void note_drop(struct kg_http_screen *sc, const struct kg_http_pair *f,
		      enum kg_http_drop why)
{
	if (sc->dropped[KG_HTTP_DROP_RESERVED] + sc->dropped[KG_HTTP_DROP_UNDERSCORE] == 0 &&
	    !sc->rejected) {
		sc->first = f->name;
		sc->first_len = f->name_len;
		sc->first_why = why;
	}
	sc->dropped[why]++;
}

/* The client's request headers that stay, screened by request_fate; skip
 * (may be NULL) names one more that is left out unscreened (HTTP/2's
 * Host under :authority). -EPERM on a refusal. */
static int add_request_fields(struct kg_buf *out, const struct fields *fl,
			      enum kg_underscores underscores, struct kg_http_screen *sc,
			      const char *skip)
{
	struct conn_tokens t;
	connection_tokens(fl, &t);
	for (unsigned i = 0; i < fl->n; i++) {
		struct kg_http_pair f = field_at(fl, i);
		enum fate fate = request_fate(&t, f.name, f.name_len, underscores);
		if (fate == KEEP && skip && text_is(f.name, f.name_len, skip))
			fate = DROP_HOP;
		switch (fate) {
		case KEEP:
			if (add_field(out, &f) < 0)
				return -ENOMEM;
			break;
		case DROP_HOP:
			break;
		case DROP_RESERVED:
			note_drop(sc, &f, KG_HTTP_DROP_RESERVED);
			break;
		case DROP_UNDERSCORE:
			note_drop(sc, &f, KG_HTTP_DROP_UNDERSCORE);
			break;
		case REJECT:
			sc->first = f.name;
			sc->first_len = f.name_len;
			sc->first_why = KG_HTTP_DROP_UNDERSCORE;
			sc->rejected = true;
			return -EPERM;
		}
	}
	return 0;
}

/* One of this hop's address headers: "Name: " then, from a trusted proxy,
 * the values it sent under exactly that name (its own hops, kept in
 * order), then this hop's element. Variants of the name were dropped as
 * reserved: only the spelling a proxy writes is taken from it. */
static int add_hop_header(struct kg_buf *out, const struct fields *fl, bool trusted,
			  const char *name, const char *element)
{
	if (kg_buf_printf(out, "%s: ", name) < 0)
		return -ENOMEM;
	for (unsigned i = 0; trusted && i < fl->n; i++) {
		struct kg_http_pair f = field_at(fl, i);
		if (f.value_len == 0 || !text_is(f.name, f.name_len, name))
			continue;
		if (kg_buf_add(out, f.value, f.value_len) < 0 || kg_buf_add(out, ", ", 2) < 0)
			return -ENOMEM;
	}
	return kg_buf_printf(out, "%s\r\n", element);
}

static bool want(unsigned headers, enum kg_ident_header h)
{
	return headers & (1u << h);
}

/* The screened fields, this hop's address headers and the identity lines,
 * then the blank line: everything of a request head after its first
 * lines. */
static int add_request_rest(struct kg_buf *out, const struct fields *fl,
			    const struct kg_http_ident *id, struct kg_http_screen *screen,
			    const char *skip)
{
	int r = add_request_fields(out, fl, id->underscores, screen, skip);
	if (r < 0)
		return r;
	if (want(id->headers, KG_HDR_X_FORWARDED_FOR) &&
	    add_hop_header(out, fl, id->trusted, kg_ident_header_names[KG_HDR_X_FORWARDED_FOR],
			   id->xff) < 0)
		return -ENOMEM;
	if (want(id->headers, KG_HDR_FORWARDED) &&
	    add_hop_header(out, fl, id->trusted, kg_ident_header_names[KG_HDR_FORWARDED],
			   id->forwarded) < 0)
		return -ENOMEM;
	if (kg_buf_add(out, id->lines.data, id->lines.len) < 0 || kg_buf_add(out, "\r\n", 2) < 0)
		return -ENOMEM;
	return 0;
}

int kg_http_build_request(struct kg_buf *out, const struct kg_http_msg *m,
			  const struct kg_http_ident *id, struct kg_http_screen *screen)
{
	memset(screen, 0, sizeof(*screen));
	out->len = 0;
	if (kg_buf_printf(out, "%s %.*s HTTP/1.%u\r\n", kg_http_method(m), (int)m->url.len,
			  (const char *)m->base + m->url.off, kg_http_minor(m)) < 0)
		return -ENOMEM;
	const struct fields fl = {.m = m, .n = m->n_fields};
	return add_request_rest(out, &fl, id, screen, NULL);
}

int kg_http_build_request_pairs(struct kg_buf *out, const struct kg_http_request_line *rl,
				const struct kg_http_pair *pairs, size_t n,
				const struct kg_http_ident *id, struct kg_http_screen *screen)
{
	memset(screen, 0, sizeof(*screen));
	out->len = 0;
	if (kg_buf_printf(out, "%s %s HTTP/1.1\r\n", rl->method, rl->target) < 0)
		return -ENOMEM;
	if (rl->host && kg_buf_printf(out, "Host: %s\r\n", rl->host) < 0)
		return -ENOMEM;
	if (rl->chunked && kg_buf_printf(out, "Transfer-Encoding: chunked\r\n") < 0)
		return -ENOMEM;
	const struct fields fl = {.pairs = pairs, .n = (unsigned)n};
	return add_request_rest(out, &fl, id, screen, rl->host ? "host" : NULL);
}

/* A backend's response headers minus hop-by-hop ones. */
static int add_response_fields(struct kg_buf *out, const struct kg_http_msg *m)
{
	struct conn_tokens t;
	const struct fields fl = {.m = m, .n = m->n_fields};
	connection_tokens(&fl, &t);
	for (unsigned i = 0; i < m->n_fields; i++) {
		struct kg_http_pair f = field_at(&fl, i);
		if (!is_hop_by_hop(&t, f.name, f.name_len) && add_field(out, &f) < 0)
			return -ENOMEM;
	}
	return 0;
}

int kg_http_response_pairs(const struct kg_http_msg *m, struct kg_http_pair *out, size_t cap)
{
	struct conn_tokens t;
	const struct fields fl = {.m = m, .n = m->n_fields};
	connection_tokens(&fl, &t);
	size_t n = 0;
	for (unsigned i = 0; i < m->n_fields; i++) {
		struct kg_http_pair f = field_at(&fl, i);
		/* HTTP/2 has no connection-level framing fields at all: the
		 * body's end is the stream's. */
		if (is_hop_by_hop(&t, f.name, f.name_len) ||
		    text_is(f.name, f.name_len, "transfer-encoding"))
			continue;
		if (n == cap)
			return -E2BIG;
		out[n++] = f;
	}
	return (int)n;
}

int kg_http_build_response(struct kg_buf *out, const struct kg_http_msg *m, bool close,
			   bool keep_alive_10)
{
	out->len = 0;
	if (kg_buf_printf(out, "HTTP/1.1 %d %.*s\r\n", kg_http_status(m), (int)m->reason.len,
			  (const char *)m->base + m->reason.off) < 0 ||
	    add_response_fields(out, m) < 0)
		return -ENOMEM;
	if (close && kg_buf_printf(out, "Connection: close\r\n") < 0)
		return -ENOMEM;
	if (!close && keep_alive_10 && kg_buf_printf(out, "Connection: keep-alive\r\n") < 0)
		return -ENOMEM;
	return kg_buf_add(out, "\r\n", 2);
}

/* ---- WebSocket upgrades (RFC 6455 4) ---- */

/* True when a field named `name` lists `token` (comma-separated, case
 * insensitive; a "websocket/13"-style version is not a match). */
static bool lists_token(const struct kg_http_msg *m, const char *name, const char *token)
{
	for (unsigned i = 0; i < m->n_fields; i++) {
		if (!span_is(m, m->fields[i].name, name))
			continue;
		struct kg_http_span v = m->fields[i].value;
		const char *tok;
		size_t pos = v.off, tok_len;
		while (next_token((const char *)m->base, &pos, (size_t)v.off + v.len, &tok, &tok_len))
			if (text_is(tok, tok_len, token))
				return true;
	}
	return false;
}

bool kg_http_websocket_upgrade(const struct kg_http_msg *m)
{
	if (!lists_token(m, "upgrade", "websocket"))
		return false;
	if (!m->is_request)
		return kg_http_status(m) == 101;
	/* Only the handshake RFC 6455 defines: GET, HTTP/1.1, Connection:
	 * upgrade, no body (a body would sit between the head and the
	 * frames, and llhttp would not tell where). */
	return m->parser.method == HTTP_GET && kg_http_minor(m) == 1 &&
	       lists_token(m, "connection", "upgrade") && !kg_http_has_body(m);
}

int kg_http_add_upgrade(struct kg_buf *head)
{
	static const char tail[] = "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n";
	if (head->len < 4 || memcmp(head->data + head->len - 4, "\r\n\r\n", 4) != 0)
		return -EINVAL;
	head->len -= 2; /* the empty line goes after the two fields */
	return kg_buf_add(head, tail, sizeof(tail) - 1);
}

const char *kg_http_reason(int status)
{
	switch (status) {
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 408: return "Request Timeout";
	case 421: return "Misdirected Request";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Error";
	}
}

int kg_http_build_error(struct kg_buf *out, int status)
{
	char body[64];
	int n = snprintf(body, sizeof(body), "%d %s\n", status, kg_http_reason(status));
	out->len = 0;
	return kg_buf_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
			     "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
			     status, kg_http_reason(status), n, body);
}

/* ---- identity headers ---- */

/* A distinguished name as RFC 2253 text; controls and bytes above 0x7e are
 * escaped by OpenSSL, and anything else unfit for a header becomes '?'. */
static int add_dn(struct kg_buf *out, const char *header, const X509_NAME *name)
{
	BIO *mem = BIO_new(BIO_s_mem());
	if (!mem)
		return -ENOMEM;
	int r = -ENOMEM;
	if (X509_NAME_print_ex(mem, name, 0, XN_FLAG_RFC2253) >= 0) {
		char *text;
		long n = BIO_get_mem_data(mem, &text);
		for (long i = 0; i < n; i++)
			if ((unsigned char)text[i] < 0x20 || (unsigned char)text[i] > 0x7e)
				text[i] = '?';
		r = kg_buf_printf(out, "%s: %.*s\r\n", header, (int)n, text);
	}
	BIO_free(mem);
	return r;
}

/* RFC 8941 byte sequence: ":" base64(DER) ":". */
static int add_cert_sf(struct kg_buf *out, X509 *cert)
{
	unsigned char *der = NULL;
	int n = i2d_X509(cert, &der);
	if (n <= 0)
		return -ENOMEM;
	size_t b64len = 4 * (((size_t)n + 2) / 3);
	int r = buf_reserve(out, b64len + 3);
	if (r == 0) {
		out->data[out->len++] = ':';
		out->len += (size_t)EVP_EncodeBlock((unsigned char *)out->data + out->len, der, n);
		out->data[out->len++] = ':';
	}
	OPENSSL_free(der);
	return r;
}

static int add_fingerprint(struct kg_buf *out, const struct kg_http_conf *hc, X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	const EVP_MD *type = hc->fingerprint == KG_FP_SHA256 ? EVP_sha256() : EVP_sha1();
	if (X509_digest(cert, type, md, &mdlen) != 1)
		return -ENOMEM;
	char hex[2 * EVP_MAX_MD_SIZE + 1];
	for (unsigned i = 0; i < mdlen; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	return kg_buf_printf(out, "%s: %s\r\n", kg_ident_header_names[KG_HDR_XFCC_FINGERPRINT],
			     hex);
}

static int add_cert_headers(struct kg_buf *out, const struct kg_http_conf *hc, SSL *ssl,
			    X509 *cert)
{
	if (want(hc->headers, KG_HDR_XFCC_SUBJECTDN) &&
	    add_dn(out, kg_ident_header_names[KG_HDR_XFCC_SUBJECTDN],
		   X509_get_subject_name(cert)) < 0)
		return -ENOMEM;
	if (want(hc->headers, KG_HDR_XFCC_ISSUERDN) &&
	    add_dn(out, kg_ident_header_names[KG_HDR_XFCC_ISSUERDN],
		   X509_get_issuer_name(cert)) < 0)
		return -ENOMEM;
	if (want(hc->headers, KG_HDR_XFCC_FINGERPRINT) && add_fingerprint(out, hc, cert) < 0)
		return -ENOMEM;
	if (want(hc->headers, KG_HDR_CLIENT_CERT) &&
	    (kg_buf_printf(out, "%s: ", kg_ident_header_names[KG_HDR_CLIENT_CERT]) < 0 ||
	     add_cert_sf(out, cert) < 0 || kg_buf_add(out, "\r\n", 2) < 0))
		return -ENOMEM;
	/* On the server side OpenSSL's peer chain leaves the leaf out; after
	 * a resumption it may be absent altogether, and so is the header. */
	STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
	if (want(hc->headers, KG_HDR_CLIENT_CERT_CHAIN) && chain && sk_X509_num(chain) > 0) {
		if (kg_buf_printf(out, "%s: ", kg_ident_header_names[KG_HDR_CLIENT_CERT_CHAIN]) < 0)
			return -ENOMEM;
		for (int i = 0; i < sk_X509_num(chain); i++)
			if ((i > 0 && kg_buf_add(out, ", ", 2) < 0) ||
			    add_cert_sf(out, sk_X509_value(chain, i)) < 0)
				return -ENOMEM;
		if (kg_buf_add(out, "\r\n", 2) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* addr, with an IPv4-mapped IPv6 address (a dual-stack listener's IPv4
 * client) as the IPv4 address it is. */
static void unmap(const struct sockaddr_storage *addr, struct sockaddr_storage *out)
{
	const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)addr;
	*out = *addr;
	if (addr->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
		return;
	struct sockaddr_in *a4 = (struct sockaddr_in *)out;
	memset(out, 0, sizeof(*out));
	a4->sin_family = AF_INET;
	a4->sin_port = a6->sin6_port;
	memcpy(&a4->sin_addr, &a6->sin6_addr.s6_addr[12], 4);
}

/* The text of addr's IP (IPv4-mapped IPv6 as IPv4) in ip; true for IPv6. */
static bool ip_text(const struct sockaddr_storage *addr, char *ip, size_t len)
{
	struct sockaddr_storage plain;
	unmap(addr, &plain);
	snprintf(ip, len, "unknown");
	if (plain.ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)&plain)->sin_addr, ip, (socklen_t)len);
	else if (plain.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&plain)->sin6_addr, ip,
			  (socklen_t)len);
	return plain.ss_family == AF_INET6;
}

static unsigned port_of(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
	if (a->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)a)->sin_port);
	return 0;
}

/* RFC 7239 node names: an IPv4 address bare, an IPv6 address bracketed and
 * quoted, and a node with a port quoted (':' is not a token character). */
static void forwarded_element(char *out, size_t len, const struct sockaddr_storage *peer,
			      const struct sockaddr_storage *local)
{
	char pip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN];
	bool p6 = ip_text(peer, pip, sizeof(pip));
	bool l6 = ip_text(local, lip, sizeof(lip));
	snprintf(out, len, "for=%s%s%s%s;proto=https;by=\"%s%s%s:%u\"", p6 ? "\"[" : "", pip,
		 p6 ? "]" : "", p6 ? "\"" : "", l6 ? "[" : "", lip, l6 ? "]" : "", port_of(local));
}

void kg_http_ident_free(struct kg_http_ident *id)
{
	kg_buf_free(&id->lines);
}

int kg_http_identity(struct kg_http_ident *id, const struct kg_http_conf *hc, SSL *ssl,
		     const struct sockaddr_storage *peer, const struct sockaddr_storage *local)
{
	id->headers = hc->headers;
	id->underscores = hc->underscores;
	id->trusted = kg_cidr_match(hc->trusted_proxies, hc->n_trusted_proxies, peer);
	ip_text(peer, id->xff, sizeof(id->xff));
	forwarded_element(id->forwarded, sizeof(id->forwarded), peer, local);

	struct kg_buf *out = &id->lines;
	out->len = 0;
	if (want(hc->headers, KG_HDR_X_REAL_IP) &&
	    kg_buf_printf(out, "%s: %s\r\n", kg_ident_header_names[KG_HDR_X_REAL_IP], id->xff) < 0)
		return -ENOMEM;
	if (want(hc->headers, KG_HDR_X_FORWARDED_PROTO) &&
	    kg_buf_printf(out, "%s: https\r\n", kg_ident_header_names[KG_HDR_X_FORWARDED_PROTO]) < 0)
		return -ENOMEM;
	if (want(hc->headers, KG_HDR_X_FORWARDED_PORT) &&
	    kg_buf_printf(out, "%s: %u\r\n", kg_ident_header_names[KG_HDR_X_FORWARDED_PORT],
			  port_of(local)) < 0)
		return -ENOMEM;
	X509 *cert = SSL_get0_peer_certificate(ssl);
	const char *verify = !cert ? "NONE"
			     : SSL_get_verify_result(ssl) == X509_V_OK ? "SUCCESS" : "FAILED";
	if (want(hc->headers, KG_HDR_XFCC_CLIENTVERIFY) &&
	    kg_buf_printf(out, "%s: %s\r\n", kg_ident_header_names[KG_HDR_XFCC_CLIENTVERIFY],
			  verify) < 0)
		return -ENOMEM;
	/* Certificate details only for a certificate that verified: a backend
	 * must not mistake an unverified subject for an identity. */
	if (cert && SSL_get_verify_result(ssl) == X509_V_OK &&
	    add_cert_headers(out, hc, ssl, cert) < 0)
		return -ENOMEM;
	/* Kept for the connection's life, read on every request. */
	kg_buf_shrink(out);
	return 0;
}
