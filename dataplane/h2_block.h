/* One HTTP/2 header block as a session reads it, field by field:
 * h2_session.c collects request heads with it, h2_client.c response heads
 * and trailers. nghttp2's name and value buffers live only for the
 * callback, so each is copied, NUL-terminated, into one arena; fields are
 * kept as offsets, because the arena moves as it grows. Memory comes from
 * the owner's allocator (realloc's contract, as in h2_sendq.h), so
 * h2_session.c counts every byte; the owner frees it (kg_h2_block_free). */
#ifndef KGATE_H2_BLOCK_H
#define KGATE_H2_BLOCK_H

#include <stddef.h>
#include <stdint.h>

/* One field as the sessions hand it to their callers (h2_session.h,
 * h2_client.h). */
struct kg_h2_field {
	const char *name; /* lower case, NUL-terminated */
	size_t name_len;
	const char *value; /* NUL-terminated (no NUL inside: validated) */
	size_t value_len;
};

typedef void *(*kg_h2_realloc_fn)(void *ptr, size_t size, void *ud);
typedef void (*kg_h2_free_fn)(void *ptr, void *ud);

struct kg_h2_block {
	char *arena;
	size_t len, cap;
	struct kg_h2_block_field {
		uint32_t name, name_len, value, value_len; /* into the arena */
	} *f;
	size_t n, f_cap;
};

/* Appends one field. 0, -ENOMEM. */
int kg_h2_block_add(struct kg_h2_block *b, const uint8_t *name, size_t name_len,
		    const uint8_t *value, size_t value_len, kg_h2_realloc_fn re, void *ud);
/* n + 1 more arena bytes at the end, for a value built in place (the
 * caller writes n bytes at arena + *off; the NUL is written here).
 * 0, -ENOMEM. */
int kg_h2_block_reserve(struct kg_h2_block *b, size_t n, kg_h2_realloc_fn re, void *ud,
			uint32_t *off);
/* Field i as handlers take it: pointers into the arena, valid until the
 * block is added to, cleared or freed. */
struct kg_h2_field kg_h2_block_field(const struct kg_h2_block *b, size_t i);
/* Empty for the next block; the memory stays for reuse. */
void kg_h2_block_clear(struct kg_h2_block *b);
/* The offsets' memory, once the arena is final and the fields are read
 * from elsewhere (the arena stays). */
void kg_h2_block_free_offsets(struct kg_h2_block *b, kg_h2_free_fn fr, void *ud);
void kg_h2_block_free(struct kg_h2_block *b, kg_h2_free_fn fr, void *ud);

#endif
