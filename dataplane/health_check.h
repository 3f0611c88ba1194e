/* Active health checks: one checker per worker, on that worker's io_uring
 * ring, feeding the listeners' health groups (health.h).
 *
 * One check at a time per member: a timer waits out the interval, then
 * connect → (http: send request → receive the status line), each I/O
 * linked to a timeout for what is left of timeout_ms. Member m of a
 * listener is checked by one worker only (health.h, "who checks what").
 *
 * The worker runs the checks as its service (worker.h): created with the
 * worker, rebuilt when the published listeners change (a new generation;
 * the old checker finishes its in-flight completions), stopped on drain.
 * main registers it before the workers start. */
#ifndef KGATE_HEALTH_CHECK_H
#define KGATE_HEALTH_CHECK_H

#include "worker.h"

extern const struct kg_worker_service kg_health_checks_service;

#endif
