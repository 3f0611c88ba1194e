/* Binary upgrade by re-exec with inherited sockets (upgrade.h). */
#include "upgrade.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kgate/log.h>

#include "clock.h"
#include "config.h"
#include "errors.h"

extern char **environ;

#define MSG_READY "ready"
#define MSG_RELEASED "released"
/* How long a new process that closed its channel may take to exit. */
#define EXIT_WAIT_MS 5000

/* ---- old side -------------------------------------------------------------- */

/* "parent=P;chan=N;lock=N;control=N;metrics=N;health=N;sessions=N;
 * steer=N,N,N,N,N;listen=A,B,..." */
static int format_env(char *buf, size_t len, int chan, const struct kg_upgrade_fds *fds)
{
	int n = snprintf(buf, len, KG_UPGRADE_ENV "=parent=%d;chan=%d;lock=%d;control=%d;metrics=%d;"
			 "health=%d;sessions=%d;steer=", (int)getpid(), chan, fds->lock_fd,
			 fds->control_fd, fds->metrics_fd, fds->health_fd, fds->sessions_fd);
	for (size_t i = 0; i < KG_STEER_FDS && n > 0 && (size_t)n < len; i++)
		n += snprintf(buf + n, len - (size_t)n, "%s%d", i ? "," : "", fds->steer[i]);
	if (n > 0 && (size_t)n < len)
		n += snprintf(buf + n, len - (size_t)n, ";listen=");
	for (size_t i = 0; i < fds->n_listen && n > 0 && (size_t)n < len; i++)
		n += snprintf(buf + n, len - (size_t)n, "%s%d", i ? "," : "", fds->listen[i]);
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

/* The environment for the new process: ours, minus an inherited
 * KG_UPGRADE_ENV, plus the new one. Built before fork: the child of a
 * threaded process may only make async-signal-safe calls. */
static char **build_env(char *entry)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = calloc(n + 2, sizeof(*env));
	if (!env)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], KG_UPGRADE_ENV "=", sizeof(KG_UPGRADE_ENV)) != 0)
			env[k++] = environ[i];
	env[k] = entry;
	return env;
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void __attribute__((noreturn))
exec_child(const char *exe, char *const argv[], char **env, const int *keep, size_t n_keep)
{
	sigset_t none;
	for (size_t i = 0; i < n_keep; i++)
		if (keep[i] >= 0 && fcntl(keep[i], F_SETFD, 0) == -1)
			_exit(126);
	/* The new process blocks what it waits for itself; until then a
	 * signal must act (a stuck start-up can be stopped). */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(exe, argv, env);
	_exit(127);
}

static void describe_status(int status, char *buf, size_t len)
{
	if (WIFEXITED(status))
		snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
			 strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "stopped (status 0x%x)", (unsigned)status);
}

