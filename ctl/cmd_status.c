/* kgatectl status / stats / upgrade: what kgated runs, what it has done,
 * and its binary upgrade. All three are objects without verbs. */
#include <stdio.h>
#include <string.h>

#include "client.h"

static const struct kg_cmd status_cmd = {
	"status", NULL, "[-o json]",
	"version, uptime, workers, kernel features found, accept steering, connection counts"};
static const struct kg_cmd stats_cmd = {
	"stats", NULL, "[--listener NAME] [-o json]",
	"connections (total, active, per path), handshakes, bytes, backend failures, per listener"};

static const struct kg_cmd upgrade_cmd = {
	"upgrade", NULL, "[-o json]",
	"start the kgated binary now on disk in place of the running one, with the same "
	"sockets and state; returns once it serves (what systemctl reload runs)"};

static int print_json_or_text(const struct kg_cli *cli, json_object *res)
{
	if (cli->out == KG_OUT_JSON)
		return kg_print_object(cli, res);
	/* Text: one "section.key: value" line per number. */
	json_object_object_foreach(res, key, val) {
		if (json_object_is_type(val, json_type_object)) {
			json_object_object_foreach(val, k2, v2)
				printf("%s.%s: %s\n", key, k2, json_object_get_string(v2));
		} else if (json_object_is_type(val, json_type_array)) {
			for (size_t i = 0; i < json_object_array_length(val); i++)
				printf("%s[%zu]: %s\n", key, i,
				       json_object_to_json_string(json_object_array_get_idx(val, i)));
		} else if (val) {
			printf("%s: %s\n", key, json_object_get_string(val));
		}
	}
	json_object_put(res);
	return KG_EXIT_OK;
}

/* "kgatectl status help" answers like every other object's "help" (the
 * top-level help promises it for every object). */
static bool asks_help(int argc, char **argv)
{
	return argc >= 1 && strcmp(argv[0], "help") == 0;
}

/* argv[0] is the object name here: shift it so "--help" etc. parse. */
int kg_cmd_status(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	json_object *res;
	if (asks_help(argc, argv))
		return kg_verb_help("status", &status_cmd, KG_EXIT_OK);
	int st = kg_flags_parse("status", &status_cmd, cli, argc + 1, argv - 1, " ", NULL, 0, 0, &f);
	if (st)
		return st < 0 ? KG_EXIT_OK : st;
	st = kg_client_call(cli, "status", NULL, &res);
	/* Text: the facts as lines, then one row per worker's io_uring ring. */
	static const struct kg_column ring_cols[] = {
		{"worker", "WORKER"}, {"setup", "IO_URING SETUP"}, {"fallback", "FALLBACK"},
		{"features", "IO_URING FEATURES"}};
	return st ? st : kg_print_object_and_table(cli, res, "io_uring", ring_cols,
						   sizeof(ring_cols) / sizeof(ring_cols[0]),
						   print_json_or_text);
}

int kg_cmd_stats(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	if (asks_help(argc, argv))
		return kg_verb_help("stats", &stats_cmd, KG_EXIT_OK);
	json_object *res, *args = json_object_new_object();
	int st = kg_flags_parse("stats", &stats_cmd, cli, argc + 1, argv - 1, " listener ", NULL,
				0, 0, &f);
	if (st) {
		json_object_put(args);
		return st < 0 ? KG_EXIT_OK : st;
	}
	if (kg_flag(&f, "listener"))
		json_object_object_add(args, "listener", json_object_new_string(kg_flag(&f, "listener")));
	st = kg_client_call(cli, "stats", args, &res);
	return st ? st : print_json_or_text(cli, res);
}

int kg_cmd_upgrade(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	json_object *res;
	if (asks_help(argc, argv))
		return kg_verb_help("upgrade", &upgrade_cmd, KG_EXIT_OK);
	int st = kg_flags_parse("upgrade", &upgrade_cmd, cli, argc + 1, argv - 1, " ", NULL, 0, 0,
				&f);
	if (st)
		return st < 0 ? KG_EXIT_OK : st;
	st = kg_client_call(cli, "upgrade", NULL, &res);
	if (st)
		return st;
	if (cli->out == KG_OUT_JSON)
		return kg_print_object(cli, res);
	printf("kgated upgraded: pid %d took over from pid %d\n",
	       json_object_get_int(json_object_object_get(res, "pid")),
	       json_object_get_int(json_object_object_get(res, "from_pid")));
	json_object_put(res);
	return KG_EXIT_OK;
}
