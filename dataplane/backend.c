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

#include "conn.h"
#include "health.h"
#include "runtime.h"
#include "worker.h"

static void no_backend(struct kg_conn *c)
{
	struct kg_worker *w = c->worker;
	kg_count(w, no_backend);
	kg_worker_warn(w, "conn.no_backend", KV("listener", c->listener->conf->name),
		       KV("attempts", c->connect_attempts));
	if (!c->ssl) {
		kg_conn_close(c, "no backend available");
		return;
	}
	/* A clean TLS close tells the client this was deliberate. */
	SSL_shutdown(c->ssl);
	c->close_after_flush = true;
	snprintf(c->close_reason, sizeof(c->close_reason), "no backend available");
	kg_conn_flush_client(c);
}

int kg_backend_submit_connect(struct kg_conn *c, const struct kg_backend_conf *b, int op)
{
	const struct kg_listener_conf *lc = c->listener->conf;
	int one = 1;
	int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -errno;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
		log_debug("socket.nodelay_failed", KV("side", "backend"), KV_ERRNO(errno));

	c->bfd = fd;
	c->connect_attempts++;
	c->connect_timeout.tv_sec = lc->connect_timeout_ms / 1000;
	c->connect_timeout.tv_nsec = (long long)(lc->connect_timeout_ms % 1000) * 1000000;

	struct io_uring_sqe *sqe, *tsqe;
	kg_worker_sqe_timed(c->worker, &sqe, &tsqe);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&b->addr, b->addrlen);
	io_uring_sqe_set_data64(sqe, kg_ud_pack((enum kg_op)op, c->idx, fd));
	sqe->flags |= IOSQE_IO_LINK;
	io_uring_prep_link_timeout(tsqe, &c->connect_timeout, 0);
	io_uring_sqe_set_data64(tsqe, kg_ud_pack(KG_OP_LINK_TIMEOUT, c->idx, fd));
	c->inflight += 2;
	return 0;
}

void kg_backend_connect_next(struct kg_conn *c)
{
	const struct kg_listener_conf *lc = c->listener->conf;

	if (c->connect_attempts > lc->connect_retries) {
		no_backend(c);
		return;
	}
	int m = kg_balancer_select(c->listener->balancer, c->tried);
	if (m < 0) {
		no_backend(c);
		return;
	}
	c->member = m;
	int r = kg_backend_submit_connect(c, &lc->backends[m], KG_OP_BACKEND_CONNECT);
	if (r < 0)
		kg_conn_close_err(c, "backend socket", -r);
}

void kg_backend_connect_failed(struct kg_conn *c, int res)
{
	const struct kg_backend_conf *b = &c->listener->conf->backends[c->member];
	const char *why = res == -ECANCELED ? "timed out" : strerror(-res);
	kg_count(c->worker, backend_connect_failed);
	kg_worker_warn(c->worker, "backend.connect_failed", KV("listener", c->listener->conf->name),
		       KV("backend", b->address), KV("err", why));
	char reason[80];
	snprintf(reason, sizeof(reason), "connect %s",
		 res == -ECONNREFUSED ? "refused" : why);
	kg_health_passive_failure(c->listener->health, (size_t)c->member, reason,
				  c->worker->now_ms);
	c->tried |= 1ull << c->member;
	close(c->bfd);
	c->bfd = -1;
}

void kg_backend_on_connect(struct kg_conn *c, int res)
{
	c->inflight--;
	if (c->state == KG_CONN_CLOSING)
		return;
	if (res == 0) {
		kg_health_conn_start(c->listener->health, (size_t)c->member);
		c->member_counted = true;
		kg_conn_start_forwarding(c);
		return;
	}
	kg_backend_connect_failed(c, res);
	kg_backend_connect_next(c);
}
