/* timer_wheel.c: timers fire never early and at most one granule late,
 * in any order of arming, across the wheel's turn, re-armed and
 * cancelled; an idle wheel costs nothing per timer until due. */
#include <stdlib.h>

#include <criterion/criterion.h>

#include "timer_wheel.h"

#define G KG_WHEEL_GRANULE_MS
#define TURN ((uint64_t)KG_WHEEL_SLOTS * G)

/* Runs the wheel from start to end in steps, recording when each timer
 * fired (0: not fired). */
static void run(struct kg_wheel *wh, uint64_t start, uint64_t end, uint64_t step,
		struct kg_timer *base, uint64_t *fired)
{
	for (uint64_t now = start; now <= end; now += step) {
		struct kg_timer *t;
		while ((t = kg_wheel_expire(wh, now))) {
			size_t i = (size_t)(t - base);
			cr_assert_eq(fired[i], 0, "timer %zu fired twice", i);
			fired[i] = now;
		}
	}
}

struct at_case {
	const char *name;
	uint64_t at;    /* from the start */
	uint64_t step;  /* how often the worker looks */
};

Test(timer_wheel, fires_never_early_and_within_a_granule)
{
	static const struct at_case cases[] = {
		{"now", 0, G},
		{"in the past", 0, G}, /* armed below with start - 5000 */
		{"within the first granule", 30, G},
		{"on a boundary", 10 * G, G},
		{"off a boundary", 10 * G + 1, G},
		{"a typical idle timeout", 300000, G},
		{"just under a turn", TURN - 1, G},
		{"a turn exactly", TURN, G},
		{"three turns and a bit", 3 * TURN + 777, G},
		{"checked every 10 ms", 12345, 10},
		{"checked every 1 ms", 250, 1},
	};
	const uint64_t start = 1000000037; /* not aligned to the granule */
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct kg_wheel *wh = malloc(sizeof(*wh));
		struct kg_timer t = {0};
		uint64_t fired = 0;
		kg_wheel_init(wh, start);
		uint64_t at = i == 1 ? start - 5000 : start + cases[i].at;
		kg_wheel_arm(wh, &t, at);
		cr_expect(kg_timer_armed(&t));
		run(wh, start, start + cases[i].at + 3 * G, cases[i].step, &t, &fired);
		cr_expect_neq(fired, 0, "%s: did not fire", cases[i].name);
		cr_expect_geq(fired, at, "%s: fired at %lu, due %lu", cases[i].name,
			      (unsigned long)fired, (unsigned long)at);
		uint64_t late_limit = (at > start ? at : start) + G + cases[i].step;
		cr_expect_leq(fired, late_limit, "%s: fired at %lu, due %lu", cases[i].name,
			      (unsigned long)fired, (unsigned long)at);
		cr_expect_not(kg_timer_armed(&t));
		cr_expect_eq(wh->armed, 0);
		free(wh);
	}
}

/* A deadline of "never" (UINT64_MAX, or close to it) must not wrap when
 * rounded to a granule: it waits, a later one fires, expiry returns. */
Test(timer_wheel, never_waits_and_expiry_returns, .timeout = 10)
{
	struct kg_wheel *wh = malloc(sizeof(*wh));
	struct kg_timer never = {0}, almost = {0}, soon = {0};
	const uint64_t start = 5000;
	kg_wheel_init(wh, start);
	kg_wheel_arm(wh, &never, UINT64_MAX);
	kg_wheel_arm(wh, &almost, UINT64_MAX - 1);
	kg_wheel_arm(wh, &soon, start + 10 * G);
	struct kg_timer *t, *order[3];
	size_t n = 0;
	for (uint64_t now = start; now <= start + 2 * TURN; now += G)
		while ((t = kg_wheel_expire(wh, now)))
			if (n < 3)
				order[n++] = t;
	cr_assert_eq(n, 1, "%zu timers fired", n);
	cr_expect_eq(order[0], &soon);
	cr_expect(kg_timer_armed(&never));
	cr_expect(kg_timer_armed(&almost));
	cr_expect_eq(wh->armed, 2);
	free(wh);
}

Test(timer_wheel, many_timers_in_any_order)
{
	enum { N = 20000 };
	struct kg_wheel *wh = malloc(sizeof(*wh));
	struct kg_timer *t = calloc(N, sizeof(*t));
	uint64_t *fired = calloc(N, sizeof(*fired)), *due = calloc(N, sizeof(*due));
	const uint64_t start = 5000;
	srand(7);
	kg_wheel_init(wh, start);
	for (size_t i = 0; i < N; i++) {
		due[i] = start + (uint64_t)(rand() % (int)(2 * TURN / 1000)) * 1000 + (uint64_t)(rand() % 1000);
		kg_wheel_arm(wh, &t[i], due[i]);
	}
	cr_assert_eq(wh->armed, N);
	run(wh, start, start + 2 * TURN + 2 * G, G, t, fired);
	for (size_t i = 0; i < N; i++) {
		cr_assert_geq(fired[i], due[i], "timer %zu early", i);
		cr_assert_leq(fired[i], due[i] + 2 * G, "timer %zu late: %lu for %lu", i,
			      (unsigned long)fired[i], (unsigned long)due[i]);
	}
	cr_expect_eq(wh->armed, 0);
	free(t);
	free(fired);
	free(due);
	free(wh);
}

Test(timer_wheel, rearm_and_cancel)
{
	struct kg_wheel *wh = malloc(sizeof(*wh));
	struct kg_timer t[3] = {{0}};
	uint64_t fired[3] = {0};
	kg_wheel_init(wh, 0);
	kg_wheel_arm(wh, &t[0], 50 * G);
	kg_wheel_arm(wh, &t[1], 50 * G);
	kg_wheel_arm(wh, &t[2], 50 * G);
	kg_wheel_arm(wh, &t[0], 10 * G);  /* earlier */
	kg_wheel_arm(wh, &t[1], 900 * G); /* later */
	kg_wheel_cancel(wh, &t[2]);
	kg_wheel_cancel(wh, &t[2]); /* twice: nothing */
	cr_expect_not(kg_timer_armed(&t[2]));
	cr_expect_eq(wh->armed, 2);
	run(wh, 0, 1000 * G, G, t, fired);
	cr_expect_eq(fired[0], 10 * G);
	cr_expect_eq(fired[1], 900 * G);
	cr_expect_eq(fired[2], 0);
	free(wh);
}

/* A timer re-armed for later each time it fires (a connection whose
 * deadline its I/O pushed) is visited once per push, never per tick. */
Test(timer_wheel, idle_costs_nothing_between_deadlines)
{
	struct kg_wheel *wh = malloc(sizeof(*wh));
	struct kg_timer t = {0};
	kg_wheel_init(wh, 0);
	kg_wheel_arm(wh, &t, 300000);
	unsigned visits = 0;
	for (uint64_t now = 0; now <= 300000 + G; now += G) {
		while (kg_wheel_expire(wh, now))
			visits++;
	}
	cr_expect_eq(visits, 1);
	free(wh);
}
