/* The access rule parser and matcher (dataplane/access.c). Input: the
 * JSON text of an "access_rules" array. Checks beyond "no crash": a
 * refusal always comes with a one-line message naming the path; rules
 * that parse are evaluated against fixed certificates and always give a
 * decision and a rule name (one of theirs, or "(default)"). */
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <openssl/pem.h>

#include "access.h"
#include "fuzz_util.h"

static X509 *certs[3]; /* good.pem, noeku.pem, ca.pem */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	kf_load_test_certs(certs);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = kf_strndup(data, size);
	struct json_object *j = json_tokener_parse(text);
	char err[512] = "";
	struct kg_access *a = j ? kg_access_parse(j, "listeners[0].access_rules", err, sizeof(err))
				: NULL;
	if (j && !a)
		KF_FAIL_IF(strncmp(err, "listeners[0].access_rules", 25) != 0 || strchr(err, '\n'));
	for (size_t i = 0; a && i < sizeof(certs) / sizeof(certs[0]); i++) {
		const char *rule = NULL;
		enum kg_access_action d = kg_access_eval(a, certs[i], KG_ACCESS_DENY, &rule);
		KF_FAIL_IF(!rule || (d != KG_ACCESS_ALLOW && d != KG_ACCESS_DENY));
		KF_FAIL_IF(strcmp(rule, KG_ACCESS_DEFAULT_RULE) == 0 && d != KG_ACCESS_DENY);
	}
	kg_access_free(a);
	json_object_put(j);
	free(text);
	return 0;
}
