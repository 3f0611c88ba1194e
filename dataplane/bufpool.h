/* A worker's I/O buffers, held by a connection only while data is in
 * flight (issue 7: memory per idle connection).
 *
 * Receives take no buffer while they wait: they are submitted with
 * IOSQE_BUFFER_SELECT on an io_uring provided-buffer ring, the kernel picks
 * a buffer when bytes arrive, and the completion handler gives it back once
 * OpenSSL has copied the bytes in. Sends borrow a buffer from a free list
 * while the send is pending and return it when everything was sent. An idle
 * connection therefore holds no buffer of ours. */
#ifndef KGATE_BUFPOOL_H
#define KGATE_BUFPOOL_H

#include <stdint.h>

#include <liburing.h>

#include <kgate/limits.h>

#define KG_BUFRING_GROUP 0      /* the ring's buffer group id */
#define KG_BUFRING_ENTRIES 128  /* at most, per worker: receives completing in one batch */
#define KG_BUFRING_START 16     /* buffers at start; -ENOBUFS adds KG_BUFRING_STEP more */
#define KG_BUFRING_STEP 16
#define KG_BUFPOOL_KEEP 64      /* free send buffers kept for reuse, per worker */
/* A send buffer holds the record of a full KG_IO_BUF_SIZE write (header,
 * tag and padding are at most 256 bytes in TLS 1.3, 29 in TLS 1.2) with
 * room for a small record behind it. */
#define KG_POOL_BUF_SIZE (KG_IO_BUF_SIZE + 1024)

struct kg_bufpool {
	struct io_uring_buf_ring *br; /* shared with the kernel */
	size_t br_bytes;
	unsigned char *ring_bufs[KG_BUFRING_ENTRIES]; /* by buffer id, KG_IO_BUF_SIZE each */
	unsigned n_ring_bufs;         /* buffers given to the ring so far */
	unsigned char *free[KG_BUFPOOL_KEEP];
	unsigned n_free;
	uint64_t enobufs;             /* receives that found the ring empty */
};

/* Registers the provided-buffer ring on ring (kernel 5.19+, as multishot
 * accept). 0 or -errno; on failure nothing is left to release. */
int kg_bufpool_init(struct kg_bufpool *p, struct io_uring *ring);
/* Unregisters the ring and frees every buffer; the ring must still exist. */
void kg_bufpool_destroy(struct kg_bufpool *p, struct io_uring *ring);

/* A receive of up to KG_IO_BUF_SIZE bytes into a buffer the kernel picks. */
void kg_bufpool_prep_recv(struct io_uring_sqe *sqe, int fd);
/* The bytes of a completed buffer-select receive, NULL when the completion
 * carries no buffer (error, EOF, -ENOBUFS). */
const unsigned char *kg_bufpool_recv_data(const struct kg_bufpool *p, uint32_t cqe_flags);
/* Gives a completion's buffer back to the kernel; no-op without one. */
void kg_bufpool_recycle(struct kg_bufpool *p, uint32_t cqe_flags);
/* After a receive found the ring empty: up to KG_BUFRING_STEP more buffers
 * (the ring grows with the peak of receives per batch, never shrinks).
 * Counts the event; returns the number added (0 at the cap or ENOMEM). */
unsigned kg_bufpool_grow(struct kg_bufpool *p);

/* A KG_POOL_BUF_SIZE send buffer, NULL when out of memory. */
unsigned char *kg_buf_get(struct kg_bufpool *p);
/* Returns a buffer from kg_buf_get (NULL is ignored). */
void kg_buf_put(struct kg_bufpool *p, unsigned char *buf);

#endif
