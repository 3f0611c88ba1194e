/* JSON paths in error messages (jpath.h). */
#include "jpath.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "kgate/log.h"

int kg_jpath_fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
{
	int n = snprintf(err, errlen, "%s: ", path);
	if (n >= 0 && (size_t)n < errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	/* Keys come from the document: a newline in one must not split the
	 * log line or the reply that carries the message. */
	kg_text_one_line(err);
	return -EINVAL;
}

void kg_jpath_member(char *out, const char *parent, const char *key)
{
	if (snprintf(out, KG_JPATH_MAX, "%s.%s", parent, key) < 0)
		out[0] = '\0';
}

void kg_jpath_index(char *out, const char *parent, size_t i)
{
	if (snprintf(out, KG_JPATH_MAX, "%s[%zu]", parent, i) < 0)
		out[0] = '\0';
}
