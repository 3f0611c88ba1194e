/* Idle keep-alive connections to backends, per worker (no locks): an https
 * listener's request takes one instead of connecting when it can, and gives
 * it back when the response ended cleanly. Connections are keyed by the
 * caller's key (forward_http.c: the listener slot and the backend group)
 * and the backend's address, not by member index, so a live
 * change of the backend list never hands a request a connection to another
 * server. Bounded per (slot, address) by the caller's http.pool_max_idle
 * and by age (http.pool_idle_timeout_ms, carried with each connection).
 * Idle sockets have no operation in flight; a socket the backend closed
 * meanwhile is noticed when taken (a non-blocking peek) or on expiry. */
#ifndef KGATE_BACKEND_POOL_H
#define KGATE_BACKEND_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct kg_backend_pool;

/* NULL on ENOMEM. */
struct kg_backend_pool *kg_backend_pool_create(void);
/* Closes every idle socket. Tolerates NULL. */
void kg_backend_pool_destroy(struct kg_backend_pool *p);

/* The most recently parked live socket for (slot, addr), or -1. Dead ones
 * found on the way are closed. */
int kg_backend_pool_take(struct kg_backend_pool *p, uint32_t slot,
			 const struct sockaddr_storage *addr, socklen_t addrlen);
/* Parks fd; false when (slot, addr) already holds max_idle sockets or no
 * memory is left (the caller closes fd). */
bool kg_backend_pool_put(struct kg_backend_pool *p, uint32_t slot,
			 const struct sockaddr_storage *addr, socklen_t addrlen, int fd,
			 unsigned max_idle, unsigned idle_timeout_ms, uint64_t now_ms);
/* Closes sockets idle longer than they may be, or closed by the backend. */
void kg_backend_pool_expire(struct kg_backend_pool *p, uint64_t now_ms);
/* Idle sockets held. */
size_t kg_backend_pool_count(const struct kg_backend_pool *p);

#endif
