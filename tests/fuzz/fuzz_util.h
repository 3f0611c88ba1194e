/* Shared plumbing for the fuzz harnesses in this folder. Each harness is
 * one file, fuzz_<name>.c, defining LLVMFuzzerTestOneInput (and, if it
 * needs one-time set-up, LLVMFuzzerInitialize); its seeds live in
 * corpus/<name>/. Built with -DKG_FUZZ=ON (clang) each harness links
 * libFuzzer; in every other build it links replay_main.c and ctest replays
 * its corpus, so committed seeds and crash reproducers stay regression
 * tests under the normal ASan build. */
#ifndef KG_FUZZ_UTIL_H
#define KG_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Entry points that read a file (certs.c, index.c) get the input through
 * an in-memory regular file: no disk I/O, nothing left behind. */
struct kf_file {
	int fd;
	char path[32]; /* "/proc/self/fd/N" */
};
/* Aborts on failure: a harness that cannot make its file finds nothing. */
void kf_file_open(struct kf_file *f, const uint8_t *data, size_t size);
void kf_file_close(struct kf_file *f);

/* Splits data at each occurrence of sep (the separator is dropped) into
 * at most max parts; returns the number of parts (>= 1). Lets one input
 * carry several files or fields while seeds stay readable text. */
size_t kf_split(const uint8_t *data, size_t size, const char *sep,
		const uint8_t **part, size_t *part_len, size_t max);

/* A NUL-terminated copy (caller frees); aborts on ENOMEM. */
char *kf_strndup(const uint8_t *data, size_t size);

/* The fixed client certificates of data/ (good.pem, noeku.pem, ca.pem)
 * into out[0..2], for harnesses that match on certificates; aborts when
 * one cannot be read. */
struct x509_st;
void kf_load_test_certs(struct x509_st *out[3]);

/* A broken promise of the code under test: says which, then aborts, so
 * libFuzzer keeps the input and the replay run fails with a reason. */
#define KF_FAIL_IF(cond)                                                       \
	do {                                                                   \
		if (cond) {                                                    \
			fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond); \
			abort();                                               \
		}                                                              \
	} while (0)

/* Separator between the parts of one input in the seeds. */
#define KF_SEP "\n--8<--\n"

#endif
