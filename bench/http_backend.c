/* http_backend: a small, fast HTTP/1.1 origin for the benchmarks.
 *
 * One thread, epoll, non-blocking sockets, keep-alive. Every request gets
 * "200 OK" with a fixed body naming the backend, so a run through kgated
 * measures the proxy and not the origin. Requests are assumed bodiless
 * (benchmark GETs); a request asking for "Connection: close" gets its answer
 * with the same header and the socket closed, which is what makes wrk
 * reconnect (it decides on the response's headers). A request for "/echo"
 * gets "backend NAME" and its own head back as the body, so a bench can
 * check which headers a proxy added.
 *
 * Usage: http_backend [--bind ADDR] [--port N] [--name NAME] [--body-bytes N]
 * Prints "http_backend NAME listening on ADDR:PORT" once bound (port 0: the
 * kernel picks). Stops on SIGTERM/SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_CAP 8192
#define MAX_EVENTS 256

struct conn {
	int fd;
	size_t in_len;
	char in[IN_CAP];
	char *out;
	size_t out_len;
	size_t out_off;
	size_t out_cap;
	bool close_after;
};

struct server {
	int epfd;
	int lfd;
	const char *name;
	char *resp_keep;
	size_t resp_keep_len;
	char *resp_close;
	size_t resp_close_len;
	struct conn **conns; /* indexed by fd */
	size_t nconns;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static char *build_response(const char *name, size_t body_bytes, bool close, size_t *len)
{
	char head[256];
	char *body;
	char *resp;
	int hlen;
	int n;

	body = malloc(body_bytes + 1);
	if (!body)
		return NULL;
	/* The body starts with the backend's name so a client can tell who
	 * answered; the rest is padding up to the requested size. */
	n = snprintf(body, body_bytes + 1, "backend %s\n", name);
	if (n < 0) {
		free(body);
		return NULL;
	}
	if ((size_t)n < body_bytes) {
		memset(body + n, 'x', body_bytes - (size_t)n);
		body[body_bytes - 1] = '\n';
	}
	hlen = snprintf(head, sizeof(head),
			"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n",
			body_bytes, close ? "Connection: close\r\n" : "");
	if (hlen < 0 || (size_t)hlen >= sizeof(head)) {
		free(body);
		return NULL;
	}
	resp = malloc((size_t)hlen + body_bytes);
	if (resp) {
		memcpy(resp, head, (size_t)hlen);
		memcpy(resp + hlen, body, body_bytes);
		*len = (size_t)hlen + body_bytes;
	}
	free(body);
	return resp;
}

static void conn_destroy(struct server *srv, struct conn *c)
{
	if (!c)
		return;
	if (c->fd >= 0) {
		if ((size_t)c->fd < srv->nconns)
			srv->conns[c->fd] = NULL;
		close(c->fd);
	}
	free(c->out);
	free(c);
}

static int conn_register(struct server *srv, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = fd };
	struct conn *c;

	if ((size_t)fd >= srv->nconns) {
		size_t n = srv->nconns ? srv->nconns : 1024;
		struct conn **grown;

		while (n <= (size_t)fd)
			n *= 2;
		grown = realloc(srv->conns, n * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		memset(grown + srv->nconns, 0, (n - srv->nconns) * sizeof(*grown));
		srv->conns = grown;
		srv->nconns = n;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
		int err = -errno;

		free(c);
		return err;
	}
	srv->conns[fd] = c;
	return 0;
}

static void accept_all(struct server *srv)
{
	for (;;) {
		int one = 1;
		int fd = accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd == -1) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				fprintf(stderr, "http_backend: accept: %s\n", strerror(errno));
			return;
		}
		if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1)
			fprintf(stderr, "http_backend: TCP_NODELAY: %s\n", strerror(errno));
		if (conn_register(srv, fd) != 0) {
			fprintf(stderr, "http_backend: cannot track connection, closing it\n");
			close(fd);
		}
	}
}

