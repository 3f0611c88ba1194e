/* Path sockmap: plain tcp through the eBPF sockmap (forward_sockmap.c);
 * refused in this version (bpf/README.md), built for experiments. */
#ifndef KGATE_FORWARD_SOCKMAP_H
#define KGATE_FORWARD_SOCKMAP_H

#include "fwd.h"

extern const struct kg_fwd_ops kg_fwd_sockmap_ops;

#endif
