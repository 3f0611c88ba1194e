/* The one clock of the daemon: monotonic milliseconds, for deadlines,
 * intervals and uptime (never wall time). */
#ifndef KGATE_CLOCK_H
#define KGATE_CLOCK_H

#include <stdint.h>
#include <time.h>

#include <linux/time_types.h>

static inline uint64_t kg_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Monotonic microseconds, for measuring short work (a CRL's load). */
static inline uint64_t kg_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ms as the timespec io_uring timeouts read (a duration, or with
 * IORING_TIMEOUT_ABS a kg_now_ms instant). */
static inline void kg_ms_to_ts(uint64_t ms, struct __kernel_timespec *ts)
{
	ts->tv_sec = (long long)(ms / 1000);
	ts->tv_nsec = (long long)(ms % 1000) * 1000000;
}

#endif
