/* kgatectl store VERB and fleet VERB: the desired state in etcd
 * (--store URL, DESIGN.md "Beyond one machine") and the instances that
 * follow it. Writes are compare-and-swap on the revision read first, so
 * two operators never overwrite each other silently. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <kgate/log.h>
#include <openssl/crypto.h>

#include "client.h"
#include "config.h"
#include "certs.h"
#include "etcd.h"
#include "runtime.h"
#include "seal.h"
#include "state.h"
#include "store_doc.h"
#include "store_tickets.h"
#include "store_conn.h"
#include "store_url.h"
#include "ticket_keys.h"

#define ERRLEN 1024

static const struct kg_cmd store_cmds[];
static const struct kg_cmd fleet_cmds[];

/* ---- store push ------------------------------------------------------------ */

/* FILE (a configuration: paths relative to its folder) or DIR (a state
 * dir: state.json, paths relative to DIR). */
static json_object *load_source(const char *src, char **base, char *err, size_t errlen)
{
	struct stat sb;
	char path[PATH_MAX];
	*base = NULL;
	if (stat(src, &sb) == -1) {
		snprintf(err, errlen, "%s: %s", src, strerror(errno));
		return NULL;
	}
	if (S_ISDIR(sb.st_mode)) {
		snprintf(path, sizeof(path), "%s/state.json", src);
		*base = realpath(src, NULL);
	} else {
		snprintf(path, sizeof(path), "%s", src);
		char *copy = strdup(src);
		*base = copy ? realpath(dirname(copy), NULL) : NULL;
		free(copy);
	}
	if (!*base) {
		snprintf(err, errlen, "%.900s: %s", src, strerror(errno));
		return NULL;
	}
	return kg_state_read_doc(path, err, errlen);
}

/* kgated --check's rules: the schema, the certificate files (dates
 * included), and every listener's SSL_CTX buildable. Kernel features are
 * the instances' business, not this machine's: every path counts as
 * available. */
static int validate(json_object *doc, const char *base, char *err, size_t errlen)
{
	const char *text = json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PLAIN);
	struct kg_config *cfg = text ? kg_config_parse_state(text, base, err, errlen) : NULL;
	if (!cfg)
		return -EINVAL;
	if (kg_config_validate_files(cfg, true, err, errlen) < 0) {
		kg_config_free(cfg);
		return -EINVAL;
	}
	struct kg_config_ref *ref = kg_config_ref_new(cfg);
	if (!ref) {
		kg_config_free(cfg);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	struct kg_kernel_caps caps = {.ktls = true, .sockmap = true};
	/* The daemon's code logs its plans (listener.plan) at info: not
	 * kgatectl's output; a refusal comes back in err. */
	kg_log_level = KG_LOG_WARN;
	int r = kg_config_check_build(ref, &caps, err, errlen);
	kg_config_ref_put(ref);
	return r;
}

static int store_push(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	char err[ERRLEN], *base = NULL;
	struct kg_store_conn c;
	struct kg_etcd_range rg = {0};
	struct kg_kek *kek = NULL;
	json_object *doc = NULL, *sdoc = NULL;
	int st;
	KG_FLAGS_OR_RETURN("store", &store_cmds[0], cli, argc, argv, " expect-revision ", NULL, 1,
			   1, &f);
	unsigned long expect = 0;
	const char *ex = kg_flag(&f, "expect-revision");
	if (ex && kg_flag_uint("store", "push", "expect-revision", ex, (unsigned long)INT64_MAX,
			       &expect) < 0)
		return KG_EXIT_USAGE;
	if (!cli->store.kek)
		return kg_ctl_fail(KG_EXIT_USAGE, "store push: needs --store-kek FILE (private keys "
				   "are sealed under it before they leave this machine)");
	st = kg_store_conn_open(cli, "store push", &c);
	if (st)
		return st;
	st = KG_EXIT_ERROR;
	kek = kg_kek_load(cli->store.kek, err, sizeof(err));
	if (!kek) {
		kg_ctl_fail(st, "store push: --store-kek: %s", err);
		goto close;
	}
	doc = load_source(f.pos[0], &base, err, sizeof(err));
	if (!doc || validate(doc, base, err, sizeof(err)) < 0) {
		kg_ctl_fail(st, "store push: %s", err);
		goto close;
	}
	sdoc = kg_store_doc_from_state(doc, base, kek, c.url.state_key, err, sizeof(err));
	if (!sdoc) {
		kg_ctl_fail(st, "store push: %s", err);
		goto close;
	}
	if (kg_store_conn_read(&c, "store push", &rg))
		goto close;
	int64_t rev = 0, want = ex ? (int64_t)expect
			    : cli->store.expect_revision >= 0 ? cli->store.expect_revision
							      : kg_store_revision(&rg);
	if (kg_store_conn_write(&c, "store push", sdoc, want, &rev))
		goto close;
	if (cli->out == KG_OUT_JSON)
		printf("{\"revision\": %lld, \"previous_revision\": %lld}\n", (long long)rev,
		       (long long)want);
	else
		printf("revision %lld\n", (long long)rev);
	st = KG_EXIT_OK;
close:
	kg_etcd_range_free(&rg);
	json_object_put(sdoc);
	json_object_put(doc);
	free(base);
	kg_kek_destroy(kek);
	kg_store_conn_close(&c);
	return st;
}

