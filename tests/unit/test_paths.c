/* paths.c: which path each protocol and `forwarding` setting takes on a
 * kernel with and without kTLS, and what is refused with which message. */
#include <stdio.h>
#include <string.h>

#include <errno.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "paths.h"

struct plan_case {
	const char *name;
	enum kg_protocol protocol;
	enum kg_forwarding forwarding;
	bool ktls;
	enum kg_path want;   /* KG_PATH_NONE: refused */
	bool forced;
	const char *err_has; /* refused: part of the message */
};

static const struct plan_case cases[] = {
	{"https auto, kTLS", KG_PROTO_HTTPS, KG_FWD_AUTO, true, KG_PATH_HTTP_KTLS, false, NULL},
	{"https auto, no kTLS", KG_PROTO_HTTPS, KG_FWD_AUTO, false, KG_PATH_HTTP, false, NULL},
	{"https userspace, kTLS", KG_PROTO_HTTPS, KG_FWD_USERSPACE, true, KG_PATH_HTTP, true, NULL},
	{"https splice, kTLS", KG_PROTO_HTTPS, KG_FWD_SPLICE, true, KG_PATH_HTTP_KTLS, true, NULL},
	{"https splice, no kTLS", KG_PROTO_HTTPS, KG_FWD_SPLICE, false, KG_PATH_NONE, false,
	 "http-ktls-splice) on an https listener needs kernel TLS, and no ULP here"},
	{"https sockmap", KG_PROTO_HTTPS, KG_FWD_SOCKMAP, true, KG_PATH_NONE, false,
	 "only for protocol \"tcp\""},
	{"tls auto, kTLS", KG_PROTO_TLS, KG_FWD_AUTO, true, KG_PATH_KTLS_SPLICE, false, NULL},
	{"tls auto, no kTLS", KG_PROTO_TLS, KG_FWD_AUTO, false, KG_PATH_USERSPACE, false, NULL},
	{"tls splice, no kTLS", KG_PROTO_TLS, KG_FWD_SPLICE, false, KG_PATH_NONE, false,
	 "needs kernel TLS"},
	{"tcp auto", KG_PROTO_TCP, KG_FWD_AUTO, true, KG_PATH_SPLICE, false, NULL},
};

#define N_CASES (sizeof(cases) / sizeof(cases[0]))

TestSuite(paths);

ParameterizedTestParameters(paths, plan)
{
	static size_t idx[N_CASES];
	for (size_t i = 0; i < N_CASES; i++)
		idx[i] = i;
	return cr_make_param_array(size_t, idx, N_CASES);
}

ParameterizedTest(size_t *i, paths, plan)
{
	const struct plan_case *c = &cases[*i];
	struct kg_listener_conf lc;
	struct kg_kernel_caps caps;
	memset(&lc, 0, sizeof(lc));
	memset(&caps, 0, sizeof(caps));
	lc.protocol = c->protocol;
	lc.forwarding = c->forwarding;
	caps.ktls = c->ktls;
	snprintf(caps.ktls_why, sizeof(caps.ktls_why), "%s", c->ktls ? "TLS ULP available"
								     : "no ULP here");
	enum kg_path plan;
	bool forced;
	char err[256] = "";
	int r = kg_path_plan(&lc, &caps, &plan, &forced, err, sizeof(err));
	if (c->want == KG_PATH_NONE) {
		cr_assert_eq(r, -EOPNOTSUPP, "%s: accepted as %s", c->name, kg_path_name(plan));
		cr_expect(strstr(err, c->err_has) != NULL, "%s: message \"%s\"", c->name, err);
		return;
	}
	cr_assert_eq(r, 0, "%s: refused: %s", c->name, err);
	cr_expect_eq(plan, c->want, "%s: %s", c->name, kg_path_name(plan));
	cr_expect_eq(forced, c->forced, "%s", c->name);
}

Test(paths, names_and_families)
{
	cr_expect_str_eq(kg_path_name(KG_PATH_HTTP_KTLS), "http-ktls-splice");
	cr_expect_str_eq(kg_path_name(KG_PATH_HTTP), "http-userspace-tls");
	cr_expect(kg_path_hands_off(KG_PATH_HTTP_KTLS) && kg_path_hands_off(KG_PATH_KTLS_SPLICE));
	cr_expect(!kg_path_hands_off(KG_PATH_HTTP) && !kg_path_hands_off(KG_PATH_USERSPACE));
	cr_expect(kg_path_is_http(KG_PATH_HTTP) && kg_path_is_http(KG_PATH_HTTP_KTLS));
	cr_expect(!kg_path_is_http(KG_PATH_KTLS_SPLICE));
}

/* ALPN h2 moves an https path to its HTTP/2 twin; nothing else moves. */
static const struct {
	const char *name;
	enum kg_path in;
	const char *alpn;
	enum kg_path want;
} alpn_cases[] = {
	{"https userspace, h2", KG_PATH_HTTP, "h2", KG_PATH_H2},
	{"https kTLS, h2", KG_PATH_HTTP_KTLS, "h2", KG_PATH_H2_KTLS},
	{"https userspace, http/1.1", KG_PATH_HTTP, "http/1.1", KG_PATH_HTTP},
	{"https kTLS, none", KG_PATH_HTTP_KTLS, "", KG_PATH_HTTP_KTLS},
	{"tls relay, h2", KG_PATH_USERSPACE, "h2", KG_PATH_USERSPACE},
	{"tls kTLS relay, h2", KG_PATH_KTLS_SPLICE, "h2", KG_PATH_KTLS_SPLICE},
	{"https, h2c is not h2", KG_PATH_HTTP, "h2c", KG_PATH_HTTP},
	{"https, a prefix of h2", KG_PATH_HTTP, "h", KG_PATH_HTTP},
};

Test(paths, alpn_h2_picks_the_http2_twin)
{
	for (size_t i = 0; i < sizeof(alpn_cases) / sizeof(alpn_cases[0]); i++) {
		const char *a = alpn_cases[i].alpn;
		cr_expect_eq(kg_path_for_alpn(alpn_cases[i].in, (const unsigned char *)a,
					      (unsigned)strlen(a)),
			     alpn_cases[i].want, "%s", alpn_cases[i].name);
	}
	cr_expect_str_eq(kg_path_name(KG_PATH_H2), "h2-userspace-tls");
	cr_expect_str_eq(kg_path_name(KG_PATH_H2_KTLS), "h2-ktls");
	cr_expect(kg_path_hands_off(KG_PATH_H2_KTLS) && !kg_path_hands_off(KG_PATH_H2));
	cr_expect(kg_path_is_http(KG_PATH_H2) && kg_path_is_http(KG_PATH_H2_KTLS));
}
