/* kgatectl: the command-line tool for kgate. Objects ("ca" runs locally;
 * "cert", "listener", "backend", "status", "stats", "upgrade" talk to kgated over its
 * control socket) each bring a verb table; this file routes the first word
 * to them and handles the global options. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>

#include "client.h"
#include "cmd.h"

#ifndef KG_VERSION
#define KG_VERSION "0.1.0"
#endif

struct object {
	const char *name;
	int (*run)(struct kg_cli *cli, int argc, char **argv);
	const char *summary;
};

static const struct object objects[] = {
	{"ca", kg_cmd_ca, "private CA: init, issue, export-p12, revoke, crl, list"},
	{"cert", kg_cmd_cert, "certificates in kgated: upload, list, show, replace, set-crl, delete"},
	{"listener", kg_cmd_listener, "listeners: create, list, show, update, stop, start, delete"},
	{"backend", kg_cmd_backend, "backend members of a listener or group: add, remove, set-weight, drain, enable"},
	{"group", kg_cmd_group, "backend groups (server groups): create, list, show, update, delete"},
	{"status", kg_cmd_status, "kgated version, uptime, workers, kernel features, connections"},
	{"stats", kg_cmd_stats, "counters: connections, handshakes, bytes, backends [--listener NAME]"},
	{"upgrade", kg_cmd_upgrade, "run the kgated binary now on disk in place of this one, refusing nothing"},
	{"store", kg_cmd_store, "the desired state in etcd (--store): push, show"},
	{"fleet", kg_cmd_fleet, "the instances that follow the store (--store): status"},
	{NULL, NULL, NULL},
};

int kg_ctl_fail(int status, const char *fmt, ...)
{
	va_list ap;

	fputs("kgatectl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return status;
}

int kg_getopt(int argc, char **argv, const char *shortopts, const struct option *lopts,
	      const char **bad)
{
	int at = optind ? optind : 1; /* the word getopt is about to read */
	int idx = -1;
	int c = getopt_long(argc, argv, shortopts, lopts, &idx);

	if (c == '?' || c == ':') {
		*bad = at < argc ? argv[at] : "?";
		return '?';
	}
	if (c == -1 || idx < 0 || at >= argc || strncmp(argv[at], "--", 2) != 0)
		return c;
	size_t len = strcspn(argv[at] + 2, "=");
	if (strlen(lopts[idx].name) != len || strncmp(argv[at] + 2, lopts[idx].name, len) != 0) {
		*bad = argv[at];
		return '?';
	}
	return c;
}

void kg_cmd_help(FILE *f, const char *object, const struct kg_cmd *cmds)
{
	fprintf(f, "Usage: kgatectl [-o text|json] %s VERB [OPTIONS]\n\nVerbs:\n", object);
	for (const struct kg_cmd *c = cmds; c->name; c++)
		fprintf(f, "  %s %s %s\n      %s\n", object, c->name, c->usage, c->summary);
	fprintf(f, "\n'kgatectl %s VERB --help' shows one verb.\n", object);
}