/* ---- store show --------------------------------------------------------------- */

static int store_show(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	struct kg_store_conn c;
	struct kg_etcd_range rg = {0};
	KG_FLAGS_OR_RETURN("store", &store_cmds[1], cli, argc, argv, " ", NULL, 0, 0, &f);
	int st = kg_store_conn_open(cli, "store show", &c);
	if (st)
		return st;
	st = kg_store_conn_read(&c, "store show", &rg);
	if (st)
		goto close;
	st = KG_EXIT_ERROR;
	if (rg.n == 0) {
		kg_ctl_fail(st, "store show: %s holds no document yet (kgatectl --store ... store "
			    "push FILE)", c.url.state_key);
		goto close;
	}
	json_object *doc = json_tokener_parse((const char *)rg.kvs[0].value);
	json_object *shown = doc ? kg_store_doc_redact(doc) : NULL;
	json_object_put(doc);
	json_object *out = json_object_new_object();
	json_object_object_add(out, "key", json_object_new_string(c.url.state_key));
	json_object_object_add(out, "revision", json_object_new_int64(rg.kvs[0].mod_revision));
	/* Not JSON (written by hand): shown as text, as kgated refuses it. */
	json_object_object_add(out, "document", shown ? shown :
			       json_object_new_string((const char *)rg.kvs[0].value));
	if (cli->out == KG_OUT_JSON) {
		printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_PRETTY |
							      JSON_C_TO_STRING_NOSLASHESCAPE));
	} else {
		printf("key: %s\nrevision: %lld\n%s\n", c.url.state_key,
		       (long long)rg.kvs[0].mod_revision,
		       json_object_to_json_string_ext(json_object_object_get(out, "document"),
						      JSON_C_TO_STRING_PRETTY |
						      JSON_C_TO_STRING_NOSLASHESCAPE));
	}
	json_object_put(out);
	st = KG_EXIT_OK;
close:
	kg_etcd_range_free(&rg);
	kg_store_conn_close(&c);
	return st;
}

/* ---- store rotate-ticket-keys ----------------------------------------------------- */

/* A rotation now, for an operator who will not wait for the schedule (a
 * key leaked): a new current key, the current one becomes the previous, by
 * the same compare-and-swap the instances use; they install it through
 * their watch. A value this KEK cannot open is left alone: it may be the
 * fleet's under another KEK (etcdctl del it to have the instances write
 * their keys again). */
