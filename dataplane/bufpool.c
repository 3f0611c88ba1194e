/* Per-worker buffers: the provided-buffer rings for receives and the free
 * lists for sends (see bufpool.h). Only the worker's thread touches them. */
#include "bufpool.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <kgate/limits.h>

/* Hands buffer i of r to the kernel. */
static void ring_add(struct kg_bufring *r, unsigned i)
{
	io_uring_buf_ring_add(r->br, r->bufs[i], r->size, (unsigned short)(r->base + i),
			      io_uring_buf_ring_mask(r->entries), 0);
	io_uring_buf_ring_advance(r->br, 1);
}

/* Up to count more buffers for r, within its cap. */
static unsigned ring_grow(struct kg_bufring *r, unsigned count)
{
	unsigned added = 0;
	while (added < count && r->n_bufs < r->entries) {
		unsigned char *b = malloc(r->size);
		if (!b)
			break;
		r->bufs[r->n_bufs] = b;
		ring_add(r, r->n_bufs++);
		added++;
	}
	return added;
}

unsigned kg_bufpool_grow(struct kg_bufpool *p, enum kg_ring r)
{
	p->enobufs++;
	return ring_grow(&p->rings[r], p->rings[r].step);
}

/* Registers ring r (its buffer group id is r) with its first buffers. */
static int ring_init(struct kg_bufring *r, struct io_uring *ring, enum kg_ring which)
{
	r->br_bytes = r->entries * sizeof(struct io_uring_buf);
	/* The ring's entries are read by the kernel: page-aligned memory. */
	void *mem = mmap(NULL, r->br_bytes, PROT_READ | PROT_WRITE,
			 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	io_uring_buf_ring_init(mem);
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)mem;
	reg.ring_entries = r->entries;
	reg.bgid = (uint16_t)which;
	int ret = io_uring_register_buf_ring(ring, &reg, 0);
	if (ret < 0) {
		munmap(mem, r->br_bytes);
		return ret;
	}
	r->br = mem;
	return 0;
}

static void ring_destroy(struct kg_bufring *r, struct io_uring *ring, enum kg_ring which)
{
	if (r->br) {
		io_uring_unregister_buf_ring(ring, (int)which);
		munmap(r->br, r->br_bytes);
	}
	for (unsigned i = 0; i < r->n_bufs; i++)
		free(r->bufs[i]);
}

int kg_bufpool_init(struct kg_bufpool *p, struct io_uring *ring)
{
	static const struct {
		unsigned entries, start, step, size;
	} shape[KG_RING_COUNT] = {
		[KG_RING_RECORD] = {KG_BUFRING_ENTRIES, KG_BUFRING_START, KG_BUFRING_STEP,
				    KG_IO_BUF_SIZE},
		[KG_RING_BATCH] = {KG_BATCH_RING_ENTRIES, KG_BATCH_RING_START, KG_BATCH_RING_STEP,
				   KG_BATCH_BYTES},
	};
	memset(p, 0, sizeof(*p));
	unsigned base = 0;
	for (int i = 0; i < KG_RING_COUNT; i++) {
		struct kg_bufring *r = &p->rings[i];
		r->entries = shape[i].entries;
		r->step = shape[i].step;
		r->size = shape[i].size;
		r->base = base;
		base += r->entries;
		int ret = ring_init(r, ring, (enum kg_ring)i);
		if (ret < 0) {
			kg_bufpool_destroy(p, ring);
			return ret;
		}
		/* Few buffers to start: memory follows the receives that
		 * really complete together, not the ring's capacity. */
		if (ring_grow(r, shape[i].start) == 0) {
			kg_bufpool_destroy(p, ring);
			return -ENOMEM;
		}
	}
	return 0;
}

void kg_bufpool_destroy(struct kg_bufpool *p, struct io_uring *ring)
{
	for (int i = 0; i < KG_RING_COUNT; i++)
		ring_destroy(&p->rings[i], ring, (enum kg_ring)i);
	for (unsigned i = 0; i < p->n_free; i++)
		free(p->free[i]);
	for (unsigned i = 0; i < p->n_batch_free; i++)
		free(p->batch_free[i]);
	memset(p, 0, sizeof(*p));
}

void kg_bufpool_prep_recv(struct io_uring_sqe *sqe, int fd, enum kg_ring r)
{
	/* Length 0 = the picked buffer's size. */
	io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = (uint16_t)r;
}

/* The ring and index a completion's buffer belongs to; false without one. */
static bool find_buffer(const struct kg_bufpool *p, uint32_t cqe_flags, enum kg_ring *which,
			unsigned *idx)
{
	if (!(cqe_flags & IORING_CQE_F_BUFFER))
		return false;
	unsigned bid = cqe_flags >> IORING_CQE_BUFFER_SHIFT;
	for (int i = 0; i < KG_RING_COUNT; i++) {
		const struct kg_bufring *r = &p->rings[i];
		if (bid >= r->base && bid < r->base + r->n_bufs) {
			*which = (enum kg_ring)i;
			*idx = bid - r->base;
			return true;
		}
	}
	return false;
}

const unsigned char *kg_bufpool_recv_data(const struct kg_bufpool *p, uint32_t cqe_flags)
{
	enum kg_ring r;
	unsigned i;
	return find_buffer(p, cqe_flags, &r, &i) ? p->rings[r].bufs[i] : NULL;
}

void kg_bufpool_recycle(struct kg_bufpool *p, uint32_t cqe_flags)
{
	enum kg_ring r;
	unsigned i;
	if (find_buffer(p, cqe_flags, &r, &i))
		ring_add(&p->rings[r], i);
}

/* A free list of one size: reuse what is there, else allocate. */
static unsigned char *list_get(unsigned char **list, unsigned *n, size_t size)
{
	if (*n > 0)
		return list[--*n];
	return malloc(size);
}

static void list_put(unsigned char **list, unsigned *n, unsigned keep, unsigned char *buf)
{
	if (!buf)
		return;
	/* Beyond a few, freed for real: a burst must not pin its peak. */
	if (*n < keep)
		list[(*n)++] = buf;
	else
		free(buf);
}

unsigned char *kg_buf_get(struct kg_bufpool *p)
{
	return list_get(p->free, &p->n_free, KG_POOL_BUF_SIZE);
}

void kg_buf_put(struct kg_bufpool *p, unsigned char *buf)
{
	list_put(p->free, &p->n_free, KG_BUFPOOL_KEEP, buf);
}

unsigned char *kg_batch_get(struct kg_bufpool *p)
{
	return list_get(p->batch_free, &p->n_batch_free, KG_BATCH_BUF_SIZE);
}

void kg_batch_put(struct kg_bufpool *p, unsigned char *buf)
{
	list_put(p->batch_free, &p->n_batch_free, KG_BATCH_KEEP, buf);
}
