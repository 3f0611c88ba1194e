/* kgatectl ca VERB: option parsing and output for the private CA; the
 * work itself is in pki.c. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "client.h"
#include "cmd.h"
#include "pki.h"
#include "subject.h"

struct ca_args {
	const char *dir, *subject, *key, *days, *serial, *digest, *type, *san, *ocsp_url, *crl_url,
		*out;
	const char *key_pass_file, *p12, *p12_pass_file, *ca_pass_file;
	const char *cert, *ca, *pass_file, *reason, *output;
	bool force, help, push;
};

struct ca_opt {
	const char *name;
	size_t off; /* of a const char * in struct ca_args */
};

#define OPT(n, field) {n, offsetof(struct ca_args, field)}
static const struct ca_opt ca_opts[] = {
	OPT("dir", dir), OPT("subject", subject), OPT("key", key), OPT("days", days),
	OPT("serial", serial), OPT("digest", digest), OPT("type", type), OPT("san", san),
	OPT("ocsp-url", ocsp_url),
	OPT("crl-url", crl_url),
	OPT("out", out), OPT("key-pass-file", key_pass_file), OPT("p12", p12),
	OPT("p12-pass-file", p12_pass_file), OPT("ca-pass-file", ca_pass_file),
	OPT("cert", cert), OPT("ca", ca), OPT("pass-file", pass_file), OPT("reason", reason),
	OPT("output", output),
};
#define NOPTS (sizeof(ca_opts) / sizeof(ca_opts[0]))
#define OPT_FORCE ((int)NOPTS)
#define OPT_HELP ((int)NOPTS + 1)
#define OPT_PUSH ((int)NOPTS + 2)

static int verb_usage(const char *verb, const char *usage, const char *summary, int status)
{
	FILE *f = status ? stderr : stdout;

	fprintf(f, "Usage: kgatectl ca %s %s\n  %s\n", verb, usage, summary);
	return status;
}

/* Parses argv (argv[0] is the verb) into a; only options named in
 * allowed (" name name ... ") are accepted. */
static int ca_parse(const struct kg_cmd *cmd, const char *allowed, struct kg_cli *cli,
		    int argc, char **argv, struct ca_args *a)
{
	struct option lopts[NOPTS + 4];
	const char *bad = NULL;
	char want[32];
	int c;

	memset(a, 0, sizeof(*a));
	for (size_t i = 0; i < NOPTS; i++)
		lopts[i] = (struct option){ca_opts[i].name, required_argument, NULL, (int)i};
	lopts[NOPTS] = (struct option){"force", no_argument, NULL, OPT_FORCE};
	lopts[NOPTS + 1] = (struct option){"help", no_argument, NULL, OPT_HELP};
	lopts[NOPTS + 2] = (struct option){"push", no_argument, NULL, OPT_PUSH};
	lopts[NOPTS + 3] = (struct option){NULL, 0, NULL, 0};
	optind = 0; /* GNU getopt: full reset for a second parse */
	opterr = 0;
	while ((c = kg_getopt(argc, argv, "+o:h", lopts, &bad)) != -1) {
		const char *name;
		if (c == 'o')
			c = (int)NOPTS - 1; /* --output */
		else if (c == 'h')
			c = OPT_HELP;
		if (c == '?')
			return kg_ctl_fail(KG_EXIT_USAGE, "ca %s: %s: unknown option or missing value (see 'kgatectl ca %s --help')",
				       cmd->name, bad, cmd->name);
		name = c == OPT_FORCE ? "force" : c == OPT_HELP ? "help" : c == OPT_PUSH ? "push"
										: ca_opts[c].name;
		snprintf(want, sizeof(want), " %s ", name);
		if (c != OPT_HELP && (c == (int)NOPTS - 1 ? false : !strstr(allowed, want)))
			return kg_ctl_fail(KG_EXIT_USAGE, "ca %s: --%s: not an option of this verb (see 'kgatectl ca %s --help')",
				       cmd->name, name, cmd->name);
		if (c == OPT_FORCE)
			a->force = true;
		else if (c == OPT_PUSH)
			a->push = true;
		else if (c == OPT_HELP)
			a->help = true;
		else
			*(const char **)((char *)a + ca_opts[c].off) = optarg;
	}
	if (a->help)
		return verb_usage(cmd->name, cmd->usage, cmd->summary, KG_EXIT_OK) - 1;
	if (optind < argc)
		return kg_ctl_fail(KG_EXIT_USAGE, "ca %s: '%s': unexpected argument", cmd->name, argv[optind]);
	if (a->output && kg_output_parse(a->output, &cli->out) != 0)
		return kg_ctl_fail(KG_EXIT_USAGE, "ca %s: -o %s: unknown output mode (text, json)",
			       cmd->name, a->output);
	return 0;
}

