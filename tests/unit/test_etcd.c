/* etcd.c and b64.c without an etcd: base64 edge cases, the watch stream
 * parser fed canned gateway messages cut in every way, and unary calls
 * against a loopback fake that answers each request with a canned reply
 * (HTTP errors, gateway error objects, not JSON, wrong types). The real
 * etcd is tests/integration/etcd_client.c's. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "b64.h"
#include "etcd.h"

static char err[512];

/* ---- base64 ---- */

struct b64_case {
	const char *text;
	const char *plain; /* NULL: refused */
	size_t len;
};

static const struct b64_case b64_cases[] = {
	{"", "", 0},
	{"Zg==", "f", 1},
	{"Zm8=", "fo", 2},
	{"Zm9v", "foo", 3},
	{"Zm9vYg==", "foob", 4},
	{"AA==", "\0", 1},
	{"AP8A", "\0\xff\0", 3},
	{"Zm9vL2E=", "foo/a", 5},
	{"Zg=", NULL, 0},     /* length not a multiple of 4 */
	{"Zg", NULL, 0},      /* padding left out */
	{"Z===", NULL, 0},    /* three '=' */
	{"Zm=v", NULL, 0},    /* '=' inside */
	{" Zm9v", NULL, 0},   /* whitespace EVP_DecodeBlock would skip */
	{"Zm9v\n", NULL, 0},
	{"Zm9-", NULL, 0},    /* the URL alphabet is not the gateway's */
	{"Zm9_", NULL, 0},
	{"Zm\x80v", NULL, 0},
};

#define N_B64 (sizeof(b64_cases) / sizeof(b64_cases[0]))

ParameterizedTestParameters(b64, decode)
{
	static size_t idx[N_B64];
	for (size_t i = 0; i < N_B64; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, N_B64);
}

ParameterizedTest(size_t *i, b64, decode)
{
	const struct b64_case *c = &b64_cases[*i];
	unsigned char *out;
	size_t n;
	int r = kg_b64_decode(c->text, strlen(c->text), &out, &n);
	if (!c->plain) {
		cr_expect_eq(r, -EINVAL, "\"%s\" accepted", c->text);
		cr_expect_null(out);
		return;
	}
	cr_assert_eq(r, 0, "\"%s\" refused", c->text);
	cr_expect_eq(n, c->len, "\"%s\": %zu bytes", c->text, n);
	cr_expect(memcmp(out, c->plain, n) == 0, "\"%s\"", c->text);
	cr_expect_eq(out[n], '\0');
	/* And back: encoding is canonical. */
	char *enc;
	cr_assert_eq(kg_b64_encode(c->plain, c->len, &enc), 0);
	cr_expect_str_eq(enc, c->text);
	free(enc);
	free(out);
}

Test(b64, round_trip_every_length)
{
	unsigned char data[70];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 37 + 11);
	for (size_t len = 0; len <= sizeof(data); len++) {
		char *enc;
		unsigned char *dec;
		size_t n;
		cr_assert_eq(kg_b64_encode(data, len, &enc), 0);
		cr_expect_eq(strlen(enc), (len + 2) / 3 * 4);
		cr_assert_eq(kg_b64_decode(enc, strlen(enc), &dec, &n), 0, "len %zu", len);
		cr_expect_eq(n, len);
		cr_expect(memcmp(dec, data, len) == 0, "len %zu", len);
		free(enc);
		free(dec);
	}
}

/* ---- the watch stream ---- */

/* What a callback saw, as text: "C5" created at 5, "P foo/a=v @7" put,
 * "D foo/a @8" delete; one line each. */
struct seen {
	char text[2048];
	int fail_at; /* 1-based event count at which the callback fails; 0: never */
	int count;
};

