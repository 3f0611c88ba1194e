/* log.c: the logfmt writer (quoting, escaping, truncation, the journald and
 * ts= forms), the level filter, journald detection, level names, and the
 * one-line rule for error text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include <kgate/log.h>

#include "certgen.h"

#define END ((struct kg_log_field){.type = KG_LOGV_END})

/* 2026-01-02T03:04:05.678Z */
static const struct timespec fixed_ts = {.tv_sec = 1767323045, .tv_nsec = 678901234};

static char *fmt(char *buf, size_t cap, int level, bool journal, const char *event,
		 const struct kg_log_field *f)
{
	size_t n = kg_log_format(buf, cap, level, journal, &fixed_ts, event, f);
	cr_assert_lt(n, cap);
	buf[n] = '\0';
	return buf;
}

/* A strict check of one line, the C twin of tests/tools/logfmt.py: keys
 * [A-Za-z0-9_.-]+, bare values of printable ASCII without space, '"', '='
 * or '\', quoted values with \" \\ \n \r \t \xHH escapes only, one space
 * between pairs, exactly one newline at the end. Returns NULL if valid,
 * else what is wrong. */
static const char *logfmt_invalid(const char *line, size_t len)
{
	if (len == 0 || line[len - 1] != '\n')
		return "no newline at the end";
	const char *p = line, *end = line + len - 1;
	if (*p == '<') {
		if (len < 4 || p[1] < '0' || p[1] > '7' || p[2] != '>')
			return "bad <N> prefix";
		p += 3;
	}
	bool first = true;
	while (p < end) {
		if (!first && *p++ != ' ')
			return "pairs not separated by one space";
		first = false;
		const char *k = p;
		while (p < end && (strchr("_.-", *p) || (*p >= 'a' && *p <= 'z') ||
				   (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
			p++;
		if (p == k)
			return "empty key";
		if (p >= end || *p++ != '=')
			return "key without '='";
		if (p < end && *p == '"') {
			for (p++;; p++) {
				if (p >= end)
					return "unterminated quote";
				unsigned char c = (unsigned char)*p;
				if (c == '"')
					break;
				if (c < 0x20 || c >= 0x7f)
					return "raw control or non-ASCII byte in a quoted value";
				if (c != '\\')
					continue;
				p++;
				if (p < end && strchr("\"\\nrt", *p))
					continue;
				if (p + 2 < end && *p == 'x' && strchr("0123456789abcdef", p[1]) &&
				    strchr("0123456789abcdef", p[2])) {
					p += 2;
					continue;
				}
				return "bad escape";
			}
			p++;
		} else {
			const char *v = p;
			while (p < end && (unsigned char)*p > ' ' && (unsigned char)*p < 0x7f &&
			       !strchr("\"=\\", *p))
				p++;
			if (p == v)
				return "empty bare value";
		}
	}
	for (const char *q = line; q < end; q++)
		if (*q == '\n')
			return "newline inside the line";
	return NULL;
}

Test(log, ts_form_exact)
{
	char buf[512];
	struct kg_log_field f[] = {KV("listener", "web"), KV("addr", "127.0.0.1:443"), END};
	cr_expect_str_eq(fmt(buf, sizeof(buf), KG_LOG_NOTICE, false, "listener.listening", f),
			 "ts=2026-01-02T03:04:05.678Z level=notice event=listener.listening "
			 "listener=web addr=127.0.0.1:443\n");
}

Test(log, journal_form_has_prefix_and_no_ts)
{
	char buf[512];
	struct kg_log_field f[] = {KV("worker", 1u), END};
	cr_expect_str_eq(fmt(buf, sizeof(buf), KG_LOG_WARN, true, "log.suppressed", f),
			 "<4>level=warn event=log.suppressed worker=1\n");
	cr_expect_str_eq(fmt(buf, sizeof(buf), KG_LOG_ERR, true, "kgated.stopped", NULL),
			 "<3>level=error event=kgated.stopped\n");
}

Test(log, typed_values)
{
	char buf[512];
	unsigned long long big = 18446744073709551615ull;
	struct kg_log_field f[] = {KV("i", -42),	  KV("u", big), KV("t", (bool)true),
				   KV("f", (bool)(1 == 2)), KV("s", (char *)NULL), END};
	cr_expect_str_eq(fmt(buf, sizeof(buf), KG_LOG_INFO, true, "x.y", f),
			 "<6>level=info event=x.y i=-42 u=18446744073709551615 t=true f=false "
			 "s=\"\"\n");
}

static const struct {
	const char *in, *want;
} values[] = {
	{"plain-value_1.2:3/x[y]", "plain-value_1.2:3/x[y]"},
	{"", "\"\""},
	{"a b", "\"a b\""},
	{"a\"b", "\"a\\\"b\""},
	{"a=b", "\"a=b\""},
	{"a\\b", "\"a\\\\b\""},
	{"two\nlines", "\"two\\nlines\""},
	{"cr\rlf\r\n\ttab", "\"cr\\rlf\\r\\n\\ttab\""},
	{"\x1b[31mred\x1b[0m", "\"\\x1b[31mred\\x1b[0m\""},
	{"del\x7f", "\"del\\x7f\""},
	{"caf\xc3\xa9", "\"caf\\xc3\\xa9\""},
	{"x\n<3>level=error event=forged", "\"x\\n<3>level=error event=forged\""},
};

TC_INDEX_PARAMS(log, value_quoting, sizeof(values) / sizeof(values[0]))
ParameterizedTest(size_t *i, log, value_quoting)
{
	char buf[512], want[512];
	struct kg_log_field f[] = {KV("v", values[*i].in), END};
	snprintf(want, sizeof(want), "<6>level=info event=t.v v=%s\n", values[*i].want);
	fmt(buf, sizeof(buf), KG_LOG_INFO, true, "t.v", f);
	cr_expect_str_eq(buf, want, "case %zu", *i);
	cr_expect_null(logfmt_invalid(buf, strlen(buf)), "case %zu: %s", *i, buf);
}

Test(log, keys_and_event_ids_cannot_break_the_line)
{
	char buf[512];
	struct kg_log_field f[] = {KV("a b=c\n", "v"), KV("", "w"), END};
	cr_expect_str_eq(fmt(buf, sizeof(buf), KG_LOG_INFO, true, "bad event\n", f),
			 "<6>level=info event=bad_event_ a_b_c_=v _=w\n");
}

/* Over-long lines, whatever the sizes and the characters: always one valid
 * line within the buffer, marked truncated=true. */
Test(log, truncation_keeps_a_valid_line)
{
	static const char *const fills[] = {"a", "a b", "\n", "\"", "\xff", "x\\"};
	char big[3000], buf[400];
	for (size_t fi = 0; fi < sizeof(fills) / sizeof(fills[0]); fi++) {
		size_t fl = strlen(fills[fi]);
		size_t n = 0;
		while (n + fl < sizeof(big)) {
			memcpy(big + n, fills[fi], fl);
			n += fl;
		}
		big[n] = '\0';
		for (size_t cap = 64; cap <= sizeof(buf); cap += 7) {
			struct kg_log_field f[] = {KV("listener", "web"), KV("v", big),
						   KV("after", 1), END};
			size_t len = kg_log_format(buf, cap, KG_LOG_WARN, cap % 2 == 0, &fixed_ts,
						   "t.trunc", f);
			cr_assert_leq(len, cap, "fill %zu cap %zu", fi, cap);
			const char *why = logfmt_invalid(buf, len);
			cr_assert_null(why, "fill %zu cap %zu: %s: %.*s", fi, cap, why, (int)len,
				       buf);
			cr_assert(len > 16 && memcmp(buf + len - 16, " truncated=true\n", 16) == 0,
				  "fill %zu cap %zu: %.*s", fi, cap, (int)len, buf);
		}
	}
}

Test(log, many_fields_cut_at_a_field)
{
	char buf[128];
	struct kg_log_field f[40];
	for (int i = 0; i < 39; i++)
		f[i] = KV("key", i);
	f[39] = END;
	size_t len = kg_log_format(buf, sizeof(buf), KG_LOG_INFO, true, &fixed_ts, "t.many", f);
	cr_assert_leq(len, sizeof(buf));
	cr_assert_null(logfmt_invalid(buf, len), "%.*s", (int)len, buf);
	cr_assert(strstr(buf, " truncated=true\n"));
}

static int evaluated;
static const char *counted(const char *s)
{
	evaluated++;
	return s;
}

static char *read_all(int fd, char *buf, size_t cap)
{
	ssize_t n = read(fd, buf, cap - 1);
	cr_assert_geq(n, 0);
	buf[n] = '\0';
	return buf;
}

Test(log, level_filter_skips_formatting_and_arguments)
{
	int p[2];
	char out[4096];
	cr_assert_eq(pipe(p), 0);
	kg_log_set_fd(p[1]);
	kg_log_set_journal(true);
	kg_log_level = KG_LOG_WARN;
	log_info("t.quiet", KV("v", counted("x")));
	log_debug("t.quiet", KV("v", counted("x")));
	cr_expect_eq(evaluated, 0, "arguments below the level were evaluated");
	log_warn("t.loud", KV("v", counted("x")));
	cr_expect_eq(evaluated, 1);
	close(p[1]);
	cr_expect_str_eq(read_all(p[0], out, sizeof(out)), "<4>level=warn event=t.loud v=x\n");
	close(p[0]);
}

Test(log, emit_ts_form_outside_the_journal)
{
	int p[2];
	char out[4096];
	cr_assert_eq(pipe(p), 0);
	kg_log_set_fd(p[1]);
	kg_log_set_journal(false);
	kg_log_level = KG_LOG_INFO;
	log_notice("kgated.ready", KV("workers", 2u));
	close(p[1]);
	read_all(p[0], out, sizeof(out));
	close(p[0]);
	cr_expect_eq(strncmp(out, "ts=", 3), 0, "%s", out);
	cr_expect(strstr(out, "Z level=notice event=kgated.ready workers=2\n"), "%s", out);
	cr_expect_null(logfmt_invalid(out, strlen(out)), "%s", out);
}

Test(log, journal_stream_must_name_stderr)
{
	char path[] = "/tmp/kg-test-log-XXXXXX", env[64];
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	unlink(path);
	cr_assert_eq(dup2(fd, 2), 2); /* Criterion runs each test in its own process */
	struct stat st;
	cr_assert_eq(fstat(2, &st), 0);
	unsetenv("JOURNAL_STREAM");
	cr_expect_not(kg_log_stderr_is_journal());
	snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", env, 1);
	cr_expect(kg_log_stderr_is_journal());
	/* stderr redirected after systemd started us: another file. */
	snprintf(env, sizeof(env), "%llu:%llu", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino + 1);
	setenv("JOURNAL_STREAM", env, 1);
	cr_expect_not(kg_log_stderr_is_journal());
	setenv("JOURNAL_STREAM", "garbage", 1);
	cr_expect_not(kg_log_stderr_is_journal());
	close(fd);
}

static const struct {
	const char *in, *want;
} one_line[] = {
	{"", ""},
	{"plain text, unchanged: 100%", "plain text, unchanged: 100%"},
	{"two\nlines", "two?lines"},
	{"cr\rlf\r\n", "cr?lf??"},
	{"\x1b[31mred\x1b[0m", "?[31mred?[0m"},
	{"tab\tdel\x7f", "tab?del?"},
	{"UTF-8 stays: \xc3\xa9\xe2\x82\xac", "UTF-8 stays: \xc3\xa9\xe2\x82\xac"},
};

TC_INDEX_PARAMS(log, text_one_line, sizeof(one_line) / sizeof(one_line[0]))
ParameterizedTest(size_t *i, log, text_one_line)
{
	char buf[64];
	strcpy(buf, one_line[*i].in);
	kg_text_one_line(buf);
	cr_expect_str_eq(buf, one_line[*i].want, "case %zu", *i);
}

Test(log, level_names)
{
	cr_expect_eq(kg_log_level_parse("warn"), KG_LOG_WARN);
	cr_expect_eq(kg_log_level_parse("debug"), KG_LOG_DEBUG);
	cr_expect_eq(kg_log_level_parse("loud"), -1);
	cr_expect_str_eq(kg_log_level_name(KG_LOG_ERR), "error");
	cr_expect_str_eq(kg_log_level_name(KG_LOG_WARN), "warn");
	cr_expect_eq(kg_log_level_parse(kg_log_level_name(KG_LOG_NOTICE)), KG_LOG_NOTICE);
}
