/* Backend selection and connect (backend.h). */
#include "backend.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <kgate/log.h>

#include "clock.h"
#include "group.h"
#include "health.h"
#include "runtime.h"

int kg_backend_pick(const struct kg_listener_rt *l, const struct kg_group_rt *g,
		    const struct kg_backend_walk *walk)
{
	if (walk->attempts > l->conf->connect_retries)
		return -1;
	return kg_balancer_select(g->balancer, walk->tried);
}

int kg_backend_socket(const struct kg_group_rt *g, int m)
{
	const struct kg_backend_conf *b = &g->conf->backends[m];
	int one = 1;
	int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	/* Records and requests are forwarded as they come: Nagle would only
	 * add latency. */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		log_debug("socket.nodelay_failed", KV("side", "backend"), KV_ERRNO(errno));
	return fd;
}

void kg_backend_prep_connect(const struct kg_listener_rt *l, const struct kg_group_rt *g,
			     struct kg_backend_walk *walk, int m, int fd, struct io_uring_sqe *sqe,
			     struct io_uring_sqe *tsqe)
{
	const struct kg_listener_conf *lc = l->conf;
	const struct kg_backend_conf *b = &g->conf->backends[m];
	walk->attempts++;
	kg_ms_to_ts(lc->connect_timeout_ms, &walk->timeout);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&b->addr, b->addrlen);
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(tsqe, &walk->timeout, 0);
}

const char *kg_backend_connect_failed(const struct kg_group_rt *g,
				      struct kg_backend_walk *walk, int m, int res,
				      uint64_t now_ms)
{
	const char *why = res == -ECANCELED ? "timed out" : strerror(-res);
	char reason[80];
	snprintf(reason, sizeof(reason), "connect %s", res == -ECONNREFUSED ? "refused" : why);
	kg_health_passive_failure(g->health, (size_t)m, reason, now_ms);
	walk->tried |= 1ull << m;
	return why;
}
