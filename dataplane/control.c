/* Control socket server (control.h). */
#include "control.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <kgate/control.h>
#include <kgate/log.h>
#include <kgate/sockio.h>

#include "cert_expiry.h"
#include "clock.h"
#include "metrics.h"
#include "errors.h"
#include "ticket_keys.h"

#define REQUEST_TIMEOUT_MS 5000  /* a client has this long to send its request */
#define DISCARD_LIMIT (64u << 20) /* bytes read past an oversized request, then close */
#define DISCARD_MS 10000          /* and for at most this long */

struct kg_control {
	struct kg_ops *ops;
	char *path;
	int fd;
	int metrics_fd;
	int stop_fd; /* eventfd */
	gid_t group;
	pthread_t thread;
	struct kg_expiry *expiry;     /* what cert.expires_soon already said */
	uint64_t expiry_due_ms;       /* next hourly check (kg_now_ms); 0: at start */
	unsigned long expiry_generation; /* ops->generation at the last check */
};

static void send_reply(int fd, json_object *reply)
{
	const char *text = reply ? json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN)
				 : NULL;
	if (!text)
		text = "{\"version\":1,\"ok\":false,\"error\":{\"code\":\"internal\","
		       "\"message\":\"out of memory\"}}";
	if (kg_send_all(fd, text, strlen(text)) == 0)
		kg_send_all(fd, "\n", 1);
	json_object_put(reply);
}

/* Only root and the daemon's own user; with a control group, its members
 * too (the socket's mode already says so; this keeps a mis-set mode from
 * widening access). */
static bool peer_allowed(const struct kg_control *c, int fd, char *who, size_t len)
{
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == -1)
		return false;
	snprintf(who, len, "pid %d uid %u", (int)cred.pid, (unsigned)cred.uid);
	if (cred.uid == 0 || cred.uid == geteuid())
		return true;
	return c->group != (gid_t)-1 && cred.gid == c->group;
}

/* Reads until EOF (the client's shutdown) within the time limit. Returns
 * the text, or NULL with an error reply in *fail. */
static char *read_request(int fd, json_object **fail)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	if (!buf) {
		*fail = kg_ops_error(KG_ERR_INTERNAL, "out of memory");
		return NULL;
	}
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int r = poll(&p, 1, REQUEST_TIMEOUT_MS);
		if (r == 0) {
			*fail = kg_ops_error(KG_ERR_TIMEOUT, "request incomplete after %d ms "
					     "(send one JSON object, then shut down writing)",
					     REQUEST_TIMEOUT_MS);
			break;
		}
		if (r < 0 && errno == EINTR)
			continue;
		ssize_t n = r < 0 ? -1 : recv(fd, buf + len, cap - len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*fail = kg_ops_error(KG_ERR_BAD_REQUEST, "reading request: %s", strerror(errno));
			break;
		}
		if (n == 0) {
			buf[len] = '\0';
			return buf;
		}
		len += (size_t)n;
		if (len > KG_CONTROL_MAX_REQUEST) {
			*fail = kg_ops_error(KG_ERR_TOO_LARGE, "request larger than %u bytes",
					     KG_CONTROL_MAX_REQUEST);
			break;
		}
		if (len + 1 >= cap) {
			char *grown = realloc(buf, cap * 2);
			if (!grown) {
				*fail = kg_ops_error(KG_ERR_INTERNAL, "out of memory");
				break;
			}
			buf = grown;
			cap *= 2;
		}
	}
	free(buf);
	return NULL;
}

/* After answering early (an oversized request, a refused peer), read what
 * the client still sends, up to max bytes and for at most total_ms, so it
 * sees the answer instead of a reset or a broken pipe. */
static void discard_input(int fd, size_t max, int total_ms)
{
	char sink[65536];
	size_t total = 0;
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (total < max) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		long spent = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
		if (spent >= total_ms)
			return;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, (int)(total_ms - spent)) <= 0)
			return;
		ssize_t n = recv(fd, sink, sizeof(sink), 0);
		if (n <= 0)
			return;
		total += (size_t)n;
	}
}

