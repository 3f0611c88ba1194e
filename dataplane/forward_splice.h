/* Paths ktls-splice, splice and userspace-copy: both directions of a
 * connection as whole streams through splice_pump.h (forward_splice.c). */
#ifndef KGATE_FORWARD_SPLICE_H
#define KGATE_FORWARD_SPLICE_H

#include "fwd.h"

extern const struct kg_fwd_ops kg_fwd_splice_ops;

#endif
