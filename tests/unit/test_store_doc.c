/* store_doc.c: store documents (PEM content, sealed keys) to state
 * documents (files in a state dir) and back, with a real KEK file and real
 * certificates; and the shape refusals, each naming the certificate and
 * the field. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "certgen.h"
#include "config.h"
#include "seal.h"
#include "state.h"
#include "store_doc.h"

#define STATE_KEY "/kg/state"

static struct tc_dir dir;
static char err[1024];
static struct kg_kek *kek;
static struct kg_state st;

static struct kg_kek *make_kek(const char *name)
{
	char hex[65];
	unsigned char raw[32];
	FILE *r = fopen("/dev/urandom", "re");
	cr_assert(r && fread(raw, 1, 32, r) == 32);
	fclose(r);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	const char *path = tc_file(&dir, name);
	tc_write_text(path, hex);
	cr_assert_eq(chmod(path, 0600), 0);
	struct kg_kek *k = kg_kek_load(path, err, sizeof(err));
	cr_assert_not_null(k, "%s", err);
	return k;
}

/* A configuration in dir: server cert+key "web", CA with a CRL "clients". */
static const char *write_config(void)
{
	EVP_PKEY *cak = tc_key(), *sk = tc_key();
	X509 *ca = tc_cert(&(struct tc_cert_opts){.cn = "ca", .ca = true}, cak, NULL, NULL);
	X509 *srv = tc_cert(&(struct tc_cert_opts){.cn = "localhost", .eku = TC_EKU_SERVER}, sk,
			    ca, cak);
	X509_CRL *crl = tc_crl(ca, cak, NULL, 0, 86400);
	tc_write_certs(tc_file(&dir, "ca.pem"), &ca, 1);
	tc_write_certs(tc_file(&dir, "server.pem"), &srv, 1);
	tc_write_key(tc_file(&dir, "server.key"), sk, NULL);
	tc_write_crl(tc_file(&dir, "ca.crl"), crl);
	X509_free(ca);
	X509_free(srv);
	X509_CRL_free(crl);
	EVP_PKEY_free(cak);
	EVP_PKEY_free(sk);
	const char *path = tc_file(&dir, "kgate.json");
	tc_write_text(path, "{\"certificates\": {"
		      "\"web\": {\"type\": \"server\", \"cert\": \"server.pem\", \"key\": \"server.key\"},"
		      "\"clients\": {\"type\": \"ca\", \"cert\": \"ca.pem\", \"crl\": \"ca.crl\"}},"
		      "\"listeners\": [{\"name\": \"web\", \"protocol\": \"tls\", \"bind\": \"127.0.0.1\","
		      " \"port\": 0, \"certificate\": \"web\", \"ca\": \"clients\","
		      " \"backends\": [{\"address\": \"127.0.0.1:9\"}]}]}");
	return path;
}

static void setup(void)
{
	tc_dir_create(&dir);
	kek = make_kek("kek");
	cr_assert_eq(kg_state_open(&st, tc_file(&dir, "state"), err, sizeof(err)), 0, "%s", err);
}

static void teardown(void)
{
	kg_state_close(&st);
	kg_kek_destroy(kek);
	kek = NULL;
	tc_dir_remove(&dir);
}

TestSuite(store_doc, .init = setup, .fini = teardown);

static json_object *config_doc(void)
{
	char *text = NULL;
	cr_assert_eq(kg_read_file(write_config(), &text), 0);
	json_object *doc = json_tokener_parse(text);
	free(text);
	cr_assert_not_null(doc);
	return doc;
}

static json_object *store_doc(void)
{
	json_object *doc = config_doc();
	json_object *s = kg_store_doc_from_state(doc, dir.path, kek, STATE_KEY, err, sizeof(err));
	json_object_put(doc);
	cr_assert_not_null(s, "%s", err);
	return s;
}

static const char *cert_field(json_object *doc, const char *name, const char *field)
{
	json_object *c = NULL, *e = NULL, *v = NULL;
	if (!json_object_object_get_ex(doc, "certificates", &c) ||
	    !json_object_object_get_ex(c, name, &e) || !json_object_object_get_ex(e, field, &v))
		return NULL;
	return json_object_get_string(v);
}

