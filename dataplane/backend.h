/* Backend selection and connect: ask the balancer for a member that is up
 * and not yet tried, connect through io_uring with a linked timeout, and
 * on refusal or timeout move on to the next member, at most
 * connect_retries times.
 *
 * The pieces here hold no connection and no ring: the caller owns the
 * walk, the socket, the SQEs and the in-flight accounting
 * (kg_conn_submit_connect and kg_conn_connect_failed in conn.c put them
 * together for tls/tcp listeners and for forward_http.c's per-request
 * connects). */
#ifndef KGATE_BACKEND_H
#define KGATE_BACKEND_H

#include <stdint.h>

#include <linux/time_types.h>
#include <liburing.h>

struct kg_listener_rt;
struct kg_group_rt;

/* One walk over a group's members: which failed, how many connects. */
struct kg_backend_walk {
	uint64_t tried;    /* members whose connect failed */
	unsigned attempts; /* connects made */
	struct __kernel_timespec timeout; /* the linked timeout's, read by the kernel at submit */
};

/* The member to connect to next, or -1 when none is left: every member in
 * rotation tried, or connect_retries extra attempts used. */
int kg_backend_pick(const struct kg_listener_rt *l, const struct kg_group_rt *g,
		    const struct kg_backend_walk *walk);
/* A non-blocking socket for member m of g (TCP_NODELAY), or -errno. */
int kg_backend_socket(const struct kg_group_rt *g, int m);
/* Fills sqe with fd's connect to member m, linked to tsqe, the listener's
 * connect timeout, and counts the attempt. The caller sets both SQEs'
 * user_data; two completions will come. */
void kg_backend_prep_connect(const struct kg_listener_rt *l, const struct kg_group_rt *g,
			     struct kg_backend_walk *walk, int m, int fd, struct io_uring_sqe *sqe,
			     struct io_uring_sqe *tsqe);
/* The connect to member m failed with res: a passive health failure, m
 * marked tried. Returns the reason for the caller's log ("timed out", or
 * the errno text). */
const char *kg_backend_connect_failed(const struct kg_group_rt *g,
				      struct kg_backend_walk *walk, int m, int res,
				      uint64_t now_ms);

#endif
