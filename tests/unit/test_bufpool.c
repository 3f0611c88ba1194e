/* The worker's buffer pool: send buffers reused and bounded, receives
 * through the provided-buffer ring (a buffer only once bytes arrived, given
 * back after use, -ENOBUFS once the ring is empty). */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bufpool.h"
#include <kgate/limits.h>

/* One size class of send buffers: lent again after a put, the whole size
 * usable, at most keep kept free (the rest freed). */
static void check_free_list(struct kg_bufpool *p, unsigned char *(*get)(struct kg_bufpool *),
			    void (*put)(struct kg_bufpool *, unsigned char *), size_t size,
			    unsigned keep, unsigned *n_free, unsigned char **list)
{
	unsigned char *a = get(p);
	cr_assert_not_null(a);
	a[size - 1] = 1; /* the whole size is usable (ASan checks) */
	put(p, a);
	cr_assert_eq(get(p), a, "a returned buffer is lent again");
	put(p, a);
	put(p, NULL);
	cr_assert_eq(*n_free, 1, "NULL is ignored");

	unsigned char *many[KG_BUFPOOL_KEEP + 8];
	for (unsigned i = 0; i < keep + 8; i++)
		cr_assert_not_null(many[i] = get(p));
	for (unsigned i = 0; i < keep + 8; i++)
		put(p, many[i]);
	cr_assert_eq(*n_free, keep, "beyond the cap, buffers are freed");
	for (unsigned i = 0; i < *n_free; i++)
		free(list[i]);
	*n_free = 0;
}

Test(bufpool, send_buffers_are_reused_and_bounded)
{
	struct kg_bufpool p;
	memset(&p, 0, sizeof(p)); /* free lists only: no ring needed */
	check_free_list(&p, kg_buf_get, kg_buf_put, KG_POOL_BUF_SIZE, KG_BUFPOOL_KEEP, &p.n_free,
			p.free);
	check_free_list(&p, kg_batch_get, kg_batch_put, KG_BATCH_BUF_SIZE, KG_BATCH_KEEP,
			&p.n_batch_free, p.batch_free);
	cr_assert_geq(KG_BATCH_BUF_SIZE - KG_BATCH_BYTES, 4 * 256,
		      "a batch buffer holds a batch's four records with their overhead");
}

static struct io_uring_cqe *wait_one(struct io_uring *ring)
{
	struct io_uring_cqe *cqe = NULL;
	cr_assert_eq(io_uring_submit_and_wait(ring, 1) >= 0, true);
	cr_assert_eq(io_uring_peek_cqe(ring, &cqe), 0);
	return cqe;
}

Test(bufpool, receives_take_a_ring_buffer_only_when_bytes_arrive)
{
	struct io_uring ring;
	struct kg_bufpool p;
	int sv[2];
	cr_assert_eq(io_uring_queue_init(8, &ring, 0), 0);
	cr_assert_eq(kg_bufpool_init(&p, &ring), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);

	kg_bufpool_prep_recv(io_uring_get_sqe(&ring), sv[0], KG_RING_RECORD);
	cr_assert_eq(io_uring_submit(&ring), 1);
	struct io_uring_cqe *cqe = NULL;
	cr_assert_eq(io_uring_peek_cqe(&ring, &cqe), -EAGAIN, "no completion before data");

	cr_assert_eq(write(sv[1], "hello", 5), 5);
	cqe = wait_one(&ring);
	cr_assert_eq(cqe->res, 5);
	const unsigned char *data = kg_bufpool_recv_data(&p, cqe->flags);
	cr_assert_not_null(data);
	cr_assert_eq(memcmp(data, "hello", 5), 0);
	kg_bufpool_recycle(&p, cqe->flags);
	io_uring_cqe_seen(&ring, cqe);

	/* EOF carries no buffer. */
	cr_assert_eq(shutdown(sv[1], SHUT_WR), 0);
	kg_bufpool_prep_recv(io_uring_get_sqe(&ring), sv[0], KG_RING_RECORD);
	cqe = wait_one(&ring);
	cr_assert_eq(cqe->res, 0);
	cr_assert_null(kg_bufpool_recv_data(&p, cqe->flags));
	kg_bufpool_recycle(&p, cqe->flags); /* a no-op */
	io_uring_cqe_seen(&ring, cqe);

	close(sv[0]);
	close(sv[1]);
	kg_bufpool_destroy(&p, &ring);
	io_uring_queue_exit(&ring);
}

/* One datagram per receive from ring r, keeping the buffer; the
 * completion's flags. */
