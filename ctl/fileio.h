/* Files for kgatectl: the error text every operation fills in, whole-file
 * reads, passphrases from files or the terminal, and a write transaction
 * that stages every output in a temp file (fsynced) before any of them
 * replaces its target, so a failure leaves the targets as they were. */
#ifndef KG_CTL_FILEIO_H
#define KG_CTL_FILEIO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* "<what>: <why>", printed by the CLI as "kgatectl: <what>: <why>". */
struct kg_err {
	char msg[512];
};

/* Formats err->msg; returns -code so callers can `return kg_errf(...)`. */
int kg_errf(struct kg_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Appends ": <first OpenSSL error>" (or nothing) and clears OpenSSL's queue. */
int kg_err_ssl(struct kg_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Reads a whole (small) file into a NUL-terminated buffer; NULL on error. */
char *kg_file_read(const char *path, size_t max, size_t *len, struct kg_err *err);
bool kg_path_exists(const char *path);

/* Passphrases: the first line of a file, or (path "-") a prompt on the
 * terminal; at least KG_PASS_MIN characters. Release with kg_pass_free. */
#define KG_PASS_MIN 4
#define KG_PASS_MAX 1024
char *kg_pass_read(const char *path, const char *what, bool verify, struct kg_err *err);
void kg_pass_free(char *pass);

struct kg_txn;

struct kg_txn *kg_txn_create(void);
/* Tolerates NULL; removes every temp file not yet committed. */
void kg_txn_destroy(struct kg_txn *txn);
/* Stages data for path in "path.tmp.XXXXXX" (mode applied, fsynced).
 * replace=false: commit fails if path exists by then (no clobbering). */
int kg_txn_add(struct kg_txn *txn, const char *path, const void *data, size_t len,
	       mode_t mode, bool replace, struct kg_err *err);
/* Moves the staged files into place in the order they were added, then
 * fsyncs their folders. On failure, files created by this commit are
 * removed again and the rest stay untouched. */
int kg_txn_commit(struct kg_txn *txn, struct kg_err *err);

#endif
