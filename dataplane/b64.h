/* Standard base64 (RFC 4648 section 4, with padding), the encoding etcd's
 * JSON gateway uses for keys and values and the one of sealed secrets.
 * OpenSSL's EVP_EncodeBlock/EVP_DecodeBlock do the work; this module adds
 * what they leave to the caller: exact output lengths (EVP_DecodeBlock
 * counts padding as zero bytes) and refusing text that is not canonical
 * base64 (EVP_DecodeBlock skips surrounding whitespace). */
#ifndef KGATE_B64_H
#define KGATE_B64_H

#include <stddef.h>

/* Encodes len bytes into a malloc'd NUL-terminated string. Returns 0 or
 * -ENOMEM (also when the output length would overflow). */
int kg_b64_encode(const void *data, size_t len, char **out);

/* Decodes text (len characters, no NUL needed) into a malloc'd buffer
 * of *outlen bytes plus a terminating NUL (so text values can be used as
 * C strings; binary values may hold NULs of their own). Returns 0,
 * -EINVAL when text is not padded standard base64 (length not a multiple
 * of 4, a character outside the alphabet, '=' not at the end), -ENOMEM. */
int kg_b64_decode(const char *text, size_t len, unsigned char **out, size_t *outlen);

#endif
