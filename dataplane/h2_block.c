/* One HTTP/2 header block being read (h2_block.h). */
#include "h2_block.h"

#include <errno.h>
#include <string.h>

/* Grows *buf (elem bytes each) to hold need elements. */
static int grow(void **buf, size_t *cap, size_t need, size_t elem, kg_h2_realloc_fn re, void *ud)
{
	if (need <= *cap)
		return 0;
	size_t ncap = *cap ? *cap : 8;
	while (ncap < need)
		ncap *= 2;
	if (ncap > SIZE_MAX / elem)
		return -ENOMEM;
	void *nb = re(*buf, ncap * elem, ud);
	if (!nb)
		return -ENOMEM;
	*buf = nb;
	*cap = ncap;
	return 0;
}

int kg_h2_block_reserve(struct kg_h2_block *b, size_t n, kg_h2_realloc_fn re, void *ud,
			uint32_t *off)
{
	/* Offsets are 32-bit: a block is bounded far below that (16 MiB). */
	if (n >= UINT32_MAX - b->len)
		return -ENOMEM;
	int rv = grow((void **)&b->arena, &b->cap, b->len + n + 1, 1, re, ud);
	if (rv < 0)
		return rv;
	*off = (uint32_t)b->len;
	b->arena[b->len + n] = '\0';
	b->len += n + 1;
	return 0;
}

static int put(struct kg_h2_block *b, const uint8_t *p, size_t n, kg_h2_realloc_fn re, void *ud,
	       uint32_t *off)
{
	int rv = kg_h2_block_reserve(b, n, re, ud, off);
	if (rv == 0 && n > 0)
		memcpy(b->arena + *off, p, n);
	return rv;
}

int kg_h2_block_add(struct kg_h2_block *b, const uint8_t *name, size_t name_len,
		    const uint8_t *value, size_t value_len, kg_h2_realloc_fn re, void *ud)
{
	int rv = grow((void **)&b->f, &b->f_cap, b->n + 1, sizeof(*b->f), re, ud);
	if (rv < 0)
		return rv;
	struct kg_h2_block_field *f = &b->f[b->n];
	if (put(b, name, name_len, re, ud, &f->name) < 0 ||
	    put(b, value, value_len, re, ud, &f->value) < 0)
		return -ENOMEM;
	f->name_len = (uint32_t)name_len;
	f->value_len = (uint32_t)value_len;
	b->n++;
	return 0;
}

struct kg_h2_field kg_h2_block_field(const struct kg_h2_block *b, size_t i)
{
	const struct kg_h2_block_field *f = &b->f[i];
	return (struct kg_h2_field){.name = b->arena + f->name,
				    .name_len = f->name_len,
				    .value = b->arena + f->value,
				    .value_len = f->value_len};
}

void kg_h2_block_clear(struct kg_h2_block *b)
{
	b->len = b->n = 0;
}

void kg_h2_block_free_offsets(struct kg_h2_block *b, kg_h2_free_fn fr, void *ud)
{
	fr(b->f, ud);
	b->f = NULL;
	b->n = b->f_cap = 0;
}

void kg_h2_block_free(struct kg_h2_block *b, kg_h2_free_fn fr, void *ud)
{
	kg_h2_block_free_offsets(b, fr, ud);
	fr(b->arena, ud);
	b->arena = NULL;
	b->len = b->cap = 0;
}
