#include "subject.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/objects.h>

struct field {
	const char *key;
	int nid;
	bool policy; /* must match the CA's */
};

static const struct field fields[] = {
	{"C", NID_countryName, true},
	{"ST", NID_stateOrProvinceName, true},
	{"L", NID_localityName, false},
	{"O", NID_organizationName, true},
	{"OU", NID_organizationalUnitName, true},
	{"CN", NID_commonName, false},
	{"emailAddress", NID_pkcs9_emailAddress, false},
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const struct field *field_find(const char *key)
{
	for (size_t i = 0; i < NFIELDS; i++)
		if (strcmp(fields[i].key, key) == 0)
			return &fields[i];
	return NULL;
}

/* Copies one "/"-delimited token from *p, unescaping, stopping at an
 * unescaped stop character (or '/' or the end). Returns -EINVAL on a
 * trailing lone backslash. */
static int take_token(const char **p, char stop, char *out, size_t outlen)
{
	const char *s = *p;
	size_t n = 0;

	while (*s && *s != '/' && *s != stop) {
		char c = *s++;
		if (c == '\\') {
			if (!*s)
				return -EINVAL;
			c = *s++;
		}
		if (n + 1 >= outlen)
			return -E2BIG;
		out[n++] = c;
	}
	out[n] = '\0';
	*p = s;
	return 0;
}

X509_NAME *kg_subject_parse(const char *text, struct kg_err *err)
{
	char key[32], value[256];
	unsigned seen = 0;
	const char *p = text;
	X509_NAME *name;

	if (!text || text[0] != '/') {
		kg_errf(err, EINVAL, "--subject: must look like '/O=Example/CN=name'");
		return NULL;
	}
	name = X509_NAME_new();
	if (!name) {
		kg_errf(err, ENOMEM, "--subject: out of memory");
		return NULL;
	}
	while (*p == '/') {
		const struct field *f;
		p++;
		if (take_token(&p, '=', key, sizeof(key)) != 0 || *p != '=') {
			kg_errf(err, EINVAL, "--subject: '%.*s': expected FIELD=value",
				(int)strcspn(p, "/"), p);
			goto free_name;
		}
		p++;
		f = field_find(key);
		if (!f) {
			kg_errf(err, EINVAL,
				"--subject: unknown field '%s' (known: C, ST, L, O, OU, CN, emailAddress)",
				key);
			goto free_name;
		}
		int r = take_token(&p, '\0', value, sizeof(value));
		if (r == -E2BIG) {
			kg_errf(err, EINVAL, "--subject: %s: value too long", f->key);
			goto free_name;
		}
		if (r != 0) {
			kg_errf(err, EINVAL, "--subject: %s: lone backslash at the end", f->key);
			goto free_name;
		}
		if (!value[0]) {
			kg_errf(err, EINVAL, "--subject: %s: empty value", f->key);
			goto free_name;
		}
		unsigned bit = 1u << (f - fields);
		if (seen & bit) {
			kg_errf(err, EINVAL, "--subject: %s: given twice", f->key);
			goto free_name;
		}
		seen |= bit;
		/* ASN1 string tables enforce the X.520 limits (C is two
		 * printable characters, CN at most 64, ...). */
		if (!X509_NAME_add_entry_by_NID(name, f->nid, MBSTRING_UTF8,
						(const unsigned char *)value, -1, -1, 0)) {
			ERR_clear_error();
			kg_errf(err, EINVAL, "--subject: %s: '%s' is not a valid value%s", f->key,
				value, f->nid == NID_countryName ? " (two-letter country code)"
				: " (too long, or not UTF-8)");
			goto free_name;
		}
	}
	if (*p) {
		kg_errf(err, EINVAL, "--subject: trailing text '%s'", p);
		goto free_name;
	}
	if (X509_NAME_get_index_by_NID(name, NID_commonName, -1) < 0) {
		kg_errf(err, EINVAL, "--subject: CN: missing (a common name is required)");
		goto free_name;
	}
	return name;

free_name:
	X509_NAME_free(name);
	return NULL;
}

char *kg_subject_get(const X509_NAME *name, int nid)
{
	int i = X509_NAME_get_index_by_NID(name, nid, -1);
	unsigned char *utf8 = NULL;

	if (i < 0)
		return NULL;
	X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
	if (ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e)) < 0) {
		ERR_clear_error();
		return NULL;
	}
	return (char *)utf8;
}

int kg_subject_check_policy(const X509_NAME *ca, const X509_NAME *req, struct kg_err *err)
{
	for (size_t i = 0; i < NFIELDS; i++) {
		if (!fields[i].policy)
			continue;
		char *want = kg_subject_get(ca, fields[i].nid);
		char *got = kg_subject_get(req, fields[i].nid);
		int ret = 0;
		if (got && !want)
			ret = kg_errf(err, EPERM,
				      "--subject: %s: the CA's subject has no %s, so the certificate may not have one",
				      fields[i].key, fields[i].key);
		else if (got && strcmp(got, want) != 0)
			ret = kg_errf(err, EPERM,
				      "--subject: %s: '%s' differs from the CA's '%s' (C, ST, O and OU must match the CA)",
				      fields[i].key, got, want);
		OPENSSL_free(want);
		OPENSSL_free(got);
		if (ret)
			return ret;
	}
	return 0;
}
