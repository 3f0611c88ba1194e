/* The state document on disk (state.h). */
#include "state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <kgate/log.h>

#include "errors.h"

#define STATE_FILE "state.json"
#define CERTS_DIR "certs"

static const char *const file_keys[] = {"cert", "key", "crl", NULL};

int kg_state_open(struct kg_state *st, const char *dir, char *err, size_t errlen)
{
	char sub[4096];
	memset(st, 0, sizeof(*st));
	if (mkdir(dir, 0700) == -1 && errno != EEXIST)
		return kg_fail_errno(err, errlen, errno, "state directory %s", dir);
	st->dir = realpath(dir, NULL);
	if (!st->dir)
		return kg_fail_errno(err, errlen, errno, "state directory %s", dir);
	snprintf(sub, sizeof(sub), "%s/" CERTS_DIR, st->dir);
	if (mkdir(sub, 0700) == -1 && errno != EEXIST) {
		int r = kg_fail_errno(err, errlen, errno, "%s", sub);
		kg_state_close(st);
		return r;
	}
	return 0;
}

int kg_state_lock(struct kg_state *st, int inherited_fd, char *err, size_t errlen)
{
	if (inherited_fd >= 0) {
		st->lock_fd = inherited_fd;
		st->locked = true;
		return 0;
	}
	int fd = open(st->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return kg_fail_errno(err, errlen, errno, "state directory %s", st->dir);
	/* flock, not fcntl locks: it belongs to the open file, so it passes
	 * to an upgraded process with the fd, and no thread's close of
	 * another fd on the folder drops it. */
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		int e = errno;
		close(fd);
		if (e == EWOULDBLOCK)
			return kg_fail(err, errlen, e, "state directory %s is in use by another "
				       "kgated (one daemon per state directory)", st->dir);
		return kg_fail_errno(err, errlen, e, "state directory %s: lock", st->dir);
	}
	st->lock_fd = fd;
	st->locked = true;
	return 0;
}

void kg_state_unlock(struct kg_state *st)
{
	if (!st->locked)
		return;
	close(st->lock_fd);
	st->locked = false;
}

void kg_state_close(struct kg_state *st)
{
	kg_state_unlock(st);
	json_object_put(st->doc);
	st->doc = NULL;
	free(st->dir);
	st->dir = NULL;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	int ret = fsync(fd) == -1 ? -errno : 0;
	close(fd);
	return ret;
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes a new file (never replacing one) and fsyncs it. */
static int write_new_file(const char *path, const char *data, size_t len, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd == -1)
		return -errno;
	int ret = write_all(fd, data, len);
	if (ret == 0 && fsync(fd) == -1)
		ret = -errno;
	if (close(fd) == -1 && ret == 0)
		ret = -errno;
	if (ret < 0)
		unlink(path);
	return ret;
}

/* Temp file, fsync, rename, fsync of the folder. On failure *replaced
 * says whether path already holds the new text (only the folder's fsync
 * comes after the rename); before that, path is untouched and no temp
 * file is left, whichever step failed. */
static int write_atomic(const char *path, const char *text, bool *replaced, char *err,
			size_t errlen)
{
	char tmp[4096], dir[4096];
	*replaced = false;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	snprintf(dir, sizeof(dir), "%s", path);
	/* A leftover temp file from a crash is garbage: start over. */
	if (unlink(tmp) == -1 && errno != ENOENT)
		return kg_fail_errno(err, errlen, errno, "%s", tmp);
	int ret = write_new_file(tmp, text, strlen(text), 0600);
	if (ret < 0)
		return kg_fail_errno(err, errlen, -ret, "%s", tmp);
	if (rename(tmp, path) == -1) {
		ret = kg_fail_errno(err, errlen, errno, "%s: rename", path);
		unlink(tmp);
		return ret;
	}
	*replaced = true;
	/* The rename is durable only once the folder is. */
	ret = fsync_dir(dirname(dir));
	if (ret < 0)
		return kg_fail_errno(err, errlen, -ret, "%s: fsync of folder", path);
	return 0;
}

int kg_state_write_atomic(const char *path, const char *text, char *err, size_t errlen)
{
	bool replaced;
	return write_atomic(path, text, &replaced, err, errlen);
}

