/* The daemon's error convention (STYLE 6): an operation returns 0 or
 * -errno and says why in the caller's buffer (err, errlen), one line fit
 * for a log field or a control reply. Constructors return NULL with the
 * same buffer filled; lookups return an index or -1; non-blocking steps
 * return their own OK/AGAIN/ERROR. These two write the buffer and give the
 * return value in one statement:
 *
 *   return kg_fail(err, errlen, EINVAL, "listeners[%zu]: no backends", i);
 *   return kg_fail_errno(err, errlen, errno, "state directory %s", dir);
 */
#ifndef KGATE_ERRORS_H
#define KGATE_ERRORS_H

#include <stddef.h>

/* err = the formatted message; returns -e (e a positive errno). */
int kg_fail(char *err, size_t errlen, int e, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* err = the formatted message, ": ", strerror(e); returns -e. */
int kg_fail_errno(char *err, size_t errlen, int e, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