/* ca_parse's result: 0 go on, -1 help was printed (exit 0), >0 exit status. */
#define PARSE_OR_RETURN(cmd, allowed, cli, argc, argv, a)                           \
	do {                                                                        \
		int st_ = ca_parse(cmd, allowed, cli, argc, argv, a);               \
		if (st_ != 0)                                                       \
			return st_ < 0 ? KG_EXIT_OK : st_;                          \
	} while (0)

static int need(const char *verb, const char *value, const char *flag)
{
	if (value)
		return 0;
	return kg_ctl_fail(KG_EXIT_USAGE, "ca %s: %s is required (see 'kgatectl ca %s --help')", verb,
		       flag, verb);
}

static int fail_err(const struct kg_err *err)
{
	return kg_ctl_fail(KG_EXIT_ERROR, "%s", err->msg);
}

static int print_object(struct kg_cli *cli, json_object *obj)
{
	int ret = kg_output_object(stdout, cli->out, obj);

	json_object_put(obj);
	return ret ? kg_ctl_fail(KG_EXIT_ERROR, "stdout: write failed") : KG_EXIT_OK;
}

static json_object *json_str(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

static json_object *json_asn1_time(const char *text)
{
	time_t t;

	return kg_time_from_text(text, &t) == 0 ? kg_json_time(t) : json_str(text);
}

static const struct kg_cmd ca_cmds[];

static const struct kg_cmd *self(const char *name)
{
	for (const struct kg_cmd *c = ca_cmds; c->name; c++)
		if (strcmp(c->name, name) == 0)
			return c;
	return NULL;
}

/* ---- verbs ---- */

static int ca_init(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_ca_init_opts o = {.md = EVP_sha256(), .days = 3650};
	struct kg_err err = {""};
	struct ca_args a;
	char *pass = NULL;
	int st;

	PARSE_OR_RETURN(self("init"), " dir subject key days serial digest key-pass-file force ",
			cli, argc, argv, &a);
	if ((st = need("init", a.dir, "--dir")) || (st = need("init", a.subject, "--subject")))
		return st;
	o.key = (struct kg_key_spec){EVP_PKEY_EC, NID_X9_62_prime256v1};
	if ((a.key && kg_key_spec_parse(a.key, &o.key, &err)) ||
	    (a.digest && kg_digest_parse(a.digest, &o.md, &err)) ||
	    (a.days && kg_days_parse(a.days, 0, true, &o.days, &err)))
		return fail_err(&err);
	if (a.key_pass_file && !(pass = kg_pass_read(a.key_pass_file, "--key-pass-file", true, &err)))
		return fail_err(&err);
	o.dir = a.dir;
	o.subject = a.subject;
	o.serial = a.serial;
	o.key_pass = pass;
	o.force = a.force;
	st = kg_ca_init(&o, &err);
	kg_pass_free(pass);
	if (st)
		return fail_err(&err);
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "dir", json_str(a.dir));
	json_object_object_add(obj, "subject", json_str(a.subject));
	json_object_object_add(obj, "key", json_str(a.key ? a.key : "ec-p256"));
	json_object_object_add(obj, "days", json_object_new_int(o.days));
	json_object_object_add(obj, "key_encrypted", json_object_new_boolean(o.key_pass != NULL));
	return print_object(cli, obj);
}

