/* TLS record framing on client ciphertext (tls.c kg_tls_record_len), which
 * decides what conn.c hands to OpenSSL and the kernel. Input: bytes from
 * the client. Checks the contract: 0 (need more), SIZE_MAX (not TLS), or
 * a whole record of 5..KG_TLS_RECORD_MAX bytes that fits the input. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t pos = 0;
	while (pos < size) {
		size_t rec = kg_tls_record_len(data + pos, size - pos);
		if (rec == 0 || rec == SIZE_MAX)
			break;
		KF_FAIL_IF(rec < 5 || rec > KG_TLS_RECORD_MAX || rec > size - pos);
		pos += rec;
	}
	/* Every prefix of a complete record asks for more, never more than it has. */
	for (size_t cut = 0; cut < size && cut < 64; cut++) {
		size_t rec = kg_tls_record_len(data, cut);
		KF_FAIL_IF(rec != 0 && rec != SIZE_MAX && rec > cut);
	}
	return 0;
}
