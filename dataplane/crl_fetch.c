/* CRL downloads (crl_fetch.h). */
#include "crl_fetch.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "crl.h"
#include "etcd.h"

struct body {
	unsigned char *p;
	size_t len, cap;
	bool too_large;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
	struct body *b = arg;
	size_t add = size * n;
	if (add > KG_CRL_MAX_BYTES - b->len) {
		b->too_large = true;
		return 0; /* aborts the transfer */
	}
	if (b->len + add > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
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

int kg_crl_fetch(const char *url, unsigned char **out, size_t *len, char *err, size_t errlen)
{
	char curl_err[CURL_ERROR_SIZE] = "";
	struct body b = {0};
	long status = 0;
	int ret = -EIO;
	*out = NULL;
	*len = 0;
	if (kg_curl_init(err, errlen) < 0)
		return -EIO;
	CURL *h = curl_easy_init();
	if (!h) {
		snprintf(err, errlen, "libcurl: cannot create a transfer");
		return -ENOMEM;
	}
	/* Only http(s), no redirects: the configured URL is the one trusted
	 * to answer (the CRL's signature is checked anyway). Signals are the
	 * daemon's: no SIGALRM for timeouts. */
	if (curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curl_err) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_URL, url) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)KG_CRL_FETCH_TIMEOUT_MS) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)KG_CRL_MAX_BYTES) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
	    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b) != CURLE_OK) {
		snprintf(err, errlen, "libcurl: cannot set up the transfer");
		goto cleanup;
	}
	CURLcode rc = curl_easy_perform(h);
	if (b.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
		snprintf(err, errlen, "%s: larger than %u bytes", url, KG_CRL_MAX_BYTES);
		ret = -EFBIG;
		goto cleanup;
	}
	if (rc != CURLE_OK) {
		snprintf(err, errlen, "%s: %s", url, curl_err[0] ? curl_err : curl_easy_strerror(rc));
		goto cleanup;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (status != 200) {
		snprintf(err, errlen, "%s: HTTP %ld", url, status);
		goto cleanup;
	}
	*out = b.p;
	*len = b.len;
	b.p = NULL;
	ret = 0;
cleanup:
	free(b.p);
	curl_easy_cleanup(h);
	return ret;
}
