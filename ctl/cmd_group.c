/* kgatectl group VERB: named backend groups (the cloud consoles' server
 * groups) that listeners send to with backend-group, default-group and
 * routes. Members are changed with kgatectl backend ... --group NAME. */
#include <stdio.h>
#include <string.h>

#include "client.h"

static const struct kg_cmd group_cmds[];
#define SELF(i) (&group_cmds[i])

/* --health-check JSON and --scheduler into obj; on update "none" removes
 * the health check. -1 after an error. */
static int put_settings(const char *verb, const struct kg_flags *f, json_object *obj)
{
	const char *hc = kg_flag(f, "health-check"), *sched = kg_flag(f, "scheduler");
	if (hc && strcmp(verb, "update") == 0 && strcmp(hc, "none") == 0) {
		json_object_object_add(obj, "health_check", NULL);
	} else if (hc) {
		json_object *j = json_tokener_parse(hc);
		if (!json_object_is_type(j, json_type_object)) {
			json_object_put(j);
			kg_ctl_fail(KG_EXIT_USAGE, "group %s: --health-check: expected a JSON "
				    "object%s (see 'kgatectl group %s --help')", verb,
				    strcmp(verb, "update") == 0 ? " or none" : "", verb);
			return -1;
		}
		json_object_object_add(obj, "health_check", j);
	}
	if (sched)
		/* weighted round robin is rr with member weights */
		json_object_object_add(obj, "scheduler", json_object_new_string(
				strcmp(sched, "wrr") == 0 ? "rr" : sched));
	return 0;
}

static int group_create(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("group", SELF(0), cli, argc, argv, " health-check scheduler ", "backend",
			   1, 1, &f);
	if (f.nmulti == 0)
		return kg_ctl_fail(KG_EXIT_USAGE, "group create: at least one --backend is required");
	json_object *g = json_object_new_object(), *backends = json_object_new_array();
	json_object_object_add(g, "backends", backends);
	for (int i = 0; i < f.nmulti; i++) {
		json_object *m = kg_backend_spec("group", "create", f.multi[i]);
		if (!m) {
			json_object_put(g);
			return KG_EXIT_USAGE;
		}
		json_object_array_add(backends, m);
	}
	if (put_settings("create", &f, g) < 0) {
		json_object_put(g);
		return KG_EXIT_USAGE;
	}
	json_object *args = kg_name_args(f.pos[0]);
	json_object_object_add(args, "group", g);
	return kg_call_print(cli, "group.create", args);
}

static int group_list(struct kg_cli *cli, int argc, char **argv)
{
	static const struct kg_column cols[] = {
		{"name", "NAME"}, {"scheduler", "SCHEDULER"}, {"health_check", "CHECK"},
		{"backends", "BACKENDS"}, {"used_by", "USED BY"}};
	struct kg_flags f;
	json_object *res;
	KG_FLAGS_OR_RETURN("group", SELF(1), cli, argc, argv, " ", NULL, 0, 0, &f);
	int st = kg_client_call(cli, "group.list", NULL, &res);
	return st ? st : kg_print_rows(cli, res, cols, sizeof(cols) / sizeof(cols[0]));
}

static int group_show(struct kg_cli *cli, int argc, char **argv)
{
	static const struct kg_column cols[] = {
		{"address", "BACKEND"}, {"weight", "WEIGHT"}, {"state", "STATE"},
		{"status", "HEALTH"}, {"in_state_s", "FOR(S)"}, {"last_check", "LAST CHECK"},
		{"active", "ACTIVE"}};
	struct kg_flags f;
	json_object *res;
	KG_FLAGS_OR_RETURN("group", SELF(2), cli, argc, argv, " ", NULL, 1, 1, &f);
	int st = kg_client_call(cli, "group.show", kg_name_args(f.pos[0]), &res);
	return st ? st : kg_print_object_and_table(cli, res, "members", cols,
						   sizeof(cols) / sizeof(cols[0]), kg_print_object);
}

static int group_update(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("group", SELF(3), cli, argc, argv, " health-check scheduler ", NULL, 1, 1,
			   &f);
	json_object *set = json_object_new_object();
	if (put_settings("update", &f, set) < 0) {
		json_object_put(set);
		return KG_EXIT_USAGE;
	}
	if (json_object_object_length(set) == 0) {
		json_object_put(set);
		return kg_ctl_fail(KG_EXIT_USAGE, "group update: nothing to change (--health-check, "
				   "--scheduler)");
	}
	json_object *args = kg_name_args(f.pos[0]);
	json_object_object_add(args, "set", set);
	return kg_call_print(cli, "group.update", args);
}

static int group_delete(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("group", SELF(4), cli, argc, argv, " ", NULL, 1, 1, &f);
	return kg_call_print(cli, "group.delete", kg_name_args(f.pos[0]));
}

static const struct kg_cmd group_cmds[] = {
	{"create", group_create,
	 "NAME --backend HOST:PORT[,weight=W] ... [--health-check JSON] [--scheduler rr|wrr]",
	 "create a backend group; listeners send to it with --backend-group, --default-group "
	 "or --routes"},
	{"list", group_list, "[-o json]", "backend groups: members, check, the listeners using each"},
	{"show", group_show, "NAME [-o json]", "settings and each member's weight, state and health"},
	{"update", group_update, "NAME [--health-check JSON|none] [--scheduler rr|wrr]",
	 "change the health check or scheduler; members keep their state"},
	{"delete", group_delete, "NAME", "remove a group no listener uses"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_group(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("group", group_cmds, cli, argc, argv);
}
