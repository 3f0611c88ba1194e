/* kgatectl cert VERB: certificates held by kgated (control socket). */
#include <stdio.h>
#include <string.h>

#include "client.h"

static const struct kg_cmd cert_cmds[];
#define SELF(i) (&cert_cmds[i])

/* --crl-expired, --crl-url and --crl-refresh-s, when given, as args'
 * crl_expired, crl_url, crl_refresh_s (kgated checks them). 0, or -1
 * after saying what is wrong. */
static int add_crl_options(const char *verb, json_object *args, const struct kg_flags *f)
{
	const char *v = kg_flag(f, "crl-expired"), *url = kg_flag(f, "crl-url");
	const char *refresh = kg_flag(f, "crl-refresh-s");
	unsigned long s;
	if (v)
		json_object_object_add(args, "crl_expired", json_object_new_string(v));
	if (url)
		json_object_object_add(args, "crl_url", json_object_new_string(url));
	if (refresh) {
		if (kg_flag_uint("cert", verb, "crl-refresh-s", refresh, 604800, &s) < 0)
			return -1;
		json_object_object_add(args, "crl_refresh_s", json_object_new_int64((int64_t)s));
	}
	return 0;
}

/* Adds the PEM file named by --flag to args as member key. */
static int add_pem(const char *verb, json_object *args, const char *key, const char *path)
{
	if (!path)
		return 0;
	json_object *pem = kg_pem_arg("cert", verb, path);
	if (!pem)
		return -1;
	json_object_object_add(args, key, pem);
	return 0;
}

static int cert_upload(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("cert", SELF(0), cli, argc, argv, " name type cert key crl crl-expired crl-url crl-refresh-s ", NULL, 0, 0, &f);
	const char *name = kg_flag(&f, "name"), *type = kg_flag(&f, "type");
	if (!name || !type || !kg_flag(&f, "cert"))
		return kg_ctl_fail(KG_EXIT_USAGE, "cert upload: --name, --type and --cert are required");
	json_object *args = json_object_new_object();
	json_object_object_add(args, "name", json_object_new_string(name));
	json_object_object_add(args, "type", json_object_new_string(type));
	if (add_pem("upload", args, "cert", kg_flag(&f, "cert")) < 0 ||
	    add_pem("upload", args, "key", kg_flag(&f, "key")) < 0 ||
	    add_pem("upload", args, "crl", kg_flag(&f, "crl")) < 0) {
		json_object_put(args);
		return KG_EXIT_ERROR;
	}
	if (add_crl_options("upload", args, &f) < 0) {
		json_object_put(args);
		return KG_EXIT_USAGE;
	}
	return kg_call_print(cli, "cert.upload", args);
}

static int cert_list(struct kg_cli *cli, int argc, char **argv)
{
	static const struct kg_column cols[] = {
		{"name", "NAME"}, {"type", "TYPE"}, {"not_after", "NOT AFTER"},
		{"days_left", "DAYS LEFT"}, {"crl_days_left", "CRL DAYS LEFT"}, {"crl_state", "CRL"},
		{"used_by", "USED BY"}, {"subject", "SUBJECT"}};
	struct kg_flags f;
	json_object *res;
	KG_FLAGS_OR_RETURN("cert", SELF(1), cli, argc, argv, " ", NULL, 0, 0, &f);
	int st = kg_client_call(cli, "cert.list", NULL, &res);
	if (st)
		return st;
	/* Tables show the users as "a,b" (JSON keeps the array). */
	for (size_t i = 0; cli->out == KG_OUT_TEXT && i < json_object_array_length(res); i++) {
		json_object *row = json_object_array_get_idx(res, i), *users = NULL;
		char joined[1024] = "";
		if (!json_object_object_get_ex(row, "used_by", &users))
			continue;
		for (size_t u = 0; u < json_object_array_length(users); u++) {
			size_t len = strlen(joined);
			snprintf(joined + len, sizeof(joined) - len, "%s%s", u ? "," : "",
				 json_object_get_string(json_object_array_get_idx(users, u)));
		}
		json_object_object_add(row, "used_by", joined[0] ? json_object_new_string(joined) : NULL);
	}
	return kg_print_rows(cli, res, cols, sizeof(cols) / sizeof(cols[0]));
}

static int cert_show(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("cert", SELF(2), cli, argc, argv, " ", NULL, 1, 1, &f);
	return kg_call_print(cli, "cert.show", kg_name_args(f.pos[0]));
}

static int cert_delete(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("cert", SELF(3), cli, argc, argv, " ", NULL, 1, 1, &f);
	return kg_call_print(cli, "cert.delete", kg_name_args(f.pos[0]));
}

static int cert_replace(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("cert", SELF(4), cli, argc, argv, " cert key crl crl-expired crl-url crl-refresh-s ", NULL, 1, 1, &f);
	if (!kg_flag(&f, "cert"))
		return kg_ctl_fail(KG_EXIT_USAGE, "cert replace: --cert is required");
	json_object *args = kg_name_args(f.pos[0]);
	if (add_pem("replace", args, "cert", kg_flag(&f, "cert")) < 0 ||
	    add_pem("replace", args, "key", kg_flag(&f, "key")) < 0 ||
	    add_pem("replace", args, "crl", kg_flag(&f, "crl")) < 0) {
		json_object_put(args);
		return KG_EXIT_ERROR;
	}
	if (add_crl_options("replace", args, &f) < 0) {
		json_object_put(args);
		return KG_EXIT_USAGE;
	}
	return kg_call_print(cli, "cert.replace", args);
}

static int cert_set_crl(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_flags f;
	KG_FLAGS_OR_RETURN("cert", SELF(5), cli, argc, argv, " crl crl-expired crl-url crl-refresh-s ", NULL, 1, 1, &f);
	if (!kg_flag(&f, "crl"))
		return kg_ctl_fail(KG_EXIT_USAGE, "cert set-crl: --crl is required");
	json_object *args = kg_name_args(f.pos[0]);
	if (add_pem("set-crl", args, "crl", kg_flag(&f, "crl")) < 0) {
		json_object_put(args);
		return KG_EXIT_ERROR;
	}
	if (add_crl_options("set-crl", args, &f) < 0) {
		json_object_put(args);
		return KG_EXIT_USAGE;
	}
	return kg_call_print(cli, "cert.set_crl", args);
}

static const struct kg_cmd cert_cmds[] = {
	{"upload", cert_upload,
	 "--name NAME --type server --cert FILE --key FILE | --name NAME --type ca --cert FILE [--crl FILE] [--crl-expired reject|warn] [--crl-url URL] [--crl-refresh-s S]",
	 "store a certificate in kgated (names: 1-80 of letters, digits, - / . _ *); PEM checked"},
	{"list", cert_list, "[-o json]", "certificates: name, type, not-after, days left (and to the CRL's next update), CRL state, listeners using it"},
	{"show", cert_show, "NAME [-o json]", "subject, issuer, SANs, validity, SHA-256 fingerprint, CRL, users"},
	{"delete", cert_delete, "NAME", "remove a certificate no listener uses"},
	{"replace", cert_replace, "NAME --cert FILE [--key FILE] [--crl FILE] [--crl-expired reject|warn] [--crl-url URL] [--crl-refresh-s S]",
	 "atomic swap: new handshakes use the new certificate, open connections keep theirs"},
	{"set-crl", cert_set_crl, "NAME --crl FILE [--crl-expired reject|warn] [--crl-url URL] [--crl-refresh-s S]",
	 "new CRL for a ca certificate: revoked clients are refused at their next handshake"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_cert(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("cert", cert_cmds, cli, argc, argv);
}
