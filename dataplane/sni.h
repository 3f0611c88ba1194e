/* Server names of a listener's SNI entries (kgate.json(5) "sni"): the rule
 * a name in the document must follow, how a name the client sent (in the
 * ClientHello's server_name extension, or in an https request's Host)
 * matches an entry's name (config.h's kg_config_sni_find picks the
 * entry), and reading that extension. Pure functions over bytes: tls.c,
 * config.c and forward_http.c call them, the fuzzer too. */
#ifndef KGATE_SNI_H
#define KGATE_SNI_H

#include <stdbool.h>
#include <stddef.h>

/* Bounds a listener's entries and the names of one entry: the ClientHello
 * callback walks them for every handshake. */
#define KG_SNI_ENTRIES_MAX 64
#define KG_SNI_NAMES_MAX 64
/* A DNS name's longest text form (RFC 1035 2.3.4, without the root dot). */
#define KG_SNI_NAME_MAX 253

/* Checks a name of the document: a host name of letters, digits and '-'
 * (labels of 1-63 bytes, no '-' at either end of a label, at most 253
 * bytes, no trailing dot), or "*." and such a name of two labels or more
 * (the wildcard stands for exactly one label, as browsers match it). 0,
 * or -EINVAL with why (a phrase without the path) filled. */
int kg_sni_name_check(const char *name, char *why, size_t whylen);

/* True when name[0..len) (as a client sent it, any case, not
 * NUL-terminated, at most KG_SNI_NAME_MAX bytes) matches pattern (a
 * checked name, lower case): equal, or for "*.rest" one non-empty label
 * without a dot followed by ".rest". */
bool kg_sni_match(const char *pattern, const char *name, size_t len);

/* The host of an https request's Host value (RFC 9110 7.2): without the
 * port and a trailing dot, brackets kept for an IPv6 literal. Sets
 * *host and *len into value; false when the value is empty or malformed. */
bool kg_sni_host_of(const char *value, size_t vlen, const char **host, size_t *len);

/* The host_name of a server_name extension's body (RFC 6066 3): the first
 * entry of type host_name. 0 with *name and *len into ext; -ENOENT when the
 * list has no host_name; -EINVAL when the extension is malformed or the
 * name is empty, longer than KG_SNI_NAME_MAX + 1 or holds a NUL. */
int kg_sni_from_ext(const unsigned char *ext, size_t len, const char **name, size_t *nlen);

#endif
