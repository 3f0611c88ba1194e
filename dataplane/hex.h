/* Hex digits to bytes, for the key material kgate reads as text: the KEK
 * file (seal.c), the TLS key log (ktls.c) and the ticket key file
 * (ticket_keys.c). */
#ifndef KGATE_HEX_H
#define KGATE_HEX_H

#include <stddef.h>

/* Exactly len bytes from exactly 2 * len hex digits (either case) at in,
 * which needs no NUL: 0, or -EINVAL (wrong length, a non-hex character;
 * out may then be partly written). */
int kg_hex_decode(unsigned char *out, size_t len, const char *in, size_t inlen);

#endif
