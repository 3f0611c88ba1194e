/* When a worker hands freed heap memory back to the kernel.
 *
 * glibc keeps what a thread freed in that thread's arena for reuse, so
 * after a wave of connections (a burst of idle keep-alive clients, a
 * load test) has gone, kgated's RSS stays at the wave's peak for good:
 * 2,000 idle mTLS connections left about 50 MiB behind (HAProxy, too,
 * calls malloc_trim when it flushes its pools). Each worker keeps one
 * kg_heap_trim and asks it on every tick whether the time has come to call
 * malloc_trim(0): only after its connection count fell to a quarter of the
 * peak since the last trim, by at least KG_HEAP_TRIM_MIN_DROP connections,
 * and not more often than every KG_HEAP_TRIM_INTERVAL_MS, so that a busy
 * worker never pays for walking the arenas. */
#ifndef KGATE_HEAP_TRIM_H
#define KGATE_HEAP_TRIM_H

#include <stdbool.h>
#include <stdint.h>

#define KG_HEAP_TRIM_MIN_DROP 256
#define KG_HEAP_TRIM_INTERVAL_MS 5000

struct kg_heap_trim {
	uint32_t peak;        /* most connections since the last trim */
	uint64_t last_ms;     /* when that trim was */
};

/* Records the worker's connection count at now_ms and returns true when
 * the caller should trim now, with the peak the count fell from in *peak
 * (may be NULL); the state then starts over from conns. */
bool kg_heap_trim_due(struct kg_heap_trim *t, uint32_t conns, uint64_t now_ms, uint32_t *peak);

#endif
