/* kgatectl's connection to the store (store_conn.h). */
#include "store_conn.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define ERRLEN 1024
/* Per request; one member that does not answer costs this much, so a
 * change against a stopped etcd fails well within 10 s. */
#define STORE_TIMEOUT_MS 4000

void kg_store_conn_close(struct kg_store_conn *c)
{
	kg_etcd_destroy(c->etcd);
	c->etcd = NULL;
	kg_store_url_free(&c->url);
}

int kg_store_conn_open(const struct kg_cli *cli, const char *what, struct kg_store_conn *c)
{
	char err[ERRLEN];
	memset(c, 0, sizeof(*c));
	if (!cli->store.url)
		return kg_ctl_fail(KG_EXIT_USAGE, "%s: needs --store etcd://HOST:PORT/PREFIX "
				   "(before the object: kgatectl --store URL %s ...)", what, what);
	bool tls = cli->store.cert || cli->store.key || cli->store.ca;
	if (kg_store_url_parse(cli->store.url, tls, &c->url, err, sizeof(err)) < 0) {
		kg_store_conn_close(c);
		return kg_ctl_fail(KG_EXIT_USAGE, "%s", err);
	}
	struct kg_etcd_opts eo = {.endpoints = (const char *const *)c->url.endpoints,
				  .n_endpoints = c->url.n_endpoints, .cert = cli->store.cert,
				  .key = cli->store.key, .ca = cli->store.ca,
				  .timeout_ms = STORE_TIMEOUT_MS};
	c->etcd = kg_etcd_create(&eo, err, sizeof(err));
	if (!c->etcd) {
		kg_store_conn_close(c);
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: %s", what, err);
	}
	return 0;
}

int kg_store_conn_read(struct kg_store_conn *c, const char *what, struct kg_etcd_range *rg)
{
	char err[ERRLEN];
	if (kg_etcd_range(c->etcd, c->url.state_key, false, rg, err, sizeof(err)) < 0)
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: store %s: %s", what, c->url.text, err);
	return 0;
}

int64_t kg_store_revision(const struct kg_etcd_range *rg)
{
	return rg->n > 0 ? rg->kvs[0].mod_revision : 0;
}

int kg_store_conn_write(struct kg_store_conn *c, const char *what, json_object *sdoc,
			int64_t expect, int64_t *rev)
{
	char err[ERRLEN];
	const char *text = json_object_to_json_string_ext(sdoc, JSON_C_TO_STRING_PRETTY |
								JSON_C_TO_STRING_NOSLASHESCAPE);
	if (!text)
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: out of memory", what);
	struct kg_etcd_op op = {.type = KG_ETCD_OP_PUT, .key = c->url.state_key, .value = text,
				.value_len = strlen(text)};
	int r = kg_etcd_txn(c->etcd, c->url.state_key, expect, &op, 1, rev, err, sizeof(err));
	if (r == -ECANCELED) {
		/* The revision it has now, for the message; -1 when even that
		 * read fails (its own error is printed first). */
		struct kg_etcd_range rg = {0};
		int64_t now = kg_store_conn_read(c, what, &rg) ? -1 : kg_store_revision(&rg);
		kg_etcd_range_free(&rg);
		return kg_ctl_fail(KG_EXIT_ERROR, "%s changed since it was read (revision %lld, now "
				   "%lld): read it again and retry", c->url.state_key,
				   (long long)expect, (long long)now);
	}
	if (r < 0)
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: store %s: %s", what, c->url.text, err);
	return 0;
}
