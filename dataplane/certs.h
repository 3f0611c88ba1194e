/* Certificate validation shared by start-up and (later) control-plane
 * uploads. Follows the cloud console's rules: a server entry is a PEM chain
 * (leaf first) plus a PEM private key that must match the leaf and must not
 * be expired or not yet valid; a CA entry must be a CA certificate
 * (basicConstraints CA:TRUE) and its optional CRL must be a well-formed PEM
 * CRL signed by that CA. Functions return 0, or a negative value with a
 * human message in err (without the JSON path; callers prefix it):
 * -EKEYEXPIRED when only a date is wrong (a certificate or CRL expired or
 * not yet valid), which can happen to a stored entry that was valid when
 * uploaded; -EINVAL for everything else. */
#ifndef KGATE_CERTS_H
#define KGATE_CERTS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "config.h"

/* Checks one certificate entry as described above. */
int kg_cert_validate(const struct kg_cert_conf *cert, char *err, size_t errlen);

/* Validates every certificate entry of cfg; messages are prefixed with
 * the entry's JSON path ("certificates.web.key: ..."). Without
 * dates_fatal (kgated starting), a date problem is a warning line: the
 * listeners using that entry fail to start (kg_listener_certs_check), the
 * others run. 0 or negative as above. */
int kg_config_validate_files(const struct kg_config *cfg, bool dates_fatal, char *err,
			     size_t errlen);

/* Checks that the process can still read every file of cfg's certificate
 * entries (access(2) with the real uid: call it after the privilege drop,
 * where kg_config_validate_files ran as the starting user). 0, or -errno
 * with err naming the entry ("certificates.web.key: ..."). */
int kg_config_files_readable(const struct kg_config *cfg, char *err, size_t errlen);

/* Checks the certificate entries listener l uses (server certificate, CA,
 * and those of its sni entries) again, right before it starts listening:
 * a stored certificate may have expired since it was uploaded. 0 or negative as above; err names the
 * entry ("certificate web: the certificate expired on ..."). */
int kg_listener_certs_check(const struct kg_listener_conf *l, char *err, size_t errlen);

/* The subject as one RFC 2253 line ("CN=alice,O=Example") for messages;
 * never fails (writes a placeholder instead). */
void kg_cert_subject(const X509 *x, char *out, size_t outlen);

/* The first certificate, or the CRL, of the PEM file at path, for what
 * reports on a stored file (cert show, expiry dates); NULL when the file
 * cannot be opened or holds none. Validation uses its own readers. */
X509 *kg_pem_read_cert(const char *path);
X509_CRL *kg_pem_read_crl(const char *path);

#endif
