/* SNI entries (dataplane/sni.c and config.c's "sni" parsing; the
 * listener has access rules of its own, which entries share or not). The first
 * byte chooses:
 *   'j' the rest is the JSON of a listener's "sni" array, parsed inside a
 *       fixed document; a refusal is one line; an accepted document has only checked, lower-case names,
 *       each found (kg_config_sni_find) in an entry that matches it, and an
 *       entry without a policy of its own has the listener's;
 *   'm' the rest is "pattern\nname": kg_sni_match against a plain
 *       reference for a pattern kg_sni_name_check accepts, and
 *       kg_sni_host_of on the name staying inside it;
 *   other: the rest is a server_name extension body for kg_sni_from_ext,
 *       whose name must lie inside it, 1-254 bytes without a NUL. */
#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "fuzz_util.h"
#include "sni.h"

#define DOC_HEAD                                                                          \
	"{\"certificates\": {\"web\": {\"type\": \"server\", \"cert\": \"/w.pem\", \"key\": "   \
	"\"/w.key\"}, \"api\": {\"type\": \"server\", \"cert\": \"/a.pem\", \"key\": "           \
	"\"/a.key\"}, \"partners\": {\"type\": \"ca\", \"cert\": \"/p.pem\"}}, \"listeners\": "  \
	"[{\"name\": \"web\", \"protocol\": \"https\", \"bind\": \"127.0.0.1\", \"port\": 8443, " \
	"\"certificate\": \"web\", \"ca\": \"partners\", \"backends\": [{\"address\": "          \
	"\"127.0.0.1:9001\"}], \"access_rules\": [{\"name\": \"l\", \"action\": \"allow\", "    \
	"\"match\": {\"cn\": \"x\"}}], \"sni\": "
#define DOC_TAIL "}]}"

/* The rule as sni.h states it, written the long way. */
static bool ref_match(const char *pattern, const char *name, size_t len)
{
	char low[KG_SNI_NAME_MAX + 1];
	if (len > KG_SNI_NAME_MAX || memchr(name, '\0', len))
		return false;
	for (size_t i = 0; i < len; i++)
		low[i] = (char)tolower((unsigned char)name[i]);
	low[len] = '\0';
	if (pattern[0] != '*')
		return strcasecmp(pattern, low) == 0;
	const char *dot = strchr(low, '.');
	return dot && dot != low && strcasecmp(dot, pattern + 1) == 0;
}

static void check_doc(const uint8_t *data, size_t size)
{
	size_t hl = strlen(DOC_HEAD), tl = strlen(DOC_TAIL);
	char *doc = malloc(hl + size + tl + 1), err[512] = "";
	KF_FAIL_IF(!doc);
	memcpy(doc, DOC_HEAD, hl);
	memcpy(doc + hl, data, size);
	memcpy(doc + hl + size, DOC_TAIL, tl + 1);
	if (memchr(data, '\0', size)) {
		free(doc);
		return; /* a C string ends there: nothing the daemon could be given */
	}
	struct kg_config *cfg = kg_config_parse(doc, "/", err, sizeof(err));
	if (!cfg) {
		/* The input may close the listener and write other keys, so
		 * the path may be anywhere: one line, saying something. */
		KF_FAIL_IF(strchr(err, '\n') || !err[0]);
		free(doc);
		return;
	}
	const struct kg_listener_conf *l = &cfg->listeners[0];
	char why[160], probe[300];
	for (size_t e = 0; e < l->n_sni; e++) {
		const struct kg_sni_conf *s = &l->sni[e];
		KF_FAIL_IF(s->n_names == 0 || !s->tls || !s->tls->certificate);
		KF_FAIL_IF(s->tls->sni_index != e + 1);
		KF_FAIL_IF(!s->own_policy && memcmp(s->tls->client_policy, l->client_policy,
						    sizeof(l->client_policy)) != 0);
		for (size_t n = 0; n < s->n_names; n++) {
			const char *name = s->names[n];
			KF_FAIL_IF(kg_sni_name_check(name, why, sizeof(why)) != 0);
			for (const char *c = name; *c; c++)
				KF_FAIL_IF(isupper((unsigned char)*c));
			/* A client's name for it: itself, or a label for the '*'. */
			snprintf(probe, sizeof(probe), "%s%s", name[0] == '*' ? "X" : "",
				 name[0] == '*' ? name + 1 : name);
			int found = kg_config_sni_find(l, probe, strlen(probe));
			KF_FAIL_IF(found < 0);
			bool matches = false;
			for (size_t k = 0; k < l->sni[found].n_names; k++)
				matches |= kg_sni_match(l->sni[found].names[k], probe, strlen(probe));
			KF_FAIL_IF(!matches);
			KF_FAIL_IF(name[0] != '*' && (size_t)found != e);
		}
	}
	kg_config_free(cfg);
	free(doc);
}

static void check_match(const uint8_t *data, size_t size)
{
	const uint8_t *part[2];
	size_t len[2];
	char why[160];
	if (kf_split(data, size, "\n", part, len, 2) < 2)
		return;
	char *pattern = kf_strndup(part[0], len[0]);
	const char *name = (const char *)part[1];
	if (strlen(pattern) == len[0] && kg_sni_name_check(pattern, why, sizeof(why)) == 0) {
		for (char *c = pattern; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		KF_FAIL_IF(kg_sni_match(pattern, name, len[1]) != ref_match(pattern, name, len[1]));
	}
	const char *host = NULL;
	size_t hlen = 0;
	if (kg_sni_host_of(name, len[1], &host, &hlen))
		KF_FAIL_IF(hlen == 0 || host < name || host + hlen > name + len[1]);
	free(pattern);
}

static void check_ext(const uint8_t *data, size_t size)
{
	const char *name = NULL;
	size_t len = 0;
	int r = kg_sni_from_ext(data, size, &name, &len);
	KF_FAIL_IF(r != 0 && r != -ENOENT && r != -EINVAL);
	if (r == 0)
		KF_FAIL_IF(len == 0 || len > KG_SNI_NAME_MAX + 1 || (const uint8_t *)name < data ||
			   (const uint8_t *)name + len > data + size || memchr(name, '\0', len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] == 'j')
		check_doc(data + 1, size - 1);
	else if (data[0] == 'm')
		check_match(data + 1, size - 1);
	else
		check_ext(data + 1, size - 1);
	return 0;
}