/* Reads the CA key's passphrase option: a file, or else a prompt if needed. */
static int ca_pass_from(const char *file, struct kg_ca_pass *cp, char **pass, struct kg_err *err)
{
	*cp = (struct kg_ca_pass){NULL, true};
	*pass = NULL;
	if (!file)
		return 0;
	*pass = kg_pass_read(file, "--ca-pass-file", false, err);
	if (!*pass)
		return -1;
	cp->pass = *pass;
	return 0;
}

static int ca_issue(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_issue_opts o = {.md = EVP_sha256(), .days = 365};
	struct kg_issue_result res;
	struct kg_err err = {""};
	char *key_pass = NULL, *p12_pass = NULL, *ca_pass = NULL;
	struct ca_args a;
	int st;

	PARSE_OR_RETURN(self("issue"),
			" dir type subject san ocsp-url crl-url days key digest out key-pass-file p12 p12-pass-file ca-pass-file force ",
			cli, argc, argv, &a);
	if ((st = need("issue", a.dir, "--dir")) || (st = need("issue", a.type, "--type")) ||
	    (st = need("issue", a.subject, "--subject")) || (st = need("issue", a.out, "--out")))
		return st;
	if (strcmp(a.type, "client") == 0)
		o.type = KG_CERT_CLIENT;
	else if (strcmp(a.type, "server") == 0)
		o.type = KG_CERT_SERVER;
	else if (strcmp(a.type, "peer") == 0)
		o.type = KG_CERT_PEER;
	else
		return kg_ctl_fail(KG_EXIT_USAGE, "ca issue: --type %s: must be client, server or peer",
				   a.type);
	if (!a.p12 != !a.p12_pass_file)
		return kg_ctl_fail(KG_EXIT_USAGE, "ca issue: --p12 and --p12-pass-file go together");
	o.key = (struct kg_key_spec){EVP_PKEY_EC, NID_X9_62_prime256v1};
	if ((a.key && kg_key_spec_parse(a.key, &o.key, &err)) ||
	    (a.digest && kg_digest_parse(a.digest, &o.md, &err)) ||
	    (a.days && kg_days_parse(a.days, KG_LEAF_MAX_DAYS, a.force, &o.days, &err)))
		return fail_err(&err);
	st = KG_EXIT_ERROR;
	if (a.key_pass_file &&
	    !(key_pass = kg_pass_read(a.key_pass_file, "--key-pass-file", true, &err)))
		goto fail;
	if (a.p12_pass_file &&
	    !(p12_pass = kg_pass_read(a.p12_pass_file, "--p12-pass-file", true, &err)))
		goto fail;
	if (ca_pass_from(a.ca_pass_file, &o.ca_pass, &ca_pass, &err))
		goto fail;
	o.dir = a.dir;
	o.subject = a.subject;
	o.san = a.san;
	o.ocsp_url = a.ocsp_url;
	o.crl_url = a.crl_url;
	o.out = a.out;
	o.key_pass = key_pass;
	o.p12 = a.p12;
	o.p12_pass = p12_pass;
	o.force = a.force;
	if (kg_ca_issue(&o, &res, &err))
		goto fail;
	json_object *obj = json_object_new_object();
	char path[4200];
	json_object_object_add(obj, "serial", json_str(res.serial));
	json_object_object_add(obj, "type", json_str(a.type));
	json_object_object_add(obj, "subject", json_str(a.subject));
	json_object_object_add(obj, "not_after", json_asn1_time(res.not_after));
	snprintf(path, sizeof(path), "%s.pem", a.out);
	json_object_object_add(obj, "cert", json_str(path));
	snprintf(path, sizeof(path), "%s.key", a.out);
	json_object_object_add(obj, "key", json_str(path));
	json_object_object_add(obj, "p12", json_str(a.p12));
	st = print_object(cli, obj);
	goto free_pass;
fail:
	st = fail_err(&err);
free_pass:
	kg_pass_free(ca_pass);
	kg_pass_free(p12_pass);
	kg_pass_free(key_pass);
	return st;
}

