/* The CRL watcher thread (crl_watch.h). */
#include "crl_watch.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <kgate/log.h>

#include "cert_expiry.h"
#include "clock.h"
#include "control_ops.h"
#include "crl.h"
#include "fetch.h"

/* The events that mean "the file at this name may hold new content":
 * written and closed in place, renamed over, created (a hard link, or a
 * writer that creates the name itself). Folders are watched, not files:
 * a rename replaces the inode a file watch would follow. */
#define WATCH_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE)
/* The watcher thread's nice value (workers keep 0). */
#define KG_CRL_WATCH_NICE 10
/* How long to wait before trying again when an upgrade holds the changes. */
#define BUSY_RETRY_MS 500
/* How often the document is looked at for new or changed CRL entries
 * when no event comes. */
#define IDLE_MS 1000

struct target {
	char name[KG_NAME_MAX + 1];
	char *path;      /* the CRL file */
	const char *base; /* its last component, inside path */
	int wd;          /* of its folder; -1 when it could not be watched */
	uint64_t due_ms; /* act at this kg_now_ms(); 0: nothing pending */
	bool rebuild;    /* a new CRL is in force, its listeners are not rebuilt yet */
	char *url;       /* crl_url, NULL without */
	uint64_t refresh_ms, fetch_ms; /* its period, and the next download's kg_now_ms() */
};

struct kg_crl_watch {
	struct kg_ops *ops;
	pthread_t thread;
	int ino, stop_fd;
	unsigned long generation;
	bool have_generation;
	struct kg_config_ref *doc; /* the document targets came from */
	struct target *targets;
	size_t n;
};

static void drop_targets(struct kg_crl_watch *w)
{
	for (size_t i = 0; i < w->n; i++) {
		/* Several targets may share a folder's wd; removing one twice
		 * only fails with EINVAL. */
		if (w->targets[i].wd >= 0)
			inotify_rm_watch(w->ino, w->targets[i].wd);
		free(w->targets[i].path);
		free(w->targets[i].url);
	}
	free(w->targets);
	w->targets = NULL;
	w->n = 0;
}

/* The ca entries with a CRL file in the running document, each with its
 * folder watched. Pending reads carry over for the same name and file. */
static void refresh_targets(struct kg_crl_watch *w)
{
	unsigned long gen;
	struct kg_config_ref *doc = kg_ops_current(w->ops, &gen);
	if (w->have_generation && gen == w->generation) {
		kg_config_ref_put(doc);
		return;
	}
	const struct kg_config *cfg = doc->cfg;
	struct target *t = calloc(cfg->n_certs + 1, sizeof(*t));
	size_t n = 0;
	if (!t) {
		log_warn("crl.watch_failed", KV("reason", "out of memory"));
		kg_config_ref_put(doc);
		return; /* the old targets stay; tried again next time */
	}
	for (size_t i = 0; i < cfg->n_certs; i++) {
		const struct kg_cert_conf *c = &cfg->certs[i];
		if (c->type != KG_CERT_CA || !c->crl_path)
			continue;
		struct target *nt = &t[n];
		char *dir = strdup(c->crl_path);
		nt->path = strdup(c->crl_path);
		if (!dir || !nt->path) {
			free(dir);
			free(nt->path);
			continue;
		}
		n++;
		snprintf(nt->name, sizeof(nt->name), "%s", c->name);
		/* A download at once: the URL is the fresher source. */
		nt->url = c->crl_url ? strdup(c->crl_url) : NULL;
		nt->refresh_ms = (uint64_t)c->crl_refresh_s * 1000;
		nt->fetch_ms = kg_now_ms();
		const char *slash = strrchr(nt->path, '/');
		nt->base = slash ? slash + 1 : nt->path;
		nt->wd = inotify_add_watch(w->ino, dirname(dir), WATCH_MASK | IN_ONLYDIR);
		if (nt->wd == -1)
			log_warn("crl.watch_failed", KV("cert", c->name), KV("path", dir),
				 KV_ERRNO(errno));
		free(dir);
		for (size_t o = 0; o < w->n; o++) {
			if (strcmp(w->targets[o].name, nt->name) == 0 &&
			    strcmp(w->targets[o].path, nt->path) == 0) {
				nt->due_ms = w->targets[o].due_ms;
				nt->rebuild = w->targets[o].rebuild;
				/* The same URL keeps its schedule. */
				if (nt->url && w->targets[o].url &&
				    strcmp(nt->url, w->targets[o].url) == 0)
					nt->fetch_ms = w->targets[o].fetch_ms;
			}
		}
	}
	/* New watches first, then the old ones go: a folder watched before
	 * and after keeps its wd (inotify_add_watch returns the same one), so
	 * only folders no target needs any more are removed. */
	for (size_t o = 0; o < w->n; o++) {
		bool kept = false;
		for (size_t i = 0; i < n && !kept; i++)
			kept = t[i].wd == w->targets[o].wd;
		if (!kept && w->targets[o].wd >= 0)
			inotify_rm_watch(w->ino, w->targets[o].wd);
		w->targets[o].wd = -1;
	}
	drop_targets(w);
	w->targets = t;
	w->n = n;
	kg_config_ref_put(w->doc);
	w->doc = doc;
	w->generation = gen;
	w->have_generation = true;
	kg_crl_prune(cfg);
}

