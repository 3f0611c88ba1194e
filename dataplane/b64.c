/* Base64 through OpenSSL's block functions (b64.h). */
#include "b64.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <openssl/evp.h>

int kg_b64_encode(const void *data, size_t len, char **out)
{
	*out = NULL;
	/* EVP_EncodeBlock takes an int length: refuse what it cannot count. */
	if (len > (size_t)INT_MAX / 4 * 3 - 3)
		return -ENOMEM;
	size_t n = (len + 2) / 3 * 4;
	char *s = malloc(n + 1);
	if (!s)
		return -ENOMEM;
	/* Writes exactly n characters and a NUL. */
	EVP_EncodeBlock((unsigned char *)s, data, (int)len);
	s[n] = '\0';
	*out = s;
	return 0;
}

static bool b64_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '+' || c == '/';
}

int kg_b64_decode(const char *text, size_t len, unsigned char **out, size_t *outlen)
{
	*out = NULL;
	*outlen = 0;
	if (len % 4 != 0 || len > (size_t)INT_MAX)
		return -EINVAL;
	size_t pad = 0;
	if (len > 0 && text[len - 1] == '=')
		pad++;
	if (len > 1 && text[len - 2] == '=')
		pad++;
	/* EVP_DecodeBlock would accept whitespace, and '=' in the middle of a
	 * block; a value from the wire is exact or it is refused. */
	for (size_t i = 0; i < len - pad; i++)
		if (!b64_char((unsigned char)text[i]))
			return -EINVAL;
	size_t n = len / 4 * 3;
	unsigned char *b = malloc(n + 1);
	if (!b)
		return -ENOMEM;
	if (len > 0 && EVP_DecodeBlock(b, (const unsigned char *)text, (int)len) != (int)n) {
		free(b);
		return -EINVAL;
	}
	/* EVP_DecodeBlock counts each '=' as a decoded zero byte. */
	n -= pad;
	b[n] = '\0';
	*out = b;
	*outlen = n;
	return 0;
}
