/* JSON paths in error messages ("listeners[0].routes[2].match.host:
 * reason"), for the parsers of document parts that live in their own
 * module (access.c, routes.c). Paths only feed messages: a (theoretical)
 * truncation is acceptable. */
#ifndef KGATE_JPATH_H
#define KGATE_JPATH_H

#include <stddef.h>

#define KG_JPATH_MAX 256

/* "<path>: <reason>" into err, made one line (keys and values come from
 * the document); returns -EINVAL. */
int kg_jpath_fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* out = "parent.key" / "parent[i]" (out holds KG_JPATH_MAX bytes). */
void kg_jpath_member(char *out, const char *parent, const char *key);
void kg_jpath_index(char *out, const char *parent, size_t i);

#endif
