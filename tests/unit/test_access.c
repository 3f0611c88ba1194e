/* Access rules (dataplane/access.c): the parser's refusals with their
 * exact messages, and the matcher on certificates made by certgen.c. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <json-c/json.h>
#include <openssl/bn.h>
#include <string.h>

#include "access.h"
#include "certgen.h"

static struct kg_access *parse(const char *json, char *err, size_t errlen)
{
	/* Tests write JSON with single quotes. */
	char doc[4096];
	snprintf(doc, sizeof(doc), "%s", json);
	for (char *c = doc; *c; c++)
		if (*c == '\'')
			*c = '"';
	struct json_object *j = json_tokener_parse(doc);
	cr_assert_not_null(j, "bad test JSON %s", doc);
	err[0] = '\0';
	struct kg_access *a = kg_access_parse(j, "listeners[0].access_rules", err, errlen);
	json_object_put(j);
	return a;
}

struct bad_case {
	const char *json;
	const char *msg;
};

static const struct bad_case bad[] = {
	{"{}", "listeners[0].access_rules: expected an array of rules"},
	{"[]", "listeners[0].access_rules: must not be an empty array (remove the key instead)"},
	{"[1]", "listeners[0].access_rules[0]: expected an object"},
	{"[{'action':'allow','match':{'cn':'a'}}]", "listeners[0].access_rules[0].name: is required"},
	{"[{'name':'a b','action':'allow','match':{'cn':'a'}}]",
	 "listeners[0].access_rules[0].name: use 1-80 letters, digits or - / . _"},
	{"[{'name':'a','action':'allow','match':{'cn':'a'}},{'name':'a','action':'deny','match':{'cn':'b'}}]",
	 "listeners[0].access_rules[1].name: duplicate rule name \"a\""},
	{"[{'name':'a','match':{'cn':'a'}}]", "listeners[0].access_rules[0].action: is required"},
	{"[{'name':'a','action':'maybe','match':{'cn':'a'}}]",
	 "listeners[0].access_rules[0].action: must be one of \"allow\", \"deny\""},
	{"[{'name':'a','action':'allow'}]", "listeners[0].access_rules[0].match: is required"},
	{"[{'name':'a','action':'allow','match':{}}]",
	 "listeners[0].access_rules[0].match: needs at least one matcher (access_default decides "
	 "for the certificates no rule matches)"},
	{"[{'name':'a','action':'allow','match':{'cn':'a'},'extra':1}]",
	 "listeners[0].access_rules[0].extra: unknown key"},
	{"[{'name':'a','action':'allow','match':{'cn':'a'}},{'name':'b','action':'deny','match':{'cn':'a'}},"
	 "{'name':'c','action':'deny','match':{'cn':[]}}]",
	 "listeners[0].access_rules[2].match.cn: must not be an empty array"},
	{"[{'name':'a','action':'allow','match':{'email':'a'}}]",
	 "listeners[0].access_rules[0].match.email: unknown key (known: cn, o, ou, san_dns, "
	 "san_email, san_ip, san_uri, issuer, serial, sha256)"},
	{"[{'name':'a','action':'allow','match':{'cn':5}}]",
	 "listeners[0].access_rules[0].match.cn: expected a string or an array of strings"},
	{"[{'name':'a','action':'allow','match':{'ou':['x',3]}}]",
	 "listeners[0].access_rules[0].match.ou[1]: expected a string"},
	{"[{'name':'a','action':'allow','match':{'cn':''}}]",
	 "listeners[0].access_rules[0].match.cn: must not be empty"},
	{"[{'name':'a','action':'allow','match':{'serial':'12g'}}]",
	 "listeners[0].access_rules[0].match.serial: expected a serial number in hex (\"1f\", \"01:1F\")"},
	{"[{'name':'a','action':'allow','match':{'sha256':'abcd'}}]",
	 "listeners[0].access_rules[0].match.sha256: expected a SHA-256 fingerprint: 64 hex digits, "
	 "colons optional"},
	{"[{'name':'a','action':'allow','match':{'san_ip':'10.0.0.300'}}]",
	 "listeners[0].access_rules[0].match.san_ip: expected an IPv4 or IPv6 address, or a glob "
	 "(\"10.1.*\")"},
};

TC_INDEX_PARAMS(parser, refuses, sizeof(bad) / sizeof(bad[0]))
ParameterizedTest(size_t *i, parser, refuses)
{
	char err[512];
	struct kg_access *a = parse(bad[*i].json, err, sizeof(err));
	cr_expect_null(a, "%s", bad[*i].json);
	kg_access_free(a);
	cr_expect_str_eq(err, bad[*i].msg, "%s", bad[*i].json);
}

