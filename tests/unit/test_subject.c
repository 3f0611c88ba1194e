/* subject.c: parsing of '/F=value/...' subjects and the CA naming policy,
 * table-driven. */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <openssl/crypto.h>

#include "certgen.h"
#include "subject.h"

struct parse_case {
	const char *desc;
	const char *text;
	const char *oneline; /* expected X509_NAME_oneline, NULL: an error */
	const char *want;    /* fragment of the error */
};

static const struct parse_case parse_cases[] = {
	{"CN only", "/CN=alice", "/CN=alice", NULL},
	{"every field", "/C=CN/ST=Zhejiang/L=Hangzhou/O=Example/OU=Edge/CN=Example Root CA",
	 "/C=CN/ST=Zhejiang/L=Hangzhou/O=Example/OU=Edge/CN=Example Root CA", NULL},
	{"order kept", "/CN=x/O=y", "/CN=x/O=y", NULL},
	{"email", "/CN=a/emailAddress=a@example.com", "/CN=a/emailAddress=a@example.com", NULL},
	{"escaped slash and equals", "/O=A\\/B/CN=x\\=y", "/O=A\\/B/CN=x=y", NULL},
	{"escaped backslash", "/CN=a\\\\b", "/CN=a\\b", NULL},
	{"spaces kept", "/O=kgate test/CN= padded ", "/O=kgate test/CN= padded ", NULL},
	{"UTF-8", "/CN=J\xc3\xbcrgen", "/CN=J\\xC3\\xBCrgen", NULL},
	{"missing CN", "/C=DE/O=x", NULL, "CN: missing"},
	{"unknown field", "/XX=1/CN=a", NULL, "unknown field 'XX'"},
	{"lower-case field", "/cn=a", NULL, "unknown field 'cn'"},
	{"empty value", "/O=/CN=a", NULL, "O: empty value"},
	{"empty CN", "/CN=", NULL, "CN: empty value"},
	{"no leading slash", "CN=a", NULL, "must look like"},
	{"empty text", "", NULL, "must look like"},
	{"no equals", "/CN", NULL, "expected FIELD=value"},
	{"empty component", "//CN=a", NULL, "expected FIELD=value"},
	{"twice", "/CN=a/CN=b", NULL, "CN: given twice"},
	{"three-letter country", "/C=DEU/CN=a", NULL, "C: 'DEU' is not a valid value"},
	{"CN longer than 64", "/CN=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL,
	 "CN: 'aaaa"},
	{"lone backslash", "/CN=a\\", NULL, "CN: lone backslash"},
};

TC_INDEX_PARAMS(subject, parse, sizeof(parse_cases) / sizeof(parse_cases[0]))

ParameterizedTest(size_t *i, subject, parse)
{
	const struct parse_case *c = &parse_cases[*i];
	struct kg_err err = {""};
	X509_NAME *name = kg_subject_parse(c->text, &err);

	if (!c->oneline) {
		cr_assert_null(name, "%s: parsed", c->desc);
		cr_assert(strstr(err.msg, c->want), "%s: message '%s' lacks '%s'", c->desc, err.msg,
			  c->want);
		cr_assert(strncmp(err.msg, "--subject", 9) == 0, "%s: '%s'", c->desc, err.msg);
		return;
	}
	cr_assert_not_null(name, "%s: %s", c->desc, err.msg);
	char *line = X509_NAME_oneline(name, NULL, 0);
	cr_assert_str_eq(line, c->oneline, "%s: got %s", c->desc, line);
	OPENSSL_free(line);
	X509_NAME_free(name);
}

Test(subject, get_returns_utf8_value)
{
	struct kg_err err;
	X509_NAME *name = kg_subject_parse("/O=A\\/B/CN=J\xc3\xbcrgen", &err);
	cr_assert_not_null(name);
	char *cn = kg_subject_get(name, NID_commonName);
	char *o = kg_subject_get(name, NID_organizationName);
	cr_assert_str_eq(cn, "J\xc3\xbcrgen");
	cr_assert_str_eq(o, "A/B");
	cr_assert_null(kg_subject_get(name, NID_countryName));
	OPENSSL_free(cn);
	OPENSSL_free(o);
	X509_NAME_free(name);
}

struct policy_case {
	const char *desc;
	const char *ca, *req;
	const char *want; /* NULL: accepted; else fragment naming the field */
};

static const struct policy_case policy_cases[] = {
	{"same C/ST/O/OU", "/C=CN/ST=Zhejiang/O=Example/OU=Edge/CN=Root",
	 "/C=CN/ST=Zhejiang/O=Example/OU=Edge/CN=alice", NULL},
	{"only CN", "/C=CN/ST=Zhejiang/O=Example/OU=Edge/CN=Root", "/CN=alice", NULL},
	{"L and email are free", "/C=CN/L=Hangzhou/O=Example/CN=Root",
	 "/C=CN/L=Elsewhere/O=Example/CN=a/emailAddress=a@b.c", NULL},
	{"other C", "/C=CN/O=Example/CN=Root", "/C=US/O=Example/CN=a", "C: 'US' differs from the CA's 'CN'"},
	{"other ST", "/C=CN/ST=Zhejiang/CN=Root", "/ST=Jiangsu/CN=a", "ST: 'Jiangsu' differs"},
	{"other O", "/O=Example/CN=Root", "/O=Evil/CN=a", "O: 'Evil' differs"},
	{"other OU", "/O=Example/OU=Edge/CN=Root", "/O=Example/OU=Core/CN=a", "OU: 'Core' differs"},
	{"case matters", "/O=Example/CN=Root", "/O=example/CN=a", "O: 'example' differs"},
	{"field the CA lacks", "/O=Example/CN=Root", "/O=Example/OU=Edge/CN=a",
	 "OU: the CA's subject has no OU"},
};

TC_INDEX_PARAMS(subject, policy, sizeof(policy_cases) / sizeof(policy_cases[0]))

ParameterizedTest(size_t *i, subject, policy)
{
	const struct policy_case *c = &policy_cases[*i];
	struct kg_err err = {""};
	X509_NAME *ca = kg_subject_parse(c->ca, &err);
	X509_NAME *req = kg_subject_parse(c->req, &err);
	cr_assert(ca && req, "%s: fixture: %s", c->desc, err.msg);

	int ret = kg_subject_check_policy(ca, req, &err);
	if (!c->want) {
		cr_assert_eq(ret, 0, "%s: %s", c->desc, err.msg);
	} else {
		cr_assert_eq(ret, -EPERM, "%s: accepted", c->desc);
		cr_assert(strstr(err.msg, c->want), "%s: message '%s' lacks '%s'", c->desc, err.msg,
			  c->want);
	}
	X509_NAME_free(ca);
	X509_NAME_free(req);
}
