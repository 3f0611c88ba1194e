/* Plain-tcp relay throughput on loopback, three ways side by side: the eBPF
 * sockmap relay (dataplane/sockmap.c), splice(2) through a pipe, and a
 * read/write copy loop. One flow client -> relay -> sink per mode; the
 * relay runs in its own process so its CPU time is its own (getrusage of
 * that process), and whole-box CPU comes from /proc/stat, which also sees
 * the softirq and kworker time that sockmap moves out of the relay.
 *
 *   relay_bench [-b GiB] [-m sockmap,splice,copy] [-P]
 *
 * -P runs the sockmap relay without kg_sockmap_pace (no back-pressure).
 * Needs root for the sockmap mode (it is reported as unavailable without).
 * Prints one table row per mode. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loopback.h"
#include "sockmap.h"

#define CHUNK (64 * 1024)

/* Set by relay_sockmap for the report: bytes userspace moved (draining a
 * paused source) and how often the source was paused. */
static unsigned long long user_moved, pauses;
static int no_pace; /* -P: the kernel relay alone, unbounded */

struct box_cpu {
	unsigned long long busy, total, softirq;
};

static int read_box_cpu(struct box_cpu *c)
{
	unsigned long long v[10] = {0};
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return -1;
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
		       &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
	fclose(f);
	if (n < 8)
		return -1;
	c->total = 0;
	for (int i = 0; i < 8; i++)
		c->total += v[i];
	c->busy = c->total - v[3] - v[4]; /* minus idle and iowait */
	c->softirq = v[6];
	return 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the three relays, one direction (cfd -> bfd) until EOF ---- */

static int relay_copy(int cfd, int bfd)
{
	static char buf[CHUNK];
	for (;;) {
		ssize_t n = read(cfd, buf, sizeof(buf));
		if (n == 0)
			return shutdown(bfd, SHUT_WR);
		if (n == -1)
			return -1;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(bfd, buf + off, (size_t)(n - off));
			if (w == -1)
				return -1;
			off += w;
		}
	}
}

static int relay_splice(int cfd, int bfd)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) == -1)
		return -1;
	fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
	for (;;) {
		ssize_t n = splice(cfd, NULL, p[1], NULL, 1 << 20, SPLICE_F_MOVE | SPLICE_F_MORE);
		if (n == 0)
			break;
		if (n == -1)
			return -1;
		while (n > 0) {
			ssize_t w = splice(p[0], NULL, bfd, NULL, (size_t)n,
					   SPLICE_F_MOVE | SPLICE_F_MORE);
			if (w == -1)
				return -1;
			n -= w;
		}
	}
	close(p[0]);
	close(p[1]);
	return shutdown(bfd, SHUT_WR);
}

/* Follows the close protocol of sockmap.h: wait for the client's FIN,
 * pace every 10 ms meanwhile, then flush and shut the backend down. */
static int relay_sockmap(int cfd, int bfd)
{
	char err[256];
	struct kg_sockmap *sm = kg_sockmap_open(1, err, sizeof(err));
	struct kg_sockmap_pair pair;
	int ret = -1;

	if (!sm) {
		fprintf(stderr, "relay_bench: %s\n", err);
		return -1;
	}
	if (kg_sockmap_add_pair(sm, &pair, cfd, bfd) != 0)
		goto out_close;
	for (;;) {
		/* A paused client (tail mode) is copied on every round, not only
		 * after its FIN: its sender waits for that copy to make room. */
		short events = POLLRDHUP | (pair.tail[KG_SM_CLIENT] ? POLLIN : 0);
		struct pollfd pf = {.fd = cfd, .events = events};
		bool was_paused = pair.paused[KG_SM_CLIENT];
		if (poll(&pf, 1, 10) == -1 || (!no_pace && kg_sockmap_pace(sm, &pair) != 0))
			goto out_remove;
		pauses += !was_paused && pair.paused[KG_SM_CLIENT];
		if (pf.revents & POLLERR)
			goto out_remove;
		if (pair.tail[KG_SM_CLIENT]) {
			ssize_t n;
			while ((n = kg_sockmap_copy_tail(sm, &pair, KG_SM_CLIENT)) > 0)
				;
			if (n < 0 && n != -EAGAIN)
				goto out_remove;
		}
		if (!(pf.revents & POLLRDHUP))
			continue;
		int f = kg_sockmap_flushed(sm, &pair, KG_SM_BACKEND);
		if (f < 0)
			goto out_remove;
		if (f == 1)
			break;
	}
	ret = shutdown(bfd, SHUT_WR);
	user_moved = pair.tail_bytes[KG_SM_BACKEND];
out_remove:
	kg_sockmap_remove_pair(sm, &pair);
out_close:
	kg_sockmap_close(sm);
	return ret;
}

/* ---- one run ---- */

struct sender {
	int fd;
	unsigned long long bytes;
};

static void *send_all(void *arg)
{
	struct sender *s = arg;
	static char buf[CHUNK];
	memset(buf, 'k', sizeof(buf));
	for (unsigned long long left = s->bytes; left > 0;) {
		ssize_t w = write(s->fd, buf, left < sizeof(buf) ? left : sizeof(buf));
		if (w == -1) {
			perror("relay_bench: client write");
			break;
		}
		left -= (unsigned long long)w;
	}
	shutdown(s->fd, SHUT_WR);
	return NULL;
}

