/* kgatectl backend VERB: members of a listener's backend group. */
#include <stdio.h>

#include "client.h"

static const struct kg_cmd backend_cmds[];
#define SELF(i) (&backend_cmds[i])

static json_object *member_args(const struct kg_flags *f)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "listener", json_object_new_string(f->pos[0]));
	json_object_object_add(args, "address", json_object_new_string(f->pos[1]));
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
	KG_FLAGS_OR_RETURN("backend", SELF(0), cli, argc, argv, " weight ", NULL, 2, 2, &f);
	json_object *args = member_args(&f);
	if (kg_flag(&f, "weight") && weight_arg("add", kg_flag(&f, "weight"), args) < 0) {
		json_object_put(args);
		return KG_EXIT_USAGE;
	}
	return call(cli, "backend.add", args);
}

/* Verbs that take LISTENER HOST:PORT and nothing else. */
static int member_verb(struct kg_cli *cli, int argc, char **argv, int self, const char *op)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("backend", SELF(self), cli, argc, argv, " ", NULL, 2, 2, &f);
	return call(cli, op, member_args(&f));
}

static int backend_remove(struct kg_cli *cli, int argc, char **argv)
{
	return member_verb(cli, argc, argv, 1, "backend.remove");
}

static int backend_set_weight(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("backend", SELF(2), cli, argc, argv, " ", NULL, 3, 3, &f);
	json_object *args = member_args(&f);
	if (weight_arg("set-weight", f.pos[2], args) < 0) {
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
	{"add", backend_add, "LISTENER HOST:PORT [--weight W]",
	 "add a member (weight 1-256, default 1); new connections may use it at once"},
	{"remove", backend_remove, "LISTENER HOST:PORT",
	 "remove a member: no new connections; open ones finish"},
	{"set-weight", backend_set_weight, "LISTENER HOST:PORT W", "change a member's weight (1-256)"},
	{"drain", backend_drain, "LISTENER HOST:PORT",
	 "no new connections to the member; open ones finish (kept across restarts)"},
	{"disable", backend_disable, "LISTENER HOST:PORT",
	 "take the member out of rotation and close its open connections (kept across restarts)"},
	{"enable", backend_enable, "LISTENER HOST:PORT",
	 "end a drain or disable: the member takes connections again"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_backend(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("backend", backend_cmds, cli, argc, argv);
}
