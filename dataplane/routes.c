/* Routes of https listeners (routes.h). */
#include "routes.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <json-c/json.h>

#include "kgate/log.h"

#include "jpath.h"

#include "access.h"


struct route {
	char *name;
	char *group;
	char *host;       /* lower case, without "*."; NULL: any host */
	bool host_wild;   /* "*.host": any name below host */
	char *path_prefix; /* NULL: any path */
	size_t path_len;
	char *methods[KG_ROUTE_METHODS_MAX];
	size_t n_methods; /* 0: any method */
};

struct kg_routes {
	struct route *r;
	size_t n;
	/* Parallel to r: each route's certificate matcher, NULL for none
	 * (the shape kg_cert_match_eval takes). */
	struct kg_cert_match **cert;
};

/* A string member without NUL bytes, non-empty: 1, 0 absent, -EINVAL. */
static int get_str(struct json_object *o, const char *path, const char *key, const char **out,
		   char *kp, char *err, size_t errlen)
{
	struct json_object *v = NULL;
	kg_jpath_member(kp, path, key);
	if (!json_object_object_get_ex(o, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_string))
		return kg_jpath_fail(err, errlen, kp, "expected a string");
	const char *s = json_object_get_string(v);
	if (strlen(s) != (size_t)json_object_get_string_len(v))
		return kg_jpath_fail(err, errlen, kp, "must not contain NUL characters");
	if (!s[0])
		return kg_jpath_fail(err, errlen, kp, "must not be empty");
	*out = s;
	return 1;
}

bool kg_route_host_valid(const char *s, const char **why)
{
	const char *name = s;
	if (strncmp(s, "*.", 2) == 0)
		name = s + 2;
	size_t len = strlen(name), label = 0;
	if (len == 0 || len > KG_ROUTE_HOST_MAX) {
		*why = "expected a host name of 1-253 characters";
		return false;
	}
	if (strchr(name, '*')) {
		*why = "a wildcard is \"*.\" at the start only (\"*.example.com\")";
		return false;
	}
	for (const char *c = name;; c++) {
		if (*c == '.' || !*c) {
			if (label == 0 || label > 63) {
				*why = "labels are 1-63 characters, separated by single dots";
				return false;
			}
			if (!*c)
				break;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_') {
			*why = "a host name has letters, digits, '-' and dots (no port, no "
			       "scheme, no path)";
			return false;
		}
		label++;
	}
	return true;
}

static int parse_host(struct route *rt, struct json_object *match, const char *mpath,
		      char *err, size_t errlen)
{
	char kp[KG_JPATH_MAX];
	const char *s, *why = "";
	int r = get_str(match, mpath, "host", &s, kp, err, errlen);
	if (r <= 0)
		return r;
	if (!kg_route_host_valid(s, &why))
		return kg_jpath_fail(err, errlen, kp, "\"%.100s\": %s", s, why);
	rt->host_wild = strncmp(s, "*.", 2) == 0;
	rt->host = strdup(rt->host_wild ? s + 2 : s);
	if (!rt->host)
		return kg_jpath_fail(err, errlen, kp, "out of memory");
	for (char *c = rt->host; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	return 1;
}

static int parse_path(struct route *rt, struct json_object *match, const char *mpath,
		      char *err, size_t errlen)
{
	char kp[KG_JPATH_MAX];
	const char *s;
	int r = get_str(match, mpath, "path_prefix", &s, kp, err, errlen);
	if (r <= 0)
		return r;
	size_t len = strlen(s);
	if (s[0] != '/')
		return kg_jpath_fail(err, errlen, kp, "must start with \"/\"");
	if (len > KG_ROUTE_PATH_MAX)
		return kg_jpath_fail(err, errlen, kp, "longer than %d bytes", KG_ROUTE_PATH_MAX);
	/* What a request target may hold (RFC 3986); the query is not part
	 * of the path, so "?" and "#" could never match. */
	for (const char *c = s; *c; c++)
		if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f || *c == '?' || *c == '#')
			return kg_jpath_fail(err, errlen, kp, "has a character a request path cannot have "
						     "(space, control, non-ASCII, '?' or '#')");
	rt->path_prefix = strdup(s);
	if (!rt->path_prefix)
		return kg_jpath_fail(err, errlen, kp, "out of memory");
	rt->path_len = len;
	return 1;
}

