/* The CA database reader (index.c): index.txt as kgatectl and `openssl ca`
 * write it. Input: the file's bytes. Checks: a loaded index formats to
 * text that loads again and formats to the same text (what revoke writes
 * back is what it read), and every entry is found by its serial. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "index.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kf_file in;
	struct kg_err err = {""};
	kf_file_open(&in, data, size);
	struct kg_index *idx = kg_index_load(in.path, &err);
	kf_file_close(&in);
	if (!idx) {
		KF_FAIL_IF(err.msg[0] == '\0' || strchr(err.msg, '\n'));
		return 0;
	}
	for (size_t i = 0; i < idx->n; i++) {
		struct kg_index_entry *e = &idx->entries[i];
		KF_FAIL_IF(!kg_index_find(idx, e->serial));
		(void)kg_index_status(e, 0);
	}
	char *text = kg_index_format(idx);
	KF_FAIL_IF(!text);
	struct kf_file again;
	kf_file_open(&again, (const uint8_t *)text, strlen(text));
	struct kg_index *idx2 = kg_index_load(again.path, &err);
	kf_file_close(&again);
	KF_FAIL_IF(!idx2 || idx2->n != idx->n);
	char *text2 = kg_index_format(idx2);
	KF_FAIL_IF(!text2 || strcmp(text, text2) != 0);
	free(text2);
	free(text);
	kg_index_destroy(idx2);
	kg_index_destroy(idx);
	return 0;
}
