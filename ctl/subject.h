/* Distinguished names as kgatectl takes them on the command line,
 * "/C=CN/ST=Zhejiang/O=Example/OU=Edge/CN=alice", and the CA's naming
 * policy for the certificates it issues. */
#ifndef KG_CTL_SUBJECT_H
#define KG_CTL_SUBJECT_H

#include <openssl/x509.h>

#include "fileio.h"

/* Parses "/F=value/..." with F one of C, ST, L, O, OU, CN, emailAddress;
 * a backslash escapes the next character ("\/", "\=", "\\"). Fields keep
 * their order; each appears once; values are non-empty UTF-8; CN is
 * required. NULL with err naming the offending field on failure. */
X509_NAME *kg_subject_parse(const char *text, struct kg_err *err);

/* The policy for issued certificates: C, ST, O and OU, where the request
 * has them, must equal the CA's (so a field the CA lacks is refused too);
 * L, CN and emailAddress are free. 0 or -EPERM naming the field. */
int kg_subject_check_policy(const X509_NAME *ca, const X509_NAME *req, struct kg_err *err);

/* The value of the first entry with nid as UTF-8 (caller frees with
 * OPENSSL_free), or NULL when absent. */
char *kg_subject_get(const X509_NAME *name, int nid);

#endif
