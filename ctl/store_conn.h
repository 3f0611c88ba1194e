/* kgatectl's connection to the store (--store URL, DESIGN.md "Beyond one
 * machine"): reading PREFIX/state and writing it back as a
 * compare-and-swap on the revision read, for store push and for the
 * cert|listener|backend verbs in store mode (store_verbs.h). Every
 * function prints its error as one "kgatectl: ..." line and returns an
 * exit status (0 on success). */
#ifndef KG_CTL_STORE_CONN_H
#define KG_CTL_STORE_CONN_H

#include <stdint.h>

#include <json-c/json.h>

#include "cmd.h"
#include "etcd.h"
#include "store_url.h"

struct kg_store_conn {
	struct kg_store_url url;
	struct kg_etcd *etcd;
};

/* Parses --store and the TLS options and makes the client; no request is
 * made yet. what starts the messages ("store push"). */
int kg_store_conn_open(const struct kg_cli *cli, const char *what, struct kg_store_conn *c);
/* Tolerates a connection that failed to open. */
void kg_store_conn_close(struct kg_store_conn *c);

/* The document at PREFIX/state: rg->n is 0 when the key is absent. rg must
 * be released with kg_etcd_range_free, also after a failure. */
int kg_store_conn_read(struct kg_store_conn *c, const char *what, struct kg_etcd_range *rg);
/* The mod_revision of the document read (0: absent). */
int64_t kg_store_revision(const struct kg_etcd_range *rg);

/* Writes sdoc (a store document) to PREFIX/state if its mod_revision is
 * still expect (0: the key must not exist); *rev gets the new revision.
 * A lost race is "PREFIX/state changed since it was read (revision
 * EXPECT, now NOW): read it again and retry", nothing written. */
int kg_store_conn_write(struct kg_store_conn *c, const char *what, json_object *sdoc,
			int64_t expect, int64_t *rev);

#endif
