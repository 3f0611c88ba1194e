/* kgated: arguments, start-up order, signals, drain.
 *
 * Start-up order: load and validate the configuration (files included),
 * build every listener's SSL_CTX and balancer (key files are read here, as
 * the starting user), resolve the user to run as, load BPF objects, drop
 * privileges (privdrop.h: everything that needs root or CAP_BPF/
 * CAP_NET_ADMIN happens before this point, and no thread exists yet), bind
 * every listening socket with the kept CAP_NET_BIND_SERVICE (so a bind
 * error is reported before anything runs), start the workers, then
 * announce readiness (log line + sd_notify). SIGTERM/SIGINT drain. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <kgate/limits.h>
#include <kgate/log.h>

#include "balancer.h"
#include "certs.h"
#include "config.h"
#include "ktls.h"
#include "health.h"
#include "listener.h"
#include "paths.h"
#include "privdrop.h"
#include "runtime.h"
#include "tls.h"
#include "worker.h"

struct options {
	const char *config_path;
	const char *state_dir;
	const char *log_level;
	const char *user;
	unsigned workers;
	bool check_only;
};

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: kgated --config FILE [options]\n"
		"Terminates mutual TLS and balances connections over backends.\n\n"
		"  -c, --config FILE     configuration document (JSON)\n"
		"  -s, --state-dir DIR   state directory (created if missing)\n"
		"  -w, --workers N       worker threads (default: settings.workers, else one per core)\n"
		"  -l, --log-level L     err, warn, notice, info (default) or debug\n"
		"  -u, --user NAME       run as NAME once started (default: kgate when started\n"
		"                        as root, else the starting user);\n"
		"                        'root' keeps uid 0; only CAP_NET_BIND_SERVICE is kept\n"
		"  -t, --check           validate the configuration and its files, then exit\n"
		"  -h, --help            this text\n");
}

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{"config", required_argument, NULL, 'c'},
		{"state-dir", required_argument, NULL, 's'},
		{"workers", required_argument, NULL, 'w'},
		{"log-level", required_argument, NULL, 'l'},
		{"user", required_argument, NULL, 'u'},
		{"check", no_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "c:s:w:l:u:th", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c': o->config_path = optarg; break;
		case 's': o->state_dir = optarg; break;
		case 'l': o->log_level = optarg; break;
		case 'u': o->user = optarg; break;
		case 't': o->check_only = true; break;
		case 'w': {
			char *end;
			unsigned long n = strtoul(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || n == 0 || n > KG_MAX_WORKERS) {
				fprintf(stderr, "kgated: --workers: expected 1-%d, got '%s'\n",
					KG_MAX_WORKERS, optarg);
				return -1;
			}
			o->workers = (unsigned)n;
			break;
		}
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kgated: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (!o->config_path) {
		fprintf(stderr, "kgated: --config FILE is required\n");
		usage(stderr);
		return -1;
	}
	return 0;
}

static void runtime_free(struct kg_runtime *rt)
{
	for (size_t i = 0; i < rt->n_listeners; i++) {
		SSL_CTX_free(rt->listeners[i].ssl_ctx);
		kg_health_group_destroy(rt->listeners[i].health);
		kg_balancer_destroy(rt->listeners[i].balancer);
	}
	free(rt->listeners);
	rt->listeners = NULL;
}

/* Builds SSL_CTX and balancer per listener. Refuses what this build cannot
 * run instead of silently running something else. */
