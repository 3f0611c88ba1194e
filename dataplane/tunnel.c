/* WebSocket tunnel limits and accounting (tunnel.h). */
#include "tunnel.h"

#include <kgate/log.h>

#include "config.h"
#include "worker.h"

static const char *const end_names[] = {
	[KG_TUNNEL_OPEN] = "open",	       [KG_TUNNEL_CLIENT] = "client",
	[KG_TUNNEL_BACKEND] = "backend",   [KG_TUNNEL_IDLE] = "idle_timeout",
	[KG_TUNNEL_LIFETIME] = "lifetime", [KG_TUNNEL_DRAIN] = "drain",
	[KG_TUNNEL_ERROR] = "error",
};

void kg_tunnel_open(struct kg_tunnel *t, struct kg_worker *w, const struct kg_tunnel_who *who,
		    const char *target, const char *path)
{
	t->start_ms = t->io_ms = w->now_ms;
	t->first = t->cut = KG_TUNNEL_OPEN;
	kg_count(w, http_tunnels);
	log_debug("http.tunnel_opened", KV("listener", who->listener), KV("client", who->client),
		  KV("backend", who->backend), KV("target", target), KV("path", path));
}

void kg_tunnel_touch(struct kg_tunnel *t, uint64_t now_ms)
{
	t->io_ms = now_ms;
}

uint64_t kg_tunnel_deadline(const struct kg_tunnel *t, const struct kg_listener_conf *lc)
{
	uint64_t at = t->io_ms + lc->tunnel_idle_timeout_ms;
	if (lc->tunnel_max_lifetime_s > 0) {
		uint64_t end = t->start_ms + (uint64_t)lc->tunnel_max_lifetime_s * 1000;
		if (end < at)
			at = end;
	}
	return at;
}

enum kg_tunnel_end kg_tunnel_expired(struct kg_tunnel *t, const struct kg_listener_conf *lc,
				     uint64_t now_ms)
{
	if (now_ms < kg_tunnel_deadline(t, lc))
		return KG_TUNNEL_OPEN;
	bool life = lc->tunnel_max_lifetime_s > 0 &&
		    now_ms >= t->start_ms + (uint64_t)lc->tunnel_max_lifetime_s * 1000;
	t->cut = life ? KG_TUNNEL_LIFETIME : KG_TUNNEL_IDLE;
	return t->cut;
}

void kg_tunnel_side_ended(struct kg_tunnel *t, enum kg_tunnel_end side)
{
	if (t->first == KG_TUNNEL_OPEN)
		t->first = side;
}

void kg_tunnel_closed(const struct kg_tunnel *t, struct kg_worker *w,
		      const struct kg_tunnel_who *who, bool both_ended, uint64_t bytes_in,
		      uint64_t bytes_out)
{
	enum kg_tunnel_end why = t->cut != KG_TUNNEL_OPEN ? t->cut
				 : both_ended		  ? t->first
				 : w->draining && w->now_ms >= w->drain_deadline_ms ? KG_TUNNEL_DRAIN
										     : KG_TUNNEL_ERROR;
	switch (why) {
	case KG_TUNNEL_CLIENT: kg_count(w, http_tunnel_end_client); break;
	case KG_TUNNEL_BACKEND: kg_count(w, http_tunnel_end_backend); break;
	case KG_TUNNEL_IDLE: kg_count(w, http_tunnel_end_idle); break;
	case KG_TUNNEL_LIFETIME: kg_count(w, http_tunnel_end_lifetime); break;
	case KG_TUNNEL_DRAIN: kg_count(w, http_tunnel_end_drain); break;
	case KG_TUNNEL_OPEN:
	case KG_TUNNEL_ERROR: kg_count(w, http_tunnel_end_error); break;
	}
	if (why == KG_TUNNEL_CLIENT || why == KG_TUNNEL_BACKEND)
		log_debug("http.tunnel_closed", KV("listener", who->listener),
			  KV("client", who->client), KV("backend", who->backend),
			  KV("reason", end_names[why]), KV("bytes_in", bytes_in),
			  KV("bytes_out", bytes_out), KV("ms", w->now_ms - t->start_ms));
	else
		/* kgate (or a failure) cut it: the operator should see why. */
		log_info("http.tunnel_closed", KV("listener", who->listener),
			 KV("client", who->client), KV("backend", who->backend),
			 KV("reason", end_names[why]), KV("bytes_in", bytes_in),
			 KV("bytes_out", bytes_out), KV("ms", w->now_ms - t->start_ms));
}
