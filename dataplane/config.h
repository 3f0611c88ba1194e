/* The configuration document (doc/kgate.json.5.scd), parsed with
 * json-c into plain structs. Parsing validates shape and values (unknown
 * keys, wrong types, ranges, references between objects); it does not open
 * certificate files — that is certs.c's job, run by the caller afterwards.
 * Every error message starts with the JSON path of the offending key,
 * e.g. "listeners[0].port: must be 1-65535". */
#ifndef KGATE_CONFIG_H
#define KGATE_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <kgate/cert_type.h>
#include <kgate/limits.h>
#include <kgate/listener_keys.h>

#define KG_NAME_MAX 80
/* Named backend groups in a document. */
#define KG_MAX_GROUPS 128

enum kg_health_type { KG_HEALTH_NONE, KG_HEALTH_TCP, KG_HEALTH_HTTP };

/* "crl_expired": reject (default: every client is refused, as OpenSSL
 * does) or warn (X509_V_ERR_CRL_HAS_EXPIRED is ignored, the CRL is still
 * used and everything else checked; a warning is logged). */
enum kg_crl_expired { KG_CRL_EXPIRED_REJECT, KG_CRL_EXPIRED_WARN };

#define KG_CRL_REFRESH_DEFAULT_S 3600
#define KG_CRL_REFRESH_MAX_S 604800

struct kg_cert_conf {
	char name[KG_NAME_MAX + 1];
	enum kg_cert_type type;
	char *cert_path; /* absolute or resolved against the config's folder */
	char *key_path;  /* server only */
	char *crl_path;  /* ca only, optional (NULL) */
	/* ca only: what an expired CRL in force (past its nextUpdate) means. */
	enum kg_crl_expired crl_expired;
	/* ca only, optional (NULL): where fresh CRLs are downloaded from,
	 * every crl_refresh_s seconds (crl_watch.h); needs crl_path. */
	char *crl_url;
	unsigned crl_refresh_s;
};

/* A member's administrative state, set by kgatectl backend drain|disable|
 * enable and kept in the document ("drained": true / "disabled": true):
 * drained members take no new connections and keep their open ones;
 * disabled members take none and their open connections are closed (like
 * HAProxy's maintenance state). */
enum kg_admin_state { KG_ADMIN_READY, KG_ADMIN_DRAINED, KG_ADMIN_DISABLED };

struct kg_backend_conf {
	char *address; /* as written, "127.0.0.1:9001" or "[::1]:9001" */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	unsigned weight; /* 1-256, default 1; 0 is refused */
	enum kg_admin_state admin; /* "drained" / "disabled"; at most one of them */
};

/* Status codes 100-599 as a bitmap: bit (code - 100). */
#define KG_HTTP_STATUS_BITS 500
#define KG_HEALTH_METHOD_MAX 16
#define KG_HEALTH_PATH_MAX 256
#define KG_HEALTH_HOST_MAX 256

struct kg_health_conf {
	enum kg_health_type type; /* KG_HEALTH_NONE when the key is absent */
	unsigned interval_ms;     /* default 2000 */
	unsigned timeout_ms;      /* default 5000, > 0 */
	unsigned healthy_threshold;   /* default 3 */
	unsigned unhealthy_threshold; /* default 3 */
	unsigned port;            /* 0 = each member's own port */
	bool unknown_is_up;       /* default true: serve until the first verdict */
	bool cut_on_unhealthy;    /* default false: established connections stay */
	unsigned slow_start_s;    /* 0 = off */
	/* http only; fixed arrays so copies of the config need no ownership. */
	char method[KG_HEALTH_METHOD_MAX];  /* default "GET" */
	char path[KG_HEALTH_PATH_MAX];      /* default "/" */
	char host[KG_HEALTH_HOST_MAX];      /* "" = the member's address */
	uint64_t expected_status[(KG_HTTP_STATUS_BITS + 63) / 64]; /* default 2xx,3xx */
};

/* A backend group: members, their scheduler and their health checks.
 * Named groups are the document's "backend_groups" (the cloud consoles'
 * server groups), shared by the listeners that name them; a listener's
 * inline "backends" are its own unnamed group. */
struct kg_group_conf {
	char name[KG_NAME_MAX + 1]; /* "" for a listener's inline backends */
	enum kg_scheduler scheduler;
	struct kg_backend_conf *backends;
	size_t n_backends; /* >= 1 for a group in use */
	struct kg_health_conf health_check;
};

/* Same members (address and weight, in order), scheduler and checks:
 * the administrative states (drained, disabled) are not compared, they
 * change the running group in place. */
bool kg_group_conf_same(const struct kg_group_conf *a, const struct kg_group_conf *b);