static void serve_one(struct kg_control *c, int fd)
{
	char who[64];
	json_object *fail = NULL, *req = NULL, *reply = NULL;
	if (!peer_allowed(c, fd, who, sizeof(who))) {
		log_warn("control.peer_refused", KV("peer", who));
		send_reply(fd, kg_ops_error(KG_ERR_DENIED, "%s may not use this control socket", who));
		/* Briefly, and no more than a request's worth: this peer may not
		 * hold the control thread. */
		shutdown(fd, SHUT_WR);
		discard_input(fd, KG_CONTROL_MAX_REQUEST, 1000);
		return;
	}
	char *text = read_request(fd, &fail);
	if (!text) {
		log_warn("control.bad_request", KV("peer", who),
			 KV("reason", json_object_get_string(json_object_object_get(
					      json_object_object_get(fail, "error"), "message"))));
		send_reply(fd, fail);
		shutdown(fd, SHUT_WR);
		discard_input(fd, DISCARD_LIMIT, DISCARD_MS);
		return;
	}
	struct json_tokener *tok = json_tokener_new();
	if (tok) {
		json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
		size_t len = strlen(text);
		req = json_tokener_parse_ex(tok, text, (int)len);
		enum json_tokener_error jerr = json_tokener_get_error(tok);
		if (!req || jerr != json_tokener_success) {
			size_t at = json_tokener_get_parse_end(tok);
			if (jerr == json_tokener_continue)
				jerr = json_tokener_error_parse_eof;
			reply = kg_ops_error(KG_ERR_BAD_REQUEST, "request is not valid JSON "
					     "(at byte %zu: %s)", at, json_tokener_error_desc(jerr));
		} else {
			size_t end = json_tokener_get_parse_end(tok);
			while (end < len && strchr(" \t\r\n", text[end]))
				end++;
			if (end < len)
				reply = kg_ops_error(KG_ERR_BAD_REQUEST, "request has data after "
						     "the JSON object (at byte %zu)", end);
		}
		json_tokener_free(tok);
	} else {
		reply = kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	}
	free(text);
	if (!reply) {
		reply = kg_ops_handle(c->ops, req);
		json_object *okv = NULL;
		if (json_object_object_get_ex(reply, "ok", &okv) && !json_object_get_boolean(okv)) {
			json_object *op = json_object_object_get(req, "op");
			json_object *err = json_object_object_get(reply, "error");
			json_object *msg = json_object_object_get(err, "message");
			log_info("control.op_refused", KV("peer", who),
				 KV("op", op ? json_object_get_string(op) : ""),
				 KV("reason", json_object_get_string(msg)));
		}
	}
	json_object_put(req);
	send_reply(fd, reply);
}

/* The session-ticket keys rotate here: this thread may block on the
 * state directory's fsync (it does for every change), the workers may not.
 * Returns how long poll may sleep until the next rotation is due. */
static int rotate_ticket_keys(struct kg_control *c)
{
	struct kg_ticket_keys *tk = c->ops->rt->tickets;
	char err[600];
	/* In store mode the store rotates them for the whole fleet (store.h). */
	if (!tk || c->ops->store)
		return -1;
	/* Like a change, a rotation waits while an upgrade hands over: the
	 * new process has read the key file, and both must hold the same keys. */
	pthread_mutex_lock(&c->ops->change_lock);
	bool frozen = c->ops->frozen;
	if (!frozen && kg_ticket_keys_rotate(tk, time(NULL), false, err, sizeof(err)) < 0)
		log_warn("tls.ticket_key_rotation_failed", KV("reason", err),
			 KV("effect", "tickets stay under the current key; retried in a minute"));
	pthread_mutex_unlock(&c->ops->change_lock);
	if (frozen)
		return 1000;
	int64_t ms = kg_ticket_keys_due_ms(tk, time(NULL));
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* Certificate expiry warnings (cert_expiry.h): at start, after each change
 * of the running document, and hourly so a threshold crossed while running
 * is logged within the hour. Under change_lock: in store mode the store
 * thread replaces ops->cur. Returns how long poll may sleep until the next
 * check is due. */
static int check_expiry(struct kg_control *c)
{
	uint64_t now = kg_now_ms();
	pthread_mutex_lock(&c->ops->change_lock);
	if (c->expiry_due_ms == 0 || now >= c->expiry_due_ms ||
	    c->ops->generation != c->expiry_generation) {
		if (kg_expiry_check(c->expiry, c->ops->cur->cfg, time(NULL)) < 0)
			log_err("cert.expiry_check_failed", KV_ERRNO(ENOMEM),
				 KV("effect", "expiry warnings wait for the next check"));
		c->expiry_generation = c->ops->generation;
		c->expiry_due_ms = now + KG_EXPIRY_CHECK_MS;
	}
	pthread_mutex_unlock(&c->ops->change_lock);
	uint64_t ms = c->expiry_due_ms - now;
	/* A change the store thread applies wakes nobody here: look for one
	 * every minute (a comparison; the files are read only on a change). */
	if (c->ops->store && ms > 60000)
		ms = 60000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* The sooner of two poll timeouts, -1 meaning none. */
static int sooner(int a, int b)
{
	if (a < 0)
		return b;
	return b < 0 || a < b ? a : b;
}

/* Serves one metrics request with the running document held, so the
 * certificate files it names stay those of one document. */
static void serve_metrics(struct kg_control *c, int fd)
{
	pthread_mutex_lock(&c->ops->change_lock);
	struct kg_config_ref *doc = c->ops->cur;
	atomic_fetch_add(&doc->refs, 1);
	pthread_mutex_unlock(&c->ops->change_lock);
	kg_metrics_serve(c->ops->rt, doc->cfg, fd);
	kg_config_ref_put(doc);
}

static void *control_main(void *arg)
{
	struct kg_control *c = arg;
	for (;;) {
		struct pollfd p[3] = {
			{.fd = c->stop_fd, .events = POLLIN},
			{.fd = c->fd, .events = POLLIN},
			{.fd = c->metrics_fd, .events = POLLIN},
		};
		int timeout = sooner(rotate_ticket_keys(c), check_expiry(c));
		int r = poll(p, c->metrics_fd >= 0 ? 3 : 2, timeout);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			log_err("control.poll_failed", KV_ERRNO(errno));
			return NULL;
		}
		if (p[0].revents)
			return NULL;
		for (int i = 1; i < 3; i++) {
			if (!(p[i].revents & POLLIN))
				continue;
			int fd = accept4(p[i].fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd == -1) {
				if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
					log_warn("control.accept_failed", KV_ERRNO(errno));
				continue;
			}
			/* A client that stops reading must not hold us forever. */
			struct timeval tv = {.tv_sec = REQUEST_TIMEOUT_MS / 1000};
			if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == -1)
				log_debug("control.sndtimeo_failed", KV_ERRNO(errno));
			if (i == 1)
				serve_one(c, fd);
			else
				serve_metrics(c, fd);
			close(fd);
		}
	}
}

