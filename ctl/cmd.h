/* kgatectl's object/verb dispatch (the bpftool way): each object has a
 * table of verbs matched exactly, its own help, and parses its verbs'
 * options itself. Commands print errors as one "kgatectl: what: why"
 * line and return an exit status. */
#ifndef KG_CTL_CMD_H
#define KG_CTL_CMD_H

#include <getopt.h>
#include <stdbool.h>

#include "output.h"

enum { KG_EXIT_OK = 0, KG_EXIT_ERROR = 1, KG_EXIT_USAGE = 2 };

struct kg_cli {
	enum kg_output_mode out;
	const char *socket; /* control socket; NULL = $KGATE_SOCKET or the default */
	struct {
		const char *url;           /* --store etcd://HOST:PORT[,...]/PREFIX */
		const char *cert, *key, *ca; /* etcd client TLS */
		const char *kek;           /* --store-kek */
		/* --expect-revision: a write happens only if PREFIX/state is
		 * still at this revision; -1: the revision read first. */
		long long expect_revision;
	} store;
};

struct kg_cmd {
	const char *name;
	int (*run)(struct kg_cli *cli, int argc, char **argv);
	const char *usage;   /* options, after "kgatectl OBJECT VERB" */
	const char *summary; /* one line */
};

/* Runs the entry of cmds (ended by a NULL name) named argv[0], exactly;
 * "help", "-h", "--help" and no verb print the object's help. */
int kg_cmd_select(const char *object, const struct kg_cmd *cmds, struct kg_cli *cli,
		  int argc, char **argv);
void kg_cmd_help(FILE *f, const char *object, const struct kg_cmd *cmds);

/* getopt_long without GNU's abbreviations ("--key-pass" must not mean
 * "--key-pass-file"). On '?' (unknown, abbreviated, or missing value)
 * *bad names the offending word. */
int kg_getopt(int argc, char **argv, const char *shortopts, const struct option *lopts,
	      const char **bad);

/* "kgatectl: fmt\n" on stderr; returns status for `return kg_ctl_fail(...)`. */
int kg_ctl_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Objects. */
int kg_cmd_ca(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_cert(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_listener(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_backend(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_group(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_status(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_upgrade(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_stats(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_store(struct kg_cli *cli, int argc, char **argv);
int kg_cmd_fleet(struct kg_cli *cli, int argc, char **argv);

#endif
