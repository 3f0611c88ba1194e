/* The keys of a listener: one table for every place that names them.
 *
 * Each row of KG_LISTENER_KEYS is one key of a kgate.json listener object.
 * From it come config.c's list of known keys, its defaults and its
 * parsing of the scalar keys (bounds, enum names) and the refusal of keys
 * that do not belong to the listener's protocol; control_ops.c's keys that
 * `listener update` may change and the settings `listener show` prints;
 * and kgatectl's listener options, usage lines and --help. test_config
 * checks the table against itself, against `kgatectl listener create
 * --help` and against the man pages, which are written by hand.
 *
 * KG_LISTENER_KEYS(F, H) calls F for the keys config.c parses from the
 * table alone (struct kg_listener_conf has a member of the key's name) and
 * H for the keys with hand-written parsing in config.c (references
 * between objects, defaults that depend on other keys, addresses, nested
 * objects). Both take the same columns:
 *
 *   X(key, kind, for, flags, option, metavar, help)
 *   key      the JSON key, a C identifier: KG_LK_<key> is its row
 *   kind     KG_LK_UINT(min, max, default), KG_LK_ENUM(names, default),
 *            KG_LK_BOOL(default), KG_LK_STRING, KG_LK_OBJECT, KG_LK_ARRAY,
 *            KG_LK_LIST (an array kgatectl takes as one JSON value)
 *   for      KG_LK_FOR_ALL, or KG_LK_FOR(protocol bits, message): the key
 *            is refused on other protocols with "<path>: <message>"
 *   flags    KG_LKF_* below
 *   option   kgatectl's option, without "--"; NULL for none
 *   metavar  its value in usage lines; NULL: an enum's names, "a|b|c"
 *   help     one phrase for `kgatectl listener create --help`; ranges,
 *            defaults and protocols are added from the other columns
 *
 * The nested "health_check" and "http" objects are one row each here;
 * their own keys are parsed by parse_health and parse_http in config.c. */
#ifndef KGATE_LISTENER_KEYS_H
#define KGATE_LISTENER_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#include <kgate/limits.h>

/* Enumerated values, X(suffix, name): a name's position is its C value,
 * so the enums below and the names the table parses cannot disagree. */
#define KG_PROTOCOLS(X) X(TLS, "tls") X(TCP, "tcp") X(HTTPS, "https")
#define KG_MUTUAL_AUTHS(X) X(OFF, "off") X(OPTIONAL, "optional") X(REQUIRED, "required")
#define KG_SCHEDULERS(X) X(RR, "rr")
#define KG_FORWARDINGS(X) X(AUTO, "auto") X(SOCKMAP, "sockmap") X(SPLICE, "splice")                \
	X(USERSPACE, "userspace")
/* "proxy_protocol": what a tcp/tls listener writes to the backend before
 * the client's bytes (proxy_v2.h); https listeners refuse it. */
#define KG_PROXY_PROTOCOLS(X) X(NONE, "none") X(V2, "v2")
/* "tls_session_tickets": what a TLS session ticket holds. stateless: the
 * whole session, encrypted with the process's ticket keys
 * (dataplane/ticket_keys.h), so resumption survives restarts, upgrades and
 * listener changes; stateful: an id into the listener's own cache. */
#define KG_SESSION_TICKETS(X) X(STATELESS, "stateless") X(STATEFUL, "stateful")
/* "access_default" and a rule's "action" (dataplane/access.h). */
#define KG_ACCESS_ACTIONS(X) X(ALLOW, "allow") X(DENY, "deny")
/* "access_denied_response": how an https listener refuses a certificate
 * the rules deny: the handshake fails, or every request gets 403. */
#define KG_ACCESS_RESPONSES(X) X(ALERT, "alert") X(FORBIDDEN, "403")
/* "ocsp": whether client certificates are checked with their OCSP
 * responder (dataplane/ocsp.h), and what a responder that cannot answer
 * (unreachable, error, stale or badly signed answer) or that does not
 * know the certificate means: soft lets the client in, hard refuses it. */
