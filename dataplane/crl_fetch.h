/* One CRL download over HTTP(S) for the CRL watcher (crl_watch.h): a
 * blocking libcurl transfer, made on the watcher's thread, never on a
 * worker. */
#ifndef KGATE_CRL_FETCH_H
#define KGATE_CRL_FETCH_H

#include <stddef.h>

/* How long one download may take, connection included. */
#define KG_CRL_FETCH_TIMEOUT_MS 10000

/* GETs url (http or https, no redirects) into a malloc'd buffer (*out,
 * *len; at most KG_CRL_MAX_BYTES). Only a 200 answer counts. 0, or
 * -errno with err saying why (the transfer's error, "HTTP 404", too
 * large). */
int kg_crl_fetch(const char *url, unsigned char **out, size_t *len, char *err, size_t errlen);

#endif
