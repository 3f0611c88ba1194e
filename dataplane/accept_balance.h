/* Which worker keeps a connection one worker just accepted.
 *
 * Each worker has its own SO_REUSEPORT listening socket, and the kernel
 * spreads new connections over them by a hash of the addresses: with few
 * long-lived connections (a browser, a benchmark's 50 keep-alive
 * connections) one worker can own 60% of them while another idles, and on
 * a busy machine its connections wait for it. The accepting worker
 * therefore hands a connection to the worker that owns the fewest (counting
 * those handed to it and not yet adopted), so that accepted connections
 * stay spread within one of each other.
 *
 * This is the fallback: where the sk_reuseport program runs (steer.h,
 * settings.accept_steering), the kernel already chose the least-loaded
 * worker's socket and the accepting worker keeps the connection. */
#ifndef KGATE_ACCEPT_BALANCE_H
#define KGATE_ACCEPT_BALANCE_H

#include <stdint.h>

/* loads[i]: connections worker i owns or is being handed, before this one.
 * Returns the worker that takes it: self unless another owns fewer than
 * self does (ties stay with self: no hand-over without a gain); among
 * those, the least loaded, lowest index first. n >= 1, self < n. */
unsigned kg_accept_owner(const uint32_t *loads, unsigned n, unsigned self);

#endif