static int out_append(struct conn *c, const char *data, size_t len)
{
	if (c->out_len + len > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		char *grown;

		while (cap < c->out_len + len)
			cap *= 2;
		grown = realloc(c->out, cap);
		if (!grown)
			return -ENOMEM;
		c->out = grown;
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	return 0;
}

/* Case-insensitive search for a "Connection: close" header line inside
 * the request head [head, head+len). */
static bool wants_close(const char *head, size_t len)
{
	static const char name[] = "\r\nconnection:";
	const size_t nlen = sizeof(name) - 1;

	for (size_t i = 0; i + nlen <= len; i++) {
		size_t j;

		if (strncasecmp(head + i, name, nlen) != 0)
			continue;
		j = i + nlen;
		while (j < len && (head[j] == ' ' || head[j] == '\t'))
			j++;
		if (j + 5 <= len && strncasecmp(head + j, "close", 5) == 0)
			return true;
	}
	return false;
}

/* A request line "GET /echo ..." (the bench's header check). */
static bool is_echo(const char *head, size_t len)
{
	static const char line[] = "GET /echo ";
	return len >= sizeof(line) - 1 && memcmp(head, line, sizeof(line) - 1) == 0;
}

/* 200 with "backend NAME\n" and the request head as the body, kept alive. */
static int append_echo(struct server *srv, struct conn *c, const char *head, size_t len)
{
	char top[160];
	int n = snprintf(top, sizeof(top),
			 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n\r\n"
			 "backend %s\n", strlen("backend \n") + strlen(srv->name) + len, srv->name);
	if (n < 0 || (size_t)n >= sizeof(top))
		return -E2BIG;
	if (out_append(c, top, (size_t)n) != 0 || out_append(c, head, len) != 0)
		return -ENOMEM;
	return 0;
}

/* 1: keep the connection, 0: close it (done or error). */
static int flush_out(struct server *srv, struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP,
							  .data.fd = c->fd };

				return epoll_ctl(srv->epfd, EPOLL_CTL_MOD, c->fd, &ev) == -1 ? 0 : 1;
			}
			return 0;
		}
		c->out_off += (size_t)n;
	}
	c->out_off = 0;
	c->out_len = 0;
	if (c->close_after)
		return 0;
	{
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.fd = c->fd };

		if (epoll_ctl(srv->epfd, EPOLL_CTL_MOD, c->fd, &ev) == -1)
			return 0;
	}
	return 1;
}

/* Answers every complete request head in the input buffer. */
static int answer_requests(struct server *srv, struct conn *c)
{
	size_t off = 0;

	while (!c->close_after) {
		char *end = memmem(c->in + off, c->in_len - off, "\r\n\r\n", 4);
		size_t head_len;

		if (!end)
			break;
		head_len = (size_t)(end - (c->in + off)) + 4;
		if (is_echo(c->in + off, head_len)) {
			if (append_echo(srv, c, c->in + off, head_len) != 0)
				return -ENOMEM;
		} else if (wants_close(c->in + off, head_len)) {
			c->close_after = true;
			if (out_append(c, srv->resp_close, srv->resp_close_len) != 0)
				return -ENOMEM;
		} else if (out_append(c, srv->resp_keep, srv->resp_keep_len) != 0) {
			return -ENOMEM;
		}
		off += head_len;
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	if (c->in_len == IN_CAP)
		return -E2BIG; /* a head larger than the buffer: not a benchmark client */
	return 0;
}

/* 1: keep, 0: close. */
static int on_readable(struct server *srv, struct conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->close_after)
			break;
		n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
		if (n == 0) {
			/* Half-closed: answer what arrived, then close. */
			c->close_after = true;
			break;
		}
		if (n == -1) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			return 0;
		}
		c->in_len += (size_t)n;
		if (answer_requests(srv, c) != 0)
			return 0;
	}
	if (c->out_len)
		return flush_out(srv, c);
	return c->close_after ? 0 : 1;
}

