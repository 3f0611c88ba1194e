/* Paths B and P (splice) and the plain copy loop: both directions of a
 * connection, each a whole stream, through splice_pump.h (socket → pipe →
 * socket, or a buffer in copy mode), until both ended.
 *
 * On path B the client socket has kTLS: close_notify ends the direction
 * like a FIN; any other alert, and a TLS 1.3 KeyUpdate (this loop does
 * not re-key the kernel), close the connection without corrupting the
 * stream (client_io.h). kTLS sends no close_notify by itself: it is sent
 * before our FIN. */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "splice_pump.h"

struct kg_splice {
	struct kg_pump pump;
};

static void pump(struct kg_conn *c)
{
	struct kg_pump *p = &c->splice->pump;
	bool moved = kg_pump_move(c, p);
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (p->c2b.done && p->b2c.done) {
		kg_conn_close(c, "both directions finished");
		return;
	}
	if (moved)
		c->deadline_ms = c->worker->now_ms + c->listener->conf->idle_timeout_ms;
	kg_pump_wait(c, p, moved);
}

int kg_forward_splice_start(struct kg_conn *c, bool copy, bool client_ktls,
			    const void *head, size_t head_len, char *err, size_t errlen)
{
	struct kg_worker *w = c->worker;
	struct kg_splice *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	kg_pump_clear(&s->pump);
	struct kg_pump *p = &s->pump;
	int r = kg_hop_init(&p->c2b, copy, &w->stats.forwarded_c2b);
	if (r == 0)
		r = kg_hop_init(&p->b2c, copy, &w->stats.forwarded_b2c);
	if (r < 0) {
		kg_hop_free(&p->c2b);
		kg_hop_free(&p->b2c);
		free(s);
		snprintf(err, errlen, "%s: %s", copy ? "buffer" : "pipe2", strerror(-r));
		return r;
	}
	kg_hop_start(&p->c2b, c->cfd, c->bfd, KG_HOP_UNBOUNDED);
	kg_hop_start(&p->b2c, c->bfd, c->cfd, KG_HOP_UNBOUNDED);
	p->c2b.src_ktls = client_ktls;
	p->b2c.dst_ktls = client_ktls;
	c->splice = s;

	/* Plaintext the client sent before the handoff, already decrypted
	 * in userspace, goes out first. The pipe is empty and larger. */
	if (head_len > 0 && kg_hop_preload(&p->c2b, head, head_len) < 0) {
		snprintf(err, errlen, "cannot queue %zu bytes of early data", head_len);
		return -ENOBUFS; /* c->splice is freed with the connection */
	}
	pump(c);
	return 0;
}

void kg_forward_splice_on_poll(struct kg_conn *c, int fd, bool out, int res)
{
	if (kg_pump_on_poll(c, &c->splice->pump, fd, out, res))
		pump(c);
}

void kg_forward_splice_on_backoff(struct kg_conn *c)
{
	if (kg_pump_on_backoff(c, &c->splice->pump))
		pump(c);
}

void kg_forward_splice_free(struct kg_conn *c)
{
	if (!c->splice)
		return;
	kg_hop_free(&c->splice->pump.c2b);
	kg_hop_free(&c->splice->pump.b2c);
	free(c->splice);
	c->splice = NULL;
}
