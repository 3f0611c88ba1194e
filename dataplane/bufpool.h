/* A worker's I/O buffers, held by a connection only while data is in
 * flight (issue 7: memory per idle connection).
 *
 * Receives take no buffer while they wait: they are submitted with
 * IOSQE_BUFFER_SELECT on an io_uring provided-buffer ring, the kernel picks
 * a buffer when bytes arrive, and the completion handler gives it back once
 * OpenSSL has copied the bytes in. Sends borrow a buffer from a free list
 * while the send is pending and return it when everything was sent. An idle
 * connection therefore holds no buffer of ours.
 *
 * Two sizes of each (issue 19 §2): a record's worth (16 KiB of plaintext)
 * for most I/O, and a batch of four records for bulk responses on
 * userspace TLS. A backend that has 64 KiB ready is read in one receive
 * and its four records leave in one send instead of four of each: the
 * kernel's per-call path on both sockets was the larger part of the
 * kernel's 40 % of the CPU per MiB. The batch buffers are lent like the
 * others, only while those bytes are in flight. */
#ifndef KGATE_BUFPOOL_H
#define KGATE_BUFPOOL_H

#include <stdint.h>

#include <liburing.h>

#include <kgate/limits.h>

/* The two provided-buffer rings; the value is the ring's buffer group id. */
enum kg_ring {
	KG_RING_RECORD = 0, /* KG_IO_BUF_SIZE buffers: client receives, most backend ones */
	KG_RING_BATCH = 1,  /* KG_BATCH_BYTES buffers: the tls relay's bulk backend receives */
	KG_RING_COUNT
};

#define KG_BUFRING_ENTRIES 128  /* at most, per worker: receives completing in one batch */
#define KG_BUFRING_START 16     /* buffers at start; -ENOBUFS adds KG_BUFRING_STEP more */
#define KG_BUFRING_STEP 16
/* The batch ring: 2 MiB per worker at most; it grows only where bulk
 * transfers run. */
#define KG_BATCH_RING_ENTRIES 32
#define KG_BATCH_RING_START 4
#define KG_BATCH_RING_STEP 4
#define KG_BUFPOOL_KEEP 64      /* free send buffers kept for reuse, per worker */
#define KG_BATCH_KEEP 16        /* free batch buffers kept for reuse, per worker */
/* A send buffer holds the record of a full KG_IO_BUF_SIZE write (header,
 * tag and padding are at most 256 bytes in TLS 1.3, 29 in TLS 1.2) with
 * room for a small record behind it. */
#define KG_POOL_BUF_SIZE (KG_IO_BUF_SIZE + 1024)
/* A batch: the plaintext of four full records, and a buffer that holds
 * their records (each with its room, as KG_POOL_BUF_SIZE). */
#define KG_BATCH_BYTES (4 * KG_IO_BUF_SIZE)
#define KG_BATCH_BUF_SIZE (4 * KG_POOL_BUF_SIZE)

/* One provided-buffer ring; a buffer's id is base + its index, so one
 * completion's flags name the ring as well as the buffer. */
struct kg_bufring {
	struct io_uring_buf_ring *br; /* shared with the kernel */
	size_t br_bytes;
	unsigned char *bufs[KG_BUFRING_ENTRIES]; /* by index, size each */
	unsigned n_bufs;              /* buffers given to the ring so far */
	unsigned entries, step;       /* the cap and the growth per -ENOBUFS */
	unsigned size;                /* bytes per buffer */
	unsigned base;                /* buffer id of bufs[0] */
};

struct kg_bufpool {
	struct kg_bufring rings[KG_RING_COUNT];
	unsigned char *free[KG_BUFPOOL_KEEP];
	unsigned n_free;
	unsigned char *batch_free[KG_BATCH_KEEP];
	unsigned n_batch_free;
	uint64_t enobufs;             /* receives that found a ring empty */
};

/* Registers the provided-buffer rings on ring (kernel 5.19+, as multishot
 * accept). 0 or -errno; on failure nothing is left to release. */
int kg_bufpool_init(struct kg_bufpool *p, struct io_uring *ring);
/* Unregisters the rings and frees every buffer; the ring must still exist. */
void kg_bufpool_destroy(struct kg_bufpool *p, struct io_uring *ring);

/* A receive into a buffer the kernel picks from ring r, of up to that
 * ring's buffer size. */
void kg_bufpool_prep_recv(struct io_uring_sqe *sqe, int fd, enum kg_ring r);
/* The bytes of a completed buffer-select receive, NULL when the completion
 * carries no buffer (error, EOF, -ENOBUFS). */
const unsigned char *kg_bufpool_recv_data(const struct kg_bufpool *p, uint32_t cqe_flags);
/* Gives a completion's buffer back to the kernel; no-op without one. */
void kg_bufpool_recycle(struct kg_bufpool *p, uint32_t cqe_flags);
/* After a receive found ring r empty: up to its step more buffers (a ring
 * grows with the peak of receives per batch, never shrinks). Counts the
 * event; returns the number added (0 at the cap or ENOMEM). */
unsigned kg_bufpool_grow(struct kg_bufpool *p, enum kg_ring r);

/* A KG_POOL_BUF_SIZE send buffer, NULL when out of memory. */
unsigned char *kg_buf_get(struct kg_bufpool *p);
/* Returns a buffer from kg_buf_get (NULL is ignored). */
void kg_buf_put(struct kg_bufpool *p, unsigned char *buf);
/* The same for KG_BATCH_BUF_SIZE buffers. */
unsigned char *kg_batch_get(struct kg_bufpool *p);
void kg_batch_put(struct kg_bufpool *p, unsigned char *buf);

#endif
