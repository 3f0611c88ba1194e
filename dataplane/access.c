/* Access rules on verified client certificates (access.h). */
#include "access.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <json-c/json.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "kgate/log.h"

#include "jpath.h"


/* The matchers, X(id, key): a rule's "match" object has these keys. */
#define KG_ACCESS_FIELDS(X)                                                                  \
	X(CN, "cn") X(O, "o") X(OU, "ou") X(SAN_DNS, "san_dns") X(SAN_EMAIL, "san_email")    \
	X(SAN_IP, "san_ip") X(SAN_URI, "san_uri") X(ISSUER, "issuer") X(SERIAL, "serial")    \
	X(SHA256, "sha256")

enum field {
#define KG_ACCESS_FIELD_ID(id, key) F_##id,
	KG_ACCESS_FIELDS(KG_ACCESS_FIELD_ID)
#undef KG_ACCESS_FIELD_ID
	F_COUNT
};

static const char *const field_keys[F_COUNT + 1] = {
#define KG_ACCESS_FIELD_KEY(id, key) key,
	KG_ACCESS_FIELDS(KG_ACCESS_FIELD_KEY)
#undef KG_ACCESS_FIELD_KEY
	NULL};

struct matcher {
	char **patterns; /* normalised: serial and sha256 as lower-case hex */
	size_t n;        /* 0: the rule does not look at this field */
};

/* All given fields must match (access rules and routes share it). */
struct kg_cert_match {
	struct matcher m[F_COUNT];
};

struct rule {
	char *name;
	enum kg_access_action action;
	struct kg_cert_match cm;
};

struct kg_access {
	struct rule *rules;
	size_t n;
};

/* The certificate's values of every field, taken once per evaluation. */
struct values {
	char **v[F_COUNT];
	size_t n[F_COUNT];
};

bool kg_access_glob(const char *p, const char *t, bool fold)
{
	const char *star = NULL, *resume = NULL;
	while (*t) {
		bool same = fold ? tolower((unsigned char)*p) == tolower((unsigned char)*t) : *p == *t;
		if (*p == '*') {
			star = p++;
			resume = t;
		} else if (*p == '?' || (*p && same)) {
			p++;
			t++;
		} else if (star) {
			/* Backtrack: the last star takes one more byte. */
			p = star + 1;
			t = ++resume;
		} else {
			return false;
		}
	}
	while (*p == '*')
		p++;
	return *p == '\0';
}

/* Hex with optional colons → lower-case hex without them; leading zeros
 * dropped when strip_zeros (serials are numbers). NULL when not hex. */
static char *norm_hex(const char *s, bool strip_zeros)
{
	char *out = malloc(strlen(s) + 2);
	size_t n = 0;
	if (!out)
		return NULL;
	for (; *s; s++) {
		if (*s == ':')
			continue;
		if (!isxdigit((unsigned char)*s)) {
			free(out);
			return NULL;
		}
		if (strip_zeros && n == 0 && *s == '0')
			continue;
		out[n++] = (char)tolower((unsigned char)*s);
	}
	if (n == 0 && strip_zeros)
		out[n++] = '0';
	out[n] = '\0';
	return out;
}

/* One pattern of field f, checked and normalised. NULL after an error. */
static char *compile_pattern(enum field f, const char *s, const char *path, char *err,
			     size_t errlen, bool *oom)
{
	char *out = NULL;
	bool glob = strpbrk(s, "*?") != NULL;
	switch (f) {
	case F_SERIAL:
		out = norm_hex(s, true);
		if (!out)
			kg_jpath_fail(err, errlen, path, "expected a serial number in hex (\"1f\", \"01:1F\")");
		return out;
	case F_SHA256:
		out = norm_hex(s, false);
		if (out && strlen(out) != 64) {
			free(out);
			out = NULL;
		}
		if (!out)
			kg_jpath_fail(err, errlen, path, "expected a SHA-256 fingerprint: 64 hex digits, "
						"colons optional");
		return out;
	case F_SAN_IP:
		if (!glob) {
			/* A literal compares as the address, so "::1" and
			 * "0:0::1" name the same SAN. */
			unsigned char a[16];
			char text[INET6_ADDRSTRLEN];
			int fam = strchr(s, ':') ? AF_INET6 : AF_INET;
			if (inet_pton(fam, s, a) != 1 || !inet_ntop(fam, a, text, sizeof(text))) {
				kg_jpath_fail(err, errlen, path, "expected an IPv4 or IPv6 address, or a glob "
							"(\"10.1.*\")");
				return NULL;
			}
			out = strdup(text);
			break;
		}
		out = strdup(s);
		break;
	default:
		out = strdup(s);
		break;
	}
	if (!out)
		*oom = true;
	return out;
}