static int record(void *arg, const struct kg_etcd_event *ev)
{
	struct seen *s = arg;
	size_t n = strlen(s->text);
	s->count++;
	if (s->fail_at && s->count == s->fail_at)
		return -EINTR;
	if (ev->type == KG_ETCD_EV_CREATED)
		snprintf(s->text + n, sizeof(s->text) - n, "C%lld\n", (long long)ev->revision);
	else if (ev->type == KG_ETCD_EV_PUT)
		snprintf(s->text + n, sizeof(s->text) - n, "P %s=%.*s @%lld/%lld\n", ev->kv.key,
			 (int)ev->kv.value_len, (const char *)ev->kv.value,
			 (long long)ev->kv.mod_revision, (long long)ev->revision);
	else
		snprintf(s->text + n, sizeof(s->text) - n, "D %s @%lld\n", ev->kv.key,
			 (long long)ev->kv.mod_revision);
	return 0;
}

#define HDR(rev) "\"header\":{\"cluster_id\":\"1\",\"member_id\":\"2\",\"revision\":\"" rev "\",\"raft_term\":\"2\"}"
/* Messages as etcd 3.4's gateway writes them (FACTS.md), one per line. */
#define M_CREATED "{\"result\":{" HDR("3") ",\"created\":true}}\n"
#define M_PUT "{\"result\":{" HDR("4") ",\"events\":[{\"kv\":{\"key\":\"Zm9vL2E=\",\"create_revision\":\"2\",\"mod_revision\":\"4\",\"version\":\"2\",\"value\":\"aGVsbG8=\"}}]}}\n"
#define M_TWO "{\"result\":{" HDR("6") ",\"events\":[{\"kv\":{\"key\":\"Zm9vL2I=\",\"create_revision\":\"5\",\"mod_revision\":\"5\",\"version\":\"1\",\"value\":\"eA==\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"Zm9vL2E=\",\"mod_revision\":\"6\"}}]}}\n"
#define M_EMPTY_VALUE "{\"result\":{" HDR("7") ",\"events\":[{\"type\":\"PUT\",\"kv\":{\"key\":\"Zm9vL2M=\",\"mod_revision\":\"7\"}}]}}\n"
#define M_COMPACTED "{\"result\":{\"header\":{\"cluster_id\":\"1\",\"raft_term\":\"2\"},\"canceled\":true,\"compact_revision\":\"5\"}}\n"
#define M_CANCELED "{\"result\":{" HDR("8") ",\"canceled\":true,\"cancel_reason\":\"permission denied\"}}\n"
#define M_ERROR "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\",\"http_status\":\"Service Unavailable\"}}\n"
#define M_ERROR_FLAT "{\"error\":\"etcdserver: request timed out\",\"message\":\"etcdserver: request timed out\",\"code\":4}"

#define SAW_CREATED "C3\n"
#define SAW_PUT "P foo/a=hello @4/4\n"
#define SAW_TWO "P foo/b=x @5/6\nD foo/a @6\n"

struct stream_case {
	const char *name;
	const char *input;
	int want;           /* what the last feed returns */
	const char *saw;    /* the events delivered, in order */
	const char *err_has;
	long long compact;
};