/* Has the listeners of t's CA rebuilt for the CRL now in force. */
static void rebuild(struct kg_crl_watch *w, struct target *t)
{
	char err[600];
	size_t n = 0;
	int r = kg_ops_crl_changed(w->ops, t->name, &n, err, sizeof(err));
	if (r == -EBUSY) {
		/* In force in the table already; the listeners follow once
		 * the upgrade is over (or the new process has read the file). */
		t->due_ms = kg_now_ms() + BUSY_RETRY_MS;
		return;
	}
	t->rebuild = false;
	if (r < 0)
		log_err("crl.apply_failed", KV("cert", t->name), KV("reason", err));
}

/* Offers data (from source: "file" or "url", at where) as t's new CRL,
 * logs what came of it, and has the listeners rebuilt for a new one. */
static void offer(struct kg_crl_watch *w, struct target *t, const struct kg_cert_conf *c,
		  const unsigned char *data, size_t len, const char *source, const char *where,
		  const char *read_err)
{
	char err[600], next[32] = "";
	enum kg_crl_outcome out = KG_CRL_REFUSED;
	if (data)
		out = kg_crl_offer(c, data, len, source, err, sizeof(err));
	else
		kg_crl_refused(c->name, read_err); /* gone, unreadable, not downloaded */
	if (out == KG_CRL_UNCHANGED)
		return;
	if (out == KG_CRL_REFUSED) {
		log_warn("crl.refused", KV("cert", t->name), KV("source", source),
			 KV("path", where), KV("reason", data ? err : read_err),
			 KV("effect", "the previous CRL stays in force"));
		return;
	}
	struct kg_crl_info info;
	kg_crl_info(c, &info);
	if (info.has_next_update)
		kg_format_rfc3339(info.next_update, next, sizeof(next));
	log_notice("crl.reloaded", KV("cert", t->name), KV("source", source),
		   KV("revoked", (unsigned long long)info.revoked), KV("next_update", next),
		   KV("load_ms", (unsigned long long)(info.load_us / 1000)));
	t->rebuild = true;
	rebuild(w, t);
}

/* Reads target t's file and offers it. */
static void reload(struct kg_crl_watch *w, struct target *t)
{
	char err[600];
	unsigned char *data = NULL;
	size_t len = 0;
	const struct kg_cert_conf *c = kg_config_find_cert(w->doc->cfg, t->name);
	t->due_ms = 0;
	if (t->rebuild) {
		rebuild(w, t);
		if (t->rebuild)
			return; /* still held: the file is read after */
	}
	if (!c || !c->crl_path)
		return;
	if (kg_crl_read_file(t->path, &data, &len, err, sizeof(err)) < 0)
		data = NULL;
	offer(w, t, c, data, len, "file", t->path, err);
	free(data);
}

/* Downloads target t's crl_url and offers it. A failed download, like a
 * refused CRL, leaves the CRL in force; the next try is a period later. */
