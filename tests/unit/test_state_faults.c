/* state.c under I/O faults: each system call of a commit (and of a file
 * store) fails in turn, once, with ENOSPC, EDQUOT, EROFS and EIO. Whichever
 * step fails, the commit is refused with the error named, the document in
 * memory and state.json on disk stay the last acknowledged ones, and no
 * temp file is left. The calls are intercepted with the linker's --wrap
 * (this test binary only); a wrapped call that is not armed passes
 * through. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "certgen.h"
#include "state.h"

/* ---- fault injection ---- */

static unsigned calls;   /* wrapped calls since arm() */
static unsigned fail_at; /* 0: off; N: the Nth call fails */
static int fail_errno;
static char failed_call[16];
/* Descriptors opened for writing: only their close can lose data, so only
 * their close is failed (a read-only folder fd's close reports nothing). */
static bool writable[1024];

static void arm(unsigned n, int e)
{
	calls = 0;
	fail_at = n;
	fail_errno = e;
	failed_call[0] = '\0';
}

/* True when this call is the one to fail (errno set). */
static bool inject(const char *name)
{
	if (fail_at == 0 || ++calls != fail_at)
		return false;
	snprintf(failed_call, sizeof(failed_call), "%s", name);
	errno = fail_errno;
	return true;
}

int __real_open(const char *path, int flags, ...);
ssize_t __real_write(int fd, const void *buf, size_t n);
int __real_fsync(int fd);
int __real_close(int fd);
int __real_rename(const char *from, const char *to);
int __real_unlink(const char *path);

int __wrap_open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & O_CREAT) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (inject("open"))
		return -1;
	int fd = __real_open(path, flags, mode);
	if (fd >= 0 && fd < (int)(sizeof(writable) / sizeof(writable[0])))
		writable[fd] = (flags & O_ACCMODE) != O_RDONLY;
	return fd;
}

ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
	return inject("write") ? -1 : __real_write(fd, buf, n);
}

int __wrap_fsync(int fd)
{
	return inject("fsync") ? -1 : __real_fsync(fd);
}

int __wrap_close(int fd)
{
	bool w = fd >= 0 && fd < (int)(sizeof(writable) / sizeof(writable[0])) && writable[fd];
	if (w)
		writable[fd] = false;
	/* Linux releases the descriptor even when close reports an error. */
	if (w && inject("close")) {
		int e = errno;
		__real_close(fd);
		errno = e;
		return -1;
	}
	return __real_close(fd);
}

int __wrap_rename(const char *from, const char *to)
{
	return inject("rename") ? -1 : __real_rename(from, to);
}

int __wrap_unlink(const char *path)
{
	return inject("unlink") ? -1 : __real_unlink(path);
}

/* ---- the tests ---- */

static struct tc_dir dir;
static char err[1024];

static void setup(void)
{
	tc_dir_create(&dir);
}

static void teardown(void)
{
	arm(0, 0);
	tc_dir_remove(&dir);
}

TestSuite(state_faults, .init = setup, .fini = teardown);

static json_object *read_state(void)
{
	char *text = NULL;
	cr_assert_eq(kg_read_file(tc_file(&dir, "s/state.json"), &text), 0);
	json_object *doc = json_tokener_parse(text);
	cr_assert_not_null(doc, "state.json is not JSON: %s", text);
	free(text);
	return doc;
}

static const int errnos[] = {ENOSPC, EDQUOT, EROFS, EIO};

ParameterizedTestParameters(state_faults, commit_fails_at_every_step)
{
	return cr_make_param_array(int, (int *)errnos, sizeof(errnos) / sizeof(errnos[0]));
}

ParameterizedTest(int *e, state_faults, commit_fails_at_every_step)
{
	struct kg_state st;
	enum kg_state_source src;
	cr_assert_eq(kg_state_open(&st, tc_file(&dir, "s"), err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kg_state_load(&st, NULL, false, &src, err, sizeof(err)), 0, "%s", err);
	json_object *acked = json_tokener_parse("{\"settings\": {\"workers\": 1}, "
						"\"certificates\": {}, \"listeners\": []}");
	cr_assert_eq(kg_state_commit(&st, acked, err, sizeof(err)), 0, "%s", err);

	unsigned n;
	for (n = 1; n < 100; n++) {
		json_object *next = json_tokener_parse("{\"settings\": {\"workers\": 2}, "
						       "\"certificates\": {}, \"listeners\": []}");
		arm(n, *e);
		int r = kg_state_commit(&st, next, err, sizeof(err));
		bool hit = calls >= n;
		char call[16];
		snprintf(call, sizeof(call), "%s", failed_call);
		arm(0, 0);
		if (!hit) {
			/* Every step has failed once: now it goes through. */
			cr_assert_eq(r, 0, "%s", err);
			cr_assert_eq(st.doc, next);
			break;
		}
		cr_assert_eq(r, -*e, "commit returned %d although its %s (call %u) failed with %d",
			     r, call, n, *e);
		cr_assert(strstr(err, strerror(*e)) != NULL, "call %u (%s): error does not say "
			  "\"%s\": %s", n, call, strerror(*e), err);
		cr_assert_eq(st.doc, acked, "call %u (%s): the acknowledged document changed", n,
			     call);
		json_object *disk = read_state();
		cr_assert(json_object_equal(disk, acked), "call %u (%s): state.json is not the "
			  "acknowledged state: %s", n, call, json_object_to_json_string(disk));
		json_object_put(disk);
		cr_assert_eq(access(tc_file(&dir, "s/state.json.tmp"), F_OK), -1,
			     "call %u (%s): temp file left", n, call);
		cr_assert_eq(tc_count_files(tc_file(&dir, "s")), 2, "call %u (%s): stray file", n,
			     call); /* state.json and certs/ */
		json_object_put(next);
	}
	/* open/fsync of certs/, unlink, open, write, fsync, close, rename,
	 * open/fsync of the folder: ten steps. */
	cr_assert_geq(n, 10, "only %u steps seen", n);
	kg_state_close(&st);
}

ParameterizedTestParameters(state_faults, store_file_fails_cleanly)
{
	return cr_make_param_array(int, (int *)errnos, sizeof(errnos) / sizeof(errnos[0]));
}

ParameterizedTest(int *e, state_faults, store_file_fails_cleanly)
{
	struct kg_state st;
	cr_assert_eq(kg_state_open(&st, tc_file(&dir, "s"), err, sizeof(err)), 0, "%s", err);
	unsigned n;
	for (n = 1; n < 20; n++) {
		arm(n, *e);
		char *rel = kg_state_store_file(&st, "web", "key", "SECRET", 6, true, err,
						sizeof(err));
		bool hit = calls >= n;
		arm(0, 0);
		if (!hit) {
			cr_assert_not_null(rel, "%s", err);
			free(rel);
			break;
		}
		cr_assert_null(rel, "stored although call %u failed", n);
		cr_assert(strstr(err, strerror(*e)) != NULL, "%s", err);
		cr_assert(strstr(err, "web") != NULL, "error does not name the certificate: %s",
			  err);
		cr_assert_eq(tc_count_files(tc_file(&dir, "s/certs")), 0,
			     "call %u: partial file left", n);
	}
	cr_assert_geq(n, 4, "only %u steps seen", n); /* open, write, fsync, close */
	kg_state_close(&st);
}
