/* Does this kernel hand back the bytes a sockmap verdict passed (SK_PASS)
 * exactly once and in order? kgate's sockmap relay pauses a source that
 * way and reads the passed bytes back with recv(2) (bpf/README.md), so the
 * relay is only as sound as this.
 *
 *   sockmap_pass_check [-b MiB] [-n runs] [-r MiB] [-p MiB] [-c bytes]
 *                      [-s µs] [-i] [-R]
 *
 * Per run (-n, default 10; -b MiB each, default 1024): one loopback TCP
 * flow whose receiving socket is added to the relay (dataplane/sockmap.c)
 * with a dummy peer. The verdict redirects the first -p MiB to the peer
 * (default 0), then the socket is paused, so the verdict passes every
 * later skb to the socket's own queue, whose size is -r MiB (default 16).
 * The main thread reads it with recv(2) in -c byte calls (default 1 MiB),
 * sleeping -s µs after each; -i reads as the relay does (TCP_INFO, poll,
 * MSG_DONTWAIT); -R forwards what it reads into the peer, itself a socket
 * in the sockmap, as the relay does, and the stream is checked where the
 * peer's far end reads it. The sender writes a counter stream (byte i is
 * byte i % 8 of the little-endian uint64 i / 8), so at any mismatch the
 * checker can tell which stream offset it is looking at: a jump back is a
 * duplicate, a jump forward a loss. It resynchronises and keeps counting.
 *
 * Prints one line per run that was not exact and a summary; exits 1 when
 * any run was not exact, 2 when it could not run (needs root). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h> /* struct tcp_info */
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kgate/log.h>

#include "loopback.h"
#include "sockmap.h"

#define TOOL "sockmap_pass_check"
#define CHUNK (1 << 20)
#define WORDS (CHUNK / 8 + 2)

struct run_result {
	uint64_t received;
	uint64_t dup_bytes, lost_bytes;
	unsigned dups, losses;
	uint64_t first_at, first_len; /* received offset and size of the first anomaly */
	bool unreadable; /* a mismatch that is no part of the stream */
	uint64_t paused_at; /* stream offset of the first passed byte */
	uint64_t redirected; /* bytes the peer got before the pause */
};

static void fill_stream(uint64_t *words, uint64_t first_word, size_t n)
{
	for (size_t i = 0; i < n; i++)
		words[i] = first_word + i;
}

struct sender {
	int fd;
	int go; /* read end of a pipe: one byte once the socket is paused */
	uint64_t bytes;
};

static void *send_stream(void *arg)
{
	struct sender *s = arg;
	static uint64_t words[WORDS];
	char go;

	if (read(s->go, &go, 1) != 1)
		return NULL;
	for (uint64_t off = 0; off < s->bytes;) {
		size_t want = s->bytes - off < CHUNK ? (size_t)(s->bytes - off) : CHUNK;
		fill_stream(words, off / 8, want / 8 + 1);
		for (size_t done = 0; done < want;) {
			ssize_t w = write(s->fd, (char *)words + done, want - done);
			if (w == -1) {
				perror("sockmap_pass_check: write");
				return NULL;
			}
			done += (size_t)w;
		}
		off += want;
	}
	shutdown(s->fd, SHUT_WR);
	return NULL;
}

/* The stream offset of buf[0], from the next two consecutive counter words
 * found in buf: UINT64_MAX when there are none. */
static uint64_t stream_offset_of(const unsigned char *buf, size_t n, uint64_t limit)
{
	for (size_t s = 0; s < 8 && s + 16 <= n; s++) {
		uint64_t a, b;
		memcpy(&a, buf + s, 8);
		memcpy(&b, buf + s + 8, 8);
		if (b == a + 1 && a < limit / 8 + 1 && a * 8 >= s)
			return a * 8 - s;
	}
	return UINT64_MAX;
}

/* Checks buf (received bytes [r->received, +n)) against the stream;
 * *stream is the stream offset expected at buf[0] and is advanced. */
