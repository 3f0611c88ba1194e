#include <kgate/log.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

int kg_log_level = KG_LOG_INFO;

static const char *level_name(int level)
{
	switch (level) {
	case KG_LOG_ERR: return "error";
	case KG_LOG_WARN: return "warning";
	case KG_LOG_NOTICE: return "notice";
	case KG_LOG_INFO: return "info";
	default: return "debug";
	}
}

void kg_log_vwrite(int level, const char *fmt, va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "<%d>%s: ", level, level_name(level));
	if (n < 0)
		return;
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	kg_text_one_line(line + n);
	/* One fputs per line: stdio locks the stream, so lines from several
	 * workers never interleave. */
	size_t len = strlen(line);
	if (len < sizeof(line) - 1) {
		line[len] = '\n';
		line[len + 1] = '\0';
	} else {
		line[sizeof(line) - 2] = '\n';
	}
	fputs(line, stderr);
}

void kg_text_one_line(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

void kg_log_write(int level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	kg_log_vwrite(level, fmt, ap);
	va_end(ap);
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