/* A matcher's value: a string or a non-empty array of strings. */
static int parse_matcher(struct json_object *v, enum field f, const char *path,
			 struct matcher *m, char *err, size_t errlen)
{
	bool is_array = json_object_is_type(v, json_type_array);
	size_t n = is_array ? json_object_array_length(v) : 1;
	char ip[KG_JPATH_MAX];

	if (!is_array && !json_object_is_type(v, json_type_string))
		return kg_jpath_fail(err, errlen, path, "expected a string or an array of strings");
	if (n == 0)
		return kg_jpath_fail(err, errlen, path, "must not be an empty array");
	if (n > KG_ACCESS_PATTERNS_MAX)
		return kg_jpath_fail(err, errlen, path, "at most %d alternatives", KG_ACCESS_PATTERNS_MAX);
	m->patterns = calloc(n, sizeof(*m->patterns));
	if (!m->patterns)
		return kg_jpath_fail(err, errlen, path, "out of memory");
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = is_array ? json_object_array_get_idx(v, i) : v;
		bool oom = false;
		if (is_array)
			kg_jpath_index(ip, path, i);
		else if (snprintf(ip, sizeof(ip), "%s", path) < 0)
			ip[0] = '\0';
		if (!json_object_is_type(s, json_type_string))
			return kg_jpath_fail(err, errlen, ip, "expected a string");
		const char *text = json_object_get_string(s);
		size_t len = (size_t)json_object_get_string_len(s);
		if (strlen(text) != len)
			return kg_jpath_fail(err, errlen, ip, "must not contain NUL characters");
		if (len == 0)
			return kg_jpath_fail(err, errlen, ip, "must not be empty");
		if (len > KG_ACCESS_PATTERN_MAX)
			return kg_jpath_fail(err, errlen, ip, "longer than %d bytes", KG_ACCESS_PATTERN_MAX);
		m->patterns[i] = compile_pattern(f, text, ip, err, errlen, &oom);
		if (!m->patterns[i])
			return oom ? kg_jpath_fail(err, errlen, ip, "out of memory") : -EINVAL;
		m->n++;
	}
	return 0;
}

/* The names of enum kg_access_action, by value. */
static const char *const action_names[] = {
#define KG_ACCESS_ACTION_NAME(id, name) name,
	KG_ACCESS_ACTIONS(KG_ACCESS_ACTION_NAME)
#undef KG_ACCESS_ACTION_NAME
	NULL};

/* r's required member key of the given type; kp gets its path. */
static int member(struct json_object *r, const char *path, const char *key, enum json_type type,
		  const char *what, char *kp, struct json_object **out, char *err, size_t errlen)
{
	kg_jpath_member(kp, path, key);
	if (!json_object_object_get_ex(r, key, out))
		return kg_jpath_fail(err, errlen, kp, "is required");
	if (!json_object_is_type(*out, type))
		return kg_jpath_fail(err, errlen, kp, "expected %s", what);
	return 0;
}

bool kg_access_name_valid(const char *s)
{
	size_t len = strlen(s);
	if (len < 1 || len > 80)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("-/._", *s))
			return false;
	return true;
}

/* The members of a "match" object at path into cm; *have says whether
 * there was at least one. */
static int parse_fields(struct json_object *match, const char *path, struct kg_cert_match *cm,
			bool *have, char *err, size_t errlen)
{
	*have = false;
	json_object_object_foreach(match, mkey, mval) {
		char fp[KG_JPATH_MAX];
		size_t f = 0;
		while (field_keys[f] && strcmp(field_keys[f], mkey) != 0)
			f++;
		kg_jpath_member(fp, path, mkey);
		if (!field_keys[f])
			return kg_jpath_fail(err, errlen, fp, "unknown key (known: cn, o, ou, san_dns, "
						     "san_email, san_ip, san_uri, issuer, serial, "
						     "sha256)");
		if (parse_matcher(mval, (enum field)f, fp, &cm->m[f], err, errlen) < 0)
			return -EINVAL;
		*have = true;
	}
	return 0;
}

