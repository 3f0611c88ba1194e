/* The logfmt writer (log.h): formatting into a fixed buffer, escaping, and
 * the choice between journald's priority prefix and a ts= field. */
#include <kgate/log.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int kg_log_level = KG_LOG_INFO;

/* Longer lines are cut (kg_log_format): an access log line with a long
 * request target still fits, and a line stays one write(2) on a pipe
 * (PIPE_BUF is 4096, which keeps it atomic there even without the lock). */
#define LINE_MAX_BYTES 2048
/* Room kept at the end of the buffer for " truncated=true\n". */
#define TRUNC_TAIL " truncated=true"
#define TRUNC_RESERVE (sizeof(TRUNC_TAIL) - 1 + 1)

enum journal_mode { JOURNAL_UNKNOWN, JOURNAL_NO, JOURNAL_YES };
static _Atomic int journal_mode = JOURNAL_UNKNOWN;
static _Atomic int out_fd = 2;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

const char *kg_log_level_name(int level)
{
	switch (level) {
	case KG_LOG_ERR: return "error";
	case KG_LOG_WARN: return "warn";
	case KG_LOG_NOTICE: return "notice";
	case KG_LOG_INFO: return "info";
	default: return "debug";
	}
}

struct lbuf {
	char *p;
	size_t cap; /* usable bytes: the buffer minus TRUNC_RESERVE */
	size_t len;
	bool truncated;
};

static bool put(struct lbuf *b, const char *s, size_t n)
{
	if (b->len + n > b->cap)
		return false;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return true;
}

/* Keys and event ids come from code, but a wrong one must not break the
 * line either: anything outside [A-Za-z0-9_.-] becomes '_'. */
static bool put_name(struct lbuf *b, const char *s)
{
	if (!s || !*s)
		s = "_";
	for (; *s; s++) {
		char c = *s;
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
		if (!put(b, ok ? s : "_", 1))
			return false;
	}
	return true;
}

/* A value goes out bare when it is printable ASCII without space, '"',
 * '=' or '\'; otherwise quoted. */
static bool needs_quotes(const char *s)
{
	if (!*s)
		return true;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\')
			return true;
	}
	return false;
}

/* The escaped form of one byte inside quotes: \" \\ \n \r \t, \xHH for other
 * control bytes and for every byte >= 0x7f (log lines stay ASCII, so no
 * terminal escape, invalid UTF-8 or bidirectional override gets through). */
static size_t escape_byte(unsigned char c, char out[4])
{
	static const char hex[] = "0123456789abcdef";
	switch (c) {
	case '"': memcpy(out, "\\\"", 2); return 2;
	case '\\': memcpy(out, "\\\\", 2); return 2;
	case '\n': memcpy(out, "\\n", 2); return 2;
	case '\r': memcpy(out, "\\r", 2); return 2;
	case '\t': memcpy(out, "\\t", 2); return 2;
	default: break;
	}
	if (c < ' ' || c >= 0x7f) {
		out[0] = '\\';
		out[1] = 'x';
		out[2] = hex[c >> 4];
		out[3] = hex[c & 15];
		return 4;
	}
	out[0] = (char)c;
	return 1;
}

/* Writes the value; when it does not fit, as much of it as fits (text only:
 * a cut number would be a wrong number), the closing quote, and marks the
 * line truncated. */
static void put_value(struct lbuf *b, const char *s, bool cuttable)
{
	if (!needs_quotes(s)) {
		size_t n = strlen(s);
		if (put(b, s, n))
			return;
		b->truncated = true;
		/* Bare and too long: cut it, still bare (it has no specials). */
		if (cuttable)
			put(b, s, b->cap - b->len);
		return;
	}
	/* Quoted: keep one byte for the closing quote at all times. */
	if (b->len + 2 > b->cap) {
		b->truncated = true;
		return;
	}
	b->p[b->len++] = '"';
	b->cap--;
	for (; *s; s++) {
		char esc[4];
		size_t n = escape_byte((unsigned char)*s, esc);
		if (!put(b, esc, n)) {
			b->truncated = true;
			break;
		}
	}
	b->cap++;
	b->p[b->len++] = '"';
}

