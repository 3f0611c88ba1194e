/* WebSocket tunnels on https listeners, whichever protocol carries them
 * (forward_http.c: an HTTP/1.1 connection after the backend's 101;
 * forward_h2.c: an RFC 8441 extended CONNECT stream): their limits
 * (tunnel_idle_timeout_ms, tunnel_max_lifetime_s), why one ended, and its
 * accounting (http_tunnels_* counters, http.tunnel_opened/closed events),
 * kept in one place so that both report alike. The forwarders move the
 * bytes; this module only keeps time and counts. */
#ifndef KGATE_TUNNEL_H
#define KGATE_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>

struct kg_listener_conf;
struct kg_worker;

/* Why a tunnel ended (the http_tunnels_closed_total reasons). */
enum kg_tunnel_end {
	KG_TUNNEL_OPEN,     /* not ended (yet) */
	KG_TUNNEL_CLIENT,   /* the client's stream ended first, then the backend's */
	KG_TUNNEL_BACKEND,  /* the backend's first, then the client's */
	KG_TUNNEL_IDLE,     /* tunnel_idle_timeout_ms with no byte either way */
	KG_TUNNEL_LIFETIME, /* tunnel_max_lifetime_s */
	KG_TUNNEL_DRAIN,    /* still open at the drain timeout */
	KG_TUNNEL_ERROR,    /* a reset, a TLS error, a cut, no pipe */
};

struct kg_tunnel {
	uint64_t start_ms; /* the backend's 101 */
	uint64_t io_ms;    /* the last byte either way */
	enum kg_tunnel_end first; /* which side ended first */
	enum kg_tunnel_end cut;   /* kgate cut it (idle, lifetime), KG_TUNNEL_OPEN otherwise */
};

/* Who a tunnel's events name. */
struct kg_tunnel_who {
	const char *listener;
	const char *client;
	const char *backend;
};

/* The backend answered 101: counts the tunnel and logs http.tunnel_opened
 * (path: how its bytes move, "splice", "copy" or "h2"). */
void kg_tunnel_open(struct kg_tunnel *t, struct kg_worker *w, const struct kg_tunnel_who *who,
		    const char *target, const char *path);
/* A byte moved either way: the idle deadline restarts. */
void kg_tunnel_touch(struct kg_tunnel *t, uint64_t now_ms);
/* The earlier of the idle and lifetime deadlines. The listener settings
 * are the connection's snapshot: an update applies to new tunnels. */
uint64_t kg_tunnel_deadline(const struct kg_tunnel *t, const struct kg_listener_conf *lc);
/* At now_ms: KG_TUNNEL_OPEN while no deadline passed, else the limit that
 * cut it (KG_TUNNEL_LIFETIME or KG_TUNNEL_IDLE), recorded as t->cut. */
enum kg_tunnel_end kg_tunnel_expired(struct kg_tunnel *t, const struct kg_listener_conf *lc,
				     uint64_t now_ms);
/* One side's stream ended and was passed on to the other. */
void kg_tunnel_side_ended(struct kg_tunnel *t, enum kg_tunnel_end side);
/* The tunnel is over: counts http_tunnels_closed by reason and logs
 * http.tunnel_closed (debug when both sides ended, info when kgate cut it
 * or it failed). both_ended: each side's end was passed on. The caller
 * writes the access line. */
void kg_tunnel_closed(const struct kg_tunnel *t, struct kg_worker *w,
		      const struct kg_tunnel_who *who, bool both_ended, uint64_t bytes_in,
		      uint64_t bytes_out);

#endif