static int ca_export_p12(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_err err = {""};
	char *key_pass = NULL, *pass = NULL;
	struct ca_args a;
	int st;

	PARSE_OR_RETURN(self("export-p12"), " cert key key-pass-file ca out pass-file force ", cli,
			argc, argv, &a);
	if ((st = need("export-p12", a.cert, "--cert")) || (st = need("export-p12", a.key, "--key")) ||
	    (st = need("export-p12", a.ca, "--ca")) || (st = need("export-p12", a.out, "--out")) ||
	    (st = need("export-p12", a.pass_file, "--pass-file")))
		return st;
	st = KG_EXIT_ERROR;
	if (a.key_pass_file &&
	    !(key_pass = kg_pass_read(a.key_pass_file, "--key-pass-file", false, &err)))
		goto fail;
	if (!(pass = kg_pass_read(a.pass_file, "--pass-file", true, &err)))
		goto fail;
	struct kg_p12_opts o = {a.cert, a.key, key_pass, a.ca, a.out, pass, a.force};
	if (kg_p12_export(&o, &err))
		goto fail;
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "p12", json_str(a.out));
	st = print_object(cli, obj);
	goto free_pass;
fail:
	st = fail_err(&err);
free_pass:
	kg_pass_free(pass);
	kg_pass_free(key_pass);
	return st;
}

static int ca_revoke(struct kg_cli *cli, int argc, char **argv)
{
	char serial[KG_SERIAL_HEX_MAX];
	struct kg_err err = {""};
	int reason = KG_REASON_NONE;
	struct ca_args a;
	int st;

	PARSE_OR_RETURN(self("revoke"), " dir serial cert reason ", cli, argc, argv, &a);
	if ((st = need("revoke", a.dir, "--dir")))
		return st;
	if (!a.serial == !a.cert)
		return kg_ctl_fail(KG_EXIT_USAGE, "ca revoke: give exactly one of --serial HEX and --cert FILE");
	if (a.reason) {
		reason = kg_reason_parse(a.reason);
		/* removeFromCRL only makes sense in delta CRLs. */
		if (reason < 0 || reason > KG_REASON_CERTIFICATE_HOLD)
			return kg_ctl_fail(KG_EXIT_USAGE,
				       "ca revoke: --reason %s: unknown (unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, certificateHold)",
				       a.reason);
	}
	if (kg_ca_revoke(a.dir, a.serial, a.cert, reason, serial, &err))
		return fail_err(&err);
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "revoked", json_str(serial));
	json_object_object_add(obj, "reason", json_str(reason == KG_REASON_NONE ? "unspecified"
										: kg_reason_name(reason)));
	json_object_object_add(obj, "note", json_str("publish a new CRL: kgatectl ca crl"));
	return print_object(cli, obj);
}

/* "AA:BB:..." SHA-256 of DIR/ca.pem's certificate, as `cert list` shows
 * a certificate entry's first certificate. 0, or an exit status after
 * saying why. */
static int ca_fingerprint(const char *dir, char *hex, size_t hexlen)
{
	char path[4096];
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	snprintf(path, sizeof(path), "%s/ca.pem", dir);
	FILE *f = fopen(path, "re");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	if (!x || X509_digest(x, EVP_sha256(), md, &len) != 1 || hexlen < 3 * (size_t)len) {
		X509_free(x);
		return kg_ctl_fail(KG_EXIT_ERROR, "ca crl: --push: cannot read the CA certificate "
				   "%s", path);
	}
	X509_free(x);
	for (unsigned i = 0; i < len; i++)
		snprintf(hex + 3 * i, 4, "%02X%s", md[i], i + 1 < len ? ":" : "");
	return 0;
}

