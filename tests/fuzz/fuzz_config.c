/* The configuration document and the daemon's state document (the same
 * schema, where a state may hold no listeners): json-c parsing plus
 * kgate's validation of shape, ranges and references (config.c). Input:
 * the JSON text, parsed both ways. Checks beyond "no crash": a refusal
 * always comes with a one-line message; what parses as a configuration
 * parses as a state too. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz_util.h"

static struct kg_config *parse(const char *text, bool state)
{
	char err[512] = "";
	/* A folder that does not exist: parsing must not touch files. */
	struct kg_config *cfg = state
		? kg_config_parse_state(text, "/nonexistent/kgate-fuzz", err, sizeof(err))
		: kg_config_parse(text, "/nonexistent/kgate-fuzz", err, sizeof(err));
	if (!cfg) {
		KF_FAIL_IF(err[0] == '\0' || strchr(err, '\n')); /* refusals name what was wrong, on one line */
		return NULL;
	}
	for (size_t i = 0; i < cfg->n_certs; i++)
		KF_FAIL_IF(kg_config_find_cert(cfg, cfg->certs[i].name) == NULL);
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct kg_listener_conf *l = &cfg->listeners[i];
		KF_FAIL_IF(l->group == NULL && l->routes == NULL);
		for (unsigned code = 100; code < 600; code += 37)
			(void)kg_health_status_expected(&l->own.health_check, code);
	}
	return cfg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = kf_strndup(data, size);
	struct kg_config *as_config = parse(text, false);
	struct kg_config *as_state = parse(text, true);
	KF_FAIL_IF(as_config && !as_state);
	kg_config_free(as_config);
	kg_config_free(as_state);
	free(text);
	return 0;
}