#define KG_OCSP_MODES(X) X(OFF, "off") X(SOFT, "soft") X(HARD, "hard")
/* "backend_protocol": what an https listener speaks to its backends:
 * HTTP/1.1 through the keep-alive pool, or HTTP/2 (h2c, prior knowledge)
 * with each client stream a stream on a multiplexed backend connection
 * (forward_h2.c, h2_client.h), which gRPC needs. */
#define KG_BACKEND_PROTOCOLS(X) X(HTTP1, "http/1.1") X(H2, "h2")

#define KG_LK_ENUM_PROTO(id, name) KG_PROTO_##id,
#define KG_LK_ENUM_MTLS(id, name) KG_MTLS_##id,
#define KG_LK_ENUM_SCHED(id, name) KG_SCHED_##id,
#define KG_LK_ENUM_FWD(id, name) KG_FWD_##id,
#define KG_LK_ENUM_PP(id, name) KG_PP_##id,
#define KG_LK_ENUM_TICKETS(id, name) KG_TICKETS_##id,
#define KG_LK_ENUM_ACCESS(id, name) KG_ACCESS_##id,
#define KG_LK_ENUM_DENIED(id, name) KG_DENIED_##id,
#define KG_LK_ENUM_OCSP(id, name) KG_OCSP_##id,
#define KG_LK_ENUM_BP(id, name) KG_BP_##id,
enum kg_protocol { KG_PROTOCOLS(KG_LK_ENUM_PROTO) };
enum kg_mutual_auth { KG_MUTUAL_AUTHS(KG_LK_ENUM_MTLS) };
enum kg_scheduler { KG_SCHEDULERS(KG_LK_ENUM_SCHED) };
enum kg_forwarding { KG_FORWARDINGS(KG_LK_ENUM_FWD) };
enum kg_proxy_protocol { KG_PROXY_PROTOCOLS(KG_LK_ENUM_PP) };
enum kg_session_tickets { KG_SESSION_TICKETS(KG_LK_ENUM_TICKETS) };
enum kg_access_action { KG_ACCESS_ACTIONS(KG_LK_ENUM_ACCESS) };
enum kg_access_response { KG_ACCESS_RESPONSES(KG_LK_ENUM_DENIED) };
enum kg_ocsp_mode { KG_OCSP_MODES(KG_LK_ENUM_OCSP) };
enum kg_backend_protocol { KG_BACKEND_PROTOCOLS(KG_LK_ENUM_BP) };

/* The one default of tls_session_tickets (bench/results/, the "tickets" run,
 * measures both modes). */
#define KG_SESSION_TICKETS_DEFAULT KG_TICKETS_STATELESS

#define KG_PROTO_BIT(id) (1u << KG_PROTO_##id)
#define KG_PROTOS_ALL (KG_PROTO_BIT(TLS) | KG_PROTO_BIT(TCP) | KG_PROTO_BIT(HTTPS))
#define KG_PROTOS_TLS (KG_PROTO_BIT(TLS) | KG_PROTO_BIT(HTTPS))

/* kgatectl listener create's --bind when none is given (the document
 * itself requires "bind"). */
#define KG_CTL_DEFAULT_BIND "0.0.0.0"

#define KG_LK_STR_(x) #x
#define KG_LK_STR(x) KG_LK_STR_(x)

/* Refusals of keys for protocols they do not belong to. */
#define KG_LK_NO_TLS "not allowed with protocol \"tcp\" (no TLS)"
#define KG_LK_ONLY_HTTPS_ROUTES "only for protocol \"https\" (routes choose per request; a " \
	"tcp or tls listener sends each connection to its backends or backend_group)"

