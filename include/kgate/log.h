/* Level-tested logging for kgated: arguments are not formatted when the
 * message's level is below the configured one. Lines go to stderr as
 * "<N>LEVEL: message" where <N> is the syslog priority prefix that journald
 * understands, so levels survive systemd's capture of stderr. */
#ifndef KGATE_LOG_H
#define KGATE_LOG_H

#include <stdarg.h>

enum kg_log_level {
	KG_LOG_ERR = 3,
	KG_LOG_WARN = 4,
	KG_LOG_NOTICE = 5,
	KG_LOG_INFO = 6,
	KG_LOG_DEBUG = 7,
};

extern int kg_log_level;

void kg_log_write(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void kg_log_vwrite(int level, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));
/* Replaces control characters (newline, escape, ...) in s with '?', so
 * text that carries input (a JSON key, a file name, a peer's subject)
 * stays one line and cannot forge log lines or terminal escapes. Every
 * log line and every error message of config/certs loading passes here. */
void kg_text_one_line(char *s);
/* Parses "err", "warn", "notice", "info", "debug"; -1 if unknown. */
int kg_log_level_parse(const char *name);

#define kg_log(level, ...)                                                     \
	do {                                                                   \
		if ((level) <= kg_log_level)                                   \
			kg_log_write((level), __VA_ARGS__);                    \
	} while (0)

#define log_err(...) kg_log(KG_LOG_ERR, __VA_ARGS__)
#define log_warn(...) kg_log(KG_LOG_WARN, __VA_ARGS__)
#define log_notice(...) kg_log(KG_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) kg_log(KG_LOG_INFO, __VA_ARGS__)
#define log_debug(...) kg_log(KG_LOG_DEBUG, __VA_ARGS__)

#endif
