#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ui.h>

int kg_errf(struct kg_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -code;
}

int kg_err_ssl(struct kg_err *err, int code, const char *fmt, ...)
{
	unsigned long e = ERR_peek_last_error();
	char why[256] = "";
	va_list ap;

	if (e)
		ERR_error_string_n(e, why, sizeof(why));
	ERR_clear_error();
	if (!err)
		return -code;
	va_start(ap, fmt);
	int n = vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	if (why[0] && n >= 0 && (size_t)n < sizeof(err->msg)) {
		/* OpenSSL's text is "error:CODE:lib:func:reason"; keep the reason. */
		const char *reason = strrchr(why, ':');
		snprintf(err->msg + n, sizeof(err->msg) - (size_t)n, ": %s",
			 reason ? reason + 1 : why);
	}
	return -code;
}

bool kg_path_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* The buffer grows as the file does (up to max + 1 bytes, which detects
 * "larger than max"), so reading a kilobyte does not cost max bytes. */
char *kg_file_read(const char *path, size_t max, size_t *len, struct kg_err *err)
{
	char *buf = NULL;
	size_t used = 0, cap = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd == -1) {
		kg_errf(err, errno, "%s: %s", path, strerror(errno));
		return NULL;
	}
	for (;;) {
		if (used == cap) {
			if (cap == max + 1) {
				kg_errf(err, EFBIG, "%s: larger than %zu bytes", path, max);
				goto free_buf;
			}
			size_t ncap = cap ? cap * 2 : 4096;
			if (ncap > max + 1 || ncap < cap)
				ncap = max + 1;
			char *nbuf = realloc(buf, ncap + 1); /* + 1: the NUL */
			if (!nbuf) {
				kg_errf(err, ENOMEM, "%s: out of memory", path);
				goto free_buf;
			}
			buf = nbuf;
			cap = ncap;
		}
		ssize_t n = read(fd, buf + used, cap - used);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			kg_errf(err, errno, "%s: %s", path, strerror(errno));
			goto free_buf;
		}
		if (n == 0)
			break;
		used += (size_t)n;
		if (used > max) {
			kg_errf(err, EFBIG, "%s: larger than %zu bytes", path, max);
			goto free_buf;
		}
	}
	if (!buf) { /* an empty file */
		buf = malloc(1);
		if (!buf) {
			kg_errf(err, ENOMEM, "%s: out of memory", path);
			goto close_fd;
		}
	}
	buf[used] = '\0';
	if (len)
		*len = used;
	close(fd);
	return buf;

free_buf:
	free(buf);
close_fd:
	close(fd);
	return NULL;
}

void kg_pass_free(char *pass)
{
	if (!pass)
		return;
	OPENSSL_cleanse(pass, strlen(pass));
	free(pass);
}

static char *pass_prompt(const char *what, bool verify, struct kg_err *err)
{
	char prompt[128];
	char *buf;

	if (!isatty(STDIN_FILENO)) {
		kg_errf(err, ENOTTY, "%s: cannot prompt for a passphrase: stdin is not a terminal",
			what);
		return NULL;
	}
	buf = calloc(1, KG_PASS_MAX + 1);
	if (!buf) {
		kg_errf(err, ENOMEM, "%s: out of memory", what);
		return NULL;
	}
	snprintf(prompt, sizeof(prompt), "Passphrase for %s: ", what);
	/* EVP_read_pw_string reads from /dev/tty with echo off. */
	if (EVP_read_pw_string(buf, KG_PASS_MAX, prompt, verify) != 0) {
		kg_pass_free(buf);
		kg_errf(err, EINVAL, "%s: no passphrase entered (or the two entries differ)",
			what);
		return NULL;
	}
	return buf;
}

char *kg_pass_read(const char *path, const char *what, bool verify, struct kg_err *err)
{
	char *pass;

	if (strcmp(path, "-") == 0)
		pass = pass_prompt(what, verify, err);
	else
		pass = kg_file_read(path, KG_PASS_MAX, NULL, err);
	if (!pass)
		return NULL;
	pass[strcspn(pass, "\r\n")] = '\0';
	if (strlen(pass) < KG_PASS_MIN) {
		kg_pass_free(pass);
		kg_errf(err, EINVAL, "%s: passphrase shorter than %d characters", what,
			KG_PASS_MIN);
		return NULL;
	}
	return pass;
}