/* A method is an HTTP token (RFC 9110 5.6.2); methods are case-sensitive. */
static bool method_valid(const char *s)
{
	if (!*s || strlen(s) > 15)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
			return false;
	return true;
}

static int parse_methods(struct route *rt, struct json_object *match, const char *mpath,
			 char *err, size_t errlen)
{
	char kp[KG_JPATH_MAX], ip[KG_JPATH_MAX];
	struct json_object *v = NULL;
	kg_jpath_member(kp, mpath, "method");
	if (!json_object_object_get_ex(match, "method", &v))
		return 0;
	bool is_array = json_object_is_type(v, json_type_array);
	if (!is_array && !json_object_is_type(v, json_type_string))
		return kg_jpath_fail(err, errlen, kp, "expected a string or an array of strings");
	size_t n = is_array ? json_object_array_length(v) : 1;
	if (n == 0)
		return kg_jpath_fail(err, errlen, kp, "must not be an empty array");
	if (n > KG_ROUTE_METHODS_MAX)
		return kg_jpath_fail(err, errlen, kp, "at most %d methods", KG_ROUTE_METHODS_MAX);
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = is_array ? json_object_array_get_idx(v, i) : v;
		if (is_array)
			kg_jpath_index(ip, kp, i);
		else
			snprintf(ip, sizeof(ip), "%s", kp);
		if (!json_object_is_type(s, json_type_string))
			return kg_jpath_fail(err, errlen, ip, "expected a string");
		const char *m = json_object_get_string(s);
		if (strlen(m) != (size_t)json_object_get_string_len(s) || !method_valid(m))
			return kg_jpath_fail(err, errlen, ip, "expected a method such as \"GET\" (an HTTP "
						     "token of 1-15 characters)");
		for (size_t j = 0; j < rt->n_methods; j++)
			if (strcmp(rt->methods[j], m) == 0)
				return kg_jpath_fail(err, errlen, ip, "\"%s\" is listed twice", m);
		rt->methods[rt->n_methods] = strdup(m);
		if (!rt->methods[rt->n_methods])
			return kg_jpath_fail(err, errlen, ip, "out of memory");
		rt->n_methods++;
	}
	return 1;
}

