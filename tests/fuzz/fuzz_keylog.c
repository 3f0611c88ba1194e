/* The keylog line parser that captures TLS 1.3 traffic secrets for kTLS
 * (ktls.c kg_ktls_keylog_secret). Input: one selector byte (the output
 * size, 0-64), then the line. The output buffer is exactly that size on
 * the heap, so any write past it is an ASan report. */
#include <stdlib.h>

#include "fuzz_util.h"
#include "ktls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t outlen = data[0] % 65;
	char *line = kf_strndup(data + 1, size - 1);
	unsigned char *out = malloc(outlen ? outlen : 1);
	KF_FAIL_IF(!out);
	size_t n = kg_ktls_keylog_secret(line, out, outlen);
	KF_FAIL_IF(n > outlen);
	free(out);
	free(line);
	return 0;
}
