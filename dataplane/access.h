/* Access rules on verified client certificates (kgate.json(5)
 * "access_rules"): an ordered list of named rules, each allow or deny with
 * matchers on the certificate's subject, SANs, issuer, serial and SHA-256
 * fingerprint. Parsed and compiled once per document (config.c), evaluated
 * once per handshake after chain verification (tls.c, conn.c); first match
 * wins, the listener's access_default decides the rest. */
#ifndef KGATE_ACCESS_H
#define KGATE_ACCESS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <kgate/listener_keys.h>

struct json_object;

/* Bounds a document's rules: evaluation cost grows with them. */
#define KG_ACCESS_RULES_MAX 256
#define KG_ACCESS_PATTERNS_MAX 64  /* alternatives of one matcher */
#define KG_ACCESS_PATTERN_MAX 1024 /* bytes of one pattern */
/* The rule name reported when no rule matched. */
#define KG_ACCESS_DEFAULT_RULE "(default)"

struct kg_access;

/* Parses a JSON array of rules; path names it in messages
 * ("listeners[0].access_rules"). Returns NULL and writes
 * "<path>[i].match.cn: reason" to err on any error. */
struct kg_access *kg_access_parse(struct json_object *rules, const char *path, char *err,
				  size_t errlen);
/* Tolerates NULL. */
void kg_access_free(struct kg_access *a);
size_t kg_access_count(const struct kg_access *a);
/* The name of rule i (< kg_access_count), in evaluation order. */
const char *kg_access_rule_name(const struct kg_access *a, size_t i);

/* The action for cert (verified by the caller; NULL: no certificate,
 * which matches no rule): the first matching rule's, else def. *rule is
 * the rule's name, or KG_ACCESS_DEFAULT_RULE; it lives as long as a. */
enum kg_access_action kg_access_eval(const struct kg_access *a, X509 *cert,
				     enum kg_access_action def, const char **rule);

/* Feeds the compiled rules (names, actions, fields, patterns, in order)
 * to md, so that two rule lists digest alike only when they decide alike.
 * 0, or -EIO when the digest fails. a may be NULL. */
int kg_access_digest(const struct kg_access *a, EVP_MD_CTX *md);

/* The "*" and "?" glob (no character classes, no escapes): "*" matches
 * any run of bytes, "?" one byte; case-insensitive when fold is true. */
bool kg_access_glob(const char *pattern, const char *text, bool fold);

#endif
