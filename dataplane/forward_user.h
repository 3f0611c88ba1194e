/* Path userspace-tls: OpenSSL decrypts and encrypts, io_uring moves the
 * bytes (forward_user.c). */
#ifndef KGATE_FORWARD_USER_H
#define KGATE_FORWARD_USER_H

#include "fwd.h"

extern const struct kg_fwd_ops kg_fwd_user_ops;

#endif
