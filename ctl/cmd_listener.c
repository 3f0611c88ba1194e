/* kgatectl listener VERB: listeners of kgated (control socket). The
 * options map one to one onto the listener keys of the state document;
 * their names, values and help come from the key table
 * (include/kgate/listener_keys.h). kgatectl checks that a number is a
 * number; kgated judges the ranges, as it does for every client. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kgate/listener_keys.h>

#include "client.h"

static const struct kg_cmd listener_cmds[];
#define SELF(i) (&listener_cmds[i])
enum { CREATE = 0, UPDATE = 3 }; /* their places in listener_cmds */

static const struct kg_listener_key keys[KG_LK_COUNT] = KG_LISTENER_KEY_TABLE;

/* A verb's usage line and its options for kg_flags_parse (" name
 * protocol ... "), written from the table by write_usage() before any
 * verb runs. */
struct verb_text {
	bool update;
	char usage[1024];
	char allowed[512];
};
static struct verb_text create_text = {.update = false}, update_text = {.update = true};

/* Appends to a fixed buffer; a full one keeps what fit (test_config
 * checks that --help lists every option). */
__attribute__((format(printf, 3, 4))) static void add(char *buf, size_t size, const char *fmt, ...)
{
	size_t len = strlen(buf);
	va_list ap;
	va_start(ap, fmt);
	if (len < size)
		vsnprintf(buf + len, size - len, fmt, ap);
	va_end(ap);
}

/* What an option takes: its metavar, or an enum's names "a|b|c". */
static void add_value(char *buf, size_t size, const struct kg_listener_key *k, bool update)
{
	if (k->metavar)
		add(buf, size, "%s", k->metavar);
	for (size_t i = 0; !k->metavar && k->names[i]; i++)
		add(buf, size, "%s%s", i ? "|" : "", k->names[i]);
	if (update && k->flags & KG_LKF_NONE_REMOVES)
		add(buf, size, "|none");
}

/* The options of create (every row with an option) or update (the rows
 * KG_LKF_UPDATE). */
static bool offered(const struct kg_listener_key *k, bool update)
{
	return k->option && (!update || k->flags & KG_LKF_UPDATE);
}

static void write_verb(struct verb_text *v)
{
	if (v->update)
		add(v->usage, sizeof(v->usage), "NAME");
	for (const struct kg_listener_key *k = keys; k < keys + KG_LK_COUNT; k++) {
		if (!offered(k, v->update))
			continue;
		bool required = !v->update && k->flags & KG_LKF_OPTION_REQUIRED;
		add(v->usage, sizeof(v->usage), "%s%s--%s ", v->usage[0] ? " " : "",
		    required ? "" : "[", k->option);
		add_value(v->usage, sizeof(v->usage), k, v->update);
		add(v->usage, sizeof(v->usage), "%s%s", k->type == KG_KEY_ARRAY ? " ..." : "",
		    required ? "" : "]");
		/* The repeated option (backend) is kg_flags_parse's multi. */
		if (k->type != KG_KEY_ARRAY)
			add(v->allowed, sizeof(v->allowed), " %s ", k->option);
	}
}

static void write_usage(void)
{
	if (!create_text.usage[0]) {
		write_verb(&create_text);
		write_verb(&update_text);
	}
}

/* "tls and https only: " for a key of some protocols. */
static void add_protocols(char *buf, size_t size, const struct kg_listener_key *k)
{
	const char *const *names = keys[KG_LK_protocol].names;
	if (k->protocols == KG_PROTOS_ALL)
		return;
	for (unsigned p = 0, n = 0; names[p]; p++)
		if (k->protocols & (1u << p))
			add(buf, size, "%s%s", n++ ? " and " : "", names[p]);
	add(buf, size, " only: ");
}

/* `listener create|update --help` after the usage line: each option
 * with its help, range, default and protocols. */
static void print_options(bool update)
{
	printf("\nOptions:\n");
	for (const struct kg_listener_key *k = keys; k < keys + KG_LK_COUNT; k++) {
		char value[256] = "", text[512] = "";
		if (!offered(k, update))
			continue;
		add_value(value, sizeof(value), k, update);
		add_protocols(text, sizeof(text), k);
		add(text, sizeof(text), "%s", k->help);
		if (k->type == KG_KEY_UINT)
			add(text, sizeof(text), "; %u-%u", k->min, k->max);
		if (!(k->flags & KG_LKF_NO_DEFAULT) && k->type == KG_KEY_UINT)
			add(text, sizeof(text), ", default %u", k->def);
		if (!(k->flags & KG_LKF_NO_DEFAULT) && k->type == KG_KEY_ENUM)
			add(text, sizeof(text), "; default %s", k->names[k->def]);
		if (update && k->flags & KG_LKF_NONE_REMOVES)
			add(text, sizeof(text), "; none removes it");
		if (!update && k->flags & KG_LKF_OPTION_REQUIRED)
			add(text, sizeof(text), "; required");
		printf("  --%s %s\n      %s\n", k->option, value, text);
	}
}