#define KG_LISTENER_KEYS(F, H)                                                                     \
	H(name, KG_LK_STRING, KG_LK_FOR_ALL, KG_LKF_REQUIRED | KG_LKF_OPTION_REQUIRED, "name",     \
	  "NAME", "letters, digits or - / . _ *, unique")                                          \
	H(protocol, KG_LK_ENUM(KG_PROTOCOLS, KG_PROTO_TLS), KG_LK_FOR_ALL,                         \
	  KG_LKF_REQUIRED | KG_LKF_OPTION_REQUIRED | KG_LKF_NO_DEFAULT, "protocol", NULL,          \
	  "tls: TLS, balanced per connection; https: balanced per request; tcp: no TLS")           \
	H(port, KG_LK_UINT(0, 65535, 0), KG_LK_FOR_ALL,                                            \
	  KG_LKF_REQUIRED | KG_LKF_OPTION_REQUIRED | KG_LKF_NO_DEFAULT, "port", "N",               \
	  "0 lets the kernel choose")                                                              \
	H(bind, KG_LK_STRING, KG_LK_FOR_ALL, KG_LKF_REQUIRED, "bind", "ADDR",                      \
	  "an IPv4 or IPv6 address literal; kgatectl's default " KG_CTL_DEFAULT_BIND)              \
	H(certificate, KG_LK_STRING, KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS), KG_LKF_UPDATE,        \
	  "cert", "NAME", "the server certificate (kgatectl cert upload), which they need")        \
	H(ca, KG_LK_STRING, KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),                                \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "ca", "NAME",                                       \
	  "a ca certificate that client certificates must chain to")                               \
	H(mutual_auth, KG_LK_ENUM(KG_MUTUAL_AUTHS, KG_MTLS_OFF),                                   \
	  KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS), KG_LKF_UPDATE | KG_LKF_NO_DEFAULT,               \
	  "mutual-auth", NULL, "client certificates; default required with a ca, else off")        \
	F(verify_depth, KG_LK_UINT(1, 16, 4), KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),              \
	  KG_LKF_UPDATE, "verify-depth", "N", "longest client certificate chain")                  \
	F(handshake_timeout_ms, KG_LK_UINT(1, 3600000, 10000),                                     \
	  KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS), KG_LKF_UPDATE, "handshake-timeout-ms", "N",      \
	  "time a client has for the TLS handshake")                                               \
	F(tls_session_cache,                                                                       \
	  KG_LK_UINT(0, KG_TLS_SESSION_CACHE_MAX, KG_TLS_SESSION_CACHE_DEFAULT),                   \
	  KG_LK_FOR(KG_PROTOS_TLS, "is for protocol \"tls\" and \"https\"; a tcp listener has no " \
		    "TLS sessions"),                                                               \
	  KG_LKF_UPDATE, "tls-session-cache", "N",                                                 \
	  "TLS sessions kept for resumption (about 11 KiB each) when stateful; 0 turns "           \
	  "resumption off")                                                                        \
	F(tls_session_tickets, KG_LK_ENUM(KG_SESSION_TICKETS, KG_SESSION_TICKETS_DEFAULT),         \
	  KG_LK_FOR(KG_PROTOS_TLS, "is for protocol \"tls\" and \"https\"; a tcp listener has "  \
		    "no TLS sessions"),                                                            \
	  KG_LKF_UPDATE, "tls-session-tickets", NULL,                                              \
	  "stateless: tickets under the state dir's ticket keys, resumption survives restarts; "  \
	  "stateful: sessions in the listener's cache")                                            \
	H(access_rules, KG_LK_LIST, KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),                         \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "access-rules", "JSON",                             \
	  "client certificate rules, first match wins, e.g. '[{\"name\": \"ops\", \"action\": "    \
	  "\"allow\", \"match\": {\"ou\": \"ops\"}}]'; needs mutual-auth required")                  \
	F(access_default, KG_LK_ENUM(KG_ACCESS_ACTIONS, KG_ACCESS_ALLOW),                          \
	  KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS), KG_LKF_UPDATE, "access-default", NULL,           \
	  "the action for a client certificate no access rule matches")                            \
	F(access_denied_response, KG_LK_ENUM(KG_ACCESS_RESPONSES, KG_DENIED_ALERT),                \
	  KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\""), KG_LKF_UPDATE,             \
	  "access-denied-response", NULL,                                                          \
	  "alert: a denied certificate fails the handshake; 403: each request gets 403")           \
	H(sni, KG_LK_LIST, KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),                                  \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "sni", "JSON",                                      \
	  "certificates and client policies by server name, e.g. '[{\"names\": "                   \
	  "[\"api.example.com\", \"*.example.org\"], \"certificate\": \"api\", \"ca\": "          \
	  "\"partners\"}]'")                                                                       \
	F(strict_sni, KG_LK_BOOL(false), KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS), KG_LKF_UPDATE,    \
	  "strict-sni", "true|false",                                                              \
	  "true: a ClientHello without a server name, or with one no sni entry has, is refused "  \
	  "(unrecognized_name); default false: the listener's certificate serves it")              \
	F(ocsp, KG_LK_ENUM(KG_OCSP_MODES, KG_OCSP_OFF), KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),    \
	  KG_LKF_UPDATE, "ocsp", NULL,                                                             \
	  "check client certificates with their OCSP responder; soft: a responder that cannot "   \
	  "answer lets the client in, hard: refuses it; needs mutual-auth")                        \
	H(ocsp_url, KG_LK_STRING, KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),                          \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "ocsp-url", "URL",                                  \
	  "the OCSP responder, http://ADDRESS[:PORT]/PATH with an IP address, instead of the "    \
	  "one each certificate names (AIA)")                                                      \
	F(ocsp_timeout_ms, KG_LK_UINT(1, 60000, 3000), KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS),     \
	  KG_LKF_UPDATE, "ocsp-timeout-ms", "N",                                                   \
	  "time an OCSP query has for its answer (connect, send, receive)")                        \
	F(ocsp_stapling, KG_LK_BOOL(false), KG_LK_FOR(KG_PROTOS_TLS, KG_LK_NO_TLS), KG_LKF_UPDATE, \
	  "ocsp-stapling", "true|false",                                                           \
	  "staple the server certificate's OCSP response (from the responder its AIA names, "     \
	  "refreshed before it expires)")                                                          \
	F(h2, KG_LK_BOOL(true), KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\""),     \
	  KG_LKF_UPDATE, "h2", "true|false",                                                       \
	  "offer HTTP/2 (ALPN h2) next to http/1.1; false: HTTP/1.1 only")                         \
	F(h2_max_streams, KG_LK_UINT(1, 1000, KG_H2_MAX_STREAMS_DEFAULT),                          \
	  KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\""), KG_LKF_UPDATE,          \
	  "h2-max-streams", "N", "concurrent HTTP/2 streams a client may open per connection")    \
	F(backend_protocol, KG_LK_ENUM(KG_BACKEND_PROTOCOLS, KG_BP_HTTP1),                         \
	  KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\""), KG_LKF_UPDATE,          \
	  "backend-protocol", NULL,                                                                \
	  "h2: each HTTP/2 stream goes to backends as an HTTP/2 stream (cleartext, prior "         \
	  "knowledge; gRPC), needs h2 true; HTTP/1.1 clients get 505")                             \
	F(scheduler, KG_LK_ENUM(KG_SCHEDULERS, KG_SCHED_RR), KG_LK_FOR_ALL, KG_LKF_UPDATE,         \
	  "scheduler", NULL, "smooth weighted round robin over the member weights (kgatectl "      \
	  "also takes wrr)")                                                                       \
	F(forwarding, KG_LK_ENUM(KG_FORWARDINGS, KG_FWD_AUTO), KG_LK_FOR_ALL, KG_LKF_UPDATE,       \
	  "forwarding", NULL, "the data path; one the kernel cannot run is refused")               \
	F(proxy_protocol, KG_LK_ENUM(KG_PROXY_PROTOCOLS, KG_PP_NONE), KG_LK_FOR_ALL,               \
	  KG_LKF_UPDATE, "proxy-protocol", NULL,                                                   \
	  "tcp and tls listeners: v2 sends the backend a PROXY protocol v2 header first")          \
	F(idle_timeout_ms, KG_LK_UINT(1, 86400000, 300000), KG_LK_FOR_ALL, KG_LKF_UPDATE,          \
	  "idle-timeout-ms", "N", "a connection without traffic for this long is closed")          \
	F(tunnel_idle_timeout_ms, KG_LK_UINT(1, 86400000, 3600000),                               \
	  KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\" (WebSocket tunnels)"),       \
	  KG_LKF_UPDATE, "tunnel-idle-timeout-ms", "N",                                           \
	  "a WebSocket tunnel with no byte either way for this long is closed")                  \
	F(tunnel_max_lifetime_s, KG_LK_UINT(0, 2592000, 0),                                       \
	  KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\" (WebSocket tunnels)"),       \
	  KG_LKF_UPDATE, "tunnel-max-lifetime-s", "N",                                            \
	  "a WebSocket tunnel is closed this long after it opened; 0: no limit")                 \
	F(connect_timeout_ms, KG_LK_UINT(1, 600000, 3000), KG_LK_FOR_ALL, KG_LKF_UPDATE,           \
	  "connect-timeout-ms", "N", "backend connect timeout")                                    \
	F(max_connections, KG_LK_UINT(1, KG_MAX_CONNS_PER_WORKER, 10000), KG_LK_FOR_ALL,           \
	  KG_LKF_UPDATE, "max-connections", "N", "open connections per worker")                    \
	F(connect_retries, KG_LK_UINT(0, KG_MAX_BACKENDS - 1, 2), KG_LK_FOR_ALL, KG_LKF_UPDATE,    \
	  "connect-retries", "N", "further members tried after a failed backend connect")          \
	H(health_check, KG_LK_OBJECT, KG_LK_FOR_ALL, KG_LKF_UPDATE | KG_LKF_NONE_REMOVES,          \
	  "health-check", "JSON",                                                                  \
	  "the health_check object, e.g. '{\"type\": \"tcp\", \"interval_ms\": 2000}'")            \
	H(http, KG_LK_OBJECT, KG_LK_FOR(KG_PROTO_BIT(HTTPS), "only for protocol \"https\""),       \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "http", "JSON",                                     \
	  "the http object, e.g. '{\"access_log\": \"on\"}'")                                      \
	H(backends, KG_LK_ARRAY, KG_LK_FOR_ALL, 0, "backend", "HOST:PORT[,weight=W]",              \
	  "a member, once per member (1-" KG_LK_STR(KG_MAX_BACKENDS) "); the listener's own "     \
	  "group, or name one with backend-group")                                                \
	H(backend_group, KG_LK_STRING, KG_LK_FOR_ALL, KG_LKF_UPDATE | KG_LKF_NONE_REMOVES,        \
	  "backend-group", "NAME",                                                                 \
	  "a named backend group (kgatectl group create) instead of inline backends; update "     \
	  "replaces the inline ones")                                                              \
	H(routes, KG_LK_LIST, KG_LK_FOR(KG_PROTO_BIT(HTTPS), KG_LK_ONLY_HTTPS_ROUTES),             \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "routes", "JSON",                                   \
	  "routes to backend groups, first match wins, e.g. '[{\"name\": \"api\", \"match\": "    \
	  "{\"path_prefix\": \"/v1/\"}, \"group\": \"api\"}]'")                                      \
	H(default_group, KG_LK_STRING, KG_LK_FOR(KG_PROTO_BIT(HTTPS), KG_LK_ONLY_HTTPS_ROUTES),    \
	  KG_LKF_UPDATE | KG_LKF_NONE_REMOVES, "default-group", "NAME",                            \
	  "the backend group of requests no route matches (without one, and without backends "    \
	  "or backend-group: 404)")                                                                \
	F(enabled, KG_LK_BOOL(true), KG_LK_FOR_ALL, 0, NULL, NULL,                                 \
	  "false: stopped (kgatectl listener stop and start)")

