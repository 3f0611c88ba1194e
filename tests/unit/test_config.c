/* config.c: the schema's rules, table-driven. Documents are written with
 * single quotes for readability and turned into JSON before parsing. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "certgen.h"
#include "config.h"

#define CERTS                                                                  \
	"'certificates':{'web':{'type':'server','cert':'s.pem','key':'s.key'},"    \
	"'clients':{'type':'ca','cert':'ca.pem','crl':'/abs/ca.crl'}}"
/* One tls listener; extra keys go last so they override (json-c keeps the
 * last of duplicate keys). */
#define LISTENER(extra)                                                        \
	"{'name':'web','protocol':'tls','bind':'127.0.0.1','port':8443,"           \
	"'certificate':'web','backends':[{'address':'127.0.0.1:9001'}]" extra "}"
#define DOC(extra) "{" CERTS ",'listeners':[" LISTENER(extra) "]}"
#define DOC2(extra1, extra2) "{" CERTS ",'listeners':[" LISTENER(extra1) "," LISTENER(extra2) "]}"
#define BACKENDS(list) DOC(",'backends':[" list "]")
/* Groups api and web, and one https listener with extra keys (no inline
 * backends unless extra has them). */
#define GROUPS                                                                 \
	"'backend_groups':{'api':{'backends':[{'address':'127.0.0.1:9101'}]},"      \
	"'web':{'backends':[{'address':'127.0.0.1:9201'},{'address':'127.0.0.1:9202','weight':2}]," \
	"'health_check':{'type':'http','path':'/h'}}}"
#define GDOC(extra)                                                            \
	"{" CERTS "," GROUPS ",'listeners':[{'name':'web','protocol':'https','bind':'127.0.0.1',"  \
	"'port':8443,'certificate':'web'" extra "}]}"
#define ROUTE(match, group) "{'name':'r','match':{" match "},'group':'" group "'}"
#define RDOC(match) GDOC(",'backend_group':'web','routes':[" ROUTE(match, "api") "]")

static char *to_json(const char *doc)
{
	char *s = strdup(doc);
	cr_assert_not_null(s);
	for (char *c = s; *c; c++)
		if (*c == '\'')
			*c = '"';
	return s;
}

static struct kg_config *parse(const char *doc, char *err, size_t errlen)
{
	char *json = to_json(doc);
	struct kg_config *cfg = kg_config_parse(json, "/base", err, errlen);
	free(json);
	return cfg;
}

struct bad_case {
	const char *doc;
	const char *want; /* the message starts with the path, contains the reason */
};

