/* The configuration document: json-c tree → struct kg_config, strictly.
 * Every rule lives here so the daemon, --check and (later) the control
 * socket refuse the same documents with the same "<json.path>: <reason>". */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <json-c/json.h>
#include <openssl/evp.h>

#include "kgate/limits.h"
#include "kgate/log.h"

#include "access.h"
#include "sni.h"
#include "ocsp_resp.h"
#include "routes.h"

#define KG_CONFIG_MAX_BYTES (16u << 20) /* a config is kilobytes; refuse absurd input */
#define KG_PATH_MAX 256                 /* JSON paths in messages */

struct parser {
	char *err;
	size_t errlen;
	const char *base_dir;
	bool allow_empty; /* a state document may have no listeners (yet) */
};

__attribute__((format(printf, 3, 4))) static int fail(struct parser *p, const char *path,
						      const char *fmt, ...)
{
	int n = snprintf(p->err, p->errlen, "%s: ", path[0] ? path : "(top level)");
	if (n >= 0 && (size_t)n < p->errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	kg_text_one_line(p->err);
	return -EINVAL;
}

/* Paths only feed messages: a (theoretical) truncation is acceptable. */
static void member_path(char *out, const char *parent, const char *key)
{
	if (snprintf(out, KG_PATH_MAX, "%s%s%s", parent, parent[0] ? "." : "", key) < 0)
		out[0] = '\0';
}

static void index_path(char *out, const char *parent, size_t i)
{
	if (snprintf(out, KG_PATH_MAX, "%s[%zu]", parent, i) < 0)
		out[0] = '\0';
}

static const char *type_name(const struct json_object *v)
{
	switch (json_object_get_type(v)) {
	case json_type_null: return "null";
	case json_type_boolean: return "a boolean";
	case json_type_double: return "a non-integer number";
	case json_type_int: return "an integer";
	case json_type_object: return "an object";
	case json_type_array: return "an array";
	case json_type_string: return "a string";
	}
	return "an unknown type";
}

static int expect_type(struct parser *p, const char *path, struct json_object *v,
		       enum json_type type, const char *what)
{
	if (json_object_is_type(v, type))
		return 0;
	return fail(p, path, "expected %s, got %s", what, type_name(v));
}

/* Refuses keys outside allowed[] (NULL-terminated): a typo must not turn
 * into a silently applied default. */
static int check_keys(struct parser *p, const char *path, struct json_object *obj,
		      const char *const *allowed)
{
	json_object_object_foreach(obj, key, val) {
		(void)val;
		bool known = false;
		for (size_t i = 0; allowed[i] && !known; i++)
			known = strcmp(key, allowed[i]) == 0;
		if (!known) {
			char kp[KG_PATH_MAX];
			member_path(kp, path, key);
			return fail(p, kp, "unknown key");
		}
	}
	return 0;
}

/* Member lookup: 1 found, 0 absent (out untouched), -1 present but not of
 * the given type. */
static int get_member(struct parser *p, const char *parent, struct json_object *obj,
		      const char *key, enum json_type type, const char *what,
		      struct json_object **out)
{
	struct json_object *v = NULL;
	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	char kp[KG_PATH_MAX];
	member_path(kp, parent, key);
	if (expect_type(p, kp, v, type, what) < 0)
		return -EINVAL;
	*out = v;
	return 1;
}

static int get_uint(struct parser *p, const char *parent, struct json_object *obj,
		    const char *key, unsigned min, unsigned max, unsigned *out)
{
	struct json_object *v = NULL;
	int r = get_member(p, parent, obj, key, json_type_int, "an integer", &v);
	if (r <= 0)
		return r;
	int64_t n = json_object_get_int64(v);
	if (n < (int64_t)min || n > (int64_t)max) {
		char kp[KG_PATH_MAX];
		member_path(kp, parent, key);
		return fail(p, kp, "must be %u-%u", min, max);
	}
	*out = (unsigned)n;
	return 1;
}

/* A string without NUL bytes, non-empty. */
static int get_string(struct parser *p, const char *parent, struct json_object *obj,
		      const char *key, const char **out)
{
	struct json_object *v = NULL;
	int r = get_member(p, parent, obj, key, json_type_string, "a string", &v);
	if (r <= 0)
		return r;
	const char *s = json_object_get_string(v);
	char kp[KG_PATH_MAX];
	member_path(kp, parent, key);
	if (strlen(s) != (size_t)json_object_get_string_len(v))
		return fail(p, kp, "must not contain NUL characters");
	if (!s[0])
		return fail(p, kp, "must not be empty");
	*out = s;
	return 1;
}

static int require(struct parser *p, const char *parent, const char *key, int found)
{
	if (found != 0)
		return found;
	char kp[KG_PATH_MAX];
	member_path(kp, parent, key);
	return fail(p, kp, "is required");
}

/* names[] is NULL-terminated; the index found is the enum value. */
static int get_enum(struct parser *p, const char *parent, struct json_object *obj,
		    const char *key, const char *const *names, int *out)
{
	const char *s;
	int r = get_string(p, parent, obj, key, &s);
	if (r <= 0)
		return r;
	char list[160] = "";
	for (int i = 0; names[i]; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = i;
			return 1;
		}
		size_t len = strlen(list);
		snprintf(list + len, sizeof(list) - len, "%s\"%s\"", i ? ", " : "", names[i]);
	}
	char kp[KG_PATH_MAX];
	member_path(kp, parent, key);
	return fail(p, kp, "must be one of %s", list);
}

static char *resolve_path(const char *base_dir, const char *path)
{
	char *out = NULL;
	if (path[0] == '/' || !base_dir || !base_dir[0])
		return strdup(path);
	if (asprintf(&out, "%s/%s", base_dir, path) < 0)
		return NULL;
	return out;
}

static int get_path(struct parser *p, const char *parent, struct json_object *obj,
		    const char *key, char **out)
{
	const char *s;
	int r = get_string(p, parent, obj, key, &s);
	if (r <= 0)
		return r;
	*out = resolve_path(p->base_dir, s);
	if (!*out) {
		char kp[KG_PATH_MAX];
		member_path(kp, parent, key);
		return fail(p, kp, "out of memory");
	}
	return 1;
}

static int get_name(struct parser *p, const char *path, const char *name, char out[KG_NAME_MAX + 1])
{
	if (!kg_cert_name_valid(name))
		return fail(p, path, "invalid name \"%.100s\": use 1-%d letters, digits or - / . _ *",
			    name, KG_NAME_MAX);
	snprintf(out, KG_NAME_MAX + 1, "%s", name);
	return 0;
}

static int parse_settings(struct parser *p, struct kg_config *cfg, struct json_object *root)
{
	static const char *const keys[] = {"workers", "drain_timeout_ms", "withdraw_delay_ms",
					   "log_level", "ticket_key_rotation_s", "accept_steering",
					   NULL};
	static const char *const steering[] = {[KG_ACCEPT_STEERING_AUTO] = "auto",
					       [KG_ACCEPT_STEERING_BPF] = "bpf",
					       [KG_ACCEPT_STEERING_USERSPACE] = "userspace", NULL};
	int steer = KG_ACCEPT_STEERING_AUTO;
	struct json_object *s = NULL;
	const char *path = "settings";
	int r = get_member(p, "", root, "settings", json_type_object, "an object", &s);
	if (r <= 0)
		return r;
	if (check_keys(p, path, s, keys) < 0 ||
	    get_uint(p, path, s, "workers", 0, KG_MAX_WORKERS, &cfg->workers) < 0 ||
	    get_uint(p, path, s, "drain_timeout_ms", 0, 3600000, &cfg->drain_timeout_ms) < 0 ||
	    get_uint(p, path, s, "ticket_key_rotation_s", KG_TICKET_ROTATION_MIN_S,
		     KG_TICKET_ROTATION_MAX_S, &cfg->ticket_key_rotation_s) < 0 ||
	    get_uint(p, path, s, "withdraw_delay_ms", 0, 300000, &cfg->withdraw_delay_ms) < 0 ||
	    get_enum(p, path, s, "accept_steering", steering, &steer) < 0)
		return -EINVAL;
	cfg->accept_steering = (enum kg_accept_steering)steer;
	const char *level;
	r = get_string(p, path, s, "log_level", &level);
	if (r < 0)
		return -EINVAL;
	if (r > 0) {
		if (kg_log_level_parse(level) < 0)
			return fail(p, "settings.log_level",
				    "must be one of \"err\", \"warn\", \"notice\", \"info\", \"debug\"");
		cfg->log_level = strdup(level);
		if (!cfg->log_level)
			return fail(p, "settings.log_level", "out of memory");
	}
	return 0;
}

/* crl_url and crl_refresh_s of a ca entry: an http(s) URL, and only with
 * a crl file (the CRL in force until the first good download, and at
 * every start). */
