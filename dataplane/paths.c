#include "paths.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ktls.h"
#include "errors.h"

void kg_kernel_probe(struct kg_kernel_caps *caps)
{
	memset(caps, 0, sizeof(*caps));
	caps->ktls = kg_ktls_probe(caps->ktls_why, sizeof(caps->ktls_why)) == 1;
	snprintf(caps->sockmap_why, sizeof(caps->sockmap_why), "not probed");
}

/* The names a user sees (stats, metrics, logs), and the key of each in the
 * worker.stopped event. */
static const struct {
	const char *name, *log_key;
} path_names[KG_PATH_COUNT] = {
	[KG_PATH_NONE] = {"none", "path_none"},
	[KG_PATH_USERSPACE] = {"userspace-tls", "path_userspace_tls"},
	[KG_PATH_KTLS_SPLICE] = {"ktls-splice", "path_ktls_splice"},
	[KG_PATH_SPLICE] = {"splice", "path_splice"},
	[KG_PATH_SOCKMAP] = {"sockmap", "path_sockmap"},
	[KG_PATH_COPY] = {"userspace-copy", "path_userspace_copy"},
	[KG_PATH_HTTP] = {"http-userspace-tls", "path_http_userspace_tls"},
	[KG_PATH_HTTP_KTLS] = {"http-ktls-splice", "path_http_ktls_splice"},
	[KG_PATH_H2] = {"h2-userspace-tls", "path_h2_userspace_tls"},
	[KG_PATH_H2_KTLS] = {"h2-ktls", "path_h2_ktls"},
};

enum kg_path kg_path_for_alpn(enum kg_path p, const unsigned char *alpn, unsigned len)
{
	if (len != 2 || memcmp(alpn, "h2", 2) != 0)
		return p;
	if (p == KG_PATH_HTTP)
		return KG_PATH_H2;
	if (p == KG_PATH_HTTP_KTLS)
		return KG_PATH_H2_KTLS;
	return p;
}

const char *kg_path_name(enum kg_path p)
{
	return (unsigned)p < KG_PATH_COUNT ? path_names[p].name : "none";
}

const char *kg_path_log_key(enum kg_path p)
{
	return (unsigned)p < KG_PATH_COUNT ? path_names[p].log_key : "path_none";
}

static int plan_tls(const struct kg_listener_conf *lc, const struct kg_kernel_caps *caps,
		    enum kg_path *plan, bool *forced, char *err, size_t errlen)
{
	switch (lc->forwarding) {
	case KG_FWD_AUTO:
		*plan = caps->ktls ? KG_PATH_KTLS_SPLICE : KG_PATH_USERSPACE;
		return 0;
	case KG_FWD_USERSPACE:
		*plan = KG_PATH_USERSPACE;
		*forced = true;
		return 0;
	case KG_FWD_SPLICE:
		if (!caps->ktls)
			return kg_fail(err, errlen, EOPNOTSUPP,
				       "forwarding \"splice\" on a TLS listener needs kernel TLS, "
				       "and %s", caps->ktls_why);
		*plan = KG_PATH_KTLS_SPLICE;
		*forced = true;
		return 0;
	case KG_FWD_SOCKMAP:
		return kg_fail(err, errlen, EOPNOTSUPP,
			       "forwarding \"sockmap\" is only for protocol \"tcp\": kernels refuse "
			       "kernel TLS on sockets in a sockmap (use \"splice\" or \"auto\")");
	}
	return kg_fail(err, errlen, EOPNOTSUPP, "unknown forwarding mode");
}

/* auto picks splice over sockmap for tcp: on loopback splice moved more
 * bytes (3.01 against 2.41 Gbit/s) for a third of the relay CPU per GiB,
 * and it keeps TCP's back-pressure (bpf/README.md, "Numbers" and
 * "Back-pressure"). */
static int plan_tcp(const struct kg_listener_conf *lc, const struct kg_kernel_caps *caps,
		    enum kg_path *plan, bool *forced, char *err, size_t errlen)
{
	switch (lc->forwarding) {
	case KG_FWD_AUTO:
		*plan = KG_PATH_SPLICE;
		return 0;
	case KG_FWD_SPLICE:
		*plan = KG_PATH_SPLICE;
		*forced = true;
		return 0;
	case KG_FWD_USERSPACE:
		*plan = KG_PATH_COPY;
		*forced = true;
		return 0;
	case KG_FWD_SOCKMAP:
		if (!caps->sockmap)
			return kg_fail(err, errlen, EOPNOTSUPP,
				       "forwarding \"sockmap\" is not available: %s", caps->sockmap_why);
		*plan = KG_PATH_SOCKMAP;
		*forced = true;
		return 0;
	}
	return kg_fail(err, errlen, EOPNOTSUPP, "unknown forwarding mode");
}

/* Heads are parsed and rewritten in userspace either way. With kTLS the
 * kernel holds the record layer and Content-Length bodies are spliced
 * (http-ktls-splice); without it OpenSSL does the records and every byte
 * passes through userspace (http-userspace-tls). A connection whose
 * cipher the kernel cannot take stays on userspace TLS under auto. */
static int plan_https(const struct kg_listener_conf *lc, const struct kg_kernel_caps *caps,
		      enum kg_path *plan, bool *forced, char *err, size_t errlen)
{
	switch (lc->forwarding) {
	case KG_FWD_AUTO:
		*plan = caps->ktls ? KG_PATH_HTTP_KTLS : KG_PATH_HTTP;
		return 0;
	case KG_FWD_USERSPACE:
		*plan = KG_PATH_HTTP;
		*forced = true;
		return 0;
	case KG_FWD_SPLICE:
		if (!caps->ktls)
			return kg_fail(err, errlen, EOPNOTSUPP,
				       "forwarding \"splice\" (path http-ktls-splice) on an https "
				       "listener needs kernel TLS, and %s (use \"auto\" or "
				       "\"userspace\")", caps->ktls_why);
		*plan = KG_PATH_HTTP_KTLS;
		*forced = true;
		return 0;
	case KG_FWD_SOCKMAP:
		return kg_fail(err, errlen, EOPNOTSUPP,
			       "forwarding \"sockmap\" is only for protocol \"tcp\"");
	}
	return kg_fail(err, errlen, EOPNOTSUPP, "unknown forwarding mode");
}

int kg_path_plan(const struct kg_listener_conf *lc, const struct kg_kernel_caps *caps,
		 enum kg_path *plan, bool *forced, char *err, size_t errlen)
{
	*forced = false;
	*plan = KG_PATH_NONE;
	switch (lc->protocol) {
	case KG_PROTO_TLS:
		return plan_tls(lc, caps, plan, forced, err, errlen);
	case KG_PROTO_TCP:
		return plan_tcp(lc, caps, plan, forced, err, errlen);
	case KG_PROTO_HTTPS:
		return plan_https(lc, caps, plan, forced, err, errlen);
	}
	return kg_fail(err, errlen, EOPNOTSUPP, "unknown protocol");
}
