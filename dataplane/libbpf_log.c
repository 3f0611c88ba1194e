/* See libbpf_log.h. */
#include "libbpf_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <bpf/libbpf.h>

#include <kgate/log.h>

/* libbpf's own messages (verifier logs, probe failures) go through kgate's
 * logger, one log line per text line: warnings as warnings, the rest at
 * debug level. libbpf prefixes its messages with "libbpf: " itself. */
__attribute__((format(printf, 2, 0))) static int libbpf_print(enum libbpf_print_level level,
								 const char *fmt, va_list ap)
{
	int kl = level == LIBBPF_WARN ? KG_LOG_WARN : KG_LOG_DEBUG;

	if (kl > kg_log_level)
		return 0;
	char text[16384];
	vsnprintf(text, sizeof(text), fmt, ap);
	for (char *line = text, *next; *line; line = next) {
		size_t len = strcspn(line, "\n");
		next = line[len] ? line + len + 1 : line + len;
		line[len] = '\0';
		if (len)
			kg_log_always(kl, "libbpf.message", KV("text", line));
	}
	return 0;
}

void kg_libbpf_log_init(void)
{
	libbpf_set_print(libbpf_print);
}
