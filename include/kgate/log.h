/* kgated's logger: one logfmt line per event,
 *
 *   ts=2026-11-27T07:22:05.123Z level=notice event=listener.started listener=web addr=[::]:8443
 *
 * A call names a level, a stable event id and typed key/value fields; the
 * writer quotes and escapes every value itself, so text that carries input
 * (a peer's subject, a JSON key, a file name) can never end the line, add a
 * field or forge another line:
 *
 *   log_notice("listener.started", KV("listener", name), KV("addr", addr));
 *   log_warn("control.accept_failed", KV_ERRNO(errno));
 *
 * KV picks the field type from the C type of the value (strings, integers,
 * bool); a value of any other type is a compile error, which keeps "%s of a
 * pointer" mistakes out. Arguments are not evaluated below the configured
 * level, so hot paths can call log_debug. The catalogue of events and keys
 * is the LOGGING section of doc/kgated.8.scd.
 *
 * Output: stderr. When stderr is the journal (systemd sets JOURNAL_STREAM to
 * its device:inode), lines start with the "<N>" syslog priority prefix that
 * journald turns into the entry's priority and carry no ts= (journald stamps
 * entries itself); otherwise they start with ts= in RFC 3339 UTC. */
#ifndef KGATE_LOG_H
#define KGATE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

enum kg_log_level {
	KG_LOG_ERR = 3,
	KG_LOG_WARN = 4,
	KG_LOG_NOTICE = 5,
	KG_LOG_INFO = 6,
	KG_LOG_DEBUG = 7,
};

extern int kg_log_level;

enum kg_log_type {
	KG_LOGV_END, /* terminates a field list (internal) */
	KG_LOGV_STR,
	KG_LOGV_INT,
	KG_LOGV_UINT,
	KG_LOGV_BOOL,
};

struct kg_log_field {
	const char *key;
	enum kg_log_type type;
	union {
		const char *s; /* NULL is written as an empty value */
		long long i;
		unsigned long long u;
		bool b;
	} v;
};

static inline struct kg_log_field kg_lf_str(const char *k, const char *v)
{
	return (struct kg_log_field){.key = k, .type = KG_LOGV_STR, .v.s = v};
}
static inline struct kg_log_field kg_lf_int(const char *k, long long v)
{
	return (struct kg_log_field){.key = k, .type = KG_LOGV_INT, .v.i = v};
}
static inline struct kg_log_field kg_lf_uint(const char *k, unsigned long long v)
{
	return (struct kg_log_field){.key = k, .type = KG_LOGV_UINT, .v.u = v};
}
static inline struct kg_log_field kg_lf_bool(const char *k, bool v)
{
	return (struct kg_log_field){.key = k, .type = KG_LOGV_BOOL, .v.b = v};
}

/* One typed field; the value's C type chooses the representation. A
 * comparison (and "true") is an int in C: write KV("k", (bool)(a != b)). */
#define KV(key, val)                                                           \
	_Generic((val),                                                        \
		char *: kg_lf_str,                                             \
		const char *: kg_lf_str,                                       \
		_Bool: kg_lf_bool,                                             \
		signed char: kg_lf_int,                                        \
		short: kg_lf_int,                                              \
		int: kg_lf_int,                                                \
		long: kg_lf_int,                                               \
		long long: kg_lf_int,                                          \
		unsigned char: kg_lf_uint,                                     \
		unsigned short: kg_lf_uint,                                    \
		unsigned int: kg_lf_uint,                                      \
		unsigned long: kg_lf_uint,                                     \
		unsigned long long: kg_lf_uint)((key), (val))
/* err="<strerror text>" for a positive errno value. */
#define KV_ERRNO(e) kg_lf_str("err", strerror(e))

/* Formats one line into buf (cap bytes, at least 64) and returns its length,
 * newline included, no NUL. journal: "<N>" prefix and no ts=; otherwise ts=
 * from *now. A line that does not fit is cut at a field or inside a value
 * (whose quote is closed) and ends in "truncated=true": still one valid
 * logfmt line. Pure, for tests; kg_log_emit uses it. */
size_t kg_log_format(char *buf, size_t cap, int level, bool journal, const struct timespec *now,
		     const char *event, const struct kg_log_field *fields);
/* Writes one event (fields end with a KG_LOGV_END entry) regardless of the
 * level: the macros below test the level first. One write per line, under a
 * lock, so lines of several threads never interleave. */
void kg_log_emit(int level, const char *event, const struct kg_log_field *fields);
/* Whether lines carry the journald prefix (and no ts=): detected from
 * JOURNAL_STREAM at the first line; tests and --log-... may force it. */
void kg_log_set_journal(bool journal);
/* true when stderr (fd 2) is the stream JOURNAL_STREAM names. */
bool kg_log_stderr_is_journal(void);
/* Where lines go (default 2, stderr); for tests. */
void kg_log_set_fd(int fd);

/* Replaces control characters (newline, escape, ...) in s with '?', so an
 * error message that carries input (a JSON key, a file name) and is sent
 * back to a control client stays one line. Log lines need not use it: the
 * logfmt writer escapes every value. */
void kg_text_one_line(char *s);
/* Parses "err", "warn", "notice", "info", "debug"; -1 if unknown. */
int kg_log_level_parse(const char *name);
/* The name written as level=: error, warn, notice, info, debug. */
const char *kg_log_level_name(int level);

/* The END entry after the caller's fields also makes an event without
 * fields valid standard C (a variadic macro needs one argument). */
#define KG_LOG_END_ ((struct kg_log_field){.key = NULL, .type = KG_LOGV_END})
#define KG_LOG_EMIT_(level, event, ...)                                        \
	do {                                                                   \
		const struct kg_log_field kg_lf_[] = {__VA_ARGS__};            \
		kg_log_emit((level), (event), kg_lf_);                         \
	} while (0)

/* kg_log(level, "event.id", KV(...), ...): nothing below the level is
 * evaluated. */
#define kg_log(level, ...)                                                     \
	do {                                                                   \
		if ((level) <= kg_log_level)                                   \
			KG_LOG_EMIT_((level), __VA_ARGS__, KG_LOG_END_);       \
	} while (0)
/* The same without the level test, for lines an operator asked for
 * explicitly (access log) or whose caller tested the level already. */
#define kg_log_always(level, ...) KG_LOG_EMIT_((level), __VA_ARGS__, KG_LOG_END_)

#define log_err(...) kg_log(KG_LOG_ERR, __VA_ARGS__)
#define log_warn(...) kg_log(KG_LOG_WARN, __VA_ARGS__)
#define log_notice(...) kg_log(KG_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) kg_log(KG_LOG_INFO, __VA_ARGS__)
#define log_debug(...) kg_log(KG_LOG_DEBUG, __VA_ARGS__)

#endif
