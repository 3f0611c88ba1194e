/* The kTLS handoff: after the handshake (and, for tls listeners, the
 * backend connect), the client socket's record layer moves from OpenSSL to
 * the kernel, and the connection goes on to its path (ktls-splice,
 * http-ktls-splice), or to userspace TLS when the kernel or the client's
 * bytes do not allow it (handoff.c).
 *
 * It runs as the connection's forwarder for the HANDOFF state (fwd.h):
 * it waits for I/O through the same hooks. Registered by forwarders.c. */
#ifndef KGATE_HANDOFF_H
#define KGATE_HANDOFF_H

#include "fwd.h"

/* kg_fwd_register_handoff(&the handoff's ops). */
void kg_handoff_register(void);

#endif