static void check_chunk(struct run_result *r, const unsigned char *buf, size_t n, uint64_t *stream,
			uint64_t total)
{
	static uint64_t words[WORDS];
	size_t i = 0;

	while (i < n && !r->unreadable) {
		size_t len = n - i;
		uint64_t at = *stream;
		fill_stream(words, at / 8, (at % 8 + len) / 8 + 1);
		const unsigned char *want = (const unsigned char *)words + at % 8;
		if (memcmp(buf + i, want, len) == 0) {
			*stream += len;
			return;
		}
		size_t j = 0;
		while (buf[i + j] == want[j])
			j++;
		uint64_t found = stream_offset_of(buf + i + j, len - j, total);
		if (found == UINT64_MAX) {
			r->unreadable = true;
			return;
		}
		uint64_t expected = at + j;
		uint64_t gap = found > expected ? found - expected : expected - found;
		if (found < expected) {
			r->dups++;
			r->dup_bytes += gap;
		} else {
			r->losses++;
			r->lost_bytes += gap;
		}
		if (r->dups + r->losses == 1) {
			r->first_at = r->received + i + j;
			r->first_len = gap;
		}
		*stream = found;
		i += j;
	}
}

/* Reads what reaches the dummy peer: what the verdict redirected before
 * the pause and, with -R, what the reader forwarded after it, which it
 * then checks as one stream. */
struct drain {
	int fd;
	bool check;
	uint64_t bytes; /* read so far (atomic: the reader waits on it) */
	struct run_result result;
	uint64_t total;
};

static void *drain_peer(void *arg)
{
	struct drain *d = arg;
	static unsigned char sink[CHUNK];
	uint64_t stream = 0;
	ssize_t n;

	while ((n = read(d->fd, sink, sizeof(sink))) > 0) {
		if (d->check)
			check_chunk(&d->result, sink, (size_t)n, &stream, d->total);
		d->result.received += (uint64_t)n;
		__atomic_add_fetch(&d->bytes, (uint64_t)n, __ATOMIC_RELEASE);
	}
	return NULL;
}

/* Writes all of buf to fd (blocking). */
static int forward(int fd, const unsigned char *buf, size_t n)
{
	for (size_t done = 0; done < n;) {
		ssize_t w = send(fd, buf + done, n - done, MSG_NOSIGNAL);
		if (w == -1)
			return -errno;
		done += (size_t)w;
	}
	return 0;
}

/* Waits (at most 10 s) until the peer's far end has read everything the
 * verdict redirected to the peer, and returns that count (0 if the count
 * cannot be read). */
static uint64_t wait_far_end(struct kg_sockmap *sm, struct kg_sockmap_pair *pair,
			     const struct drain *d)
{
	uint64_t into = 0;

	if (kg_sockmap_redirected(sm, pair, KG_SM_BACKEND, &into, NULL) != 0)
		return 0;
	for (int wait = 0; wait < 100000 && __atomic_load_n(&d->bytes, __ATOMIC_ACQUIRE) < into;
	     wait++)
		usleep(100);
	return into;
}

/* Waits until the verdict has redirected at least `bytes` to the peer. */
static int wait_redirected(struct kg_sockmap *sm, struct kg_sockmap_pair *pair, uint64_t bytes)
{
	for (;;) {
		uint64_t into = 0;
		int e = kg_sockmap_redirected(sm, pair, KG_SM_BACKEND, &into, NULL);
		if (e || into >= bytes)
			return e;
		usleep(100);
	}
}