/* Flags of a row. */
enum {
	KG_LKF_REQUIRED = 1u << 0,        /* the document must have the key */
	KG_LKF_OPTION_REQUIRED = 1u << 1, /* kgatectl listener create needs the option */
	KG_LKF_UPDATE = 1u << 2,          /* `listener update` may change it */
	KG_LKF_NONE_REMOVES = 1u << 3,    /* kgatectl's value "none" removes the key */
	KG_LKF_NO_DEFAULT = 1u << 4,      /* no fixed default (required, or the help says) */
};

enum kg_key_type {
	KG_KEY_UINT,   /* an integer from min to max */
	KG_KEY_ENUM,   /* a string from names; its index is the C value */
	KG_KEY_BOOL,
	KG_KEY_STRING, /* non-empty */
	KG_KEY_OBJECT,
	KG_KEY_ARRAY,  /* kgatectl: an option given once per element */
	KG_KEY_LIST,   /* an array; kgatectl: the whole array as one JSON option */
};

struct kg_listener_key {
	const char *key;
	enum kg_key_type type;
	bool field;               /* F row: a member of kg_listener_conf, parsed from the table */
	unsigned min, max;        /* KG_KEY_UINT */
	unsigned def;             /* default value, enum index or bool */
	const char *const *names; /* KG_KEY_ENUM: NULL-terminated */
	unsigned protocols;       /* KG_PROTO_BIT()s the key is for */
	const char *refusal;      /* message for the other protocols */
	unsigned flags;           /* KG_LKF_* */
	const char *option;
	const char *metavar;
	const char *help;
};

