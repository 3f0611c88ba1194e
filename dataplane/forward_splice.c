/* Paths ktls-splice and splice, and the plain copy loop (userspace-copy):
 * both directions of a connection, each a whole stream, through
 * splice_pump.h (socket → pipe → socket, or a buffer in copy mode), until
 * both ended.
 *
 * On ktls-splice the client socket has kTLS: close_notify ends the direction
 * like a FIN; any other alert, and a TLS 1.3 KeyUpdate (this loop does
 * not re-key the kernel), close the connection without corrupting the
 * stream (client_io.h). kTLS sends no close_notify by itself: it is sent
 * before our FIN. */
#include "forward_splice.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "runtime.h"
#include "splice_pump.h"
#include "worker.h"

struct kg_splice {
	struct kg_pump pump;
};

static struct kg_splice *splice_of(const struct kg_conn *c)
{
	return c->fwd_ctx;
}

static void pump(struct kg_conn *c)
{
	struct kg_pump *p = &splice_of(c)->pump;
	bool moved = kg_pump_move(c, p);
	if (c->state != KG_CONN_FORWARDING)
		return;
	if (p->c2b.done && p->b2c.done) {
		kg_conn_close(c, "both directions finished");
		return;
	}
	if (moved)
		kg_conn_touch(c);
	kg_pump_wait(c, p, moved);
}

/* head: plaintext the client sent before a kTLS handoff, decrypted in
 * userspace; it goes out first. */
static int splice_start(struct kg_conn *c, const void *head, size_t head_len, char *err,
			size_t errlen)
{
	struct kg_worker *w = c->worker;
	bool copy = c->path == KG_PATH_COPY, client_ktls = c->path == KG_PATH_KTLS_SPLICE;
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
	c->fwd_ctx = s;

	/* The pipe is empty and larger than the early data. */
	if (head_len > 0 && kg_hop_preload(&p->c2b, head, head_len) < 0) {
		snprintf(err, errlen, "cannot queue %zu bytes of early data", head_len);
		return -ENOBUFS; /* the context is freed with the connection */
	}
	return 0;
}

static void splice_on_poll(struct kg_conn *c, int op, int fd, int res)
{
	struct kg_pump *p = &splice_of(c)->pump;
	bool go = op == KG_OP_SPLICE_BACKOFF ? kg_pump_on_backoff(c, p)
					     : kg_pump_on_poll(c, p, fd, op == KG_OP_POLL_OUT, res);
	if (go)
		pump(c);
}

static void splice_release(struct kg_conn *c)
{
	struct kg_splice *s = splice_of(c);
	if (!s)
		return;
	kg_hop_free(&s->pump.c2b);
	kg_hop_free(&s->pump.b2c);
	free(s);
	c->fwd_ctx = NULL;
}

const struct kg_fwd_ops kg_fwd_splice_ops = {
	.name = "splice",
	.start = splice_start,
	.run = pump,
	.on_poll = splice_on_poll,
	.release = splice_release,
};
