/* Certificate entries as the daemon (and later control-plane uploads)
 * validate them (certs.c): PEM/DER garbage, truncated chains, mismatched
 * keys, CRLs. Input: one selector byte, then the files separated by
 * KF_SEP:
 *   's' server entry: chain KF_SEP key
 *   'c' CA entry:     cert
 *   'C' CA entry:     cert KF_SEP crl
 *   'd' a CRL as a download brings it, PEM or DER (crl.c's parser)
 * Any other selector feeds the bytes to the DER certificate decoder and
 * the subject formatter, and to the name rule. */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "certs.h"
#include "crl.h"
#include "fuzz_util.h"

static void check_entry(enum kg_cert_type type, const uint8_t **part, size_t *len, size_t n)
{
	struct kf_file files[2];
	struct kg_cert_conf c = {.name = "fuzz", .type = type};
	for (size_t i = 0; i < n; i++)
		kf_file_open(&files[i], part[i], len[i]);
	c.cert_path = files[0].path;
	if (n > 1) {
		if (type == KG_CERT_SERVER)
			c.key_path = files[1].path;
		else
			c.crl_path = files[1].path;
	}
	char err[512] = "";
	KF_FAIL_IF(kg_cert_validate(&c, err, sizeof(err)) != 0 && (err[0] == '\0' || strchr(err, '\n'))); /* refusals name what was wrong, on one line */
	for (size_t i = 0; i < n; i++)
		kf_file_close(&files[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const uint8_t *part[2];
	size_t len[2];
	size_t n = kf_split(data + 1, size - 1, KF_SEP, part, len, 2);
	switch (data[0]) {
	case 's':
		if (n == 2) /* a server entry always has its key */
			check_entry(KG_CERT_SERVER, part, len, 2);
		break;
	case 'c':
		check_entry(KG_CERT_CA, part, len, 1);
		break;
	case 'C':
		if (n == 2)
			check_entry(KG_CERT_CA, part, len, 2);
		break;
	case 'd': {
		char err[512] = "";
		X509_CRL *crl = kg_crl_parse(data + 1, size - 1, err, sizeof(err));
		KF_FAIL_IF(!crl && (err[0] == '\0' || strchr(err, '\n')));
		X509_CRL_free(crl);
		break;
	}
	default: {
		const unsigned char *p = data + 1;
		X509 *x = d2i_X509(NULL, &p, (long)(size - 1));
		if (x) {
			char subject[256];
			kg_cert_subject(x, subject, sizeof(subject));
			X509_free(x);
		}
		char *name = kf_strndup(data + 1, size - 1);
		(void)kg_cert_name_valid(name);
		free(name);
		break;
	}
	}
	ERR_clear_error();
	return 0;
}