static int parse_rule(struct json_object *r, const char *path, struct kg_access *a,
		      char *err, size_t errlen)
{
	struct rule *rule = &a->rules[a->n];
	struct json_object *v = NULL, *match = NULL;
	char kp[KG_JPATH_MAX];
	bool have = false;

	if (!json_object_is_type(r, json_type_object))
		return kg_jpath_fail(err, errlen, path, "expected an object");
	json_object_object_foreach(r, key, val) {
		(void)val;
		if (strcmp(key, "name") && strcmp(key, "action") && strcmp(key, "match")) {
			kg_jpath_member(kp, path, key);
			return kg_jpath_fail(err, errlen, kp, "unknown key");
		}
	}
	if (member(r, path, "name", json_type_string, "a string", kp, &v, err, errlen) < 0)
		return -EINVAL;
	const char *name = json_object_get_string(v);
	/* Names go into log lines: a plain alphabet keeps them unambiguous. */
	if (strlen(name) != (size_t)json_object_get_string_len(v) || !kg_access_name_valid(name))
		return kg_jpath_fail(err, errlen, kp, "use 1-80 letters, digits or - / . _");
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->rules[i].name, name) == 0)
			return kg_jpath_fail(err, errlen, kp, "duplicate rule name \"%s\"", name);
	rule->name = strdup(name);
	if (!rule->name)
		return kg_jpath_fail(err, errlen, kp, "out of memory");
	a->n++;

	if (member(r, path, "action", json_type_string, "a string", kp, &v, err, errlen) < 0)
		return -EINVAL;
	size_t act = 0;
	while (action_names[act] && strcmp(action_names[act], json_object_get_string(v)) != 0)
		act++;
	if (!action_names[act])
		return kg_jpath_fail(err, errlen, kp, "must be one of \"allow\", \"deny\"");
	rule->action = (enum kg_access_action)act;

	if (member(r, path, "match", json_type_object, "an object", kp, &match, err, errlen) < 0 ||
	    parse_fields(match, kp, &rule->cm, &have, err, errlen) < 0)
		return -EINVAL;
	/* An empty match would match every certificate: access_default says
	 * that, and says it where a reader looks for it. */
	if (!have)
		return kg_jpath_fail(err, errlen, kp, "needs at least one matcher (access_default decides "
					     "for the certificates no rule matches)");
	return 0;
}

struct kg_access *kg_access_parse(struct json_object *rules, const char *path, char *err,
				  size_t errlen)
{
	char rp[KG_JPATH_MAX];
	if (!json_object_is_type(rules, json_type_array)) {
		kg_jpath_fail(err, errlen, path, "expected an array of rules");
		return NULL;
	}
	size_t n = json_object_array_length(rules);
	if (n == 0) {
		kg_jpath_fail(err, errlen, path, "must not be an empty array (remove the key instead)");
		return NULL;
	}
	if (n > KG_ACCESS_RULES_MAX) {
		kg_jpath_fail(err, errlen, path, "at most %d rules", KG_ACCESS_RULES_MAX);
		return NULL;
	}
	struct kg_access *a = calloc(1, sizeof(*a));
	if (!a || !(a->rules = calloc(n, sizeof(*a->rules)))) {
		kg_jpath_fail(err, errlen, path, "out of memory");
		goto free_access;
	}
	for (size_t i = 0; i < n; i++) {
		kg_jpath_index(rp, path, i);
		if (parse_rule(json_object_array_get_idx(rules, i), rp, a, err, errlen) < 0)
			goto free_access;
	}
	return a;
free_access:
	kg_access_free(a);
	return NULL;
}

static void free_strings(char **s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(s[i]);
	free(s);
}

static void fields_free(struct kg_cert_match *cm)
{
	for (size_t f = 0; f < F_COUNT; f++)
		free_strings(cm->m[f].patterns, cm->m[f].n);
}

void kg_access_free(struct kg_access *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n; i++) {
		free(a->rules[i].name);
		fields_free(&a->rules[i].cm);
	}
	free(a->rules);
	free(a);
}

size_t kg_access_count(const struct kg_access *a)
{
	return a ? a->n : 0;
}

const char *kg_access_rule_name(const struct kg_access *a, size_t i)
{
	return a->rules[i].name;
}

