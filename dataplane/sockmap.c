/* Owner of the loaded sockmap relay program (bpf/sockmap.bpf.c): loads and
 * attaches it once per process, hands out pair slots, and adds, watches and
 * removes relayed socket pairs. The close protocol is in sockmap.h. */
#include "sockmap.h"

#include <errno.h>
#include <limits.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* glibc's struct tcp_info lacks tcpi_bytes_acked */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <kgate/log.h>

#include "kg_sockmap_bpf.skel.h"
#include "libbpf_log.h"

/* tcpi_state values (the kernel's include/net/tcp_states.h; glibc's copy
 * lives in <netinet/tcp.h>, which clashes with <linux/tcp.h>). */
enum {
	KG_TCP_ESTABLISHED = 1,
	KG_TCP_TIME_WAIT = 6,
	KG_TCP_CLOSE = 7,
	KG_TCP_CLOSE_WAIT = 8,
	KG_TCP_LAST_ACK = 9,
	KG_TCP_CLOSING = 11,
};

struct kg_sockmap {
	struct kg_sockmap_bpf *skel;
	int tx_fd, rx_fd, paused_fd, socks_fd, pairs_fd;
	bool attached;
	pthread_mutex_t lock; /* guards free_slots / n_free */
	uint32_t max_pairs;
	uint32_t n_free;
	uint32_t *free_slots;
};

static struct kg_sockmap *open_fail(struct kg_sockmap *sm, char *err, size_t errlen,
				    const char *what, int e)
{
	snprintf(err, errlen, "sockmap: %s: %s", what, strerror(e));
	kg_sockmap_close(sm);
	return NULL;
}

struct kg_sockmap *kg_sockmap_open(uint32_t max_pairs, char *err, size_t errlen)
{
	if (max_pairs == 0)
		max_pairs = KG_SM_DEFAULT_PAIRS;
	if (max_pairs > INT32_MAX / 2)
		return open_fail(NULL, err, errlen, "max_pairs", EINVAL);

	struct kg_sockmap *sm = calloc(1, sizeof(*sm));
	if (!sm)
		return open_fail(NULL, err, errlen, "allocation", ENOMEM);
	sm->tx_fd = sm->rx_fd = sm->paused_fd = sm->socks_fd = sm->pairs_fd = -1;
	/* Initialised first so that kg_sockmap_close can always destroy it. */
	pthread_mutex_init(&sm->lock, NULL);
	sm->max_pairs = max_pairs;
	sm->free_slots = calloc(max_pairs, sizeof(*sm->free_slots));
	if (!sm->free_slots)
		return open_fail(sm, err, errlen, "allocation", ENOMEM);
	/* Lowest slots first: reuse keeps the hash maps' working set small. */
	for (uint32_t i = 0; i < max_pairs; i++)
		sm->free_slots[i] = max_pairs - 1 - i;
	sm->n_free = max_pairs;

	kg_libbpf_log_init();
	sm->skel = kg_sockmap_bpf__open();
	if (!sm->skel)
		return open_fail(sm, err, errlen, "opening the BPF object", errno);
	int e = -bpf_map__set_max_entries(sm->skel->maps.kg_sm_tx, 2 * max_pairs);
	if (!e)
		e = -bpf_map__set_max_entries(sm->skel->maps.kg_sm_rx, 2 * max_pairs);
	if (!e)
		e = -bpf_map__set_max_entries(sm->skel->maps.kg_sm_paused, 2 * max_pairs);
	if (!e)
		e = -bpf_map__set_max_entries(sm->skel->maps.kg_sm_socks, 2 * max_pairs);
	if (!e)
		e = -bpf_map__set_max_entries(sm->skel->maps.kg_sm_pairs, max_pairs);
	if (e)
		return open_fail(sm, err, errlen, "sizing the maps", e);
	e = -kg_sockmap_bpf__load(sm->skel);
	if (e)
		return open_fail(sm, err, errlen,
				 "loading the verdict program (needs CAP_BPF and a kernel with sockmap)",
				 e);
	sm->tx_fd = bpf_map__fd(sm->skel->maps.kg_sm_tx);
	sm->rx_fd = bpf_map__fd(sm->skel->maps.kg_sm_rx);
	sm->paused_fd = bpf_map__fd(sm->skel->maps.kg_sm_paused);
	sm->socks_fd = bpf_map__fd(sm->skel->maps.kg_sm_socks);
	sm->pairs_fd = bpf_map__fd(sm->skel->maps.kg_sm_pairs);
	if (bpf_prog_attach(bpf_program__fd(sm->skel->progs.kg_sm_verdict), sm->rx_fd,
			    BPF_SK_SKB_STREAM_VERDICT, 0) == -1)
		return open_fail(sm, err, errlen, "attaching the stream verdict", errno);
	sm->attached = true;
	return sm;
}

