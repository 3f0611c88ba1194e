/* kg_rp_pick (include/kgate/reuseport_bpf.h): the worker the sk_reuseport
 * program steers a new connection to. The same inline function is
 * compiled into bpf/reuseport.bpf.c. */
#include <criterion/criterion.h>

#include <stdint.h>

#include <kgate/reuseport_bpf.h>

struct pick_case {
	const char *what;
	__u32 conns[4];
	__s32 pending[4];
	__u32 n;
	__u32 hash;
	__u32 want;
};

static const struct pick_case cases[] = {
	{"one worker takes everything", {9}, {0}, 1, 12345, 0},
	{"the least loaded", {5, 2, 7, 3}, {0}, 4, 0, 1},
	{"the least loaded, whatever the hash", {5, 2, 7, 3}, {0}, 4, 3, 1},
	{"pending counts as load", {1, 1}, {3, 0}, 2, 0, 1},
	{"a negative pending reads as 0", {2, 1}, {-5, 0}, 2, 0, 1},
	{"ties: the scan starts at hash % n", {4, 4, 4, 4}, {0}, 4, 6, 2},
	{"ties: wraps around from the start", {1, 9, 9, 1}, {0}, 4, 2, 3},
	{"ties: wraps to the lowest", {1, 9, 9, 9}, {0}, 4, 2, 0},
	{"counts past n are not looked at", {3, 3, 0, 0}, {0}, 2, 1, 1},
	{"idle beats any pending-only", {0, 0}, {1, 0}, 2, 0, 1},
};

Test(reuseport_pick, table)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct pick_case *c = &cases[i];
		__u32 got = kg_rp_pick(c->conns, c->pending, c->n, c->hash);
		cr_expect_eq(got, c->want, "%s: got %u, want %u", c->what, got, c->want);
	}
}

/* Connections that arrive faster than the workers accept: each pick marks
 * one pending (as the program does), so a burst alternates instead of
 * piling onto the worker that was least loaded when it began, and ends
 * within one of even. */
Test(reuseport_pick, burst_spreads)
{
	for (__u32 n = 1; n <= 8; n++) {
		__u32 conns[KG_RP_MAX_WORKERS] = {0};
		__s32 pending[KG_RP_MAX_WORKERS] = {0};
		conns[0] = 5; /* one worker starts ahead */
		for (__u32 k = 0; k < 1000; k++)
			pending[kg_rp_pick(conns, pending, n, k * 2654435761u)]++;
		__u32 lo = UINT32_MAX, hi = 0;
		for (__u32 w = 0; w < n; w++) {
			__u32 load = conns[w] + (__u32)pending[w];
			lo = load < lo ? load : lo;
			hi = load > hi ? load : hi;
		}
		cr_expect_leq(hi - lo, 1, "n=%u: loads from %u to %u", n, lo, hi);
	}
}

/* Equal workers share by the hash: with every worker idle the first pick
 * follows hash % n rather than always worker 0. */
Test(reuseport_pick, idle_ties_follow_the_hash)
{
	__u32 conns[4] = {0};
	__s32 pending[4] = {0};
	for (__u32 h = 0; h < 16; h++)
		cr_expect_eq(kg_rp_pick(conns, pending, 4, h), h % 4);
}