/* Reaps pid, waiting up to wait_ms before killing it. */
static void reap(pid_t pid, unsigned wait_ms, char *how, size_t howlen)
{
	int status = 0;
	uint64_t until = kg_now_ms() + wait_ms;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid) {
			describe_status(status, how, howlen);
			return;
		}
		if (r == -1 && errno != EINTR) {
			snprintf(how, howlen, "could not be waited for: %s", strerror(errno));
			return;
		}
		if (r == 0 && kg_now_ms() >= until) {
			kill(pid, SIGKILL);
			if (waitpid(pid, &status, 0) == pid)
				describe_status(status, how, howlen);
			else
				snprintf(how, howlen, "was killed");
			return;
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

/* Waits for "ready" on chan: 1 ready, 0 the child closed its end, -ETIMEDOUT,
 * or -errno. */
static int wait_ready(int chan, unsigned timeout_ms)
{
	uint64_t until = kg_now_ms() + timeout_ms;
	for (;;) {
		uint64_t now = kg_now_ms();
		if (now >= until)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = chan, .events = POLLIN};
		int r = poll(&p, 1, (int)(until - now));
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		char msg[32];
		ssize_t n = recv(chan, msg, sizeof(msg) - 1, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -errno;
		if (n == 0)
			return 0;
		msg[n] = '\0';
		if (strcmp(msg, MSG_READY) == 0)
			return 1;
		/* Anything else is ignored: only "ready" means ready. */
	}
}

int kg_upgrade_spawn(const char *exe, char *const argv[], const struct kg_upgrade_fds *fds,
		     unsigned timeout_ms, struct kg_upgrade_child *child, char *err,
		     size_t errlen)
{
	int sv[2];
	char *entry = NULL;
	char **env = NULL;
	int keep[KG_INHERIT_MAX_LISTEN + 6 + KG_STEER_FDS];
	size_t n_keep = 0;
	int ret;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1)
		return kg_fail_errno(err, errlen, errno, "upgrade channel");
	/* Each listening fd takes at most 11 characters. */
	size_t len = 160 + (KG_STEER_FDS + fds->n_listen) * 12;
	entry = malloc(len);
	if (!entry || format_env(entry, len, sv[1], fds) < 0 || !(env = build_env(entry))) {
		ret = kg_fail(err, errlen, ENOMEM, "upgrade: out of memory");
		goto close_channel;
	}
	keep[n_keep++] = sv[1];
	keep[n_keep++] = fds->lock_fd;
	keep[n_keep++] = fds->control_fd;
	keep[n_keep++] = fds->metrics_fd;
	keep[n_keep++] = fds->health_fd;
	keep[n_keep++] = fds->sessions_fd;
	for (size_t i = 0; i < KG_STEER_FDS; i++)
		keep[n_keep++] = fds->steer[i];
	for (size_t i = 0; i < fds->n_listen; i++)
		keep[n_keep++] = fds->listen[i];

	pid_t pid = fork();
	if (pid == -1) {
		ret = kg_fail_errno(err, errlen, errno, "upgrade: fork");
		goto close_channel;
	}
	if (pid == 0)
		exec_child(exe, argv, env, keep, n_keep);
	close(sv[1]);
	sv[1] = -1;
	log_notice("upgrade.started", KV("pid", (int)pid), KV("binary", exe));

	int r = wait_ready(sv[0], timeout_ms);
	if (r == 1) {
		child->pid = pid;
		child->chan = sv[0];
		free(env);
		free(entry);
		return 0;
	}
	char how[96];
	if (r == -ETIMEDOUT) {
		kill(pid, SIGKILL);
		reap(pid, EXIT_WAIT_MS, how, sizeof(how));
		ret = kg_fail(err, errlen, ETIMEDOUT, "the new kgated (pid %d, %s) was not ready "
			      "within %u ms and was stopped: it %s", (int)pid, exe, timeout_ms, how);
	} else {
		reap(pid, EXIT_WAIT_MS, how, sizeof(how));
		ret = kg_fail(err, errlen, ECHILD, "the new kgated (pid %d, %s) %s before it was "
			      "ready%s", (int)pid, exe, how,
			      strstr(how, "status 127") ? " (could not execute the binary)"
							 : " (its log lines say why)");
	}
close_channel:
	close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	free(env);
	free(entry);
	return ret;
}

void kg_upgrade_release(struct kg_upgrade_child *child)
{
	if (send(child->chan, MSG_RELEASED, strlen(MSG_RELEASED), MSG_NOSIGNAL) == -1)
		log_warn("upgrade.release_not_sent", KV("pid", (int)child->pid), KV_ERRNO(errno));
	close(child->chan);
	child->chan = -1;
}

/* ---- new side -------------------------------------------------------------- */

static int sock_opt(int fd, int opt)
{
	int v = 0;
	socklen_t len = sizeof(v);
	return getsockopt(fd, SOL_SOCKET, opt, &v, &len) == -1 ? -1 : v;
}

/* A stream socket of the family (AF_UNSPEC: inet or inet6) that listens. */
static bool is_listener(int fd, int family)
{
	int dom = sock_opt(fd, SO_DOMAIN);
	if (sock_opt(fd, SO_TYPE) != SOCK_STREAM || sock_opt(fd, SO_ACCEPTCONN) != 1)
		return false;
	return family == AF_UNSPEC ? dom == AF_INET || dom == AF_INET6 : dom == family;
}

static bool is_dir(int fd)
{
	struct stat sb;
	return fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* A memfd's text (health verdicts, TLS sessions), NUL-terminated, or NULL
 * (then nothing is carried over: lost, never a failed start). Closes fd. */
static char *read_text(int fd)
{
	enum { MAX = 256 << 20 };
	struct stat sb;
	char *text = NULL;
	if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size < MAX &&
	    (text = malloc((size_t)sb.st_size + 1))) {
		ssize_t n = pread(fd, text, (size_t)sb.st_size, 0);
		if (n == sb.st_size) {
			text[n] = '\0';
		} else {
			free(text);
			text = NULL;
		}
	}
	close(fd);
	return text;
}