/* True when code (100-599) is in the expected set. */
bool kg_health_status_expected(const struct kg_health_conf *h, unsigned code);

/* Identity headers: the one table of what kgate tells backends about the
 * client, shared by the config ("http.headers" names these), the code that
 * sets them and the code that removes the client's copies (http.c).
 *
 * A client's header is removed when its name equals one of these names or
 * starts with one of the reserved prefixes, compared case-insensitively
 * with '_' equal to '-': WSGI, CGI, PHP and Rack servers turn both into
 * the same variable (HTTP_X_FORWARDED_FOR), so a variant would reach the
 * backend as kgate's own header. Removal happens whether kgate adds the
 * header or not.
 *
 * X(id, name, on by default) */
#define KG_IDENT_HEADERS(X)                                                                  \
	X(X_FORWARDED_FOR, "X-Forwarded-For", true)                                          \
	X(X_FORWARDED_PROTO, "X-Forwarded-Proto", true)                                      \
	X(X_FORWARDED_PORT, "X-Forwarded-Port", true)                                        \
	X(XFCC_SUBJECTDN, "X-Forwarded-Clientcert-subjectdn", true)                          \
	X(XFCC_ISSUERDN, "X-Forwarded-Clientcert-issuerdn", true)                            \
	X(XFCC_FINGERPRINT, "X-Forwarded-Clientcert-fingerprint", true)                      \
	X(XFCC_CLIENTVERIFY, "X-Forwarded-Clientcert-clientverify", true)                    \
	X(CLIENT_CERT, "Client-Cert", true)              /* RFC 9440 */                      \
	X(CLIENT_CERT_CHAIN, "Client-Cert-Chain", false) /* RFC 9440 */                      \
	X(FORWARDED, "Forwarded", false)                 /* RFC 7239: for, proto, by */      \
	X(X_REAL_IP, "X-Real-IP", false)

/* Name prefixes reserved for kgate beyond the names above: a backend that
 * reads a field kgate does not set (a serial, a SAN) must not get the
 * client's value. */
#define KG_RESERVED_HEADER_PREFIXES(X) X("X-Forwarded-") X("Client-Cert")

enum kg_ident_header {
#define KG_IDENT_ENUM(id, name, on) KG_HDR_##id,
	KG_IDENT_HEADERS(KG_IDENT_ENUM)
#undef KG_IDENT_ENUM
	KG_HDR_COUNT,
};
extern const char *const kg_ident_header_names[KG_HDR_COUNT];
extern const char *const kg_reserved_header_prefixes[];
/* Bits of the headers on by default (kg_http_conf.headers). */
extern const unsigned kg_ident_headers_default;

/* "underscores_in_headers": what an https listener does with a request
 * header whose name has an underscore (NGINX underscores_in_headers,
 * Envoy headers_with_underscores_action). Reserved names are removed in
 * any case. */
enum kg_underscores {
	KG_UNDERSCORES_DROP,   /* removed and counted (default) */
	KG_UNDERSCORES_REJECT, /* the request is answered 400 */
	KG_UNDERSCORES_ALLOW,  /* passed to the backend */
};

/* One "trusted_proxies" entry: an address and prefix length. */
struct kg_cidr {
	sa_family_t family; /* AF_INET or AF_INET6 */
	uint8_t bits;
	uint8_t addr[16];   /* network byte order; 4 bytes for AF_INET */
};

#define KG_MAX_TRUSTED_PROXIES 64

/* True when addr (an IPv4-mapped IPv6 address counts as IPv4) lies in one
 * of the n entries. */
bool kg_cidr_match(const struct kg_cidr *list, size_t n, const struct sockaddr_storage *addr);

enum kg_fingerprint { KG_FP_SHA1, KG_FP_SHA256 };

/* The "http" object of an https listener. */
struct kg_http_conf {
	unsigned headers;              /* bit per kg_ident_header; default kg_ident_headers_default */
	enum kg_underscores underscores; /* "underscores_in_headers", default drop */
	/* Sources whose X-Forwarded-For (and Forwarded, when kgate sets it) is
	 * appended to instead of replaced: proxies in front of kgate. */
	struct kg_cidr trusted_proxies[KG_MAX_TRUSTED_PROXIES];
	size_t n_trusted_proxies;
	enum kg_fingerprint fingerprint; /* default sha1, as the cloud consoles */
	bool access_log;               /* default false */
	unsigned access_log_sample;    /* log 1 request in N; default 1 */
	unsigned max_header_bytes;     /* request/response head; default 16384 (431 beyond) */
	unsigned max_headers;          /* header fields; default 100 (431 beyond) */
	unsigned request_timeout_ms;   /* first byte to end of head; default 10000 (408) */
	unsigned keepalive_timeout_ms; /* idle between requests; default 60000 */
	unsigned response_timeout_ms;  /* request sent to response head, and between bytes; default 60000 (504) */
	unsigned pool_max_idle;        /* idle backend connections per member and worker; default 64 */
	unsigned pool_idle_timeout_ms; /* default 10000 */
};

