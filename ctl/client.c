/* Control socket client and verb option parsing (client.h). */
#include "client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <kgate/control.h>
#include <kgate/sockio.h>

#include "fileio.h"
#include "store_verbs.h"

static char *recv_all(int fd, size_t *len)
{
	size_t cap = 65536;
	char *buf = malloc(cap);
	*len = 0;
	while (buf) {
		if (*len + 1 >= cap) {
			if (cap >= KG_CONTROL_MAX_REPLY) {
				free(buf);
				errno = EFBIG;
				return NULL;
			}
			char *grown = realloc(buf, cap * 2);
			if (!grown)
				break;
			buf = grown;
			cap *= 2;
		}
		ssize_t n = recv(fd, buf + *len, cap - 1 - *len, 0);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			int e = errno;
			free(buf);
			errno = e;
			return NULL;
		}
		if (n == 0) {
			buf[*len] = '\0';
			return buf;
		}
		*len += (size_t)n;
	}
	free(buf);
	errno = ENOMEM;
	return NULL;
}

/* Sends req to kgated's control socket; the reply in *reply. Prints the
 * error and returns an exit status when there is no reply. */
static int socket_request(const struct kg_cli *cli, json_object *req, json_object **reply)
{
	const char *path = cli->socket ? cli->socket : KG_DEFAULT_SOCKET;
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int status = KG_EXIT_ERROR;
	*reply = NULL;
	if (strlen(path) >= sizeof(sun.sun_path))
		return kg_ctl_fail(KG_EXIT_ERROR, "socket %s: path too long", path);
	strcpy(sun.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return kg_ctl_fail(KG_EXIT_ERROR, "cannot reach kgated at %s: %s (is it running with "
			       "--state-dir? use --socket PATH)", path, strerror(e));
	}
	const char *text = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
	size_t len = 0;
	char *reply_text = NULL;
	if (kg_send_all(fd, text, strlen(text)) < 0 || shutdown(fd, SHUT_WR) == -1) {
		kg_ctl_fail(KG_EXIT_ERROR, "sending to kgated at %s: %s", path, strerror(errno));
		goto out;
	}
	reply_text = recv_all(fd, &len);
	if (!reply_text) {
		kg_ctl_fail(KG_EXIT_ERROR, "reading kgated's reply: %s", strerror(errno));
		goto out;
	}
	*reply = json_tokener_parse(reply_text);
	status = KG_EXIT_OK;
out:
	free(reply_text);
	close(fd);
	return status;
}

/* With --store, the request runs on the document in the store
 * (store_verbs.h) instead: every verb's own code stays as it is. */
int kg_client_call(const struct kg_cli *cli, const char *op, json_object *args,
		   json_object **result)
{
	json_object *req = json_object_new_object(), *reply = NULL, *v = NULL;
	int status;
	*result = NULL;
	if (!req) {
		json_object_put(args);
		return kg_ctl_fail(KG_EXIT_ERROR, "out of memory");
	}
	json_object_object_add(req, "version", json_object_new_int(KG_CONTROL_VERSION));
	json_object_object_add(req, "op", json_object_new_string(op));
	json_object_object_add(req, "args", args ? args : json_object_new_object());
	status = cli->store.url ? kg_store_request(cli, req, &reply)
				: socket_request(cli, req, &reply);
	json_object_put(req);
	if (status)
		return status;
	status = KG_EXIT_ERROR;
	if (!reply || !json_object_object_get_ex(reply, "ok", &v)) {
		kg_ctl_fail(status, "kgated sent a reply that is not a control-protocol object");
	} else if (json_object_get_boolean(v)) {
		if (json_object_object_get_ex(reply, "result", &v))
			*result = json_object_get(v);
		status = KG_EXIT_OK;
	} else {
		json_object *e = json_object_object_get(reply, "error");
		kg_ctl_fail(status, "%s [%s]",
			    json_object_get_string(json_object_object_get(e, "message")),
			    json_object_get_string(json_object_object_get(e, "code")));
	}
	json_object_put(reply);
	return status;
}

int kg_verb_help(const char *what, const struct kg_cmd *cmd, int status)
{
	FILE *f = status ? stderr : stdout;
	fprintf(f, "Usage: kgatectl %s %s\n  %s\n", what, cmd->usage, cmd->summary);
	return status;
}