static char *file_in_state(const char *rel, mode_t *mode)
{
	char path[4096], *text = NULL;
	struct stat sb;
	snprintf(path, sizeof(path), "%s/%s", st.dir, rel);
	cr_assert_eq(stat(path, &sb), 0, "%s", path);
	*mode = sb.st_mode & 0777;
	cr_assert_eq(kg_read_file(path, &text), 0);
	return text;
}

Test(store_doc, round_trip_seals_keys_and_restores_files)
{
	json_object *s = store_doc();
	cr_assert(kg_is_sealed(cert_field(s, "web", "key")));
	cr_assert_not_null(strstr(cert_field(s, "web", "cert"), "-----BEGIN CERTIFICATE"));
	cr_assert_not_null(strstr(cert_field(s, "clients", "crl"), "-----BEGIN X509 CRL"));
	const char *text = json_object_to_json_string(s);
	cr_assert_null(strstr(text, "PRIVATE KEY"), "a clear key left the machine");

	json_object *out = NULL;
	cr_assert_eq(kg_store_doc_to_state(&st, kek, STATE_KEY, text, strlen(text), &out, err,
					   sizeof(err)), 0, "%s", err);
	mode_t mode;
	char *key = file_in_state(cert_field(out, "web", "key"), &mode);
	char *orig = NULL;
	cr_assert_eq(kg_read_file(tc_file(&dir, "server.key"), &orig), 0);
	cr_expect_str_eq(key, orig);
	cr_expect_eq(mode, 0600, "key file mode %o", mode);
	free(file_in_state(cert_field(out, "web", "cert"), &mode));
	cr_expect_eq(mode, 0644);
	/* The result parses and its files validate as a state. */
	struct kg_config *cfg = kg_state_parse(&st, out, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	kg_config_free(cfg);
	free(key);
	free(orig);
	json_object_put(out);
	json_object_put(s);
}

/* An unchanged certificate keeps its file (control_ops.c sees no change)
 * and a port-0 listener keeps the port the state holds. */
Test(store_doc, unchanged_files_and_picked_ports_are_kept)
{
	json_object *s = store_doc(), *first = NULL, *second = NULL;
	const char *text = json_object_to_json_string(s);
	cr_assert_eq(kg_store_doc_to_state(&st, kek, STATE_KEY, text, strlen(text), &first, err,
					   sizeof(err)), 0, "%s", err);
	json_object *l = json_object_array_get_idx(json_object_object_get(first, "listeners"), 0);
	json_object_object_add(l, "port", json_object_new_int(40123));
	cr_assert_eq(kg_state_commit(&st, first, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kg_store_doc_to_state(&st, kek, STATE_KEY, text, strlen(text), &second, err,
					   sizeof(err)), 0, "%s", err);
	cr_expect_str_eq(cert_field(second, "web", "key"), cert_field(st.doc, "web", "key"));
	cr_expect_str_eq(cert_field(second, "clients", "crl"), cert_field(st.doc, "clients", "crl"));
	l = json_object_array_get_idx(json_object_object_get(second, "listeners"), 0);
	cr_expect_eq(json_object_get_int(json_object_object_get(l, "port")), 40123);
	json_object_put(second);
	json_object_put(s);
}

Test(store_doc, another_kek_is_named)
{
	json_object *s = store_doc(), *out = NULL;
	struct kg_kek *other = make_kek("other");
	const char *text = json_object_to_json_string(s);
	cr_expect_eq(kg_store_doc_to_state(&st, other, STATE_KEY, text, strlen(text), &out, err,
					   sizeof(err)), -EKEYREJECTED);
	cr_expect_null(out);
	cr_expect_not_null(strstr(err, "certificates.web.key: cannot unseal"), "%s", err);
	/* The same KEK under another prefix: the context differs. */
	cr_expect_lt(kg_store_doc_to_state(&st, kek, "/other/state", text, strlen(text), &out, err,
					   sizeof(err)), 0);
	cr_expect_not_null(strstr(err, "certificates.web.key"), "%s", err);
	kg_kek_destroy(other);
	json_object_put(s);
}

struct bad_case {
	const char *desc;
	const char *text; /* "@KEY" is replaced by the clear PEM key */
	int ret;
	const char *words;
};

static const struct bad_case bad_cases[] = {
	{"not JSON", "this is not json", -EINVAL, "not a JSON object"},
	{"trailing text", "{} {}", -EINVAL, "not a JSON object"},
	{"an array", "[1, 2]", -EINVAL, "not a JSON object"},
	{"empty", "", -EINVAL, "not a JSON object"},
	{"certificates not an object", "{\"certificates\": []}", -EINVAL,
	 "certificates: expected an object"},
	{"entry not an object", "{\"certificates\": {\"web\": 3}}", -EINVAL,
	 "certificates.web: expected an object"},
	{"cert not a string", "{\"certificates\": {\"web\": {\"type\": \"ca\", \"cert\": 1}}}",
	 -EINVAL, "certificates.web.cert: expected a string"},
	{"cert not PEM", "{\"certificates\": {\"web\": {\"type\": \"ca\", \"cert\": \"ca.pem\"}}}",
	 -EINVAL, "certificates.web.cert: expected PEM text"},
	{"clear key", "{\"certificates\": {\"web\": {\"type\": \"server\", \"cert\": \"-----BEGIN "
	 "CERTIFICATE-----\", \"key\": \"@KEY\"}}}", -EPERM,
	 "certificates.web.key: private keys are never stored in clear"},
	{"key in the cert field", "{\"certificates\": {\"web\": {\"type\": \"ca\", \"cert\": \"@KEY\"}}}",
	 -EPERM, "certificates.web.cert: holds a private key"},
	{"sealed garbage", "{\"certificates\": {\"web\": {\"type\": \"server\", \"key\": "
	 "\"kgseal1:AAAA\"}}}", -EINVAL, "certificates.web.key: cannot unseal"},
	{"bad name", "{\"certificates\": {\"a b\": {\"type\": \"ca\"}}}", -EINVAL,
	 "invalid name"},
};
#define N_BAD (sizeof(bad_cases) / sizeof(bad_cases[0]))

TC_INDEX_PARAMS(store_doc, refused, N_BAD)

ParameterizedTest(size_t *i, store_doc, refused)
{
	const struct bad_case *c = &bad_cases[*i];
	char text[8192], *key = NULL;
	write_config();
	cr_assert_eq(kg_read_file(tc_file(&dir, "server.key"), &key), 0);
	json_object *pem = json_object_new_string(key);
	/* The key as a JSON string, without its quotes. */
	const char *quoted = json_object_to_json_string(pem);
	char inner[4096];
	snprintf(inner, sizeof(inner), "%.*s", (int)strlen(quoted) - 2, quoted + 1);
	const char *at = strstr(c->text, "@KEY");
	if (at)
		snprintf(text, sizeof(text), "%.*s%s%s", (int)(at - c->text), c->text, inner, at + 4);
	else
		snprintf(text, sizeof(text), "%s", c->text);
	json_object *out = NULL;
	int r = kg_store_doc_to_state(&st, kek, STATE_KEY, text, strlen(text), &out, err,
				      sizeof(err));
	cr_expect_eq(r, c->ret, "%s: %d (%s)", c->desc, r, err);
	cr_expect_null(out, "%s", c->desc);
	cr_expect_not_null(strstr(err, c->words), "%s: \"%s\"", c->desc, err);
	json_object_put(pem);
	free(key);
}

Test(store_doc, from_state_refuses_missing_files_and_keys_in_cert_fields)
{
	json_object *doc = json_tokener_parse(
		"{\"certificates\": {\"web\": {\"type\": \"server\", \"cert\": \"nope.pem\", "
		"\"key\": \"nope.key\"}}}");
	cr_expect_null(kg_store_doc_from_state(doc, dir.path, kek, STATE_KEY, err, sizeof(err)));
	cr_expect_not_null(strstr(err, "certificates.web.cert:"), "%s", err);
	json_object_put(doc);
	write_config();
	doc = json_tokener_parse("{\"certificates\": {\"c\": {\"type\": \"ca\", \"cert\": "
				 "\"server.key\"}}}");
	cr_expect_null(kg_store_doc_from_state(doc, dir.path, kek, STATE_KEY, err, sizeof(err)));
	cr_expect_not_null(strstr(err, "never stored in clear"), "%s", err);
	json_object_put(doc);
}

Test(store_doc, redact_hides_keys)
{
	json_object *s = store_doc(), *r = kg_store_doc_redact(s);
	cr_expect_str_eq(cert_field(r, "web", "key"), "(sealed)");
	cr_expect(kg_is_sealed(cert_field(s, "web", "key")), "the original is unchanged");
	json_object_put(r);
	json_object_put(s);
}