/* Each string with its terminating NUL, so that ("ab","c") and ("a","bc")
 * differ. */
static int digest_str(EVP_MD_CTX *md, const char *s)
{
	return EVP_DigestUpdate(md, s, strlen(s) + 1) == 1 ? 0 : -EIO;
}

int kg_access_digest(const struct kg_access *a, EVP_MD_CTX *md)
{
	for (size_t i = 0; a && i < a->n; i++) {
		const struct rule *r = &a->rules[i];
		if (digest_str(md, r->name) < 0 ||
		    digest_str(md, r->action == KG_ACCESS_ALLOW ? "allow" : "deny") < 0)
			return -EIO;
		for (size_t f = 0; f < F_COUNT; f++) {
			if (r->cm.m[f].n && digest_str(md, field_keys[f]) < 0)
				return -EIO;
			for (size_t j = 0; j < r->cm.m[f].n; j++)
				if (digest_str(md, r->cm.m[f].patterns[j]) < 0)
					return -EIO;
		}
	}
	return 0;
}

/* ---- the certificate's values ---- */

static int add_value(struct values *v, enum field f, char *s)
{
	if (!s)
		return -ENOMEM;
	char **grown = realloc(v->v[f], (v->n[f] + 1) * sizeof(*grown));
	if (!grown) {
		free(s);
		return -ENOMEM;
	}
	v->v[f] = grown;
	v->v[f][v->n[f]++] = s;
	return 0;
}

/* An ASN.1 string as UTF-8; one with a NUL inside is skipped, so that
 * "good\0.evil" cannot match a pattern for "good". */
static int add_asn1(struct values *v, enum field f, const ASN1_STRING *a)
{
	unsigned char *utf8 = NULL;
	int len = ASN1_STRING_to_UTF8(&utf8, a);
	if (len < 0)
		return 0; /* undecodable: matches nothing */
	if (memchr(utf8, '\0', (size_t)len)) {
		OPENSSL_free(utf8);
		return 0;
	}
	char *s = strndup((const char *)utf8, (size_t)len);
	OPENSSL_free(utf8);
	return add_value(v, f, s);
}

static int subject_values(struct values *v, X509 *cert)
{
	static const struct { int nid; enum field f; } map[] = {
		{NID_commonName, F_CN}, {NID_organizationName, F_O},
		{NID_organizationalUnitName, F_OU}};
	const X509_NAME *name = X509_get_subject_name(cert);
	for (size_t m = 0; m < sizeof(map) / sizeof(map[0]); m++) {
		for (int i = X509_NAME_get_index_by_NID(name, map[m].nid, -1); i >= 0;
		     i = X509_NAME_get_index_by_NID(name, map[m].nid, i)) {
			const X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
			if (add_asn1(v, map[m].f, X509_NAME_ENTRY_get_data(e)) < 0)
				return -ENOMEM;
		}
	}
	return 0;
}

static int san_values(struct values *v, X509 *cert)
{
	GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	int r = 0;
	for (int i = 0; sans && r == 0 && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
		char text[INET6_ADDRSTRLEN];
		switch (g->type) {
		case GEN_DNS: r = add_asn1(v, F_SAN_DNS, g->d.dNSName); break;
		case GEN_EMAIL: r = add_asn1(v, F_SAN_EMAIL, g->d.rfc822Name); break;
		case GEN_URI: r = add_asn1(v, F_SAN_URI, g->d.uniformResourceIdentifier); break;
		case GEN_IPADD: {
			int len = ASN1_STRING_length(g->d.iPAddress);
			const unsigned char *p = ASN1_STRING_get0_data(g->d.iPAddress);
			int fam = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
			if (fam && inet_ntop(fam, p, text, sizeof(text)))
				r = add_value(v, F_SAN_IP, strdup(text));
			break;
		}
		default: break;
		}
	}
	GENERAL_NAMES_free(sans);
	return r;
}