static char *abs_path(const char *base, const char *rel)
{
	char *out = NULL;
	if (rel[0] == '/')
		return strdup(rel);
	if (asprintf(&out, "%s/%s", base, rel) < 0)
		return NULL;
	return out;
}

char *kg_state_store_file(struct kg_state *st, const char *cert_name, const char *ext,
			  const char *data, size_t len, bool secret, char *err,
			  size_t errlen)
{
	/* Hex of the name: names may hold '/' and '*'; the clock makes each
	 * upload a new file, so a replace never rewrites a file in use. */
	char hex[2 * KG_NAME_MAX + 1] = "";
	for (size_t i = 0; cert_name[i] && i < KG_NAME_MAX; i++)
		snprintf(hex + 2 * i, 3, "%02x", (unsigned char)cert_name[i]);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	for (unsigned attempt = 0; attempt < 100; attempt++) {
		char *rel = NULL, *path = NULL;
		if (asprintf(&rel, CERTS_DIR "/%s.%lld%09ld-%u.%s", hex, (long long)ts.tv_sec,
			     ts.tv_nsec, attempt, ext) < 0)
			break;
		path = abs_path(st->dir, rel);
		if (!path) {
			free(rel);
			break;
		}
		int ret = write_new_file(path, data, len, secret ? 0600 : 0644);
		free(path);
		if (ret == 0)
			return rel;
		free(rel);
		if (ret != -EEXIST) {
			snprintf(err, errlen, "cannot store %s file of %s: %s", ext, cert_name,
				 strerror(-ret));
			return NULL;
		}
	}
	snprintf(err, errlen, "cannot store %s file of %s: out of memory or names", ext,
		 cert_name);
	return NULL;
}

struct kg_config *kg_state_parse(const struct kg_state *st, json_object *doc, char *err,
				 size_t errlen)
{
	const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
	if (!text) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	return kg_config_parse_state(text, st->dir, err, errlen);
}

/* The new document was renamed into place but the folder's fsync failed:
 * the change is refused, so the file must say what the daemon runs. */
static void restore(const struct kg_state *st, const char *path)
{
	char err[1024];
	bool replaced;
	const char *text = json_object_to_json_string_ext(
		st->doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!text)
		snprintf(err, sizeof(err), "out of memory");
	if (!text || write_atomic(path, text, &replaced, err, sizeof(err)) < 0)
		log_err("state.restore_failed", KV("path", path),
			KV("effect", "the file may hold the refused change"), KV("reason", err));
}

int kg_state_commit(struct kg_state *st, json_object *doc, char *err, size_t errlen)
{
	char path[4096], certs[4096];
	const char *text = json_object_to_json_string_ext(
		doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!text)
		return kg_fail_errno(err, errlen, ENOMEM, "state document");
	/* New certificate files must be durable before a document names them. */
	snprintf(certs, sizeof(certs), "%s/" CERTS_DIR, st->dir);
	int ret = fsync_dir(certs);
	if (ret < 0)
		return kg_fail_errno(err, errlen, -ret, "%s: fsync", certs);
	snprintf(path, sizeof(path), "%s/" STATE_FILE, st->dir);
	bool replaced;
	ret = write_atomic(path, text, &replaced, err, errlen);
	if (ret < 0) {
		if (replaced)
			restore(st, path);
		return ret;
	}
	json_object_put(st->doc);
	st->doc = doc;
	return 0;
}

/* Copies each certificate file of a configuration into the state folder
 * and points the document at the copies. */
static int import_files(struct kg_state *st, json_object *doc, const char *base,
			char *err, size_t errlen)
{
	json_object *certs = NULL;
	if (!json_object_object_get_ex(doc, "certificates", &certs) ||
	    !json_object_is_type(certs, json_type_object))
		return 0; /* the parse that follows reports shape errors */
	json_object_object_foreach(certs, name, entry) {
		if (!json_object_is_type(entry, json_type_object))
			continue;
		for (const char *const *k = file_keys; *k; k++) {
			json_object *v = NULL;
			if (!json_object_object_get_ex(entry, *k, &v) ||
			    !json_object_is_type(v, json_type_string))
				continue;
			char *src = abs_path(base, json_object_get_string(v)), *data = NULL;
			if (!src)
				return kg_fail_errno(err, errlen, ENOMEM, "certificates.%s.%s", name, *k);
			int r = kg_read_file(src, &data);
			if (r < 0) {
				r = kg_fail_errno(err, errlen, -r, "certificates.%s.%s: %s", name, *k, src);
				free(src);
				return r;
			}
			free(src);
			char *rel = kg_state_store_file(st, name, *k, data, strlen(data),
							strcmp(*k, "key") == 0, err, errlen);
			free(data);
			if (!rel)
				return -EIO; /* err says why */
			json_object_object_add(entry, *k, json_object_new_string(rel));
			free(rel);
		}
	}
	return 0;
}