int kg_flags_parse(const char *object, const struct kg_cmd *cmd, struct kg_cli *cli,
		   int argc, char **argv, const char *allowed, const char *multi,
		   int min_pos, int max_pos, struct kg_flags *f)
{
	/* The words that run this command: "cert upload", or just "status"
	 * for an object without verbs (its table entry carries its own name). */
	char what[96];
	if (strcmp(object, cmd->name) == 0)
		snprintf(what, sizeof(what), "%s", object);
	else
		snprintf(what, sizeof(what), "%s %s", object, cmd->name);
	memset(f, 0, sizeof(*f));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
			return kg_verb_help(what, cmd, KG_EXIT_OK) - 1;
		if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
			if (i + 1 >= argc || kg_output_parse(argv[i + 1], &cli->out) != 0)
				return kg_ctl_fail(KG_EXIT_USAGE, "%s: -o: expected text, table or json", what);
			i++;
			continue;
		}
		if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
			if (f->npos >= max_pos || f->npos >= 8)
				return kg_ctl_fail(KG_EXIT_USAGE, "%s: '%s': unexpected argument "
					       "(see 'kgatectl %s --help')", what, a, what);
			f->pos[f->npos++] = a;
			continue;
		}
		char name[64], want[68];
		const char *eq = strchr(a + 2, '=');
		size_t nlen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
		if (nlen >= sizeof(name))
			nlen = sizeof(name) - 1;
		memcpy(name, a + 2, nlen);
		name[nlen] = '\0';
		snprintf(want, sizeof(want), " %s ", name);
		bool is_multi = multi && strcmp(name, multi) == 0;
		if (!is_multi && !strstr(allowed, want))
			return kg_ctl_fail(KG_EXIT_USAGE, "%s: --%s: not an option of this verb "
				       "(see 'kgatectl %s --help')", what, name, what);
		const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
		if (!value)
			return kg_ctl_fail(KG_EXIT_USAGE, "%s: --%s: missing value", what, name);
		if (is_multi) {
			if (f->nmulti >= 64)
				return kg_ctl_fail(KG_EXIT_USAGE, "%s: too many --%s", what, name);
			f->multi[f->nmulti++] = value;
			continue;
		}
		if (kg_flag(f, name))
			return kg_ctl_fail(KG_EXIT_USAGE, "%s: --%s given twice", what, name);
		if (f->n >= KG_FLAGS_MAX)
			return kg_ctl_fail(KG_EXIT_USAGE, "%s: too many options", what);
		/* Point at the option's own text so the name outlives this loop. */
		f->name[f->n] = a + 2;
		f->value[f->n++] = value;
	}
	if (f->npos < min_pos)
		return kg_ctl_fail(KG_EXIT_USAGE, "%s: missing argument (usage: kgatectl %s %s)", what,
			       what, cmd->usage);
	return 0;
}

const char *kg_flag(const struct kg_flags *f, const char *name)
{
	size_t len = strlen(name);
	for (int i = 0; i < f->n; i++)
		if (strncmp(f->name[i], name, len) == 0 &&
		    (f->name[i][len] == '\0' || f->name[i][len] == '='))
			return f->value[i];
	return NULL;
}

int kg_flag_uint(const char *object, const char *verb, const char *name, const char *text,
		 unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(text, &end, 10);
	if (!*text || *end || errno || text[0] == '-' || v > max) {
		kg_ctl_fail(KG_EXIT_USAGE, "%s %s: %s '%s': expected a number 0-%lu", object, verb, name,
			text, max);
		return -1;
	}
	*out = v;
	return 0;
}

json_object *kg_pem_arg(const char *object, const char *verb, const char *path)
{
	struct kg_err err;
	size_t len;
	/* Half the request: JSON escapes each newline and slash of the PEM. */
	char *text = kg_file_read(path, KG_CONTROL_MAX_REQUEST / 2, &len, &err);
	if (!text) {
		kg_ctl_fail(KG_EXIT_ERROR, "%s %s: %s", object, verb, err.msg);
		return NULL;
	}
	if (strlen(text) != len) {
		free(text);
		kg_ctl_fail(KG_EXIT_ERROR, "%s %s: %s: not a PEM text file (NUL byte)", object, verb, path);
		return NULL;
	}
	json_object *s = json_object_new_string_len(text, (int)len);
	free(text);
	return s;
}

int kg_print_rows(const struct kg_cli *cli, json_object *rows, const struct kg_column *cols,
		  size_t ncols)
{
	int ret = kg_output_rows(stdout, cli->out, rows, cols, ncols);
	json_object_put(rows);
	return ret < 0 ? KG_EXIT_ERROR : KG_EXIT_OK;
}

int kg_print_object(const struct kg_cli *cli, json_object *obj)
{
	int ret = kg_output_object(stdout, cli->out, obj);
	json_object_put(obj);
	return ret < 0 ? KG_EXIT_ERROR : KG_EXIT_OK;
}

int kg_print_object_and_table(const struct kg_cli *cli, json_object *obj, const char *key,
			      const struct kg_column *cols, size_t ncols,
			      int (*print_rest)(const struct kg_cli *cli, json_object *obj))
{
	if (cli->out == KG_OUT_JSON)
		return print_rest(cli, obj);
	json_object *rows = NULL;
	if (json_object_object_get_ex(obj, key, &rows))
		json_object_get(rows);
	json_object_object_del(obj, key);
	int st = print_rest(cli, obj);
	if (rows) {
		printf("\n");
		st = kg_print_rows(cli, rows, cols, ncols);
	}
	return st;
}

int kg_call_print(const struct kg_cli *cli, const char *op, json_object *args)
{
	json_object *res;
	int st = kg_client_call(cli, op, args, &res);
	return st ? st : kg_print_object(cli, res);
}

json_object *kg_name_args(const char *name)
{
	json_object *args = json_object_new_object();
	json_object_object_add(args, "name", json_object_new_string(name));
	return args;
}

/* "HOST:PORT[,weight=W]" → {"address": ..., "weight": W}. */
json_object *kg_backend_spec(const char *object, const char *verb, const char *text)
{
	json_object *m = json_object_new_object();
	const char *comma = strchr(text, ',');
	if (!comma) {
		json_object_object_add(m, "address", json_object_new_string(text));
		return m;
	}
	json_object_object_add(m, "address",
			       json_object_new_string_len(text, (int)(comma - text)));
	unsigned long w;
	if (strncmp(comma + 1, "weight=", 7) != 0 ||
	    kg_flag_uint(object, verb, "--backend weight", comma + 8, 1000000, &w) < 0) {
		kg_ctl_fail(KG_EXIT_USAGE, "%s %s: --backend %s: expected HOST:PORT[,weight=W]",
			object, verb, text);
		json_object_put(m);
		return NULL;
	}
	json_object_object_add(m, "weight", json_object_new_int64((int64_t)w));
	return m;
}
