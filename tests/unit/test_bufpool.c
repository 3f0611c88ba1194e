/* The worker's buffer pool: send buffers reused and bounded, receives
 * through the provided-buffer ring (a buffer only once bytes arrived, given
 * back after use, -ENOBUFS once the ring is empty). */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bufpool.h"
#include <kgate/limits.h>

Test(bufpool, send_buffers_are_reused_and_bounded)
{
	struct kg_bufpool p;
	memset(&p, 0, sizeof(p)); /* free list only: no ring needed */
	unsigned char *a = kg_buf_get(&p);
	cr_assert_not_null(a);
	a[KG_POOL_BUF_SIZE - 1] = 1; /* the whole size is usable (ASan checks) */
	kg_buf_put(&p, a);
	cr_assert_eq(kg_buf_get(&p), a, "a returned buffer is lent again");
	kg_buf_put(&p, a);
	kg_buf_put(&p, NULL);
	cr_assert_eq(p.n_free, 1, "NULL is ignored");

	unsigned char *many[KG_BUFPOOL_KEEP + 8];
	for (unsigned i = 0; i < KG_BUFPOOL_KEEP + 8; i++)
		cr_assert_not_null(many[i] = kg_buf_get(&p));
	for (unsigned i = 0; i < KG_BUFPOOL_KEEP + 8; i++)
		kg_buf_put(&p, many[i]);
	cr_assert_eq(p.n_free, KG_BUFPOOL_KEEP, "beyond the cap, buffers are freed");
	for (unsigned i = 0; i < p.n_free; i++)
		free(p.free[i]);
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

	kg_bufpool_prep_recv(io_uring_get_sqe(&ring), sv[0]);
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
	kg_bufpool_prep_recv(io_uring_get_sqe(&ring), sv[0]);
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

/* One datagram per receive, keeping the buffer; the completion's flags. */
static int recv_one(struct io_uring *ring, int fd, uint32_t *flags)
{
	kg_bufpool_prep_recv(io_uring_get_sqe(ring), fd);
	struct io_uring_cqe *cqe = wait_one(ring);
	int res = cqe->res;
	*flags = cqe->flags;
	io_uring_cqe_seen(ring, cqe);
	return res;
}

Test(bufpool, an_empty_ring_gives_enobufs_then_grows_up_to_its_cap)
{
	struct io_uring ring;
	struct kg_bufpool p;
	int sv[2];
	uint32_t held[KG_BUFRING_ENTRIES], flags;
	cr_assert_eq(io_uring_queue_init(8, &ring, 0), 0);
	cr_assert_eq(kg_bufpool_init(&p, &ring), 0);
	cr_assert_eq(p.n_ring_bufs, KG_BUFRING_START, "few buffers at start");
	cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), 0);
	cr_assert_eq(write(sv[1], "x", 1), 1);

	unsigned n = 0;
	for (;;) {
		int res = recv_one(&ring, sv[0], &flags);
		if (res == -ENOBUFS) {
			cr_assert_eq(n, p.n_ring_bufs, "ENOBUFS only once every buffer is held");
			if (kg_bufpool_grow(&p) == 0)
				break;
			continue;
		}
		cr_assert_eq(res, 1, "receive %u: %d", n, res);
		cr_assert_not_null(kg_bufpool_recv_data(&p, flags));
		cr_assert_lt(n, KG_BUFRING_ENTRIES);
		held[n++] = flags;
		cr_assert_eq(write(sv[1], "x", 1), 1);
	}
	cr_assert_eq(n, KG_BUFRING_ENTRIES, "grows to the cap, not beyond");
	cr_assert_gt(p.enobufs, 0);

	kg_bufpool_recycle(&p, held[3]);
	cr_assert_eq(recv_one(&ring, sv[0], &flags), 1, "the returned buffer is used again");
	cr_assert_eq(kg_bufpool_recv_data(&p, flags), kg_bufpool_recv_data(&p, held[3]));

	close(sv[0]);
	close(sv[1]);
	kg_bufpool_destroy(&p, &ring);
	io_uring_queue_exit(&ring);
}
