/* See heap_trim.h. */
#include "heap_trim.h"

bool kg_heap_trim_due(struct kg_heap_trim *t, uint32_t conns, uint64_t now_ms, uint32_t *peak)
{
	if (conns > t->peak)
		t->peak = conns;
	if (t->peak - conns < KG_HEAP_TRIM_MIN_DROP || conns > t->peak / 4)
		return false;
	if (t->last_ms != 0 && now_ms - t->last_ms < KG_HEAP_TRIM_INTERVAL_MS)
		return false;
	if (peak)
		*peak = t->peak;
	t->peak = conns;
	t->last_ms = now_ms;
	return true;
}