static int parse_crl_url(struct parser *p, const char *path, struct json_object *obj,
			 struct kg_cert_conf *c)
{
	const char *url;
	char kp[KG_PATH_MAX];
	c->crl_refresh_s = KG_CRL_REFRESH_DEFAULT_S;
	if (get_uint(p, path, obj, "crl_refresh_s", 1, KG_CRL_REFRESH_MAX_S,
		     &c->crl_refresh_s) < 0)
		return -EINVAL;
	int r = get_string(p, path, obj, "crl_url", &url);
	if (r <= 0)
		return r;
	member_path(kp, path, "crl_url");
	if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
		return fail(p, kp, "must be an http:// or https:// URL");
	if (!c->crl_path)
		return fail(p, kp, "needs \"crl\": the CRL in force until the first download");
	c->crl_url = strdup(url);
	if (!c->crl_url)
		return fail(p, kp, "out of memory");
	return 0;
}

static int parse_cert(struct parser *p, const char *path, const char *name,
		      struct json_object *obj, struct kg_cert_conf *c)
{
	static const char *const keys[] = {"type", "cert", "key", "crl", "crl_expired",
					   "crl_url", "crl_refresh_s", NULL};
	static const char *const types[] = {[KG_CERT_SERVER] = "server", [KG_CERT_CA] = "ca", NULL};
	static const char *const expired[] = {[KG_CRL_EXPIRED_REJECT] = "reject",
					      [KG_CRL_EXPIRED_WARN] = "warn", NULL};
	int type = 0, crl_expired = KG_CRL_EXPIRED_REJECT;

	if (get_name(p, path, name, c->name) < 0 ||
	    expect_type(p, path, obj, json_type_object, "an object") < 0 ||
	    check_keys(p, path, obj, keys) < 0 ||
	    require(p, path, "type", get_enum(p, path, obj, "type", types, &type)) < 0)
		return -EINVAL;
	c->type = (enum kg_cert_type)type;
	if (require(p, path, "cert", get_path(p, path, obj, "cert", &c->cert_path)) < 0)
		return -EINVAL;
	char kp[KG_PATH_MAX];
	if (c->type == KG_CERT_SERVER) {
		for (const char *const *k = (const char *const[]){"crl", "crl_expired", "crl_url",
								   "crl_refresh_s", NULL};
		     *k; k++) {
			if (json_object_object_get_ex(obj, *k, NULL)) {
				member_path(kp, path, *k);
				return fail(p, kp, "only \"ca\" entries have a CRL");
			}
		}
		return require(p, path, "key", get_path(p, path, obj, "key", &c->key_path)) < 0 ? -1 : 0;
	}
	if (json_object_object_get_ex(obj, "key", NULL)) {
		member_path(kp, path, "key");
		return fail(p, kp, "a \"ca\" entry takes no private key");
	}
	if (get_enum(p, path, obj, "crl_expired", expired, &crl_expired) < 0)
		return -EINVAL;
	c->crl_expired = (enum kg_crl_expired)crl_expired;
	if (get_path(p, path, obj, "crl", &c->crl_path) < 0)
		return -EINVAL;
	return parse_crl_url(p, path, obj, c);
}

static int parse_certificates(struct parser *p, struct kg_config *cfg, struct json_object *root)
{
	struct json_object *certs = NULL;
	int r = get_member(p, "", root, "certificates", json_type_object, "an object", &certs);
	if (r <= 0)
		return r;
	size_t n = (size_t)json_object_object_length(certs);
	if (n == 0)
		return 0;
	cfg->certs = calloc(n, sizeof(*cfg->certs));
	if (!cfg->certs)
		return fail(p, "certificates", "out of memory");
	/* json-c keeps one value per key (the last), so names are unique here. */
	json_object_object_foreach(certs, name, val) {
		char path[KG_PATH_MAX];
		member_path(path, "certificates", name);
		if (parse_cert(p, path, name, val, &cfg->certs[cfg->n_certs++]) < 0)
			return -EINVAL;
	}
	return 0;
}

/* An IP literal (no brackets, no host names: resolution would block). */
static int parse_ip(const char *text, uint16_t port, struct sockaddr_storage *out, socklen_t *len)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)out;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;

	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		*len = sizeof(*sin);
		return 0;
	}
	if (inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		*len = sizeof(*sin6);
		return 0;
	}
	return -EINVAL;
}

int kg_parse_hostport(const char *text, struct sockaddr_storage *out, socklen_t *outlen)
{
	char host[INET6_ADDRSTRLEN];
	const char *colon, *hs = text;
	size_t hlen;

	if (text[0] == '[') {
		const char *close = strchr(text, ']');
		if (!close || close[1] != ':')
			return -EINVAL;
		hs = text + 1;
		hlen = (size_t)(close - hs);
		colon = close + 1;
		if (memchr(hs, ':', hlen) == NULL) /* brackets are for IPv6 only */
			return -EINVAL;
	} else {
		colon = strchr(text, ':');
		if (!colon || strchr(colon + 1, ':'))
			return -EINVAL; /* bare IPv6 is ambiguous: require brackets */
		hlen = (size_t)(colon - text);
	}
	if (hlen == 0 || hlen >= sizeof(host))
		return -EINVAL;
	memcpy(host, hs, hlen);
	host[hlen] = '\0';

	const char *ps = colon + 1;
	unsigned long port = 0;
	if (!*ps || strlen(ps) > 5)
		return -EINVAL;
	for (const char *c = ps; *c; c++) {
		if (*c < '0' || *c > '9')
			return -EINVAL;
		port = port * 10 + (unsigned long)(*c - '0');
	}
	if (port == 0 || port > 65535) /* a destination cannot be port 0 */
		return -EINVAL;
	return parse_ip(host, (uint16_t)port, out, outlen);
}

bool kg_sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port &&
	       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static bool sockaddr_is_any(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET)
		return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
	return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
}

static uint16_t sockaddr_port(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)a)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

/* Two listeners on the same address and port, or a wildcard and a specific
 * address of one family on one port, would split or steal each other's
 * connections through SO_REUSEPORT. Port 0 never clashes: each gets its own. */
static bool binds_overlap(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family || sockaddr_port(a) == 0 ||
	    sockaddr_port(a) != sockaddr_port(b))
		return false;
	return kg_sockaddr_equal(a, b) || sockaddr_is_any(a) || sockaddr_is_any(b);
}

static int get_bool(struct parser *p, const char *parent, struct json_object *obj,
		    const char *key, bool *out)
{
	struct json_object *v = NULL;
	int r = get_member(p, parent, obj, key, json_type_boolean, "a boolean", &v);
	if (r > 0)
		*out = json_object_get_boolean(v);
	return r;
}

/* The "backends" array of a listener or a group object into l: 1 parsed,
 * 0 absent, -EINVAL. */
static int parse_backends(struct parser *p, const char *lpath, struct json_object *lobj,
			  struct kg_group_conf *l)
{
	static const char *const keys[] = {"address", "weight", "drained", "disabled", NULL};
	struct json_object *arr = NULL;
	char path[KG_PATH_MAX];

	member_path(path, lpath, "backends");
	int found = get_member(p, lpath, lobj, "backends", json_type_array, "an array", &arr);
	if (found <= 0)
		return found;
	size_t n = json_object_array_length(arr);
	if (n == 0)
		return fail(p, path, "at least one backend is required");
	if (n > KG_MAX_BACKENDS)
		return fail(p, path, "at most %d backends per group", KG_MAX_BACKENDS);
	l->backends = calloc(n, sizeof(*l->backends));
	if (!l->backends)
		return fail(p, path, "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct json_object *b = json_object_array_get_idx(arr, i);
		struct kg_backend_conf *bc = &l->backends[i];
		char bpath[KG_PATH_MAX], apath[KG_PATH_MAX];
		const char *addr;

		index_path(bpath, path, i);
		member_path(apath, bpath, "address");
		if (expect_type(p, bpath, b, json_type_object, "an object") < 0 ||
		    check_keys(p, bpath, b, keys) < 0 ||
		    require(p, bpath, "address", get_string(p, bpath, b, "address", &addr)) < 0)
			return -EINVAL;
		if (kg_parse_hostport(addr, &bc->addr, &bc->addrlen) < 0)
			return fail(p, apath, "expected host:port with an IP address "
					      "(\"192.0.2.1:80\" or \"[2001:db8::1]:80\"), port 1-65535");
		bc->address = strdup(addr);
		if (!bc->address)
			return fail(p, apath, "out of memory");
		l->n_backends++;
		bc->weight = 1;
		if (get_uint(p, bpath, b, "weight", 1, KG_MAX_WEIGHT, &bc->weight) < 0)
			return -EINVAL;
		bool drained = false, disabled = false;
		if (get_bool(p, bpath, b, "drained", &drained) < 0 ||
		    get_bool(p, bpath, b, "disabled", &disabled) < 0)
			return -EINVAL;
		if (drained && disabled)
			return fail(p, bpath, "\"drained\" and \"disabled\" exclude each other "
					      "(kgatectl backend drain|disable|enable sets one)");
		bc->admin = disabled ? KG_ADMIN_DISABLED : drained ? KG_ADMIN_DRAINED : KG_ADMIN_READY;
		for (size_t j = 0; j < i; j++)
			if (kg_sockaddr_equal(&l->backends[j].addr, &bc->addr))
				return fail(p, apath, "same backend as %s[%zu]; use weight instead", path, j);
	}
	return 1;
}