static int server_listen(struct server *srv, const char *addr, int port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct epoll_event ev = { .events = EPOLLIN };
	socklen_t slen = sizeof(sin);
	char shown[INET_ADDRSTRLEN];
	int one = 1;

	if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
		fprintf(stderr, "http_backend: invalid IPv4 address '%s'\n", addr);
		return -EINVAL;
	}
	srv->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (srv->lfd == -1)
		return -errno;
	if (setsockopt(srv->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    bind(srv->lfd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    listen(srv->lfd, 4096) == -1 ||
	    getsockname(srv->lfd, (struct sockaddr *)&sin, &slen) == -1)
		return -errno;
	ev.data.fd = srv->lfd;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->lfd, &ev) == -1)
		return -errno;
	if (!inet_ntop(AF_INET, &sin.sin_addr, shown, sizeof(shown)))
		return -errno;
	return ntohs(sin.sin_port);
}

static void usage(FILE *out)
{
	fprintf(out, "Usage: http_backend [--bind ADDR] [--port N] [--name NAME] [--body-bytes N]\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "bind", required_argument, NULL, 'b' },
		{ "port", required_argument, NULL, 'p' },
		{ "name", required_argument, NULL, 'n' },
		{ "body-bytes", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct server srv = { .epfd = -1, .lfd = -1 };
	struct epoll_event events[MAX_EVENTS];
	struct sigaction sa = { .sa_handler = on_signal };
	const char *bind_addr = "127.0.0.1";
	const char *name = "b";
	long port = 0;
	long body = 64;
	int rc = 1;
	int opt;

	while ((opt = getopt_long(argc, argv, "b:p:n:s:h", longopts, NULL)) != -1) {
		char *end = NULL;

		switch (opt) {
		case 'b': bind_addr = optarg; break;
		case 'n': name = optarg; break;
		case 'p':
			port = strtol(optarg, &end, 10);
			if (*end || port < 0 || port > 65535) {
				fprintf(stderr, "http_backend: invalid port '%s'\n", optarg);
				return 2;
			}
			break;
		case 's':
			body = strtol(optarg, &end, 10);
			if (*end || body < 0 || body > (64L << 20)) {
				fprintf(stderr, "http_backend: invalid body size '%s'\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (sigaction(SIGTERM, &sa, NULL) == -1 || sigaction(SIGINT, &sa, NULL) == -1) {
		perror("http_backend: sigaction");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	srv.name = name;
	srv.resp_keep = build_response(name, (size_t)body, false, &srv.resp_keep_len);
	srv.resp_close = build_response(name, (size_t)body, true, &srv.resp_close_len);
	if (!srv.resp_keep || !srv.resp_close) {
		fprintf(stderr, "http_backend: out of memory\n");
		goto free_responses;
	}
	srv.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (srv.epfd == -1) {
		perror("http_backend: epoll_create1");
		goto free_responses;
	}
	{
		int bound = server_listen(&srv, bind_addr, (int)port);

		if (bound < 0) {
			fprintf(stderr, "http_backend: cannot listen on %s:%ld: %s\n", bind_addr, port,
				strerror(-bound));
			goto close_sockets;
		}
		printf("http_backend %s listening on %s:%d\n", name, bind_addr, bound);
		fflush(stdout);
	}
	while (!stop_requested) {
		int n = epoll_wait(srv.epfd, events, MAX_EVENTS, -1);

		if (n == -1) {
			if (errno == EINTR)
				continue;
			perror("http_backend: epoll_wait");
			goto close_conns;
		}
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			struct conn *c;
			int keep;

			if (fd == srv.lfd) {
				accept_all(&srv);
				continue;
			}
			c = (size_t)fd < srv.nconns ? srv.conns[fd] : NULL;
			if (!c)
				continue;
			if (events[i].events & (EPOLLERR | EPOLLHUP))
				keep = 0;
			else if (events[i].events & EPOLLOUT)
				keep = flush_out(&srv, c);
			else
				keep = on_readable(&srv, c);
			/* Peer half-closed and nothing left to send: done. */
			if (keep && (events[i].events & EPOLLRDHUP) && c->out_len == 0)
				keep = 0;
			if (!keep)
				conn_destroy(&srv, c);
		}
	}
	rc = 0;
close_conns:
	for (size_t i = 0; i < srv.nconns; i++)
		conn_destroy(&srv, srv.conns[i]);
	free(srv.conns);
close_sockets:
	if (srv.lfd >= 0)
		close(srv.lfd);
	close(srv.epfd);
free_responses:
	free(srv.resp_keep);
	free(srv.resp_close);
	return rc;
}
