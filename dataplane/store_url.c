/* The store's address (store_url.h). */
#include "store_url.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEME "etcd://"

static int bad(char *err, size_t errlen, const char *text, const char *why)
{
	snprintf(err, errlen, "--store %s: %s (expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX)",
		 text, why);
	return -EINVAL;
}

/* a + b in a new string, or NULL (asprintf leaves its pointer undefined
 * on failure, which a cleanup path cannot free). */
static char *joined(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = malloc(la + lb + 1);
	if (s) {
		memcpy(s, a, la);
		memcpy(s + la, b, lb + 1);
	}
	return s;
}

static bool prefix_valid(const char *p)
{
	if (!*p || p[strlen(p) - 1] == '/' || strstr(p, "//"))
		return false;
	for (; *p; p++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/", *p))
			return false;
	return true;
}

/* "HOST:PORT" with a port of 1-65535; HOST may be "[v6]". */
static bool hostport_valid(const char *hp, size_t len)
{
	const char *colon = NULL;
	for (size_t i = 0; i < len; i++)
		if (hp[i] == ':')
			colon = hp + i;
	if (!colon || colon == hp || (size_t)(colon - hp) + 1 >= len)
		return false;
	unsigned long port = 0;
	for (const char *c = colon + 1; c < hp + len; c++) {
		if (*c < '0' || *c > '9')
			return false;
		port = port * 10 + (unsigned long)(*c - '0');
		if (port > 65535)
			return false;
	}
	if (port == 0)
		return false;
	for (const char *c = hp; c < colon; c++)
		if (*c == '/' || *c == '@' || *c == ' ' || *c == ',')
			return false;
	return true;
}

int kg_store_url_parse(const char *text, bool tls, struct kg_store_url *out, char *err,
		       size_t errlen)
{
	memset(out, 0, sizeof(*out));
	if (strncmp(text, SCHEME, strlen(SCHEME)) != 0)
		return bad(err, errlen, text, "not an etcd:// URL");
	const char *hosts = text + strlen(SCHEME), *slash = strchr(hosts, '/');
	if (!slash || slash == hosts)
		return bad(err, errlen, text, "no HOST:PORT or no /PREFIX");
	if (!prefix_valid(slash + 1))
		return bad(err, errlen, text, "PREFIX must be letters, digits, - . _ and inner /");
	out->text = strdup(text);
	if (!out->text)
		goto nomem;
	for (const char *p = hosts; p < slash;) {
		const char *end = memchr(p, ',', (size_t)(slash - p));
		size_t len = (size_t)((end ? end : slash) - p);
		if (!hostport_valid(p, len))
			return bad(err, errlen, text, "each member must be HOST:PORT");
		if (out->n_endpoints == KG_STORE_MAX_ENDPOINTS)
			return bad(err, errlen, text, "at most 8 members");
		char *ep = malloc(len + sizeof("https://"));
		if (!ep)
			goto nomem;
		snprintf(ep, len + sizeof("https://"), "%s://%.*s", tls ? "https" : "http", (int)len,
			 p);
		out->endpoints[out->n_endpoints++] = ep;
		p += len + (end ? 1 : 0);
		if (end && p == slash)
			return bad(err, errlen, text, "empty member after ','");
	}
	out->prefix = strdup(slash);
	out->state_key = joined(slash, "/state");
	out->tickets_key = joined(slash, "/ticket-keys");
	out->instances = joined(slash, "/instances/");
	out->members = joined(slash, "/members/");
	if (!out->prefix || !out->state_key || !out->tickets_key || !out->instances ||
	    !out->members)
		goto nomem;
	return 0;
nomem:
	snprintf(err, errlen, "--store: out of memory");
	return -ENOMEM;
}

void kg_store_url_free(struct kg_store_url *u)
{
	free(u->text);
	for (size_t i = 0; i < u->n_endpoints; i++)
		free(u->endpoints[i]);
	free(u->prefix);
	free(u->state_key);
	free(u->tickets_key);
	free(u->instances);
	free(u->members);
	memset(u, 0, sizeof(*u));
}
