/* The configuration document: json-c parsing plus kgate's validation of
 * shape, ranges and references (config.c). Input: the JSON text. Checks
 * beyond "no crash": a refusal always comes with a one-line message. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = kf_strndup(data, size);
	char err[512] = "";
	/* A folder that does not exist: parsing must not touch files. */
	struct kg_config *cfg = kg_config_parse(text, "/nonexistent/kgate-fuzz", err, sizeof(err));
	if (!cfg) {
		KF_FAIL_IF(err[0] == '\0' || strchr(err, '\n')); /* refusals name what was wrong, on one line */
	} else {
		for (size_t i = 0; i < cfg->n_certs; i++)
			KF_FAIL_IF(kg_config_find_cert(cfg, cfg->certs[i].name) == NULL);
		for (size_t i = 0; i < cfg->n_listeners; i++) {
			const struct kg_listener_conf *l = &cfg->listeners[i];
			KF_FAIL_IF(l->n_backends == 0);
			for (unsigned code = 100; code < 600; code += 37)
				(void)kg_health_status_expected(&l->health_check, code);
		}
		kg_config_free(cfg);
	}
	free(text);
	return 0;
}
