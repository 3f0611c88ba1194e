/* heap_trim: when a worker gives freed heap back after a wave of
 * connections. */
#include <criterion/criterion.h>

#include "heap_trim.h"

Test(heap_trim, a_wave_that_ends_trims_once)
{
	struct kg_heap_trim t = {0};
	uint64_t now = 1000;

	for (uint32_t n = 0; n <= 2000; n += 100, now += 100)
		cr_assert_not(kg_heap_trim_due(&t, n, now, NULL), "rising: %u", n);
	cr_assert_not(kg_heap_trim_due(&t, 1000, now += 100, NULL), "half the peak is not enough");
	cr_assert_not(kg_heap_trim_due(&t, 501, now += 100, NULL), "just over a quarter");
	uint32_t peak = 0;
	cr_assert(kg_heap_trim_due(&t, 500, now += 100, &peak), "a quarter of the peak");
	cr_assert_eq(peak, 2000, "trimmed after falling from %u", peak);
	/* The last 500 going is a drop of its own: one more trim, once the
	 * interval has passed, then none. */
	int trims = 0;
	for (int i = 0; i < 200; i++) {
		bool due = kg_heap_trim_due(&t, 0, now += 100, NULL);
		if (due)
			cr_assert_geq(i + 1, KG_HEAP_TRIM_INTERVAL_MS / 100, "inside the interval");
		trims += due;
	}
	cr_assert_eq(trims, 1, "the end of the wave: %d trims", trims);
}

Test(heap_trim, small_waves_never_trim)
{
	struct kg_heap_trim t = {0};
	uint64_t now = 1000;

	for (int round = 0; round < 50; round++) {
		cr_assert_not(kg_heap_trim_due(&t, KG_HEAP_TRIM_MIN_DROP - 1, now += 100, NULL));
		cr_assert_not(kg_heap_trim_due(&t, 0, now += 100, NULL), "a drop below the minimum");
	}
}

Test(heap_trim, trims_are_spaced_by_the_interval)
{
	struct kg_heap_trim t = {0};
	uint64_t now = 1000;

	kg_heap_trim_due(&t, 1000, now, NULL);
	cr_assert(kg_heap_trim_due(&t, 0, now += 100, NULL));
	kg_heap_trim_due(&t, 1000, now += 100, NULL);
	cr_assert_not(kg_heap_trim_due(&t, 0, now += 100, NULL), "a second wave right after");
	cr_assert_not(kg_heap_trim_due(&t, 0, now + KG_HEAP_TRIM_INTERVAL_MS - 300, NULL),
		      "still inside the interval");
	cr_assert(kg_heap_trim_due(&t, 0, now + KG_HEAP_TRIM_INTERVAL_MS, NULL),
		  "the second wave's peak is remembered until the interval has passed");
}

Test(heap_trim, a_busy_worker_that_stays_busy_never_trims)
{
	struct kg_heap_trim t = {0};
	uint64_t now = 1000;

	for (int i = 0; i < 1000; i++)
		cr_assert_not(kg_heap_trim_due(&t, 3000 + (uint32_t)(i % 7) * 100, now += 100, NULL));
}
