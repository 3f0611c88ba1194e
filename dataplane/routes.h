/* Routes of an https listener (kgate.json(5) "routes"): an ordered list of
 * named routes, each sending the requests it matches to a backend group.
 * A route matches on the request's Host (exact, or "*.example.com" for
 * any name below example.com), its path (a byte prefix), its method (one
 * or a list) and the client certificate (the matchers of access rules,
 * access.h); every matcher given must match, the first matching route
 * wins, and the listener's default group (or a 404) takes the rest.
 *
 * Parsed once per document (config.c, which also checks that each route's
 * group exists), evaluated once per request (forward_http.c). The
 * certificate part is evaluated once per connection (kg_routes_cert_bits)
 * since the certificate cannot change under it. */
#ifndef KGATE_ROUTES_H
#define KGATE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

struct json_object;

/* Bounds a listener's routes: each request walks them, and a connection's
 * certificate results are one bit per route. */
#define KG_ROUTES_MAX 64
#define KG_ROUTE_METHODS_MAX 16
#define KG_ROUTE_HOST_MAX 253
#define KG_ROUTE_PATH_MAX 1024
/* The route names reported when no route matched: the request went to
 * the default group, or there was none (404). */
#define KG_ROUTE_DEFAULT "(default)"
#define KG_ROUTE_NONE "(none)"

struct kg_routes;

/* What a route looks at in a request. host is the Host header's name
 * (any case, port and brackets allowed: they are stripped here); path
 * the request target (origin-form or absolute-form; the query is not
 * part of the path). NULL host: no Host header. */
struct kg_route_req {
	const char *host;
	size_t host_len;
	const char *target;
	size_t target_len;
	const char *method;
	uint64_t cert_bits; /* kg_routes_cert_bits for the connection */
};

/* Parses a JSON array of routes; path names it in messages
 * ("listeners[0].routes"). NULL with "<path>[i].match.host: reason" in
 * err on any error. */
struct kg_routes *kg_routes_parse(struct json_object *routes, const char *path, char *err,
				  size_t errlen);
/* Tolerates NULL. */
void kg_routes_free(struct kg_routes *r);
size_t kg_routes_count(const struct kg_routes *r);
/* Route i's name and group name (i < kg_routes_count). */
const char *kg_routes_name(const struct kg_routes *r, size_t i);
const char *kg_routes_group(const struct kg_routes *r, size_t i);

/* Bit i set when route i has no certificate matcher or its matcher
 * matches cert (NULL: no certificate, only routes without one match).
 * -ENOMEM leaves only the routes without a certificate matcher. */
uint64_t kg_routes_cert_bits(const struct kg_routes *r, X509 *cert);

/* The index of the first route that matches q, or -1. */
int kg_routes_match(const struct kg_routes *r, const struct kg_route_req *q);

/* Whether s ("api.example.com" or "*.example.com") is a valid host
 * matcher; *why says what is wrong. */
bool kg_route_host_valid(const char *s, const char **why);

#endif