void kg_sockmap_close(struct kg_sockmap *sm)
{
	if (!sm)
		return;
	/* Destroying the skeleton frees the sockhash, which unlinks every socket
	 * still in it; detaching first just makes the order explicit. */
	if (sm->attached &&
	    bpf_prog_detach2(bpf_program__fd(sm->skel->progs.kg_sm_verdict), sm->rx_fd,
			     BPF_SK_SKB_STREAM_VERDICT) == -1)
		log_warn("sockmap.detach_failed", KV_ERRNO(errno));
	kg_sockmap_bpf__destroy(sm->skel);
	pthread_mutex_destroy(&sm->lock);
	free(sm->free_slots);
	free(sm);
}

static int slot_get(struct kg_sockmap *sm, uint32_t *slot)
{
	int ret = -ENOSPC;

	pthread_mutex_lock(&sm->lock);
	if (sm->n_free > 0) {
		*slot = sm->free_slots[--sm->n_free];
		ret = 0;
	}
	pthread_mutex_unlock(&sm->lock);
	return ret;
}

static void slot_put(struct kg_sockmap *sm, uint32_t slot)
{
	pthread_mutex_lock(&sm->lock);
	sm->free_slots[sm->n_free++] = slot;
	pthread_mutex_unlock(&sm->lock);
}

static int sock_cookie(int fd, uint64_t *cookie)
{
	socklen_t len = sizeof(*cookie);

	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, cookie, &len) == -1)
		return -errno;
	return 0;
}

/* Bytes the application side has handed to fd's TCP so far: acknowledged
 * plus still in the send queue. The two come from separate calls, so the
 * pair is re-read until bytes_acked did not move in between, which makes
 * the sum exact even while acks arrive. */
static int sock_written(int fd, uint64_t *written)
{
	for (int tries = 0; tries < 100; tries++) {
		struct tcp_info a, b;
		socklen_t la = sizeof(a), lb = sizeof(b);
		int outq;

		if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &a, &la) == -1)
			return -errno;
		if (ioctl(fd, SIOCOUTQ, &outq) == -1)
			return -errno;
		if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &b, &lb) == -1)
			return -errno;
		if (a.tcpi_bytes_acked == b.tcpi_bytes_acked) {
			*written = a.tcpi_bytes_acked + (uint64_t)outq;
			return 0;
		}
	}
	return -EAGAIN;
}

/* Data bytes fd's TCP has received so far (tcpi_bytes_received counts a
 * received FIN as one byte; it is taken out), and its state. */
static int sock_received(int fd, uint64_t *received, uint8_t *state)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1)
		return -errno;
	*received = ti.tcpi_bytes_received;
	*state = ti.tcpi_state;
	switch (ti.tcpi_state) {
	case KG_TCP_CLOSE_WAIT:
	case KG_TCP_LAST_ACK:
	case KG_TCP_CLOSING:
	case KG_TCP_TIME_WAIT:
	case KG_TCP_CLOSE: /* FIN in FIN_WAIT2 (the timewait is split off),
			    * or a reset, where the count no longer matters */
		if (*received > 0)
			(*received)--;
		break;
	default:
		break;
	}
	return 0;
}

static int set_int(int fd, int level, int opt, int val)
{
	if (setsockopt(fd, level, opt, &val, sizeof(val)) == -1)
		return -errno;
	return 0;
}

