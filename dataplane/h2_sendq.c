/* An HTTP/2 stream's outgoing DATA queue (h2_sendq.h). */
#include "h2_sendq.h"

#include <errno.h>
#include <string.h>

int kg_h2_sendq_push(struct kg_h2_sendq *s, const void *p, size_t n, bool end, size_t low_water,
		     void *(*re)(void *ptr, size_t size, void *ud), void *ud)
{
	if (n > 0) {
		if (s->off > 0 && s->off + s->len + n > s->cap) {
			memmove(s->q, s->q + s->off, s->len);
			s->off = 0;
		}
		size_t need = s->off + s->len + n;
		if (need > s->cap) {
			size_t cap = s->cap ? s->cap : 8;
			while (cap < need)
				cap *= 2;
			uint8_t *nq = re(s->q, cap, ud);
			if (!nq)
				return -ENOMEM;
			s->q = nq;
			s->cap = cap;
		}
		memcpy(s->q + s->off + s->len, p, n);
		s->len += n;
	}
	s->low_water = low_water;
	s->want_room = !end;
	return 0;
}

size_t kg_h2_sendq_take(struct kg_h2_sendq *s, uint8_t *buf, size_t length)
{
	size_t n = s->len < length ? s->len : length;
	if (n)
		memcpy(buf, s->q + s->off, n);
	s->off += n;
	s->len -= n;
	if (s->len == 0)
		s->off = 0;
	return n;
}

bool kg_h2_sendq_room_due(struct kg_h2_sendq *s, bool ended, size_t taking)
{
	size_t left = s->len > taking ? s->len - taking : 0;
	if (!s->want_room || ended || left > s->low_water)
		return false;
	s->want_room = false;
	return true;
}