static void put_field(struct lbuf *b, const struct kg_log_field *f)
{
	char num[32];
	const char *text = num;
	switch (f->type) {
	case KG_LOGV_STR: text = f->v.s ? f->v.s : ""; break;
	case KG_LOGV_INT: snprintf(num, sizeof(num), "%lld", f->v.i); break;
	case KG_LOGV_UINT: snprintf(num, sizeof(num), "%llu", f->v.u); break;
	case KG_LOGV_BOOL: text = f->v.b ? "true" : "false"; break;
	case KG_LOGV_END: return;
	}
	size_t mark = b->len;
	if (!put(b, " ", 1) || !put_name(b, f->key) || !put(b, "=", 1)) {
		b->len = mark; /* no half key */
		b->truncated = true;
		return;
	}
	size_t value_at = b->len;
	put_value(b, text, f->type == KG_LOGV_STR);
	if (b->len == value_at)
		b->len = mark; /* no key without its value */
}

size_t kg_log_format(char *buf, size_t cap, int level, bool journal, const struct timespec *now,
		     const char *event, const struct kg_log_field *fields)
{
	struct lbuf b = {.p = buf, .cap = cap - TRUNC_RESERVE};
	char head[96];
	int n;
	if (journal) {
		n = snprintf(head, sizeof(head), "<%d>level=%s", level, kg_log_level_name(level));
	} else {
		struct tm tm;
		gmtime_r(&now->tv_sec, &tm);
		n = snprintf(head, sizeof(head),
			     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s", tm.tm_year + 1900,
			     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
			     now->tv_nsec / 1000000, kg_log_level_name(level));
	}
	if (n > 0)
		put(&b, head, (size_t)n < sizeof(head) ? (size_t)n : sizeof(head) - 1);
	put(&b, " event=", 7);
	if (!put_name(&b, event))
		b.truncated = true;
	for (const struct kg_log_field *f = fields; f && f->type != KG_LOGV_END; f++) {
		put_field(&b, f);
		if (b.truncated)
			break;
	}
	b.cap = cap; /* the reserve is for the tail below */
	if (b.truncated)
		put(&b, TRUNC_TAIL, sizeof(TRUNC_TAIL) - 1);
	put(&b, "\n", 1);
	return b.len;
}

bool kg_log_stderr_is_journal(void)
{
	/* systemd.exec(5): JOURNAL_STREAM is "device:inode" of the stream
	 * connected to stdout/stderr; compare with fd 2 so a redirect made
	 * after systemd started us (a pipe to a file) is not mistaken. */
	const char *js = getenv("JOURNAL_STREAM");
	if (!js)
		return false;
	unsigned long long dev, ino;
	char extra;
	if (sscanf(js, "%llu:%llu%c", &dev, &ino, &extra) != 2)
		return false;
	struct stat st;
	if (fstat(2, &st) == -1)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void kg_log_set_journal(bool journal)
{
	atomic_store(&journal_mode, journal ? JOURNAL_YES : JOURNAL_NO);
}

void kg_log_set_fd(int fd)
{
	atomic_store(&out_fd, fd);
}

static bool journal_now(void)
{
	int m = atomic_load(&journal_mode);
	if (m == JOURNAL_UNKNOWN) {
		m = kg_log_stderr_is_journal() ? JOURNAL_YES : JOURNAL_NO;
		atomic_store(&journal_mode, m);
	}
	return m == JOURNAL_YES;
}

void kg_log_emit(int level, const char *event, const struct kg_log_field *fields)
{
	char line[LINE_MAX_BYTES];
	struct timespec now = {0};
	bool journal = journal_now();
	if (!journal)
		clock_gettime(CLOCK_REALTIME, &now);
	size_t len = kg_log_format(line, sizeof(line), level, journal, &now, event, fields);
	int fd = atomic_load(&out_fd);
	/* One line, one lock: lines from workers never interleave. A failed
	 * write has nowhere to be reported; the line is lost. */
	pthread_mutex_lock(&out_lock);
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, line + off, len - off);
		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	pthread_mutex_unlock(&out_lock);
}

void kg_text_one_line(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

int kg_log_level_parse(const char *name)
{
	static const struct {
		const char *name;
		int level;
	} levels[] = {
		{"err", KG_LOG_ERR},      {"error", KG_LOG_ERR},
		{"warn", KG_LOG_WARN},    {"warning", KG_LOG_WARN},
		{"notice", KG_LOG_NOTICE}, {"info", KG_LOG_INFO},
		{"debug", KG_LOG_DEBUG},
	};
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(name, levels[i].name) == 0)
			return levels[i].level;
	return -1;
}
