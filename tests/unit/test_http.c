/* http.c: llhttp glue (what is refused with which status, where heads and
 * messages end, fed in one piece and byte by byte), head rewriting, and
 * backend_pool.c's bounds. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "backend_pool.h"
#include "certgen.h"
#include "http.h"

struct req_case {
	const char *name;
	const char *bytes;
	int status; /* 0: accepted */
};

static const struct req_case reqs[] = {
	{"simple GET", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0},
	{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", 0},
	{"body by length", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 0},
	{"chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 0},
	{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
	{"TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400},
	{"two CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400},
	{"CL list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3,3\r\n\r\nabc", 400},
	{"TE gzip", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
	{"TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", 400},
	{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", 400},
	{"bare CR", "GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", 400},
	{"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
	{"no Host in 1.1", "GET / HTTP/1.1\r\n\r\n", 400},
	{"two Host", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400},
	{"absolute form", "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"asterisk form", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0},
	{"asterisk GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	{"HTTP/0.9", "GET /\r\n\r\n", 400},
	{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400},
	{"control byte in value", "GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", 400},
	{"too many fields", "GET / HTTP/1.1\r\nHost: a\r\n1: a\r\n2: a\r\n3: a\r\n4: a\r\n5: a\r\n"
	 "6: a\r\n7: a\r\n8: a\r\n\r\n", 431},
	{"upgrade request", "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0},
	{"CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 400},
	{"bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
};

#define N_REQS (sizeof(reqs) / sizeof(reqs[0]))

/* Runs a whole request through the parser, in pieces of `step` bytes kept
 * in one buffer (as forward_http.c does). Returns 0 when the message
 * completed, else the refusal status; *head_len and *done_at on success. */
static int run_request(const char *text, size_t step, uint32_t *head_len, size_t *done_at)
{
	struct kg_http_msg m;
	cr_assert_eq(kg_http_msg_init(&m, true, 8), 0);
	const unsigned char *buf = (const unsigned char *)text;
	size_t len = strlen(text), have = 0, parsed = 0;
	int result = -1;
	while (result < 0) {
		size_t used;
		int status = 0;
		const char *why = NULL;
		enum kg_http_step st = kg_http_feed(&m, buf, buf + parsed, have - parsed, &used,
						    &status, &why);
		parsed += used;
		if (st == KG_HTTP_ERROR) {
			cr_assert_not_null(why);
			result = status;
		} else if (st == KG_HTTP_HEAD) {
			*head_len = m.head_len;
		} else if (st == KG_HTTP_DONE) {
			*done_at = parsed;
			result = 0;
		} else if (have == len) {
			result = 999; /* incomplete */
		} else {
			have = have + step > len ? len : have + step;
		}
	}
	kg_http_msg_free(&m);
	return result;
}

TC_INDEX_PARAMS(http, requests, N_REQS)

ParameterizedTest(size_t *i, http, requests)
{
	const struct req_case *c = &reqs[*i];
	size_t steps[] = {strlen(c->bytes), 1, 7};
	for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
		uint32_t head_len = 0;
		size_t done_at = 0;
		int r = run_request(c->bytes, steps[s], &head_len, &done_at);
		cr_expect_eq(r, c->status, "%s (step %zu): got %d, want %d", c->name, steps[s], r,
			     c->status);
		if (r == 0) {
			cr_expect_eq(done_at, strlen(c->bytes), "%s", c->name);
			const char *end = strstr(c->bytes, "\r\n\r\n");
			cr_expect_eq(head_len, (uint32_t)(end - c->bytes + 4), "%s", c->name);
		}
	}
}

/* An idle connection's parser gives its field table back between messages
 * (kg_http_msg_trim) and the next message parses as before, its fields
 * and the too-many limit included. */
Test(http, trimmed_between_messages)
{
	const char *a = "GET /a HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n";
	const char *b = "GET /b HTTP/1.1\r\nHost: b\r\n1: a\r\n2: a\r\n3: a\r\n\r\n";
	const char *many = "GET /c HTTP/1.1\r\nHost: a\r\n1: a\r\n2: a\r\n3: a\r\n4: a\r\n\r\n";
	struct kg_http_msg m;
	cr_assert_eq(kg_http_msg_init(&m, true, 4), 0);
	size_t used;
	int status = 0;
	const char *why = NULL;
	const unsigned char *p = (const unsigned char *)a;
	cr_assert_eq(kg_http_feed(&m, p, p, strlen(a), &used, &status, &why), KG_HTTP_HEAD);
	cr_assert_eq(kg_http_feed(&m, p, p + used, strlen(a) - used, &used, &status, &why),
		     KG_HTTP_DONE);
	cr_expect_eq(m.n_fields, 2);
	kg_http_next(&m);
	kg_http_msg_trim(&m);
	cr_expect_null(m.fields);
	cr_expect_eq(m.n_fields, 0);

	p = (const unsigned char *)b;
	cr_assert_eq(kg_http_feed(&m, p, p, strlen(b), &used, &status, &why), KG_HTTP_HEAD);
	cr_assert_not_null(m.fields);
	cr_expect_eq(m.n_fields, 4);
	cr_expect_eq(m.fields[0].name.len, 4);
	cr_expect_eq(memcmp(p + m.fields[0].value.off, "b", 1), 0);
	cr_assert_eq(kg_http_feed(&m, p, p + used, strlen(b) - used, &used, &status, &why),
		     KG_HTTP_DONE);
	kg_http_next(&m);
	kg_http_msg_trim(&m);

	p = (const unsigned char *)many;
	cr_expect_eq(kg_http_feed(&m, p, p, strlen(many), &used, &status, &why), KG_HTTP_ERROR);
	cr_expect_eq(status, 431);
	kg_http_msg_free(&m);
}

/* A connection's identity lines are kept at their size: shrinking keeps
 * the bytes and an emptied buffer holds nothing. */
Test(http, buf_shrink_keeps_bytes)
{
	struct kg_buf b = {0};
	cr_assert_eq(kg_buf_printf(&b, "%s", "Name: value\r\n"), 0);
	cr_expect_geq(b.cap, 1024);
	kg_buf_shrink(&b);
	cr_expect_eq(b.cap, b.len);
	cr_expect_eq(b.len, 13);
	cr_expect_eq(memcmp(b.data, "Name: value\r\n", 13), 0);
	cr_assert_eq(kg_buf_add(&b, "x", 1), 0);
	cr_expect_eq(b.len, 14);
	b.len = 0;
	kg_buf_shrink(&b);
	cr_expect_null(b.data);
	cr_expect_eq(b.cap, 0);
}

/* Pipelined requests: each message ends where the next begins. */
Test(http, pipelined_messages_end_exactly)
{
	const char *text = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
			   "GET /b HTTP/1.1\r\nHost: a\r\n\r\n";
	struct kg_http_msg m;
	cr_assert_eq(kg_http_msg_init(&m, true, 8), 0);
	const unsigned char *p = (const unsigned char *)text;
	size_t len = strlen(text), used;
	int status;
	const char *why;
	cr_assert_eq(kg_http_feed(&m, p, p, len, &used, &status, &why), KG_HTTP_HEAD);
	size_t pos = used;
	cr_expect(kg_http_has_body(&m));
	cr_assert_eq(kg_http_feed(&m, p, p + pos, len - pos, &used, &status, &why), KG_HTTP_DONE);
	pos += used;
	cr_expect_eq(pos, strlen("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"));
	kg_http_next(&m);
	/* the next head is parsed from the buffer's start, like after compaction */
	const unsigned char *q = p + pos;
	cr_assert_eq(kg_http_feed(&m, q, q, len - pos, &used, &status, &why), KG_HTTP_HEAD);
	cr_expect_not(kg_http_has_body(&m));
	cr_expect_eq(m.url.len, 2);
	cr_expect_eq(memcmp(q + m.url.off, "/b", 2), 0);
	cr_assert_eq(kg_http_feed(&m, q, q + used, len - pos - used, &used, &status, &why),
		     KG_HTTP_DONE);
	kg_http_msg_free(&m);
}

/* Parses text (one head) into m; the caller frees m. */
static void parse_one(struct kg_http_msg *m, const char *text, bool request)
{
	size_t used;
	int status = 0;
	const char *why;
	const unsigned char *p = (const unsigned char *)text;
	cr_assert_eq(kg_http_msg_init(m, request, 32), 0);
	cr_assert_eq(kg_http_feed(m, p, p, strlen(text), &used, &status, &why), KG_HTTP_HEAD,
		     "%s", text);
}

static char *rebuild(const char *text, bool request, const char *extra)
{
	struct kg_http_msg m;
	struct kg_buf out = {0};
	parse_one(&m, text, request);
	cr_assert_not(request);
	cr_assert_eq(kg_http_build_response(&out, &m, extra[0] == 'c', extra[0] == 'k'), 0);
	cr_assert_eq(kg_buf_add(&out, "", 1), 0);
	kg_http_msg_free(&m);
	return out.data;
}

/* An identity as kg_http_identity makes one, with fixed values: the client
 * is 1.2.3.4, and the fixed lines are one X-Forwarded-Proto. */
static void make_ident(struct kg_http_ident *id, unsigned headers, enum kg_underscores us,
		       bool trusted)
{
	memset(id, 0, sizeof(*id));
	id->headers = headers;
	id->underscores = us;
	id->trusted = trusted;
	snprintf(id->xff, sizeof(id->xff), "1.2.3.4");
	snprintf(id->forwarded, sizeof(id->forwarded), "for=1.2.3.4;proto=https;by=\"127.0.0.1:443\"");
	if (headers & (1u << KG_HDR_X_FORWARDED_PROTO))
		cr_assert_eq(kg_buf_printf(&id->lines, "X-Forwarded-Proto: https\r\n"), 0);
}

/* The request head kgate would send for text, NUL-terminated (NULL when
 * the build refused it: -EPERM), and what the screening saw. */
static char *rebuild_request(const char *text, const struct kg_http_ident *id,
			     struct kg_http_screen *sc)
{
	struct kg_http_msg m;
	struct kg_buf out = {0};
	parse_one(&m, text, true);
	int r = kg_http_build_request(&out, &m, id, sc);
	kg_http_msg_free(&m);
	if (r == -EPERM) {
		kg_buf_free(&out);
		return NULL;
	}
	cr_assert_eq(r, 0);
	cr_assert_eq(kg_buf_add(&out, "", 1), 0);
	return out.data;
}

static char *rewrite(const char *text, unsigned headers)
{
	struct kg_http_ident id;
	struct kg_http_screen sc;
	make_ident(&id, headers, KG_UNDERSCORES_DROP, false);
	char *s = rebuild_request(text, &id, &sc);
	kg_http_ident_free(&id);
	return s;
}

Test(http, request_head_rewritten)
{
	char *s = rewrite("POST /p?q=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop, "
			  "Content-Length\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
			  "Upgrade: websocket\r\nx-forwarded-for: 6.6.6.6\r\nCLIENT-CERT: :AA:\r\n"
			  "X-Forwarded-Clientcert-subjectdn: CN=x\r\nContent-Length: 2\r\n"
			  "X-Keep: yes\r\n\r\nhi",
			  1u << KG_HDR_X_FORWARDED_FOR);
	cr_expect_str_eq(s, "POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
			    "X-Keep: yes\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n");
	free(s);
	s = rewrite("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0);
	cr_expect_str_eq(s, "GET / HTTP/1.0\r\n\r\n");
	free(s);
}

Test(http, header_names_fold_case_and_underscore)
{
	cr_expect(kg_http_name_eq("x_forwarded_FOR", 15, "X-Forwarded-For"));
	cr_expect(kg_http_name_eq("X-Forwarded-For", 15, "x_forwarded_for"));
	cr_expect_not(kg_http_name_eq("X-Forwarded-Fo", 14, "X-Forwarded-For"));
	cr_expect_not(kg_http_name_eq("X-Forwarded-Forx", 16, "X-Forwarded-For"));
	cr_expect_not(kg_http_name_eq("X.Forwarded-For", 15, "X-Forwarded-For"));
	cr_expect(kg_http_name_reserved("X_FORWARDED_CLIENTCERT_SERIAL", 29));
	cr_expect(kg_http_name_reserved("client_certificate", 18));
	cr_expect(kg_http_name_reserved("forwarded", 9));
	cr_expect(kg_http_name_reserved("X_Real_Ip", 9));
	cr_expect_not(kg_http_name_reserved("Forwarded-Host", 14));
	cr_expect_not(kg_http_name_reserved("X-Forwarded", 11)); /* the prefix is "X-Forwarded-" */
	cr_expect_not(kg_http_name_reserved("X-Real-IPs", 10));
	cr_expect_not(kg_http_name_reserved("Client-Cer", 10));
	cr_expect_not(kg_http_name_reserved("Host", 4));
}

/* The spoofing variants of one reserved name: as kgate writes it, upper
 * case, lower case, '-' as '_', and both mixed. */
enum { VARIANTS = 5 };

static void variant(char *out, size_t len, const char *name, int v)
{
	int w = snprintf(out, len, "%s", name);
	cr_assert_lt((size_t)w, len, "name %s does not fit", name);
	for (char *p = out; *p; p++) {
		switch (v) {
		case 1: *p = (char)toupper((unsigned char)*p); break;
		case 2: *p = (char)tolower((unsigned char)*p); break;
		case 3: if (*p == '-') *p = '_'; break;
		case 4:
			if (*p == '-' && (p - out) % 2)
				*p = '_';
			else if ((p - out) % 3 == 0)
				*p = (char)tolower((unsigned char)*p);
			break;
		}
	}
}

/* Each reserved name: every name kgate sets, and each reserved prefix
 * with a suffix kgate never sets. */
static size_t reserved_names(char names[][64], size_t max)
{
	size_t n = 0;
	for (int h = 0; h < KG_HDR_COUNT && n < max; h++)
		snprintf(names[n++], 64, "%s", kg_ident_header_names[h]);
	for (size_t i = 0; kg_reserved_header_prefixes[i] && n < max; i++)
		snprintf(names[n++], 64, "%sWhatever-Serial", kg_reserved_header_prefixes[i]);
	return n;
}

/* Generated from the reserved-header table: each name in each variant,
 * before and after Host, under each underscores_in_headers setting, with
 * every header kgate sets on. What reaches the backend carries none of the
 * client's values, each of kgate's names once, and the count says why. */
Test(http, reserved_headers_never_pass)
{
	char names[KG_HDR_COUNT + 8][64];
	size_t n = reserved_names(names, KG_HDR_COUNT + 8);
	cr_assert_gt(n, (size_t)KG_HDR_COUNT);
	const unsigned all = (1u << KG_HDR_COUNT) - 1;
	for (size_t i = 0; i < n; i++) {
		for (int v = 0; v < VARIANTS; v++) {
			char name[64], req[512];
			variant(name, sizeof(name), names[i], v);
			bool underscore = strchr(name, '_') != NULL;
			for (int after_host = 0; after_host < 2; after_host++) {
				snprintf(req, sizeof(req), "GET / HTTP/1.1\r\n%s%s: spoofed\r\n%s\r\n",
					 after_host ? "Host: h\r\n" : "", name,
					 after_host ? "" : "Host: h\r\n");
				for (int us = KG_UNDERSCORES_DROP; us <= KG_UNDERSCORES_ALLOW; us++) {
					struct kg_http_ident id;
					struct kg_http_screen sc;
					make_ident(&id, all, (enum kg_underscores)us, false);
					char *out = rebuild_request(req, &id, &sc);
					kg_http_ident_free(&id);
					if (underscore && us == KG_UNDERSCORES_REJECT) {
						cr_expect_null(out, "%s", req);
						cr_expect(sc.rejected);
						continue;
					}
					cr_assert_not_null(out, "%s", req);
					cr_expect_null(strstr(out, "spoofed"), "%s (%d) -> %s", req, us,
						       out);
					cr_expect_not_null(strstr(out, "\r\nHost: h\r\n"), "%s", out);
					cr_expect_not_null(strstr(out, "\r\nX-Forwarded-For: 1.2.3.4\r\n"));
					cr_expect_not_null(strstr(out, "\r\nForwarded: for=1.2.3.4;"));
					cr_expect_eq(sc.dropped[KG_HTTP_DROP_RESERVED], 1, "%s", req);
					cr_expect_eq(sc.dropped[KG_HTTP_DROP_UNDERSCORE], 0);
					cr_expect_eq(sc.first_why, KG_HTTP_DROP_RESERVED);
					cr_expect_eq(sc.first_len, strlen(name));
					free(out);
				}
			}
		}
	}
}

struct underscore_case {
	enum kg_underscores setting;
	bool refused;
	const char *out; /* the head sent, when not refused */
	unsigned dropped;
};

struct trailer_case {
	const char *trailer; /* the trailer section's field line */
	bool refused;
};

/* A chunked request's trailers go through with the body: one named like
 * an identity header, in any spelling, is refused; any other passes. The
 * chunked body is fed byte by byte, so names split across reads count. */
Test(http, reserved_trailers_refused)
{
	static const struct trailer_case cases[] = {
		{"X-Forwarded-Clientcert-subjectdn: CN=admin", true},
		{"x_forwarded_for: 7.7.7.7", true},
		{"Client-Cert-Whatever: spoof", true},
		{"FORWARDED: for=6.6.6.6", true},
		{"Checksum: abc", false},
		{"X-Forwarded: no dash after it", false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[512];
		snprintf(text, sizeof(text), "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
			 "\r\n\r\n3\r\nabc\r\n0\r\n%s\r\n\r\n", cases[i].trailer);
		struct kg_http_msg m;
		size_t used;
		int status = 0;
		const char *why = "";
		const unsigned char *p = (const unsigned char *)text;
		size_t len = strlen(text);
		cr_assert_eq(kg_http_msg_init(&m, true, 32), 0);
		cr_assert_eq(kg_http_feed(&m, p, p, len, &used, &status, &why), KG_HTTP_HEAD);
		size_t pos = used;
		enum kg_http_step st = KG_HTTP_MORE;
		while (pos < len && st == KG_HTTP_MORE) {
			st = kg_http_feed(&m, p, p + pos, 1, &used, &status, &why);
			pos += used;
		}
		if (cases[i].refused) {
			cr_expect_eq(st, KG_HTTP_ERROR, "%s", cases[i].trailer);
			cr_expect(m.reserved_trailer, "%s", cases[i].trailer);
			cr_expect_eq(status, 400);
		} else {
			cr_expect_eq(st, KG_HTTP_DONE, "%s: %s", cases[i].trailer, why);
			cr_expect_not(m.reserved_trailer);
		}
		kg_http_msg_free(&m);
	}
}

Test(http, underscores_in_headers)
{
	static const struct underscore_case cases[] = {
		{KG_UNDERSCORES_DROP, false, "GET / HTTP/1.1\r\nHost: h\r\nX-Ok: 1\r\n\r\n", 1},
		{KG_UNDERSCORES_ALLOW, false,
		 "GET / HTTP/1.1\r\nHost: h\r\nX_Custom: 2\r\nX-Ok: 1\r\n\r\n", 0},
		{KG_UNDERSCORES_REJECT, true, NULL, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kg_http_ident id;
		struct kg_http_screen sc;
		make_ident(&id, 0, cases[i].setting, false);
		char *out = rebuild_request("GET / HTTP/1.1\r\nHost: h\r\nX_Custom: 2\r\nX-Ok: 1\r\n\r\n",
					    &id, &sc);
		kg_http_ident_free(&id);
		cr_expect_eq(sc.rejected, cases[i].refused, "case %zu", i);
		cr_expect_eq(sc.dropped[KG_HTTP_DROP_UNDERSCORE], cases[i].dropped, "case %zu", i);
		if (cases[i].refused) {
			cr_expect_null(out);
			cr_expect_eq(sc.first_why, KG_HTTP_DROP_UNDERSCORE);
			continue;
		}
		cr_assert_not_null(out);
		cr_expect_str_eq(out, cases[i].out, "case %zu", i);
		free(out);
	}
}

#define XFF (1u << KG_HDR_X_FORWARDED_FOR)
#define FWD (1u << KG_HDR_FORWARDED)
#define FWD_HOP "for=1.2.3.4;proto=https;by=\"127.0.0.1:443\""

struct hop_case {
	const char *name;
	unsigned headers;
	bool trusted;
	const char *in;   /* client headers after Host */
	const char *want; /* what follows Host in the head sent */
};

Test(http, address_headers_replaced_or_appended_for_trusted_proxies)
{
	static const struct hop_case cases[] = {
		{"untrusted: replaced", XFF, false, "X-Forwarded-For: 9.9.9.9\r\n",
		 "X-Forwarded-For: 1.2.3.4\r\n"},
		{"trusted: appended", XFF, true,
		 "X-Forwarded-For: 9.9.9.9\r\nx-forwarded-for: 8.8.8.8\r\n",
		 "X-Forwarded-For: 9.9.9.9, 8.8.8.8, 1.2.3.4\r\n"},
		{"trusted: variants still dropped", XFF, true,
		 "X_Forwarded_For: 7.7.7.7\r\nX-Forwarded-For: 9.9.9.9\r\n",
		 "X-Forwarded-For: 9.9.9.9, 1.2.3.4\r\n"},
		{"trusted: Forwarded appended", XFF | FWD, true, "Forwarded: for=9.9.9.9\r\n",
		 "X-Forwarded-For: 1.2.3.4\r\nForwarded: for=9.9.9.9, " FWD_HOP "\r\n"},
		{"untrusted: Forwarded replaced", XFF | FWD, false, "Forwarded: for=9.9.9.9\r\n",
		 "X-Forwarded-For: 1.2.3.4\r\nForwarded: " FWD_HOP "\r\n"},
		{"Forwarded off: removed", XFF, true, "Forwarded: for=9.9.9.9\r\n",
		 "X-Forwarded-For: 1.2.3.4\r\n"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kg_http_ident id;
		struct kg_http_screen sc;
		char req[256], expect[512];
		make_ident(&id, cases[i].headers, KG_UNDERSCORES_ALLOW, cases[i].trusted);
		snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: h\r\n%s\r\n", cases[i].in);
		snprintf(expect, sizeof(expect), "GET / HTTP/1.1\r\nHost: h\r\n%s\r\n", cases[i].want);
		char *out = rebuild_request(req, &id, &sc);
		kg_http_ident_free(&id);
		cr_assert_not_null(out);
		cr_expect_str_eq(out, expect, "%s", cases[i].name);
		free(out);
	}
}

Test(http, response_head_rewritten)
{
	char *s = rebuild("HTTP/1.1 200 OK\r\nConnection: close, X-B\r\nX-B: 1\r\n"
			  "Content-Length: 0\r\n\r\n", false, "-");
	cr_expect_str_eq(s, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
	free(s);
	s = rebuild("HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", false, "close");
	cr_expect_str_eq(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
	free(s);
	s = rebuild("HTTP/1.1 204 No Content\r\n\r\n", false, "keep");
	cr_expect_str_eq(s, "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n");
	free(s);
}

Test(http, response_framing)
{
	struct kg_http_msg m;
	size_t used;
	int status;
	const char *why;
	const char *close_delim = "HTTP/1.1 200 OK\r\n\r\nbody until close";
	const unsigned char *p = (const unsigned char *)close_delim;
	cr_assert_eq(kg_http_msg_init(&m, false, 8), 0);
	cr_assert_eq(kg_http_feed(&m, p, p, strlen(close_delim), &used, &status, &why),
		     KG_HTTP_HEAD);
	cr_expect(kg_http_needs_eof(&m));
	size_t pos = used;
	cr_expect_eq(kg_http_feed(&m, p, p + pos, strlen(close_delim) - pos, &used, &status,
				  &why), KG_HTTP_MORE);
	cr_expect_eq(kg_http_eof(&m), KG_HTTP_DONE);

	/* A response to HEAD has no body whatever Content-Length says. */
	const char *head = "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
	p = (const unsigned char *)head;
	kg_http_restart(&m);
	m.head_only_response = true;
	cr_assert_eq(kg_http_feed(&m, p, p, strlen(head), &used, &status, &why), KG_HTTP_HEAD);
	cr_expect_not(kg_http_needs_eof(&m));
	cr_expect_eq(kg_http_feed(&m, p, p + used, 0, &used, &status, &why), KG_HTTP_DONE);
	cr_expect_eq(kg_http_status(&m), 200);
	cr_expect(kg_http_keep_alive(&m));

	/* EOF in the middle of a Content-Length body is an error. */
	const char *cut = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
	p = (const unsigned char *)cut;
	kg_http_restart(&m);
	cr_assert_eq(kg_http_feed(&m, p, p, strlen(cut), &used, &status, &why), KG_HTTP_HEAD);
	size_t at = used;
	cr_expect_eq(kg_http_feed(&m, p, p + at, strlen(cut) - at, &used, &status, &why),
		     KG_HTTP_MORE);
	cr_expect_eq(kg_http_eof(&m), KG_HTTP_ERROR);
	kg_http_msg_free(&m);
}

Test(http, error_responses)
{
	struct kg_buf out = {0};
	int codes[] = {400, 408, 431, 502, 503, 504};
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		cr_assert_eq(kg_http_build_error(&out, codes[i]), 0);
		cr_assert_eq(kg_buf_add(&out, "", 1), 0);
		char want[64];
		snprintf(want, sizeof(want), "HTTP/1.1 %d %s\r\n", codes[i], kg_http_reason(codes[i]));
		cr_expect_eq(strncmp(out.data, want, strlen(want)), 0, "%s", out.data);
		cr_expect_not_null(strstr(out.data, "\r\nConnection: close\r\n"));
	}
	kg_buf_free(&out);
}

/* ---- backend_pool.c ---- */

static struct sockaddr_storage addr_of(const char *text, socklen_t *len)
{
	struct sockaddr_storage a;
	cr_assert_eq(kg_parse_hostport(text, &a, len), 0);
	return a;
}

Test(backend_pool, bounded_lifo_keyed_by_slot_and_address)
{
	socklen_t la, lb;
	struct sockaddr_storage a = addr_of("127.0.0.1:9001", &la);
	struct sockaddr_storage b = addr_of("127.0.0.1:9002", &lb);
	struct kg_backend_pool *p = kg_backend_pool_create();
	cr_assert_not_null(p);

	int pairs[3][2];
	for (int i = 0; i < 3; i++)
		cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, pairs[i]), 0);
	cr_expect(kg_backend_pool_put(p, 0, &a, la, pairs[0][0], 2, 1000, 0));
	cr_expect(kg_backend_pool_put(p, 0, &a, la, pairs[1][0], 2, 1000, 10));
	cr_expect_not(kg_backend_pool_put(p, 0, &a, la, pairs[2][0], 2, 1000, 20),
		      "bounded per slot and address");
	cr_expect_not(kg_backend_pool_put(p, 0, &b, lb, pairs[2][0], 0, 1000, 20), "pool off");
	cr_expect_eq(kg_backend_pool_count(p), 2);
	cr_expect_eq(kg_backend_pool_take(p, 0, &b, lb), -1, "other address");
	cr_expect_eq(kg_backend_pool_take(p, 1, &a, la), -1, "other listener slot");
	cr_expect_eq(kg_backend_pool_take(p, 0, &a, la), pairs[1][0], "most recent first");
	cr_expect(kg_backend_pool_put(p, 0, &a, la, pairs[1][0], 2, 1000, 500));

	/* a socket the peer closed is dropped when taken */
	close(pairs[1][1]);
	cr_expect_eq(kg_backend_pool_take(p, 0, &a, la), pairs[0][0]);
	cr_expect_eq(kg_backend_pool_count(p), 0);

	cr_expect(kg_backend_pool_put(p, 0, &a, la, pairs[0][0], 2, 1000, 0));
	kg_backend_pool_expire(p, 999);
	cr_expect_eq(kg_backend_pool_count(p), 1);
	kg_backend_pool_expire(p, 1000);
	cr_expect_eq(kg_backend_pool_count(p), 0, "idle timeout");
	close(pairs[0][1]);
	close(pairs[2][0]);
	close(pairs[2][1]);
	kg_backend_pool_destroy(p);
	kg_backend_pool_destroy(NULL);
}

/* A Content-Length body that bypasses the parser (spliced on kTLS):
 * body_left says how much is still to come after what was fed, skip_body
 * ends the message with keep-alive as the head said, and the next message
 * parses from a fresh state. Chunked and HEAD-response bodies are never
 * offered for skipping. */
Test(http, skipped_body_then_next_message)
{
	struct kg_http_msg m;
	cr_assert_eq(kg_http_msg_init(&m, true, 8), 0);
	const unsigned char *a = (const unsigned char *)
		"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123";
	size_t used, len = strlen((const char *)a);
	int status = 0;
	const char *why = NULL;
	cr_assert_eq(kg_http_feed(&m, a, a, len, &used, &status, &why), KG_HTTP_HEAD);
	cr_expect_eq(kg_http_body_left(&m), 10);
	size_t at = used;
	cr_assert_eq(kg_http_feed(&m, a, a + at, len - at, &used, &status, &why), KG_HTTP_MORE);
	cr_expect_eq(used, 4);
	cr_expect_eq(kg_http_body_left(&m), 6);
	kg_http_skip_body(&m);
	cr_expect(kg_http_keep_alive(&m));
	kg_http_next(&m);

	const unsigned char *b = (const unsigned char *)
		"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
	len = strlen((const char *)b);
	cr_assert_eq(kg_http_feed(&m, b, b, len, &used, &status, &why), KG_HTTP_HEAD, "%s",
		     why ? why : "");
	cr_expect_eq(m.url.len, 2);
	cr_expect_eq(kg_http_body_left(&m), 0);
	cr_expect(!kg_http_keep_alive(&m));
	at = used;
	cr_expect_eq(kg_http_feed(&m, b, b + at, len - at, &used, &status, &why), KG_HTTP_DONE);

	/* chunked: nothing to skip */
	kg_http_restart(&m);
	const unsigned char *c = (const unsigned char *)
		"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
	len = strlen((const char *)c);
	cr_assert_eq(kg_http_feed(&m, c, c, len, &used, &status, &why), KG_HTTP_HEAD);
	cr_expect_eq(kg_http_body_left(&m), 0);
	kg_http_msg_free(&m);

	/* a response to HEAD announces a length but has no body */
	cr_assert_eq(kg_http_msg_init(&m, false, 8), 0);
	m.head_only_response = true;
	const unsigned char *r = (const unsigned char *)
		"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
	len = strlen((const char *)r);
	cr_assert_eq(kg_http_feed(&m, r, r, len, &used, &status, &why), KG_HTTP_HEAD);
	cr_expect_eq(kg_http_body_left(&m), 0);
	kg_http_msg_free(&m);
}

/* HTTP/2 requests are screened by the same code: the head rebuilt from a
 * field list equals the one rebuilt from the same fields as HTTP/1.1
 * text, and the screening counts agree, for reserved names in every
 * variant, hop-by-hop names, underscores under each setting and a trusted
 * proxy's address headers. */
Test(http, field_lists_screened_like_heads)
{
	char names[KG_HDR_COUNT + 8][64];
	size_t n = reserved_names(names, KG_HDR_COUNT + 8);
	const unsigned all = (1u << KG_HDR_COUNT) - 1;
	char lists[64][160];
	size_t nl = 0;
	for (size_t i = 0; i < n && nl < 40; i++)
		for (int v = 0; v < VARIANTS && nl < 40; v += 2) {
			char name[64];
			variant(name, sizeof(name), names[i], v);
			snprintf(lists[nl++], sizeof(lists[0]), "%s: spoofed\r\nX-Kept: yes\r\n", name);
		}
	snprintf(lists[nl++], sizeof(lists[0]), "Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n"
						 "X-Kept: yes\r\nTE: trailers\r\n");
	snprintf(lists[nl++], sizeof(lists[0]), "X_Custom: 1\r\nX-Plain: 2\r\n");
	snprintf(lists[nl++], sizeof(lists[0]), "X-Forwarded-For: 9.9.9.9\r\n"
						 "Forwarded: for=9.9.9.9\r\nX-Kept: yes\r\n");
	for (size_t l = 0; l < nl; l++) {
		/* The field list of the text: names and values as pointers. */
		struct kg_http_pair pairs[8];
		size_t np = 0;
		char copy[sizeof(lists[0])];
		memcpy(copy, lists[l], sizeof(copy));
		for (char *line = copy, *end; (end = strstr(line, "\r\n")) && np < 8; line = end + 2) {
			char *colon = strchr(line, ':');
			*end = '\0';
			pairs[np++] = (struct kg_http_pair){line, (size_t)(colon - line), colon + 2,
							    strlen(colon + 2)};
		}
		char req[256];
		snprintf(req, sizeof(req), "GET /p?q HTTP/1.1\r\nHost: h\r\n%.159s\r\n", lists[l]);
		for (int us = KG_UNDERSCORES_DROP; us <= KG_UNDERSCORES_ALLOW; us++)
			for (int trusted = 0; trusted < 2; trusted++) {
				struct kg_http_ident id;
				struct kg_http_screen sc1, sc2;
				make_ident(&id, all, (enum kg_underscores)us, trusted);
				char *h1 = rebuild_request(req, &id, &sc1);
				const struct kg_http_request_line rl = {
					.method = "GET", .target = "/p?q", .host = "h"};
				struct kg_buf out = {0};
				int r = kg_http_build_request_pairs(&out, &rl, pairs, np, &id, &sc2);
				kg_http_ident_free(&id);
				cr_expect_eq(r == -EPERM, h1 == NULL, "%s (%d)", lists[l], us);
				cr_expect_eq(sc1.rejected, sc2.rejected);
				cr_expect_eq(sc1.dropped[KG_HTTP_DROP_RESERVED],
					     sc2.dropped[KG_HTTP_DROP_RESERVED], "%s", lists[l]);
				cr_expect_eq(sc1.dropped[KG_HTTP_DROP_UNDERSCORE],
					     sc2.dropped[KG_HTTP_DROP_UNDERSCORE], "%s", lists[l]);
				if (h1 && r == 0) {
					cr_assert_eq(kg_buf_add(&out, "", 1), 0);
					cr_expect_str_eq(out.data, h1, "%s (%d, %d)", lists[l], us,
							 trusted);
					/* (a trusted proxy's own X-Forwarded-For and
					 * Forwarded are kept, by design) */
					cr_expect(trusted || !strstr(out.data, "spoofed"), "%s",
						  out.data);
					cr_expect_null(strstr(out.data, "X-Hop"));
				}
				kg_buf_free(&out);
				free(h1);
			}
	}
}

/* A body without content-length goes chunked, and :authority replaces the
 * client's own Host. */
Test(http, field_list_framing_and_host)
{
	struct kg_http_ident id;
	make_ident(&id, 0, KG_UNDERSCORES_DROP, false);
	const struct kg_http_pair pairs[] = {{"host", 4, "other", 5}, {"x-a", 3, "1", 1}};
	const struct kg_http_request_line rl = {
		.method = "POST", .target = "/up", .host = "a.example:8443", .chunked = true};
	struct kg_buf out = {0};
	struct kg_http_screen sc;
	cr_assert_eq(kg_http_build_request_pairs(&out, &rl, pairs, 2, &id, &sc), 0);
	cr_assert_eq(kg_buf_add(&out, "", 1), 0);
	cr_expect_str_eq(out.data, "POST /up HTTP/1.1\r\nHost: a.example:8443\r\n"
				   "Transfer-Encoding: chunked\r\nx-a: 1\r\n\r\n");
	kg_buf_free(&out);
	const struct kg_http_request_line keep = {.method = "GET", .target = "/"};
	cr_assert_eq(kg_http_build_request_pairs(&out, &keep, pairs, 2, &id, &sc), 0);
	cr_assert_eq(kg_buf_add(&out, "", 1), 0);
	cr_expect_str_eq(out.data, "GET / HTTP/1.1\r\nhost: other\r\nx-a: 1\r\n\r\n");
	kg_buf_free(&out);
	kg_http_ident_free(&id);
}
