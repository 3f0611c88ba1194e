/* LD_PRELOAD shim: gives wrk (Debian's, libssl linked dynamically) a client
 * certificate and, on request, a full TLS handshake on every connection.
 *
 * wrk has no client-certificate option and keeps the last session on its
 * SSL objects across reconnects (it reuses them through SSL_clear), so a
 * "Connection: close" run would measure resumptions, not mutual-TLS
 * handshakes. The shim fixes both from outside wrk:
 *
 *   KG_CLIENT_CERT      PEM certificate (chain) file for the client
 *   KG_CLIENT_KEY       PEM private key file (defaults to KG_CLIENT_CERT)
 *   KG_FULL_HANDSHAKE=1 drop any cached session before each handshake
 *   KG_TLS_MAX=1.2|1.3  cap the protocol version (default: library's max)
 *   KG_GROUPS           key-exchange groups (default X25519:P-256)
 *
 * At exit it prints how many handshakes were full and how many resumed, so
 * a benchmark can prove what it measured. It never calls exit(): when a
 * setting cannot be applied it says why and makes SSL_CTX_new fail, which
 * wrk reports and stops on. */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

typedef SSL_CTX *(*ctx_new_fn)(const SSL_METHOD *);
typedef int (*connect_fn)(SSL *);
typedef int (*set_session_fn)(SSL *, SSL_SESSION *);

static ctx_new_fn real_ctx_new;
static connect_fn real_connect;
static set_session_fn real_set_session;
static bool full_handshake; /* KG_FULL_HANDSHAKE=1 */

static atomic_ulong hs_full;
static atomic_ulong hs_resumed;
static atomic_ulong hs_failed;
static atomic_ulong sessions_dropped;
static atomic_bool shim_used;

static bool env_flag(const char *name)
{
	const char *v = getenv(name);

	return v && strcmp(v, "1") == 0;
}

static void *next_symbol(const char *name)
{
	void *sym = dlsym(RTLD_NEXT, name);

	if (!sym)
		fprintf(stderr, "wrk_mtls_shim: cannot find %s: %s\n", name, dlerror());
	return sym;
}

/* Originals and settings are read once, before main(): every library is
 * mapped by then, and wrk's threads later read them without any race. */
__attribute__((constructor)) static void resolve_originals(void)
{
	real_ctx_new = (ctx_new_fn)next_symbol("SSL_CTX_new");
	real_connect = (connect_fn)next_symbol("SSL_connect");
	real_set_session = (set_session_fn)next_symbol("SSL_set_session");
	full_handshake = env_flag("KG_FULL_HANDSHAKE");
}

static int apply_tls_max(SSL_CTX *ctx)
{
	const char *v = getenv("KG_TLS_MAX");
	int version;

	if (!v || !*v)
		return 0;
	if (strcmp(v, "1.2") == 0)
		version = TLS1_2_VERSION;
	else if (strcmp(v, "1.3") == 0)
		version = TLS1_3_VERSION;
	else {
		fprintf(stderr, "wrk_mtls_shim: KG_TLS_MAX=%s: expected 1.2 or 1.3\n", v);
		return -1;
	}
	if (SSL_CTX_set_max_proto_version(ctx, version) != 1) {
		fprintf(stderr, "wrk_mtls_shim: cannot cap the TLS version at %s\n", v);
		return -1;
	}
	return 0;
}

static int configure_ctx(SSL_CTX *ctx)
{
	const char *cert = getenv("KG_CLIENT_CERT");
	const char *key = getenv("KG_CLIENT_KEY");
	const char *groups = getenv("KG_GROUPS");

	if (!groups || !*groups)
		groups = "X25519:P-256";
	if (SSL_CTX_set1_groups_list(ctx, groups) != 1) {
		fprintf(stderr, "wrk_mtls_shim: invalid KG_GROUPS '%s'\n", groups);
		return -1;
	}
	if (apply_tls_max(ctx) != 0)
		return -1;
	if (full_handshake) {
		/* Belt and braces with the per-connection drop in SSL_connect:
		 * no TLS 1.2 ticket is asked for. (wrk sets the cache mode
		 * itself after this returns, so the cache mode is left alone.) */
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	}
	if (!cert || !*cert) {
		fprintf(stderr, "wrk_mtls_shim: KG_CLIENT_CERT not set, no client certificate\n");
		return 0;
	}
	if (!key || !*key)
		key = cert;
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		fprintf(stderr, "wrk_mtls_shim: cannot load client certificate %s:\n", cert);
		ERR_print_errors_fp(stderr);
		return -1;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		fprintf(stderr, "wrk_mtls_shim: cannot load client key %s:\n", key);
		ERR_print_errors_fp(stderr);
		return -1;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		fprintf(stderr, "wrk_mtls_shim: key %s does not match certificate %s\n", key, cert);
		ERR_print_errors_fp(stderr);
		return -1;
	}
	return 0;
}

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
	SSL_CTX *ctx;

	if (!real_ctx_new)
		return NULL;
	ctx = real_ctx_new(method);
	if (!ctx)
		return NULL;
	atomic_store(&shim_used, true);
	if (configure_ctx(ctx) != 0) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* Some wrk builds hand a cached session back explicitly: in full-handshake
 * mode that is refused quietly (success, nothing attached). */
int SSL_set_session(SSL *ssl, SSL_SESSION *session)
{
	if (!real_set_session)
		return 0;
	if (session && full_handshake)
		return 1;
	return real_set_session(ssl, session);
}

int SSL_connect(SSL *ssl)
{
	int rc;

	if (!real_connect || !real_set_session)
		return -1;
	/* SSL_clear keeps the previous connection's session on the object;
	 * detach it before the first flight so the server sees no PSK and no
	 * session ID to resume. */
	if (full_handshake && SSL_in_before(ssl) && SSL_get0_session(ssl) &&
	    real_set_session(ssl, NULL) == 1)
		atomic_fetch_add(&sessions_dropped, 1);
	rc = real_connect(ssl);
	if (rc == 1) {
		if (SSL_session_reused(ssl))
			atomic_fetch_add(&hs_resumed, 1);
		else
			atomic_fetch_add(&hs_full, 1);
	} else {
		int err = SSL_get_error(ssl, rc);

		if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
			atomic_fetch_add(&hs_failed, 1);
	}
	return rc;
}

__attribute__((destructor)) static void report_counts(void)
{
	if (!atomic_load(&shim_used))
		return;
	fprintf(stderr,
		"wrk_mtls_shim: handshakes full=%lu resumed=%lu failed=%lu sessions_dropped=%lu\n",
		atomic_load(&hs_full), atomic_load(&hs_resumed), atomic_load(&hs_failed),
		atomic_load(&sessions_dropped));
}