/* kg_flags_parse with the table's options: 0 to go on, -1 after --help
 * (exit 0), or an exit status after an error. */
static int parse_flags(struct kg_cli *cli, int argc, char **argv, bool update, struct kg_flags *f)
{
	int st = kg_flags_parse("listener", SELF(update ? UPDATE : CREATE), cli, argc, argv,
				update ? update_text.allowed : create_text.allowed,
				update ? NULL : keys[KG_LK_backends].option, update, update, f);
	if (st < 0)
		print_options(update);
	return st;
}

/* Copies the options present in f that `listener update` may also set
 * into obj. -1 after an error. */
static int put_settable(const char *verb, const struct kg_flags *f, json_object *obj)
{
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &keys[i];
		const char *v = offered(k, true) ? kg_flag(f, k->option) : NULL;
		if (!v)
			continue;
		if (k->flags & KG_LKF_NONE_REMOVES && strcmp(v, "none") == 0) {
			json_object_object_add(obj, k->key, NULL); /* update: remove the key */
			continue;
		}
		if (i == KG_LK_scheduler && strcmp(v, "wrr") == 0)
			v = "rr"; /* weighted round robin is rr with member weights */
		json_object *j = NULL;
		char name[64];
		snprintf(name, sizeof(name), "--%s", k->option);
		if (k->type == KG_KEY_OBJECT || k->type == KG_KEY_LIST) {
			bool list = k->type == KG_KEY_LIST;
			j = json_tokener_parse(v);
			if (!json_object_is_type(j, list ? json_type_array : json_type_object)) {
				json_object_put(j);
				kg_ctl_fail(KG_EXIT_USAGE, "listener %s: %s: expected a JSON %s or none (see "
					"'kgatectl listener %s --help')", verb, name,
					list ? "array" : "object", verb);
				return -1;
			}
		} else if (k->type == KG_KEY_BOOL) {
			if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
				kg_ctl_fail(KG_EXIT_USAGE, "listener %s: %s: expected true or false",
					    verb, name);
				return -1;
			}
			j = json_object_new_boolean(strcmp(v, "true") == 0);
		} else if (k->type == KG_KEY_UINT) {
			unsigned long n;
			if (kg_flag_uint("listener", verb, name, v, 0xffffffffUL, &n) < 0)
				return -1;
			j = json_object_new_int64((int64_t)n);
		} else if (k->type == KG_KEY_BOOL) {
			if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
				kg_ctl_fail(KG_EXIT_USAGE, "listener %s: %s: expected true or false",
					    verb, name);
				return -1;
			}
			j = json_object_new_boolean(strcmp(v, "true") == 0);
		} else {
			j = json_object_new_string(v);
		}
		json_object_object_add(obj, k->key, j);
	}
	return 0;
}

static const char *opt(const struct kg_flags *f, enum kg_listener_key_id id)
{
	return kg_flag(f, keys[id].option);
}

/* "--name, --protocol, --port are required": the KG_LKF_OPTION_REQUIRED
 * rows, if one is missing (where traffic goes, --backend, --backend-group
 * or --routes, is kgated's to judge). */
static int need_required(const struct kg_flags *f)
{
	char list[256] = "";
	bool missing = false;
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &keys[i];
		if (!(k->flags & KG_LKF_OPTION_REQUIRED))
			continue;
		bool many = k->type == KG_KEY_ARRAY;
		missing |= many ? f->nmulti == 0 : !opt(f, i);
		add(list, sizeof(list), "%s%s--%s", !list[0] ? "" : many ? " and " : ", ",
		    many ? "at least one " : "", k->option);
	}
	return missing ? kg_ctl_fail(KG_EXIT_USAGE, "listener create: %s are required", list) : 0;
}