static const struct stream_case stream_cases[] = {
	{"created", M_CREATED, 0, SAW_CREATED, NULL, 0},
	{"created and a put", M_CREATED M_PUT, 0, SAW_CREATED SAW_PUT, NULL, 0},
	{"two events, put and delete", M_TWO, 0, SAW_TWO, NULL, 0},
	{"three messages", M_CREATED M_PUT M_TWO, 0, SAW_CREATED SAW_PUT SAW_TWO, NULL, 0},
	{"empty value, explicit PUT", M_EMPTY_VALUE, 0, "P foo/c= @7/7\n", NULL, 0},
	{"no newline between messages", "{\"result\":{" HDR("3") ",\"created\":true}}{\"result\":{" HDR("3") "}}", 0, SAW_CREATED, NULL, 0},
	{"compacted", M_CREATED M_COMPACTED, -ERANGE, SAW_CREATED, "compacted (oldest kept: 5)", 5},
	{"compacted, then more", M_COMPACTED M_PUT, -ERANGE, "", "compacted", 5},
	{"canceled", M_CANCELED, -EPIPE, "", "canceled by etcd: permission denied", 0},
	{"gateway error object", M_PUT M_ERROR, -EIO, SAW_PUT, "etcdserver: no leader", 0},
	{"flat error object", M_ERROR_FLAT, -ETIMEDOUT, "", "request timed out", 0},
	{"garbage", "hello world\n", -EBADMSG, "", "not JSON", 0},
	{"garbage after a message", M_PUT "<html>", -EBADMSG, SAW_PUT, "not JSON", 0},
	{"array, not object", "[1,2]", -EBADMSG, "", "not a JSON object", 0},
	/* json-c takes single-quoted names even in strict mode: the missing
	 * header refuses it. */
	{"single quotes", "{'result':{}}", -EBADMSG, "", "without header", 0},
	{"single-quoted value", "{\"result\":'x'}", -EBADMSG, "", "not JSON", 0},
	{"not UTF-8", "{\"result\":{\"header\":{},\"x\":\"\xff\"}}", -EBADMSG, "", "not JSON", 0},
	{"no result", "{\"header\":{}}", -EBADMSG, "", "without result", 0},
	{"result not an object", "{\"result\":7}", -EBADMSG, "", "without result", 0},
	{"revision not a number", "{\"result\":{\"header\":{\"revision\":\"x\"}}}", -EBADMSG, "", "header.revision", 0},
	{"revision a float", "{\"result\":{\"header\":{\"revision\":1.5}}}", -EBADMSG, "", "header.revision", 0},
	{"events not an array", "{\"result\":{" HDR("4") ",\"events\":{}}}", -EBADMSG, "", "events is not an array", 0},
	{"event without kv", "{\"result\":{" HDR("4") ",\"events\":[{}]}}", -EBADMSG, "", "without kv", 0},
	{"bad base64 key", "{\"result\":{" HDR("4") ",\"events\":[{\"kv\":{\"key\":\"Zm9v!\"}}]}}", -EBADMSG, "", "kv is not", 0},
	{"key not a string", "{\"result\":{" HDR("4") ",\"events\":[{\"kv\":{\"key\":5}}]}}", -EBADMSG, "", "kv is not", 0},
	{"no key", "{\"result\":{" HDR("4") ",\"events\":[{\"kv\":{\"value\":\"eA==\"}}]}}", -EBADMSG, "", "kv is not", 0},
	{"unknown event type", "{\"result\":{" HDR("4") ",\"events\":[{\"type\":\"MOVE\",\"kv\":{\"key\":\"eA==\"}}]}}", -EBADMSG, "", "unknown event type", 0},
	{"half a message", "{\"result\":{" HDR("4"), 0, "", NULL, 0},
	{"whitespace only", "\n\n  \n", 0, "", NULL, 0},
};

#define N_STREAM (sizeof(stream_cases) / sizeof(stream_cases[0]))

/* Feeds input cut into pieces of size step (0: whole), and checks the
 * outcome is the same whatever the cut. */
static void run_stream(const struct stream_case *c, size_t step)
{
	struct seen seen = {0};
	struct kg_etcd_stream *s = kg_etcd_stream_create(record, &seen);
	cr_assert_not_null(s);
	size_t len = strlen(c->input);
	int r = 0;
	err[0] = '\0';
	for (size_t off = 0; off < len && r == 0;) {
		size_t n = step && step < len - off ? step : len - off;
		r = kg_etcd_stream_feed(s, c->input + off, n, err, sizeof(err));
		off += n;
	}
	cr_expect_eq(r, c->want, "%s, step %zu: returned %d (%s)", c->name, step, r, err);
	cr_expect_str_eq(seen.text, c->saw, "%s, step %zu", c->name, step);
	if (c->err_has)
		cr_expect(strstr(err, c->err_has) != NULL, "%s, step %zu: \"%s\"", c->name, step,
			  err);
	cr_expect_eq(kg_etcd_stream_compact_revision(s), c->compact, "%s", c->name);
	/* Finished stays finished, with the same message. */
	if (r != 0) {
		char again[sizeof(err)];
		cr_expect_eq(kg_etcd_stream_feed(s, M_PUT, strlen(M_PUT), again, sizeof(again)),
			     r);
		cr_expect_str_eq(again, err);
	}
	kg_etcd_stream_destroy(s);
}

