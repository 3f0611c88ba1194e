/* Per-worker idle backend connections (backend_pool.h). One array, most
 * recently parked last: a worker holds at most a few hundred idle
 * connections, and a linear scan from the end finds the warmest match. */
#include "backend_pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <kgate/log.h>

struct idle {
	uint32_t slot;
	socklen_t addrlen;
	struct sockaddr_storage addr;
	int fd;
	unsigned timeout_ms;
	uint64_t since_ms;
};

struct kg_backend_pool {
	struct idle *v;
	size_t n;
	size_t cap;
};

struct kg_backend_pool *kg_backend_pool_create(void)
{
	return calloc(1, sizeof(struct kg_backend_pool));
}

void kg_backend_pool_destroy(struct kg_backend_pool *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n; i++)
		close(p->v[i].fd);
	free(p->v);
	free(p);
}

static bool same(const struct idle *e, uint32_t slot, const struct sockaddr_storage *addr,
		 socklen_t addrlen)
{
	return e->slot == slot && e->addrlen == addrlen && memcmp(&e->addr, addr, addrlen) == 0;
}

/* An idle HTTP connection has nothing to read: readable means the backend
 * closed it (EOF), reset it, or sent bytes nobody asked for. */
static bool still_idle(int fd)
{
	char byte;
	ssize_t n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
	return n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

static void remove_at(struct kg_backend_pool *p, size_t i)
{
	memmove(&p->v[i], &p->v[i + 1], (p->n - i - 1) * sizeof(p->v[0]));
	p->n--;
}

int kg_backend_pool_take(struct kg_backend_pool *p, uint32_t slot,
			 const struct sockaddr_storage *addr, socklen_t addrlen)
{
	for (size_t i = p->n; i-- > 0;) {
		if (!same(&p->v[i], slot, addr, addrlen))
			continue;
		int fd = p->v[i].fd;
		remove_at(p, i);
		if (still_idle(fd))
			return fd;
		log_debug("http.pool_dead", KV("fd", fd),
			  KV("reason", "the backend closed the idle connection"));
		close(fd);
	}
	return -1;
}

bool kg_backend_pool_put(struct kg_backend_pool *p, uint32_t slot,
			 const struct sockaddr_storage *addr, socklen_t addrlen, int fd,
			 unsigned max_idle, unsigned idle_timeout_ms, uint64_t now_ms)
{
	unsigned held = 0;
	for (size_t i = 0; i < p->n; i++)
		held += same(&p->v[i], slot, addr, addrlen);
	if (held >= max_idle)
		return false;
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 16;
		struct idle *v = realloc(p->v, cap * sizeof(*v));
		if (!v)
			return false;
		p->v = v;
		p->cap = cap;
	}
	struct idle *e = &p->v[p->n++];
	memset(e, 0, sizeof(*e));
	e->slot = slot;
	e->addrlen = addrlen;
	memcpy(&e->addr, addr, addrlen);
	e->fd = fd;
	e->timeout_ms = idle_timeout_ms;
	e->since_ms = now_ms;
	return true;
}

void kg_backend_pool_expire(struct kg_backend_pool *p, uint64_t now_ms)
{
	size_t keep = 0;
	for (size_t i = 0; i < p->n; i++) {
		if (now_ms - p->v[i].since_ms >= p->v[i].timeout_ms || !still_idle(p->v[i].fd))
			close(p->v[i].fd);
		else
			p->v[keep++] = p->v[i];
	}
	p->n = keep;
}

size_t kg_backend_pool_count(const struct kg_backend_pool *p)
{
	return p ? p->n : 0;
}
