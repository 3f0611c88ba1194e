#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096

int kg_listener_open(const struct sockaddr_storage *addr, socklen_t addrlen,
		     struct sockaddr_storage *bound)
{
	int one = 1;
	int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	/* REUSEADDR: restart while old connections sit in TIME_WAIT;
	 * REUSEPORT: one socket per worker, balanced by the kernel. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1)
		goto close_fd;
	/* An IPv6 listener serves IPv6 only; "0.0.0.0" is a listener of its own. */
	if (addr->ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1)
		goto close_fd;
	if (bind(fd, (const struct sockaddr *)addr, addrlen) == -1)
		goto close_fd;
	if (listen(fd, LISTEN_BACKLOG) == -1)
		goto close_fd;
	if (bound) {
		socklen_t len = sizeof(*bound);
		if (getsockname(fd, (struct sockaddr *)bound, &len) == -1)
			goto close_fd;
	}
	return fd;

close_fd:;
	int err = errno;
	close(fd);
	return -err;
}

unsigned kg_listener_queued(int fd)
{
	struct tcp_info ti = {0};
	socklen_t len = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1 ||
	    ti.tcpi_state != TCP_LISTEN)
		return 0;
	return ti.tcpi_unacked;
}

void kg_sockaddr_format(const struct sockaddr_storage *addr, char *buf,
			size_t len)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (addr->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (addr->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, len, "(family %d)", addr->ss_family);
	}
}
