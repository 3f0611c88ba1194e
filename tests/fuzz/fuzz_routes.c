/* The route parser and matcher (dataplane/routes.c). Input: the JSON text
 * of a "routes" array, then requests, each three parts: Host, request
 * target, method (all split by KF_SEP; an absent Host is the part "-").
 * Checks beyond "no crash": a refusal comes with a one-line message naming
 * the path; routes that parse have names and groups; for each request and
 * each fixed certificate (and none) the match is a route whose
 * certificate bit is set, and the first one: masking it out never yields
 * an earlier route. */
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <openssl/pem.h>

#include "fuzz_util.h"
#include "routes.h"

#define MAX_PARTS 31 /* the routes and ten requests */

static X509 *certs[4]; /* good.pem, noeku.pem, ca.pem, and no certificate */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	kf_load_test_certs(certs);
	return 0;
}

static void check_request(const struct kg_routes *r, const uint8_t *const *part,
			  const size_t *len)
{
	char *method = kf_strndup(part[2], len[2]);
	struct kg_route_req q = {.target = (const char *)part[1], .target_len = len[1],
				 .method = method};
	if (!(len[0] == 1 && part[0][0] == '-')) {
		q.host = (const char *)part[0];
		q.host_len = len[0];
	}
	for (size_t c = 0; c < sizeof(certs) / sizeof(certs[0]); c++) {
		q.cert_bits = kg_routes_cert_bits(r, certs[c]);
		int m = kg_routes_match(r, &q);
		KF_FAIL_IF(m < -1 || m >= (int)kg_routes_count(r));
		if (m < 0)
			continue;
		KF_FAIL_IF(!((q.cert_bits >> m) & 1));
		q.cert_bits &= ~(1ull << m);
		int next = kg_routes_match(r, &q);
		KF_FAIL_IF(next != -1 && next <= m);
	}
	free(method);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *part[MAX_PARTS];
	size_t len[MAX_PARTS];
	size_t n = kf_split(data, size, KF_SEP, part, len, MAX_PARTS);
	char *text = kf_strndup(part[0], len[0]);
	struct json_object *j = json_tokener_parse(text);
	char err[512] = "";
	struct kg_routes *r = j ? kg_routes_parse(j, "listeners[0].routes", err, sizeof(err)) : NULL;
	if (j && !r)
		KF_FAIL_IF(strncmp(err, "listeners[0].routes", 19) != 0 || strchr(err, '\n'));
	for (size_t i = 0; i < kg_routes_count(r); i++)
		KF_FAIL_IF(!kg_routes_name(r, i)[0] || !kg_routes_group(r, i)[0]);
	KF_FAIL_IF(kg_routes_count(r) > KG_ROUTES_MAX);
	for (size_t i = 1; r && i + 3 <= n; i += 3)
		check_request(r, part + i, len + i);
	kg_routes_free(r);
	json_object_put(j);
	free(text);
	return 0;
}