static int runtime_build(struct kg_runtime *rt, const struct kg_config *cfg)
{
	char err[512];
	rt->cfg = cfg;
	rt->n_listeners = cfg->n_listeners;
	kg_kernel_probe(&rt->caps);
	log_info("kernel TLS: %s (%s)", rt->caps.ktls ? "yes" : "no", rt->caps.ktls_why);
	rt->listeners = calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof(*rt->listeners));
	if (!rt->listeners)
		return -ENOMEM;
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct kg_listener_conf *lc = &cfg->listeners[i];
		struct kg_listener_rt *l = &rt->listeners[i];
		l->conf = lc;
		if (kg_path_plan(lc, &rt->caps, &l->plan, &l->plan_forced, err, sizeof(err)) < 0) {
			fprintf(stderr, "kgated: config error: listeners[%zu].forwarding: %s\n", i, err);
			return -EINVAL;
		}
		if (lc->protocol == KG_PROTO_TLS) {
			l->ssl_ctx = kg_tls_ctx_create(lc, err, sizeof(err));
			if (!l->ssl_ctx) {
				fprintf(stderr, "kgated: config error: listeners[%zu]: %s\n", i, err);
				return -EINVAL;
			}
			if (l->plan == KG_PATH_KTLS_SPLICE && kg_ktls_ctx_prepare(l->ssl_ctx) < 0) {
				fprintf(stderr, "kgated: listeners[%zu]: cannot set up kTLS tracking\n", i);
				return -EINVAL;
			}
		}
		log_info("listener %s: protocol %s, forwarding %s%s", lc->name,
			 lc->protocol == KG_PROTO_TCP ? "tcp" : "tls", kg_path_name(l->plan),
			 l->plan == KG_PATH_KTLS_SPLICE && !l->plan_forced
				 ? " (userspace TLS when a connection cannot be handed off)" : "");
		unsigned weights[KG_MAX_BACKENDS];
		if (lc->n_backends > KG_MAX_BACKENDS) {
			fprintf(stderr, "kgated: config error: listeners[%zu].backends: at most %d members\n",
				i, KG_MAX_BACKENDS);
			return -EINVAL;
		}
		for (size_t b = 0; b < lc->n_backends; b++)
			weights[b] = lc->backends[b].weight;
		l->balancer = kg_balancer_create("rr", weights, lc->n_backends);
		if (!l->balancer) {
			fprintf(stderr, "kgated: config error: listeners[%zu].backends: invalid weights\n", i);
			return -EINVAL;
		}
		l->health = kg_health_group_create(lc, l->balancer);
		if (!l->health) {
			fprintf(stderr, "kgated: listeners[%zu]: out of memory for health state\n", i);
			return -ENOMEM;
		}
	}
	return 0;
}

/* Opens listener sockets for every worker: fds[w][l]. Port 0 is resolved by
 * the first socket and reused by the others. */
static int open_listeners(struct kg_config *cfg, unsigned n_workers, int **fds)
{
	for (unsigned w = 0; w < n_workers; w++) {
		fds[w] = malloc((cfg->n_listeners ? cfg->n_listeners : 1) * sizeof(int));
		if (!fds[w])
			return -ENOMEM;
		for (size_t l = 0; l < cfg->n_listeners; l++)
			fds[w][l] = -1;
	}
	for (size_t l = 0; l < cfg->n_listeners; l++) {
		struct kg_listener_conf *lc = &cfg->listeners[l];
		char addr[80];
		for (unsigned w = 0; w < n_workers; w++) {
			struct sockaddr_storage bound;
			int fd = kg_listener_open(&lc->bind, lc->bind_len, &bound);
			if (fd < 0) {
				kg_sockaddr_format(&lc->bind, addr, sizeof(addr));
				log_err("listener %s: cannot listen on %s: %s", lc->name, addr,
					strerror(-fd));
				return fd;
			}
			fds[w][l] = fd;
			lc->bind = bound; /* the chosen port, for the next workers */
		}
		kg_sockaddr_format(&lc->bind, addr, sizeof(addr));
		log_notice("listener %s listening on %s", lc->name, addr);
	}
	return 0;
}

/* Creates the state directory (mode 0700). One that kgated creates as root
 * for another user is handed to that user; an existing one is left as it
 * is (under systemd, StateDirectory= owns it) and checked after the drop. */
static int state_dir_create(const char *path, const struct kg_priv_plan *priv)
{
	if (mkdir(path, 0700) == -1) {
		if (errno == EEXIST)
			return 0;
		log_err("state directory %s: %s", path, strerror(errno));
		return -1;
	}
	if (priv->switch_user && chown(path, priv->uid, priv->gid) == -1) {
		log_err("state directory %s: cannot give it to user %s: %s", path, priv->user,
			strerror(errno));
		return -1;
	}
	return 0;
}

/* Becomes the planned user (privdrop.h). Runs while main is the only
 * thread; the state directory must be usable by that user afterwards. */
static int drop_privileges(const struct kg_priv_plan *priv, const char *state_dir)
{
	char summary[256], err[256];
	if (kg_priv_drop(priv, summary, sizeof(summary), err, sizeof(err)) < 0) {
		log_err("cannot drop privileges: %s", err);
		return -1;
	}
	log_notice("%s", summary);
	if (state_dir && access(state_dir, R_OK | W_OK | X_OK) == -1) {
		log_err("state directory %s: not usable by user %s: %s (chown it to the user)",
			state_dir, priv->user, strerror(errno));
		return -1;
	}
	return 0;
}

/* systemd Type=notify without libsystemd: one datagram to $NOTIFY_SOCKET. */
static void sd_notify_send(const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (!path || (path[0] != '/' && path[0] != '@'))
		return;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	size_t len = strlen(path);
	if (len >= sizeof(sun.sun_path))
		return;
	memcpy(sun.sun_path, path, len);
	if (sun.sun_path[0] == '@')
		sun.sun_path[0] = '\0';
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return;
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) == -1)
		log_warn("sd_notify: %s", strerror(errno));
	close(fd);
}

