/* The per-worker OCSP answer cache (ocsp_cache.h). A linear scan: the
 * cache is small (hundreds of entries) and a lookup happens once per full
 * handshake, next to an ECDSA verify that costs far more. */
#include "ocsp_cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int kg_ocsp_cache_init(struct kg_ocsp_cache *c, size_t cap)
{
	c->e = calloc(cap ? cap : 1, sizeof(*c->e));
	c->cap = c->e ? (cap ? cap : 1) : 0;
	return c->e ? 0 : -ENOMEM;
}

void kg_ocsp_cache_destroy(struct kg_ocsp_cache *c)
{
	free(c->e);
	c->e = NULL;
	c->cap = 0;
}

static struct kg_ocsp_cache_entry *find(struct kg_ocsp_cache *c, const unsigned char *id,
					size_t id_len)
{
	for (size_t i = 0; i < c->cap; i++)
		if (c->e[i].id_len == id_len && memcmp(c->e[i].id, id, id_len) == 0)
			return &c->e[i];
	return NULL;
}

bool kg_ocsp_cache_get(struct kg_ocsp_cache *c, const unsigned char *id, size_t id_len,
		       time_t now, enum kg_ocsp_status *status)
{
	struct kg_ocsp_cache_entry *e = id_len ? find(c, id, id_len) : NULL;
	if (!e)
		return false;
	if (e->expires <= now) {
		e->id_len = 0;
		return false;
	}
	*status = e->status;
	return true;
}

int kg_ocsp_cache_put(struct kg_ocsp_cache *c, const unsigned char *id, size_t id_len,
		      enum kg_ocsp_status status, time_t expires, time_t now)
{
	if (id_len == 0 || id_len > KG_OCSP_ID_MAX || expires <= now)
		return -EINVAL;
	struct kg_ocsp_cache_entry *e = find(c, id, id_len);
	for (size_t i = 0; !e && i < c->cap; i++)
		if (c->e[i].id_len == 0)
			e = &c->e[i];
	/* Full: the entry that expires first goes (an expired one sorts
	 * before every fresh one). */
	if (!e) {
		if (c->cap == 0)
			return -EINVAL;
		e = &c->e[0];
		for (size_t i = 1; i < c->cap; i++)
			if (c->e[i].expires < e->expires)
				e = &c->e[i];
	}
	memcpy(e->id, id, id_len);
	e->id_len = id_len;
	e->status = status;
	e->expires = expires;
	return 0;
}

size_t kg_ocsp_cache_count(const struct kg_ocsp_cache *c)
{
	size_t n = 0;
	for (size_t i = 0; i < c->cap; i++)
		n += c->e[i].id_len != 0;
	return n;
}
