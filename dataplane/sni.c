/* SNI entry names: checks, matching, lookup (sni.h). */
#include "sni.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool is_ldh(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '-';
}

/* Host name rules for s; *labels is the number of labels. */
static int check_host(const char *s, unsigned *labels, char *why, size_t whylen)
{
	size_t len = strlen(s), label = 0;
	*labels = 0;
	if (len == 0) {
		snprintf(why, whylen, "is empty");
		return -EINVAL;
	}
	if (len > KG_SNI_NAME_MAX) {
		snprintf(why, whylen, "is longer than %d characters", KG_SNI_NAME_MAX);
		return -EINVAL;
	}
	for (size_t i = 0; i <= len; i++) {
		char ch = s[i];
		if (ch == '.' || ch == '\0') {
			if (label == 0) {
				snprintf(why, whylen, ch == '\0'
					 ? "ends with a dot (server names are written without it)"
					 : "has an empty label");
				return -EINVAL;
			}
			if (s[i - 1] == '-' || s[i - label] == '-') {
				snprintf(why, whylen, "has a label that starts or ends with '-'");
				return -EINVAL;
			}
			(*labels)++;
			label = 0;
			continue;
		}
		if (ch == '*') {
			snprintf(why, whylen, "has '*' other than as the whole first label \"*.\"");
			return -EINVAL;
		}
		if (!is_ldh(ch)) {
			snprintf(why, whylen, "has '%c'; a server name has letters, digits, '-' and "
				 "dots", ch >= 0x20 && ch < 0x7f ? ch : '?');
			return -EINVAL;
		}
		if (++label > 63) {
			snprintf(why, whylen, "has a label longer than 63 characters");
			return -EINVAL;
		}
	}
	return 0;
}

int kg_sni_name_check(const char *name, char *why, size_t whylen)
{
	unsigned labels = 0;
	bool wild = strncmp(name, "*.", 2) == 0;
	if (check_host(wild ? name + 2 : name, &labels, why, whylen) < 0)
		return -EINVAL;
	/* "*.com" would take every name of a top-level domain, which no
	 * certificate may (CA/Browser Forum); browsers refuse it too. */
	if (wild && labels < 2) {
		snprintf(why, whylen, "a wildcard needs two labels or more after \"*.\" "
			 "(\"*.example.org\")");
		return -EINVAL;
	}
	return 0;
}

bool kg_sni_match(const char *pattern, const char *name, size_t len)
{
	/* No DNS name is longer: whatever a client sends beyond is garbage,
	 * even if it ends like a wildcard's suffix. */
	if (len > KG_SNI_NAME_MAX)
		return false;
	size_t plen = strlen(pattern);
	if (strncmp(pattern, "*.", 2) != 0)
		return plen == len && strncasecmp(pattern, name, len) == 0;
	/* "*.rest": the client's name is "<label>.rest", where the label is
	 * one or more bytes without a dot. */
	size_t rest = plen - 1; /* ".rest" */
	if (len <= rest)
		return false;
	size_t first = len - rest;
	if (memchr(name, '.', first) || memchr(name, '\0', first))
		return false;
	return strncasecmp(pattern + 1, name + first, rest) == 0;
}

bool kg_sni_host_of(const char *v, size_t len, const char **host, size_t *hlen)
{
	while (len && (*v == ' ' || *v == '\t'))
		v++, len--;
	while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
		len--;
	if (len == 0)
		return false;
	size_t end = len;
	if (v[0] == '[') {
		const char *close = memchr(v, ']', len);
		if (!close)
			return false;
		end = (size_t)(close - v) + 1;
		if (end < len && v[end] != ':')
			return false;
	} else {
		const char *colon = memchr(v, ':', len);
		if (colon)
			end = (size_t)(colon - v);
		/* "example.org." names the same host (RFC 1034 3.1). */
		if (end > 1 && v[end - 1] == '.')
			end--;
	}
	if (end == 0)
		return false;
	*host = v;
	*hlen = end;
	return true;
}

static unsigned get16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

int kg_sni_from_ext(const unsigned char *ext, size_t len, const char **name, size_t *nlen)
{
	if (len < 2 || get16(ext) != len - 2)
		return -EINVAL;
	for (size_t off = 2; off < len;) {
		if (len - off < 3)
			return -EINVAL;
		unsigned type = ext[off], n = get16(ext + off + 1);
		off += 3;
		if (n > len - off)
			return -EINVAL;
		if (type == 0) { /* host_name */
			if (n == 0 || n > KG_SNI_NAME_MAX + 1 || memchr(ext + off, '\0', n))
				return -EINVAL;
			*name = (const char *)ext + off;
			*nlen = n;
			return 0;
		}
		off += n;
	}
	return -ENOENT;
}
