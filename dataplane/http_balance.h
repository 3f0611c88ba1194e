/* Where one HTTP request goes: its route's group, the member smooth
 * weighted round robin gives it, and a pooled keep-alive socket to that
 * member when one is idle; and the facts about the client that choice and
 * the request's identity headers start from, taken once per connection.
 * Shared by the HTTP/1.1 forwarder (per request, forward_http.c) and the
 * HTTP/2 one (per stream, forward_h2.c), so a request balances and is
 * labelled the same way whichever protocol carried it. */
#ifndef KGATE_HTTP_BALANCE_H
#define KGATE_HTTP_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "http.h"
#include "routes.h"

struct kg_conn;
struct kg_listener_rt;
struct kg_group_rt;
struct kg_worker;

/* What a connection's handshake says about its client, for every request
 * on it: taken when forwarding starts (after a kTLS handoff the SSL object
 * is gone). */
struct kg_http_client {
	struct kg_http_ident ident; /* what kgate adds to requests */
	/* The settings the handshake ran under (kg_tls_conf_of): the
	 * listener's, or an sni entry's. */
	const struct kg_listener_conf *policy;
	uint64_t route_cert_bits; /* kg_routes_cert_bits of the client's certificate */
	char peer[64];            /* the client's address, for logs */
	char subject[160];        /* the client certificate's subject, for the access log */
};
/* Fills who from c (its socket and c->ssl). 0, or -ENOMEM; free with
 * kg_http_client_free either way. */
int kg_http_client_init(struct kg_http_client *who, struct kg_conn *c);
void kg_http_client_free(struct kg_http_client *who);

/* A response came in part on fd (a backend socket in delayed-ACK mode
 * after the request it sent) and the rest is due: TCP_QUICKACK sends the
 * pending ACK now, so a backend that writes head and body in two sends
 * with Nagle on is not held 40 ms. Counted on w; a refusal only means the
 * 40 ms stay. */
void kg_http_quickack(struct kg_worker *w, int fd);

/* The group of a request: the first of l's routes that matches q, else
 * l's own group; counted per route. *route: the route's name for the
 * access log ("" without routes). NULL when there is neither (404). */
struct kg_group_rt *kg_http_route(const struct kg_listener_rt *l, const struct kg_route_req *q,
				  const char **route);

/* The backend pool's key for g's sockets of the listener in slot:
 * kept-alive backend connections are per listener and group (a named
 * group's are not lent to another group that lists the same address). */
uint32_t kg_http_pool_key(const struct kg_listener_rt *l, uint32_t slot,
			  const struct kg_group_rt *g);

/* Whether a request for the host named by value[0..len) (a Host or
 * :authority value) may be served on a connection whose handshake ran
 * under policy (kg_tls_conf_of): the sni entry with that name, else the
 * listener's own settings (which strict_sni gives no name), must have
 * the same client policy. False: 421. */
bool kg_http_host_allowed(const struct kg_listener_conf *l,
			  const struct kg_listener_conf *policy, const char *value, size_t len);

enum kg_http_pick {
	KG_HTTP_PICK_POOLED,  /* *fd: a live idle socket to member *m, from the pool */
	KG_HTTP_PICK_CONNECT, /* connect to member *m (kg_conn_submit_connect*) */
	KG_HTTP_PICK_NONE,    /* no member left: answer *status (502 after failed
			       * connects or retries, 503 when none is in rotation) */
};
/* The member for one request of slot's listener l in group g, walk being
 * the members this request tried already. Counted (pool reuses, no
 * backend) on worker w. */
enum kg_http_pick kg_http_pick(struct kg_worker *w, const struct kg_listener_rt *l,
			       uint32_t slot, struct kg_group_rt *g,
			       const struct kg_backend_walk *walk, int *m, int *fd, int *status);

#endif
