/* The verbs against the store (store_verbs.h). */
#include "store_verbs.h"

#include <errno.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kgate/log.h>

#include "control_ops.h"
#include "seal.h"
#include "state.h"
#include "store_conn.h"
#include "store_doc.h"

#define ERRLEN 1024

/* The objects whose verbs change or read the desired state; any other
 * request (status, stats, upgrade) is about a running kgated. */
static bool about_document(const char *op)
{
	static const char *const objects[] = {"cert.", "listener.", "backend.", "group."};
	for (size_t i = 0; i < sizeof(objects) / sizeof(objects[0]); i++)
		if (strncmp(op, objects[i], strlen(objects[i])) == 0)
			return true;
	return false;
}

static int remove_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	/* -1 stops the walk with remove()'s errno. */
	return remove(path) == -1 ? -1 : 0;
}

/* The temporary state dir holds unsealed private keys: removed whatever
 * happened, and said so when it cannot be. */
static void remove_tree(const char *dir)
{
	if (nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS) != 0)
		kg_ctl_fail(KG_EXIT_ERROR, "warning: could not remove the temporary state %s: %s; "
			    "remove it by hand (it holds private keys)", dir, strerror(errno));
}

/* Makes st a state dir holding the store's document: an empty state when
 * rg holds none. Prints the error and returns an exit status. */
static int materialise(struct kg_state *st, const char *dir, const struct kg_kek *kek,
		       const struct kg_store_conn *c, const struct kg_etcd_range *rg,
		       const char *what)
{
	char err[ERRLEN];
	enum kg_state_source source;
	json_object *doc = NULL;
	if (kg_state_open(st, dir, err, sizeof(err)) < 0 ||
	    kg_state_load(st, NULL, false, &source, err, sizeof(err)) < 0)
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: temporary state: %s", what, err);
	if (rg->n == 0)
		return 0;
	if (kg_store_doc_to_state(st, kek, c->url.state_key, (const char *)rg->kvs[0].value,
				  rg->kvs[0].value_len, &doc, err, sizeof(err)) < 0)
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: %s (revision %lld): %s", what,
				   c->url.state_key, (long long)rg->kvs[0].mod_revision, err);
	json_object_put(st->doc);
	st->doc = doc;
	return 0;
}

/* kgated's operation code on st, without a runtime. ops is heap memory:
 * its apply plan is large. Prints the error and returns an exit status
 * when the document itself does not parse. */
static int run_op(struct kg_state *st, json_object *req, const char *what, int64_t rev,
		  json_object **reply)
{
	char err[ERRLEN];
	int status = KG_EXIT_ERROR;
	struct kg_ops *ops = calloc(1, sizeof(*ops));
	if (!ops)
		return kg_ctl_fail(status, "%s: out of memory", what);
	int r = kg_ops_init(ops);
	if (r < 0) {
		kg_ctl_fail(status, "%s: %s", what, strerror(-r));
		goto free_ops;
	}
	struct kg_config *cfg = kg_state_parse(st, st->doc, err, sizeof(err));
	if (!cfg) {
		kg_ctl_fail(status, "%s: the document in the store (revision %lld) is not valid: %s "
			    "(replace it with kgatectl --store URL store push)", what,
			    (long long)rev, err);
		goto destroy_ops;
	}
	ops->cur = kg_config_ref_new(cfg);
	if (!ops->cur) {
		kg_config_free(cfg);
		kg_ctl_fail(status, "%s: out of memory", what);
		goto destroy_ops;
	}
	ops->st = st;
	ops->rt = NULL; /* document-only mode (control_ops.h) */
	*reply = kg_ops_handle(ops, req);
	if (!*reply) {
		kg_ctl_fail(status, "%s: out of memory", what);
		goto put_cur;
	}
	status = KG_EXIT_OK;
put_cur:
	kg_config_ref_put(ops->cur);
destroy_ops:
	kg_ops_destroy(ops);
free_ops:
	free(ops);
	return status;
}

static bool reply_ok(json_object *reply)
{
	json_object *v = NULL;
	return json_object_object_get_ex(reply, "ok", &v) && json_object_get_boolean(v);
}

int kg_store_request(const struct kg_cli *cli, json_object *req, json_object **reply)
{
	char err[ERRLEN], what[80], dir[4096];
	const char *op = json_object_get_string(json_object_object_get(req, "op"));
	struct kg_store_conn c;
	struct kg_etcd_range rg = {0};
	struct kg_state st = {0};
	struct kg_kek *kek = NULL;
	json_object *sdoc = NULL;
	*reply = NULL;
	if (!op || !about_document(op))
		return kg_ctl_fail(KG_EXIT_ERROR, "%s: only a running kgated answers this, the store "
				   "does not: kgatectl --store URL fleet status, or kgatectl --socket "
				   "PATH %s on an instance", op ? op : "?", op ? op : "?");
	/* "backend.set_weight" → "backend set-weight", as the verb was typed. */
	snprintf(what, sizeof(what), "%s", op);
	for (char *p = what; *p; p++)
		*p = *p == '.' ? ' ' : *p == '_' ? '-' : *p;
	if (!cli->store.kek)
		return kg_ctl_fail(KG_EXIT_USAGE, "%s: needs --store-kek FILE (the private keys in "
				   "the store are sealed under it)", what);
	int status = kg_store_conn_open(cli, what, &c);
	if (status)
		return status;
	status = KG_EXIT_ERROR;
	kek = kg_kek_load(cli->store.kek, err, sizeof(err));
	if (!kek) {
		kg_ctl_fail(status, "%s: --store-kek: %s", what, err);
		goto close;
	}
	if (kg_store_conn_read(&c, what, &rg))
		goto close;
	int64_t read_rev = kg_store_revision(&rg);
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/kgatectl-store.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	/* mkdtemp: a new dir only this user can enter (0700). */
	if (!mkdtemp(dir)) {
		kg_ctl_fail(status, "%s: temporary state %s: %s", what, dir, strerror(errno));
		goto close;
	}
	/* kgated's code logs its plans and changes at info and notice: not
	 * kgatectl's output, which is the reply. */
	kg_log_level = KG_LOG_WARN;
	if (materialise(&st, dir, kek, &c, &rg, what))
		goto remove_dir;
	json_object *before = st.doc;
	if (run_op(&st, req, what, read_rev, reply))
		goto remove_dir;
	/* A change that was made is a new st.doc (kg_state_commit); a
	 * refusal or a read leaves it as it was. */
	if (!reply_ok(*reply) || st.doc == before) {
		status = KG_EXIT_OK;
		goto remove_dir;
	}
	sdoc = kg_store_doc_from_state(st.doc, st.dir, kek, c.url.state_key, err, sizeof(err));
	if (!sdoc) {
		kg_ctl_fail(status, "%s: %s", what, err);
		goto drop_reply;
	}
	int64_t rev = 0;
	if (kg_store_conn_write(&c, what, sdoc, cli->store.expect_revision >= 0 ?
				(int64_t)cli->store.expect_revision : read_rev, &rev))
		goto drop_reply;
	status = KG_EXIT_OK;
	goto remove_dir;
drop_reply:
	json_object_put(*reply);
	*reply = NULL;
remove_dir:
	kg_state_close(&st);
	remove_tree(dir);
close:
	json_object_put(sdoc);
	kg_etcd_range_free(&rg);
	kg_kek_destroy(kek);
	kg_store_conn_close(&c);
	return status;
}
