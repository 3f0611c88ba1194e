/* Loopback TCP plumbing shared by the bench tools that build their own
 * flows (relay_bench, sockmap_pass_check). Both exit the tool with status
 * `fail_status` on any error: a bench tool without its sockets has nothing
 * to measure. */
#ifndef KG_BENCH_LOOPBACK_H
#define KG_BENCH_LOOPBACK_H

#include <netinet/in.h>

/* A listening socket on 127.0.0.1 and an ephemeral port, written to *a. */
int bench_listen_loopback(struct sockaddr_in *a, const char *tool, int fail_status);
/* A blocking socket connected to *a. */
int bench_connect_to(const struct sockaddr_in *a, const char *tool, int fail_status);

#endif
