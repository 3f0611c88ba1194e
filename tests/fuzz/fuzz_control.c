/* Control-socket requests as kgated handles them (control_ops.c): each
 * input is one control session against a fresh daemon state — an empty
 * state folder, an empty runtime without workers (so listeners are built,
 * SSL_CTX and all, but no socket is bound) — then torn down, so every
 * input replays alone. Input: requests separated by KF_SEP, each one JSON
 * object as kgatectl sends it ({"version":1,"op":...,"args":{...}});
 * certificates travel inline as in `kgatectl cert upload`. Checks: every
 * reply says ok true/false, a refusal has a code and a one-line message,
 * and the state the last acknowledged change left parses again. */
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <openssl/err.h>

#include <kgate/control.h>
#include <kgate/log.h>

#include "control_ops.h"
#include "fuzz_util.h"
#include "runtime.h"
#include "state.h"

#define MAX_REQUESTS 16

static struct kg_kernel_caps caps;
static bool verbose; /* KF_CONTROL_VERBOSE=1 prints every reply */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	kg_log_level = KG_LOG_ERR - 1; /* quiet: a log line per change is noise here */
	kg_kernel_probe(&caps);
	verbose = getenv("KF_CONTROL_VERBOSE") != NULL;
	return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void check_reply(json_object *reply)
{
	json_object *ok = NULL, *e = NULL, *code = NULL, *msg = NULL;
	KF_FAIL_IF(!reply);
	KF_FAIL_IF(!json_object_object_get_ex(reply, "ok", &ok) ||
		   !json_object_is_type(ok, json_type_boolean));
	if (json_object_get_boolean(ok))
		return;
	KF_FAIL_IF(!json_object_object_get_ex(reply, "error", &e) ||
		   !json_object_object_get_ex(e, "code", &code) ||
		   !json_object_object_get_ex(e, "message", &msg));
	const char *m = json_object_get_string(msg);
	KF_FAIL_IF(!m || !*m || strchr(m, '\n'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char dir[] = "/dev/shm/kgate-fuzz-control.XXXXXX", err[512] = "";
	struct kg_state st = {0};
	struct kg_runtime rt;
	struct kg_ops *ops = calloc(1, sizeof(*ops)); /* holds a large plan */
	enum kg_state_source src;
	KF_FAIL_IF(!ops || !mkdtemp(dir));
	KF_FAIL_IF(kg_state_open(&st, dir, err, sizeof(err)) != 0);
	KF_FAIL_IF(kg_state_load(&st, NULL, false, &src, err, sizeof(err)) != 0);
	struct kg_config *cfg = kg_state_parse(&st, st.doc, err, sizeof(err));
	KF_FAIL_IF(!cfg);
	KF_FAIL_IF(kg_runtime_init(&rt) != 0);
	rt.caps = caps;
	*ops = (struct kg_ops){.st = &st, .rt = &rt, .cur = kg_config_ref_new(cfg),
			       .version = "fuzz", .started_wall = time(NULL),
			       .control_path = ""};
	KF_FAIL_IF(!ops->cur);
	KF_FAIL_IF(kg_ops_apply_initial(ops, err, sizeof(err)) != 0);

	const uint8_t *part[MAX_REQUESTS];
	size_t len[MAX_REQUESTS];
	size_t n = kf_split(data, size, KF_SEP, part, len, MAX_REQUESTS);
	for (size_t i = 0; i < n; i++) {
		char *text = kf_strndup(part[i], len[i]);
		json_object *req = json_tokener_parse(text);
		/* control.c answers unparsable text itself; the ops see objects. */
		json_object *reply = req ? kg_ops_handle(ops, req)
					 : kg_ops_error(KG_ERR_BAD_REQUEST, "request: not JSON");
		check_reply(reply);
		if (verbose) /* for writing seeds: what each request got */
			fprintf(stderr, "%s\n", json_object_to_json_string(reply));
		json_object_put(reply);
		json_object_put(req);
		free(text);
	}
	/* What was acknowledged last is what a restart would load. */
	struct kg_config *again = kg_state_parse(&st, st.doc, err, sizeof(err));
	KF_FAIL_IF(!again);
	kg_config_free(again);

	kg_runtime_destroy(&rt);
	kg_config_ref_put(ops->cur);
	free(ops);
	kg_state_close(&st);
	KF_FAIL_IF(nftw(dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS) != 0);
	ERR_clear_error();
	return 0;
}