static const char *row_str(json_object *row, const char *key)
{
	json_object *v = NULL;
	return json_object_object_get_ex(row, key, &v) && json_object_is_type(v, json_type_string)
		       ? json_object_get_string(v) : NULL;
}

/* --push: the CRL at crl_path goes, as cert.set_crl, to every ca
 * certificate of kgated (the control socket, or with --store the store
 * document) whose certificate is this CA's: matched by fingerprint, not
 * by name. Adds "pushed_to" (names) to out. 0, or an exit status after
 * saying why (no certificate uses the CA: nothing was sent). */
static int push_crl(struct kg_cli *cli, const char *dir, const char *crl_path, json_object *out)
{
	char fp[3 * EVP_MAX_MD_SIZE + 1];
	json_object *list = NULL;
	int st = ca_fingerprint(dir, fp, sizeof(fp));
	if (st || (st = kg_client_call(cli, "cert.list", NULL, &list)))
		return st;
	json_object *names = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		json_object *row = json_object_array_get_idx(list, i);
		const char *type = row_str(row, "type"), *sha = row_str(row, "sha256");
		if (type && strcmp(type, "ca") == 0 && sha && strcmp(sha, fp) == 0)
			json_object_array_add(names, json_object_new_string(row_str(row, "name")));
	}
	json_object_put(list);
	if (json_object_array_length(names) == 0) {
		json_object_put(names);
		return kg_ctl_fail(KG_EXIT_ERROR, "ca crl: --push: no ca certificate in kgated is the "
				   "CA in %s (SHA-256 %s); the CRL was written to %s, nothing was "
				   "sent (upload the CA with kgatectl cert upload --type ca)",
				   dir, fp, crl_path);
	}
	json_object_object_add(out, "pushed_to", names);
	for (size_t i = 0; i < json_object_array_length(names); i++) {
		json_object *args = kg_name_args(json_object_get_string(
			json_object_array_get_idx(names, i)));
		json_object *pem = kg_pem_arg("ca", "crl", crl_path), *res = NULL;
		if (!pem) {
			json_object_put(args);
			return KG_EXIT_ERROR;
		}
		json_object_object_add(args, "crl", pem);
		if ((st = kg_client_call(cli, "cert.set_crl", args, &res)))
			return st; /* said which; the ones before it have the CRL */
		json_object_put(res);
	}
	return 0;
}

static int ca_crl(struct kg_cli *cli, int argc, char **argv)
{
	struct kg_crl_opts o = {.md = EVP_sha256(), .days = 30};
	struct kg_crl_result res;
	struct kg_err err = {""};
	char *ca_pass = NULL;
	struct ca_args a;
	int st;

	PARSE_OR_RETURN(self("crl"), " dir out days digest ca-pass-file push ", cli, argc, argv, &a);
	if ((st = need("crl", a.dir, "--dir")) || (st = need("crl", a.out, "--out")))
		return st;
	if ((a.digest && kg_digest_parse(a.digest, &o.md, &err)) ||
	    (a.days && kg_days_parse(a.days, 0, true, &o.days, &err)) ||
	    ca_pass_from(a.ca_pass_file, &o.ca_pass, &ca_pass, &err))
		return fail_err(&err);
	o.dir = a.dir;
	o.out = a.out;
	st = kg_ca_crl(&o, &res, &err);
	kg_pass_free(ca_pass);
	if (st)
		return fail_err(&err);
	json_object *obj = json_object_new_object();
	json_object_object_add(obj, "crl", json_str(a.out));
	json_object_object_add(obj, "crl_number", json_str(res.number));
	json_object_object_add(obj, "revoked", json_object_new_int64((int64_t)res.revoked));
	json_object_object_add(obj, "next_update", kg_json_time(time(NULL) + (time_t)o.days * 86400));
	if (a.push && (st = push_crl(cli, a.dir, a.out, obj))) {
		json_object_put(obj);
		return st;
	}
	return print_object(cli, obj);
}

