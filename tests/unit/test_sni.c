/* dataplane/sni.c: the names an sni entry may have, how a client's name
 * matches them, Host values and the server_name extension. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "config.h"
#include "sni.h"

static const struct {
	const char *name;
	const char *why; /* NULL: accepted */
} names[] = {
	{"api.example.com", NULL},
	{"localhost", NULL},
	{"*.example.org", NULL},
	{"xn--bcher-kva.example", NULL},
	{"a-b.c-d.example", NULL},
	{"", "is empty"},
	{"*.com", "a wildcard needs two labels"},
	{"*", "has '*' other than"},
	{"a.*.example.org", "has '*' other than"},
	{"*a.example.org", "has '*' other than"},
	{"**.example.org", "has '*' other than"},
	{"foo..example.org", "has an empty label"},
	{".example.org", "has an empty label"},
	{"example.org.", "ends with a dot"},
	{"-a.example.org", "starts or ends with '-'"},
	{"a-.example.org", "starts or ends with '-'"},
	{"exa_mple.org", "has '_'"},
	{"exa mple.org", "has ' '"},
	{"a.b\xc3\xa4.org", "has '?'"},
	{"1234567890123456789012345678901234567890123456789012345678901234.org",
	 "label longer than 63"},
};

Test(sni, name_check)
{
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char why[160] = "";
		int r = kg_sni_name_check(names[i].name, why, sizeof(why));
		if (!names[i].why) {
			cr_expect_eq(r, 0, "%s: %s", names[i].name, why);
		} else {
			cr_expect_eq(r, -EINVAL, "%s accepted", names[i].name);
			cr_expect(strstr(why, names[i].why), "%s: %s", names[i].name, why);
		}
	}
	char longest[300];
	memset(longest, 'a', sizeof(longest));
	for (size_t i = 63; i < sizeof(longest); i += 64)
		longest[i] = '.';
	longest[253] = '\0';
	char why[160];
	cr_expect_eq(kg_sni_name_check(longest, why, sizeof(why)), 0, "%s", why);
	longest[253] = 'a';
	longest[254] = '\0';
	cr_expect_eq(kg_sni_name_check(longest, why, sizeof(why)), -EINVAL);
	cr_expect(strstr(why, "longer than 253"), "%s", why);
}

static const struct {
	const char *pattern, *name;
	bool match;
} matches[] = {
	{"api.example.com", "api.example.com", true},
	{"api.example.com", "API.Example.COM", true},
	{"api.example.com", "api.example.co", false},
	{"api.example.com", "api.example.com.", false},
	{"api.example.com", "xapi.example.com", false},
	{"*.example.org", "a.example.org", true},
	{"*.example.org", "A.EXAMPLE.ORG", true},
	{"*.example.org", "example.org", false},
	{"*.example.org", ".example.org", false},
	{"*.example.org", "a.b.example.org", false},
	{"*.example.org", "aexample.org", false},
	{"*.example.org", "a.example.org.evil", false},
};

Test(sni, match)
{
	for (size_t i = 0; i < sizeof(matches) / sizeof(matches[0]); i++)
		cr_expect_eq(kg_sni_match(matches[i].pattern, matches[i].name,
					  strlen(matches[i].name)), matches[i].match, "%s ~ %s",
			     matches[i].pattern, matches[i].name);
	/* Not NUL-terminated, and a NUL inside never matches. */
	cr_expect(kg_sni_match("a.example.org", "a.example.orgXYZ", 13));
	cr_expect(!kg_sni_match("*.example.org", "a\0b.example.org", 15));
	/* Longer than any DNS name: garbage, even when it ends right (the
	 * fuzzer's corpus/sni/crash-wildcard-match-past-253-bytes). */
	char longname[KG_SNI_NAME_MAX + 1];
	memset(longname, 'a', sizeof(longname));
	memcpy(longname + sizeof(longname) - 12, ".example.org", 12);
	cr_expect(kg_sni_match("*.example.org", longname + 1, sizeof(longname) - 1));
	cr_expect(!kg_sni_match("*.example.org", longname, sizeof(longname)));
}