static int parse_route(struct kg_routes *rs, struct json_object *o, const char *path,
		       char *err, size_t errlen)
{
	static const char *const keys[] = {"name", "match", "group", NULL};
	static const char *const match_keys[] = {"host", "path_prefix", "method", "cert", NULL};
	struct route *rt = &rs->r[rs->n];
	struct json_object *match = NULL, *cert = NULL;
	char kp[KG_JPATH_MAX], mp[KG_JPATH_MAX];
	const char *s;
	int r;

	if (!json_object_is_type(o, json_type_object))
		return kg_jpath_fail(err, errlen, path, "expected an object");
	json_object_object_foreach(o, key, val) {
		(void)val;
		size_t k = 0;
		while (keys[k] && strcmp(keys[k], key) != 0)
			k++;
		if (!keys[k]) {
			kg_jpath_member(kp, path, key);
			return kg_jpath_fail(err, errlen, kp, "unknown key (known: name, match, group)");
		}
	}
	r = get_str(o, path, "name", &s, kp, err, errlen);
	if (r == 0)
		return kg_jpath_fail(err, errlen, kp, "is required");
	if (r < 0)
		return r;
	if (!kg_access_name_valid(s))
		return kg_jpath_fail(err, errlen, kp, "use 1-80 letters, digits or - / . _");
	for (size_t i = 0; i < rs->n; i++)
		if (strcmp(rs->r[i].name, s) == 0)
			return kg_jpath_fail(err, errlen, kp, "duplicate route name \"%s\" (also %.*s[%zu])",
				    s, (int)(strrchr(path, '[') - path), path, i);
	rt->name = strdup(s);
	if (!rt->name)
		return kg_jpath_fail(err, errlen, kp, "out of memory");
	rs->n++;

	r = get_str(o, path, "group", &s, kp, err, errlen);
	if (r == 0)
		return kg_jpath_fail(err, errlen, kp, "is required (the backend group the route sends to)");
	if (r < 0)
		return r;
	/* Whether a group of that name exists is config.c's to say. */
	rt->group = strdup(s);
	if (!rt->group)
		return kg_jpath_fail(err, errlen, kp, "out of memory");

	kg_jpath_member(mp, path, "match");
	if (!json_object_object_get_ex(o, "match", &match))
		return kg_jpath_fail(err, errlen, mp, "is required (host, path_prefix, method, cert)");
	if (!json_object_is_type(match, json_type_object))
		return kg_jpath_fail(err, errlen, mp, "expected an object");
	json_object_object_foreach(match, mkey, mval) {
		(void)mval;
		size_t k = 0;
		while (match_keys[k] && strcmp(match_keys[k], mkey) != 0)
			k++;
		if (!match_keys[k]) {
			kg_jpath_member(kp, mp, mkey);
			return kg_jpath_fail(err, errlen, kp, "unknown key (known: host, path_prefix, "
						     "method, cert)");
		}
	}
	int have = 0;
	if ((r = parse_host(rt, match, mp, err, errlen)) < 0)
		return r;
	have += r;
	if ((r = parse_path(rt, match, mp, err, errlen)) < 0)
		return r;
	have += r;
	if ((r = parse_methods(rt, match, mp, err, errlen)) < 0)
		return r;
	have += r;
	if (json_object_object_get_ex(match, "cert", &cert)) {
		kg_jpath_member(kp, mp, "cert");
		rs->cert[rs->n - 1] = kg_cert_match_parse(cert, kp, err, errlen);
		if (!rs->cert[rs->n - 1])
			return -EINVAL;
		have++;
	}
	/* A route that matches everything is the default group's job, said
	 * where a reader looks for it. */
	if (!have)
		return kg_jpath_fail(err, errlen, mp, "needs at least one matcher (unmatched requests go "
					     "to default_group)");
	return 0;
}

struct kg_routes *kg_routes_parse(struct json_object *routes, const char *path, char *err,
				  size_t errlen)
{
	char rp[KG_JPATH_MAX];
	if (!json_object_is_type(routes, json_type_array)) {
		kg_jpath_fail(err, errlen, path, "expected an array of routes");
		return NULL;
	}
	size_t n = json_object_array_length(routes);
	if (n == 0) {
		kg_jpath_fail(err, errlen, path, "must not be an empty array (remove the key instead)");
		return NULL;
	}
	if (n > KG_ROUTES_MAX) {
		kg_jpath_fail(err, errlen, path, "at most %d routes", KG_ROUTES_MAX);
		return NULL;
	}
	struct kg_routes *rs = calloc(1, sizeof(*rs));
	if (!rs || !(rs->r = calloc(n, sizeof(*rs->r))) ||
	    !(rs->cert = calloc(n, sizeof(*rs->cert)))) {
		kg_jpath_fail(err, errlen, path, "out of memory");
		goto free_routes;
	}
	for (size_t i = 0; i < n; i++) {
		kg_jpath_index(rp, path, i);
		if (parse_route(rs, json_object_array_get_idx(routes, i), rp, err, errlen) < 0)
			goto free_routes;
	}
	return rs;
free_routes:
	kg_routes_free(rs);
	return NULL;
}

void kg_routes_free(struct kg_routes *rs)
{
	if (!rs)
		return;
	for (size_t i = 0; i < rs->n; i++) {
		struct route *rt = &rs->r[i];
		free(rt->name);
		free(rt->group);
		free(rt->host);
		free(rt->path_prefix);
		for (size_t m = 0; m < rt->n_methods; m++)
			free(rt->methods[m]);
		kg_cert_match_free(rs->cert[i]);
	}
	free(rs->r);
	free(rs->cert);
	free(rs);
}

