/* The store's address, as kgated and kgatectl take it (--store):
 *   etcd://HOST:PORT[,HOST:PORT...]/PREFIX
 * Each HOST:PORT is one etcd member's client URL (http://HOST:PORT, or
 * https:// when TLS files are given); PREFIX (letters, digits, - . _ and
 * inner /) roots every key kgate writes:
 *   /PREFIX/state          the desired state (store_doc.h)
 *   /PREFIX/ticket-keys    the session-ticket keys, sealed (store_tickets.h)
 *   /PREFIX/instances/ID   each kgated's status, under a lease
 *   /PREFIX/members/ID     the same without a lease (who ever ran) */
#ifndef KGATE_STORE_URL_H
#define KGATE_STORE_URL_H

#include <stdbool.h>
#include <stddef.h>

#define KG_STORE_MAX_ENDPOINTS 8

struct kg_store_url {
	char *text;                                  /* as given */
	char *endpoints[KG_STORE_MAX_ENDPOINTS];     /* "http://127.0.0.1:2379" */
	size_t n_endpoints;
	char *prefix;                                /* "/kgate": leading slash, none after */
	char *state_key;                             /* prefix + "/state" */
	char *tickets_key;                           /* prefix + "/ticket-keys" */
	char *instances;                             /* prefix + "/instances/" */
	char *members;                               /* prefix + "/members/" */
};

/* Parses text; tls chooses https endpoints. 0, or -EINVAL/-ENOMEM with
 * err ("--store URL: ..."). kg_store_url_free also after a failure. */
int kg_store_url_parse(const char *text, bool tls, struct kg_store_url *out, char *err,
		       size_t errlen);
void kg_store_url_free(struct kg_store_url *u);

#endif