Test(sni, find_prefers_exact_names)
{
	char *wild[] = {"*.example.org"}, *exact[] = {"a.example.org"}, *other[] = {"b.test"};
	struct kg_sni_conf e[3] = {{.names = wild, .n_names = 1},
				   {.names = exact, .n_names = 1},
				   {.names = other, .n_names = 1}};
	struct kg_listener_conf l = {.sni = e, .n_sni = 3};
	cr_expect_eq(kg_config_sni_find(&l, "a.example.org", 13), 1);
	cr_expect_eq(kg_config_sni_find(&l, "c.example.org", 13), 0);
	cr_expect_eq(kg_config_sni_find(&l, "B.TEST", 6), 2);
	cr_expect_eq(kg_config_sni_find(&l, "c.test", 6), -1);
	cr_expect_eq(kg_config_sni_find(&l, "", 0), -1);
}

Test(sni, host_of)
{
	static const struct {
		const char *value, *host; /* host NULL: refused */
	} cases[] = {
		{"api.example.com", "api.example.com"},
		{"api.example.com:8443", "api.example.com"},
		{" API.example.com. ", "API.example.com"},
		{"example.org.:443", "example.org"},
		{"[::1]:8443", "[::1]"},
		{"[::1]", "[::1]"},
		{"[::1", NULL},
		{"[::1]x", NULL},
		{":443", NULL},
		{"", NULL},
		{"  ", NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *host = NULL;
		size_t len = 0;
		bool ok = kg_sni_host_of(cases[i].value, strlen(cases[i].value), &host, &len);
		cr_expect_eq(ok, cases[i].host != NULL, "%s", cases[i].value);
		if (ok && cases[i].host)
			cr_expect(len == strlen(cases[i].host) &&
				  memcmp(host, cases[i].host, len) == 0, "%s: %.*s", cases[i].value,
				  (int)len, host);
	}
}

Test(sni, from_ext)
{
	const char *name = NULL;
	size_t len = 0;
	static const unsigned char ok[] = {0, 8, 0, 0, 5, 'a', '.', 'o', 'r', 'g'};
	cr_expect_eq(kg_sni_from_ext(ok, sizeof(ok), &name, &len), 0);
	cr_expect(len == 5 && memcmp(name, "a.org", 5) == 0);
	/* Another name type first, then host_name. */
	static const unsigned char second[] = {0, 10, 7, 0, 1, 'x', 0, 0, 3, 'a', '.', 'b'};
	cr_expect_eq(kg_sni_from_ext(second, sizeof(second), &name, &len), 0);
	cr_expect(len == 3 && memcmp(name, "a.b", 3) == 0);
	static const unsigned char none[] = {0, 4, 1, 0, 1, 'x'};
	cr_expect_eq(kg_sni_from_ext(none, sizeof(none), &name, &len), -ENOENT);
	static const unsigned char bad_list[] = {0, 9, 0, 0, 5, 'a', '.', 'o', 'r', 'g'};
	cr_expect_eq(kg_sni_from_ext(bad_list, sizeof(bad_list), &name, &len), -EINVAL);
	static const unsigned char bad_name[] = {0, 8, 0, 0, 6, 'a', '.', 'o', 'r', 'g'};
	cr_expect_eq(kg_sni_from_ext(bad_name, sizeof(bad_name), &name, &len), -EINVAL);
	static const unsigned char nul[] = {0, 6, 0, 0, 3, 'a', 0, 'b'};
	cr_expect_eq(kg_sni_from_ext(nul, sizeof(nul), &name, &len), -EINVAL);
	static const unsigned char empty[] = {0, 3, 0, 0, 0};
	cr_expect_eq(kg_sni_from_ext(empty, sizeof(empty), &name, &len), -EINVAL);
	cr_expect_eq(kg_sni_from_ext(ok, 1, &name, &len), -EINVAL);
}