/* A listener; the keys, ranges and defaults of its settings are the table
 * of include/kgate/listener_keys.h, and each key of an F row there is a
 * member of the same name here. */
struct kg_access;
struct kg_sni_conf;

/* Digest of a client policy (kg_listener_conf.client_policy). */
#define KG_POLICY_MD_LEN 32
struct kg_routes;

struct kg_listener_conf {
	char name[KG_NAME_MAX + 1];
	enum kg_protocol protocol;
	struct sockaddr_storage bind; /* bind address with port set */
	socklen_t bind_len;
	const struct kg_cert_conf *certificate; /* server cert; NULL for tcp */
	const struct kg_cert_conf *ca;          /* NULL when absent */
	enum kg_mutual_auth mutual_auth; /* default required when ca is set, else off */
	unsigned verify_depth;
	enum kg_scheduler scheduler;
	enum kg_forwarding forwarding;
	enum kg_proxy_protocol proxy_protocol; /* tcp and tls only */
	/* The inline "backends" and "health_check" (own.n_backends 0 when the
	 * listener names a group instead). */
	struct kg_group_conf own;
	const struct kg_group_conf *backend_group; /* "backend_group"; NULL when absent */
	const struct kg_group_conf *default_group; /* "default_group" (https); NULL when absent */
	struct kg_routes *routes;                  /* "routes" (https); NULL when absent */
	/* Where a connection (tcp, tls) or a request no route matched (https)
	 * goes: &own, backend_group or default_group; NULL only on an https
	 * listener with routes and neither (404). */
	const struct kg_group_conf *group;
	unsigned handshake_timeout_ms;
	unsigned idle_timeout_ms;
	unsigned connect_timeout_ms;
	/* https: a WebSocket tunnel (forward_http.c) closes after this long
	 * with no byte either way, and this long after it opened (0: never). */
	unsigned tunnel_idle_timeout_ms;
	unsigned tunnel_max_lifetime_s;
	unsigned max_connections;      /* per worker */
	unsigned connect_retries;      /* extra members tried after a failed connect */
	unsigned tls_session_cache;    /* sessions kept for resumption (id or stateful ticket);
					* 0 = no resumption */
	enum kg_session_tickets tls_session_tickets; /* stateless (ticket keys) or stateful (cache) */
	struct kg_access *access_rules; /* access.h; NULL: none (access_default decides) */
	enum kg_access_action access_default;           /* default allow */
	enum kg_access_response access_denied_response; /* https only; default alert */
	enum kg_ocsp_mode ocsp;        /* client certificates' OCSP check; default off */
	char *ocsp_url;                /* responder instead of the AIA's (ocsp.h); NULL: none */
	unsigned ocsp_timeout_ms;
	bool ocsp_stapling;            /* staple the server certificate's OCSP response (staple.h) */
	bool enabled;                  /* false = stopped (kgatectl listener stop) */
	bool h2;                       /* https: ALPN offers h2 (forward_h2.c); default true */
	unsigned h2_max_streams;       /* https: concurrent HTTP/2 streams per connection */
	enum kg_backend_protocol backend_protocol; /* https: HTTP/1.1 or h2 (h2c) to backends */
	struct kg_http_conf http;      /* protocol https only */
	struct kg_sni_conf *sni;       /* "sni" entries (tls, https); NULL: none */
	size_t n_sni;
	bool strict_sni;               /* refuse a ClientHello no entry serves */
	/* 0 for a listener; i + 1 for the settings of its sni[i] entry. */
	unsigned sni_index;
	/* What decides which clients get in: CA, mutual_auth, verify_depth,
	 * access rules, access_default and access_denied_response, digested
	 * (SHA-256) so that equal digests decide alike. An https request for
	 * a Host under another policy than its connection's gets 421. */
	unsigned char client_policy[KG_POLICY_MD_LEN];
};

/* One "sni" entry of a tls/https listener. */
struct kg_sni_conf {
	char **names;   /* lower case, checked (sni.h): "api.example.com", "*.example.org" */
	size_t n_names;
	/* The entry's TLS settings, as a listener's for tls.c: a copy of the
	 * listener's with the entry's certificate, and its own ca,
	 * mutual_auth and access rules when it has any of them (else the
	 * listener's). It has no backends, sni entries or http object of its
	 * own; it lives as long as the listener. */
	struct kg_listener_conf *tls;
	bool own_policy; /* tls->access_rules are the entry's (else the listener's) */
};

