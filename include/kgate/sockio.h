/* Blocking send of a whole buffer, shared by kgated's control thread and
 * kgatectl: retries on EINTR and short writes, never raises SIGPIPE. */
#ifndef KGATE_SOCKIO_H
#define KGATE_SOCKIO_H

#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* 0, or -1 with errno set (a peer that closed gives EPIPE). */
static inline int kg_send_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

#endif