Test(parser, accepts_every_field)
{
	char err[512];
	struct kg_access *a = parse(
		"[{'name':'all','action':'deny','match':{'cn':'a*','o':['x','y'],'ou':'?',"
		"'san_dns':'*.example','san_email':'a@b','san_ip':['::1','10.*'],"
		"'san_uri':'spiffe://x/*','issuer':'CN=ca*','serial':'00:1F',"
		"'sha256':'AB:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd'}}]",
		err, sizeof(err));
	cr_assert_not_null(a, "%s", err);
	cr_expect_eq(kg_access_count(a), 1);
	kg_access_free(a);
	kg_access_free(NULL);
}

Test(glob, stars_and_questions)
{
	cr_expect(kg_access_glob("*", "", false));
	cr_expect(kg_access_glob("a*c", "abbbc", false));
	cr_expect(kg_access_glob("spiffe://ex/*", "spiffe://ex/ns/a/b", false));
	cr_expect_not(kg_access_glob("spiffe://ex/*", "spiffe://other/ns", false));
	cr_expect(kg_access_glob("a?c", "abc", false));
	cr_expect_not(kg_access_glob("a?c", "ac", false));
	cr_expect_not(kg_access_glob("abc", "abcd", false));
	cr_expect(kg_access_glob("*.EXAMPLE", "www.example", true));
	cr_expect_not(kg_access_glob("*.EXAMPLE", "www.example", false));
	cr_expect(kg_access_glob("[a]", "[a]", false)); /* no character classes */
}

/* ---- the matcher ---- */

static EVP_PKEY *ca_key, *leaf_key;
static X509 *ca, *alice, *bob;

static void setup(void)
{
	ca_key = tc_key();
	leaf_key = tc_key();
	ca = tc_cert(&(struct tc_cert_opts){.cn = "Test CA", .ca = true}, ca_key, NULL, NULL);
	alice = tc_cert(&(struct tc_cert_opts){
				.cn = "alice", .ou = "ops", .eku = TC_EKU_CLIENT, .serial = 0x1f,
				.san = "DNS:alice.Example.org,email:alice@example.org,IP:10.1.2.3,"
				       "IP:2001:db8::1,URI:spiffe://example.org/ns/prod/sa/alice"},
			leaf_key, ca, ca_key);
	bob = tc_cert(&(struct tc_cert_opts){.cn = "bob", .ou = "dev", .eku = TC_EKU_CLIENT,
					     .serial = 0x2000},
		      leaf_key, ca, ca_key);
}

static void teardown(void)
{
	X509_free(alice);
	X509_free(bob);
	X509_free(ca);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(leaf_key);
}

static char alice_sha[65];

static const char *sha_of(X509 *x)
{
	unsigned char md[32];
	unsigned int n = 0;
	cr_assert_eq(X509_digest(x, EVP_sha256(), md, &n), 1);
	for (unsigned i = 0; i < n; i++)
		snprintf(alice_sha + 2 * i, 3, "%02X", md[i]);
	return alice_sha;
}

/* The decision and rule for cert under rules (single quotes for double). */
static enum kg_access_action decide(const char *rules, X509 *cert, enum kg_access_action def,
				    char *rule, size_t rulelen)
{
	char err[512];
	const char *name = NULL;
	struct kg_access *a = parse(rules, err, sizeof(err));
	cr_assert_not_null(a, "%s: %s", rules, err);
	enum kg_access_action d = kg_access_eval(a, cert, def, &name);
	snprintf(rule, rulelen, "%s", name);
	kg_access_free(a);
	return d;
}

struct match_case {
	const char *match; /* the "match" object */
	bool alice, bob;   /* whether it matches them */
};

static const struct match_case matches[] = {
	{"{'cn':'alice'}", true, false},
	{"{'cn':'ALICE'}", false, false},
	{"{'cn':['bob','alice']}", true, true},
	{"{'cn':'a*'}", true, false},
	{"{'cn':'?ob'}", false, true},
	{"{'o':'kgate test'}", true, true},
	{"{'o':'kgate*','ou':'ops'}", true, false},
	{"{'ou':['ops','dev']}", true, true},
	{"{'ou':'op'}", false, false},
	{"{'san_dns':'alice.example.org'}", true, false},
	{"{'san_dns':'*.EXAMPLE.org'}", true, false},
	{"{'san_email':'alice@example.org'}", true, false},
	{"{'san_email':'*@example.com'}", false, false},
	{"{'san_ip':'10.1.2.3'}", true, false},
	{"{'san_ip':'10.1.*'}", true, false},
	{"{'san_ip':'2001:db8:0::1'}", true, false},
	{"{'san_ip':'10.1.2.4'}", false, false},
	{"{'san_uri':'spiffe://example.org/ns/prod/*'}", true, false},
	{"{'san_uri':'spiffe://example.org/ns/dev/*'}", false, false},
	{"{'issuer':'CN=Test CA,O=kgate test'}", true, true},
	{"{'issuer':'CN=Other*'}", false, false},
	{"{'serial':'1F'}", true, false},
	{"{'serial':'00:1f'}", true, false},
	{"{'serial':'20:00'}", false, true},
	{"{'cn':'alice','ou':'dev'}", false, false},
};

