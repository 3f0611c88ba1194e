/* Per-worker buffers: the provided-buffer ring for receives and the free
 * list for sends (see bufpool.h). Only the worker's thread touches them. */
#include "bufpool.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <kgate/limits.h>

/* Hands buffer bid to the kernel. */
static void ring_add(struct kg_bufpool *p, unsigned bid)
{
	io_uring_buf_ring_add(p->br, p->ring_bufs[bid], KG_IO_BUF_SIZE, (unsigned short)bid,
			      io_uring_buf_ring_mask(KG_BUFRING_ENTRIES), 0);
	io_uring_buf_ring_advance(p->br, 1);
}

unsigned kg_bufpool_grow(struct kg_bufpool *p)
{
	unsigned added = 0;
	p->enobufs++;
	while (added < KG_BUFRING_STEP && p->n_ring_bufs < KG_BUFRING_ENTRIES) {
		unsigned char *b = malloc(KG_IO_BUF_SIZE);
		if (!b)
			break;
		p->ring_bufs[p->n_ring_bufs] = b;
		ring_add(p, p->n_ring_bufs++);
		added++;
	}
	return added;
}

int kg_bufpool_init(struct kg_bufpool *p, struct io_uring *ring)
{
	memset(p, 0, sizeof(*p));
	p->br_bytes = KG_BUFRING_ENTRIES * sizeof(struct io_uring_buf);
	/* The ring's entries are read by the kernel: page-aligned memory. */
	void *mem = mmap(NULL, p->br_bytes, PROT_READ | PROT_WRITE,
			 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	p->br = mem;
	io_uring_buf_ring_init(p->br);
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)mem;
	reg.ring_entries = KG_BUFRING_ENTRIES;
	reg.bgid = KG_BUFRING_GROUP;
	int ret = io_uring_register_buf_ring(ring, &reg, 0);
	if (ret < 0) {
		munmap(mem, p->br_bytes);
		memset(p, 0, sizeof(*p));
		return ret;
	}
	/* Few buffers to start: memory follows the receives that really
	 * complete together, not the ring's capacity. */
	kg_bufpool_grow(p);
	p->enobufs = 0;
	if (p->n_ring_bufs == 0) {
		kg_bufpool_destroy(p, ring);
		return -ENOMEM;
	}
	return 0;
}

void kg_bufpool_destroy(struct kg_bufpool *p, struct io_uring *ring)
{
	if (p->br) {
		io_uring_unregister_buf_ring(ring, KG_BUFRING_GROUP);
		munmap(p->br, p->br_bytes);
	}
	for (unsigned i = 0; i < p->n_ring_bufs; i++)
		free(p->ring_bufs[i]);
	for (unsigned i = 0; i < p->n_free; i++)
		free(p->free[i]);
	memset(p, 0, sizeof(*p));
}

void kg_bufpool_prep_recv(struct io_uring_sqe *sqe, int fd)
{
	/* Length 0 = the picked buffer's size (KG_IO_BUF_SIZE). */
	io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = KG_BUFRING_GROUP;
}

static bool has_buffer(const struct kg_bufpool *p, uint32_t cqe_flags)
{
	return (cqe_flags & IORING_CQE_F_BUFFER) &&
	       (cqe_flags >> IORING_CQE_BUFFER_SHIFT) < p->n_ring_bufs;
}

const unsigned char *kg_bufpool_recv_data(const struct kg_bufpool *p, uint32_t cqe_flags)
{
	return has_buffer(p, cqe_flags) ? p->ring_bufs[cqe_flags >> IORING_CQE_BUFFER_SHIFT] : NULL;
}

void kg_bufpool_recycle(struct kg_bufpool *p, uint32_t cqe_flags)
{
	if (has_buffer(p, cqe_flags))
		ring_add(p, cqe_flags >> IORING_CQE_BUFFER_SHIFT);
}

unsigned char *kg_buf_get(struct kg_bufpool *p)
{
	if (p->n_free > 0)
		return p->free[--p->n_free];
	return malloc(KG_POOL_BUF_SIZE);
}

void kg_buf_put(struct kg_bufpool *p, unsigned char *buf)
{
	if (!buf)
		return;
	/* Beyond a few, freed for real: a burst must not pin its peak. */
	if (p->n_free < KG_BUFPOOL_KEEP)
		p->free[p->n_free++] = buf;
	else
		free(buf);
}
