/* kgatectl's command-line value parsers: --subject (subject.c), the naming
 * policy between a CA and a request, --san (pki.c), serials, revocation
 * reasons, index.txt times, --days/--key/--digest. Input: fields
 * separated by KF_SEP in that order: subject, CA subject, san, serial,
 * reason, time, days, key, digest (missing fields are skipped). */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "fuzz_util.h"
#include "index.h"
#include "pki.h"
#include "subject.h"

enum { F_SUBJECT, F_CA, F_SAN, F_SERIAL, F_REASON, F_TIME, F_DAYS, F_KEY, F_DIGEST, F_COUNT };

static void one_line(const struct kg_err *err)
{
	KF_FAIL_IF(err->msg[0] == '\0'); /* a refusal always says what was wrong */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *part[F_COUNT];
	size_t len[F_COUNT];
	char *f[F_COUNT] = {0};
	size_t n = kf_split(data, size, KF_SEP, part, len, F_COUNT);
	for (size_t i = 0; i < n; i++)
		f[i] = kf_strndup(part[i], len[i]);

	struct kg_err err = {""};
	X509_NAME *req = kg_subject_parse(f[F_SUBJECT], &err);
	if (!req)
		one_line(&err);
	X509_NAME *ca = f[F_CA] ? kg_subject_parse(f[F_CA], &err) : NULL;
	if (req && ca) {
		err.msg[0] = '\0';
		if (kg_subject_check_policy(ca, req, &err) != 0)
			one_line(&err);
	}
	if (req) {
		static const int nids[] = {NID_commonName, NID_countryName, NID_pkcs9_emailAddress};
		for (size_t i = 0; i < sizeof(nids) / sizeof(nids[0]); i++)
			OPENSSL_free(kg_subject_get(req, nids[i]));
	}
	X509_NAME_free(req);
	X509_NAME_free(ca);

	if (f[F_SAN]) {
		err.msg[0] = '\0';
		char *san = kg_san_build(f[F_SAN], &err);
		if (!san) {
			one_line(&err);
		} else {
			/* What kgatectl hands OpenSSL's v3 parser must be accepted
			 * or refused there, never crash it. */
			X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
			X509_EXTENSION_free(ext);
			free(san);
		}
	}
	if (f[F_SERIAL]) {
		char out[KG_SERIAL_HEX_MAX];
		if (kg_serial_normalize(f[F_SERIAL], out) == 0) {
			/* Normalising is idempotent. */
			char again[KG_SERIAL_HEX_MAX];
			KF_FAIL_IF(kg_serial_normalize(out, again) != 0 || strcmp(out, again) != 0);
		}
	}
	if (f[F_REASON]) {
		int r = kg_reason_parse(f[F_REASON]);
		(void)kg_reason_name(r);
	}
	if (f[F_TIME]) {
		time_t t;
		char text[KG_TIME_MAX];
		if (kg_time_from_text(f[F_TIME], &t) == 0)
			(void)kg_time_to_text(t, text);
	}
	if (f[F_DAYS]) {
		int days;
		(void)kg_days_parse(f[F_DAYS], 825, false, &days, &err);
	}
	if (f[F_KEY]) {
		struct kg_key_spec spec;
		(void)kg_key_spec_parse(f[F_KEY], &spec, &err);
	}
	if (f[F_DIGEST]) {
		const EVP_MD *md;
		(void)kg_digest_parse(f[F_DIGEST], &md, &err);
	}
	for (size_t i = 0; i < F_COUNT; i++)
		free(f[i]);
	ERR_clear_error();
	return 0;
}
