/* One bounded, blocking HTTP(S) transfer (fetch.h). */
#include "fetch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "etcd.h"

struct body {
	unsigned char *p;
	size_t len, cap;
	size_t max;
	bool too_large;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = size * n;
	if (add > b->max - b->len) {
		b->too_large = true;
		return 0; /* aborts the transfer */
	}
	if (b->len + add > b->cap) {
		size_t cap = b->cap ? b->cap : 16384;
		while (cap < b->len + add)
			cap *= 2;
		unsigned char *grown = realloc(b->p, cap);
		if (!grown)
			return 0;
		b->p = grown;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, add);
	b->len += add;
	return add;
}

/* Every option of the transfer; false when libcurl refused one. Signals
 * are the daemon's: no SIGALRM for timeouts. */
static bool set_options(CURL *h, const struct kg_fetch_req *req, struct curl_slist *hdrs,
			struct body *b, char *curl_err)
{
	if (curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_URL, req->url) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, req->protocols) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max_bytes) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_WRITEDATA, b) != CURLE_OK)
		return false;
	if (!req->post)
		return true;
	return curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->post) == CURLE_OK &&
	       curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->post_len) ==
		       CURLE_OK &&
	       curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs) == CURLE_OK;
}

int kg_fetch(const struct kg_fetch_req *req, unsigned char **out, size_t *len, char *err,
	     size_t errlen)
{
	char curl_err[CURL_ERROR_SIZE] = "";
	char ctype[128];
	struct body b = {.max = req->max_bytes};
	struct curl_slist *hdrs = NULL;
	CURL *h = NULL;
	long status = 0;
	int ret = -EIO;
	*out = NULL;
	*len = 0;
	if (kg_curl_init(err, errlen) < 0)
		return -EIO;
	if (req->post) {
		snprintf(ctype, sizeof(ctype), "Content-Type: %s", req->content_type);
		hdrs = curl_slist_append(NULL, ctype);
	}
	h = curl_easy_init();
	if (!h || (req->post && !hdrs)) {
		snprintf(err, errlen, "libcurl: cannot create a transfer");
		ret = -ENOMEM;
		goto cleanup;
	}
	if (!set_options(h, req, hdrs, &b, curl_err)) {
		snprintf(err, errlen, "libcurl: cannot set up the transfer");
		goto cleanup;
	}
	CURLcode rc = curl_easy_perform(h);
	if (b.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
		snprintf(err, errlen, "%s: larger than %zu bytes", req->url, req->max_bytes);
		ret = -EFBIG;
		goto cleanup;
	}
	if (rc != CURLE_OK) {
		snprintf(err, errlen, "%s: %s", req->url,
			 curl_err[0] ? curl_err : curl_easy_strerror(rc));
		goto cleanup;
	}
	if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK || status != 200) {
		snprintf(err, errlen, "%s: HTTP %ld", req->url, status);
		goto cleanup;
	}
	*out = b.p;
	*len = b.len;
	b.p = NULL;
	ret = 0;
cleanup:
	free(b.p);
	curl_easy_cleanup(h);
	curl_slist_free_all(hdrs);
	return ret;
}
