/* Routes (dataplane/routes.c): the matcher, table-driven, on hosts
 * (exact, wildcard, case, ports, IPv6 literals), paths (prefixes, query,
 * absolute-form targets), methods and certificates made by certgen.c;
 * first match wins. The parser's refusals are config.c's table
 * (test_config.c) since they come with the listener's path. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <json-c/json.h>
#include <string.h>

#include "certgen.h"
#include "routes.h"

/* In order: what the cases below expect to win. */
static const char routes_json[] =
	"[{'name':'ops','match':{'path_prefix':'/admin/','cert':{'ou':'ops'}},'group':'g'},"
	"{'name':'api','match':{'host':'api.example.com'},'group':'g'},"
	"{'name':'wild','match':{'host':'*.example.net','method':['GET','HEAD']},'group':'g'},"
	"{'name':'v1','match':{'path_prefix':'/v1/'},'group':'g'},"
	"{'name':'post','match':{'method':'POST'},'group':'g'},"
	"{'name':'v6','match':{'host':'fe80--1.ipv6.example'},'group':'g'}]";

static struct kg_routes *routes;
static EVP_PKEY *ca_key, *leaf_key;
static X509 *ca, *alice, *bob;

static void setup(void)
{
	char doc[sizeof(routes_json)], err[256] = "";
	memcpy(doc, routes_json, sizeof(doc));
	for (char *c = doc; *c; c++)
		if (*c == '\'')
			*c = '"';
	struct json_object *j = json_tokener_parse(doc);
	cr_assert_not_null(j);
	routes = kg_routes_parse(j, "listeners[0].routes", err, sizeof(err));
	json_object_put(j);
	cr_assert_not_null(routes, "%s", err);
	ca_key = tc_key();
	leaf_key = tc_key();
	ca = tc_cert(&(struct tc_cert_opts){.cn = "Test CA", .ca = true}, ca_key, NULL, NULL);
	alice = tc_cert(&(struct tc_cert_opts){.cn = "alice", .ou = "ops", .eku = TC_EKU_CLIENT},
			leaf_key, ca, ca_key);
	bob = tc_cert(&(struct tc_cert_opts){.cn = "bob", .ou = "dev", .eku = TC_EKU_CLIENT},
		      leaf_key, ca, ca_key);
}

static void teardown(void)
{
	kg_routes_free(routes);
	X509_free(alice);
	X509_free(bob);
	X509_free(ca);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(leaf_key);
}

struct match_case {
	const char *who; /* "alice", "bob" or NULL: no certificate */
	const char *host; /* NULL: no Host header */
	const char *target;
	const char *method;
	const char *want; /* route name, or NULL: none */
};

static const struct match_case cases[] = {
	{"alice", "localhost", "/admin/x", "GET", "ops"},
	{"bob", "localhost", "/admin/x", "GET", NULL},
	{NULL, "localhost", "/admin/x", "GET", NULL},
	{"alice", "localhost", "/admin", "GET", NULL},
	{"bob", "api.example.com", "/", "GET", "api"},
	{"bob", "API.EXAMPLE.COM", "/", "PUT", "api"},
	{"bob", "api.example.com:8443", "/", "GET", "api"},
	{"bob", "api.example.com.", "/", "GET", "api"},
	{"bob", " api.example.com ", "/", "GET", "api"},
	{"bob", "api.example.comx", "/", "GET", NULL},
	{"bob", "xapi.example.com", "/", "GET", NULL},
	{"bob", "a.example.net", "/", "GET", "wild"},
	{"bob", "a.b.example.net", "/", "HEAD", "wild"},
	{"bob", "example.net", "/", "GET", NULL},
	{"bob", ".example.net", "/", "GET", NULL},
	{"bob", "aexample.net", "/", "GET", NULL},
	{"bob", "a.example.net", "/", "get", NULL},
	{"bob", "a.example.net", "/v1/x", "DELETE", "v1"},
	{"bob", NULL, "/v1/", "GET", "v1"},
	{"bob", NULL, "/v1", "GET", NULL},
	{"bob", NULL, "/v1?/v1/", "GET", NULL},
	{"bob", NULL, "/v1/?q", "GET", "v1"},
	{"bob", NULL, "http://h/v1/x?y", "GET", "v1"},
	{"bob", NULL, "http://h", "GET", NULL},
	{"bob", NULL, "*", "OPTIONS", NULL},
	{"bob", NULL, "/", "POST", "post"},
	{"bob", "[fe80--1.ipv6.example]:1", "/", "GET", "v6"},
	{"bob", "", "/", "GET", NULL},
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

TC_INDEX_PARAMS(routes, match, N_CASES)

ParameterizedTest(size_t *i, routes, match, .init = setup, .fini = teardown)
{
	const struct match_case *c = &cases[*i];
	X509 *cert = !c->who ? NULL : strcmp(c->who, "alice") == 0 ? alice : bob;
	struct kg_route_req q = {.host = c->host, .host_len = c->host ? strlen(c->host) : 0,
				 .target = c->target, .target_len = strlen(c->target),
				 .method = c->method,
				 .cert_bits = kg_routes_cert_bits(routes, cert)};
	int m = kg_routes_match(routes, &q);
	const char *got = m < 0 ? NULL : kg_routes_name(routes, (size_t)m);
	cr_expect((!got && !c->want) || (got && c->want && strcmp(got, c->want) == 0),
		  "case %zu (%s %s %s host %s): got %s, want %s", *i, c->who ? c->who : "-",
		  c->method, c->target, c->host ? c->host : "-", got ? got : "none",
		  c->want ? c->want : "none");
}

Test(routes, cert_bits, .init = setup, .fini = teardown)
{
	/* Routes without a certificate matcher always have their bit. */
	cr_expect_eq(kg_routes_cert_bits(routes, NULL), 0x3eu);
	cr_expect_eq(kg_routes_cert_bits(routes, bob), 0x3eu);
	cr_expect_eq(kg_routes_cert_bits(routes, alice), 0x3fu);
	cr_expect_eq(kg_routes_cert_bits(NULL, alice), 0u);
	cr_expect_eq(kg_routes_match(NULL, &(struct kg_route_req){.target = "/"}), -1);
	cr_expect_eq(kg_routes_count(routes), 6);
	cr_expect_str_eq(kg_routes_group(routes, 5), "g");
}