static int store_rotate_tickets(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	char err[ERRLEN];
	struct kg_store_conn c;
	struct kg_etcd_range rg = {0};
	struct kg_kek *kek = NULL;
	struct kg_ticket_key keys[2], next[2];
	size_t n = 0;
	int64_t rev = 0, read_rev = 0;
	KG_FLAGS_OR_RETURN("store", &store_cmds[2], cli, argc, argv, " ", NULL, 0, 0, &f);
	if (!cli->store.kek)
		return kg_ctl_fail(KG_EXIT_USAGE, "store rotate-ticket-keys: needs --store-kek FILE "
				   "(the keys are sealed under it)");
	int st = kg_store_conn_open(cli, "store rotate-ticket-keys", &c);
	if (st)
		return st;
	st = KG_EXIT_ERROR;
	kek = kg_kek_load(cli->store.kek, err, sizeof(err));
	if (!kek) {
		kg_ctl_fail(st, "store rotate-ticket-keys: --store-kek: %s", err);
		goto close;
	}
	if (kg_etcd_range(c.etcd, c.url.tickets_key, false, &rg, err, sizeof(err)) < 0) {
		kg_ctl_fail(st, "store rotate-ticket-keys: store %s: %s", c.url.text, err);
		goto close;
	}
	time_t now = time(NULL);
	int r;
	if (rg.n == 0) {
		/* No set yet: a first key, which the instances then adopt. */
		r = kg_ticket_key_new(&next[0], now, err, sizeof(err));
		n = 1;
	} else {
		read_rev = rg.kvs[0].mod_revision;
		r = kg_store_tickets_open(kek, c.url.tickets_key, &rg.kvs[0], keys, &n, err,
					  sizeof(err));
		if (r == 0)
			r = kg_ticket_keys_next(&keys[0], now, next, err, sizeof(err));
		n = 2;
	}
	if (r == 0)
		r = kg_store_tickets_write(c.etcd, kek, c.url.tickets_key, read_rev, next, n, &rev,
					   err, sizeof(err));
	if (r == -ECANCELED) {
		kg_ctl_fail(st, "%s changed since it was read (revision %lld): an instance rotated "
			    "it meanwhile; run this again for one more rotation",
			    c.url.tickets_key, (long long)read_rev);
		goto wipe;
	}
	if (r < 0) {
		kg_ctl_fail(st, "store rotate-ticket-keys: %s", err);
		goto wipe;
	}
	if (cli->out == KG_OUT_JSON)
		printf("{\"revision\": %lld, \"previous_revision\": %lld, \"keys\": %zu}\n",
		       (long long)rev, (long long)read_rev, n);
	else
		printf("revision %lld\n", (long long)rev);
	st = KG_EXIT_OK;
wipe:
	OPENSSL_cleanse(keys, sizeof(keys));
	OPENSSL_cleanse(next, sizeof(next));
close:
	kg_etcd_range_free(&rg);
	kg_kek_destroy(kek);
	kg_store_conn_close(&c);
	return st;
}