json_object *kg_state_read_doc(const char *path, char *err, size_t errlen)
{
	char *text = NULL;
	int r = kg_read_file(path, &text);
	if (r < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		return NULL;
	}
	enum json_tokener_error jerr = json_tokener_success;
	json_object *doc = json_tokener_parse_verbose(text, &jerr);
	free(text);
	if (!doc || !json_object_is_type(doc, json_type_object)) {
		snprintf(err, errlen, "%s: not a JSON object (%s)", path,
			 json_tokener_error_desc(jerr));
		json_object_put(doc);
		return NULL;
	}
	return doc;
}

int kg_state_load(struct kg_state *st, const char *seed_path, bool reseed,
		  enum kg_state_source *source, char *err, size_t errlen)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/" STATE_FILE, st->dir);
	if (!reseed && access(path, F_OK) == 0) {
		st->doc = kg_state_read_doc(path, err, errlen);
		*source = KG_STATE_FROM_DIR;
		return st->doc ? 0 : -EINVAL; /* err says why */
	}
	json_object *doc;
	if (seed_path) {
		doc = kg_state_read_doc(seed_path, err, errlen);
		if (!doc)
			return -EINVAL; /* err says why */
		char *copy = strdup(seed_path), *base = copy ? realpath(dirname(copy), NULL) : NULL;
		free(copy);
		if (!base) {
			int r = kg_fail_errno(err, errlen, errno, "%s", seed_path);
			json_object_put(doc);
			return r;
		}
		int r = import_files(st, doc, base, err, errlen);
		free(base);
		if (r < 0) {
			json_object_put(doc);
			return r;
		}
		*source = KG_STATE_FROM_CONFIG;
	} else {
		doc = json_object_new_object();
		if (!doc)
			return kg_fail_errno(err, errlen, ENOMEM, "state document");
		json_object_object_add(doc, "certificates", json_object_new_object());
		json_object_object_add(doc, "listeners", json_object_new_array());
		*source = KG_STATE_EMPTY;
	}
	st->doc = doc;
	return 0;
}

static int collect_names(json_object *doc, char ***names, size_t *n)
{
	json_object *certs = NULL;
	if (!json_object_object_get_ex(doc, "certificates", &certs))
		return 0;
	json_object_object_foreach(certs, name, entry) {
		(void)name;
		for (const char *const *k = file_keys; *k; k++) {
			json_object *v = NULL;
			if (!json_object_object_get_ex(entry, *k, &v) ||
			    !json_object_is_type(v, json_type_string))
				continue;
			const char *s = json_object_get_string(v);
			if (strncmp(s, CERTS_DIR "/", strlen(CERTS_DIR "/")) != 0)
				continue;
			char **grown = realloc(*names, (*n + 1) * sizeof(**names));
			if (!grown)
				return -ENOMEM;
			*names = grown;
			(*names)[(*n)++] = (char *)s + strlen(CERTS_DIR "/");
		}
	}
	return 0;
}

void kg_state_gc(struct kg_state *st)
{
	char dir[4096];
	char **names = NULL;
	size_t n = 0;
	snprintf(dir, sizeof(dir), "%s/" CERTS_DIR, st->dir);
	/* Without the full list of names in use, removing nothing is safe. */
	DIR *d = collect_names(st->doc, &names, &n) == 0 ? opendir(dir) : NULL;
	if (!d) {
		free(names);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		bool used = false;
		for (size_t i = 0; i < n && !used; i++)
			used = strcmp(names[i], e->d_name) == 0;
		if (!used && unlinkat(dirfd(d), e->d_name, 0) == -1)
			log_warn("state.gc_failed", KV("path", dir), KV("file", e->d_name),
				 KV_ERRNO(errno));
	}
	closedir(d);
	free(names);
}