static const struct bad_case bad[] = {
	/* syntax and top level */
	{"{", "invalid JSON at line 1, column 2"},
	{"{'settings':{}} x", "invalid JSON at line 1, column 17"},
	{"{'a':1,}", "invalid JSON"},
	{"", "invalid JSON"},
	{"[]", "(top level): expected an object, got an array"},
	{"{'listener':[]}", "listener: unknown key"},
	/* input echoed in a message stays one line: control characters become
	 * '?' (found by fuzz_config: a newline in a key split the message) */
	{"{'a\\nb\\u001b[2J':1}", "a?b?[2J: unknown key"},
	{"{'certificates':{}}", "listeners: is required"},
	{"{'listeners':{}}", "listeners: expected an array, got an object"},
	{"{'listeners':[]}", "listeners: at least one listener"},
	/* settings */
	{"{'settings':[]}", "settings: expected an object, got an array"},
	{"{'settings':{'workers':'2'}}", "settings.workers: expected an integer, got a string"},
	{"{'settings':{'workers':65}}", "settings.workers: must be 0-64"},
	{"{'settings':{'workers':-1}}", "settings.workers: must be 0-64"},
	{"{'settings':{'workers':1.5}}", "settings.workers: expected an integer, got a non-integer"},
	{"{'settings':{'workers':99999999999999999999}}", "settings.workers: must be"},
	{"{'settings':{'workers':null}}", "settings.workers: expected an integer, got null"},
	{"{'settings':{'drain_timeout_ms':true}}", "settings.drain_timeout_ms: expected an integer, got a boolean"},
	{"{'settings':{'log_level':'loud'}}", "settings.log_level: must be one of"},
	{"{'settings':{'ticket_key_rotation_s':299}}", "settings.ticket_key_rotation_s: must be 300-604800"},
	{"{'settings':{'ticket_key_rotation_s':604801}}", "settings.ticket_key_rotation_s: must be 300-604800"},
	{"{'settings':{'withdraw_delay_ms':300001}}", "settings.withdraw_delay_ms: must be 0-300000"},
	{"{'settings':{'withdraw_delay_ms':'2s'}}", "settings.withdraw_delay_ms: expected an integer, got a string"},
	{"{'settings':{'threads':1}}", "settings.threads: unknown key"},
	{"{'settings':{'accept_steering':'kernel'}}",
	 "settings.accept_steering: must be one of \"auto\", \"bpf\", \"userspace\""},
	{"{'settings':{'accept_steering':1}}", "settings.accept_steering: expected a string"},
	/* certificates */
	{"{'certificates':[]}", "certificates: expected an object"},
	{"{'certificates':{'bad name':{'type':'ca','cert':'a'}}}", "certificates.bad name: invalid name"},
	{"{'certificates':{'web':'x.pem'}}", "certificates.web: expected an object, got a string"},
	{"{'certificates':{'web':{'cert':'a'}}}", "certificates.web.type: is required"},
	{"{'certificates':{'web':{'type':'client','cert':'a'}}}", "certificates.web.type: must be one of \"server\", \"ca\""},
	{"{'certificates':{'web':{'type':'ca'}}}", "certificates.web.cert: is required"},
	{"{'certificates':{'web':{'type':'ca','cert':''}}}", "certificates.web.cert: must not be empty"},
	{"{'certificates':{'web':{'type':'ca','cert':'a\\u0000b'}}}", "certificates.web.cert: must not contain NUL"},
	{"{'certificates':{'web':{'type':'ca','cert':5}}}", "certificates.web.cert: expected a string, got an integer"},
	{"{'certificates':{'web':{'type':'server','cert':'a'}}}", "certificates.web.key: is required"},
	{"{'certificates':{'web':{'type':'ca','cert':'a','key':'k'}}}", "certificates.web.key: a \"ca\" entry takes no private key"},
	{"{'certificates':{'web':{'type':'server','cert':'a','key':'k','crl':'c'}}}", "certificates.web.crl: only \"ca\" entries"},
	{"{'certificates':{'web':{'type':'server','cert':'a','key':'k','crl_expired':'warn'}}}", "certificates.web.crl_expired: only \"ca\" entries"},
	{"{'certificates':{'c':{'type':'ca','cert':'a','crl':'c','crl_expired':'maybe'}}}", "certificates.c.crl_expired: must be one of \"reject\", \"warn\""},
	{"{'certificates':{'c':{'type':'ca','cert':'a','crl':'c','crl_url':'ftp://x/c.crl'}}}", "certificates.c.crl_url: must be an http:// or https:// URL"},
	{"{'certificates':{'c':{'type':'ca','cert':'a','crl_url':'http://x/c.crl'}}}", "certificates.c.crl_url: needs \"crl\""},
	{"{'certificates':{'c':{'type':'ca','cert':'a','crl':'c','crl_url':'http://x/c.crl','crl_refresh_s':0}}}", "certificates.c.crl_refresh_s: must be 1-604800"},
	{"{'certificates':{'web':{'type':'ca','cert':'a','password':'x'}}}", "certificates.web.password: unknown key"},
	/* listener shape */
	{"{'listeners':['web']}", "listeners[0]: expected an object, got a string"},
	{DOC(",'bakends':[]"), "listeners[0].bakends: unknown key"},
	{"{'listeners':[{'protocol':'tls'}]}", "listeners[0].name: is required"},
	{DOC(",'name':'a b'"), "listeners[0].name: invalid name \"a b\""},
	{DOC(",'name':'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'"), "listeners[0].name: invalid name"},
	{DOC(",'name':''"), "listeners[0].name: must not be empty"},
	{DOC(",'protocol':'udp'"), "listeners[0].protocol: must be one of \"tls\", \"tcp\", \"https\""},
	{"{'listeners':[{'name':'x'}]}", "listeners[0].protocol: is required"},
	{DOC(",'bind':'localhost'"), "listeners[0].bind: expected an IPv4 or IPv6 address literal"},
	{DOC(",'bind':'[::1]'"), "listeners[0].bind: expected an IPv4 or IPv6"},
	{DOC(",'bind':'127.0.0.1:80'"), "listeners[0].bind: expected an IPv4 or IPv6"},
	{DOC(",'port':70000"), "listeners[0].port: must be 0-65535"},
	{DOC(",'port':-1"), "listeners[0].port: must be 0-65535"},
	{DOC(",'port':'443'"), "listeners[0].port: expected an integer, got a string"},
	/* TLS references and modes */
	{"{" CERTS ",'listeners':[{'name':'web','protocol':'tls','bind':'::1','port':1,'backends':[]}]}", "listeners[0].certificate: is required for protocol \"tls\""},
	{DOC(",'certificate':'nope'"), "listeners[0].certificate: no certificate named \"nope\""},
	{DOC(",'certificate':'clients'"), "listeners[0].certificate: \"clients\" is a \"ca\" entry"},
	{DOC(",'ca':'web'"), "listeners[0].ca: \"web\" is a \"server\" entry"},
	{DOC(",'ca':'nope'"), "listeners[0].ca: no certificate named \"nope\""},
	{DOC(",'mutual_auth':'required'"), "listeners[0].mutual_auth: \"required\" needs \"ca\""},
	{DOC(",'mutual_auth':'optional'"), "listeners[0].mutual_auth: \"optional\" needs \"ca\""},
	{DOC(",'ca':'clients','mutual_auth':'maybe'"), "listeners[0].mutual_auth: must be one of \"off\", \"optional\", \"required\""},
	{DOC(",'protocol':'tcp'"), "listeners[0].certificate: not allowed with protocol \"tcp\""},
	{"{'listeners':[{'name':'t','protocol':'tcp','bind':'::','port':1,'mutual_auth':'off','backends':[]}]}", "listeners[0].mutual_auth: not allowed with protocol \"tcp\""},
	{DOC(",'verify_depth':0"), "listeners[0].verify_depth: must be 1-16"},
	{DOC(",'verify_depth':17"), "listeners[0].verify_depth: must be 1-16"},
	{DOC(",'scheduler':'wrr'"), "listeners[0].scheduler: must be one of \"rr\""},
	{DOC(",'scheduler':'lc'"), "listeners[0].scheduler: must be one of \"rr\""},
	{DOC(",'forwarding':'magic'"), "listeners[0].forwarding: must be one of \"auto\", \"sockmap\", \"splice\", \"userspace\""},
	{DOC(",'proxy_protocol':'v1'"), "listeners[0].proxy_protocol: must be one of \"none\", \"v2\""},
	{DOC(",'proxy_protocol':2"), "listeners[0].proxy_protocol: expected a string, got an integer"},
	{DOC(",'protocol':'https','proxy_protocol':'v2'"), "listeners[0].proxy_protocol: is for protocol \"tcp\" and \"tls\"; an https listener names the client in X-Forwarded-For"},
	{DOC(",'tls_session_cache':-1"), "listeners[0].tls_session_cache: must be 0-1000000"},
	{DOC(",'tls_session_cache':1000001"), "listeners[0].tls_session_cache: must be 0-1000000"},
	{DOC(",'tls_session_tickets':'none'"), "listeners[0].tls_session_tickets: must be one of \"stateless\", \"stateful\""},
	{"{'listeners':[{'name':'t','protocol':'tcp','bind':'::','port':1,'tls_session_tickets':'stateful','backends':[]}]}", "listeners[0].tls_session_tickets: is for protocol \"tls\" and \"https\""},
	{"{'listeners':[{'name':'t','protocol':'tcp','bind':'::','port':1,'tls_session_cache':0,'backends':[]}]}", "listeners[0].tls_session_cache: is for protocol \"tls\" and \"https\""},
	{DOC(",'handshake_timeout_ms':0"), "listeners[0].handshake_timeout_ms: must be 1-"},
	{DOC(",'idle_timeout_ms':0"), "listeners[0].idle_timeout_ms: must be 1-"},
	{DOC(",'connect_timeout_ms':0"), "listeners[0].connect_timeout_ms: must be 1-"},
	{DOC(",'max_connections':0"), "listeners[0].max_connections: must be 1-"},
	{DOC(",'connect_retries':64"), "listeners[0].connect_retries: must be 0-63"},
	/* backend groups and routes */
	{GDOC(""), "listeners[0].backends: is required (or \"backend_group\", or \"routes\")"},
	{GDOC(",'backend_group':'nope'"), "listeners[0].backend_group: no backend group named \"nope\" in backend_groups"},
	{GDOC(",'backend_group':'api','backends':[{'address':'127.0.0.1:1'}]"), "listeners[0].backend_group: excludes \"backends\""},
	{GDOC(",'backend_group':'api','health_check':{}"), "listeners[0].health_check: the group"},
	{GDOC(",'routes':[" ROUTE("'host':'x'", "api") "],'health_check':{}"), "listeners[0].health_check: checks inline \"backends\", and there are none"},
	{GDOC(",'default_group':'api'"), "listeners[0].default_group: needs \"routes\""},
	{GDOC(",'backend_group':'web','default_group':'api','routes':[" ROUTE("'host':'x'", "api") "]"), "listeners[0].default_group: excludes \"backend_group\""},
	{GDOC(",'routes':[" ROUTE("'host':'x'", "api") "],'default_group':'nope'"), "listeners[0].default_group: no backend group named \"nope\""},
	{GDOC(",'routes':[" ROUTE("'host':'x'", "nope") "]"), "listeners[0].routes[0].group: no backend group named \"nope\""},
	{"{" CERTS "," GROUPS ",'listeners':[" LISTENER(",'routes':[" ROUTE("'host':'x'", "api") "]") "]}", "listeners[0].routes: only for protocol \"https\""},
	{"{" CERTS "," GROUPS ",'listeners':[" LISTENER(",'default_group':'api'") "]}", "listeners[0].default_group: only for protocol \"https\""},
	{GDOC(",'routes':{}"), "listeners[0].routes: expected an array of routes"},
	{GDOC(",'routes':[]"), "listeners[0].routes: must not be an empty array"},
	{GDOC(",'routes':[1]"), "listeners[0].routes[0]: expected an object"},
	{GDOC(",'routes':[{'match':{'host':'x'},'group':'api'}]"), "listeners[0].routes[0].name: is required"},
	{GDOC(",'routes':[{'name':'r','match':{'host':'x'}}]"), "listeners[0].routes[0].group: is required"},
	{GDOC(",'routes':[{'name':'r','group':'api'}]"), "listeners[0].routes[0].match: is required"},
	{GDOC(",'routes':[{'name':'r','match':{'host':'x'},'group':'api','action':'allow'}]"), "listeners[0].routes[0].action: unknown key"},
	{GDOC(",'routes':[{'name':'r s','match':{'host':'x'},'group':'api'}]"), "listeners[0].routes[0].name: use 1-80 letters"},
	{GDOC(",'routes':[" ROUTE("'host':'x'", "api") "," ROUTE("'host':'y'", "api") "]"), "listeners[0].routes[1].name: duplicate route name \"r\" (also listeners[0].routes[0])"},
	{RDOC(""), "listeners[0].routes[0].match: needs at least one matcher"},
	{RDOC("'port':1"), "listeners[0].routes[0].match.port: unknown key"},
	{RDOC("'host':'*.'"), "listeners[0].routes[0].match.host: \"*.\": expected a host name"},
	{RDOC("'host':'*'"), "listeners[0].routes[0].match.host: \"*\": a wildcard is \"*.\" at the start only"},
	{RDOC("'host':'a.*.com'"), "listeners[0].routes[0].match.host: \"a.*.com\": a wildcard is"},
	{RDOC("'host':'a..com'"), "listeners[0].routes[0].match.host: \"a..com\": labels are 1-63 characters"},
	{RDOC("'host':'a.com:443'"), "listeners[0].routes[0].match.host: \"a.com:443\": a host name has letters"},
	{RDOC("'host':''"), "listeners[0].routes[0].match.host: must not be empty"},
	{RDOC("'host':1"), "listeners[0].routes[0].match.host: expected a string"},
	{RDOC("'path_prefix':'v1/'"), "listeners[0].routes[0].match.path_prefix: must start with \"/\""},
	{RDOC("'path_prefix':'/a b'"), "listeners[0].routes[0].match.path_prefix: has a character a request path cannot have"},
	{RDOC("'path_prefix':'/a?b'"), "listeners[0].routes[0].match.path_prefix: has a character"},
	{RDOC("'method':'get me'"), "listeners[0].routes[0].match.method: expected a method"},
	{RDOC("'method':[]"), "listeners[0].routes[0].match.method: must not be an empty array"},
	{RDOC("'method':['GET',1]"), "listeners[0].routes[0].match.method[1]: expected a string"},
	{RDOC("'method':['GET','GET']"), "listeners[0].routes[0].match.method[1]: \"GET\" is listed twice"},
	{RDOC("'method':{}"), "listeners[0].routes[0].match.method: expected a string or an array of strings"},
	{RDOC("'cert':{}"), "listeners[0].routes[0].match.cert: needs at least one matcher"},
	{RDOC("'cert':'ops'"), "listeners[0].routes[0].match.cert: expected an object"},
	{RDOC("'cert':{'dept':'x'}"), "listeners[0].routes[0].match.cert.dept: unknown key"},
	{RDOC("'cert':{'serial':'xyz'}"), "listeners[0].routes[0].match.cert.serial: expected a serial number"},
	{"{" CERTS ",'backend_groups':{'a b':{'backends':[{'address':'127.0.0.1:1'}]}},'listeners':[" LISTENER("") "]}", "backend_groups.a b: invalid name"},
	{"{" CERTS ",'backend_groups':{'g':{}},'listeners':[" LISTENER("") "]}", "backend_groups.g.backends: is required"},
	{"{" CERTS ",'backend_groups':{'g':{'backends':[]}},'listeners':[" LISTENER("") "]}", "backend_groups.g.backends: at least one backend"},
	{"{" CERTS ",'backend_groups':{'g':{'backends':[{'address':'x'}]}},'listeners':[" LISTENER("") "]}", "backend_groups.g.backends[0].address: expected host:port"},
	{"{" CERTS ",'backend_groups':{'g':{'backends':[{'address':'127.0.0.1:1'}],'scheduler':'lc'}},'listeners':[" LISTENER("") "]}", "backend_groups.g.scheduler: must be one of \"rr\""},
	{"{" CERTS ",'backend_groups':{'g':{'backends':[{'address':'127.0.0.1:1'}],'health_check':{'type':'icmp'}}},'listeners':[" LISTENER("") "]}", "backend_groups.g.health_check.type: must be one of"},
	{"{" CERTS ",'backend_groups':{'g':{'backends':[{'address':'127.0.0.1:1'}],'x':1}},'listeners':[" LISTENER("") "]}", "backend_groups.g.x: unknown key"},
	{"{" CERTS ",'backend_groups':[],'listeners':[" LISTENER("") "]}", "backend_groups: expected an object"},
	/* backends */
	{"{" CERTS ",'listeners':[{'name':'web','protocol':'tls','bind':'::1','port':1,'certificate':'web'}]}", "listeners[0].backends: is required"},
	{BACKENDS(""), "listeners[0].backends: at least one backend"},
	{DOC(",'backends':{}"), "listeners[0].backends: expected an array"},
	{BACKENDS("'127.0.0.1:80'"), "listeners[0].backends[0]: expected an object, got a string"},
	{BACKENDS("{'weight':1}"), "listeners[0].backends[0].address: is required"},
	{BACKENDS("{'address':'127.0.0.1:80'},{'address':'localhost:80'}"), "listeners[0].backends[1].address: expected host:port"},
	{BACKENDS("{'address':'127.0.0.1'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'127.0.0.1:0'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'127.0.0.1:65536'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'127.0.0.1:8x'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'127.0.0.1:'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'::1:80'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'[127.0.0.1]:80'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'[::1]80'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'[::1'}"), "listeners[0].backends[0].address: expected host:port"},
	{BACKENDS("{'address':'127.0.0.1:80','weight':0}"), "listeners[0].backends[0].weight: must be 1-256"},
	{BACKENDS("{'address':'127.0.0.1:80','weight':257}"), "listeners[0].backends[0].weight: must be 1-256"},
	{BACKENDS("{'address':'127.0.0.1:80','weight':'heavy'}"), "listeners[0].backends[0].weight: expected an integer"},
	{BACKENDS("{'address':'127.0.0.1:80','port':1}"), "listeners[0].backends[0].port: unknown key"},
	{BACKENDS("{'address':'127.0.0.1:80','disabled':1}"), "listeners[0].backends[0].disabled: expected a boolean"},
	{BACKENDS("{'address':'127.0.0.1:80','drained':true,'disabled':true}"), "listeners[0].backends[0]: \"drained\" and \"disabled\" exclude each other"},
	{BACKENDS("{'address':'127.0.0.1:80'},{'address':'127.0.0.1:080'}"), "listeners[0].backends[1].address: same backend as listeners[0].backends[0]"},
	/* health checks */
	{DOC(",'health_check':'tcp'"), "listeners[0].health_check: expected an object"},
	{DOC(",'health_check':{'type':'icmp'}"), "listeners[0].health_check.type: must be one of \"none\", \"tcp\", \"http\""},
	{DOC(",'health_check':{'interval':2}"), "listeners[0].health_check.interval: unknown key"},
	{DOC(",'health_check':{'interval_ms':0}"), "listeners[0].health_check.interval_ms: must be 100-"},
	{DOC(",'health_check':{'timeout_ms':0}"), "listeners[0].health_check.timeout_ms: must be 1-"},
	{DOC(",'health_check':{'healthy_threshold':11}"), "listeners[0].health_check.healthy_threshold: must be 1-10"},
	{DOC(",'health_check':{'unhealthy_threshold':0}"), "listeners[0].health_check.unhealthy_threshold: must be 1-10"},
	{DOC(",'health_check':{'healthy_threshold':0}"), "listeners[0].health_check.healthy_threshold: must be 1-10"},
	{DOC(",'health_check':{'interval_ms':-5}"), "listeners[0].health_check.interval_ms: must be 100-"},
	{DOC(",'health_check':{'port':0}"), "listeners[0].health_check.port: must be 1-65535"},
	{DOC(",'health_check':{'port':65536}"), "listeners[0].health_check.port: must be 1-65535"},
	{DOC(",'health_check':{'unknown_is_up':'yes'}"), "listeners[0].health_check.unknown_is_up: expected a boolean, got a string"},
	{DOC(",'health_check':{'cut_on_unhealthy':1}"), "listeners[0].health_check.cut_on_unhealthy: expected a boolean, got an integer"},
	{DOC(",'health_check':{'slow_start_s':3601}"), "listeners[0].health_check.slow_start_s: must be 0-3600"},
	{DOC(",'health_check':{'path':'/x'}"), "listeners[0].health_check.path: only for type \"http\""},
	{DOC(",'health_check':{'type':'tcp','expected_status':'2xx'}"), "listeners[0].health_check.expected_status: only for type \"http\""},
	{DOC(",'health_check':{'type':'http','path':'health'}"), "listeners[0].health_check.path: must start with"},
	{DOC(",'health_check':{'type':'http','path':''}"), "listeners[0].health_check.path: must not be empty"},
	{DOC(",'health_check':{'type':'http','path':'/a b'}"), "listeners[0].health_check.path: only printable ASCII without spaces"},
	{DOC(",'health_check':{'type':'http','path':'/a\\r\\nX-Evil: 1'}"), "listeners[0].health_check.path: only printable ASCII without spaces"},
	{DOC(",'health_check':{'type':'http','host':'a\\nb'}"), "listeners[0].health_check.host: only printable ASCII"},
	{DOC(",'health_check':{'type':'http','method':'get'}"), "listeners[0].health_check.method: expected an HTTP method in capitals"},
	{DOC(",'health_check':{'type':'http','method':'VERYLONGMETHODNAME'}"), "listeners[0].health_check.method: at most 15 characters"},
	{DOC(",'health_check':{'type':'http','expected_status':'6xx'}"), "listeners[0].health_check.expected_status: \"6xx\" is neither a class"},
	{DOC(",'health_check':{'type':'http','expected_status':'2xx,'}"), "listeners[0].health_check.expected_status: \"\" is neither"},
	{DOC(",'health_check':{'type':'http','expected_status':'099'}"), "listeners[0].health_check.expected_status: \"099\" is neither"},
	{DOC(",'health_check':{'type':'http','expected_status':'200;204'}"), "listeners[0].health_check.expected_status: \"200;204\" is neither"},
	{DOC(",'health_check':{'type':'http','expected_status':'200 204'}"), "listeners[0].health_check.expected_status: expected a comma-separated list"},
	{DOC(",'health_check':{'type':'http','expected_status':200}"), "listeners[0].health_check.expected_status: expected a string, got an integer"},
	/* between listeners */
	{DOC2("", ",'port':9443"), "listeners[1].name: duplicate listener name \"web\""},
	{DOC2("", ",'name':'web2'"), "listeners[1].port: address and port already used by listeners[0]"},
	{DOC2(",'bind':'0.0.0.0'", ",'name':'web2'"), "listeners[1].port: address and port already used by listeners[0]"},
	{DOC2(",'bind':'::1'", ",'name':'web2','bind':'::'"), "listeners[1].port: address and port already used"},
	/* https "http" object */
	{DOC(",'http':{}"), "listeners[0].http: only for protocol \"https\""},
	{DOC(",'protocol':'https','http':{'headers':['X-Nope']}"), "listeners[0].http.headers[0]: unknown header \"X-Nope\""},
	{DOC(",'protocol':'https','http':{'headers':['client-cert','Client-Cert']}"), "listeners[0].http.headers[1]: \"Client-Cert\" is listed twice"},
	{DOC(",'protocol':'https','http':{'headers':[1]}"), "listeners[0].http.headers[0]: expected a string"},
	{DOC(",'protocol':'https','http':{'fingerprint':'md5'}"), "listeners[0].http.fingerprint: must be one of \"sha1\", \"sha256\""},
	{DOC(",'protocol':'https','http':{'underscores_in_headers':'off'}"), "listeners[0].http.underscores_in_headers: must be one of \"drop\", \"reject\", \"allow\""},
	{DOC(",'protocol':'https','http':{'headers':['X-Forwarded-Host']}"), "listeners[0].http.headers[0]: unknown header \"X-Forwarded-Host\" (known: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Port, X-Forwarded-Clientcert-subjectdn, X-Forwarded-Clientcert-issuerdn, X-Forwarded-Clientcert-fingerprint, X-Forwarded-Clientcert-clientverify, Client-Cert, Client-Cert-Chain, Forwarded, X-Real-IP)"},
	{DOC(",'protocol':'https','http':{'trusted_proxies':'192.0.2.0/24'}"), "listeners[0].http.trusted_proxies: expected an array"},
	{DOC(",'protocol':'https','http':{'trusted_proxies':['198.51.100.7/8']}"), "listeners[0].http.trusted_proxies[0]: \"198.51.100.7/8\" is not an IP address or CIDR block"},
	{DOC(",'protocol':'https','http':{'trusted_proxies':['127.0.0.1','::1/129']}"), "listeners[0].http.trusted_proxies[1]: \"::1/129\" is not an IP address or CIDR block"},
	{DOC(",'protocol':'https','http':{'trusted_proxies':['host.example']}"), "listeners[0].http.trusted_proxies[0]: \"host.example\" is not"},
	{DOC(",'protocol':'https','http':{'trusted_proxies':['192.0.2.0/']}"), "listeners[0].http.trusted_proxies[0]: \"192.0.2.0/\" is not"},
	{DOC(",'protocol':'https','http':{'trusted_proxies':[3]}"), "listeners[0].http.trusted_proxies[0]: expected a string"},
	{DOC(",'protocol':'https','http':{'access_log':true}"), "listeners[0].http.access_log: expected a string"},
	{DOC(",'protocol':'https','http':{'max_header_bytes':100}"), "listeners[0].http.max_header_bytes: must be 1024-65536"},
	{DOC(",'protocol':'https','http':{'pool_max_idle':2000}"), "listeners[0].http.pool_max_idle: must be 0-1024"},
	{DOC(",'protocol':'https','http':{'keepalive':1}"), "listeners[0].http.keepalive: unknown key"},
};