static int recv_one(struct io_uring *ring, int fd, enum kg_ring r, uint32_t *flags)
{
	kg_bufpool_prep_recv(io_uring_get_sqe(ring), fd, r);
	struct io_uring_cqe *cqe = wait_one(ring);
	int res = cqe->res;
	*flags = cqe->flags;
	io_uring_cqe_seen(ring, cqe);
	return res;
}

/* Ring r starts with start buffers, gives -ENOBUFS once all are held,
 * grows to entries and no further; a returned buffer is lent again, and
 * the other ring's buffers are never confused with r's. */
static void check_ring_growth(enum kg_ring r, unsigned start, unsigned entries, unsigned size)
{
	struct io_uring ring;
	struct kg_bufpool p;
	int sv[2];
	uint32_t held[KG_BUFRING_ENTRIES], flags;
	cr_assert_eq(io_uring_queue_init(8, &ring, 0), 0);
	cr_assert_eq(kg_bufpool_init(&p, &ring), 0);
	cr_assert_eq(p.rings[r].n_bufs, start, "few buffers at start");
	cr_assert_eq(p.rings[r].size, size);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), 0);
	cr_assert_eq(write(sv[1], "x", 1), 1);

	unsigned n = 0;
	for (;;) {
		int res = recv_one(&ring, sv[0], r, &flags);
		if (res == -ENOBUFS) {
			cr_assert_eq(n, p.rings[r].n_bufs, "ENOBUFS only once every buffer is held");
			if (kg_bufpool_grow(&p, r) == 0)
				break;
			continue;
		}
		cr_assert_eq(res, 1, "receive %u: %d", n, res);
		const unsigned char *data = kg_bufpool_recv_data(&p, flags);
		cr_assert_not_null(data);
		bool found = false;
		for (unsigned i = 0; i < p.rings[r].n_bufs; i++)
			found = found || data == p.rings[r].bufs[i];
		cr_assert(found, "the buffer is one of ring %d's", r);
		cr_assert_lt(n, entries);
		held[n++] = flags;
		cr_assert_eq(write(sv[1], "x", 1), 1);
	}
	cr_assert_eq(n, entries, "grows to the cap, not beyond");
	cr_assert_gt(p.enobufs, 0);

	kg_bufpool_recycle(&p, held[3]);
	cr_assert_eq(recv_one(&ring, sv[0], r, &flags), 1, "the returned buffer is used again");
	cr_assert_eq(kg_bufpool_recv_data(&p, flags), kg_bufpool_recv_data(&p, held[3]));

	close(sv[0]);
	close(sv[1]);
	kg_bufpool_destroy(&p, &ring);
	io_uring_queue_exit(&ring);
}

Test(bufpool, an_empty_ring_gives_enobufs_then_grows_up_to_its_cap)
{
	check_ring_growth(KG_RING_RECORD, KG_BUFRING_START, KG_BUFRING_ENTRIES, KG_IO_BUF_SIZE);
}

Test(bufpool, the_batch_ring_grows_the_same_way_with_64k_buffers)
{
	check_ring_growth(KG_RING_BATCH, KG_BATCH_RING_START, KG_BATCH_RING_ENTRIES,
			  KG_BATCH_BYTES);
}

Test(bufpool, a_batch_receive_takes_up_to_64k_at_once)
{
	struct io_uring ring;
	struct kg_bufpool p;
	int sv[2];
	static unsigned char out[KG_BATCH_BYTES + 100];
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (unsigned char)(i * 7 + 1);
	cr_assert_eq(io_uring_queue_init(8, &ring, 0), 0);
	cr_assert_eq(kg_bufpool_init(&p, &ring), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	int sz = 4 * (int)sizeof(out);
	cr_assert_eq(setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	cr_assert_eq(write(sv[1], out, sizeof(out)), (ssize_t)sizeof(out));

	uint32_t flags;
	size_t got = 0;
	int first = recv_one(&ring, sv[0], KG_RING_BATCH, &flags);
	cr_assert_gt(first, KG_IO_BUF_SIZE, "more than a record in one receive: %d", first);
	cr_assert_leq(first, KG_BATCH_BYTES);
	cr_assert_eq(memcmp(kg_bufpool_recv_data(&p, flags), out, (size_t)first), 0);
	kg_bufpool_recycle(&p, flags);
	got = (size_t)first;
	while (got < sizeof(out)) {
		int res = recv_one(&ring, sv[0], KG_RING_RECORD, &flags);
		cr_assert_gt(res, 0);
		cr_assert_eq(memcmp(kg_bufpool_recv_data(&p, flags), out + got, (size_t)res), 0);
		kg_bufpool_recycle(&p, flags);
		got += (size_t)res;
	}

	close(sv[0]);
	close(sv[1]);
	kg_bufpool_destroy(&p, &ring);
	io_uring_queue_exit(&ring);
}