static int other_values(struct values *v, X509 *cert)
{
	BIO *mem = BIO_new(BIO_s_mem());
	char *text = NULL;
	int r = -ENOMEM;
	if (!mem)
		return -ENOMEM;
	if (X509_NAME_print_ex(mem, X509_get_issuer_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
		char *data;
		long n = BIO_get_mem_data(mem, &data);
		r = add_value(v, F_ISSUER, strndup(data, (size_t)(n > 0 ? n : 0)));
	}
	BIO_free(mem);
	if (r < 0)
		return r;
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex = bn ? BN_bn2hex(bn) : NULL;
	BN_free(bn);
	if (!hex)
		return -ENOMEM;
	/* BN_bn2hex writes "-" for a negative serial: norm_hex refuses it,
	 * so such a certificate matches no serial pattern. */
	text = norm_hex(hex, true);
	OPENSSL_free(hex);
	if (text && add_value(v, F_SERIAL, text) < 0)
		return -ENOMEM;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char fp[2 * EVP_MAX_MD_SIZE + 1];
	if (X509_digest(cert, EVP_sha256(), md, &mdlen) != 1)
		return -ENOMEM;
	for (unsigned int i = 0; i < mdlen; i++)
		snprintf(fp + 2 * i, 3, "%02x", md[i]);
	return add_value(v, F_SHA256, strdup(fp));
}

static void values_free(struct values *v)
{
	for (size_t f = 0; f < F_COUNT; f++)
		free_strings(v->v[f], v->n[f]);
}

static bool field_matches(const struct matcher *m, enum field f, const struct values *v)
{
	/* DNS names compare without case (RFC 4343); serial and fingerprint
	 * are normalised to lower case; everything else is exact. */
	bool fold = f == F_SAN_DNS;
	for (size_t i = 0; i < m->n; i++)
		for (size_t j = 0; j < v->n[f]; j++)
			if (kg_access_glob(m->patterns[i], v->v[f][j], fold))
				return true;
	return false;
}

static bool fields_match(const struct kg_cert_match *cm, const struct values *v)
{
	for (size_t f = 0; f < F_COUNT; f++)
		if (cm->m[f].n && !field_matches(&cm->m[f], (enum field)f, v))
			return false;
	return true;
}

/* The certificate's values of every field; -ENOMEM. */
static int cert_values(struct values *v, X509 *cert)
{
	if (subject_values(v, cert) < 0 || san_values(v, cert) < 0 ||
	    other_values(v, cert) < 0) {
		values_free(v);
		return -ENOMEM;
	}
	return 0;
}

enum kg_access_action kg_access_eval(const struct kg_access *a, X509 *cert,
				     enum kg_access_action def, const char **rule)
{
	struct values v = {0};
	*rule = KG_ACCESS_DEFAULT_RULE;
	if (!a || !cert)
		return def;
	if (cert_values(&v, cert) < 0) {
		/* Out of memory: refuse rather than let a deny rule be skipped. */
		*rule = "(out of memory)";
		return KG_ACCESS_DENY;
	}
	enum kg_access_action out = def;
	for (size_t i = 0; i < a->n; i++) {
		const struct rule *r = &a->rules[i];
		if (fields_match(&r->cm, &v)) {
			out = r->action;
			*rule = r->name;
			break;
		}
	}
	values_free(&v);
	return out;
}

/* ---- certificate matchers of routes ---- */

struct kg_cert_match *kg_cert_match_parse(struct json_object *match, const char *path,
					  char *err, size_t errlen)
{
	bool have = false;
	if (!json_object_is_type(match, json_type_object)) {
		kg_jpath_fail(err, errlen, path, "expected an object");
		return NULL;
	}
	struct kg_cert_match *cm = calloc(1, sizeof(*cm));
	if (!cm) {
		kg_jpath_fail(err, errlen, path, "out of memory");
		return NULL;
	}
	if (parse_fields(match, path, cm, &have, err, errlen) < 0)
		goto free_match;
	if (!have) {
		kg_jpath_fail(err, errlen, path, "needs at least one matcher (cn, o, ou, san_dns, "
					"san_email, san_ip, san_uri, issuer, serial, sha256)");
		goto free_match;
	}
	return cm;
free_match:
	kg_cert_match_free(cm);
	return NULL;
}

void kg_cert_match_free(struct kg_cert_match *cm)
{
	if (!cm)
		return;
	fields_free(cm);
	free(cm);
}

int kg_cert_match_eval(struct kg_cert_match *const *cms, size_t n, X509 *cert, uint64_t *bits)
{
	struct values v = {0};
	*bits = 0;
	if (!cert || n == 0)
		return 0;
	if (cert_values(&v, cert) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < n && i < 64; i++)
		if (cms[i] && fields_match(cms[i], &v))
			*bits |= 1ull << i;
	values_free(&v);
	return 0;
}