static int ca_list(struct kg_cli *cli, int argc, char **argv)
{
	static const struct kg_column cols[] = {
		{"serial", "SERIAL"}, {"type", "TYPE"}, {"status", "STATUS"},
		{"not_after", "NOT AFTER"}, {"subject", "SUBJECT"},
	};
	struct kg_err err = {""};
	struct kg_ca_list *list;
	struct ca_args a;
	int st;

	PARSE_OR_RETURN(self("list"), " dir ", cli, argc, argv, &a);
	if ((st = need("list", a.dir, "--dir")))
		return st;
	list = kg_ca_list_create(a.dir, time(NULL), &err);
	if (!list)
		return fail_err(&err);
	json_object *rows = json_object_new_array();
	for (size_t i = 0; i < list->n; i++) {
		const struct kg_ca_entry *e = &list->entries[i];
		json_object *row = json_object_new_object();
		json_object_object_add(row, "serial", json_str(e->serial));
		json_object_object_add(row, "subject", json_str(e->subject));
		json_object_object_add(row, "type", json_str(e->type));
		json_object_object_add(row, "not_after", kg_json_time(e->not_after));
		json_object_object_add(row, "status", json_str(e->status));
		if (e->revoked_at) {
			json_object_object_add(row, "revoked_at", kg_json_time(e->revoked_at));
			json_object_object_add(row, "reason", json_str(e->reason));
		}
		json_object_array_add(rows, row);
	}
	st = kg_output_rows(stdout, cli->out, rows, cols, sizeof(cols) / sizeof(cols[0]));
	json_object_put(rows);
	kg_ca_list_destroy(list);
	return st ? kg_ctl_fail(KG_EXIT_ERROR, "stdout: write failed") : KG_EXIT_OK;
}

static const struct kg_cmd ca_cmds[] = {
	{"init", ca_init,
	 "--dir DIR --subject '/C=../ST=../O=../OU=../CN=..' [--key ec-p256|ec-p384|rsa-2048|rsa-3072|rsa-4096] [--days 3650] [--serial HEX] [--digest sha256|sha384|sha512] [--key-pass-file F] [--force]",
	 "create a CA folder (also usable by 'openssl ca'); --force replaces an existing CA"},
	{"issue", ca_issue,
	 "--dir DIR --type client|server|peer --subject '/O=../CN=NAME' [--san DNS:a,IP:1.2.3.4] [--ocsp-url URL] [--crl-url URL] [--days 365] [--key TYPE] [--digest D] --out PREFIX [--key-pass-file F] [--p12 FILE --p12-pass-file F] [--ca-pass-file F] [--force]",
	 "new key + certificate: PREFIX.pem, PREFIX.key (0600), optional PKCS#12; C/ST/O/OU must match the CA"},
	{"export-p12", ca_export_p12,
	 "--cert F --key F [--key-pass-file F] --ca F --out FILE --pass-file F [--force]",
	 "bundle a certificate, its key and the CA certificate as PKCS#12 (AES-256, SHA-256 MAC)"},
	{"revoke", ca_revoke,
	 "--dir DIR (--serial HEX | --cert FILE) [--reason unspecified|keyCompromise|cACompromise|affiliationChanged|superseded|cessationOfOperation|certificateHold]",
	 "record a revocation in index.txt (then publish a CRL)"},
	{"crl", ca_crl, "--dir DIR --out FILE [--days 30] [--digest D] [--ca-pass-file F] [--push]",
	 "write a v2 CRL signed by the CA (crlNumber, authorityKeyIdentifier); --push: send it to kgated's ca certificates of this CA (--socket, or --store)"},
	{"list", ca_list, "--dir DIR [-o json]",
	 "issued certificates: serial, type, status (valid/revoked/expired), not-after, subject"},
	{NULL, NULL, NULL, NULL},
};

int kg_cmd_ca(struct kg_cli *cli, int argc, char **argv)
{
	return kg_cmd_select("ca", ca_cmds, cli, argc, argv);
}