static int map_delete(int map_fd, const void *key)
{
	if (bpf_map_delete_elem(map_fd, key) == -1 && errno != ENOENT)
		return -errno;
	return 0;
}

static uint32_t sock_key(const struct kg_sockmap_pair *pair, int side)
{
	return pair->slot * 2 + (uint32_t)side;
}

static int map_add_sock(int map_fd, const struct kg_sockmap_pair *pair, int side)
{
	uint32_t key = sock_key(pair, side);
	uint64_t fd = (uint64_t)pair->fd[side];

	if (bpf_map_update_elem(map_fd, &key, &fd, BPF_NOEXIST) == -1)
		return -errno;
	return 0;
}

/* Sets the verdict's pause flag for one socket. The array entry is written
 * in place; from the next skb on, the verdict passes that socket's bytes
 * to its own receive queue instead of redirecting them. */
static int set_paused(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair, int side,
		      uint32_t paused)
{
	uint32_t key = sock_key(pair, side);

	if (bpf_map_update_elem(sm->paused_fd, &key, &paused, BPF_ANY) == -1)
		return -errno;
	return 0;
}

/* A source that is (back) in kg_sm_rx relays only what arrives from now
 * on: the kernel does not look at data already queued when a socket is
 * added. Setting SO_RCVLOWAT makes TCP call data_ready once (see
 * tcp_set_rcvlowat), which runs the verdict over the queued bytes. */
static int kick(int fd)
{
	return set_int(fd, SOL_SOCKET, SO_RCVLOWAT, 1);
}

int kg_sockmap_remove_pair(struct kg_sockmap *sm, struct kg_sockmap_pair *pair)
{
	int ret = 0;

	/* Sources first, so no verdict runs against a slot whose bookkeeping
	 * is already gone. */
	for (int side = 0; side < 2; side++) {
		uint32_t key = sock_key(pair, side);
		int e = map_delete(sm->rx_fd, &key);
		if (!e)
			e = map_delete(sm->tx_fd, &key);
		if (!e)
			e = map_delete(sm->socks_fd, &pair->cookie[side]);
		if (e && !ret)
			ret = e;
	}
	int e = map_delete(sm->pairs_fd, &pair->slot);
	if (e && !ret)
		ret = e;
	slot_put(sm, pair->slot);
	return ret;
}

