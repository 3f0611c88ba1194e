/* What OCSP responders say and where they are (ocsp_resp.h). */
#include "ocsp_resp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

const char *kg_ocsp_status_name(enum kg_ocsp_status s)
{
	switch (s) {
	case KG_OCSP_GOOD: return "good";
	case KG_OCSP_REVOKED: return "revoked";
	default: return "unknown";
	}
}

int kg_ocsp_url_parse(const char *url, struct kg_ocsp_target *t, char *err, size_t errlen)
{
	static const char scheme[] = "http://";
	char host[KG_OCSP_URL_MAX + 1];
	unsigned port = 80;

	memset(t, 0, sizeof(*t));
	if (strlen(url) > KG_OCSP_URL_MAX) {
		snprintf(err, errlen, "longer than %d characters", KG_OCSP_URL_MAX);
		return -EINVAL;
	}
	if (strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
		snprintf(err, errlen, "\"%s\" is not an http:// URL (OCSP answers are signed; "
				      "kgate asks over plain HTTP)", url);
		return -EINVAL;
	}
	const char *h = url + sizeof(scheme) - 1;
	const char *slash = strchr(h, '/');
	size_t hostport = slash ? (size_t)(slash - h) : strlen(h);
	const char *hend = h + hostport;
	const char *colon = NULL;
	if (*h == '[') {
		const char *rb = memchr(h, ']', hostport);
		if (!rb) {
			snprintf(err, errlen, "\"%s\": IPv6 address without ']'", url);
			return -EINVAL;
		}
		memcpy(host, h + 1, (size_t)(rb - h - 1));
		host[rb - h - 1] = '\0';
		if (rb + 1 < hend && rb[1] != ':') {
			snprintf(err, errlen, "\"%s\": junk after the IPv6 address", url);
			return -EINVAL;
		}
		colon = rb + 1 < hend ? rb + 1 : NULL;
	} else {
		colon = memchr(h, ':', hostport);
		size_t hl = colon ? (size_t)(colon - h) : hostport;
		memcpy(host, h, hl);
		host[hl] = '\0';
	}
	if (colon) {
		char *end = NULL;
		unsigned long p = strtoul(colon + 1, &end, 10);
		if (end != hend || colon + 1 == hend || p == 0 || p > 65535) {
			snprintf(err, errlen, "\"%s\": bad port", url);
			return -EINVAL;
		}
		port = (unsigned)p;
	}
	struct sockaddr_in *a4 = (struct sockaddr_in *)&t->addr;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&t->addr;
	if (strcmp(host, "localhost") == 0 || inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
		if (strcmp(host, "localhost") == 0)
			a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		t->addr_len = sizeof(*a4);
	} else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		t->addr_len = sizeof(*a6);
	} else {
		snprintf(err, errlen, "\"%s\": the host must be an IP address or localhost (a "
				      "worker never waits for DNS)", url);
		return -EINVAL;
	}
	memcpy(t->host, h, hostport);
	t->host[hostport] = '\0';
	snprintf(t->path, sizeof(t->path), "%s", slash ? slash : "/");
	return 0;
}

/* ------------------------------------------------------------ answers */

static time_t asn1_to_time(const ASN1_GENERALIZEDTIME *t)
{
	struct tm tm;
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

int kg_ocsp_response_check(const unsigned char *der, size_t len, OCSP_CERTID *id,
			   STACK_OF(X509) *certs, X509_STORE *store, unsigned long flags,
			   enum kg_ocsp_status *status, time_t *this_update, time_t *next_update,
			   char *why, size_t whylen)
{
	int r = -1, st = -1, reason = -1;
	const unsigned char *p = der;
	OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
	OCSP_BASICRESP *bs = NULL;
	ASN1_GENERALIZEDTIME *rev = NULL, *thisupd = NULL, *nextupd = NULL;
	if (!resp) {
		snprintf(why, whylen, "not an OCSP response");
		goto out;
	}
	if (OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
		snprintf(why, whylen, "responder says %s",
			 OCSP_response_status_str(OCSP_response_status(resp)));
		goto out;
	}
	bs = OCSP_response_get1_basic(resp);
	if (!bs) {
		snprintf(why, whylen, "no basic OCSP response");
		goto out;
	}
	/* Signed by the issuing CA itself, or by a responder it delegated
	 * (id-kp-OCSPSigning) that chains to the store. */
	if (OCSP_basic_verify(bs, certs, store, flags) <= 0) {
		snprintf(why, whylen, "response signature does not verify against the CA");
		goto out;
	}
	if (OCSP_resp_find_status(bs, id, &st, &reason, &rev, &thisupd, &nextupd) != 1) {
		snprintf(why, whylen, "response does not name the certificate");
		goto out;
	}
	/* A stale answer (nextUpdate past) or one from the future is not
	 * trusted: whoever replays an old "good" must not get in. */
	if (OCSP_check_validity(thisupd, nextupd, KG_OCSP_CLOCK_SKEW_S, -1) != 1) {
		snprintf(why, whylen, "stale response (outside thisUpdate..nextUpdate)");
		goto out;
	}
	*this_update = asn1_to_time(thisupd);
	*next_update = nextupd ? asn1_to_time(nextupd) : 0;
	*status = st == V_OCSP_CERTSTATUS_GOOD      ? KG_OCSP_GOOD
		  : st == V_OCSP_CERTSTATUS_REVOKED ? KG_OCSP_REVOKED
						    : KG_OCSP_UNKNOWN;
	r = 0;
out:
	OCSP_BASICRESP_free(bs);
	OCSP_RESPONSE_free(resp);
	ERR_clear_error();
	return r;
}

