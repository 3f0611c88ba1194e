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
#include <stdint.h>

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

/* A certificate matcher on its own: the "match" object of a route
 * (routes.h) takes the same keys as an access rule's, and all given ones
 * must match. */
struct kg_cert_match;
/* NULL with "<path>.key: reason" in err; an object without any matcher is
 * refused too. */
struct kg_cert_match *kg_cert_match_parse(struct json_object *match, const char *path,
					  char *err, size_t errlen);
/* Tolerates NULL. */
void kg_cert_match_free(struct kg_cert_match *cm);
/* Evaluates cms[0..n) (n <= 64; NULL entries never match) against cert
 * with the certificate's fields taken once: bit i of *bits is set when
 * cms[i] matches. cert NULL: no bit. 0, or -ENOMEM (then *bits is 0). */
int kg_cert_match_eval(struct kg_cert_match *const *cms, size_t n, X509 *cert, uint64_t *bits);

/* Names of rules and routes: 1-80 letters, digits or - / . _ (they go
 * into log lines and metric labels, where a plain alphabet keeps them
 * unambiguous). */
bool kg_access_name_valid(const char *s);

/* The "*" and "?" glob (no character classes, no escapes): "*" matches
 * any run of bytes, "?" one byte; case-insensitive when fold is true. */
bool kg_access_glob(const char *pattern, const char *text, bool fold);

#endif
