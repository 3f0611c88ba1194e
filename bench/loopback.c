#include "loopback.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int bench_listen_loopback(struct sockaddr_in *a, const char *tool, int fail_status)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	socklen_t len = sizeof(*a);

	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd == -1 || bind(fd, (struct sockaddr *)a, sizeof(*a)) == -1 || listen(fd, 4) == -1 ||
	    getsockname(fd, (struct sockaddr *)a, &len) == -1) {
		fprintf(stderr, "%s: listen: %m\n", tool);
		exit(fail_status);
	}
	return fd;
}

int bench_connect_to(const struct sockaddr_in *a, const char *tool, int fail_status)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1 || connect(fd, (const struct sockaddr *)a, sizeof(*a)) == -1) {
		fprintf(stderr, "%s: connect: %m\n", tool);
		exit(fail_status);
	}
	return fd;
}