/* ---- write transaction ---- */

struct kg_txn_file {
	char *path;
	char *tmp;      /* NULL once moved into place */
	bool replace;
	bool created;   /* committed and did not exist before */
};

struct kg_txn {
	struct kg_txn_file *files;
	size_t n, cap;
};

struct kg_txn *kg_txn_create(void)
{
	return calloc(1, sizeof(struct kg_txn));
}

void kg_txn_destroy(struct kg_txn *txn)
{
	if (!txn)
		return;
	for (size_t i = 0; i < txn->n; i++) {
		if (txn->files[i].tmp)
			unlink(txn->files[i].tmp);
		free(txn->files[i].tmp);
		free(txn->files[i].path);
	}
	free(txn->files);
	free(txn);
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int kg_txn_add(struct kg_txn *txn, const char *path, const void *data, size_t len,
	       mode_t mode, bool replace, struct kg_err *err)
{
	struct kg_txn_file *f;
	int fd, ret;

	if (txn->n == txn->cap) {
		size_t cap = txn->cap ? txn->cap * 2 : 8;
		void *p = realloc(txn->files, cap * sizeof(*txn->files));
		if (!p)
			return kg_errf(err, ENOMEM, "%s: out of memory", path);
		txn->files = p;
		txn->cap = cap;
	}
	f = &txn->files[txn->n];
	memset(f, 0, sizeof(*f));
	f->replace = replace;
	f->path = strdup(path);
	if (!f->path || asprintf(&f->tmp, "%s.tmp.XXXXXX", path) == -1) {
		free(f->path);
		return kg_errf(err, ENOMEM, "%s: out of memory", path);
	}
	fd = mkstemp(f->tmp);
	if (fd == -1) {
		ret = kg_errf(err, errno, "%s: cannot create a temp file: %s", path,
			      strerror(errno));
		goto free_names;
	}
	txn->n++; /* from here on destroy removes the temp file */
	/* mkstemp made it 0600; fchmod before any byte lands. */
	if (fchmod(fd, mode) == -1) {
		ret = kg_errf(err, errno, "%s: chmod: %s", f->tmp, strerror(errno));
		goto close_fd;
	}
	ret = write_all(fd, data, len);
	if (ret == 0 && fsync(fd) == -1)
		ret = -errno;
	if (ret) {
		kg_errf(err, -ret, "%s: write: %s", f->tmp, strerror(-ret));
		goto close_fd;
	}
	if (close(fd) == -1)
		return kg_errf(err, errno, "%s: close: %s", f->tmp, strerror(errno));
	return 0;

close_fd:
	close(fd);
	return ret;
free_names:
	free(f->tmp);
	free(f->path);
	return ret;
}

static void fsync_parent(const char *path)
{
	char *copy = strdup(path);
	int fd;

	if (!copy)
		return;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd != -1) {
		/* Best effort: the renames are done; this only hurries them to disk. */
		(void)fsync(fd);
		close(fd);
	}
	free(copy);
}

static int move_into_place(struct kg_txn_file *f, struct kg_err *err)
{
	bool existed = kg_path_exists(f->path);

	if (f->replace) {
		if (rename(f->tmp, f->path) == -1)
			return kg_errf(err, errno, "%s: rename: %s", f->path, strerror(errno));
	} else {
		/* link() refuses an existing target, unlike rename(). */
		if (link(f->tmp, f->path) == -1) {
			if (errno == EEXIST)
				return kg_errf(err, EEXIST,
					       "%s: exists (use --force to replace it)", f->path);
			return kg_errf(err, errno, "%s: link: %s", f->path, strerror(errno));
		}
		unlink(f->tmp);
	}
	f->created = !existed;
	free(f->tmp);
	f->tmp = NULL;
	return 0;
}

int kg_txn_commit(struct kg_txn *txn, struct kg_err *err)
{
	int ret;
	size_t i;

	for (i = 0; i < txn->n; i++) {
		ret = move_into_place(&txn->files[i], err);
		if (ret)
			goto remove_created;
	}
	for (i = 0; i < txn->n; i++)
		fsync_parent(txn->files[i].path);
	return 0;

remove_created:
	while (i-- > 0)
		if (txn->files[i].created)
			unlink(txn->files[i].path);
	return ret;
}