TC_INDEX_PARAMS(matcher, each_field, sizeof(matches) / sizeof(matches[0]))
ParameterizedTest(size_t *i, matcher, each_field, .init = setup, .fini = teardown)
{
	char rules[512], rule[96];
	snprintf(rules, sizeof(rules), "[{'name':'r','action':'deny','match':%s}]", matches[*i].match);
	enum kg_access_action want_a = matches[*i].alice ? KG_ACCESS_DENY : KG_ACCESS_ALLOW;
	enum kg_access_action want_b = matches[*i].bob ? KG_ACCESS_DENY : KG_ACCESS_ALLOW;
	cr_expect_eq(decide(rules, alice, KG_ACCESS_ALLOW, rule, sizeof(rule)), want_a, "alice %s",
		     matches[*i].match);
	cr_expect_str_eq(rule, matches[*i].alice ? "r" : KG_ACCESS_DEFAULT_RULE);
	cr_expect_eq(decide(rules, bob, KG_ACCESS_ALLOW, rule, sizeof(rule)), want_b, "bob %s",
		     matches[*i].match);
}

Test(matcher, sha256_with_and_without_colons, .init = setup, .fini = teardown)
{
	char rules[512], rule[96], colons[100] = "";
	const char *hex = sha_of(alice);
	snprintf(rules, sizeof(rules), "[{'name':'fp','action':'deny','match':{'sha256':'%s'}}]", hex);
	cr_expect_eq(decide(rules, alice, KG_ACCESS_ALLOW, rule, sizeof(rule)), KG_ACCESS_DENY);
	cr_expect_eq(decide(rules, bob, KG_ACCESS_ALLOW, rule, sizeof(rule)), KG_ACCESS_ALLOW);
	for (int i = 0; i < 32; i++)
		snprintf(colons + strlen(colons), sizeof(colons) - strlen(colons), "%s%.2s",
			 i ? ":" : "", hex + 2 * i);
	snprintf(rules, sizeof(rules), "[{'name':'fp','action':'deny','match':{'sha256':'%s'}}]",
		 colons);
	cr_expect_eq(decide(rules, alice, KG_ACCESS_ALLOW, rule, sizeof(rule)), KG_ACCESS_DENY);
	cr_expect_str_eq(rule, "fp");
}

Test(matcher, first_match_wins_then_default, .init = setup, .fini = teardown)
{
	const char *rules = "[{'name':'no-alice','action':'deny','match':{'cn':'alice'}},"
			    "{'name':'ops','action':'allow','match':{'ou':'ops'}},"
			    "{'name':'dev','action':'allow','match':{'ou':'dev'}}]";
	char rule[96];
	cr_expect_eq(decide(rules, alice, KG_ACCESS_ALLOW, rule, sizeof(rule)), KG_ACCESS_DENY);
	cr_expect_str_eq(rule, "no-alice");
	cr_expect_eq(decide(rules, bob, KG_ACCESS_DENY, rule, sizeof(rule)), KG_ACCESS_ALLOW);
	cr_expect_str_eq(rule, "dev");
	const char *only_ops = "[{'name':'ops','action':'allow','match':{'ou':'ops'}}]";
	cr_expect_eq(decide(only_ops, bob, KG_ACCESS_DENY, rule, sizeof(rule)), KG_ACCESS_DENY);
	cr_expect_str_eq(rule, KG_ACCESS_DEFAULT_RULE);
	cr_expect_eq(decide(only_ops, bob, KG_ACCESS_ALLOW, rule, sizeof(rule)), KG_ACCESS_ALLOW);
	/* No rules, no certificate: the default. */
	const char *name = NULL;
	cr_expect_eq(kg_access_eval(NULL, alice, KG_ACCESS_DENY, &name), KG_ACCESS_DENY);
	cr_expect_str_eq(name, KG_ACCESS_DEFAULT_RULE);
}

Test(matcher, digest_tells_rule_lists_apart)
{
	char err[512];
	struct kg_access *a = parse("[{'name':'a','action':'allow','match':{'cn':'x'}}]", err, sizeof(err));
	struct kg_access *b = parse("[{'name':'a','action':'deny','match':{'cn':'x'}}]", err, sizeof(err));
	cr_assert(a && b);
	unsigned char da[32], db[32];
	unsigned int n = 0;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	cr_assert_not_null(md);
	cr_assert_eq(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
	cr_assert_eq(kg_access_digest(a, md), 0);
	cr_assert_eq(EVP_DigestFinal_ex(md, da, &n), 1);
	cr_assert_eq(EVP_DigestInit_ex(md, EVP_sha256(), NULL), 1);
	cr_assert_eq(kg_access_digest(b, md), 0);
	cr_assert_eq(EVP_DigestFinal_ex(md, db, &n), 1);
	cr_expect_neq(memcmp(da, db, sizeof(da)), 0);
	EVP_MD_CTX_free(md);
	kg_access_free(a);
	kg_access_free(b);
}
