/* One HTTP/2 stream's outgoing DATA queue, as nghttp2's data provider
 * drains it: h2_session.c (responses to clients) and h2_client.c
 * (request bodies to backends) both queue bytes their caller handed over
 * and tell it, once, when the queue fell to the low-water mark it named.
 * Memory comes from the owner's allocator (h2_session.c counts every
 * byte it holds). */
#ifndef KGATE_H2_SENDQ_H
#define KGATE_H2_SENDQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kg_h2_sendq {
	uint8_t *q;
	size_t off, len, cap;
	size_t low_water;
	bool want_room; /* the owner's caller is owed a room call */
};

/* Appends n bytes (grown through re(ptr, size, ud), realloc's contract);
 * the caller asks again for room once len <= low_water, unless end.
 * 0, -ENOMEM. */
int kg_h2_sendq_push(struct kg_h2_sendq *s, const void *p, size_t n, bool end, size_t low_water,
		     void *(*re)(void *ptr, size_t size, void *ud), void *ud);
/* Up to length queued bytes into buf (the read callback's copy): how many. */
size_t kg_h2_sendq_take(struct kg_h2_sendq *s, uint8_t *buf, size_t length);
/* Whether the room call is due once the read callback takes up to
 * `taking` bytes (then it is not owed any more). Asked BEFORE the take:
 * what the caller queues (or ends) from the room call then goes out in
 * the same read, never into a queue the callback is about to declare
 * empty (NGHTTP2_ERR_DEFERRED with bytes waiting would stall the stream). */
bool kg_h2_sendq_room_due(struct kg_h2_sendq *s, bool ended, size_t taking);

#endif
