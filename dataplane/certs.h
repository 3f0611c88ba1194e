/* Certificate validation shared by start-up and (later) control-plane
 * uploads. Follows the cloud console's rules: a server entry is a PEM chain
 * (leaf first) plus a PEM private key that must match the leaf and must not
 * be expired or not yet valid; a CA entry must be a CA certificate
 * (basicConstraints CA:TRUE) and its optional CRL must be a well-formed PEM
 * CRL signed by that CA. Functions return 0 or -1 with a human message in
 * err (without the JSON path; callers prefix it). */
#ifndef KGATE_CERTS_H
#define KGATE_CERTS_H

#include <stddef.h>

#include "config.h"

/* Checks one certificate entry as described above. */
int kg_cert_validate(const struct kg_cert_conf *cert, char *err, size_t errlen);

/* Validates every certificate entry of cfg; messages are prefixed with
 * the entry's JSON path ("certificates.web.key: ..."). 0 or -1. */
int kg_config_validate_files(const struct kg_config *cfg, char *err,
			     size_t errlen);

/* Certificate names: 1-80 characters of letters, digits, - / . _ * */
int kg_cert_name_valid(const char *name);

#endif