ParameterizedTestParameters(stream, cases)
{
	static size_t idx[N_STREAM];
	for (size_t i = 0; i < N_STREAM; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, N_STREAM);
}

ParameterizedTest(size_t *i, stream, cases)
{
	static const size_t steps[] = {0, 1, 2, 3, 7, 64};
	for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++)
		run_stream(&stream_cases[*i], steps[k]);
}

/* Every place one message can be cut in two. */
Test(stream, every_split_point)
{
	const char *input = M_CREATED M_TWO;
	size_t len = strlen(input);
	for (size_t cut = 0; cut <= len; cut++) {
		struct seen seen = {0};
		struct kg_etcd_stream *s = kg_etcd_stream_create(record, &seen);
		cr_assert_not_null(s);
		cr_assert_eq(kg_etcd_stream_feed(s, input, cut, err, sizeof(err)), 0, "%zu: %s",
			     cut, err);
		cr_assert_eq(kg_etcd_stream_feed(s, input + cut, len - cut, err, sizeof(err)), 0,
			     "%zu: %s", cut, err);
		cr_expect_str_eq(seen.text, SAW_CREATED SAW_TWO, "cut at %zu", cut);
		kg_etcd_stream_destroy(s);
	}
}

/* A callback's error ends the stream at that event: later events of the
 * same message are not delivered. */
Test(stream, callback_stops)
{
	struct seen seen = {.fail_at = 2};
	struct kg_etcd_stream *s = kg_etcd_stream_create(record, &seen);
	cr_assert_not_null(s);
	const char *input = M_TWO M_PUT;
	cr_expect_eq(kg_etcd_stream_feed(s, input, strlen(input), err, sizeof(err)), -EINTR);
	cr_expect_str_eq(seen.text, "P foo/b=x @5/6\n");
	cr_expect_eq(seen.count, 2);
	kg_etcd_stream_destroy(s);
}

/* ---- unary calls against a fake gateway ---- */

/* Answers each connection's one request with reply, then closes. */
struct fake {
	int fd;
	int port;
	pthread_t thread;
	const char *reply; /* a whole HTTP response */
	char request[8192];
	int answered;
};

static void *fake_serve(void *arg)
{
	struct fake *f = arg;
	for (;;) {
		int c = accept(f->fd, NULL, NULL);
		if (c == -1)
			return NULL;
		size_t n = 0;
		/* Read the head and a Content-Length body. */
		for (;;) {
			ssize_t got = read(c, f->request + n, sizeof(f->request) - 1 - n);
			if (got <= 0)
				break;
			n += (size_t)got;
			f->request[n] = '\0';
			char *end = strstr(f->request, "\r\n\r\n");
			char *cl = strcasestr(f->request, "Content-Length:");
			if (end && cl && n >= (size_t)(end + 4 - f->request) + strtoul(cl + 15, NULL, 10))
				break;
		}
		size_t left = strlen(f->reply);
		const char *p = f->reply;
		while (left > 0) {
			ssize_t w = write(c, p, left);
			if (w <= 0)
				break;
			p += w;
			left -= (size_t)w;
		}
		f->answered++;
		close(c);
	}
}