static int listener_create(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	int st = parse_flags(cli, argc, argv, false, &f);
	if (st)
		return st < 0 ? KG_EXIT_OK : st;
	if ((st = need_required(&f)))
		return st;
	/* name, protocol, port, bind and the backends: hand-written, as
	 * update cannot change them. */
	unsigned long p;
	if (kg_flag_uint("listener", "create", "--port", opt(&f, KG_LK_port), keys[KG_LK_port].max,
			 &p) < 0)
		return KG_EXIT_USAGE;
	json_object *l = json_object_new_object(), *backends = NULL;
	json_object_object_add(l, "name", json_object_new_string(opt(&f, KG_LK_name)));
	json_object_object_add(l, "protocol", json_object_new_string(opt(&f, KG_LK_protocol)));
	json_object_object_add(l, "bind", json_object_new_string(
			opt(&f, KG_LK_bind) ? opt(&f, KG_LK_bind) : KG_CTL_DEFAULT_BIND));
	json_object_object_add(l, "port", json_object_new_int64((int64_t)p));
	/* No --backend: the listener names a group (--backend-group,
	 * --default-group with --routes); kgated says what is missing. */
	if (f.nmulti > 0) {
		backends = json_object_new_array();
		json_object_object_add(l, "backends", backends);
	}
	if (put_settable("create", &f, l) < 0)
		goto fail;
	for (int i = 0; i < f.nmulti; i++) {
		json_object *m = kg_backend_spec("listener", "create", f.multi[i]);
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

/* An sni entry as one line: "NAMES certificate=C ca=A mutual_auth=M
 * access_rules=R,.. access_default=D policy=own|listener". */
static void print_sni_entry(size_t i, json_object *e)
{
	json_object *v;
	printf("sni[%zu]:", i);
	json_object_object_foreach(e, key, val) {
		if (!val)
			continue;
		bool list = json_object_is_type(val, json_type_array);
		printf(strcmp(key, "names") == 0 ? " " : " %s=", key);
		for (size_t n = 0; list && n < json_object_array_length(val); n++) {
			v = json_object_array_get_idx(val, n);
			printf("%s%s", n ? "," : "", json_object_get_string(v));
		}
		if (!list)
			printf("%s", json_object_get_string(val));
	}
	printf("\n");
}

/* listener show's settings, with the sni entries one per line. */
static int print_listener(const struct kg_cli *cli, json_object *obj)
{
	json_object *sni = NULL;
	if (cli->out == KG_OUT_JSON || !json_object_object_get_ex(obj, "sni", &sni) || !sni)
		return kg_print_object(cli, obj);
	json_object_get(sni);
	json_object_object_del(obj, "sni");
	int st = kg_print_object(cli, obj);
	for (size_t i = 0; i < json_object_array_length(sni); i++)
		print_sni_entry(i, json_object_array_get_idx(sni, i));
	json_object_put(sni);
	return st;
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
	if (st)
		return st;
	/* Text: the settings as lines, then the members as a table, then
	 * each backend group the listener sends to with its members. */
	json_object *groups = NULL;
	if (cli->out != KG_OUT_JSON && json_object_object_get_ex(res, "groups", &groups)) {
		json_object_get(groups);
		json_object_object_del(res, "groups");
	}
	st = kg_print_object_and_table(cli, res, "members", cols, sizeof(cols) / sizeof(cols[0]),
				       print_listener);
	size_t n_groups = groups ? json_object_array_length(groups) : 0;
	for (size_t i = 0; st == KG_EXIT_OK && i < n_groups; i++) {
		json_object *g = json_object_array_get_idx(groups, i), *name = NULL, *members = NULL;
		json_object_object_get_ex(g, "name", &name);
		json_object_object_get_ex(g, "members", &members);
		printf("\ngroup %s:\n", json_object_get_string(name));
		st = kg_print_rows(cli, json_object_get(members), cols, sizeof(cols) / sizeof(cols[0]));
	}
	json_object_put(groups);
	return st;
}

static int listener_update(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	int st = parse_flags(cli, argc, argv, true, &f);
	if (st)
		return st < 0 ? KG_EXIT_OK : st;
	json_object *set = json_object_new_object();
	if (put_settable("update", &f, set) < 0) {
		json_object_put(set);
		return KG_EXIT_USAGE;
	}
	if (json_object_object_length(set) == 0) {
		json_object_put(set);
		return kg_ctl_fail(KG_EXIT_USAGE, "listener update: nothing to change (see 'kgatectl "
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
	[CREATE] = {"create", listener_create, create_text.usage, "create and start a listener"},
	{"list", listener_list, "[-o json]", "listeners: address, state, certificates, backends, active connections"},
	{"show", listener_show, "NAME [-o json]", "settings, counters and each backend's weight and state"},
	[UPDATE] = {"update", listener_update, update_text.usage,
		    "change settings; new connections use them, open ones keep theirs"},
	{"stop", listener_stop, "NAME", "stop accepting (open connections finish); kept in the state"},
	{"start", listener_start, "NAME", "accept again"},
	{"delete", listener_delete, "NAME", "stop accepting and remove; open connections finish"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_listener(struct kg_cli *cli, int argc, char **argv)
{
	write_usage();
	return kg_cmd_select("listener", listener_cmds, cli, argc, argv);
}