bool kg_group_conf_same(const struct kg_group_conf *a, const struct kg_group_conf *b)
{
	if (strcmp(a->name, b->name) != 0 || a->scheduler != b->scheduler ||
	    a->n_backends != b->n_backends ||
	    memcmp(&a->health_check, &b->health_check, sizeof(a->health_check)) != 0)
		return false;
	for (size_t i = 0; i < a->n_backends; i++)
		if (!kg_sockaddr_equal(&a->backends[i].addr, &b->backends[i].addr) ||
		    strcmp(a->backends[i].address, b->backends[i].address) != 0 ||
		    a->backends[i].weight != b->backends[i].weight)
			return false;
	return true;
}

bool kg_health_status_expected(const struct kg_health_conf *h, unsigned code)
{
	if (code < 100 || code >= 100 + KG_HTTP_STATUS_BITS)
		return false;
	unsigned bit = code - 100;
	return (h->expected_status[bit / 64] >> (bit % 64)) & 1;
}

static void expect_status_range(struct kg_health_conf *h, unsigned from, unsigned to)
{
	for (unsigned code = from; code <= to; code++) {
		unsigned bit = code - 100;
		h->expected_status[bit / 64] |= 1ull << (bit % 64);
	}
}

/* "2xx,3xx,404": classes 1xx-5xx and exact codes 100-599, comma-separated. */
static int parse_expected_status(struct parser *p, const char *path, const char *text,
				 struct kg_health_conf *h)
{
	memset(h->expected_status, 0, sizeof(h->expected_status));
	const char *s = text;
	for (;;) {
		while (*s == ' ')
			s++;
		size_t n = strcspn(s, ", ");
		if (n == 3 && s[0] >= '1' && s[0] <= '5' && s[1] == 'x' && s[2] == 'x') {
			unsigned base = (unsigned)(s[0] - '0') * 100;
			expect_status_range(h, base, base + 99);
		} else if (n == 3 && s[0] >= '1' && s[0] <= '5' && s[1] >= '0' && s[1] <= '9' &&
			   s[2] >= '0' && s[2] <= '9') {
			unsigned code = (unsigned)((s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0'));
			expect_status_range(h, code, code);
		} else {
			return fail(p, path, "\"%.*s\" is neither a class (1xx-5xx) nor a code (100-599); "
				    "expected e.g. \"2xx,3xx\" or \"200,204\"", (int)(n > 20 ? 20 : n), s);
		}
		s += n;
		while (*s == ' ')
			s++;
		if (!*s)
			return 0;
		if (*s != ',')
			return fail(p, path, "expected a comma-separated list such as \"2xx,3xx\"");
		s++;
	}
}

/* Characters allowed in the request line and Host header: printable
 * ASCII without space, so a configured value cannot inject headers. */
static bool header_safe(const char *s)
{
	for (; *s; s++)
		if (*s <= ' ' || *s > '~')
			return false;
	return true;
}

static int get_http_string(struct parser *p, const char *path, struct json_object *obj,
			   const char *key, char *out, size_t outlen)
{
	const char *s;
	char kp[KG_PATH_MAX];
	int r = get_string(p, path, obj, key, &s);
	if (r <= 0)
		return r;
	member_path(kp, path, key);
	if (strlen(s) >= outlen)
		return fail(p, kp, "at most %zu characters", outlen - 1);
	if (!header_safe(s))
		return fail(p, kp, "only printable ASCII without spaces is allowed");
	snprintf(out, outlen, "%s", s);
	return 1;
}

static int parse_health_http(struct parser *p, const char *path, struct json_object *obj,
			     struct kg_health_conf *h)
{
	static const char *const http_only[] = {"method", "path", "host", "expected_status", NULL};
	char kp[KG_PATH_MAX];
	const char *s;

	if (h->type != KG_HEALTH_HTTP) {
		for (size_t i = 0; http_only[i]; i++) {
			if (json_object_object_get_ex(obj, http_only[i], NULL)) {
				member_path(kp, path, http_only[i]);
				return fail(p, kp, "only for type \"http\"");
			}
		}
		return 0;
	}
	if (get_http_string(p, path, obj, "method", h->method, sizeof(h->method)) < 0 ||
	    get_http_string(p, path, obj, "path", h->path, sizeof(h->path)) < 0 ||
	    get_http_string(p, path, obj, "host", h->host, sizeof(h->host)) < 0)
		return -EINVAL;
	for (const char *c = h->method; *c; c++) {
		if (*c < 'A' || *c > 'Z') {
			member_path(kp, path, "method");
			return fail(p, kp, "expected an HTTP method in capitals, e.g. \"GET\" or \"HEAD\"");
		}
	}
	if (h->path[0] != '/') {
		member_path(kp, path, "path");
		return fail(p, kp, "must start with '/'");
	}
	int r = get_string(p, path, obj, "expected_status", &s);
	if (r < 0)
		return -EINVAL;
	member_path(kp, path, "expected_status");
	return r > 0 ? parse_expected_status(p, kp, s, h) : 0;
}

static int parse_health(struct parser *p, const char *lpath, struct json_object *lobj,
			struct kg_health_conf *h)
{
	static const char *const keys[] = {
		"type", "interval_ms", "timeout_ms", "healthy_threshold", "unhealthy_threshold",
		"port", "unknown_is_up", "cut_on_unhealthy", "slow_start_s", "method", "path",
		"host", "expected_status", NULL};
	static const char *const types[] = {"none", "tcp", "http", NULL};
	struct json_object *obj = NULL;
	char path[KG_PATH_MAX];
	int type = KG_HEALTH_NONE;

	memset(h, 0, sizeof(*h));
	h->type = KG_HEALTH_NONE;
	h->interval_ms = 2000;
	h->timeout_ms = 5000;
	h->healthy_threshold = 3;
	h->unhealthy_threshold = 3;
	/* Like the cloud consoles: a member serves until its first verdict,
	 * so a restart does not refuse traffic for thresholds × interval. */
	h->unknown_is_up = true;
	snprintf(h->method, sizeof(h->method), "GET");
	snprintf(h->path, sizeof(h->path), "/");
	expect_status_range(h, 200, 399);

	member_path(path, lpath, "health_check");
	int r = get_member(p, lpath, lobj, "health_check", json_type_object, "an object", &obj);
	if (r <= 0)
		return r;
	type = KG_HEALTH_TCP; /* a health_check object without a type means TCP connect */
	if (check_keys(p, path, obj, keys) < 0 || get_enum(p, path, obj, "type", types, &type) < 0 ||
	    get_uint(p, path, obj, "interval_ms", 100, 3600000, &h->interval_ms) < 0 ||
	    get_uint(p, path, obj, "timeout_ms", 1, 3600000, &h->timeout_ms) < 0 ||
	    get_uint(p, path, obj, "healthy_threshold", 1, 10, &h->healthy_threshold) < 0 ||
	    get_uint(p, path, obj, "unhealthy_threshold", 1, 10, &h->unhealthy_threshold) < 0 ||
	    get_uint(p, path, obj, "port", 1, 65535, &h->port) < 0 ||
	    get_bool(p, path, obj, "unknown_is_up", &h->unknown_is_up) < 0 ||
	    get_bool(p, path, obj, "cut_on_unhealthy", &h->cut_on_unhealthy) < 0 ||
	    get_uint(p, path, obj, "slow_start_s", 0, 3600, &h->slow_start_s) < 0)
		return -EINVAL;
	h->type = (enum kg_health_type)type;
	return parse_health_http(p, path, obj, h);
}

const char *const kg_ident_header_names[KG_HDR_COUNT] = {
#define KG_IDENT_NAME(id, name, on) [KG_HDR_##id] = name,
	KG_IDENT_HEADERS(KG_IDENT_NAME)
#undef KG_IDENT_NAME
};

const char *const kg_reserved_header_prefixes[] = {
#define KG_RESERVED_PREFIX(prefix) prefix,
	KG_RESERVED_HEADER_PREFIXES(KG_RESERVED_PREFIX)
#undef KG_RESERVED_PREFIX
	NULL,
};

const unsigned kg_ident_headers_default = 0
#define KG_IDENT_DEFAULT(id, name, on) | ((on) ? 1u << KG_HDR_##id : 0u)
	KG_IDENT_HEADERS(KG_IDENT_DEFAULT)
#undef KG_IDENT_DEFAULT
	;

/* "headers": names from kg_ident_header_names, any case, each once. */
static int parse_http_headers(struct parser *p, const char *hpath, struct json_object *obj,
			      unsigned *out)
{
	struct json_object *arr = NULL;
	char kp[KG_PATH_MAX], ip[KG_PATH_MAX];
	int r = get_member(p, hpath, obj, "headers", json_type_array, "an array", &arr);
	if (r <= 0)
		return r;
	member_path(kp, hpath, "headers");
	*out = 0;
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		struct json_object *v = json_object_array_get_idx(arr, i);
		index_path(ip, kp, i);
		if (expect_type(p, ip, v, json_type_string, "a string") < 0)
			return -EINVAL;
		const char *name = json_object_get_string(v);
		int found = -1;
		for (int h = 0; h < KG_HDR_COUNT && found < 0; h++)
			if (strcasecmp(name, kg_ident_header_names[h]) == 0)
				found = h;
		if (found < 0) {
			char known[512] = "";
			for (int h = 0; h < KG_HDR_COUNT; h++) {
				size_t len = strlen(known);
				snprintf(known + len, sizeof(known) - len, "%s%s", h ? ", " : "",
					 kg_ident_header_names[h]);
			}
			return fail(p, ip, "unknown header \"%.80s\" (known: %s)", name, known);
		}
		if (*out & (1u << found))
			return fail(p, ip, "\"%s\" is listed twice", kg_ident_header_names[found]);
		*out |= 1u << found;
	}
	return 1;
}

/* "192.0.2.0/24", "::1", "2001:db8::/32": an address with an optional prefix
 * length (the whole address without one). Bits past the prefix must be
 * zero, as in a route: "192.0.2.7/8" is refused rather than guessed at. */
static int parse_cidr(const char *text, struct kg_cidr *out)
{
	char addr[INET6_ADDRSTRLEN];
	const char *slash = strchr(text, '/');
	size_t alen = slash ? (size_t)(slash - text) : strlen(text);
	if (alen == 0 || alen >= sizeof(addr))
		return -EINVAL;
	memcpy(addr, text, alen);
	addr[alen] = '\0';
	memset(out, 0, sizeof(*out));
	unsigned max;
	if (inet_pton(AF_INET, addr, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return -EINVAL;
	}
	unsigned bits = max;
	if (slash) {
		char *end;
		unsigned long v = strtoul(slash + 1, &end, 10);
		if (slash[1] < '0' || slash[1] > '9' || *end != '\0' || v > max)
			return -EINVAL;
		bits = (unsigned)v;
	}
	out->bits = (uint8_t)bits;
	for (unsigned b = bits; b < max; b++)
		if (out->addr[b / 8] & (0x80u >> (b % 8)))
			return -EINVAL;
	return 0;
}

static bool cidr_has(const struct kg_cidr *c, const uint8_t *addr)
{
	unsigned full = c->bits / 8, rest = c->bits % 8;
	if (memcmp(c->addr, addr, full) != 0)
		return false;
	if (rest == 0)
		return true;
	uint8_t mask = (uint8_t)(0xffu << (8 - rest));
	return (c->addr[full] & mask) == (addr[full] & mask);
}

bool kg_cidr_match(const struct kg_cidr *list, size_t n, const struct sockaddr_storage *addr)
{
	static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	sa_family_t family = addr->ss_family;
	const uint8_t *bytes;
	if (family == AF_INET) {
		bytes = (const uint8_t *)&((const struct sockaddr_in *)addr)->sin_addr;
	} else if (family == AF_INET6) {
		bytes = ((const struct sockaddr_in6 *)addr)->sin6_addr.s6_addr;
		/* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d. */
		if (memcmp(bytes, v4mapped, sizeof(v4mapped)) == 0) {
			family = AF_INET;
			bytes += sizeof(v4mapped);
		}
	} else {
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (list[i].family == family && cidr_has(&list[i], bytes))
			return true;
	return false;
}

/* "trusted_proxies": addresses or CIDR blocks, at most KG_MAX_TRUSTED_PROXIES. */
static int parse_trusted_proxies(struct parser *p, const char *hpath, struct json_object *obj,
				 struct kg_http_conf *h)
{
	struct json_object *arr = NULL;
	char kp[KG_PATH_MAX], ip[KG_PATH_MAX];
	int r = get_member(p, hpath, obj, "trusted_proxies", json_type_array, "an array", &arr);
	if (r <= 0)
		return r;
	member_path(kp, hpath, "trusted_proxies");
	size_t n = json_object_array_length(arr);
	if (n > KG_MAX_TRUSTED_PROXIES)
		return fail(p, kp, "at most %d entries, got %zu", KG_MAX_TRUSTED_PROXIES, n);
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = json_object_array_get_idx(arr, i);
		index_path(ip, kp, i);
		if (expect_type(p, ip, v, json_type_string, "a string") < 0)
			return -EINVAL;
		if (parse_cidr(json_object_get_string(v), &h->trusted_proxies[i]) < 0)
			return fail(p, ip, "\"%.80s\" is not an IP address or CIDR block "
				    "(\"192.0.2.7\", \"198.51.100.0/24\", \"2001:db8::/32\"; no host bits "
				    "past the prefix)", json_object_get_string(v));
	}
	h->n_trusted_proxies = n;
	return 1;
}

/* The "http" object (only for protocol https: the table refuses it on
 * other listeners before this runs). */
static int parse_http(struct parser *p, const char *lpath, struct json_object *lobj,
		      struct kg_http_conf *h)
{
	static const char *const keys[] = {
		"headers", "fingerprint", "access_log", "access_log_sample", "max_header_bytes",
		"max_headers", "request_timeout_ms", "keepalive_timeout_ms", "response_timeout_ms",
		"pool_max_idle", "pool_idle_timeout_ms", "underscores_in_headers", "trusted_proxies",
		NULL};
	static const char *const fps[] = {"sha1", "sha256", NULL};
	static const char *const underscores[] = {
		[KG_UNDERSCORES_DROP] = "drop", [KG_UNDERSCORES_REJECT] = "reject",
		[KG_UNDERSCORES_ALLOW] = "allow", NULL};
	static const char *const onoff[] = {"off", "on", NULL};
	struct json_object *obj = NULL;
	char path[KG_PATH_MAX];

	memset(h, 0, sizeof(*h));
	h->headers = kg_ident_headers_default;
	h->underscores = KG_UNDERSCORES_DROP;
	h->fingerprint = KG_FP_SHA1;
	h->access_log_sample = 1;
	h->max_header_bytes = 16384;
	h->max_headers = 100;
	h->request_timeout_ms = 10000;
	h->keepalive_timeout_ms = 60000;
	h->response_timeout_ms = 60000;
	h->pool_max_idle = 64;
	h->pool_idle_timeout_ms = 10000;

	member_path(path, lpath, "http");
	int r = get_member(p, lpath, lobj, "http", json_type_object, "an object", &obj);
	if (r <= 0)
		return r;
	int fp = KG_FP_SHA1, log = 0, us = KG_UNDERSCORES_DROP;
	if (check_keys(p, path, obj, keys) < 0 || parse_http_headers(p, path, obj, &h->headers) < 0 ||
	    get_enum(p, path, obj, "fingerprint", fps, &fp) < 0 ||
	    get_enum(p, path, obj, "access_log", onoff, &log) < 0 ||
	    get_uint(p, path, obj, "access_log_sample", 1, 1000000, &h->access_log_sample) < 0 ||
	    get_uint(p, path, obj, "max_header_bytes", 1024, 65536, &h->max_header_bytes) < 0 ||
	    get_uint(p, path, obj, "max_headers", 8, 1000, &h->max_headers) < 0 ||
	    get_uint(p, path, obj, "request_timeout_ms", 1, 3600000, &h->request_timeout_ms) < 0 ||
	    get_uint(p, path, obj, "keepalive_timeout_ms", 1, 3600000, &h->keepalive_timeout_ms) < 0 ||
	    get_uint(p, path, obj, "response_timeout_ms", 1, 3600000, &h->response_timeout_ms) < 0 ||
	    get_uint(p, path, obj, "pool_max_idle", 0, 1024, &h->pool_max_idle) < 0 ||
	    get_uint(p, path, obj, "pool_idle_timeout_ms", 1, 3600000, &h->pool_idle_timeout_ms) < 0 ||
	    get_enum(p, path, obj, "underscores_in_headers", underscores, &us) < 0 ||
	    parse_trusted_proxies(p, path, obj, h) < 0)
		return -EINVAL;
	h->underscores = (enum kg_underscores)us;
	h->fingerprint = (enum kg_fingerprint)fp;
	h->access_log = log == 1;
	return 0;
}

const struct kg_listener_key kg_listener_keys[KG_LK_COUNT] = KG_LISTENER_KEY_TABLE;

const struct kg_listener_key *kg_listener_key_find(const char *key)
{
	for (size_t i = 0; i < KG_LK_COUNT; i++)
		if (strcmp(kg_listener_keys[i].key, key) == 0)
			return &kg_listener_keys[i];
	return NULL;
}

/* The F rows' members, by row: generated, so a row added to the table
 * without a member of its name does not compile. */
#define KG_LK_NOTHING(...)
unsigned kg_listener_key_value(const struct kg_listener_conf *l, enum kg_listener_key_id id)
{
	switch (id) {
#define KG_LK_GET(key, ...) case KG_LK_##key: return (unsigned)l->key;
	KG_LISTENER_KEYS(KG_LK_GET, KG_LK_NOTHING)
#undef KG_LK_GET
	default:
		return 0;
	}
}

static void listener_key_set(struct kg_listener_conf *l, enum kg_listener_key_id id, unsigned v)
{
	switch (id) {
#define KG_LK_SET(key, ...) case KG_LK_##key: l->key = v; break;
	KG_LISTENER_KEYS(KG_LK_SET, KG_LK_NOTHING)
#undef KG_LK_SET
	default:
		break;
	}
}

/* A uint, enum or bool key of a listener with the table's bounds and
 * names, "is required" when the table says so: 1 found (*out set), 0
 * absent, -1 after an error. */
static int get_listener_key(struct parser *p, const char *lpath, struct json_object *lobj,
			    enum kg_listener_key_id id, unsigned *out)
{
	const struct kg_listener_key *k = &kg_listener_keys[id];
	int r = 0, v = 0;
	bool b = false;

	switch (k->type) {
	case KG_KEY_UINT:
		r = get_uint(p, lpath, lobj, k->key, k->min, k->max, out);
		break;
	case KG_KEY_ENUM:
		r = get_enum(p, lpath, lobj, k->key, k->names, &v);
		if (r > 0)
			*out = (unsigned)v;
		break;
	case KG_KEY_BOOL:
		r = get_bool(p, lpath, lobj, k->key, &b);
		if (r > 0)
			*out = b;
		break;
	default: /* strings, objects and arrays have their own parsers */
		return fail(p, lpath, "%s: internal error: not a scalar key", k->key);
	}
	return k->flags & KG_LKF_REQUIRED ? require(p, lpath, k->key, r) : r;
}

/* A string key of a listener, "is required" when the table says so. */
static int get_listener_string(struct parser *p, const char *lpath, struct json_object *lobj,
			       enum kg_listener_key_id id, const char **out)
{
	const struct kg_listener_key *k = &kg_listener_keys[id];
	int r = get_string(p, lpath, lobj, k->key, out);
	return k->flags & KG_LKF_REQUIRED ? require(p, lpath, k->key, r) : r;
}

/* Keys the table gives to other protocols than this listener's. */
static int refuse_for_protocol(struct parser *p, const char *lpath, struct json_object *lobj,
			       enum kg_protocol protocol)
{
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		if (!(k->protocols & (1u << protocol)) &&
		    json_object_object_get_ex(lobj, k->key, NULL)) {
			char kp[KG_PATH_MAX];
			member_path(kp, lpath, k->key);
			return fail(p, kp, "%s", k->refusal);
		}
	}
	return 0;
}

/* "access_rules" (access.c parses and compiles them) and the keys that
 * depend on them. The rules run in certificate verification, which
 * happens only when a certificate is required: with optional client
 * certificates a client without one would pass every rule. */
static int parse_access(struct parser *p, const char *lpath, struct json_object *lobj,
			struct kg_listener_conf *l)
{
	struct json_object *rules = NULL;
	char kp[KG_PATH_MAX];
	unsigned def = kg_listener_keys[KG_LK_access_default].def;

