/* kgatectl backend VERB: members of a listener's own backends
 * (LISTENER HOST:PORT) or of a named backend group (--group NAME
 * HOST:PORT). */
#include <stdio.h>

#include "client.h"

static const struct kg_cmd backend_cmds[];
#define SELF(i) (&backend_cmds[i])

/* LISTENER HOST:PORT, or --group NAME HOST:PORT: *rest is the first
 * positional word after the member's address. NULL after a usage error. */
static json_object *member_args(const char *verb, const struct kg_flags *f, int *rest)
{
	const char *group = kg_flag(f, "group");
	int need = group ? 1 : 2;
	if (f->npos < need) {
		kg_ctl_fail(KG_EXIT_USAGE, "backend %s: expected %s (see 'kgatectl backend %s "
			    "--help')", verb, group ? "HOST:PORT after --group NAME" :
			    "LISTENER HOST:PORT, or --group NAME HOST:PORT", verb);
		return NULL;
	}
	json_object *args = json_object_new_object();
	json_object_object_add(args, group ? "group" : "listener",
			       json_object_new_string(group ? group : f->pos[0]));
	json_object_object_add(args, "address", json_object_new_string(f->pos[need - 1]));
	*rest = need;
	return args;
}

static int call(struct kg_cli *cli, const char *op, json_object *args)
{
	json_object *res;
	int st = kg_client_call(cli, op, args, &res);
	if (st)
		return st;
	json_object_put(res);
	if (cli->out == KG_OUT_JSON)
		printf("{\"ok\": true}\n");
	return KG_EXIT_OK;
}

static int weight_arg(const char *verb, const char *text, json_object *args)
{
	unsigned long w;
	if (kg_flag_uint("backend", verb, "weight", text, 1000000, &w) < 0)
		return -1;
	json_object_object_add(args, "weight", json_object_new_int64((int64_t)w));
	return 0;
}

static int backend_add(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	int rest;
	KG_FLAGS_OR_RETURN("backend", SELF(0), cli, argc, argv, " weight group ", NULL, 1, 2, &f);
	json_object *args = member_args("add", &f, &rest);
	if (!args)
		return KG_EXIT_USAGE;
	if (f.npos > rest) {
		json_object_put(args);
		return kg_ctl_fail(KG_EXIT_USAGE, "backend add: unexpected \"%s\"", f.pos[rest]);
	}
	if (kg_flag(&f, "weight") && weight_arg("add", kg_flag(&f, "weight"), args) < 0) {
		json_object_put(args);
		return KG_EXIT_USAGE;
	}
	return call(cli, "backend.add", args);
}

/* Verbs that take LISTENER HOST:PORT (or --group NAME HOST:PORT) and
 * nothing else. */
static int member_verb(struct kg_cli *cli, int argc, char **argv, int self, const char *op)
{
	struct kg_flags f;
	int rest;
	KG_FLAGS_OR_RETURN("backend", SELF(self), cli, argc, argv, " group ", NULL, 1, 2, &f);
	json_object *args = member_args(backend_cmds[self].name, &f, &rest);
	if (!args)
		return KG_EXIT_USAGE;
	if (f.npos > rest) {
		json_object_put(args);
		return kg_ctl_fail(KG_EXIT_USAGE, "backend %s: unexpected \"%s\"",
				   backend_cmds[self].name, f.pos[rest]);
	}
	return call(cli, op, args);
}

static int backend_remove(struct kg_cli *cli, int argc, char **argv)
{
	return member_verb(cli, argc, argv, 1, "backend.remove");
}

static int backend_set_weight(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	int rest;
	KG_FLAGS_OR_RETURN("backend", SELF(2), cli, argc, argv, " group ", NULL, 2, 3, &f);
	json_object *args = member_args("set-weight", &f, &rest);
	if (!args)
		return KG_EXIT_USAGE;
	if (f.npos != rest + 1) {
		json_object_put(args);
		return kg_ctl_fail(KG_EXIT_USAGE, "backend set-weight: expected the weight after "
				   "HOST:PORT");
	}
	if (weight_arg("set-weight", f.pos[rest], args) < 0) {
		json_object_put(args);
		return KG_EXIT_USAGE;
	}
	return call(cli, "backend.set_weight", args);
}

static int backend_drain(struct kg_cli *cli, int argc, char **argv)
{
	return member_verb(cli, argc, argv, 3, "backend.drain");
}

static int backend_disable(struct kg_cli *cli, int argc, char **argv)
{
	return member_verb(cli, argc, argv, 4, "backend.disable");
}

static int backend_enable(struct kg_cli *cli, int argc, char **argv)
{
	return member_verb(cli, argc, argv, 5, "backend.enable");
}

static const struct kg_cmd backend_cmds[] = {
	{"add", backend_add, "LISTENER|--group NAME HOST:PORT [--weight W]",
	 "add a member (weight 1-256, default 1); new connections may use it at once"},
	{"remove", backend_remove, "LISTENER|--group NAME HOST:PORT",
	 "remove a member: no new connections; open ones finish"},
	{"set-weight", backend_set_weight, "LISTENER|--group NAME HOST:PORT W",
	 "change a member's weight (1-256)"},
	{"drain", backend_drain, "LISTENER|--group NAME HOST:PORT",
	 "no new connections to the member; open ones finish (kept across restarts)"},
	{"disable", backend_disable, "LISTENER|--group NAME HOST:PORT",
	 "take the member out of rotation and close its open connections (kept across restarts)"},
	{"enable", backend_enable, "LISTENER|--group NAME HOST:PORT",
	 "end a drain or disable: the member takes connections again"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_backend(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("backend", backend_cmds, cli, argc, argv);
}