static int run(const char *mode, unsigned long long bytes)
{
	struct sockaddr_in fa, ba;
	int lf = bench_listen_loopback(&fa, "relay_bench", 1);
	int lb = bench_listen_loopback(&ba, "relay_bench", 1);
	int rp[2];
	if (pipe(rp) == -1)
		return -1;
	pid_t pid = fork();
	if (pid == -1)
		return -1;
	if (pid == 0) {
		/* The relay process: accept, connect, relay, report rusage. */
		close(rp[0]);
		int cfd = accept4(lf, NULL, NULL, SOCK_CLOEXEC);
		int bfd = bench_connect_to(&ba, "relay_bench", 1);
		int r = !strcmp(mode, "sockmap") ? relay_sockmap(cfd, bfd)
			: !strcmp(mode, "splice") ? relay_splice(cfd, bfd)
						  : relay_copy(cfd, bfd);
		struct rusage ru;
		getrusage(RUSAGE_SELF, &ru);
		double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
			     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
		double msg[4] = {r == 0 ? 0 : 1, cpu, (double)user_moved, (double)pauses};
		if (write(rp[1], msg, sizeof(msg)) != sizeof(msg))
			_exit(1);
		/* Keep the sockets until the sink has read everything. */
		char c;
		if (read(cfd, &c, 1) < 0) {
		}
		_exit(0);
	}
	close(rp[1]);
	struct box_cpu b0, b1;
	int cl = bench_connect_to(&fa, "relay_bench", 1);
	int sink = accept4(lb, NULL, NULL, SOCK_CLOEXEC);
	read_box_cpu(&b0);
	double t0 = now_s();
	struct sender s = {.fd = cl, .bytes = bytes};
	pthread_t th;
	pthread_create(&th, NULL, send_all, &s);
	static char buf[1 << 20];
	unsigned long long got = 0;
	for (;;) {
		ssize_t n = read(sink, buf, sizeof(buf));
		if (n <= 0)
			break;
		got += (unsigned long long)n;
	}
	double t1 = now_s();
	read_box_cpu(&b1);
	pthread_join(th, NULL);
	double msg[4] = {1, 0, 0, 0};
	if (read(rp[0], msg, sizeof(msg)) != sizeof(msg))
		msg[0] = 1;
	close(cl);
	close(sink);
	int status;
	waitpid(pid, &status, 0);
	close(rp[0]);
	close(lf);
	close(lb);
	if (msg[0] != 0 || got != bytes) {
		printf("| %-8s | failed: relay error %g, %llu of %llu bytes |\n", mode, msg[0], got,
		       bytes);
		return -1;
	}
	double gib = (double)bytes / (1024.0 * 1024 * 1024);
	long hz = sysconf(_SC_CLK_TCK);
	double box = (double)(b1.busy - b0.busy) / (double)hz;
	double sirq = (double)(b1.softirq - b0.softirq) / (double)hz;
	char note[96] = "";
	if (!strcmp(mode, "sockmap"))
		snprintf(note, sizeof(note), "%s%.0f pauses, %.1f%% of bytes moved by userspace",
			 no_pace ? "not paced, " : "", msg[3], 100.0 * msg[2] / (double)bytes);
	printf("| %-8s | %6.2f | %8.3f | %8.3f | %8.3f | %s |\n", mode,
	       (double)bytes * 8 / (t1 - t0) / 1e9, msg[1] / gib, box / gib, sirq / gib, note);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	double gib = 2;
	char modes[64] = "sockmap,splice,copy";
	int opt;

	while ((opt = getopt(argc, argv, "b:m:P")) != -1) {
		if (opt == 'P')
			no_pace = 1;
		else if (opt == 'b')
			gib = atof(optarg);
		else if (opt == 'm')
			snprintf(modes, sizeof(modes), "%s", optarg);
		else {
			fprintf(stderr, "usage: relay_bench [-b GiB] [-m sockmap,splice,copy] [-P]\n");
			return 2;
		}
	}
	if (gib <= 0) {
		fprintf(stderr, "relay_bench: -b must be positive\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	unsigned long long bytes = (unsigned long long)(gib * 1024 * 1024 * 1024);
	printf("relay_bench: %.2f GiB per mode, one flow on loopback, %ld CPUs\n\n", gib,
	       sysconf(_SC_NPROCESSORS_ONLN));
	printf("| mode     | Gbit/s | relay CPU s/GiB | box CPU s/GiB | softirq s/GiB | notes |\n");
	printf("|----------|-------:|---------:|---------:|---------:|-------|\n");
	int ret = 0;
	for (char *save = NULL, *m = strtok_r(modes, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
		if (strcmp(m, "sockmap") && strcmp(m, "splice") && strcmp(m, "copy")) {
			fprintf(stderr, "relay_bench: unknown mode '%s'\n", m);
			return 2;
		}
		ret |= run(m, bytes) != 0;
	}
	return ret;
}