	member_path(kp, lpath, "access_rules");
	if (json_object_object_get_ex(lobj, "access_rules", &rules)) {
		l->access_rules = kg_access_parse(rules, kp, p->err, p->errlen);
		if (!l->access_rules)
			return -EINVAL; /* access.c wrote "<path>: reason", one line */
	}
	if (get_listener_key(p, lpath, lobj, KG_LK_access_default, &def) < 0)
		return -EINVAL;
	l->access_default = (enum kg_access_action)def;
	if ((l->access_rules || def == KG_ACCESS_DENY) && l->mutual_auth != KG_MTLS_REQUIRED) {
		if (!l->access_rules)
			member_path(kp, lpath, "access_default");
		return fail(p, kp, "needs mutual_auth \"required\" (rules match client "
				   "certificates, and a client without one would pass them)");
	}
	return 0;
}

/* "ocsp_url" (checked as a worker will use it: http, an IP address) and
 * what "ocsp" needs: client certificates to check. */
static int parse_ocsp(struct parser *p, const char *lpath, struct json_object *lobj,
		      struct kg_listener_conf *l)
{
	char kp[KG_PATH_MAX], why[192];
	const char *url = NULL;
	struct kg_ocsp_target t;
	int r = get_listener_string(p, lpath, lobj, KG_LK_ocsp_url, &url);
	if (r < 0)
		return -EINVAL;
	member_path(kp, lpath, "ocsp_url");
	if (r > 0 && kg_ocsp_url_parse(url, &t, why, sizeof(why)) < 0)
		return fail(p, kp, "%s", why);
	if (r > 0 && !(l->ocsp_url = strdup(url)))
		return fail(p, kp, "out of memory");
	if (l->ocsp != KG_OCSP_OFF && l->mutual_auth == KG_MTLS_OFF) {
		member_path(kp, lpath, "ocsp");
		return fail(p, kp, "needs mutual_auth \"optional\" or \"required\" (OCSP checks "
				   "client certificates)");
	}
	return 0;
}

/* "certificate": a server entry, required for protocol (a listener's) or
 * for an sni entry (protocol NULL). */
static int parse_server_cert(struct parser *p, const struct kg_config *cfg, const char *path,
			     struct json_object *obj, const char *protocol,
			     struct kg_listener_conf *l)
{
	char kp[KG_PATH_MAX];
	const char *ref;

