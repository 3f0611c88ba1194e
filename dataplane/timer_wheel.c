/* The timer wheel (timer_wheel.h). */
#include "timer_wheel.h"

#define MASK (KG_WHEEL_SLOTS - 1)

void kg_wheel_init(struct kg_wheel *wh, uint64_t now_ms)
{
	for (size_t i = 0; i < KG_WHEEL_SLOTS; i++)
		wh->head[i].prev = wh->head[i].next = &wh->head[i];
	wh->tick = now_ms / KG_WHEEL_GRANULE_MS;
	wh->armed = 0;
}

static void unlink_timer(struct kg_wheel *wh, struct kg_timer *t)
{
	t->prev->next = t->next;
	t->next->prev = t->prev;
	t->prev = t->next = NULL;
	wh->armed--;
}

void kg_wheel_cancel(struct kg_wheel *wh, struct kg_timer *t)
{
	if (kg_timer_armed(t))
		unlink_timer(wh, t);
}

void kg_wheel_arm(struct kg_wheel *wh, struct kg_timer *t, uint64_t at)
{
	kg_wheel_cancel(wh, t);
	/* The first granule boundary at or after `at`: never early. A time
	 * so far off that rounding up would wrap (UINT64_MAX: "never") waits
	 * in the last slot; wrapping put it in the current one, where expiry
	 * found it not due and re-armed it there again, for ever. */
	uint64_t tick = at > UINT64_MAX - (KG_WHEEL_GRANULE_MS - 1)
				? UINT64_MAX / KG_WHEEL_GRANULE_MS
				: (at + KG_WHEEL_GRANULE_MS - 1) / KG_WHEEL_GRANULE_MS;
	if (tick < wh->tick)
		tick = wh->tick;
	if (tick - wh->tick >= KG_WHEEL_SLOTS)
		tick = wh->tick + KG_WHEEL_SLOTS - 1; /* put back when it comes up */
	struct kg_timer *h = &wh->head[tick & MASK];
	t->at = at;
	t->prev = h->prev;
	t->next = h;
	h->prev->next = t;
	h->prev = t;
	wh->armed++;
}

struct kg_timer *kg_wheel_expire(struct kg_wheel *wh, uint64_t now_ms)
{
	uint64_t now_tick = now_ms / KG_WHEEL_GRANULE_MS;
	while (wh->tick <= now_tick) {
		struct kg_timer *h = &wh->head[wh->tick & MASK];
		while (h->next != h) {
			struct kg_timer *t = h->next;
			unlink_timer(wh, t);
			if (t->at <= now_ms)
				return t;
			/* Not due: it waits out a whole turn (a slot holds
			 * only times that round up to its granule, and those are
			 * <= now here), so it goes back to a later slot. */
			kg_wheel_arm(wh, t, t->at);
		}
		wh->tick++;
	}
	return NULL;
}
