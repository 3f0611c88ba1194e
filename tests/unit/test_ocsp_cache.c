/* ocsp_cache.c: answers are found until they expire and never after,
 * a newer answer replaces an older one, and a full cache gives up the
 * entry that expires first. */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "ocsp_cache.h"

static void id_of(unsigned n, unsigned char *id, size_t *len)
{
	memset(id, 0x30, 40);
	memcpy(id + 36, &n, sizeof(n));
	*len = 40;
}

Test(ocsp_cache, found_until_next_update_never_after)
{
	struct kg_ocsp_cache c;
	unsigned char id[40];
	size_t len;
	enum kg_ocsp_status st = KG_OCSP_UNKNOWN;
	cr_assert_eq(kg_ocsp_cache_init(&c, 4), 0);
	id_of(1, id, &len);
	cr_assert_eq(kg_ocsp_cache_put(&c, id, len, KG_OCSP_GOOD, 1000, 900), 0);
	cr_assert(kg_ocsp_cache_get(&c, id, len, 999, &st));
	cr_assert_eq(st, KG_OCSP_GOOD);
	/* At nextUpdate the answer is stale: dropped, not trusted. */
	cr_assert_not(kg_ocsp_cache_get(&c, id, len, 1000, &st));
	cr_assert_eq(kg_ocsp_cache_count(&c), 0);
	cr_assert_not(kg_ocsp_cache_get(&c, id, len, 999, &st), "a dropped entry stays gone");
	kg_ocsp_cache_destroy(&c);
}

Test(ocsp_cache, refuses_stale_and_oversized)
{
	struct kg_ocsp_cache c;
	unsigned char big[KG_OCSP_ID_MAX + 1];
	memset(big, 1, sizeof(big));
	cr_assert_eq(kg_ocsp_cache_init(&c, 2), 0);
	cr_assert_eq(kg_ocsp_cache_put(&c, big, 10, KG_OCSP_GOOD, 100, 100), -EINVAL,
		     "already expired");
	cr_assert_eq(kg_ocsp_cache_put(&c, big, sizeof(big), KG_OCSP_GOOD, 200, 100), -EINVAL);
	cr_assert_eq(kg_ocsp_cache_put(&c, big, 0, KG_OCSP_GOOD, 200, 100), -EINVAL);
	cr_assert_eq(kg_ocsp_cache_count(&c), 0);
	kg_ocsp_cache_destroy(&c);
}

Test(ocsp_cache, newer_answer_replaces)
{
	struct kg_ocsp_cache c;
	unsigned char id[40];
	size_t len;
	enum kg_ocsp_status st = KG_OCSP_GOOD;
	cr_assert_eq(kg_ocsp_cache_init(&c, 4), 0);
	id_of(7, id, &len);
	cr_assert_eq(kg_ocsp_cache_put(&c, id, len, KG_OCSP_GOOD, 500, 0), 0);
	cr_assert_eq(kg_ocsp_cache_put(&c, id, len, KG_OCSP_REVOKED, 800, 10), 0);
	cr_assert_eq(kg_ocsp_cache_count(&c), 1);
	cr_assert(kg_ocsp_cache_get(&c, id, len, 600, &st));
	cr_assert_eq(st, KG_OCSP_REVOKED);
	kg_ocsp_cache_destroy(&c);
}

Test(ocsp_cache, full_cache_evicts_the_first_to_expire)
{
	struct kg_ocsp_cache c;
	unsigned char id[40];
	size_t len;
	enum kg_ocsp_status st;
	static const time_t expires[] = {300, 100, 400};
	cr_assert_eq(kg_ocsp_cache_init(&c, 3), 0);
	for (unsigned i = 0; i < 3; i++) {
		id_of(i, id, &len);
		cr_assert_eq(kg_ocsp_cache_put(&c, id, len, KG_OCSP_GOOD, expires[i], 0), 0);
	}
	id_of(3, id, &len);
	cr_assert_eq(kg_ocsp_cache_put(&c, id, len, KG_OCSP_UNKNOWN, 200, 0), 0);
	cr_assert_eq(kg_ocsp_cache_count(&c), 3);
	for (unsigned i = 0; i < 4; i++) {
		id_of(i, id, &len);
		bool want = i != 1; /* expires 100: the first to go */
		cr_assert_eq(kg_ocsp_cache_get(&c, id, len, 50, &st), want, "entry %u", i);
	}
	id_of(3, id, &len);
	cr_assert(kg_ocsp_cache_get(&c, id, len, 50, &st));
	cr_assert_eq(st, KG_OCSP_UNKNOWN);
	kg_ocsp_cache_destroy(&c);
}
