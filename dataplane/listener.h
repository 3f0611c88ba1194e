/* Listening sockets: one per listener per worker, bound with SO_REUSEPORT
 * so the kernel spreads new connections over the workers. */
#ifndef KGATE_LISTENER_H
#define KGATE_LISTENER_H

#include <sys/socket.h>

#include "config.h"

/* Opens a non-blocking listening socket on l->bind. When the port is 0 the
 * kernel picks one and *bound is filled with the address it chose, so the
 * other workers' sockets can join the same port. Returns the fd or -errno. */
int kg_listener_open(const struct sockaddr_storage *addr, socklen_t addrlen,
		     struct sockaddr_storage *bound);

/* Connections waiting in fd's accept queue (TCP_INFO: for a listening
 * socket the kernel reports the queue's length as tcpi_unacked); 0 when it
 * cannot tell. */
unsigned kg_listener_queued(int fd);

/* "127.0.0.1:8443" or "[::1]:8443". */
void kg_sockaddr_format(const struct sockaddr_storage *addr, char *buf,
			size_t len);

#endif
