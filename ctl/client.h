/* kgatectl's side of the control socket (include/kgate/control.h), and the
 * option parsing shared by the verbs that talk to kgated. */
#ifndef KG_CTL_CLIENT_H
#define KG_CTL_CLIENT_H

#include <json-c/json.h>

#include "cmd.h"

#define KG_DEFAULT_SOCKET "/var/lib/kgate/" "control.sock"

/* Sends one request (args consumed; NULL = none) and waits for the reply;
 * with --store (cli->store.url) the request runs on the document in the
 * store instead (store_verbs.h), with the same replies.
 * On success returns KG_EXIT_OK with the reply's result in *result (a new
 * reference); otherwise prints "kgatectl: <message> [<code>]" and returns
 * KG_EXIT_ERROR. */
int kg_client_call(const struct kg_cli *cli, const char *op, json_object *args,
		   json_object **result);

/* Options of one verb: "--name VALUE" / "--name=VALUE" for the names in
 * allowed (" a b c "), --flag alone for names in switches, one name that
 * may repeat (multi, NULL for none), and positional words. */
#define KG_FLAGS_MAX 24
struct kg_flags {
	const char *name[KG_FLAGS_MAX];
	const char *value[KG_FLAGS_MAX];
	int n;
	const char *pos[8];
	int npos;
	const char *multi[64];
	int nmulti;
};

/* "Usage: kgatectl WHAT USAGE" and the summary, on stdout for status 0,
 * else on stderr; returns status. WHAT is "object verb", or the object
 * alone for objects without verbs (status, stats). */
int kg_verb_help(const char *what, const struct kg_cmd *cmd, int status);

/* Parses argv (argv[0] is the verb). Returns 0 to go on, -1 after --help
 * was printed (exit 0), or an exit status after an error message. */
int kg_flags_parse(const char *object, const struct kg_cmd *cmd, struct kg_cli *cli,
		   int argc, char **argv, const char *allowed, const char *multi,
		   int min_pos, int max_pos, struct kg_flags *f);
const char *kg_flag(const struct kg_flags *f, const char *name);

/* Integer option value, strict; prints an error and returns -1 when bad. */
int kg_flag_uint(const char *object, const char *verb, const char *name, const char *text,
		 unsigned long max, unsigned long *out);

/* Reads a PEM file for an upload; prints the error and returns NULL. */
json_object *kg_pem_arg(const char *object, const char *verb, const char *path);

/* kg_client_call, then the result printed as an object. */
int kg_call_print(const struct kg_cli *cli, const char *op, json_object *args);
/* "HOST:PORT[,weight=W]" (a --backend of OBJECT VERB) → {"address": ...,
 * "weight": W}; prints the error and returns NULL when malformed. */
json_object *kg_backend_spec(const char *object, const char *verb, const char *text);
/* {"name": name} */
json_object *kg_name_args(const char *name);

/* Prints result (consumed): rows with cols in text mode, or an object. */
int kg_print_rows(const struct kg_cli *cli, json_object *rows, const struct kg_column *cols,
		  size_t ncols);
int kg_print_object(const struct kg_cli *cli, json_object *obj);
/* Prints obj (consumed) with print_rest; in text mode its array member key
 * comes after it as a table of cols (JSON mode prints obj whole). */
int kg_print_object_and_table(const struct kg_cli *cli, json_object *obj, const char *key,
			      const struct kg_column *cols, size_t ncols,
			      int (*print_rest)(const struct kg_cli *cli, json_object *obj));

#define KG_FLAGS_OR_RETURN(obj, cmd, cli, argc, argv, allowed, multi, minp, maxp, f)      \
	do {                                                                              \
		int st_ = kg_flags_parse(obj, cmd, cli, argc, argv, allowed, multi, minp, \
					 maxp, f);                                        \
		if (st_ != 0)                                                             \
			return st_ < 0 ? KG_EXIT_OK : st_;                                \
	} while (0)

#endif