int kg_sockmap_add_pair(struct kg_sockmap *sm, struct kg_sockmap_pair *pair,
			int client_fd, int backend_fd)
{
	int e;

	memset(pair, 0, sizeof(*pair));
	pair->fd[KG_SM_CLIENT] = client_fd;
	pair->fd[KG_SM_BACKEND] = backend_fd;
	for (int side = 0; side < 2; side++) {
		uint64_t received = 0;
		uint8_t state = 0;
		int inq = 0;

		e = sock_cookie(pair->fd[side], &pair->cookie[side]);
		if (!e)
			e = sock_written(pair->fd[side], &pair->base[side]);
		/* Not in a sockmap yet, so SIOCINQ is still TCP's own count
		 * (once it is, tcp_bpf answers with the psock queue only). */
		if (!e && ioctl(pair->fd[side], SIOCINQ, &inq) == -1)
			e = -errno;
		if (!e)
			e = sock_received(pair->fd[side], &received, &state);
		/* Older kernels refuse a socket past ESTABLISHED (EOPNOTSUPP);
		 * 6.18 takes it but then never runs the verdict on it, so its
		 * bytes would sit there. Refuse it the same way everywhere. */
		if (!e && state != KG_TCP_ESTABLISHED)
			e = -EOPNOTSUPP;
		if (!e)
			pair->base_rx[side] = received - (uint64_t)inq;
		/* A fixed receive buffer (no autotuning up to tcp_rmem[2]) is what
		 * bounds a paused source. */
		if (!e)
			e = set_int(pair->fd[side], SOL_SOCKET, SO_RCVBUF, KG_SM_RCVBUF);
		if (e)
			return e;
	}
	e = slot_get(sm, &pair->slot);
	if (e)
		return e;

	struct kg_sm_pair zero = {0};
	if (bpf_map_update_elem(sm->pairs_fd, &pair->slot, &zero, BPF_NOEXIST) == -1) {
		e = -errno;
		goto out_remove;
	}
	/* The slot may have been paused for an earlier pair. */
	for (int side = 0; side < 2; side++) {
		e = set_paused(sm, pair, side, 0);
		if (e)
			goto out_remove;
	}
	for (uint32_t side = 0; side < 2; side++) {
		struct kg_sm_sock s = {.slot = pair->slot, .side = side};
		if (bpf_map_update_elem(sm->socks_fd, &pair->cookie[side], &s, BPF_NOEXIST) == -1) {
			e = -errno;
			goto out_remove;
		}
	}
	/* Both become redirect targets before either becomes a source, so the
	 * first verdict always finds its peer. */
	for (int side = 0; side < 2; side++) {
		e = map_add_sock(sm->tx_fd, pair, side);
		if (e)
			goto out_remove;
	}
	for (int side = 0; side < 2; side++) {
		e = map_add_sock(sm->rx_fd, pair, side);
		if (!e)
			e = kick(pair->fd[side]);
		if (e)
			goto out_remove;
	}
	/* A FIN can land between the state check above and the insert. Such a
	 * socket is accepted, but the kernel neither runs the verdict on it nor
	 * delivers redirects into it (they are counted as dropped), so the pair
	 * would hang or lose bytes. Checked again now that both are in: if
	 * either side left ESTABLISHED, both directions are paused and finish
	 * in tail mode (userspace copies, after what the verdict did redirect
	 * reached its peer). The pause flags go first, so a verdict still
	 * running keeps its skb; only a side that got its FIN (nothing more
	 * arrives on it) then leaves kg_sm_rx, so that plain TCP reads its
	 * queue. Bytes already dropped cannot be had back: -EIO. */
	uint8_t states[2] = {0, 0};
	for (int side = 0; side < 2; side++) {
		uint64_t received = 0;
		e = sock_received(pair->fd[side], &received, &states[side]);
		if (e)
			goto out_remove;
	}
	if (states[0] != KG_TCP_ESTABLISHED || states[1] != KG_TCP_ESTABLISHED) {
		for (int side = 0; side < 2; side++) {
			e = set_paused(sm, pair, side, 1);
			if (e)
				goto out_remove;
			pair->paused[side] = pair->tail[side] = true;
		}
		for (int side = 0; side < 2; side++) {
			uint32_t key = sock_key(pair, side);
			if (states[side] != KG_TCP_ESTABLISHED) {
				e = map_delete(sm->rx_fd, &key);
				if (e)
					goto out_remove;
			}
		}
		for (int side = 0; side < 2; side++) {
			uint64_t into = 0, dropped = 0;
			e = kg_sockmap_redirected(sm, pair, side, &into, &dropped);
			if (!e && dropped > 0)
				e = -EIO;
			if (e)
				goto out_remove;
		}
	}
	return 0;

out_remove:
	kg_sockmap_remove_pair(sm, pair);
	return e;
}

int kg_sockmap_redirected(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair,
			  int side, uint64_t *into, uint64_t *dropped)
{
	struct kg_sm_pair counts;

	if (side != KG_SM_CLIENT && side != KG_SM_BACKEND)
		return -EINVAL;
	if (bpf_map_lookup_elem(sm->pairs_fd, &pair->slot, &counts) == -1)
		return -errno;
	*into = counts.into[side];
	if (dropped)
		*dropped = counts.dropped[side];
	return 0;
}

/* Bytes the kernel redirected into `dst` (and, in tail mode, bytes
 * userspace copied into it) that have not reached dst's TCP yet: they wait
 * in the psock queue in front of it. */
