/* Backend selection and connect: ask the balancer for a member that is up
 * and not yet tried, connect through io_uring with a linked timeout, and
 * on refusal or timeout move on to the next member, at most
 * connect_retries times. The caller owns the walk, the socket and the
 * in-flight accounting (conn.c for tls/tcp listeners, forward_http.c per
 * request). Runs on the worker thread. */
#ifndef KGATE_BACKEND_H
#define KGATE_BACKEND_H

#include <stdint.h>

#include <linux/time_types.h>

struct kg_worker;
struct kg_listener_rt;

/* One walk over a listener's members: which failed, how many connects. */
struct kg_backend_walk {
	uint64_t tried;    /* members whose connect failed */
	unsigned attempts; /* connects made */
	struct __kernel_timespec timeout; /* the linked timeout's, read by the kernel at submit */
};

/* The member to connect to next, or -1 when none is left: every member in
 * rotation tried, or connect_retries extra attempts used. */
int kg_backend_pick(const struct kg_listener_rt *l, const struct kg_backend_walk *walk);
/* A socket for member m, its connect submitted (completion op, user_data
 * index idx) with the listener's connect timeout linked: two completions
 * will come. The socket (the caller owns it), or -errno when none could
 * be made. */
int kg_backend_submit_connect(struct kg_worker *w, const struct kg_listener_rt *l,
			      struct kg_backend_walk *walk, int m, int op, uint32_t idx);
/* The connect to member m failed with res: counted, logged, a passive
 * health failure, m marked tried. The caller closes the socket. */
void kg_backend_connect_failed(struct kg_worker *w, const struct kg_listener_rt *l,
			       struct kg_backend_walk *walk, int m, int res);

#endif