size_t kg_routes_count(const struct kg_routes *rs)
{
	return rs ? rs->n : 0;
}

const char *kg_routes_name(const struct kg_routes *rs, size_t i)
{
	return rs->r[i].name;
}

const char *kg_routes_group(const struct kg_routes *rs, size_t i)
{
	return rs->r[i].group;
}

uint64_t kg_routes_cert_bits(const struct kg_routes *rs, X509 *cert)
{
	uint64_t bits = 0, none = 0;
	if (!rs)
		return 0;
	for (size_t i = 0; i < rs->n; i++)
		if (!rs->cert[i])
			none |= 1ull << i;
	if (kg_cert_match_eval(rs->cert, rs->n, cert, &bits) < 0)
		bits = 0;
	return bits | none;
}

/* The Host header's name: brackets of an IPv6 literal and the port go,
 * and a trailing dot (an absolute name). */
static void host_name(const char *h, size_t len, const char **out, size_t *out_len)
{
	while (len && (h[0] == ' ' || h[0] == '\t'))
		h++, len--;
	while (len && (h[len - 1] == ' ' || h[len - 1] == '\t'))
		len--;
	if (len && h[0] == '[') {
		const char *close = memchr(h, ']', len);
		*out = h + 1;
		*out_len = close ? (size_t)(close - h - 1) : len - 1;
		return;
	}
	const char *colon = memchr(h, ':', len);
	if (colon)
		len = (size_t)(colon - h);
	if (len && h[len - 1] == '.')
		len--;
	*out = h;
	*out_len = len;
}

static bool host_matches(const struct route *rt, const char *h, size_t len)
{
	size_t hl = strlen(rt->host);
	if (!rt->host_wild)
		return len == hl && strncasecmp(h, rt->host, hl) == 0;
	/* "*.example.com": at least one label, then ".example.com". */
	return len > hl + 1 && h[len - hl - 1] == '.' &&
	       strncasecmp(h + len - hl, rt->host, hl) == 0;
}

/* The path of a request target: origin-form "/p?q", absolute-form
 * "http://host/p?q" (RFC 9112 3.2); "*" and authority-form have none. */
static void target_path(const char *t, size_t len, const char **out, size_t *out_len)
{
	*out = t;
	*out_len = 0;
	if (len && t[0] != '/') {
		const char *sep = memmem(t, len, "://", 3);
		if (!sep)
			return;
		size_t at = (size_t)(sep - t) + 3;
		while (at < len && t[at] != '/' && t[at] != '?')
			at++;
		if (at == len || t[at] != '/') {
			*out = "/"; /* "http://host" and "http://host?q" ask for "/" */
			*out_len = 1;
			return;
		}
		t += at;
		len -= at;
	}
	size_t n = 0;
	while (n < len && t[n] != '?' && t[n] != '#')
		n++;
	*out = t;
	*out_len = n;
}

int kg_routes_match(const struct kg_routes *rs, const struct kg_route_req *q)
{
	const char *host = NULL, *path = NULL;
	size_t host_len = 0, path_len = 0;
	if (!rs)
		return -1;
	if (q->host)
		host_name(q->host, q->host_len, &host, &host_len);
	target_path(q->target ? q->target : "", q->target ? q->target_len : 0, &path, &path_len);
	for (size_t i = 0; i < rs->n; i++) {
		const struct route *rt = &rs->r[i];
		if (!((q->cert_bits >> i) & 1))
			continue;
		if (rt->host && (!host || !host_matches(rt, host, host_len)))
			continue;
		if (rt->path_prefix && (path_len < rt->path_len ||
					memcmp(path, rt->path_prefix, rt->path_len) != 0))
			continue;
		if (rt->n_methods) {
			bool any = false;
			for (size_t m = 0; m < rt->n_methods && !any; m++)
				any = q->method && strcmp(q->method, rt->methods[m]) == 0;
			if (!any)
				continue;
		}
		return (int)i;
	}
	return -1;
}