static void fake_start(struct fake *f, const char *reply)
{
	memset(f, 0, sizeof(*f));
	f->reply = reply;
	f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_neq(f->fd, -1);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	cr_assert_eq(bind(f->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(f->fd, 8), 0);
	cr_assert_eq(getsockname(f->fd, (struct sockaddr *)&a, &alen), 0);
	f->port = ntohs(a.sin_port);
	cr_assert_eq(pthread_create(&f->thread, NULL, fake_serve, f), 0);
}

static void fake_stop(struct fake *f)
{
	/* shutdown wakes the blocked accept; then the thread can be joined. */
	shutdown(f->fd, SHUT_RDWR);
	pthread_join(f->thread, NULL);
	close(f->fd);
}

/* A port that refuses: bound, never listening. */
static int dead_port(int *fd)
{
	*fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	cr_assert_eq(bind(*fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(*fd, (struct sockaddr *)&a, &alen), 0);
	return ntohs(a.sin_port);
}

static char *http_reply(const char *status, const char *body)
{
	char *s;
	cr_assert_neq(asprintf(&s,
			       "HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
			       "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
			       status, strlen(body), body),
		      -1);
	return s;
}

enum call { CALL_RANGE, CALL_TXN, CALL_GRANT, CALL_KEEPALIVE };

struct unary_case {
	const char *name;
	enum call call;
	const char *status;
	const char *body;
	int want;
	const char *err_has;
};

static const struct unary_case unary_cases[] = {
	{"range ok", CALL_RANGE, "200 OK",
	 "{" HDR("9") ",\"kvs\":[{\"key\":\"Zm9vL2E=\",\"create_revision\":\"2\",\"mod_revision\":\"3\",\"version\":\"1\",\"value\":\"aGVsbG8=\"}],\"count\":\"1\"}",
	 0, NULL},
	{"range, no key", CALL_RANGE, "200 OK", "{" HDR("9") "}", 0, NULL},
	{"range, not JSON", CALL_RANGE, "200 OK", "<html>hi</html>", -EBADMSG, "not a JSON object"},
	{"range, empty body", CALL_RANGE, "200 OK", "", -EBADMSG, "not a JSON object"},
	{"range, no header", CALL_RANGE, "200 OK", "{\"kvs\":[]}", -EBADMSG, "no header.revision"},
	{"range, kvs an object", CALL_RANGE, "200 OK", "{" HDR("9") ",\"kvs\":{}}", -EBADMSG, "kvs is not an array"},
	{"range, bad base64", CALL_RANGE, "200 OK", "{" HDR("9") ",\"kvs\":[{\"key\":\"###\"}]}", -EBADMSG, "key-value"},
	{"range, revision garbage", CALL_RANGE, "200 OK", "{\"header\":{\"revision\":\"12abc\"}}", -EBADMSG, "no header.revision"},
	{"range, compacted", CALL_RANGE, "400 Bad Request",
	 "{\"error\":\"etcdserver: mvcc: required revision has been compacted\",\"message\":\"x\",\"code\":11}",
	 -ERANGE, "required revision has been compacted"},
	{"range, no leader", CALL_RANGE, "503 Service Unavailable",
	 "{\"error\":\"etcdserver: no leader\",\"code\":14}", -EIO, "no leader"},
	{"range, 500 plain", CALL_RANGE, "500 Internal Server Error", "oops", -EIO, "HTTP status 500: oops"},
	{"range, 404 JSON", CALL_RANGE, "404 Not Found", "{}", -EIO, "HTTP status 404"},
	{"txn ok", CALL_TXN, "200 OK", "{" HDR("10") ",\"succeeded\":true}", 0, NULL},
	{"txn lost", CALL_TXN, "200 OK", "{" HDR("10") "}", -ECANCELED, "changed since it was read"},
	{"txn lost, explicit", CALL_TXN, "200 OK", "{" HDR("10") ",\"succeeded\":false}", -ECANCELED, "retry"},
	{"txn, succeeded a string", CALL_TXN, "200 OK", "{" HDR("10") ",\"succeeded\":\"yes\"}", -EBADMSG, "not a boolean"},
	{"grant ok", CALL_GRANT, "200 OK", "{" HDR("3") ",\"ID\":\"7587\",\"TTL\":\"5\"}", 0, NULL},
	{"grant, error field", CALL_GRANT, "200 OK", "{" HDR("3") ",\"error\":\"lease exists\"}", -EIO, "lease exists"},
	{"grant, no ID", CALL_GRANT, "200 OK", "{" HDR("3") ",\"TTL\":\"5\"}", -EBADMSG, "lease ID"},
	{"keepalive ok", CALL_KEEPALIVE, "200 OK", "{\"result\":{" HDR("3") ",\"ID\":\"7587\",\"TTL\":\"5\"}}", 0, NULL},
	{"keepalive, expired", CALL_KEEPALIVE, "200 OK", "{\"result\":{" HDR("3") ",\"ID\":\"7587\"}}", -ENOENT, "has expired"},
	{"keepalive, unwrapped", CALL_KEEPALIVE, "200 OK", "{" HDR("3") ",\"TTL\":\"5\"}", -EBADMSG, "no result"},
	{"keepalive, stream error", CALL_KEEPALIVE, "200 OK", M_ERROR, -EIO, "no leader"},
};

#define N_UNARY (sizeof(unary_cases) / sizeof(unary_cases[0]))

ParameterizedTestParameters(unary, cases)
{
	static size_t idx[N_UNARY];
	for (size_t i = 0; i < N_UNARY; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, N_UNARY);
}

ParameterizedTest(size_t *i, unary, cases)
{
	const struct unary_case *c = &unary_cases[*i];
	struct fake f;
	char *reply = http_reply(c->status, c->body);
	fake_start(&f, reply);
	char ep[64];
	snprintf(ep, sizeof(ep), "http://127.0.0.1:%d", f.port);
	const char *eps[] = {ep};
	struct kg_etcd_opts o = {.endpoints = eps, .n_endpoints = 1, .timeout_ms = 2000};
	struct kg_etcd *e = kg_etcd_create(&o, err, sizeof(err));
	cr_assert_not_null(e, "%s", err);
	int r = -1;
	struct kg_etcd_range rg;
	int64_t x = 0;
	struct kg_etcd_op op = {.type = KG_ETCD_OP_PUT, .key = "foo/a", .value = "v", .value_len = 1};
	err[0] = '\0';
	switch (c->call) {
	case CALL_RANGE:
		r = kg_etcd_range(e, "foo/", true, &rg, err, sizeof(err));
		if (r == 0 && rg.n == 1) {
			cr_expect_str_eq(rg.kvs[0].key, "foo/a");
			cr_expect_eq(rg.kvs[0].value_len, 5);
			cr_expect_eq(rg.kvs[0].mod_revision, 3);
			cr_expect_eq(rg.kvs[0].create_revision, 2);
			cr_expect_eq(rg.revision, 9);
		}
		kg_etcd_range_free(&rg);
		/* The request named the prefix and its end. */
		cr_expect(strstr(f.request, "\"range_end\":\"Zm9vMA==\"") != NULL, "%s", f.request);
		break;
	case CALL_TXN:
		r = kg_etcd_txn(e, "foo/a", 3, &op, 1, &x, err, sizeof(err));
		cr_expect(strstr(f.request, "\"mod_revision\":\"3\"") != NULL, "%s", f.request);
		break;
	case CALL_GRANT:
		r = kg_etcd_lease_grant(e, 5, &x, err, sizeof(err));
		if (r == 0)
			cr_expect_eq(x, 7587);
		break;
	case CALL_KEEPALIVE:
		r = kg_etcd_lease_keepalive(e, 7587, &x, err, sizeof(err));
		if (r == 0)
			cr_expect_eq(x, 5);
		break;
	}
	cr_expect_eq(r, c->want, "%s: %d (%s)", c->name, r, err);
	if (c->err_has)
		cr_expect(strstr(err, c->err_has) != NULL, "%s: \"%s\"", c->name, err);
	kg_etcd_destroy(e);
	fake_stop(&f);
	free(reply);
}

/* The first endpoint refuses: the request goes to the second, and the
 * second is tried first next time. */
Test(unary, failover)
{
	struct fake f;
	char *reply = http_reply("200 OK", "{" HDR("9") "}");
	fake_start(&f, reply);
	int dead_fd;
	char ep1[64], ep2[64];
	snprintf(ep1, sizeof(ep1), "http://127.0.0.1:%d", dead_port(&dead_fd));
	snprintf(ep2, sizeof(ep2), "http://127.0.0.1:%d/", f.port);
	const char *eps[] = {ep1, ep2};
	struct kg_etcd_opts o = {.endpoints = eps, .n_endpoints = 2, .timeout_ms = 2000};
	struct kg_etcd *e = kg_etcd_create(&o, err, sizeof(err));
	cr_assert_not_null(e, "%s", err);
	struct kg_etcd_range rg;
	cr_expect_eq(kg_etcd_range(e, "k", false, &rg, err, sizeof(err)), 0, "%s", err);
	kg_etcd_range_free(&rg);
	cr_expect_eq(f.answered, 1);
	/* A write, too: nothing was sent to the dead one. */
	cr_expect_eq(kg_etcd_put(e, "k", "v", 1, 0, NULL, err, sizeof(err)), 0, "%s", err);
	cr_expect_eq(f.answered, 2);
	snprintf(ep2, sizeof(ep2), "http://127.0.0.1:%d", f.port);
	cr_expect_str_eq(kg_etcd_endpoint(e), ep2);
	kg_etcd_destroy(e);
	fake_stop(&f);
	close(dead_fd);
	free(reply);
}

Test(unary, all_endpoints_down)
{
	int fd1, fd2;
	char ep1[64], ep2[64];
	snprintf(ep1, sizeof(ep1), "http://127.0.0.1:%d", dead_port(&fd1));
	snprintf(ep2, sizeof(ep2), "http://127.0.0.1:%d", dead_port(&fd2));
	const char *eps[] = {ep1, ep2};
	struct kg_etcd_opts o = {.endpoints = eps, .n_endpoints = 2, .timeout_ms = 1000};
	struct kg_etcd *e = kg_etcd_create(&o, err, sizeof(err));
	cr_assert_not_null(e, "%s", err);
	struct kg_etcd_range rg;
	cr_expect_eq(kg_etcd_range(e, "k", false, &rg, err, sizeof(err)), -ECONNREFUSED);
	cr_expect(strstr(err, "127.0.0.1") != NULL, "%s", err);
	kg_etcd_range_free(&rg);
	kg_etcd_destroy(e);
	close(fd1);
	close(fd2);
}

Test(unary, create_refuses)
{
	const struct {
		const char *ep;
		const char *cert, *key;
		const char *err_has;
	} cases[] = {
		{"127.0.0.1:2379", NULL, NULL, "expected http://HOST:PORT"},
		{"etcd://127.0.0.1:2379", NULL, NULL, "expected http://HOST:PORT"},
		{"http://", NULL, NULL, "expected http://HOST:PORT"},
		{"http://a b", NULL, NULL, "expected http://HOST:PORT"},
		{"https://127.0.0.1:2379", "/nonexistent.pem", NULL, "go together"},
		{"https://127.0.0.1:2379", "/nonexistent.pem", "/nonexistent.key",
		 "/nonexistent.pem"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *eps[] = {cases[i].ep};
		struct kg_etcd_opts o = {.endpoints = eps, .n_endpoints = 1,
					 .cert = cases[i].cert, .key = cases[i].key};
		cr_expect_null(kg_etcd_create(&o, err, sizeof(err)), "%s", cases[i].ep);
		cr_expect(strstr(err, cases[i].err_has) != NULL, "%s: %s", cases[i].ep, err);
	}
	struct kg_etcd_opts none = {0};
	cr_expect_null(kg_etcd_create(&none, err, sizeof(err)));
	cr_expect(strstr(err, "no endpoint") != NULL, "%s", err);
}