static void fetch(struct kg_crl_watch *w, struct target *t)
{
	char err[600];
	unsigned char *data = NULL;
	size_t len = 0;
	const struct kg_cert_conf *c = kg_config_find_cert(w->doc->cfg, t->name);
	t->fetch_ms = kg_now_ms() + t->refresh_ms;
	if (!c || !c->crl_path)
		return;
	/* Only http(s): the CRL's signature is checked anyway, but another
	 * scheme (file:, ...) would read what the URL's writer should not. */
	const struct kg_fetch_req req = {.url = t->url, .protocols = "http,https",
					 .timeout_ms = KG_CRL_FETCH_TIMEOUT_MS,
					 .max_bytes = KG_CRL_MAX_BYTES};
	if (kg_fetch(&req, &data, &len, err, sizeof(err)) < 0)
		data = NULL;
	offer(w, t, c, data, len, "url", t->url, err);
	free(data);
}

static void read_events(struct kg_crl_watch *w)
{
	/* Aligned as inotify(7) asks. */
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		ssize_t n = read(w->ino, buf, sizeof(buf));
		if (n <= 0)
			return; /* EAGAIN: all read */
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			p += sizeof(*ev) + ev->len;
			if (ev->mask & IN_Q_OVERFLOW) {
				/* Events were lost: read every file again. */
				for (size_t i = 0; i < w->n; i++)
					w->targets[i].due_ms = kg_now_ms() + KG_CRL_SETTLE_MS;
				continue;
			}
			for (size_t i = 0; ev->len && i < w->n; i++)
				if (w->targets[i].wd == ev->wd &&
				    strcmp(w->targets[i].base, ev->name) == 0)
					w->targets[i].due_ms = kg_now_ms() + KG_CRL_SETTLE_MS;
		}
	}
}

static void *watch_main(void *arg)
{
	struct kg_crl_watch *w = arg;
	/* Parsing a large CRL takes a core for tens of ms: on a busy box the
	 * workers go first (Linux nice values are per thread; raising one
	 * needs no privilege). */
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), KG_CRL_WATCH_NICE) == -1)
		log_warn("crl.watch_failed", KV("reason", "cannot lower the thread's priority"),
			 KV_ERRNO(errno), KV("effect", "CRLs are loaded at normal priority"));
	for (;;) {
		refresh_targets(w);
		uint64_t now = kg_now_ms(), wait = IDLE_MS;
		for (size_t i = 0; i < w->n; i++) {
			struct target *t = &w->targets[i];
			if (t->url && t->fetch_ms <= now) {
				fetch(w, t);
				now = kg_now_ms();
			}
			if (t->url && t->fetch_ms - now < wait)
				wait = t->fetch_ms - now;
			if (!w->targets[i].due_ms)
				continue;
			if (w->targets[i].due_ms <= now)
				reload(w, &w->targets[i]);
			else if (w->targets[i].due_ms - now < wait)
				wait = w->targets[i].due_ms - now;
		}
		struct pollfd fds[2] = {{.fd = w->ino, .events = POLLIN},
					{.fd = w->stop_fd, .events = POLLIN}};
		int r = poll(fds, 2, (int)wait);
		if (r == -1 && errno != EINTR) {
			log_err("crl.watch_failed", KV_ERRNO(errno));
			break;
		}
		if (fds[1].revents)
			break;
		if (fds[0].revents)
			read_events(w);
	}
	return NULL;
}

struct kg_crl_watch *kg_crl_watch_start(struct kg_ops *ops, char *err, size_t errlen)
{
	struct kg_crl_watch *w = calloc(1, sizeof(*w));
	if (!w) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	w->ops = ops;
	w->stop_fd = -1;
	w->ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->ino == -1) {
		snprintf(err, errlen, "inotify: %s", strerror(errno));
		goto free_watch;
	}
	w->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (w->stop_fd == -1) {
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		goto free_watch;
	}
	int r = pthread_create(&w->thread, NULL, watch_main, w);
	if (r != 0) {
		snprintf(err, errlen, "thread: %s", strerror(r));
		goto free_watch;
	}
	return w;
free_watch:
	if (w->stop_fd >= 0)
		close(w->stop_fd);
	if (w->ino >= 0)
		close(w->ino);
	free(w);
	return NULL;
}

void kg_crl_watch_stop(struct kg_crl_watch *w)
{
	uint64_t one = 1;
	if (!w)
		return;
	if (write(w->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		log_warn("crl.watch_failed", KV_ERRNO(errno));
	pthread_join(w->thread, NULL);
	drop_targets(w);
	kg_config_ref_put(w->doc);
	close(w->stop_fd);
	close(w->ino);
	free(w);
}
