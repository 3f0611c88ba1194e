/* state.c: the state folder, atomic persistence, seeding, file store and
 * clean-up; and the name rules every control-plane object follows. */
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "certgen.h"
#include "certs.h"
#include "state.h"

static struct tc_dir dir;
static char err[1024];

static void setup(void)
{
	tc_dir_create(&dir);
}

static void teardown(void)
{
	tc_dir_remove(&dir);
}

TestSuite(state, .init = setup, .fini = teardown);

static mode_t mode_of(const char *path)
{
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "%s missing", path);
	return st.st_mode & 07777;
}

static char *slurp(const char *path)
{
	char *text = NULL;
	cr_assert_eq(kg_read_file(path, &text), 0, "cannot read %s", path);
	return text;
}

static void open_state(struct kg_state *st, const char *name)
{
	cr_assert_eq(kg_state_open(st, tc_file(&dir, name), err, sizeof(err)), 0, "%s", err);
}

Test(state, open_creates_private_folders)
{
	struct kg_state st;
	open_state(&st, "s");
	cr_assert_eq(mode_of(tc_file(&dir, "s")), 0700);
	cr_assert_eq(mode_of(tc_file(&dir, "s/certs")), 0700);
	kg_state_close(&st);
}

Test(state, empty_load_gives_empty_document_that_parses)
{
	struct kg_state st;
	enum kg_state_source src;
	open_state(&st, "s");
	cr_assert_eq(kg_state_load(&st, NULL, false, &src, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(src, KG_STATE_EMPTY);
	struct kg_config *cfg = kg_state_parse(&st, st.doc, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_assert_eq(cfg->n_listeners, 0);
	cr_assert_eq(cfg->n_certs, 0);
	kg_config_free(cfg);
	kg_state_close(&st);
}

Test(state, parse_refuses_invalid_document_with_path)
{
	struct kg_state st;
	open_state(&st, "s");
	json_object *doc = json_tokener_parse("{\"listeners\": [{\"name\": \"a b\"}]}");
	cr_assert_null(kg_state_parse(&st, doc, err, sizeof(err)));
	cr_assert(strstr(err, "listeners[0].name") != NULL, "%s", err);
	json_object_put(doc);
	kg_state_close(&st);
}

Test(state, store_file_modes_and_content)
{
	struct kg_state st;
	char path[4096];
	open_state(&st, "s");
	char *key = kg_state_store_file(&st, "web/*x", "key", "KEY", 3, true, err, sizeof(err));
	char *crt = kg_state_store_file(&st, "web/*x", "cert", "CERT", 4, false, err, sizeof(err));
	cr_assert_not_null(key, "%s", err);
	cr_assert_not_null(crt, "%s", err);
	cr_assert_eq(strncmp(key, "certs/", 6), 0);
	cr_assert(strchr(key + 6, '/') == NULL, "name characters must not make folders: %s", key);
	cr_assert_str_neq(key, crt);
	snprintf(path, sizeof(path), "%s/%s", st.dir, key);
	cr_assert_eq(mode_of(path), 0600);
	char *text = slurp(path);
	cr_assert_str_eq(text, "KEY");
	free(text);
	snprintf(path, sizeof(path), "%s/%s", st.dir, crt);
	cr_assert_eq(mode_of(path), 0644);
	free(key);
	free(crt);
	kg_state_close(&st);
}

Test(state, commit_persists_and_reload_prefers_folder)
{
	struct kg_state st, again;
	enum kg_state_source src;
	open_state(&st, "s");
	cr_assert_eq(kg_state_load(&st, NULL, false, &src, err, sizeof(err)), 0);
	json_object *doc = json_tokener_parse("{\"settings\": {\"workers\": 3}, \"certificates\": {}}");
	cr_assert_eq(kg_state_commit(&st, doc, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(st.doc, doc);
	cr_assert_eq(mode_of(tc_file(&dir, "s/state.json")), 0600);
	cr_assert_eq(access(tc_file(&dir, "s/state.json.tmp"), F_OK), -1, "temp file left");

	/* A seed config exists, but the folder's state wins. */
	tc_write_text(tc_file(&dir, "seed.json"), "{\"settings\": {\"workers\": 9}}");
	open_state(&again, "s");
	cr_assert_eq(kg_state_load(&again, tc_file(&dir, "seed.json"), false, &src, err,
				   sizeof(err)), 0, "%s", err);
	cr_assert_eq(src, KG_STATE_FROM_DIR);
	cr_assert(json_object_equal(again.doc, doc));
	kg_state_close(&again);

	/* --reseed: the file wins. */
	open_state(&again, "s");
	cr_assert_eq(kg_state_load(&again, tc_file(&dir, "seed.json"), true, &src, err,
				   sizeof(err)), 0, "%s", err);
	cr_assert_eq(src, KG_STATE_FROM_CONFIG);
	struct kg_config *cfg = kg_state_parse(&again, again.doc, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_assert_eq(cfg->workers, 9);
	kg_config_free(cfg);
	kg_state_close(&again);
	kg_state_close(&st);
}

Test(state, failed_commit_changes_nothing)
{
	struct kg_state st;
	enum kg_state_source src;
	open_state(&st, "s");
	cr_assert_eq(kg_state_load(&st, NULL, false, &src, err, sizeof(err)), 0);
	json_object *first = json_tokener_parse("{\"certificates\": {}}");
	cr_assert_eq(kg_state_commit(&st, first, err, sizeof(err)), 0, "%s", err);
	char *before = slurp(tc_file(&dir, "s/state.json"));
	/* A folder where the temp file goes makes the write fail. */
	cr_assert_eq(mkdir(tc_file(&dir, "s/state.json.tmp"), 0700), 0);
	cr_assert_eq(mkdir(tc_file(&dir, "s/state.json.tmp/x"), 0700), 0);
	json_object *second = json_tokener_parse("{\"settings\": {\"workers\": 2}}");
	/* -errno of the step that failed: clearing a leftover temp file
	 * meets the folder. */
	cr_assert_eq(kg_state_commit(&st, second, err, sizeof(err)), -EISDIR, "%s", err);
	cr_assert(strstr(err, "state.json.tmp") != NULL, "%s", err);
	cr_assert_eq(st.doc, first, "the acknowledged document must stay");
	char *after = slurp(tc_file(&dir, "s/state.json"));
	cr_assert_str_eq(after, before);
	free(before);
	free(after);
	json_object_put(second);
	kg_state_close(&st);
}

Test(state, seed_imports_files_then_gc_keeps_only_referenced)
{
	struct kg_state st;
	enum kg_state_source src;
	char path[4096];
	tc_write_text(tc_file(&dir, "c.pem"), "CERTDATA");
	tc_write_text(tc_file(&dir, "k.pem"), "KEYDATA");
	tc_write_text(tc_file(&dir, "seed.json"),
		      "{\"certificates\": {\"web\": {\"type\": \"server\", \"cert\": \"c.pem\", "
		      "\"key\": \"k.pem\"}}}");
	open_state(&st, "s");
	cr_assert_eq(kg_state_load(&st, tc_file(&dir, "seed.json"), false, &src, err,
				   sizeof(err)), 0, "%s", err);
	cr_assert_eq(src, KG_STATE_FROM_CONFIG);
	json_object *web = json_object_object_get(json_object_object_get(st.doc, "certificates"),
						  "web");
	const char *key = json_object_get_string(json_object_object_get(web, "key"));
	cr_assert_eq(strncmp(key, "certs/", 6), 0, "%s", key);
	snprintf(path, sizeof(path), "%s/%s", st.dir, key);
	cr_assert_eq(mode_of(path), 0600);
	char *text = slurp(path);
	cr_assert_str_eq(text, "KEYDATA");
	free(text);

	char *stray = kg_state_store_file(&st, "old", "cert", "X", 1, false, err, sizeof(err));
	cr_assert_not_null(stray);
	cr_assert_eq(tc_count_files(tc_file(&dir, "s/certs")), 3);
	kg_state_gc(&st);
	cr_assert_eq(tc_count_files(tc_file(&dir, "s/certs")), 2, "only the stray file goes");
	snprintf(path, sizeof(path), "%s/%s", st.dir, stray);
	cr_assert_eq(access(path, F_OK), -1);
	free(stray);
	kg_state_close(&st);
}

Test(state, seed_with_missing_file_is_an_error_naming_it)
{
	struct kg_state st;
	enum kg_state_source src;
	tc_write_text(tc_file(&dir, "seed.json"),
		      "{\"certificates\": {\"ca\": {\"type\": \"ca\", \"cert\": \"nope.pem\"}}}");
	open_state(&st, "s");
	cr_assert_eq(kg_state_load(&st, tc_file(&dir, "seed.json"), false, &src, err,
				   sizeof(err)), -ENOENT, "%s", err);
	cr_assert(strstr(err, "certificates.ca.cert") != NULL && strstr(err, "nope.pem"), "%s",
		  err);
	kg_state_close(&st);
}

/* ---- name rules (certificates and listeners share them) ---- */

struct name_case {
	const char *desc;
	const char *name;
	int valid;
};

static const char long80[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
static const char long81[] = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

static const struct name_case names[] = {
	{"one letter", "a", 1},
	{"every allowed class", "Az09-/._*", 1},
	{"80 characters", long80, 1},
	{"empty", "", 0},
	{"81 characters", long81, 0},
	{"space", "a b", 0},
	{"umlaut", "\xc3\xbc", 0},
	{"colon", "a:b", 0},
	{"newline", "a\n", 0},
	{"quote", "a\"b", 0},
};

TC_INDEX_PARAMS(names, rules, sizeof(names) / sizeof(names[0]))
ParameterizedTest(size_t *i, names, rules)
{
	const struct name_case *c = &names[*i];
	cr_assert_eq(strlen(long80), 80);
	cr_assert_eq(kg_cert_name_valid(c->name), c->valid, "%s", c->desc);
}
