/* ocsp.c's responder URLs (ocsp_url, certificates' AIA): http only, an IP
 * address or localhost (a worker never waits for DNS), port and path
 * defaults, and a reason for each refusal. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include <criterion/criterion.h>

#include "ocsp_resp.h"

struct url_case {
	const char *url;
	int family;        /* 0: refused */
	const char *addr;  /* as inet_ntop writes it */
	unsigned port;
	const char *host, *path;
	const char *why;   /* part of the refusal */
};

Test(ocsp, url_parse)
{
	static const struct url_case cases[] = {
		{"http://127.0.0.1:8888/", AF_INET, "127.0.0.1", 8888, "127.0.0.1:8888", "/", NULL},
		{"http://10.1.2.3", AF_INET, "10.1.2.3", 80, "10.1.2.3", "/", NULL},
		{"http://localhost:2560/ocsp", AF_INET, "127.0.0.1", 2560, "localhost:2560", "/ocsp",
		 NULL},
		{"http://[::1]:9/a/b?c", AF_INET6, "::1", 9, "[::1]:9", "/a/b?c", NULL},
		{"http://[2001:db8::5]/", AF_INET6, "2001:db8::5", 80, "[2001:db8::5]", "/", NULL},
		{"https://127.0.0.1/", 0, NULL, 0, NULL, NULL, "not an http:// URL"},
		{"ldap://127.0.0.1/", 0, NULL, 0, NULL, NULL, "not an http:// URL"},
		{"http://ocsp.example.com/", 0, NULL, 0, NULL, NULL, "IP address or localhost"},
		{"http://127.0.0.1:0/", 0, NULL, 0, NULL, NULL, "bad port"},
		{"http://127.0.0.1:65536/", 0, NULL, 0, NULL, NULL, "bad port"},
		{"http://127.0.0.1:80x/", 0, NULL, 0, NULL, NULL, "bad port"},
		{"http://127.0.0.1:/", 0, NULL, 0, NULL, NULL, "bad port"},
		{"http://[::1/", 0, NULL, 0, NULL, NULL, "without ']'"},
		{"http://[::1]x/", 0, NULL, 0, NULL, NULL, "junk after"},
		{"http:///", 0, NULL, 0, NULL, NULL, "IP address or localhost"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct url_case *c = &cases[i];
		struct kg_ocsp_target t;
		char err[192] = "", addr[64] = "";
		int r = kg_ocsp_url_parse(c->url, &t, err, sizeof(err));
		if (!c->family) {
			cr_expect_eq(r, -EINVAL, "%s: accepted", c->url);
			cr_expect(strstr(err, c->why) != NULL, "%s: %s", c->url, err);
			continue;
		}
		cr_assert_eq(r, 0, "%s: %s", c->url, err);
		cr_expect_eq(t.addr.ss_family, c->family, "%s", c->url);
		const void *a = c->family == AF_INET
					? (const void *)&((struct sockaddr_in *)&t.addr)->sin_addr
					: (const void *)&((struct sockaddr_in6 *)&t.addr)->sin6_addr;
		unsigned port = ntohs(c->family == AF_INET
					      ? ((struct sockaddr_in *)&t.addr)->sin_port
					      : ((struct sockaddr_in6 *)&t.addr)->sin6_port);
		inet_ntop(c->family, a, addr, sizeof(addr));
		cr_expect_str_eq(addr, c->addr, "%s", c->url);
		cr_expect_eq(port, c->port, "%s", c->url);
		cr_expect_str_eq(t.host, c->host, "%s", c->url);
		cr_expect_str_eq(t.path, c->path, "%s", c->url);
	}
}

Test(ocsp, url_too_long)
{
	char url[KG_OCSP_URL_MAX + 32] = "http://127.0.0.1/";
	struct kg_ocsp_target t;
	char err[192] = "";
	memset(url + strlen(url), 'a', sizeof(url) - strlen(url) - 1);
	url[sizeof(url) - 1] = '\0';
	cr_expect_eq(kg_ocsp_url_parse(url, &t, err, sizeof(err)), -EINVAL);
	cr_expect(strstr(err, "longer than") != NULL, "%s", err);
}