	member_path(kp, path, "certificate");
	int r = get_listener_string(p, path, obj, KG_LK_certificate, &ref);
	if (r < 0)
		return -EINVAL;
	if (r == 0 && protocol)
		return fail(p, kp, "is required for protocol \"%s\"", protocol);
	if (r == 0)
		return fail(p, kp, "is required (the server certificate for these names)");
	l->certificate = kg_config_find_cert(cfg, ref);
	if (!l->certificate)
		return fail(p, kp, "no certificate named \"%s\" in certificates", ref);
	if (l->certificate->type != KG_CERT_SERVER)
		return fail(p, kp, "\"%s\" is a \"ca\" entry; a listener needs a \"server\" one", ref);
	return 0;
}

/* "ca", "mutual_auth" and the access rules: who may connect, of a
 * listener or of an sni entry (obj at path). */
static int parse_client_policy(struct parser *p, const struct kg_config *cfg, const char *path,
			       struct json_object *obj, struct kg_listener_conf *l)
{
	char kp[KG_PATH_MAX];
	const char *ref;

	member_path(kp, path, "ca");
	int r = get_listener_string(p, path, obj, KG_LK_ca, &ref);
	if (r < 0)
		return -EINVAL;
	l->ca = NULL;
	if (r > 0) {
		l->ca = kg_config_find_cert(cfg, ref);
		if (!l->ca)
			return fail(p, kp, "no certificate named \"%s\" in certificates", ref);
		if (l->ca->type != KG_CERT_CA)
			return fail(p, kp, "\"%s\" is a \"server\" entry; \"ca\" needs a \"ca\" one", ref);
	}