static int pending_into(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair,
			int dst, uint64_t *pending)
{
	uint64_t into = 0, written = 0;
	int e = kg_sockmap_redirected(sm, pair, dst, &into, NULL);

	if (!e)
		e = sock_written(pair->fd[dst], &written);
	if (e)
		return e;
	uint64_t target = pair->base[dst] + into + pair->tail_bytes[dst];
	*pending = target > written ? target - written : 0;
	return 0;
}

/* Data bytes src's TCP has received that nobody has moved to the other
 * side yet (neither the verdict nor userspace). SIOCINQ cannot tell: on a
 * socket in a sockmap it counts only the psock's queue, not TCP's. */
static int src_queued(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair, int src,
		      uint64_t *queued)
{
	uint64_t into = 0, received = 0;
	uint8_t state = 0;
	int dst = src ^ 1;

	int e = sock_received(pair->fd[src], &received, &state);
	if (!e)
		e = kg_sockmap_redirected(sm, pair, dst, &into, NULL);
	if (e)
		return e;
	uint64_t moved = pair->base_rx[src] + into + pair->tail_bytes[dst];
	*queued = received > moved ? received - moved : 0;
	return 0;
}

int kg_sockmap_flushed(struct kg_sockmap *sm, const struct kg_sockmap_pair *pair,
		       int side)
{
	uint64_t queued = 0, pending = 0;

	if (side != KG_SM_CLIENT && side != KG_SM_BACKEND)
		return -EINVAL;
	int e = src_queued(sm, pair, side ^ 1, &queued);
	if (!e && queued == 0)
		e = pending_into(sm, pair, side, &pending);
	if (e)
		return e;
	return queued == 0 && pending == 0;
}

/* Moves up to min(max, KG_SM_TAIL_CHUNK) bytes queued on src (out of kg_sm_rx) to
 * the other side with recv/send, once everything the kernel redirected
 * there has reached its TCP (order). Returns bytes moved, 0 at EOF,
 * -ENODATA when src has nothing queued, -EAGAIN when the other side cannot
 * take bytes yet. */
