/* The one clock of the daemon: monotonic milliseconds, for deadlines,
 * intervals and uptime (never wall time). */
#ifndef KGATE_CLOCK_H
#define KGATE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t kg_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif
