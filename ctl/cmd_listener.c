/* kgatectl listener VERB: listeners of kgated (control socket). The
 * options map one to one onto the listener keys of the state document. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

static const struct kg_cmd listener_cmds[];
#define SELF(i) (&listener_cmds[i])

/* --option → document key, for the options shared by create and update. */
struct opt_key {
	const char *opt;
	const char *key;
	bool number;
};

static const struct opt_key settable[] = {
	{"cert", "certificate", false},
	{"ca", "ca", false},
	{"mutual-auth", "mutual_auth", false},
	{"scheduler", "scheduler", false},
	{"forwarding", "forwarding", false},
	{"proxy-protocol", "proxy_protocol", false},
	{"verify-depth", "verify_depth", true},
	{"handshake-timeout-ms", "handshake_timeout_ms", true},
	{"idle-timeout-ms", "idle_timeout_ms", true},
	{"connect-timeout-ms", "connect_timeout_ms", true},
	{"max-connections", "max_connections", true},
	{"connect-retries", "connect_retries", true},
	{"tls-session-cache", "tls_session_cache", true},
	{NULL, NULL, false},
};

#define SETTABLE_OPTS " cert ca mutual-auth scheduler forwarding proxy-protocol verify-depth " \
	"handshake-timeout-ms idle-timeout-ms connect-timeout-ms max-connections connect-retries " \
	"tls-session-cache " \
	"health-check http "

/* Options whose value is an object of the schema, given as JSON; "none"
 * removes it. */
static const struct {
	const char *opt, *key, *example;
} json_opts[] = {
	{"health-check", "health_check", "'{\"type\": \"tcp\", \"interval_ms\": 2000}'"}, /* README "Health checks" */
	{"http", "http", "'{\"access_log\": \"on\"}'"}, /* README "https listeners" */
};

/* Copies the settable options present in f into obj. -1 after an error. */
static int put_settable(const char *verb, const struct kg_flags *f, json_object *obj)
{
	for (size_t i = 0; i < sizeof(json_opts) / sizeof(json_opts[0]); i++) {
		const char *text = kg_flag(f, json_opts[i].opt);
		if (!text)
			continue;
		json_object *v = strcmp(text, "none") == 0 ? NULL : json_tokener_parse(text);
		if (strcmp(text, "none") != 0 && !json_object_is_type(v, json_type_object)) {
			json_object_put(v);
			kg_fail(KG_EXIT_USAGE, "listener %s: --%s: expected a JSON object such as %s "
				"or none", verb, json_opts[i].opt, json_opts[i].example);
			return -1;
		}
		json_object_object_add(obj, json_opts[i].key, v);
	}
	for (const struct opt_key *o = settable; o->opt; o++) {
		const char *v = kg_flag(f, o->opt);
		if (!v)
			continue;
		if (strcmp(o->opt, "scheduler") == 0 && strcmp(v, "wrr") == 0)
			v = "rr"; /* weighted round robin is rr with member weights */
		if (o->number) {
			unsigned long n;
			if (kg_flag_uint("listener", verb, o->opt, v, 0xffffffffUL, &n) < 0)
				return -1;
			json_object_object_add(obj, o->key, json_object_new_int64((int64_t)n));
		} else if (strcmp(v, "none") == 0 && strcmp(o->opt, "ca") == 0) {
			json_object_object_add(obj, o->key, NULL); /* update: remove the CA */
		} else {
			json_object_object_add(obj, o->key, json_object_new_string(v));
		}
	}
	return 0;
}

/* "HOST:PORT[,weight=W]" → {"address": ..., "weight": W}. */
static json_object *backend_spec(const char *text)
{
	json_object *m = json_object_new_object();
	const char *comma = strchr(text, ',');
	if (!comma) {
		json_object_object_add(m, "address", json_object_new_string(text));
		return m;
	}
	json_object_object_add(m, "address",
			       json_object_new_string_len(text, (int)(comma - text)));
	unsigned long w;
	if (strncmp(comma + 1, "weight=", 7) != 0 ||
	    kg_flag_uint("listener", "create", "--backend weight", comma + 8, 1000000, &w) < 0) {
		kg_fail(KG_EXIT_USAGE, "listener create: --backend %s: expected HOST:PORT[,weight=W]",
			text);
		json_object_put(m);
		return NULL;
	}
	json_object_object_add(m, "weight", json_object_new_int64((int64_t)w));
	return m;
}

static int listener_create(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("listener", SELF(0), cli, argc, argv,
			   " name protocol port bind " SETTABLE_OPTS, "backend", 0, 0, &f);
	const char *name = kg_flag(&f, "name"), *proto = kg_flag(&f, "protocol"),
		   *port = kg_flag(&f, "port");
	if (!name || !proto || !port || f.nmulti == 0)
		return kg_fail(KG_EXIT_USAGE, "listener create: --name, --protocol, --port and at "
			       "least one --backend are required");
	unsigned long p;
	if (kg_flag_uint("listener", "create", "--port", port, 65535, &p) < 0)
		return KG_EXIT_USAGE;
	json_object *l = json_object_new_object(), *backends = json_object_new_array();
	json_object_object_add(l, "name", json_object_new_string(name));
	json_object_object_add(l, "protocol", json_object_new_string(proto));
	json_object_object_add(l, "bind", json_object_new_string(
			kg_flag(&f, "bind") ? kg_flag(&f, "bind") : "0.0.0.0"));
	json_object_object_add(l, "port", json_object_new_int64((int64_t)p));
	json_object_object_add(l, "backends", backends);
	if (put_settable("create", &f, l) < 0)
		goto fail;
	for (int i = 0; i < f.nmulti; i++) {
		json_object *m = backend_spec(f.multi[i]);
		if (!m)
			goto fail;
		json_object_array_add(backends, m);
	}
	json_object *args = json_object_new_object();
	json_object_object_add(args, "listener", l);
	return kg_call_print(cli, "listener.create", args);
fail:
	json_object_put(l);
	return KG_EXIT_USAGE;
}

static int listener_list(struct kg_cli *cli, int argc, char **argv)
{
	static const struct kg_column cols[] = {
		{"name", "NAME"}, {"protocol", "PROTOCOL"}, {"address", "ADDRESS"},
		{"state", "STATE"}, {"certificate", "CERT"}, {"ca", "CA"},
		{"mutual_auth", "MTLS"}, {"backends", "BACKENDS"}, {"active", "ACTIVE"},
		{"reason", "REASON"}};
	struct kg_flags f;
	json_object *res;
	KG_FLAGS_OR_RETURN("listener", SELF(1), cli, argc, argv, " ", NULL, 0, 0, &f);
	int st = kg_client_call(cli, "listener.list", NULL, &res);
	return st ? st : kg_print_rows(cli, res, cols, sizeof(cols) / sizeof(cols[0]));
}

static int listener_show(struct kg_cli *cli, int argc, char **argv)
{
	static const struct kg_column cols[] = {
		{"address", "BACKEND"}, {"weight", "WEIGHT"}, {"state", "STATE"},
		{"status", "HEALTH"}, {"in_state_s", "FOR(S)"}, {"last_check", "LAST CHECK"},
		{"active", "ACTIVE"}, {"connections", "CONNECTIONS"}};
	struct kg_flags f;
	json_object *res;
	KG_FLAGS_OR_RETURN("listener", SELF(2), cli, argc, argv, " ", NULL, 1, 1, &f);
	int st = kg_client_call(cli, "listener.show", kg_name_args(f.pos[0]), &res);
	/* Text: the settings as lines, then the members as a table. */
	return st ? st : kg_print_object_and_table(cli, res, "members", cols,
						   sizeof(cols) / sizeof(cols[0]), kg_print_object);
}

static int listener_update(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("listener", SELF(3), cli, argc, argv, SETTABLE_OPTS, NULL, 1, 1, &f);
	json_object *set = json_object_new_object();
	if (put_settable("update", &f, set) < 0) {
		json_object_put(set);
		return KG_EXIT_USAGE;
	}
	if (json_object_object_length(set) == 0) {
		json_object_put(set);
		return kg_fail(KG_EXIT_USAGE, "listener update: nothing to change (see 'kgatectl "
			       "listener update --help')");
	}
	json_object *args = kg_name_args(f.pos[0]);
	json_object_object_add(args, "set", set);
	return kg_call_print(cli, "listener.update", args);
}

static int by_name(struct kg_cli *cli, int argc, char **argv, int self, const char *op)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("listener", SELF(self), cli, argc, argv, " ", NULL, 1, 1, &f);
	return kg_call_print(cli, op, kg_name_args(f.pos[0]));
}

static int listener_stop(struct kg_cli *cli, int argc, char **argv)
{
	return by_name(cli, argc, argv, 4, "listener.stop");
}

static int listener_start(struct kg_cli *cli, int argc, char **argv)
{
	return by_name(cli, argc, argv, 5, "listener.start");
}

static int listener_delete(struct kg_cli *cli, int argc, char **argv)
{
	return by_name(cli, argc, argv, 6, "listener.delete");
}

static const struct kg_cmd listener_cmds[] = {
	{"create", listener_create,
	 "--name NAME --protocol tls|https|tcp --port N [--bind ADDR] [--cert NAME] "
	 "[--mutual-auth required|optional|off] [--ca NAME] [--verify-depth N] [--scheduler rr|wrr] "
	 "[--forwarding auto|splice|sockmap|userspace] [--proxy-protocol v2|none] "
	 "[--handshake-timeout-ms N] [--idle-timeout-ms N] [--connect-timeout-ms N] "
	 "[--max-connections N] [--connect-retries N] [--tls-session-cache N] "
	 "[--health-check JSON] [--http JSON] --backend HOST:PORT[,weight=W] ...",
	 "create and start a listener (bind defaults to 0.0.0.0; port 0 lets the kernel choose)"},
	{"list", listener_list, "[-o json]", "listeners: address, state, certificates, backends, active connections"},
	{"show", listener_show, "NAME [-o json]", "settings, counters and each backend's weight and state"},
	{"update", listener_update,
	 "NAME [--cert NAME] [--ca NAME|none] [--mutual-auth M] [--verify-depth N] [--scheduler S] "
	 "[--forwarding F] [--proxy-protocol v2|none] [--handshake-timeout-ms N] "
	 "[--idle-timeout-ms N] [--connect-timeout-ms N] [--max-connections N] [--connect-retries N] "
	 "[--tls-session-cache N] [--health-check JSON|none] [--http JSON|none]",
	 "change settings; new connections use them, open ones keep theirs"},
	{"stop", listener_stop, "NAME", "stop accepting (open connections finish); kept in the state"},
	{"start", listener_start, "NAME", "accept again"},
	{"delete", listener_delete, "NAME", "stop accepting and remove; open connections finish"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_listener(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("listener", listener_cmds, cli, argc, argv);
}