#define N_BAD (sizeof(bad) / sizeof(bad[0]))

TC_INDEX_PARAMS(config, refuses, N_BAD)

ParameterizedTest(size_t *i, config, refuses)
{
	char err[512] = "";
	char *want = to_json(bad[*i].want);
	struct kg_config *cfg = parse(bad[*i].doc, err, sizeof(err));
	cr_expect_null(cfg, "accepted: %s", bad[*i].doc);
	cr_expect(strstr(err, want) == err || (strncmp(want, "invalid JSON", 12) == 0 && strstr(err, want)),
		  "document %s\n  error \"%s\"\n  wanted \"%s\"", bad[*i].doc, err, want);
	kg_config_free(cfg);
	free(want);
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

Test(config, defaults_filled)
{
	char err[512];
	struct kg_config *cfg = parse(DOC(""), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->workers, 0);
	cr_expect_eq(cfg->drain_timeout_ms, 10000);
	cr_expect_eq(cfg->ticket_key_rotation_s, 43200);
	cr_expect_eq(cfg->withdraw_delay_ms, 0);
	cr_expect_null(cfg->log_level);
	cr_expect_eq(cfg->accept_steering, KG_ACCEPT_STEERING_AUTO);
	cr_assert_eq(cfg->n_certs, 2);
	const struct kg_cert_conf *web = kg_config_find_cert(cfg, "web");
	const struct kg_cert_conf *ca = kg_config_find_cert(cfg, "clients");
	cr_assert(web && ca);
	cr_expect_null(kg_config_find_cert(cfg, "nope"));
	cr_expect_eq(web->type, KG_CERT_SERVER);
	cr_expect_str_eq(web->cert_path, "/base/s.pem");
	cr_expect_str_eq(web->key_path, "/base/s.key");
	cr_expect_null(web->crl_path);
	cr_expect_eq(ca->type, KG_CERT_CA);
	cr_expect_str_eq(ca->crl_path, "/abs/ca.crl", "absolute paths stay as they are");
	cr_expect_null(ca->key_path);

	cr_assert_eq(cfg->n_listeners, 1);
	const struct kg_listener_conf *l = &cfg->listeners[0];
	cr_expect_str_eq(l->name, "web");
	cr_expect_eq(l->protocol, KG_PROTO_TLS);
	cr_expect_eq(l->bind.ss_family, AF_INET);
	cr_expect_eq(l->bind_len, sizeof(struct sockaddr_in));
	cr_expect_eq(port_of(&l->bind), 8443);
	cr_expect_eq(l->certificate, web);
	cr_expect_null(l->ca);
	cr_expect_eq(l->mutual_auth, KG_MTLS_OFF);
	cr_expect_eq(l->verify_depth, 4);
	cr_expect_eq(l->forwarding, KG_FWD_AUTO);
	cr_expect_eq(l->proxy_protocol, KG_PP_NONE);
	cr_expect_eq(l->handshake_timeout_ms, 10000);
	cr_expect_eq(l->idle_timeout_ms, 300000);
	cr_expect_eq(l->connect_timeout_ms, 3000);
	cr_expect_eq(l->max_connections, 10000);
	cr_expect_eq(l->connect_retries, 2);
	cr_expect_eq(l->tls_session_cache, 20000);
	cr_expect_eq(l->tls_session_tickets, KG_TICKETS_STATELESS);
	cr_assert_eq(l->own.n_backends, 1);
	cr_expect_str_eq(l->own.backends[0].address, "127.0.0.1:9001");
	cr_expect_eq(l->own.backends[0].weight, 1);
	cr_expect_eq(port_of(&l->own.backends[0].addr), 9001);
	cr_expect_eq(l->own.health_check.type, KG_HEALTH_NONE);
	cr_expect_eq(l->own.health_check.interval_ms, 2000);
	cr_expect_eq(l->own.health_check.timeout_ms, 5000);
	cr_expect_eq(l->own.health_check.healthy_threshold, 3);
	cr_expect_eq(l->own.health_check.unhealthy_threshold, 3);
	cr_expect_eq(l->own.health_check.port, 0);
	cr_expect(l->own.health_check.unknown_is_up);
	cr_expect_not(l->own.health_check.cut_on_unhealthy);
	cr_expect_eq(l->own.health_check.slow_start_s, 0);
	cr_expect_str_eq(l->own.health_check.method, "GET");
	cr_expect_str_eq(l->own.health_check.path, "/");
	cr_expect_str_eq(l->own.health_check.host, "");
	kg_config_free(cfg);
}

Test(config, health_check_http_keys)
{
	static const char doc[] = DOC(",'health_check':{'type':'http','method':'HEAD',"
		"'path':'/healthz?full=1','host':'app.example','expected_status':' 2xx , 404,301',"
		"'port':8080,'unknown_is_up':false,'cut_on_unhealthy':true,'slow_start_s':30,"
		"'interval_ms':150,'timeout_ms':100,'healthy_threshold':2,'unhealthy_threshold':1}");
	char err[512];
	struct kg_config *cfg = parse(doc, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	const struct kg_health_conf *h = &cfg->listeners[0].own.health_check;
	cr_expect_eq(h->type, KG_HEALTH_HTTP);
	cr_expect_str_eq(h->method, "HEAD");
	cr_expect_str_eq(h->path, "/healthz?full=1");
	cr_expect_str_eq(h->host, "app.example");
	cr_expect_eq(h->port, 8080);
	cr_expect_not(h->unknown_is_up);
	cr_expect(h->cut_on_unhealthy);
	cr_expect_eq(h->slow_start_s, 30);
	cr_expect_eq(h->interval_ms, 150);
	static const struct {
		unsigned code;
		bool expected;
	} codes[] = {{200, true}, {250, true}, {299, true}, {404, true}, {301, true},
		     {300, false}, {302, false}, {199, false}, {500, false}, {403, false},
		     {99, false}, {600, false}};
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		cr_expect_eq(kg_health_status_expected(h, codes[i].code), codes[i].expected,
			     "status %u", codes[i].code);
	kg_config_free(cfg);
}

Test(config, https_http_keys)
{
	char err[512];
	struct kg_config *cfg = parse(DOC(",'protocol':'https'"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	const struct kg_http_conf *h = &cfg->listeners[0].http;
	/* Off by default: Client-Cert-Chain (large), Forwarded and X-Real-IP
	 * (a backend that reads them should be configured to). */
	cr_expect_eq(h->headers, ((1u << KG_HDR_COUNT) - 1) & ~(1u << KG_HDR_CLIENT_CERT_CHAIN) &
				 ~(1u << KG_HDR_FORWARDED) & ~(1u << KG_HDR_X_REAL_IP));
	cr_expect_eq(h->underscores, KG_UNDERSCORES_DROP);
	cr_expect_eq(h->n_trusted_proxies, 0);
	cr_expect_eq(h->fingerprint, KG_FP_SHA1);
	cr_expect_not(h->access_log);
	cr_expect_eq(h->max_header_bytes, 16384);
	cr_expect_eq(h->pool_max_idle, 64);
	kg_config_free(cfg);

	cfg = parse(DOC(",'protocol':'https','http':{'headers':['client-cert-chain',"
			"'X-FORWARDED-FOR'],'fingerprint':'sha256','access_log':'on',"
			"'access_log_sample':10,'max_header_bytes':2048,'max_headers':20,"
			"'request_timeout_ms':1,'keepalive_timeout_ms':2,'response_timeout_ms':3,"
			"'pool_max_idle':0,'pool_idle_timeout_ms':4}"),
		    err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	h = &cfg->listeners[0].http;
	cr_expect_eq(h->headers, (1u << KG_HDR_CLIENT_CERT_CHAIN) | (1u << KG_HDR_X_FORWARDED_FOR));
	cr_expect_eq(h->fingerprint, KG_FP_SHA256);
	cr_expect(h->access_log);
	cr_expect_eq(h->access_log_sample, 10);
	cr_expect_eq(h->max_header_bytes, 2048);
	cr_expect_eq(h->max_headers, 20);
	cr_expect_eq(h->request_timeout_ms, 1);
	cr_expect_eq(h->keepalive_timeout_ms, 2);
	cr_expect_eq(h->response_timeout_ms, 3);
	cr_expect_eq(h->pool_max_idle, 0);
	cr_expect_eq(h->pool_idle_timeout_ms, 4);
	kg_config_free(cfg);

	cfg = parse(DOC(",'protocol':'https','http':{'underscores_in_headers':'reject',"
			"'headers':['forwarded','x-real-ip'],"
			"'trusted_proxies':['192.0.2.0/24','198.51.100.7','2001:db8::/32','::1']}"),
		    err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	h = &cfg->listeners[0].http;
	cr_expect_eq(h->underscores, KG_UNDERSCORES_REJECT);
	cr_expect_eq(h->headers, (1u << KG_HDR_FORWARDED) | (1u << KG_HDR_X_REAL_IP));
	cr_expect_eq(h->n_trusted_proxies, 4);
	kg_config_free(cfg);
}

struct cidr_case {
	const char *addr;
	bool trusted;
};

/* trusted_proxies: 192.0.2.0/24, 198.51.100.7, 2001:db8::/32, ::1, 203.0.112.0/20
 * (documentation ranges: addresses are parsed and compared, never dialled) */
Test(config, trusted_proxies_match)
{
	static const struct cidr_case cases[] = {
		{"192.0.2.0", true}, {"192.0.2.255", true}, {"192.0.3.0", false},
		{"198.51.100.7", true}, {"198.51.100.8", false}, {"2001:db8:ffff::1", true},
		{"2001:db9::1", false}, {"::1", true}, {"::2", false},
		{"::ffff:192.0.2.9", true},  /* an IPv4 client of a dual-stack listener */
		{"::ffff:198.51.100.8", false}, {"203.0.127.255", true}, {"203.0.128.0", false},
		{"127.0.0.1", false},
	};
	char err[512];
	struct kg_config *cfg = parse(DOC(",'protocol':'https','http':{'trusted_proxies':"
					  "['192.0.2.0/24','198.51.100.7','2001:db8::/32','::1',"
					  "'203.0.112.0/20']}"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	const struct kg_http_conf *h = &cfg->listeners[0].http;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss;
		socklen_t len;
		char text[64];
		snprintf(text, sizeof(text), strchr(cases[i].addr, ':') ? "[%s]:1" : "%s:1",
			 cases[i].addr);
		cr_assert_eq(kg_parse_hostport(text, &ss, &len), 0, "%s", text);
		cr_expect_eq(kg_cidr_match(h->trusted_proxies, h->n_trusted_proxies, &ss),
			     cases[i].trusted, "%s", cases[i].addr);
	}
	kg_config_free(cfg);
}

Test(config, health_check_default_expected_status)
{
	char err[512];
	struct kg_config *cfg = parse(DOC(",'health_check':{'type':'http'}"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	const struct kg_health_conf *h = &cfg->listeners[0].own.health_check;
	cr_expect(kg_health_status_expected(h, 200));
	cr_expect(kg_health_status_expected(h, 399));
	cr_expect_not(kg_health_status_expected(h, 199));
	cr_expect_not(kg_health_status_expected(h, 400));
	cr_expect_not(kg_health_status_expected(h, 500));
	kg_config_free(cfg);
}

struct good_case {
	const char *doc;
	enum kg_mutual_auth auth;
	int family;
	unsigned port;
	enum kg_health_type health;
};

static const struct good_case good[] = {
	{DOC(",'ca':'clients'"), KG_MTLS_REQUIRED, AF_INET, 8443, KG_HEALTH_NONE},
	{DOC(",'ca':'clients','mutual_auth':'optional'"), KG_MTLS_OPTIONAL, AF_INET, 8443, KG_HEALTH_NONE},
	{DOC(",'ca':'clients','mutual_auth':'off'"), KG_MTLS_OFF, AF_INET, 8443, KG_HEALTH_NONE},
	{DOC(",'bind':'::1','port':0"), KG_MTLS_OFF, AF_INET6, 0, KG_HEALTH_NONE},
	{DOC(",'port':65535,'health_check':{}"), KG_MTLS_OFF, AF_INET, 65535, KG_HEALTH_TCP},
	{DOC(",'health_check':{'type':'none'}"), KG_MTLS_OFF, AF_INET, 8443, KG_HEALTH_NONE},
	{DOC(",'protocol':'https','scheduler':'rr','forwarding':'userspace'"), KG_MTLS_OFF, AF_INET, 8443, KG_HEALTH_NONE},
};

#define N_GOOD (sizeof(good) / sizeof(good[0]))

TC_INDEX_PARAMS(config, accepts, N_GOOD)

ParameterizedTest(size_t *i, config, accepts)
{
	char err[512];
	const struct good_case *g = &good[*i];
	struct kg_config *cfg = parse(g->doc, err, sizeof(err));
	cr_assert_not_null(cfg, "%s: %s", g->doc, err);
	const struct kg_listener_conf *l = &cfg->listeners[0];
	cr_expect_eq(l->mutual_auth, g->auth, "%s", g->doc);
	cr_expect_eq(l->bind.ss_family, g->family);
	cr_expect_eq(port_of(&l->bind), g->port);
	cr_expect_eq(l->own.health_check.type, g->health);
	cr_expect_eq(l->ca != NULL, strstr(g->doc, "'ca':'clients'") != NULL);
	kg_config_free(cfg);
}

Test(config, full_document)
{
	static const char doc[] =
		"{'settings':{'workers':2,'drain_timeout_ms':5000,'withdraw_delay_ms':1500,"
		"'log_level':'debug','ticket_key_rotation_s':300,'accept_steering':'userspace'},"
		"'certificates':{'web':{'type':'server','cert':'server.pem','key':'server.key'},"
		"'clients':{'type':'ca','cert':'ca.pem','crl':'ca.crl'}},"
		"'listeners':[{'name':'web','protocol':'tls','bind':'127.0.0.1','port':0,"
		"'certificate':'web','mutual_auth':'required','ca':'clients','verify_depth':2,"
		"'scheduler':'rr','forwarding':'userspace','handshake_timeout_ms':100,"
		"'idle_timeout_ms':200,'connect_timeout_ms':300,'max_connections':400,"
		"'connect_retries':0,'proxy_protocol':'v2','tls_session_cache':0,"
		"'tls_session_tickets':'stateful',"
		"'backends':[{'address':'127.0.0.1:9001','weight':3,'disabled':true},"
		"{'address':'[::1]:9002','weight':256,'drained':true,'disabled':false}],'health_check':{'type':'http',"
		"'interval_ms':100,'timeout_ms':1,'healthy_threshold':10,'unhealthy_threshold':1}},"
		"{'name':'plain','protocol':'tcp','bind':'127.0.0.1','port':0,'proxy_protocol':'v2',"
		"'backends':[{'address':'127.0.0.1:9003'}]}]}";
	char err[512];
	struct kg_config *cfg = parse(doc, err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->workers, 2);
	cr_expect_eq(cfg->drain_timeout_ms, 5000);
	cr_expect_eq(cfg->withdraw_delay_ms, 1500);
	cr_expect_str_eq(cfg->log_level, "debug");
	cr_expect_eq(cfg->ticket_key_rotation_s, 300);
	cr_expect_eq(cfg->accept_steering, KG_ACCEPT_STEERING_USERSPACE);
	cr_expect_str_eq(kg_config_find_cert(cfg, "clients")->crl_path, "/base/ca.crl");
	const struct kg_listener_conf *l = &cfg->listeners[0];
	cr_expect_eq(l->ca, kg_config_find_cert(cfg, "clients"));
	cr_expect_eq(l->verify_depth, 2);
	cr_expect_eq(l->forwarding, KG_FWD_USERSPACE);
	cr_expect_eq(l->handshake_timeout_ms, 100);
	cr_expect_eq(l->idle_timeout_ms, 200);
	cr_expect_eq(l->connect_timeout_ms, 300);
	cr_expect_eq(l->max_connections, 400);
	cr_expect_eq(l->connect_retries, 0);
	cr_expect_eq(l->tls_session_cache, 0);
	cr_expect_eq(l->tls_session_tickets, KG_TICKETS_STATEFUL);
	cr_expect_eq(l->proxy_protocol, KG_PP_V2);
	cr_expect_eq(cfg->listeners[1].proxy_protocol, KG_PP_V2);
	cr_assert_eq(l->own.n_backends, 2);
	cr_expect_eq(l->own.backends[0].weight, 3);
	cr_expect_eq(l->own.backends[1].weight, 256);
	cr_expect_eq(l->own.backends[0].admin, KG_ADMIN_DISABLED);
	cr_expect_eq(l->own.backends[1].admin, KG_ADMIN_DRAINED);
	cr_expect_eq(cfg->listeners[1].own.backends[0].admin, KG_ADMIN_READY);
	cr_expect_eq(l->own.backends[1].addr.ss_family, AF_INET6);
	cr_expect_eq(l->own.backends[1].addrlen, sizeof(struct sockaddr_in6));
	cr_expect_eq(port_of(&l->own.backends[1].addr), 9002);
	cr_expect_eq(l->own.health_check.type, KG_HEALTH_HTTP);
	cr_expect_eq(l->own.health_check.interval_ms, 100);
	cr_expect_eq(l->own.health_check.timeout_ms, 1);
	cr_expect_eq(l->own.health_check.healthy_threshold, 10);
	cr_expect_eq(l->own.health_check.unhealthy_threshold, 1);
	const struct kg_listener_conf *t = &cfg->listeners[1];
	cr_expect_eq(t->protocol, KG_PROTO_TCP);
	cr_expect_null(t->certificate);
	cr_expect_eq(t->mutual_auth, KG_MTLS_OFF);
	kg_config_free(cfg);
}

Test(config, groups_and_routes)
{
	char err[512];
	struct kg_config *cfg = parse(GDOC(",'routes':[" ROUTE("'host':'*.Example.com','path_prefix':'/v1/',"
					 "'method':['GET','HEAD'],'cert':{'ou':'ops'}", "api")
					 "],'default_group':'web'"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_assert_eq(cfg->n_groups, 2);
	const struct kg_group_conf *api = kg_config_find_group(cfg, "api");
	const struct kg_group_conf *web = kg_config_find_group(cfg, "web");
	cr_assert(api && web);
	cr_expect_eq(web->n_backends, 2);
	cr_expect_eq(web->backends[1].weight, 2);
	cr_expect_eq(web->health_check.type, KG_HEALTH_HTTP);
	cr_expect_str_eq(web->health_check.path, "/h");
	cr_expect_eq(api->health_check.type, KG_HEALTH_NONE);
	const struct kg_listener_conf *l = &cfg->listeners[0];
	cr_expect_eq(l->own.n_backends, 0);
	cr_expect_null(l->backend_group);
	cr_expect_eq(l->default_group, web);
	cr_expect_eq(l->group, web);
	cr_assert_not_null(l->routes);
	char how[32];
	cr_expect(kg_listener_uses_group(l, api, how, sizeof(how)));
	cr_expect_str_eq(how, "routes[0]");
	cr_expect(kg_listener_uses_group(l, web, how, sizeof(how)));
	cr_expect_str_eq(how, "default_group");
	/* The same definition compares the same; a weight does not. */
	cr_expect(kg_group_conf_same(web, web));
	cr_expect_not(kg_group_conf_same(web, api));
	kg_config_free(cfg);

	cfg = parse(GDOC(",'backend_group':'api'"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_expect_eq(cfg->listeners[0].group, kg_config_find_group(cfg, "api"));
	cr_expect_null(cfg->listeners[0].routes);
	kg_config_free(cfg);
	/* Routes alone: requests no route matches get 404 (group NULL). */
	cfg = parse(GDOC(",'routes':[" ROUTE("'method':'GET'", "api") "]"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_expect_null(cfg->listeners[0].group);
	kg_config_free(cfg);
}

Test(config, hostport)
{
	static const struct {
		const char *text;
		int ok, family;
		unsigned port;
	} cases[] = {
		{"127.0.0.1:80", 1, AF_INET, 80},     {"127.1.2.3:65535", 1, AF_INET, 65535},
		{"[::1]:9001", 1, AF_INET6, 9001},    {"[2001:db8::1]:1", 1, AF_INET6, 1},
		{"[::ffff:127.0.0.1]:8", 1, AF_INET6, 8},
		{"127.0.0.1", 0, 0, 0},               {"127.0.0.1:0", 0, 0, 0},
		{"127.0.0.1:65536", 0, 0, 0},         {"127.0.0.1:123456", 0, 0, 0},
		{"127.0.0.1:-1", 0, 0, 0},            {"127.0.0.1: 80", 0, 0, 0},
		{"localhost:80", 0, 0, 0},            {"::1:80", 0, 0, 0},
		{"[::1]", 0, 0, 0},                   {"[]:80", 0, 0, 0},
		{"[1.2.3.4]:80", 0, 0, 0},            {":80", 0, 0, 0},
		{"", 0, 0, 0},                        {"256.0.0.1:80", 0, 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sockaddr_storage ss;
		socklen_t len = 0;
		int r = kg_parse_hostport(cases[i].text, &ss, &len);
		if (!cases[i].ok) {
			cr_expect_eq(r, -EINVAL, "\"%s\" accepted", cases[i].text);
			continue;
		}
		cr_expect_eq(r, 0, "\"%s\" refused", cases[i].text);
		cr_expect_eq(ss.ss_family, cases[i].family, "%s", cases[i].text);
		cr_expect_eq(port_of(&ss), cases[i].port, "%s", cases[i].text);
	}
}

static struct tc_dir dir;
static void make_dir(void) { tc_dir_create(&dir); }
static void drop_dir(void) { tc_dir_remove(&dir); }

Test(config, load_resolves_paths_against_the_files_folder, .init = make_dir, .fini = drop_dir)
{
	char *json = to_json(DOC(""));
	tc_write_text(tc_file(&dir, "kgate.json"), json);
	free(json);
	char err[512], want[PATH_MAX + 16], real[PATH_MAX];
	cr_assert_not_null(realpath(dir.path, real));
	struct kg_config *cfg = kg_config_load(tc_file(&dir, "kgate.json"), err, sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	snprintf(want, sizeof(want), "%s/s.pem", real);
	cr_expect_str_eq(kg_config_find_cert(cfg, "web")->cert_path, want);
	kg_config_free(cfg);
}

Test(config, load_errors, .init = make_dir, .fini = drop_dir)
{
	char err[512];
	const char *missing = tc_file(&dir, "missing.json");
	cr_expect_null(kg_config_load(missing, err, sizeof(err)));
	cr_expect(strstr(err, missing) == err && strstr(err, "cannot read: No such file"), "%s", err);

	cr_expect_null(kg_config_load(dir.path, err, sizeof(err)));
	cr_expect(strstr(err, "not a regular file"), "%s", err);

	tc_write_text(tc_file(&dir, "empty.json"), "");
	cr_expect_null(kg_config_load(tc_file(&dir, "empty.json"), err, sizeof(err)));
	cr_expect(strstr(err, "empty.json: file is empty"), "%s", err);

	tc_write_text(tc_file(&dir, "bad.json"), "{\n  \"settings\": {\n    \"workers\": 1,\n  }\n}\n");
	cr_expect_null(kg_config_load(tc_file(&dir, "bad.json"), err, sizeof(err)));
	cr_expect(strstr(err, "bad.json: invalid JSON at line 4, column 3: "), "%s", err);

	tc_write_text(tc_file(&dir, "schema.json"), "{\"settings\": {\"workers\": \"x\"}}");
	cr_expect_null(kg_config_load(tc_file(&dir, "schema.json"), err, sizeof(err)));
	cr_expect_str_eq(err, "settings.workers: expected an integer, got a string");
}

Test(config, example_in_the_repo_parses)
{
	char err[512];
	struct kg_config *cfg = kg_config_load(KG_SOURCE_DIR "/dataplane/examples/kgate.json", err,
					       sizeof(err));
	cr_assert_not_null(cfg, "%s", err);
	cr_expect_geq(cfg->n_listeners, 1);
	cr_expect_eq(cfg->listeners[0].mutual_auth, KG_MTLS_REQUIRED);
	kg_config_free(cfg);
}

/* ---- the listener key table (include/kgate/listener_keys.h) ------------ */

static size_t n_names(const struct kg_listener_key *k)
{
	size_t n = 0;
	while (k->names && k->names[n])
		n++;
	return n;
}

Test(listener_keys, table_is_consistent)
{
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		cr_assert_not_null(k->key, "row %zu is empty", i);
		cr_expect_eq(kg_listener_key_find(k->key), k, "%s: found elsewhere", k->key);
		cr_expect(k->help && k->help[0], "%s: no help", k->key);
		for (size_t j = 0; j < i; j++)
			cr_expect(!k->option || !kg_listener_keys[j].option ||
				  strcmp(k->option, kg_listener_keys[j].option) != 0,
				  "%s and %s: one option", k->key, kg_listener_keys[j].key);
		if (k->type == KG_KEY_UINT) {
			cr_expect_leq(k->min, k->max, "%s", k->key);
			cr_expect(k->def >= k->min && k->def <= k->max, "%s: default %u outside %u-%u",
				  k->key, k->def, k->min, k->max);
		}
		if (k->type == KG_KEY_ENUM) {
			size_t n = n_names(k);
			cr_expect_gt(n, 0, "%s: no names", k->key);
			cr_expect_lt(k->def, n, "%s: default is not one of its names", k->key);
			for (size_t a = 0; a < n; a++)
				for (size_t b = 0; b < a; b++)
					cr_expect_str_neq(k->names[a], k->names[b], "%s", k->key);
		} else {
			cr_expect_null(k->names, "%s: names for a non-enum", k->key);
		}
		if (k->type == KG_KEY_BOOL)
			cr_expect_leq(k->def, 1, "%s", k->key);
		/* F rows are the scalars config.c parses from the table alone. */
		if (k->field)
			cr_expect(k->type == KG_KEY_UINT || k->type == KG_KEY_ENUM ||
				  k->type == KG_KEY_BOOL, "%s: a field row must be a scalar", k->key);
		cr_expect(k->protocols && (k->protocols & ~KG_PROTOS_ALL) == 0, "%s", k->key);
		cr_expect_eq(k->refusal != NULL, k->protocols != KG_PROTOS_ALL,
			     "%s: a key for some protocols needs a refusal, and only it", k->key);
		if (k->flags & (KG_LKF_UPDATE | KG_LKF_OPTION_REQUIRED | KG_LKF_NONE_REMOVES))
			cr_expect_not_null(k->option, "%s: no kgatectl option", k->key);
		if (k->option)
			cr_expect(k->metavar || k->type == KG_KEY_ENUM, "%s: no metavar", k->key);
		if (k->flags & KG_LKF_NONE_REMOVES)
			cr_expect(k->type == KG_KEY_STRING || k->type == KG_KEY_OBJECT ||
					  k->type == KG_KEY_LIST,
				  "%s: \"none\" removes only strings, objects and lists", k->key);
		if (k->flags & KG_LKF_OPTION_REQUIRED)
			cr_expect(k->flags & KG_LKF_REQUIRED, "%s", k->key);
		cr_expect(!(k->flags & KG_LKF_UPDATE) || !(k->flags & KG_LKF_REQUIRED),
			  "%s: update would be able to remove a required key", k->key);
	}
	cr_expect_null(kg_listener_key_find("nope"));
	/* The enums of config.h are the names' positions. */
	cr_expect_str_eq(kg_listener_keys[KG_LK_protocol].names[KG_PROTO_HTTPS], "https");
	cr_expect_str_eq(kg_listener_keys[KG_LK_forwarding].names[KG_FWD_USERSPACE], "userspace");
	cr_expect_str_eq(kg_listener_keys[KG_LK_mutual_auth].names[KG_MTLS_REQUIRED], "required");
	cr_expect_str_eq(kg_listener_keys[KG_LK_proxy_protocol].names[KG_PP_V2], "v2");
}

/* A tls listener, or a tcp one (no certificate), with extra keys. */
static struct kg_config *parse_listener_with(const char *protocol, const char *extra, char *err,
					     size_t errlen)
{
	char doc[1024];
	bool tcp = strcmp(protocol, "tcp") == 0;
	snprintf(doc, sizeof(doc),
		 "{" CERTS ",'listeners':[{'name':'web','protocol':'%s','bind':'127.0.0.1',"
		 "'port':8443%s,'backends':[{'address':'127.0.0.1:9001'}]%s}]}",
		 protocol, tcp ? "" : ",'certificate':'web'", extra);
	return parse(doc, err, errlen);
}

Test(listener_keys, defaults_are_the_tables)
{
	for (int p = 0; kg_listener_keys[KG_LK_protocol].names[p]; p++) {
		char err[512];
		const char *protocol = kg_listener_keys[KG_LK_protocol].names[p];
		struct kg_config *cfg = parse_listener_with(protocol, "", err, sizeof(err));
		cr_assert_not_null(cfg, "%s: %s", protocol, err);
		for (size_t i = 0; i < KG_LK_COUNT; i++)
			if (kg_listener_keys[i].field)
				cr_expect_eq(kg_listener_key_value(&cfg->listeners[0], i),
					     kg_listener_keys[i].def, "%s %s", protocol,
					     kg_listener_keys[i].key);
		kg_config_free(cfg);
	}
}

/* Each scalar row: its bounds and names are the ones config.c applies,
 * with the messages test_config's table expects. */
Test(listener_keys, bounds_and_names_are_the_tables)
{
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		char extra[256], err[512], want[256];
		struct kg_config *cfg;
		if (!k->field)
			continue;
		/* A key only for https is tried there; access_default deny
		 * and ocsp need client certificates. */
		const char *proto = k->protocols & KG_PROTO_BIT(TLS) ? "tls" : "https";
		if (k->type == KG_KEY_UINT) {
			unsigned long long outside[] = {(unsigned long long)k->min - 1, k->max + 1ull};
			for (size_t o = k->min == 0; o < 2; o++) {
				snprintf(extra, sizeof(extra), ",'%s':%llu", k->key, outside[o]);
				cr_expect_null(cfg = parse_listener_with(proto, extra, err, sizeof(err)),
					       "%s", extra);
				kg_config_free(cfg);
				snprintf(want, sizeof(want), "listeners[0].%s: must be %u-%u", k->key,
					 k->min, k->max);
				cr_expect_str_eq(err, want);
			}
			unsigned edges[] = {k->min, k->max};
			for (size_t g = 0; g < 2; g++) {
				snprintf(extra, sizeof(extra), ",'%s':%u", k->key, edges[g]);
				cfg = parse_listener_with(proto, extra, err, sizeof(err));
				cr_assert_not_null(cfg, "%s: %s", extra, err);
				cr_expect_eq(kg_listener_key_value(&cfg->listeners[0], i), edges[g], "%s",
					     extra);
				kg_config_free(cfg);
			}
		}
		const char *mtls = i == KG_LK_access_default || i == KG_LK_ocsp ? ",'ca':'clients'" : "";
		for (size_t n = 0; k->type == KG_KEY_ENUM && k->names[n]; n++) {
			snprintf(extra, sizeof(extra), ",'%s':'%s'%s", k->key, k->names[n], mtls);
			cfg = parse_listener_with(proto, extra, err, sizeof(err));
			cr_assert_not_null(cfg, "%s: %s", extra, err);
			cr_expect_eq(kg_listener_key_value(&cfg->listeners[0], i), n, "%s", extra);
			kg_config_free(cfg);
		}
		if (k->type == KG_KEY_ENUM) {
			snprintf(extra, sizeof(extra), ",'%s':'no-such-value'", k->key);
			cr_expect_null(cfg = parse_listener_with(proto, extra, err, sizeof(err)));
			kg_config_free(cfg);
			snprintf(want, sizeof(want), "listeners[0].%s: must be one of \"%s\"", k->key,
				 k->names[0]);
			cr_expect(strncmp(err, want, strlen(want)) == 0, "%s", err);
		}
	}
}

Test(listener_keys, keys_of_other_protocols_are_refused)
{
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		for (int p = 0; kg_listener_keys[KG_LK_protocol].names[p]; p++) {
			char extra[128], err[512], want[256];
			const char *protocol = kg_listener_keys[KG_LK_protocol].names[p];
			if (k->protocols & (1u << p))
				continue;
			snprintf(extra, sizeof(extra), ",'%s':1", k->key);
			struct kg_config *cfg = parse_listener_with(protocol, extra, err, sizeof(err));
			cr_expect_null(cfg, "%s %s", protocol, extra);
			kg_config_free(cfg);
			snprintf(want, sizeof(want), "listeners[0].%s: %s", k->key, k->refusal);
			cr_expect_str_eq(err, want);
		}
	}
}

static char *read_all(FILE *f)
{
	size_t len = 0, cap = 1 << 16;
	char *buf = malloc(cap);
	cr_assert_not_null(buf);
	size_t n;
	while ((n = fread(buf + len, 1, cap - 1 - len, f)) > 0)
		len += n;
	buf[len] = '\0';
	return buf;
}

static char *run_ctl(const char *args)
{
	char cmd[PATH_MAX + 128];
	snprintf(cmd, sizeof(cmd), "%s %s 2>&1", KG_KGATECTL, args);
	FILE *f = popen(cmd, "r");
	cr_assert_not_null(f, "%s", cmd);
	char *out = read_all(f);
	cr_assert_eq(pclose(f), 0, "%s:\n%s", cmd, out);
	return out;
}

/* The option as its --help line starts: "  --verify-depth N". */
static bool lists_option(const char *help, const struct kg_listener_key *k)
{
	char line[96];
	snprintf(line, sizeof(line), "\n  --%s ", k->option);
	return strstr(help, line) != NULL;
}

Test(listener_keys, kgatectl_help_lists_every_option)
{
	char *create = run_ctl("listener create --help"), *update = run_ctl("listener update --help");
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		char usage[96];
		if (!k->option)
			continue;
		snprintf(usage, sizeof(usage), "--%s ", k->option);
		cr_expect(lists_option(create, k) && strstr(create, usage), "create --help: --%s\n%s",
			  k->option, create);
		cr_expect_eq(lists_option(update, k), (k->flags & KG_LKF_UPDATE) != 0,
			     "update --help: --%s\n%s", k->option, update);
	}
	free(create);
	free(update);
}

/* Text of a man page from the line starting with `from` to the next one
 * starting with `to`. */
static char *man_section(const char *page, const char *from, const char *to)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/doc/%s", KG_SOURCE_DIR, page);
	FILE *f = fopen(path, "re");
	cr_assert_not_null(f, "%s", path);
	char *text = read_all(f);
	fclose(f);
	char *start = strstr(text, from);
	cr_assert_not_null(start, "%s: %s", page, from);
	char *end = strstr(start + strlen(from), to);
	cr_assert_not_null(end, "%s: %s", page, to);
	*end = '\0';
	memmove(text, start, strlen(start) + 1);
	return text;
}

/* The man pages are written by hand: every option and key is in them,
 * with the table's ranges and defaults. */
Test(listener_keys, man_pages_name_every_key)
{
	char *create = man_section("kgatectl.8.scd", "\n## listener create", "\n## ");
	char *update = man_section("kgatectl.8.scd", "\n## listener update", "\n## ");
	char *listeners = man_section("kgate.json.5.scd", "\n# LISTENERS", "\n# ");
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		char word[96];
		if (k->option) {
			snprintf(word, sizeof(word), "*--%s*", k->option);
			cr_expect(strstr(create, word), "kgatectl(8) listener create: %s", word);
			cr_expect_eq(strstr(update, word) != NULL, (k->flags & KG_LKF_UPDATE) != 0,
				     "kgatectl(8) listener update: %s", word);
		}
		/* The key's paragraph of kgate.json(5), spaces made single. */
		snprintf(word, sizeof(word), "*%s*", k->key);
		char *at = strstr(listeners, word), para[2048] = "";
		cr_assert_not_null(at, "kgate.json(5) LISTENERS: %s", word);
		char *end = strstr(at, "\n\n");
		size_t n = 0;
		for (const char *c = at; c < (end ? end : at + strlen(at)) && n + 1 < sizeof(para); c++)
			if (!(strchr(" \t\n", *c) && n && para[n - 1] == ' '))
				para[n++] = strchr(" \t\n", *c) ? ' ' : *c;
		para[n] = '\0';
		char want[96];
		if (k->type == KG_KEY_UINT) {
			snprintf(want, sizeof(want), "%u to %u", k->min, k->max);
			cr_expect(strstr(para, want), "kgate.json(5) %s: \"%s\"\n%s", k->key, want, para);
		}
		if (k->type == KG_KEY_UINT && !(k->flags & KG_LKF_NO_DEFAULT)) {
			snprintf(want, sizeof(want), "(default %u)", k->def);
			cr_expect(strstr(para, want), "kgate.json(5) %s: \"%s\"\n%s", k->key, want, para);
		}
		for (size_t v = 0; k->type == KG_KEY_ENUM && k->names[v]; v++) {
			snprintf(want, sizeof(want), "*%s*", k->names[v]);
			cr_expect(strstr(para, want), "kgate.json(5) %s: %s\n%s", k->key, want, para);
		}
	}
	free(create);
	free(update);
	free(listeners);
}
