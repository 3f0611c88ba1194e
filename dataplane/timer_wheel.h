/* A hashed timer wheel (h2o's lib/common/timerwheel.c and the Linux
 * kernel's timer wheel are the models): a connection's deadline costs
 * nothing between arming and firing, however many connections wait.
 *
 * Timers are intrusive (struct kg_timer sits in its owner) and fire at
 * most one granule late when kg_wheel_expire runs on every granule
 * boundary (the worker's tick is armed on them), never early: a timer for `at` goes to the slot of
 * the first granule boundary at or after it. A timer further away than the
 * wheel spans waits in the last slot and is put back when that comes up,
 * once per turn. Arming never allocates; arm, cancel and re-arm are O(1).
 * Single-threaded: one wheel per worker. */
#ifndef KGATE_TIMER_WHEEL_H
#define KGATE_TIMER_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KG_WHEEL_GRANULE_MS 100 /* the worker's tick */
#define KG_WHEEL_SLOTS 4096     /* a power of two: 409.6 s per turn */

struct kg_timer {
	struct kg_timer *prev, *next; /* in its slot's list; prev NULL when not armed */
	uint64_t at;                  /* when it is due (monotonic ms) */
};

struct kg_wheel {
	struct kg_timer head[KG_WHEEL_SLOTS]; /* list heads (circular, sentinel) */
	uint64_t tick;  /* the next granule to expire; those before it are done */
	size_t armed;   /* timers on the wheel */
};

void kg_wheel_init(struct kg_wheel *wh, uint64_t now_ms);
/* Arms t for at (re-arms it when armed already). A time in the past fires
 * at the next expiry. */
void kg_wheel_arm(struct kg_wheel *wh, struct kg_timer *t, uint64_t at);
/* Takes t off the wheel; nothing when it is not armed. */
void kg_wheel_cancel(struct kg_wheel *wh, struct kg_timer *t);
static inline bool kg_timer_armed(const struct kg_timer *t)
{
	return t->prev != NULL;
}
/* One timer due at or before now_ms, taken off the wheel (the caller may
 * re-arm it), or NULL when none is left. Call until NULL. */
struct kg_timer *kg_wheel_expire(struct kg_wheel *wh, uint64_t now_ms);

#endif
