/* Backend selection and connect (backend.h). */
#include "backend.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/log.h>

#include "health.h"
#include "runtime.h"
#include "worker.h"

int kg_backend_pick(const struct kg_listener_rt *l, const struct kg_backend_walk *walk)
{
	if (walk->attempts > l->conf->connect_retries)
		return -1;
	return kg_balancer_select(l->balancer, walk->tried);
}

int kg_backend_submit_connect(struct kg_worker *w, const struct kg_listener_rt *l,
			      struct kg_backend_walk *walk, int m, int op, uint32_t idx)
{
	const struct kg_listener_conf *lc = l->conf;
	const struct kg_backend_conf *b = &lc->backends[m];
	int one = 1;
	int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		log_debug("socket.nodelay_failed", KV("side", "backend"), KV_ERRNO(errno));

	walk->attempts++;
	walk->timeout.tv_sec = lc->connect_timeout_ms / 1000;
	walk->timeout.tv_nsec = (long long)(lc->connect_timeout_ms % 1000) * 1000000;
	struct io_uring_sqe *sqe, *tsqe;
	kg_worker_sqe_timed(w, &sqe, &tsqe);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&b->addr, b->addrlen);
	io_uring_sqe_set_data64(sqe, kg_ud_pack((enum kg_op)op, idx, fd));
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(tsqe, &walk->timeout, 0);
	io_uring_sqe_set_data64(tsqe, kg_ud_pack(KG_OP_LINK_TIMEOUT, idx, fd));
	return fd;
}

void kg_backend_connect_failed(struct kg_worker *w, const struct kg_listener_rt *l,
			       struct kg_backend_walk *walk, int m, int res)
{
	const struct kg_backend_conf *b = &l->conf->backends[m];
	const char *why = res == -ECANCELED ? "timed out" : strerror(-res);
	kg_count(w, backend_connect_failed);
	kg_worker_warn(w, "backend.connect_failed", KV("listener", l->conf->name),
		       KV("backend", b->address), KV("err", why));
	char reason[80];
	snprintf(reason, sizeof(reason), "connect %s", res == -ECONNREFUSED ? "refused" : why);
	kg_health_passive_failure(l->health, (size_t)m, reason, w->now_ms);
	walk->tried |= 1ull << m;
}