static const struct kg_cmd store_cmds[] = {
	{"push", store_push, "FILE|DIR [--expect-revision N]",
	 "write a configuration (FILE, paths relative to its folder) or a state dir (DIR) "
	 "to the store, validated as kgated --check does, keys sealed with --store-kek; "
	 "compare-and-swap on the revision read first (or N)"},
	{"show", store_show, "[-o json]",
	 "the document in the store and its revision (private keys shown as \"(sealed)\")"},
	{"rotate-ticket-keys", store_rotate_tickets, "[-o json]",
	 "rotate the fleet's session-ticket keys now (a new current key; the current one "
	 "becomes the previous and still resumes; run twice to drop it); compare-and-swap, "
	 "sealed with --store-kek"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_store(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("store", store_cmds, cli, argc, argv);
}

/* ---- fleet status ----------------------------------------------------------------- */

static json_object *parse_value(const struct kg_etcd_kv *kv)
{
	json_object *o = json_tokener_parse((const char *)kv->value);
	if (o && !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	return o;
}

static json_object *find_kv(const struct kg_etcd_range *rg, size_t skip, const char *id)
{
	for (size_t i = 0; i < rg->n; i++)
		if (strcmp(rg->kvs[i].key + skip, id) == 0)
			return parse_value(&rg->kvs[i]);
	return NULL;
}

static int64_t member_int(json_object *o, const char *key)
{
	json_object *v = NULL;
	return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

/* "web:serving,api:stopped" */
static json_object *listeners_text(json_object *o)
{
	json_object *arr = NULL;
	char buf[1024] = "";
	size_t len = 0;
	if (!json_object_object_get_ex(o, "listeners", &arr) ||
	    !json_object_is_type(arr, json_type_array))
		return NULL;
	for (size_t i = 0; i < json_object_array_length(arr) && len < sizeof(buf); i++) {
		json_object *l = json_object_array_get_idx(arr, i);
		int n = snprintf(buf + len, sizeof(buf) - len, "%s%s:%s", i ? "," : "",
				 json_object_get_string(json_object_object_get(l, "name")),
				 json_object_get_string(json_object_object_get(l, "state")));
		if (n > 0)
			len += (size_t)n;
	}
	return json_object_new_string(buf);
}

static json_object *instance_row(json_object *st, bool alive, int64_t store_rev, time_t now)
{
	json_object *row = json_object_new_object(), *v = NULL;
	static const char *const copied[] = {"id", "host", "pid", "applied_revision", "ready",
					     "store_reachable", "listeners", "members"};
	for (size_t i = 0; i < sizeof(copied) / sizeof(copied[0]); i++)
		if (json_object_object_get_ex(st, copied[i], &v))
			json_object_object_add(row, copied[i], json_object_get(v));
	int64_t updated = member_int(st, "updated");
	json_object_object_add(row, "state", json_object_new_string(alive ? "alive" : "gone"));
	json_object_object_add(row, "converged", json_object_new_boolean(
			alive && member_int(st, "applied_revision") == store_rev));
	json_object_object_add(row, "last_seen", kg_json_time((time_t)updated));
	json_object_object_add(row, "seconds_since_seen", updated ?
			       json_object_new_int64((int64_t)now - updated) : NULL);
	json_object_object_add(row, "listener_states", listeners_text(st));
	return row;
}

static int fleet_status(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	char err[ERRLEN];
	struct kg_store_conn c;
	struct kg_etcd_range state = {0}, members = {0}, alive = {0};
	KG_FLAGS_OR_RETURN("fleet", &fleet_cmds[0], cli, argc, argv, " ", NULL, 0, 0, &f);
	int st = kg_store_conn_open(cli, "fleet status", &c);
	if (st)
		return st;
	st = KG_EXIT_ERROR;
	if (kg_etcd_range(c.etcd, c.url.state_key, false, &state, err, sizeof(err)) < 0 ||
	    kg_etcd_range(c.etcd, c.url.members, true, &members, err, sizeof(err)) < 0 ||
	    kg_etcd_range(c.etcd, c.url.instances, true, &alive, err, sizeof(err)) < 0) {
		kg_ctl_fail(st, "fleet status: store %s: %s", c.url.text, err);
		goto close;
	}
	int64_t store_rev = kg_store_revision(&state);
	size_t mskip = strlen(c.url.members), iskip = strlen(c.url.instances);
	time_t now = time(NULL);
	json_object *rows = json_object_new_array();
	/* Every instance that ever ran has a members/ key; one whose
	 * instances/ key (leased) is there is alive, and its status is the
	 * live one. */
	for (size_t i = 0; i < members.n; i++) {
		const char *id = members.kvs[i].key + mskip;
		json_object *live = find_kv(&alive, iskip, id);
		json_object *kept = live ? live : parse_value(&members.kvs[i]);
		if (!kept)
			continue;
		json_object_array_add(rows, instance_row(kept, live != NULL, store_rev, now));
		json_object_put(kept);
	}
	if (cli->out == KG_OUT_JSON) {
		json_object *out = json_object_new_object();
		json_object_object_add(out, "key", json_object_new_string(c.url.state_key));
		json_object_object_add(out, "revision", json_object_new_int64(store_rev));
		json_object_object_add(out, "instances", rows);
		printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_PRETTY |
							      JSON_C_TO_STRING_NOSLASHESCAPE));
		json_object_put(out);
		st = KG_EXIT_OK;
		goto close;
	}
	static const struct kg_column cols[] = {
		{"id", "INSTANCE"}, {"state", "STATE"}, {"converged", "CONVERGED"},
		{"applied_revision", "APPLIED"}, {"ready", "READY"},
		{"listener_states", "LISTENERS"}, {"last_seen", "LAST SEEN"},
	};
	printf("store revision: %lld\n", (long long)store_rev);
	st = kg_print_rows(cli, rows, cols, sizeof(cols) / sizeof(cols[0]));
close:
	kg_etcd_range_free(&state);
	kg_etcd_range_free(&members);
	kg_etcd_range_free(&alive);
	kg_store_conn_close(&c);
	return st;
}

static const struct kg_cmd fleet_cmds[] = {
	{"status", fleet_status, "[-o json]",
	 "every instance that follows the store: alive or gone (and when last seen), "
	 "converged to the store's revision, ready, listeners"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_fleet(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("fleet", fleet_cmds, cli, argc, argv);
}