/* The rows of KG_LISTENER_KEYS, indexed by KG_LK_<key>. */
extern const struct kg_listener_key kg_listener_keys[KG_LK_COUNT];
/* The row of a JSON key, or NULL. */
const struct kg_listener_key *kg_listener_key_find(const char *key);
/* The value of an F row's member (kg_listener_keys[id].field): the
 * number, enum value or bool. */
unsigned kg_listener_key_value(const struct kg_listener_conf *l, enum kg_listener_key_id id);

/* settings.accept_steering: how new connections are spread over the
 * workers (steer.h); chosen at start. */
enum kg_accept_steering {
	KG_ACCEPT_STEERING_AUTO,      /* the BPF program where it loads, else userspace */
	KG_ACCEPT_STEERING_BPF,       /* the BPF program, or the start fails */
	KG_ACCEPT_STEERING_USERSPACE, /* the accepting worker hands over (accept_balance.h) */
};

struct kg_config {
	struct kg_cert_conf *certs;
	size_t n_certs;
	struct kg_group_conf *groups; /* "backend_groups", in the document's order */
	size_t n_groups;
	struct kg_listener_conf *listeners;
	size_t n_listeners;
	unsigned workers;          /* "settings.workers"; 0 = one per core */
	unsigned drain_timeout_ms; /* "settings.drain_timeout_ms"; default 10000 */
	unsigned withdraw_delay_ms; /* "settings.withdraw_delay_ms"; default 0 */
	char *log_level;           /* "settings.log_level"; NULL = default */
	unsigned ticket_key_rotation_s; /* "settings.ticket_key_rotation_s"; ticket_keys.h */
	enum kg_accept_steering accept_steering; /* "settings.accept_steering"; default auto */
};

/* Parses JSON text. Relative file paths resolve against base_dir (the
 * config file's folder). Returns NULL and fills err on any error. */
struct kg_config *kg_config_parse(const char *json_text, const char *base_dir,
				  char *err, size_t errlen);
/* The same schema for the daemon's state document (state.c): a state may
 * hold no listeners yet ("listeners" absent or empty). */
struct kg_config *kg_config_parse_state(const char *json_text, const char *base_dir,
					char *err, size_t errlen);
/* A parsed state document shared by what is built from it (listener
 * snapshots and backend groups, runtime.h and group.h): freed with the
 * last reference. */
struct kg_config_ref {
	atomic_uint refs;
	struct kg_config *cfg;
};
/* Takes cfg (freed with the last reference); NULL on ENOMEM. */
struct kg_config_ref *kg_config_ref_new(struct kg_config *cfg);
/* Tolerates NULL. */
void kg_config_ref_put(struct kg_config_ref *r);

/* Reads and parses a file; base_dir is the file's folder. */
struct kg_config *kg_config_load(const char *path, char *err, size_t errlen);
void kg_config_free(struct kg_config *cfg);
/* A whole regular file (at most 16 MiB), NUL-terminated, in *out (free it).
 * 0, or -errno (-EINVAL: not a regular file, -EFBIG: too large). */
int kg_read_file(const char *path, char **out);

/* Certificate names (the schema's rule, as the cloud console's): 1-80
 * characters of letters, digits, - / . _ *. 1 when valid, 0 otherwise. */
int kg_cert_name_valid(const char *name);

const struct kg_cert_conf *kg_config_find_cert(const struct kg_config *cfg,
					       const char *name);
/* The sni entry of l that serves name[0..len) (as a client sent it, any
 * case, not NUL-terminated; sni.h kg_sni_match): an exact name first,
 * whatever the order of the entries, then the first entry with a
 * matching wildcard. -1 when none does. */
int kg_config_sni_find(const struct kg_listener_conf *l, const char *name, size_t len);
const struct kg_group_conf *kg_config_find_group(const struct kg_config *cfg, const char *name);
/* Whether the listener sends anything to g (backend_group, default_group
 * or a route's group); *how names the first key that does ("backend_group",
 * "default_group", "routes[2]"). */
bool kg_listener_uses_group(const struct kg_listener_conf *l, const struct kg_group_conf *g,
			    char *how, size_t howlen);
/* "127.0.0.1:80", "[::1]:80" → sockaddr; 0 or -EINVAL. */
int kg_parse_hostport(const char *text, struct sockaddr_storage *out,
		      socklen_t *outlen);
/* Same family, address and port. */
bool kg_sockaddr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

#endif