static ssize_t move_chunk(struct kg_sockmap *sm, struct kg_sockmap_pair *pair, int src,
			  size_t max)
{
	int dst = src ^ 1;
	uint64_t pending = 0;
	char buf[KG_SM_TAIL_CHUNK];

	int e = pending_into(sm, pair, dst, &pending);
	if (e)
		return e;
	if (pending)
		return -EAGAIN;
	/* Peek, send what dst takes, then consume exactly that much: no byte
	 * has to be held in userspace between calls. */
	ssize_t n = recv(pair->fd[src], buf, max < sizeof(buf) ? max : sizeof(buf),
			 MSG_PEEK | MSG_DONTWAIT);
	if (n == -1)
		return errno == EAGAIN ? -ENODATA : -errno;
	if (n == 0) {
		/* recv on a socket in a sockmap reads the psock's queue; it says
		 * EOF once that is empty and the FIN is in, even while skbs the
		 * verdict passed still wait in the psock's backlog behind bytes
		 * redirected into this socket. EOF counts only when every data
		 * byte src's TCP received has been moved. */
		uint64_t queued = 0;
		e = src_queued(sm, pair, src, &queued);
		if (e)
			return e;
		return queued ? -ENODATA : 0;
	}
	ssize_t w = send(pair->fd[dst], buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (w == -1)
		return -errno;
	ssize_t r = recv(pair->fd[src], buf, (size_t)w, MSG_DONTWAIT);
	if (r == -1)
		return -errno;
	if (r != w)
		return -EIO; /* peeked bytes vanished: nobody else may read src */
	pair->tail_bytes[dst] += (uint64_t)w;
	return w;
}

int kg_sockmap_pause(struct kg_sockmap *sm, struct kg_sockmap_pair *pair, int src)
{
	if (src != KG_SM_CLIENT && src != KG_SM_BACKEND)
		return -EINVAL;
	int e = set_paused(sm, pair, src, 1);
	if (e)
		return e;
	pair->paused[src] = true;
	pair->tail[src] = true;
	return 0;
}

int kg_sockmap_pace(struct kg_sockmap *sm, struct kg_sockmap_pair *pair)
{
	for (int dst = 0; dst < 2; dst++) {
		int src = dst ^ 1;
		uint64_t pending = 0;

		if (pair->tail[src])
			continue;
		int e = pending_into(sm, pair, dst, &pending);
		if (e)
			return e;
		if (pending <= KG_SM_PAUSE_BYTES)
			continue;
		/* dst's reader fell behind: from now on the verdict passes src's
		 * bytes to src's own receive queue (charged to its fixed
		 * SO_RCVBUF, so TCP stops the sender) and kg_sockmap_copy_tail
		 * moves the rest of this direction, only while dst has room. src
		 * stays in kg_sm_rx: taking it out drops an skb the kernel may
		 * already have dequeued for the verdict (1 in 12 64 MiB echoes
		 * lost 64 KiB that way). Never resumed: handing src back to the
		 * verdict lost whole skbs at the end of 2 GiB transfers on 6.18
		 * (bench/results, 05:26). */
		e = kg_sockmap_pause(sm, pair, src);
		if (e)
			return e;
	}
	/* What the kernel cannot bound: a peer that reads nothing of what was
	 * redirected to it, yet keeps sending. A passed skb is charged to its
	 * socket's receive buffer only if it reaches the socket's queue at
	 * once; while bytes redirected *into* that socket wait in its psock,
	 * the kernel queues the passed skb behind them, uncharged, so the
	 * sender's TCP window never closes. A peer that still reads drains those and its
	 * passed bytes become charged, so the pair is given up only when src
	 * holds more than KG_SM_HOLD_BYTES while the bytes waiting for src's
	 * peer have not shrunk for KG_SM_STUCK_ROUNDS pace calls, or holds
	 * KG_SM_HOLD_MAX_BYTES whatever the peer does. */
	for (int src = 0; src < 2; src++) {
		uint64_t queued = 0, waiting = 0;

		if (!pair->tail[src])
			continue;
		int e = src_queued(sm, pair, src, &queued);
		if (!e)
			e = pending_into(sm, pair, src, &waiting);
		if (e)
			return e;
		if (waiting == 0 || waiting < pair->waiting[src])
			pair->stuck[src] = 0;
		else if (pair->stuck[src] < UINT8_MAX)
			pair->stuck[src]++;
		pair->waiting[src] = waiting;
		if (queued > KG_SM_HOLD_MAX_BYTES ||
		    (queued > KG_SM_HOLD_BYTES && pair->stuck[src] >= KG_SM_STUCK_ROUNDS))
			return -ENOBUFS;
	}
	return 0;
}

ssize_t kg_sockmap_copy_tail(struct kg_sockmap *sm, struct kg_sockmap_pair *pair, int src)
{
	if ((src != KG_SM_CLIENT && src != KG_SM_BACKEND) || !pair->tail[src])
		return -EINVAL;
	ssize_t n = move_chunk(sm, pair, src, KG_SM_TAIL_CHUNK);
	return n == -ENODATA ? -EAGAIN : n;
}

static int count_keys(int map_fd, size_t key_size, uint32_t *n)
{
	unsigned char key[8], next[8];
	void *prev = NULL;

	*n = 0;
	while (bpf_map_get_next_key(map_fd, prev, next) == 0) {
		(*n)++;
		memcpy(key, next, key_size);
		prev = key;
	}
	return errno == ENOENT ? 0 : -errno;
}

int kg_sockmap_usage(struct kg_sockmap *sm, struct kg_sockmap_usage *u)
{
	int e = count_keys(sm->tx_fd, sizeof(uint32_t), &u->socks);
	if (!e)
		e = count_keys(sm->rx_fd, sizeof(uint32_t), &u->sources);
	if (!e)
		e = count_keys(sm->socks_fd, sizeof(uint64_t), &u->cookies);
	if (!e)
		e = count_keys(sm->pairs_fd, sizeof(uint32_t), &u->pairs);
	pthread_mutex_lock(&sm->lock);
	u->slots_used = sm->max_pairs - sm->n_free;
	pthread_mutex_unlock(&sm->lock);
	return e;
}