	/* The table's default (off) is the one without a CA. */
	unsigned mode = l->ca ? KG_MTLS_REQUIRED : kg_listener_keys[KG_LK_mutual_auth].def;
	if (get_listener_key(p, path, obj, KG_LK_mutual_auth, &mode) < 0)
		return -EINVAL;
	l->mutual_auth = (enum kg_mutual_auth)mode;
	if (l->mutual_auth != KG_MTLS_OFF && !l->ca) {
		member_path(kp, path, "mutual_auth");
		return fail(p, kp, "\"%s\" needs \"ca\" (the CA that issues client certificates)",
			    kg_listener_keys[KG_LK_mutual_auth].names[mode]);
	}
	l->access_rules = NULL;
	l->access_default = (enum kg_access_action)kg_listener_keys[KG_LK_access_default].def;
	return parse_access(p, path, obj, l);
}

/* Certificates, CA and mutual_auth of a tls/https listener. */
static int parse_listener_tls(struct parser *p, const struct kg_config *cfg, const char *lpath,
			      struct json_object *lobj, struct kg_listener_conf *l)
{
	if (parse_server_cert(p, cfg, lpath, lobj,
			      kg_listener_keys[KG_LK_protocol].names[l->protocol], l) < 0)
		return -EINVAL;
	return parse_client_policy(p, cfg, lpath, lobj, l);
}

/* l->client_policy: everything that decides which clients a handshake
 * lets in, so that two settings with one digest decide alike. */
static int policy_digest(struct parser *p, const char *path, struct kg_listener_conf *l)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned len = 0;
	int r = -EINVAL;
	unsigned char tag[5] = {(unsigned char)l->mutual_auth, (unsigned char)l->verify_depth,
				(unsigned char)l->access_default,
				(unsigned char)l->access_denied_response, l->ca != NULL};
	if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
	    EVP_DigestUpdate(md, tag, sizeof(tag)) == 1 &&
	    (!l->ca || EVP_DigestUpdate(md, l->ca->name, strlen(l->ca->name) + 1) == 1) &&
	    kg_access_digest(l->access_rules, md) == 0 &&
	    EVP_DigestFinal_ex(md, l->client_policy, &len) == 1 && len == KG_POLICY_MD_LEN)
		r = 0;
	EVP_MD_CTX_free(md);
	return r < 0 ? fail(p, path, "cannot digest the client policy") : 0;
}

/* An sni entry's "names": 1-KG_SNI_NAMES_MAX checked names, stored in
 * lower case, none in an earlier entry or twice in this one. */
static int parse_sni_names(struct parser *p, const char *epath, struct json_object *eobj,
			   const struct kg_listener_conf *l, size_t idx, struct kg_sni_conf *e)
{
	struct json_object *arr = NULL;
	char kp[KG_PATH_MAX], ip[KG_PATH_MAX], why[160];
	int r = get_member(p, epath, eobj, "names", json_type_array, "an array of server names",
			   &arr);
	if (require(p, epath, "names", r) <= 0)
		return -EINVAL;
	member_path(kp, epath, "names");
	size_t n = json_object_array_length(arr);
	if (n == 0 || n > KG_SNI_NAMES_MAX)
		return fail(p, kp, "must have 1-%d names, got %zu", KG_SNI_NAMES_MAX, n);
	e->names = calloc(n, sizeof(*e->names));
	if (!e->names)
		return fail(p, kp, "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = json_object_array_get_idx(arr, i);
		index_path(ip, kp, i);
		if (expect_type(p, ip, v, json_type_string, "a string") < 0)
			return -EINVAL;
		const char *name = json_object_get_string(v);
		if ((size_t)json_object_get_string_len(v) != strlen(name))
			return fail(p, ip, "must not contain NUL characters");
		if (kg_sni_name_check(name, why, sizeof(why)) < 0)
			return fail(p, ip, "\"%.80s\" %s", name, why);
		if (!(e->names[i] = strdup(name)))
			return fail(p, ip, "out of memory");
		e->n_names++;
		for (char *c = e->names[i]; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		for (size_t j = 0; j < i; j++)
			if (strcmp(e->names[j], e->names[i]) == 0)
				return fail(p, ip, "\"%s\" is listed twice", e->names[i]);
		for (size_t o = 0; o < idx; o++)
			for (size_t j = 0; j < l->sni[o].n_names; j++)
				if (strcmp(l->sni[o].names[j], e->names[i]) == 0)
					return fail(p, ip, "\"%s\" is also in sni[%zu]: a name "
						    "belongs to one entry", e->names[i], o);
	}
	return 0;
}

/* One sni entry: its names and certificate, and its own client policy
 * when it has any of its keys (else the listener's, shared). */
static int parse_sni_entry(struct parser *p, const struct kg_config *cfg, const char *epath,
			   struct json_object *eobj, struct kg_listener_conf *l, size_t idx)
{
	static const char *const keys[] = {"names", "certificate", "ca", "mutual_auth",
					   "access_rules", "access_default", NULL};
	static const char *const policy_keys[] = {"ca", "mutual_auth", "access_rules",
						  "access_default", NULL};
	struct kg_sni_conf *e = &l->sni[idx];

	if (expect_type(p, epath, eobj, json_type_object, "an object") < 0 ||
	    check_keys(p, epath, eobj, keys) < 0 || parse_sni_names(p, epath, eobj, l, idx, e) < 0)
		return -EINVAL;
	bool own = false;
	for (size_t k = 0; policy_keys[k]; k++)
		own |= json_object_object_get_ex(eobj, policy_keys[k], NULL);
	e->tls = malloc(sizeof(*e->tls));
	if (!e->tls)
		return fail(p, epath, "out of memory");
	*e->tls = *l;
	/* Only TLS settings: the listener's backends and routes stay its own. */
	memset(&e->tls->own, 0, sizeof(e->tls->own));
	e->tls->backend_group = NULL;
	e->tls->default_group = NULL;
	e->tls->routes = NULL;
	e->tls->group = NULL;
	e->tls->sni = NULL;
	e->tls->n_sni = 0;
	e->tls->strict_sni = false;
	e->tls->sni_index = (unsigned)idx + 1;
	/* From here kg_config_free frees the entry's own rules, never the
	 * listener's. */
	e->own_policy = own;
	if (own)
		e->tls->access_rules = NULL;
	if (parse_server_cert(p, cfg, epath, eobj, NULL, e->tls) < 0)
		return -EINVAL;
	if (!own)
		return 0;
	return parse_client_policy(p, cfg, epath, eobj, e->tls);
}

/* "sni" and "strict_sni", once the listener's own TLS settings are known
 * (entries copy them). */
static int parse_sni(struct parser *p, const struct kg_config *cfg, const char *lpath,
		     struct json_object *lobj, struct kg_listener_conf *l)
{
	struct json_object *arr = NULL;
	char kp[KG_PATH_MAX], ep[KG_PATH_MAX];
	int r = get_member(p, lpath, lobj, "sni", json_type_array, "an array of sni entries",
			   &arr);
	if (r < 0)
		return -EINVAL;
	size_t n = r > 0 ? json_object_array_length(arr) : 0;
	member_path(kp, lpath, "sni");
	if (n > KG_SNI_ENTRIES_MAX)
		return fail(p, kp, "at most %d entries, got %zu", KG_SNI_ENTRIES_MAX, n);
	if (l->strict_sni && n == 0) {
		member_path(kp, lpath, "strict_sni");
		return fail(p, kp, "needs \"sni\" entries (with none, every handshake would be "
				   "refused)");
	}
	if (n > 0 && !(l->sni = calloc(n, sizeof(*l->sni))))
		return fail(p, kp, "out of memory");
	for (size_t i = 0; i < n; i++) {
		index_path(ep, kp, i);
		l->n_sni++;
		if (parse_sni_entry(p, cfg, ep, json_object_array_get_idx(arr, i), l, i) < 0 ||
		    policy_digest(p, ep, l->sni[i].tls) < 0)
			return -EINVAL;
	}
	return 0;
}

/* A group reference ("backend_group", "default_group"): 1 found, 0 absent,
 * -EINVAL (also for a name no group has). */
static int get_group_ref(struct parser *p, const struct kg_config *cfg, const char *lpath,
			 struct json_object *lobj, enum kg_listener_key_id id,
			 const struct kg_group_conf **out)
{
	const char *name;
	char kp[KG_PATH_MAX];
	int r = get_listener_string(p, lpath, lobj, id, &name);
	if (r <= 0)
		return r;
	member_path(kp, lpath, kg_listener_keys[id].key);
	*out = kg_config_find_group(cfg, name);
	if (!*out)
		return fail(p, kp, "no backend group named \"%.100s\" in backend_groups", name);
	return 1;
}

/* Where the listener sends traffic: inline "backends" (with their
 * "health_check") or "backend_group"; on https also "routes" and
 * "default_group". */
static int parse_listener_groups(struct parser *p, const struct kg_config *cfg, const char *lpath,
				 struct json_object *lobj, struct kg_listener_conf *l)
{
	char kp[KG_PATH_MAX];
	struct json_object *routes = NULL;
	int inline_found, r;

	l->own.scheduler = l->scheduler;
	inline_found = parse_backends(p, lpath, lobj, &l->own);
	if (inline_found < 0 || parse_health(p, lpath, lobj, &l->own.health_check) < 0 ||
	    get_group_ref(p, cfg, lpath, lobj, KG_LK_backend_group, &l->backend_group) < 0 ||
	    get_group_ref(p, cfg, lpath, lobj, KG_LK_default_group, &l->default_group) < 0)
		return -EINVAL;
	if (inline_found && l->backend_group) {
		member_path(kp, lpath, "backend_group");
		return fail(p, kp, "excludes \"backends\": a listener has its own members or names "
				   "a group, not both");
	}
	if (!inline_found && json_object_object_get_ex(lobj, "health_check", NULL)) {
		member_path(kp, lpath, "health_check");
		if (l->backend_group)
			return fail(p, kp, "the group's own health_check applies (backend_groups.%s."
					   "health_check)", l->backend_group->name);
		return fail(p, kp, "checks inline \"backends\", and there are none (a named "
				   "group has its own health_check)");
	}
	member_path(kp, lpath, "routes");
	if (json_object_object_get_ex(lobj, "routes", &routes)) {
		l->routes = kg_routes_parse(routes, kp, p->err, p->errlen);
		if (!l->routes)
			return -EINVAL; /* routes.c wrote "<path>: reason", one line */
		for (size_t i = 0; i < kg_routes_count(l->routes); i++) {
			const char *g = kg_routes_group(l->routes, i);
			if (kg_config_find_group(cfg, g))
				continue;
			char rp[KG_PATH_MAX], gp[KG_PATH_MAX];
			index_path(rp, kp, i);
			member_path(gp, rp, "group");
			return fail(p, gp, "no backend group named \"%s\" in backend_groups", g);
		}
	}
	if (l->default_group && (inline_found || l->backend_group)) {
		member_path(kp, lpath, "default_group");
		return fail(p, kp, "excludes \"%s\": requests no route matches go to the "
				   "listener's own group already", inline_found ? "backends" : "backend_group");
	}
	if (l->default_group && !l->routes) {
		member_path(kp, lpath, "default_group");
		return fail(p, kp, "needs \"routes\" (without routes, name the group in "
				   "\"backend_group\")");
	}
	r = inline_found ? 1 : 0;
	l->group = r ? &l->own : l->backend_group ? l->backend_group : l->default_group;
	if (!l->group && !l->routes) {
		member_path(kp, lpath, "backends");
		return fail(p, kp, "is required (or \"backend_group\"%s)",
			    l->protocol == KG_PROTO_HTTPS ? ", or \"routes\"" : "");
	}
	return 0;
}

/* "backend_groups": {"NAME": {"backends": [...], "health_check": {...},
 * "scheduler": "rr"}}. */
static int parse_groups(struct parser *p, struct kg_config *cfg, struct json_object *root)
{
	static const char *const keys[] = {"backends", "health_check", "scheduler", NULL};
	struct json_object *groups = NULL;
	int r = get_member(p, "", root, "backend_groups", json_type_object, "an object", &groups);
	if (r <= 0)
		return r;
	size_t n = (size_t)json_object_object_length(groups);
	if (n == 0)
		return 0;
	if (n > KG_MAX_GROUPS)
		return fail(p, "backend_groups", "at most %d groups", KG_MAX_GROUPS);
	cfg->groups = calloc(n, sizeof(*cfg->groups));
	if (!cfg->groups)
		return fail(p, "backend_groups", "out of memory");
	/* json-c keeps one value per key (the last), so names are unique here. */
	json_object_object_foreach(groups, name, val) {
		struct kg_group_conf *g = &cfg->groups[cfg->n_groups];
		char path[KG_PATH_MAX];
		int sched = KG_SCHED_RR;
		member_path(path, "backend_groups", name);
		if (get_name(p, path, name, g->name) < 0 ||
		    expect_type(p, path, val, json_type_object, "an object") < 0 ||
		    check_keys(p, path, val, keys) < 0)
			return -EINVAL;
		cfg->n_groups++;
		if (require(p, path, "backends", parse_backends(p, path, val, g)) < 0 ||
		    parse_health(p, path, val, &g->health_check) < 0 ||
		    get_enum(p, path, val, "scheduler", kg_listener_keys[KG_LK_scheduler].names,
			     &sched) < 0)
			return -EINVAL;
		g->scheduler = (enum kg_scheduler)sched;
	}
	return 0;
}

const struct kg_group_conf *kg_config_find_group(const struct kg_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_groups; i++)
		if (strcmp(cfg->groups[i].name, name) == 0)
			return &cfg->groups[i];
	return NULL;
}

