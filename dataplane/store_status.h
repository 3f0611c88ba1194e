/* What store mode (store.h) tells status and metrics readers, written by
 * the store threads and read by the control thread: atomics only, so the
 * readers need no lock. */
#ifndef KGATE_STORE_STATUS_H
#define KGATE_STORE_STATUS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct kg_store_status {
	const char *url;                  /* --store as given */
	atomic_bool reachable;            /* the last request answered */
	atomic_int_least64_t applied_revision; /* mod_revision of the state in use; 0: none */
	atomic_uint_least64_t last_contact_ms; /* monotonic (kg_now_ms); 0: never */
	atomic_uint_least64_t documents_refused;
};

#endif
