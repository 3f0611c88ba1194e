/* h2_block.c: fields survive the arena moving, a value built in place,
 * reuse after clear, and the owner's allocator sees every byte. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "h2_block.h"

struct counted {
	size_t live;  /* blocks held */
	size_t calls; /* realloc calls */
	size_t fail_after; /* realloc fails from this call on (0: never) */
};

static void *counted_realloc(void *p, size_t n, void *ud)
{
	struct counted *c = ud;
	if (c->fail_after && ++c->calls >= c->fail_after)
		return NULL;
	if (!p)
		c->live++;
	return realloc(p, n);
}

static void counted_free(void *p, void *ud)
{
	struct counted *c = ud;
	if (p)
		c->live--;
	free(p);
}

static void expect_field(const struct kg_h2_block *b, size_t i, const char *name,
			 const char *value)
{
	struct kg_h2_field f = kg_h2_block_field(b, i);
	cr_expect_eq(f.name_len, strlen(name));
	cr_expect_str_eq(f.name, name);
	cr_expect_eq(f.value_len, strlen(value));
	cr_expect_str_eq(f.value, value);
}

Test(h2_block, fields_stay_right_as_the_arena_moves)
{
	struct counted c = {0};
	struct kg_h2_block b = {0};
	char name[32], value[64];
	/* Enough fields that the arena and the offsets reallocate many times. */
	for (int i = 0; i < 200; i++) {
		snprintf(name, sizeof(name), "x-field-%d", i);
		snprintf(value, sizeof(value), "value %d %s", i, i % 2 ? "odd" : "even");
		cr_assert_eq(kg_h2_block_add(&b, (const uint8_t *)name, strlen(name),
					     (const uint8_t *)value, strlen(value), counted_realloc, &c),
			     0);
	}
	cr_assert_eq(b.n, 200);
	expect_field(&b, 0, "x-field-0", "value 0 even");
	expect_field(&b, 199, "x-field-199", "value 199 odd");
	/* An empty value is a NUL-terminated empty string, not a NULL. */
	cr_assert_eq(kg_h2_block_add(&b, (const uint8_t *)"empty", 5, (const uint8_t *)"", 0,
				     counted_realloc, &c),
		     0);
	expect_field(&b, 200, "empty", "");
	cr_expect_eq(c.live, 2); /* the arena and the offsets */
	kg_h2_block_free(&b, counted_free, &c);
	cr_expect_eq(c.live, 0);
	cr_expect_null(b.arena);
	cr_expect_null(b.f);
}

Test(h2_block, a_value_built_in_place_is_terminated_and_addressable)
{
	struct counted c = {0};
	struct kg_h2_block b = {0};
	cr_assert_eq(kg_h2_block_add(&b, (const uint8_t *)"cookie", 6, (const uint8_t *)"a=1", 3,
				     counted_realloc, &c),
		     0);
	uint32_t off;
	cr_assert_eq(kg_h2_block_reserve(&b, 8, counted_realloc, &c, &off), 0);
	memcpy(b.arena + off, "a=1; b=2", 8);
	b.f[0].value = off;
	b.f[0].value_len = 8;
	expect_field(&b, 0, "cookie", "a=1; b=2");
	kg_h2_block_free(&b, counted_free, &c);
	cr_expect_eq(c.live, 0);
}

Test(h2_block, clear_reuses_memory_and_free_offsets_keeps_the_arena)
{
	struct counted c = {0};
	struct kg_h2_block b = {0};
	cr_assert_eq(kg_h2_block_add(&b, (const uint8_t *)"a", 1, (const uint8_t *)"1", 1,
				     counted_realloc, &c),
		     0);
	char *arena = b.arena;
	kg_h2_block_clear(&b);
	cr_expect_eq(b.n, 0);
	cr_assert_eq(kg_h2_block_add(&b, (const uint8_t *)"b", 1, (const uint8_t *)"2", 1,
				     counted_realloc, &c),
		     0);
	cr_expect_eq(b.arena, arena, "a cleared block reuses its arena");
	expect_field(&b, 0, "b", "2");
	const char *value = kg_h2_block_field(&b, 0).value;
	kg_h2_block_free_offsets(&b, counted_free, &c);
	cr_expect_eq(c.live, 1);
	cr_expect_str_eq(value, "2", "the arena outlives the offsets");
	kg_h2_block_free(&b, counted_free, &c);
	cr_expect_eq(c.live, 0);
}

Test(h2_block, allocation_failure_is_reported_and_leaks_nothing)
{
	for (size_t fail = 1; fail <= 4; fail++) {
		struct counted c = {.fail_after = fail};
		struct kg_h2_block b = {0};
		int rv = 0;
		for (int i = 0; i < 50 && rv == 0; i++)
			rv = kg_h2_block_add(&b, (const uint8_t *)"name", 4, (const uint8_t *)"value",
					     5, counted_realloc, &c);
		cr_expect_eq(rv, -ENOMEM, "realloc failing from call %zu", fail);
		kg_h2_block_free(&b, counted_free, &c);
		cr_expect_eq(c.live, 0);
	}
}