static int one_run(struct kg_sockmap *sm, uint64_t bytes, uint64_t before_pause, int rcvbuf,
		   size_t chunk, unsigned nap_us, bool nonblock, bool relay, struct run_result *r)
{
	struct sockaddr_in sa, pa;
	int ls = bench_listen_loopback(&sa, TOOL, 2);
	int lp = bench_listen_loopback(&pa, TOOL, 2);
	int sender_fd = bench_connect_to(&sa, TOOL, 2);
	int src = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
	int peer_far = bench_connect_to(&pa, TOOL, 2);
	int peer = accept4(lp, NULL, NULL, SOCK_CLOEXEC);
	int go[2];
	struct kg_sockmap_pair pair;
	int ret = -1;

	close(ls);
	close(lp);
	if (src == -1 || peer == -1 || pipe2(go, O_CLOEXEC) == -1) {
		perror("sockmap_pass_check: setup");
		exit(2);
	}
	memset(r, 0, sizeof(*r));
	int e = kg_sockmap_add_pair(sm, &pair, src, peer);
	if (e) {
		fprintf(stderr, "sockmap_pass_check: adding the pair: %s\n", strerror(-e));
		goto out;
	}
	struct drain d = {.fd = peer_far, .check = relay, .total = bytes};
	pthread_t drainer;
	if (pthread_create(&drainer, NULL, drain_peer, &d) != 0) {
		fprintf(stderr, "sockmap_pass_check: thread\n");
		exit(2);
	}
	struct sender s = {.fd = sender_fd, .go = go[0], .bytes = bytes};
	pthread_t th;
	if (pthread_create(&th, NULL, send_stream, &s) != 0) {
		fprintf(stderr, "sockmap_pass_check: thread\n");
		exit(2);
	}
	if (before_pause == 0) {
		e = kg_sockmap_pause(sm, &pair, KG_SM_CLIENT);
		if (write(go[1], "g", 1) != 1)
			perror("sockmap_pass_check: start");
	} else {
		if (write(go[1], "g", 1) != 1)
			perror("sockmap_pass_check: start");
		e = wait_redirected(sm, &pair, before_pause);
		if (!e)
			e = kg_sockmap_pause(sm, &pair, KG_SM_CLIENT);
	}
	/* A larger receive buffer parks more passed bytes at once (root may
	 * go past rmem_max). */
	if (!e && setsockopt(src, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) == -1)
		e = -errno;
	if (e) {
		fprintf(stderr, "sockmap_pass_check: pausing: %s\n", strerror(-e));
		exit(2);
	}
	static unsigned char buf[CHUNK];
	uint64_t stream = UINT64_MAX;
	for (;;) {
		if (nonblock) {
			/* As the relay does: look at TCP's counters, wait for
			 * readiness, read without blocking. */
			struct tcp_info ti;
			socklen_t tl = sizeof(ti);
			struct pollfd pf = {.fd = src, .events = POLLIN | POLLRDHUP};
			if (getsockopt(src, IPPROTO_TCP, TCP_INFO, &ti, &tl) == -1 ||
			    poll(&pf, 1, 10) == -1)
				perror("sockmap_pass_check: tcp_info/poll");
		}
		ssize_t n = recv(src, buf, chunk, nonblock ? MSG_DONTWAIT : 0);
		if (n == -1 && errno == EAGAIN) {
			/* tcp_bpf's recvmsg says so, even on a blocking socket,
			 * when its verdict could not take TCP's queue yet. */
			struct pollfd pf = {.fd = src, .events = POLLIN};
			if (poll(&pf, 1, 100) == -1)
				perror("sockmap_pass_check: poll");
			continue;
		}
		if (n <= 0) {
			if (n == -1)
				perror("sockmap_pass_check: recv");
			break;
		}
		if (relay) {
			if (stream == UINT64_MAX) {
				/* The verdict redirects in order, so once a passed
				 * byte is here it has redirected all it ever will:
				 * wait until the peer has it, then forward. */
				r->paused_at = stream = wait_far_end(sm, &pair, &d);
			}
			e = forward(peer, buf, (size_t)n);
			if (e) {
				fprintf(stderr, "sockmap_pass_check: forward: %s\n", strerror(-e));
				break;
			}
			r->received += (uint64_t)n;
			continue;
		}
		if (stream == UINT64_MAX) {
			/* The first passed byte: where the verdict stopped
			 * redirecting. */
			stream = stream_offset_of(buf, (size_t)n, bytes);
			r->paused_at = stream;
			if (stream == UINT64_MAX) {
				r->unreadable = true;
				stream = 0;
			}
		}
		check_chunk(r, buf, (size_t)n, &stream, bytes);
		r->received += (uint64_t)n;
		if (nap_us)
			usleep(nap_us);
	}
	pthread_join(th, NULL);
	/* Everything redirected must reach the far end before the FIN, which
	 * would drop what the peer's queue still holds. */
	wait_far_end(sm, &pair, &d);
	shutdown(peer, SHUT_WR);
	pthread_join(drainer, NULL);
	r->redirected = d.bytes;
	if (relay) {
		/* The far side's view of the whole stream is the result;
		 * "redirected" is the verdict's own count at the end, which
		 * must still be where the pause stopped it. */
		uint64_t paused_at = r->paused_at, into = 0;
		*r = d.result;
		r->paused_at = paused_at;
		r->redirected = kg_sockmap_redirected(sm, &pair, KG_SM_BACKEND, &into, NULL) == 0
					? into
					: UINT64_MAX;
		r->received -= paused_at;
	}
	ret = 0;
	kg_sockmap_remove_pair(sm, &pair);
out:
	close(go[0]);
	close(go[1]);
	close(sender_fd);
	close(src);
	close(peer);
	close(peer_far);
	return ret;
}

