/* Per-request backend choice, shared by both HTTP forwarders
 * (http_balance.h). */
#include "http_balance.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/x509.h>

#include "backend_pool.h"
#include "conn.h"
#include "group.h"
#include "listener.h"
#include "runtime.h"
#include "sni.h"
#include "tls.h"
#include "worker.h"

int kg_http_client_init(struct kg_http_client *who, struct kg_conn *c)
{
	const struct kg_listener_conf *lc = c->listener->conf;
	struct sockaddr_storage peer, local;
	socklen_t plen = sizeof(peer), llen = sizeof(local);
	memset(who, 0, sizeof(*who));
	if (getpeername(c->cfd, (struct sockaddr *)&peer, &plen) == -1)
		memset(&peer, 0, sizeof(peer));
	if (getsockname(c->cfd, (struct sockaddr *)&local, &llen) == -1)
		memset(&local, 0, sizeof(local));
	kg_sockaddr_format(&peer, who->peer, sizeof(who->peer));
	if (kg_http_identity(&who->ident, &lc->http, c->ssl, &peer, &local) < 0)
		return -ENOMEM;
	who->policy = kg_tls_conf_of(c->ssl) ? kg_tls_conf_of(c->ssl) : lc;
	X509 *cert = SSL_get0_peer_certificate(c->ssl);
	if (cert)
		X509_NAME_oneline(X509_get_subject_name(cert), who->subject, sizeof(who->subject));
	who->route_cert_bits = kg_routes_cert_bits(lc->routes, cert);
	return 0;
}

void kg_http_client_free(struct kg_http_client *who)
{
	kg_http_ident_free(&who->ident);
}

void kg_http_quickack(struct kg_worker *w, int fd)
{
	static const int one = 1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one)) == 0)
		kg_count(w, http_quickack);
}

struct kg_group_rt *kg_http_route(const struct kg_listener_rt *l, const struct kg_route_req *q,
				  const char **route)
{
	struct kg_listener_counters *lc = &l->slot->counters;
	*route = "";
	if (!l->conf->routes)
		return l->group;
	int r = kg_routes_match(l->conf->routes, q);
	if (r >= 0) {
		*route = kg_routes_name(l->conf->routes, (size_t)r);
		atomic_fetch_add_explicit(&lc->routed[r], 1, memory_order_relaxed);
		return l->route_group[r];
	}
	*route = l->group ? KG_ROUTE_DEFAULT : KG_ROUTE_NONE;
	atomic_fetch_add_explicit(l->group ? &lc->route_default : &lc->route_not_found, 1,
				  memory_order_relaxed);
	return l->group;
}

uint32_t kg_http_pool_key(const struct kg_listener_rt *l, uint32_t slot,
			  const struct kg_group_rt *g)
{
	/* The slot index sits in the low bits, the group's place in the
	 * listener's groups above. */
	uint32_t gi = 0;
	while (gi < l->n_groups && l->groups[gi] != g)
		gi++;
	return slot | gi << 8;
}

bool kg_http_host_allowed(const struct kg_listener_conf *l,
			  const struct kg_listener_conf *policy, const char *value, size_t len)
{
	const struct kg_listener_conf *serves = l->strict_sni ? NULL : l;
	const char *host;
	size_t hlen;
	if (kg_sni_host_of(value, len, &host, &hlen)) {
		int e = kg_config_sni_find(l, host, hlen);
		if (e >= 0)
			serves = l->sni[e].tls;
	}
	return serves && memcmp(serves->client_policy, policy->client_policy,
				sizeof(policy->client_policy)) == 0;
}

enum kg_http_pick kg_http_pick(struct kg_worker *w, const struct kg_listener_rt *l,
			       uint32_t slot, struct kg_group_rt *g,
			       const struct kg_backend_walk *walk, int *m, int *fd, int *status)
{
	*fd = -1;
	*m = kg_backend_pick(l, g, walk);
	if (*m < 0) {
		kg_count(w, no_backend);
		*status = walk->tried || walk->attempts > l->conf->connect_retries ? 502 : 503;
		return KG_HTTP_PICK_NONE;
	}
	const struct kg_backend_conf *b = &g->conf->backends[*m];
	*fd = kg_backend_pool_take(w->pool, kg_http_pool_key(l, slot, g), &b->addr, b->addrlen);
	if (*fd < 0)
		return KG_HTTP_PICK_CONNECT;
	kg_count(w, http_pool_reused);
	return KG_HTTP_PICK_POOLED;
}