bool kg_listener_uses_group(const struct kg_listener_conf *l, const struct kg_group_conf *g,
			    char *how, size_t howlen)
{
	if (l->backend_group == g || l->default_group == g) {
		snprintf(how, howlen, "%s", l->backend_group == g ? "backend_group" : "default_group");
		return true;
	}
	for (size_t i = 0; i < kg_routes_count(l->routes); i++)
		if (strcmp(kg_routes_group(l->routes, i), g->name) == 0) {
			snprintf(how, howlen, "routes[%zu]", i);
			return true;
		}
	return false;
}

static int parse_listener(struct parser *p, const struct kg_config *cfg, const char *lpath,
			  struct json_object *lobj, struct kg_listener_conf *l)
{
	static const char *const keys[] = {
#define KG_LK_KEY(key, ...) #key,
		KG_LISTENER_KEYS(KG_LK_KEY, KG_LK_KEY)
#undef KG_LK_KEY
		NULL};
	char kp[KG_PATH_MAX];
	const char *s;
	unsigned v = 0;

	for (size_t i = 0; i < KG_LK_COUNT; i++)
		if (kg_listener_keys[i].field)
			listener_key_set(l, (enum kg_listener_key_id)i, kg_listener_keys[i].def);

	if (expect_type(p, lpath, lobj, json_type_object, "an object") < 0 ||
	    check_keys(p, lpath, lobj, keys) < 0 ||
	    get_listener_string(p, lpath, lobj, KG_LK_name, &s) < 0)
		return -EINVAL;
	member_path(kp, lpath, "name");
	if (get_name(p, kp, s, l->name) < 0)
		return -EINVAL;
	if (get_listener_key(p, lpath, lobj, KG_LK_protocol, &v) < 0)
		return -EINVAL;
	l->protocol = (enum kg_protocol)v;

	unsigned port = 0;
	if (get_listener_string(p, lpath, lobj, KG_LK_bind, &s) < 0 ||
	    get_listener_key(p, lpath, lobj, KG_LK_port, &port) < 0)
		return -EINVAL;
	if (parse_ip(s, (uint16_t)port, &l->bind, &l->bind_len) < 0) {
		member_path(kp, lpath, "bind");
		return fail(p, kp, "expected an IPv4 or IPv6 address literal "
				   "(\"127.0.0.1\", \"0.0.0.0\", \"::1\", \"::\")");
	}

	if (refuse_for_protocol(p, lpath, lobj, l->protocol) < 0)
		return -EINVAL;
	if (l->protocol != KG_PROTO_TCP && parse_listener_tls(p, cfg, lpath, lobj, l) < 0)
		return -EINVAL;

	/* The rest of the scalar keys: bounds, names and defaults are the table's. */
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		if (!kg_listener_keys[i].field)
			continue;
		int r = get_listener_key(p, lpath, lobj, (enum kg_listener_key_id)i, &v);
		if (r < 0)
			return -EINVAL;
		if (r > 0)
			listener_key_set(l, (enum kg_listener_key_id)i, v);
	}
	if (l->proxy_protocol != KG_PP_NONE && l->protocol == KG_PROTO_HTTPS) {
		/* Pooled backend connections carry many clients' requests: a
		 * per-connection header would name the wrong one. */
		member_path(kp, lpath, "proxy_protocol");
		return fail(p, kp, "is for protocol \"tcp\" and \"tls\"; an https listener "
				   "names the client in X-Forwarded-For and client-certificate "
				   "headers (\"http\".\"headers\")");
	}
	if (l->backend_protocol == KG_BP_H2 && !l->h2) {
		/* HTTP/1.1 requests are not translated into HTTP/2 streams:
		 * with only HTTP/1.1 offered, nothing could reach the backends. */
		member_path(kp, lpath, "backend_protocol");
		return fail(p, kp, "\"h2\" needs \"h2\": true (clients must speak HTTP/2 to reach "
				   "HTTP/2 backends)");
	}
	if (l->protocol != KG_PROTO_TCP && parse_ocsp(p, lpath, lobj, l) < 0)
		return -EINVAL;
	if (parse_http(p, lpath, lobj, &l->http) < 0)
		return -EINVAL;
	if (l->protocol != KG_PROTO_TCP &&
	    (policy_digest(p, lpath, l) < 0 || parse_sni(p, cfg, lpath, lobj, l) < 0))
		return -EINVAL;
	return parse_listener_groups(p, cfg, lpath, lobj, l);
}