#define KG_LK_ID(key, ...) KG_LK_##key,
enum kg_listener_key_id { KG_LISTENER_KEYS(KG_LK_ID, KG_LK_ID) KG_LK_COUNT };

/* The kind and for columns, as designated initializers of a row. */
#define KG_LK_NAME(id, name) name,
#define KG_LK_UINT(lo, hi, d) .type = KG_KEY_UINT, .min = (lo), .max = (hi), .def = (d)
#define KG_LK_ENUM(list, d) \
	.type = KG_KEY_ENUM, .names = (const char *const[]){list(KG_LK_NAME) NULL}, .def = (d)
#define KG_LK_BOOL(d) .type = KG_KEY_BOOL, .def = (d)
#define KG_LK_STRING .type = KG_KEY_STRING
#define KG_LK_OBJECT .type = KG_KEY_OBJECT
#define KG_LK_ARRAY .type = KG_KEY_ARRAY
#define KG_LK_LIST .type = KG_KEY_LIST
#define KG_LK_FOR_ALL .protocols = KG_PROTOS_ALL
#define KG_LK_FOR(bits, message) .protocols = (bits), .refusal = (message)

#define KG_LK_COLUMNS(key_, flags_, option_, metavar_, help_)                               \
	.key = #key_, .flags = (flags_), .option = (option_), .metavar = (metavar_), .help = (help_)
#define KG_LK_FIELD_ROW(key_, kind, for_, flags_, option_, metavar_, help_) \
	[KG_LK_##key_] = {KG_LK_COLUMNS(key_, flags_, option_, metavar_, help_), kind, for_, \
			  .field = true},
#define KG_LK_HAND_ROW(key_, kind, for_, flags_, option_, metavar_, help_) \
	[KG_LK_##key_] = {KG_LK_COLUMNS(key_, flags_, option_, metavar_, help_), kind, for_},
/* The table as an array initializer (file scope: the enum names are
 * compound literals):
 *   static const struct kg_listener_key keys[KG_LK_COUNT] = KG_LISTENER_KEY_TABLE; */
#define KG_LISTENER_KEY_TABLE {KG_LISTENER_KEYS(KG_LK_FIELD_ROW, KG_LK_HAND_ROW)}

#endif
