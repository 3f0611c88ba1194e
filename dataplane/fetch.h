/* One bounded, blocking HTTP(S) transfer with libcurl, for the threads
 * that download what kgated checks before use: CRLs (crl_watch.c) and
 * OCSP responses to staple (staple.c). Never called on a worker. */
#ifndef KGATE_FETCH_H
#define KGATE_FETCH_H

#include <stddef.h>

struct kg_fetch_req {
	const char *url;
	const char *protocols;    /* libcurl's list, e.g. "http,https" */
	unsigned timeout_ms;      /* the whole transfer, connection included */
	size_t max_bytes;         /* a longer answer fails with -EFBIG */
	/* POST these bytes with this Content-Type; GET when post is NULL. */
	const void *post;
	size_t post_len;
	const char *content_type;
};

/* Runs req, no redirects followed (the URL configured is the one trusted
 * to answer). Only a 200 answer counts: 0 with the body in a malloc'd
 * *out (*len bytes), or -errno with err saying why (the transfer's error,
 * "HTTP 404", too large). */
int kg_fetch(const struct kg_fetch_req *req, unsigned char **out, size_t *len, char *err,
	     size_t errlen);

#endif
