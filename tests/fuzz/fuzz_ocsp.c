/* What kgate reads from OCSP responders and from ocsp_url (ocsp.c): the
 * responder URL parser (kg_ocsp_url_parse: config input and certificates'
 * AIA) and the response check (kg_ocsp_response_check: network bytes,
 * judged against a fixed certificate, its CA as the trust store).
 *
 * Input: first byte 'U' → the rest is a URL; anything else → the rest is a
 * DER OCSP response. Promises checked: a parsed URL has an IPv4 or IPv6
 * address of the right length, a non-empty host and a path starting with
 * "/"; a response that passes has a known status and a nextUpdate (when
 * given) not before its thisUpdate. Seeds: URLs, and real responses for
 * data/good.pem signed with data/ca.key (valid for a century). */
#include <string.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>

#include "fuzz_util.h"
#include "ocsp_resp.h"

#ifndef KF_DATA_DIR
#error "KF_DATA_DIR must name tests/fuzz/data"
#endif

static OCSP_CERTID *id;
static STACK_OF(X509) *certs;
static X509_STORE *store;

static X509 *load(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	if (!x) {
		fprintf(stderr, "fuzz_ocsp: cannot read %s\n", path);
		abort();
	}
	return x;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	X509 *ca = load(KF_DATA_DIR "/ca.pem"), *cert = load(KF_DATA_DIR "/good.pem");
	id = OCSP_cert_to_id(NULL, cert, ca);
	certs = sk_X509_new_null();
	store = X509_STORE_new();
	if (!id || !certs || !store || sk_X509_push(certs, ca) <= 0 ||
	    X509_STORE_add_cert(store, ca) != 1)
		abort();
	X509_free(cert);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[192];
	if (size >= 1 && data[0] == 'U') {
		char *url = kf_strndup(data + 1, size - 1);
		struct kg_ocsp_target t;
		if (kg_ocsp_url_parse(url, &t, why, sizeof(why)) == 0) {
			KF_FAIL_IF(!(t.addr.ss_family == AF_INET &&
				     t.addr_len == sizeof(struct sockaddr_in)) &&
				   !(t.addr.ss_family == AF_INET6 &&
				     t.addr_len == sizeof(struct sockaddr_in6)));
			KF_FAIL_IF(t.host[0] == '\0' || t.path[0] != '/');
		} else {
			KF_FAIL_IF(why[0] == '\0');
		}
		free(url);
		return 0;
	}
	enum kg_ocsp_status st = (enum kg_ocsp_status)-1;
	time_t this_update = 0, next_update = 0;
	const uint8_t *der = size ? data + 1 : data;
	size_t len = size ? size - 1 : 0;
	if (kg_ocsp_response_check(der, len, id, certs, store, 0, &st, &this_update,
				   &next_update, why, sizeof(why)) == 0) {
		KF_FAIL_IF(st != KG_OCSP_GOOD && st != KG_OCSP_REVOKED && st != KG_OCSP_UNKNOWN);
		KF_FAIL_IF(next_update != 0 && next_update < this_update);
	} else {
		KF_FAIL_IF(why[0] == '\0');
	}
	return 0;
}
