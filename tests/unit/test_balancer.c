#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>

#include "balancer.h"
#include <kgate/limits.h>

struct sequence_case {
	const char *desc;
	unsigned weights[4];
	size_t n;
	const char *expected; /* member letters, one full cycle twice */
};

static const struct sequence_case sequence_cases[] = {
	{"two equal members alternate", {1, 1}, 2, "ABABABAB"},
	{"three equal members rotate", {1, 1, 1}, 3, "ABCABC"},
	{"weights 5,1,1 interleave smoothly", {5, 1, 1}, 3, "AABACAAAABACAA"},
	{"weights 2,1 give A twice per cycle", {2, 1}, 2, "ABAABA"},
	{"single member always chosen", {3}, 1, "AAAA"},
};

Test(balancer_rr, smooth_sequences)
{
	for (size_t c = 0; c < sizeof(sequence_cases) / sizeof(sequence_cases[0]); c++) {
		const struct sequence_case *tc = &sequence_cases[c];
		struct kg_balancer *b = kg_balancer_create("rr", tc->weights, tc->n);
		cr_assert_not_null(b, "%s: create", tc->desc);
		for (size_t i = 0; tc->expected[i]; i++) {
			int m = kg_balancer_select(b, 0);
			cr_expect_eq(m, tc->expected[i] - 'A', "%s: step %zu chose %d",
				     tc->desc, i, m);
		}
		kg_balancer_destroy(b);
	}
}

Test(balancer_rr, refuses_bad_members)
{
	unsigned zero[] = {1, 0};
	unsigned heavy[] = {KG_MAX_WEIGHT + 1};
	unsigned many[KG_MAX_BACKENDS + 1];
	for (size_t i = 0; i < KG_MAX_BACKENDS + 1; i++)
		many[i] = 1;
	cr_expect_null(kg_balancer_create("rr", zero, 2));
	cr_expect_null(kg_balancer_create("rr", heavy, 1));
	cr_expect_null(kg_balancer_create("rr", many, KG_MAX_BACKENDS + 1));
	cr_expect_null(kg_balancer_create("rr", many, 0));
	cr_expect_null(kg_balancer_create("lc", many, 1));
	struct kg_balancer *b = kg_balancer_create("rr", many, KG_MAX_BACKENDS);
	cr_assert_not_null(b);
	kg_balancer_destroy(b);
	kg_balancer_destroy(NULL);
}

Test(balancer_rr, down_members_leave_rotation)
{
	unsigned w[] = {1, 1, 1};
	struct kg_balancer *b = kg_balancer_create("rr", w, 3);
	cr_assert_not_null(b);
	kg_balancer_set_up(b, 1, false);
	cr_expect_not(kg_balancer_is_up(b, 1));
	for (int i = 0; i < 10; i++) {
		int m = kg_balancer_select(b, 0);
		cr_expect(m == 0 || m == 2, "picked down member %d", m);
	}
	kg_balancer_set_up(b, 0, false);
	kg_balancer_set_up(b, 2, false);
	cr_expect_eq(kg_balancer_select(b, 0), -1, "all down must select nothing");
	kg_balancer_set_up(b, 1, true);
	cr_expect_eq(kg_balancer_select(b, 0), 1);
	kg_balancer_set_up(b, 7, true); /* out of range: ignored */
	kg_balancer_destroy(b);
}

Test(balancer_rr, skip_mask_excludes_tried_members)
{
	unsigned w[] = {1, 1, 1};
	struct kg_balancer *b = kg_balancer_create("rr", w, 3);
	cr_assert_not_null(b);
	for (int i = 0; i < 6; i++) {
		int m = kg_balancer_select(b, 1ull << 0);
		cr_expect(m == 1 || m == 2, "skipped member chosen: %d", m);
	}
	cr_expect_eq(kg_balancer_select(b, 0x7), -1);
	kg_balancer_destroy(b);
}

#define THREADS 4
#define PICKS 20000

struct picker {
	struct kg_balancer *b;
	unsigned counts[2];
};

static void *pick_many(void *arg)
{
	struct picker *p = arg;
	for (int i = 0; i < PICKS; i++) {
		int m = kg_balancer_select(p->b, 0);
		if (m >= 0)
			p->counts[m]++;
	}
	return NULL;
}

Test(balancer_rr, shared_cursor_balances_across_threads)
{
	unsigned w[] = {1, 1};
	struct kg_balancer *b = kg_balancer_create("rr", w, 2);
	cr_assert_not_null(b);
	pthread_t t[THREADS];
	struct picker p[THREADS] = {0};
	for (int i = 0; i < THREADS; i++) {
		p[i].b = b;
		cr_assert_eq(pthread_create(&t[i], NULL, pick_many, &p[i]), 0);
	}
	unsigned total[2] = {0, 0};
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		total[0] += p[i].counts[0];
		total[1] += p[i].counts[1];
	}
	/* One atomic cursor: the global sequence is exactly alternating, so
	 * the totals are equal whatever the interleaving. */
	cr_expect_eq(total[0], total[1], "A=%u B=%u", total[0], total[1]);
	cr_expect_eq(total[0] + total[1], THREADS * PICKS);
	kg_balancer_destroy(b);
}

Test(balancer_rr, set_up_races_with_select)
{
	unsigned w[] = {1, 1};
	struct kg_balancer *b = kg_balancer_create("rr", w, 2);
	cr_assert_not_null(b);
	pthread_t t[2];
	struct picker p[2] = {{.b = b}, {.b = b}};
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, pick_many, &p[i]), 0);
	for (int i = 0; i < 2000; i++)
		kg_balancer_set_up(b, 1, i % 2);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	kg_balancer_set_up(b, 1, false);
	cr_expect_eq(kg_balancer_select(b, 0), 0);
	kg_balancer_destroy(b);
}

Test(balancer_rr, set_weights_changes_the_sequence)
{
	unsigned equal[] = {1, 1};
	struct kg_balancer *b = kg_balancer_create("rr", equal, 2);
	cr_assert_not_null(b);
	/* Slow start scales everyone up and gives the recovering member less. */
	unsigned ramp[] = {256, 64};
	cr_assert_eq(kg_balancer_set_weights(b, ramp), 0);
	unsigned hits[2] = {0, 0};
	for (int i = 0; i < 320; i++) {
		int m = kg_balancer_select(b, 0);
		cr_assert(m == 0 || m == 1);
		hits[m]++;
	}
	cr_expect_eq(hits[0], 256);
	cr_expect_eq(hits[1], 64);
	unsigned bad[] = {1, 0};
	cr_expect_eq(kg_balancer_set_weights(b, bad), -EINVAL);
	unsigned too_big[] = {KG_MAX_WEIGHT + 1, 1};
	cr_expect_eq(kg_balancer_set_weights(b, too_big), -EINVAL);
	/* A refused update leaves the weights as they were. */
	hits[0] = hits[1] = 0;
	for (int i = 0; i < 320; i++)
		hits[kg_balancer_select(b, 0)]++;
	cr_expect_eq(hits[0], 256);
	cr_expect_eq(hits[1], 64);
	kg_balancer_destroy(b);
}