static int parse_fd(const char *s, const char **end, int *fd)
{
	char *e;
	errno = 0;
	long v = strtol(s, &e, 10);
	if (e == s || errno || v < -1 || v > 1 << 24)
		return -1;
	*fd = (int)v;
	*end = e;
	return 0;
}

static void inherit_reset(struct kg_inherit *in)
{
	memset(in, 0, sizeof(*in));
	in->chan = in->lock_fd = in->control_fd = in->metrics_fd = -1;
	for (size_t i = 0; i < KG_STEER_FDS; i++)
		in->steer[i] = -1;
}

/* Parses the variable's value into in (fds not yet checked). */
static int parse_value(const char *v, struct kg_inherit *in, int texts[2])
{
	static const char *const keys[] = {"parent=", ";chan=", ";lock=", ";control=", ";metrics=",
					   ";health=", ";sessions=", ";steer=", ";listen="};
	enum { N_FDS = 7 };
	int vals[N_FDS];
	const char *p = v;
	for (size_t k = 0; k < N_FDS; k++) {
		size_t kl = strlen(keys[k]);
		if (strncmp(p, keys[k], kl) != 0 || parse_fd(p + kl, &p, &vals[k]) < 0)
			return -1;
	}
	/* All of the steering objects or none. */
	if (strncmp(p, keys[N_FDS], strlen(keys[N_FDS])) != 0)
		return -1;
	p += strlen(keys[N_FDS]);
	int steer[KG_STEER_FDS];
	size_t n_steer = 0;
	for (size_t i = 0; i < KG_STEER_FDS; i++) {
		if ((i && *p++ != ',') || parse_fd(p, &p, &steer[i]) < 0)
			return -1;
		n_steer += steer[i] >= 0;
	}
	if (n_steer != 0 && n_steer != KG_STEER_FDS)
		return -1;
	if (strncmp(p, keys[N_FDS + 1], strlen(keys[N_FDS + 1])) != 0)
		return -1;
	p += strlen(keys[N_FDS + 1]);
	while (*p) {
		int fd;
		if (in->n_listen == KG_INHERIT_MAX_LISTEN || parse_fd(p, &p, &fd) < 0 || fd < 0)
			return -1;
		in->listen[in->n_listen++] = fd;
		if (*p == ',')
			p++;
		else if (*p)
			return -1;
	}
	in->parent = vals[0];
	in->chan = vals[1];
	in->lock_fd = vals[2];
	in->control_fd = vals[3];
	in->metrics_fd = vals[4];
	texts[0] = vals[5];
	texts[1] = vals[6];
	memcpy(in->steer, steer, sizeof(steer));
	return in->parent > 1 && in->chan >= 0 ? 0 : -1;
}

/* Each fd is what it claims to be, above stdio, and named once. */
static int check_fds(struct kg_inherit *in, char *err, size_t errlen)
{
	struct {
		int fd;
		const char *what;
		bool ok;
	} one[] = {
		{in->chan, "channel", sock_opt(in->chan, SO_TYPE) == SOCK_SEQPACKET},
		{in->lock_fd, "state lock", in->lock_fd < 0 || is_dir(in->lock_fd)},
		{in->control_fd, "control socket", in->control_fd < 0 || is_listener(in->control_fd, AF_UNIX)},
		{in->metrics_fd, "metrics socket", in->metrics_fd < 0 || is_listener(in->metrics_fd, AF_UNSPEC)},
	};
	int seen[KG_INHERIT_MAX_LISTEN + 4 + KG_STEER_FDS];
	size_t n_seen = 0;
	for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++) {
		if (one[i].fd < 0)
			continue;
		if (one[i].fd <= 2 || !one[i].ok)
			return kg_fail(err, errlen, EINVAL, "%s: fd %d is not a %s", KG_UPGRADE_ENV,
				       one[i].fd, one[i].what);
		seen[n_seen++] = one[i].fd;
	}
	/* What they are is checked by kg_steer_adopt (libbpf). */
	for (size_t i = 0; i < KG_STEER_FDS; i++) {
		if (in->steer[i] < 0)
			continue;
		if (in->steer[i] <= 2)
			return kg_fail(err, errlen, EINVAL, "%s: fd %d is not a BPF object",
				       KG_UPGRADE_ENV, in->steer[i]);
		seen[n_seen++] = in->steer[i];
	}
	for (size_t i = 0; i < in->n_listen; i++) {
		if (in->listen[i] <= 2 || !is_listener(in->listen[i], AF_UNSPEC))
			return kg_fail(err, errlen, EINVAL, "%s: fd %d is not a listening TCP socket",
				       KG_UPGRADE_ENV, in->listen[i]);
		seen[n_seen++] = in->listen[i];
	}
	for (size_t i = 0; i < n_seen; i++)
		for (size_t j = i + 1; j < n_seen; j++)
			if (seen[i] == seen[j])
				return kg_fail(err, errlen, EINVAL, "%s: fd %d is named twice",
					       KG_UPGRADE_ENV, seen[i]);
	/* Not to be passed on by accident: the next upgrade names them again. */
	for (size_t i = 0; i < n_seen; i++)
		if (fcntl(seen[i], F_SETFD, FD_CLOEXEC) == -1)
			return kg_fail_errno(err, errlen, errno, "%s: fd %d", KG_UPGRADE_ENV, seen[i]);
	return 0;
}

