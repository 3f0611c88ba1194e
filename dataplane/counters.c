/* The counter table walked at run time (counters.h). */
#include "counters.h"

#include <stddef.h>

const char *const kg_counter_group_names[KG_CG_COUNT] = {
	[KG_CG_CONNECTIONS] = "connections",
	[KG_CG_HANDSHAKES] = "handshakes",
	[KG_CG_BYTES] = "bytes",
	[KG_CG_BACKENDS] = "backends",
};

const struct kg_counter_info kg_counter_table[KG_COUNTER_COUNT] = {
#define KG_COUNTER_ROW(field, group, json_key, family, labels, log_key, help)                    \
	{group, json_key, family, labels, log_key, help, offsetof(struct kg_counters, field)},
	KG_COUNTERS(KG_COUNTER_ROW)
#undef KG_COUNTER_ROW
};

static const atomic_uint_fast64_t *row(const struct kg_counters *c, size_t i)
{
	return (const atomic_uint_fast64_t *)((const char *)c + kg_counter_table[i].offset);
}

uint64_t kg_counter_read(const struct kg_counters *c, size_t i)
{
	return atomic_load_explicit(row(c, i), memory_order_relaxed);
}

void kg_counters_accumulate(struct kg_counters *sum, const struct kg_counters *c)
{
	for (size_t i = 0; i < KG_COUNTER_COUNT; i++)
		kg_count_add((atomic_uint_fast64_t *)row(sum, i), kg_counter_read(c, i));
	for (int p = 0; p < KG_PATH_COUNT; p++)
		kg_count_add(&sum->path[p], atomic_load_explicit(&c->path[p], memory_order_relaxed));
}