int main(int argc, char **argv)
{
	uint64_t mib = 1024, pause_mib = 0;
	int runs = 10, rcvbuf_mib = 16, opt;
	size_t chunk = CHUNK;
	unsigned nap_us = 0;
	bool nonblock = false, relay = false;
	char err[256];

	while ((opt = getopt(argc, argv, "b:n:r:p:c:s:iR")) != -1) {
		switch (opt) {
		case 'b':
			mib = strtoull(optarg, NULL, 10);
			break;
		case 'n':
			runs = atoi(optarg);
			break;
		case 'r':
			rcvbuf_mib = atoi(optarg);
			break;
		case 'p':
			pause_mib = strtoull(optarg, NULL, 10);
			break;
		case 'c':
			chunk = strtoul(optarg, NULL, 10);
			break;
		case 's':
			nap_us = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'i':
			nonblock = true;
			break;
		case 'R':
			relay = true;
			break;
		default:
			fprintf(stderr, "usage: sockmap_pass_check [-b MiB] [-n runs] [-r MiB] "
					"[-p MiB] [-c bytes] [-s µs] [-i] [-R]\n");
			return 2;
		}
	}
	if (mib == 0 || runs <= 0 || rcvbuf_mib <= 0 || rcvbuf_mib > 1024 || pause_mib >= mib ||
	    chunk == 0 || chunk > CHUNK) {
		fprintf(stderr,
			"sockmap_pass_check: -b, -n, -r and -c must be positive, -r at most "
			"1024, -c at most %d, -p below -b\n",
			CHUNK);
		return 2;
	}
	kg_log_level = KG_LOG_WARN;
	struct kg_sockmap *sm = kg_sockmap_open(1, err, sizeof(err));
	if (!sm) {
		fprintf(stderr, "sockmap_pass_check: %s\n", err);
		return 2;
	}
	uint64_t bytes = mib << 20;
	int exact = 0, failed = 0;
	uint64_t dup_total = 0, lost_total = 0;
	unsigned dups = 0, losses = 0;
	for (int i = 1; i <= runs; i++) {
		struct run_result r;
		if (one_run(sm, bytes, pause_mib << 20, rcvbuf_mib << 20, chunk, nap_us, nonblock,
			    relay, &r) != 0) {
			failed++;
			continue;
		}
		bool ok = r.paused_at + r.received == bytes && r.redirected == r.paused_at &&
			  r.dups == 0 && r.losses == 0 && !r.unreadable;
		exact += ok;
		dups += r.dups;
		losses += r.losses;
		dup_total += r.dup_bytes;
		lost_total += r.lost_bytes;
		if (!ok)
			printf("run %d: received %llu of %llu bytes; %u duplicated (%llu bytes), "
			       "%u lost (%llu bytes)%s; first at byte %llu, %llu bytes; "
			       "paused at stream byte %llu, redirected %llu\n",
			       i, (unsigned long long)r.received, (unsigned long long)bytes, r.dups,
			       (unsigned long long)r.dup_bytes, r.losses,
			       (unsigned long long)r.lost_bytes,
			       r.unreadable ? ", then bytes that are no part of the stream" : "",
			       (unsigned long long)r.first_at, (unsigned long long)r.first_len,
			       (unsigned long long)r.paused_at, (unsigned long long)r.redirected);
	}
	kg_sockmap_close(sm);
	printf("sockmap SK_PASS read-back: %d runs of %llu MiB, receive buffer %d MiB: "
	       "%d exact, %d not; %u duplicates (%llu bytes), %u losses (%llu bytes), "
	       "%d runs could not start\n",
	       runs, (unsigned long long)mib, rcvbuf_mib, exact, runs - exact - failed, dups,
	       (unsigned long long)dup_total, losses, (unsigned long long)lost_total, failed);
	if (failed)
		return 2;
	return exact == runs ? 0 : 1;
}