static int parse_listeners(struct parser *p, struct kg_config *cfg, struct json_object *root)
{
	struct json_object *arr = NULL;
	int found = get_member(p, "", root, "listeners", json_type_array, "an array", &arr);
	if (found == 0 && p->allow_empty)
		return 0;
	if (require(p, "", "listeners", found) < 0)
		return -EINVAL;
	size_t n = json_object_array_length(arr);
	if (n == 0 && p->allow_empty)
		return 0;
	if (n == 0)
		return fail(p, "listeners", "at least one listener is required");
	cfg->listeners = calloc(n, sizeof(*cfg->listeners));
	if (!cfg->listeners)
		return fail(p, "listeners", "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct kg_listener_conf *l = &cfg->listeners[i];
		char lpath[KG_PATH_MAX], kp[KG_PATH_MAX];

		index_path(lpath, "listeners", i);
		cfg->n_listeners++;
		if (parse_listener(p, cfg, lpath, json_object_array_get_idx(arr, i), l) < 0)
			return -EINVAL;
		for (size_t j = 0; j < i; j++) {
			if (strcmp(cfg->listeners[j].name, l->name) == 0) {
				member_path(kp, lpath, "name");
				return fail(p, kp, "duplicate listener name \"%s\" (also listeners[%zu])",
					    l->name, j);
			}
			if (binds_overlap(&cfg->listeners[j].bind, &l->bind)) {
				member_path(kp, lpath, "port");
				return fail(p, kp, "address and port already used by listeners[%zu]", j);
			}
		}
	}
	return 0;
}

static struct kg_config *parse_doc(const char *json_text, const char *base_dir,
				   bool allow_empty, char *err, size_t errlen)
{
	static const char *const keys[] = {"settings", "certificates", "backend_groups",
					   "listeners", NULL};
	struct parser p = {.err = err, .errlen = errlen, .base_dir = base_dir,
			   .allow_empty = allow_empty};
	struct json_tokener *tok = NULL;
	struct json_object *root = NULL;
	struct kg_config *cfg = NULL;
	size_t len = strlen(json_text);

	if (len > KG_CONFIG_MAX_BYTES || len > INT_MAX) {
		fail(&p, "", "document larger than %u bytes", KG_CONFIG_MAX_BYTES);
		return NULL;
	}
	tok = json_tokener_new();
	if (!tok) {
		fail(&p, "", "out of memory");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, json_text, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t end = json_tokener_get_parse_end(tok);
	if (!root && jerr == json_tokener_continue)
		jerr = json_tokener_error_parse_eof;
	if (root && jerr == json_tokener_success) {
		while (end < len && strchr(" \t\r\n", json_text[end]))
			end++;
		if (end < len) {
			jerr = json_tokener_error_parse_unexpected;
		}
	}
	if (!root || jerr != json_tokener_success) {
		unsigned line = 1, col = 1;
		for (size_t i = 0; i < end && i < len; i++, col++)
			if (json_text[i] == '\n')
				line++, col = 0;
		snprintf(err, errlen, "invalid JSON at line %u, column %u: %s", line, col,
			 json_tokener_error_desc(jerr));
		goto free_root;
	}
	if (expect_type(&p, "", root, json_type_object, "an object") < 0 ||
	    check_keys(&p, "", root, keys) < 0)
		goto free_root;

	cfg = calloc(1, sizeof(*cfg));
	if (!cfg) {
		fail(&p, "", "out of memory");
		goto free_root;
	}
	cfg->drain_timeout_ms = 10000;
	cfg->ticket_key_rotation_s = KG_TICKET_ROTATION_DEFAULT_S;
	if (parse_settings(&p, cfg, root) < 0 || parse_certificates(&p, cfg, root) < 0 ||
	    parse_groups(&p, cfg, root) < 0 || parse_listeners(&p, cfg, root) < 0) {
		kg_config_free(cfg);
		cfg = NULL;
	}
free_root:
	json_object_put(root);
	json_tokener_free(tok);
	return cfg;
}

struct kg_config *kg_config_parse(const char *json_text, const char *base_dir, char *err,
				  size_t errlen)
{
	return parse_doc(json_text, base_dir, false, err, errlen);
}

struct kg_config *kg_config_parse_state(const char *json_text, const char *base_dir,
					char *err, size_t errlen)
{
	return parse_doc(json_text, base_dir, true, err, errlen);
}

/* Reads a whole regular file, NUL-terminated. -errno. */
int kg_read_file(const char *path, char **out)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	struct stat st;
	int ret = 0;
	char *buf = NULL;
	if (fstat(fileno(f), &st) == -1) {
		ret = -errno;
		goto close_file;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		goto close_file;
	}
	if (st.st_size > (off_t)KG_CONFIG_MAX_BYTES) {
		ret = -EFBIG;
		goto close_file;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto close_file;
	}
	size_t n = fread(buf, 1, (size_t)st.st_size, f);
	if (ferror(f)) {
		ret = -EIO;
		free(buf);
		goto close_file;
	}
	buf[n] = '\0';
	*out = buf;
close_file:
	fclose(f);
	return ret;
}

struct kg_config *kg_config_load(const char *path, char *err, size_t errlen)
{
	char *text = NULL, *dir = NULL, *abs_dir = NULL;
	struct kg_config *cfg = NULL;

	int r = kg_read_file(path, &text);
	if (r < 0) {
		snprintf(err, errlen, "%s: cannot read: %s", path,
			 r == -EINVAL ? "not a regular file" : strerror(-r));
		return NULL;
	}
	if (strlen(text) == 0) {
		snprintf(err, errlen, "%s: file is empty", path);
		goto free_text;
	}
	const char *slash = strrchr(path, '/');
	dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
	if (!dir) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto free_text;
	}
	/* An absolute base keeps file references valid whatever the daemon's
	 * working directory becomes later. */
	abs_dir = realpath(dir, NULL);
	char msg[512];
	cfg = kg_config_parse(text, abs_dir ? abs_dir : dir, msg, sizeof(msg));
	if (!cfg) {
		/* Syntax errors name the file; schema errors already name a key. */
		bool syntax = strncmp(msg, "invalid JSON", strlen("invalid JSON")) == 0;
		snprintf(err, errlen, "%s%s%s", syntax ? path : "", syntax ? ": " : "", msg);
	}
	free(abs_dir);
	free(dir);
free_text:
	free(text);
	return cfg;
}

static void sni_free(struct kg_listener_conf *l)
{
	for (size_t i = 0; i < l->n_sni; i++) {
		struct kg_sni_conf *e = &l->sni[i];
		for (size_t n = 0; n < e->n_names; n++)
			free(e->names[n]);
		free(e->names);
		if (e->tls && e->own_policy)
			kg_access_free(e->tls->access_rules);
		free(e->tls);
	}
	free(l->sni);
	l->sni = NULL;
	l->n_sni = 0;
}

static void group_free(struct kg_group_conf *g)
{
	for (size_t b = 0; b < g->n_backends; b++)
		free(g->backends[b].address);
	free(g->backends);
}

struct kg_config_ref *kg_config_ref_new(struct kg_config *cfg)
{
	struct kg_config_ref *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	atomic_init(&r->refs, 1);
	r->cfg = cfg;
	return r;
}

void kg_config_ref_put(struct kg_config_ref *r)
{
	if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	kg_config_free(r->cfg);
	free(r);
}

void kg_config_free(struct kg_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < cfg->n_certs; i++) {
		free(cfg->certs[i].cert_path);
		free(cfg->certs[i].key_path);
		free(cfg->certs[i].crl_path);
		free(cfg->certs[i].crl_url);
	}
	free(cfg->certs);
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		group_free(&cfg->listeners[i].own);
		kg_access_free(cfg->listeners[i].access_rules);
		sni_free(&cfg->listeners[i]);
		free(cfg->listeners[i].ocsp_url);
		kg_routes_free(cfg->listeners[i].routes);
	}
	for (size_t i = 0; i < cfg->n_groups; i++)
		group_free(&cfg->groups[i]);
	free(cfg->groups);
	free(cfg->listeners);
	free(cfg->log_level);
	free(cfg);
}

int kg_cert_name_valid(const char *name)
{
	size_t len = strlen(name);
	if (len < 1 || len > KG_NAME_MAX)
		return 0;
	for (const char *c = name; *c; c++) {
		bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			  (*c >= '0' && *c <= '9') || strchr("-/._*", *c);
		if (!ok)
			return 0;
	}
	return 1;
}

int kg_config_sni_find(const struct kg_listener_conf *l, const char *name, size_t len)
{
	/* Exact names win over wildcards whatever the order, as a browser's
	 * certificate choice and every other server do. */
	for (int pass = 0; pass < 2; pass++)
		for (size_t e = 0; e < l->n_sni; e++)
			for (size_t n = 0; n < l->sni[e].n_names; n++) {
				const char *p = l->sni[e].names[n];
				if ((p[0] == '*') == (pass == 1) && kg_sni_match(p, name, len))
					return (int)e;
			}
	return -1;
}

const struct kg_cert_conf *kg_config_find_cert(const struct kg_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_certs; i++)
		if (strcmp(cfg->certs[i].name, name) == 0)
			return &cfg->certs[i];
	return NULL;
}