int kg_cmd_select(const char *object, const struct kg_cmd *cmds, struct kg_cli *cli,
		  int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "help") == 0 || strcmp(argv[0], "-h") == 0 ||
	    strcmp(argv[0], "--help") == 0) {
		kg_cmd_help(argc < 1 ? stderr : stdout, object, cmds);
		return argc < 1 ? KG_EXIT_USAGE : KG_EXIT_OK;
	}
	/* Exact names only: a prefix would change meaning as verbs are added. */
	for (const struct kg_cmd *c = cmds; c->name; c++)
		if (strcmp(argv[0], c->name) == 0)
			return c->run(cli, argc, argv);
	return kg_ctl_fail(KG_EXIT_USAGE, "%s %s: unknown verb (see 'kgatectl %s help')", object,
		       argv[0], object);
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: kgatectl [--socket PATH] [-o text|json] OBJECT VERB [OPTIONS]\n"
		"       kgatectl --store URL [--store-kek FILE] [--store-cert FILE --store-key FILE]\n"
		"                [--store-ca FILE] [--expect-revision N] [-o text|json]\n"
		"                cert|listener|backend|group|store|fleet VERB [OPTIONS]\n"
		"       kgatectl --help | --version\n\n"
		"--socket: kgated's control socket (default $KGATE_SOCKET, else %s)\n"
		"--store: the store, etcd://HOST:PORT[,HOST:PORT...]/PREFIX (https with\n"
		"  --store-ca/--store-cert/--store-key); --store-kek: the key-encryption key;\n"
		"  cert, listener, backend and group verbs then change the document in the store,\n"
		"  validated as kgated does; --expect-revision: write only if the document\n"
		"  is still at revision N\n\nObjects:\n",
		KG_DEFAULT_SOCKET);
	for (const struct object *o = objects; o->name; o++)
		fprintf(f, "  %-10s %s\n", o->name, o->summary);
	fprintf(f, "\n'kgatectl OBJECT help' lists an object's verbs.\n"
		   "Passphrases are read from files (or '-' to be asked on the terminal), never from arguments.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"output", required_argument, NULL, 'o'},
		{"socket", required_argument, NULL, 'S'},
		{"store", required_argument, NULL, 's'},
		{"store-kek", required_argument, NULL, 'K'},
		{"store-cert", required_argument, NULL, 'C'},
		{"store-key", required_argument, NULL, 'k'},
		{"store-ca", required_argument, NULL, 'A'},
		{"expect-revision", required_argument, NULL, 'E'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	struct kg_cli cli = {.out = KG_OUT_TEXT, .socket = getenv("KGATE_SOCKET"),
			     .store.expect_revision = -1};
	char *end;
	const char *bad = NULL;
	int c, status;

	opterr = 0;
	/* "+": stop at the object name; verbs parse their own options. */
	/* The store options have no short forms: the letters below are only
	 * getopt's return values ("+o:S:hV" accepts none of them). */
	while ((c = kg_getopt(argc, argv, "+o:S:hV", opts, &bad)) != -1) {
		switch (c) {
		case 's':
			cli.store.url = optarg;
			break;
		case 'K':
			cli.store.kek = optarg;
			break;
		case 'C':
			cli.store.cert = optarg;
			break;
		case 'k':
			cli.store.key = optarg;
			break;
		case 'A':
			cli.store.ca = optarg;
			break;
		case 'E':
			errno = 0;
			cli.store.expect_revision = strtoll(optarg, &end, 10);
			if (!*optarg || *end || errno || cli.store.expect_revision < 0)
				return kg_ctl_fail(KG_EXIT_USAGE, "--expect-revision %s: expected a "
						   "revision (0: PREFIX/state must not exist yet)",
						   optarg);
			break;
		case 'S':
			cli.socket = optarg;
			break;
		case 'o':
			if (kg_output_parse(optarg, &cli.out) != 0)
				return kg_ctl_fail(KG_EXIT_USAGE, "-o %s: unknown output mode (text, json)",
					       optarg);
			break;
		case 'h':
			usage(stdout);
			return KG_EXIT_OK;
		case 'V':
			printf("kgatectl %s\n", KG_VERSION);
			return KG_EXIT_OK;
		default:
			return kg_ctl_fail(KG_EXIT_USAGE, "%s: unknown option or missing value (see 'kgatectl --help')",
				       bad);
		}
	}
	if (cli.store.expect_revision >= 0 && !cli.store.url)
		return kg_ctl_fail(KG_EXIT_USAGE, "--expect-revision: only with --store");
	if (optind >= argc) {
		usage(stderr);
		return KG_EXIT_USAGE;
	}
	const char *name = argv[optind];
	if (strcmp(name, "help") == 0) {
		usage(stdout);
		return KG_EXIT_OK;
	}
	status = -1;
	for (const struct object *o = objects; o->name; o++)
		if (strcmp(name, o->name) == 0)
			status = o->run(&cli, argc - optind - 1, argv + optind + 1);
	if (status == -1)
		status = kg_ctl_fail(KG_EXIT_USAGE, "%s: unknown object (see 'kgatectl --help')", name);
	ERR_clear_error();
	return status;
}