/* A socket file left by a killed daemon is removed; one that a running
 * daemon still answers on is not. */
static int bind_socket(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sun.sun_path))
		return kg_fail(err, errlen, ENAMETOOLONG,
			       "control socket path %s: longer than %zu bytes", path,
			       sizeof(sun.sun_path) - 1);
	strcpy(sun.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd == -1) {
		return kg_fail_errno(err, errlen, errno, "control socket");
	}
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
		close(probe);
		close(fd);
		return kg_fail(err, errlen, EADDRINUSE,
			       "control socket %s: another kgated is answering there", path);
	}
	if (probe >= 0)
		close(probe);
	if (unlink(path) == -1 && errno != ENOENT) {
		int r = kg_fail_errno(err, errlen, errno, "control socket %s", path);
		close(fd);
		return r;
	}
	/* Created 0600 from the start: no window with a wider mode. */
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (r == -1 || listen(fd, 64) == -1) {
		r = kg_fail_errno(err, errlen, errno, "control socket %s", path);
		close(fd);
		return r;
	}
	return fd;
}

struct kg_control *kg_control_start(struct kg_ops *ops, const char *path, gid_t group,
				    int inherited_fd, int metrics_fd, char *err, size_t errlen)
{
	struct kg_control *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, errlen, "out of memory");
		if (inherited_fd >= 0)
			close(inherited_fd);
		return NULL;
	}
	c->ops = ops;
	c->group = group;
	c->metrics_fd = metrics_fd;
	c->stop_fd = -1;
	c->fd = -1;
	if (path && inherited_fd >= 0) {
		/* The file, its mode and group are the old process's: kept. */
		c->fd = inherited_fd;
		c->path = strdup(path);
		if (!c->path) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
	} else if (path) {
		c->path = strdup(path);
		c->fd = c->path ? bind_socket(path, err, errlen) : -1;
		if (c->fd < 0)
			goto fail;
	}
	if (path && inherited_fd < 0 && group != (gid_t)-1 && (chown(path, (uid_t)-1, group) == -1 || chmod(path, 0660) == -1)) {
		snprintf(err, errlen, "control socket %s: group access: %s", path, strerror(errno));
		goto fail_unlink;
	}
	c->expiry = kg_expiry_create();
	if (!c->expiry) {
		snprintf(err, errlen, "out of memory");
		goto fail_unlink;
	}
	c->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (c->stop_fd == -1) {
		snprintf(err, errlen, "control: eventfd: %s", strerror(errno));
		goto fail_unlink;
	}
	int r = pthread_create(&c->thread, NULL, control_main, c);
	if (r != 0) {
		snprintf(err, errlen, "control: thread: %s", strerror(r));
		goto fail_unlink;
	}
	return c;
fail_unlink:
	if (path && inherited_fd < 0) /* an inherited file is the old process's */
		unlink(path);
fail:
	if (c->fd >= 0)
		close(c->fd);
	if (c->stop_fd >= 0)
		close(c->stop_fd);
	kg_expiry_destroy(c->expiry);
	free(c->path);
	free(c);
	return NULL;
}

static void stop(struct kg_control *c, bool remove_file)
{
	uint64_t one = 1;
	if (write(c->stop_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		log_err("control.stop_failed", KV_ERRNO(errno));
	pthread_join(c->thread, NULL);
	if (c->fd >= 0) {
		close(c->fd);
		if (remove_file)
			unlink(c->path);
	}
	close(c->stop_fd);
	kg_expiry_destroy(c->expiry);
	free(c->path);
	free(c);
}

void kg_control_stop(struct kg_control *c)
{
	if (c)
		stop(c, true);
}

void kg_control_hand_over(struct kg_control *c)
{
	if (c)
		stop(c, false);
}

int kg_control_fd(const struct kg_control *c)
{
	return c ? c->fd : -1;
}