static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			log_warn("cannot raise the open-file limit: %s", strerror(errno));
	}
}

static int wait_for_stop(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	for (;;) {
		int sig;
		if (sigwait(&set, &sig) != 0)
			return -1;
		if (sig == SIGHUP) {
			log_notice("SIGHUP: configuration reload is not implemented yet; ignored");
			continue;
		}
		log_notice("%s: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		return sig;
	}
}

int main(int argc, char **argv)
{
	struct options opt = {0};
	char err[512];
	int status = 1;

	if (parse_args(argc, argv, &opt) < 0)
		return 2;

	struct kg_config *cfg = kg_config_load(opt.config_path, err, sizeof(err));
	if (!cfg) {
		fprintf(stderr, "kgated: config error: %s\n", err);
		return 1;
	}
	const char *level = opt.log_level ? opt.log_level : cfg->log_level;
	if (level) {
		int lvl = kg_log_level_parse(level);
		if (lvl < 0) {
			fprintf(stderr, "kgated: unknown log level '%s'\n", level);
			goto free_config;
		}
		kg_log_level = lvl;
	}
	if (kg_config_validate_files(cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "kgated: config error: %s\n", err);
		goto free_config;
	}

	struct kg_runtime rt = {0};
	if (runtime_build(&rt, cfg) < 0)
		goto free_runtime;
	if (opt.check_only) {
		printf("kgated: configuration %s is valid (%zu listener(s), %zu certificate(s))\n",
		       opt.config_path, cfg->n_listeners, cfg->n_certs);
		status = 0;
		goto free_runtime;
	}
	struct kg_priv_plan priv;
	if (kg_priv_plan(opt.user, &priv, err, sizeof(err)) < 0) {
		fprintf(stderr, "kgated: %s\n", err);
		goto free_runtime;
	}
	if (opt.state_dir && state_dir_create(opt.state_dir, &priv) < 0)
		goto free_runtime;

	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n_workers = opt.workers ? opt.workers
			     : cfg->workers ? cfg->workers
			     : (unsigned)(cores > 0 ? cores : 1);
	if (n_workers > KG_MAX_WORKERS)
		n_workers = KG_MAX_WORKERS;
	rt.n_workers = n_workers;

	/* Signals go to the main thread's sigwait only: block them before any
	 * worker exists so the workers inherit the mask. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();

	int **fds = calloc(n_workers, sizeof(*fds));
	struct kg_worker **workers = calloc(n_workers, sizeof(*workers));
	unsigned started = 0;
	if (!fds || !workers)
		goto free_workers;
	/* BPF objects (sockmap programs and maps) load HERE, before the drop
	 * removes CAP_BPF and CAP_NET_ADMIN: what the workers need later must
	 * be an fd by now. */
	if (drop_privileges(&priv, opt.state_dir) < 0)
		goto free_workers;
	/* After the drop: CAP_NET_BIND_SERVICE is kept, so low ports bind here
	 * exactly as they will for listeners added at run time. */
	if (open_listeners(cfg, n_workers, fds) < 0)
		goto free_workers;
	for (unsigned w = 0; w < n_workers; w++) {
		workers[w] = kg_worker_create(w, &rt, fds[w]);
		if (!workers[w]) {
			log_err("worker %u: out of memory", w);
			goto free_workers;
		}
		fds[w] = NULL; /* owned by the worker now */
	}
	for (; started < n_workers; started++) {
		int ret = kg_worker_start(workers[started]);
		if (ret < 0) {
			log_err("worker %u: cannot start: %s", started, strerror(-ret));
			goto stop_workers;
		}
	}

	log_notice("kgated ready (pid %d, %u workers)", (int)getpid(), n_workers);
	sd_notify_send("READY=1");
	if (wait_for_stop() > 0)
		status = 0;
	sd_notify_send("STOPPING=1");

stop_workers:
	atomic_store(&rt.stopping, true);
	for (unsigned w = 0; w < started; w++)
		kg_worker_join(workers[w]);
	if (started < n_workers)
		status = 1;
	log_notice("kgated stopped");
free_workers:
	for (unsigned w = 0; w < n_workers; w++) {
		if (workers && workers[w]) {
			kg_worker_destroy(workers[w]);
		} else if (fds && fds[w]) {
			for (size_t l = 0; l < cfg->n_listeners; l++)
				if (fds[w][l] >= 0)
					close(fds[w][l]);
			free(fds[w]);
		}
	}
	free(workers);
	free(fds);
free_runtime:
	runtime_free(&rt);
free_config:
	kg_config_free(cfg);
	return status;
}
