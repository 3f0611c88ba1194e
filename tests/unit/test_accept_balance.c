/* accept_balance: which worker keeps an accepted connection. */
#include <criterion/criterion.h>

#include <stdint.h>

#include "accept_balance.h"

struct owner_case {
	const char *what;
	uint32_t loads[4];
	unsigned n;
	unsigned self;
	unsigned want;
};

static const struct owner_case cases[] = {
	{"one worker keeps everything", {7}, 1, 0, 0},
	{"equal loads: no hand-over", {3, 3}, 2, 1, 1},
	{"equal loads, self first: no hand-over", {3, 3, 3}, 3, 0, 0},
	{"self owns more: the other takes it", {4, 3}, 2, 0, 1},
	{"self owns less: keeps it", {2, 3}, 2, 0, 0},
	{"one more is enough to hand over", {5, 4, 6}, 3, 2, 1},
	{"the least loaded of several", {5, 2, 1, 3}, 4, 0, 2},
	{"ties among others: lowest index", {4, 1, 1, 6}, 4, 3, 1},
	{"tie with self among the least: self", {2, 1, 1, 1}, 4, 2, 2},
	{"idle workers first", {0, 9, 0, 9}, 4, 1, 0},
};

Test(accept_balance, owner_table)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct owner_case *c = &cases[i];
		cr_expect_eq(kg_accept_owner(c->loads, c->n, c->self), c->want, "%s: got %u, want %u",
			     c->what, kg_accept_owner(c->loads, c->n, c->self), c->want);
	}
}

/* Connections accepted one after another, each by whichever worker the
 * kernel's hash picked (here: always worker 0, or worker 2), end up
 * spread within one of each other. */
Test(accept_balance, sequential_accepts_stay_within_one)
{
	uint32_t loads[3] = {0, 0, 0};
	for (unsigned k = 0; k < 100; k++) {
		unsigned hashed = (k * 7u) % 5u == 0 ? 2 : 0;
		loads[kg_accept_owner(loads, 3, hashed)]++;
		uint32_t lo = loads[0], hi = loads[0];
		for (unsigned i = 1; i < 3; i++) {
			lo = loads[i] < lo ? loads[i] : lo;
			hi = loads[i] > hi ? loads[i] : hi;
		}
		cr_assert_leq(hi - lo, 1, "after %u connections: %u/%u/%u", k + 1, loads[0],
			      loads[1], loads[2]);
	}
}