int kg_inherit_from_env(struct kg_inherit *in, char *err, size_t errlen)
{
	inherit_reset(in);
	const char *v = getenv(KG_UPGRADE_ENV);
	if (!v)
		return 0;
	char *copy = strdup(v);
	unsetenv(KG_UPGRADE_ENV);
	if (!copy)
		return kg_fail(err, errlen, ENOMEM, "%s: out of memory", KG_UPGRADE_ENV);
	int texts[2] = {-1, -1};
	int r = parse_value(copy, in, texts);
	free(copy);
	if (r < 0) {
		inherit_reset(in);
		return kg_fail(err, errlen, EINVAL, "%s: malformed value (kgated sets it for the "
			       "process it upgrades to; it is not for hand use)", KG_UPGRADE_ENV);
	}
	r = check_fds(in, err, errlen);
	if (r < 0) {
		kg_inherit_close(in);
		for (size_t i = 0; i < 2; i++)
			if (texts[i] > 2)
				close(texts[i]);
		return r;
	}
	in->health = texts[0] > 2 ? read_text(texts[0]) : NULL;
	in->sessions = texts[1] > 2 ? read_text(texts[1]) : NULL;
	in->active = true;
	return 0;
}

int kg_inherit_take_listener(struct kg_inherit *in, const struct sockaddr_storage *addr)
{
	for (size_t i = 0; i < in->n_listen; i++) {
		struct sockaddr_storage have = {0};
		socklen_t len = sizeof(have);
		if (getsockname(in->listen[i], (struct sockaddr *)&have, &len) == -1 ||
		    !kg_sockaddr_equal(&have, addr))
			continue;
		int fd = in->listen[i];
		in->listen[i] = in->listen[--in->n_listen];
		return fd;
	}
	return -1;
}

size_t kg_inherit_close_unused(struct kg_inherit *in)
{
	size_t n = in->n_listen;
	for (size_t i = 0; i < n; i++)
		close(in->listen[i]);
	in->n_listen = 0;
	return n;
}

bool kg_inherit_report_ready(struct kg_inherit *in, unsigned timeout_ms)
{
	bool released = false;
	if (send(in->chan, MSG_READY, strlen(MSG_READY), MSG_NOSIGNAL) == -1) {
		/* The old process is gone: nothing is left to release. */
		released = true;
		goto close_chan;
	}
	uint64_t until = kg_now_ms() + timeout_ms;
	for (;;) {
		uint64_t now = kg_now_ms();
		if (now >= until)
			break;
		struct pollfd p = {.fd = in->chan, .events = POLLIN};
		int r = poll(&p, 1, (int)(until - now));
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		char msg[32];
		ssize_t n = recv(in->chan, msg, sizeof(msg) - 1, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			released = true; /* closed: the old process exited */
			break;
		}
		msg[n] = '\0';
		if (strcmp(msg, MSG_RELEASED) == 0) {
			released = true;
			break;
		}
	}
close_chan:
	close(in->chan);
	in->chan = -1;
	return released;
}

void kg_inherit_close(struct kg_inherit *in)
{
	int *one[] = {&in->chan, &in->lock_fd, &in->control_fd, &in->metrics_fd};
	for (size_t i = 0; i < sizeof(one) / sizeof(one[0]); i++) {
		if (*one[i] >= 0)
			close(*one[i]);
		*one[i] = -1;
	}
	kg_inherit_close_unused(in);
	for (size_t i = 0; i < KG_STEER_FDS; i++) {
		if (in->steer[i] >= 0)
			close(in->steer[i]);
		in->steer[i] = -1;
	}
	free(in->health);
	in->health = NULL;
	free(in->sessions);
	in->sessions = NULL;
	in->active = false;
}
