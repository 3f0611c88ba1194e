/* Stateful TLS sessions carried across an upgrade (tls_carry.h). */
#include "tls_carry.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>


#include "b64.h"

struct carried_session {
	unsigned char id[SSL_MAX_SSL_SESSION_ID_LENGTH];
	unsigned idlen;
	unsigned char *der;  /* NULL once resumed (or never decoded) */
	size_t len;
};

/* One per SSL_CTX that took carried sessions (ex_data, freed with it). */
struct carried {
	pthread_mutex_t lock;  /* lookups come from every worker */
	size_t n;
	struct carried_session s[];  /* sorted by id */
};

static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static int carried_idx = -1;

static void carried_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
			 void *argp)
{
	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	struct carried *c = ptr;
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++)
		OPENSSL_clear_free(c->s[i].der, c->s[i].len);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

static void idx_init(void)
{
	carried_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, carried_free);
}

static int cmp_id(const unsigned char *a, unsigned alen, const unsigned char *b, unsigned blen)
{
	int r = memcmp(a, b, alen < blen ? alen : blen);
	return r ? r : (int)alen - (int)blen;
}

static int cmp_session(const void *a, const void *b)
{
	const struct carried_session *x = a, *y = b;
	return cmp_id(x->id, x->idlen, y->id, y->idlen);
}

/* ---- export ---------------------------------------------------------------- */

/* Where the remove callback writes while kg_tls_carry_export flushes; only
 * the exporting thread has one (evictions on workers write nothing). */
struct sink {
	FILE *f;
	const char *listener;
	int written;
	int err;
};
static __thread struct sink *export_sink;

static void write_session(struct sink *k, SSL_SESSION *sess)
{
	unsigned idlen = 0;
	const unsigned char *id = SSL_SESSION_get_id(sess, &idlen);
	int len = i2d_SSL_SESSION(sess, NULL);
	if (len <= 0 || idlen == 0 || idlen > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return; /* nothing resumable to carry */
	unsigned char *der = malloc((size_t)len);
	char *b64 = NULL;
	unsigned char *p = der;
	if (!der || i2d_SSL_SESSION(sess, &p) != len || kg_b64_encode(der, (size_t)len, &b64) < 0) {
		k->err = ENOMEM;
		goto free_buffers;
	}
	if (fprintf(k->f, "%s\t", k->listener) < 0)
		k->err = EIO;
	for (unsigned i = 0; i < idlen && !k->err; i++)
		if (fprintf(k->f, "%02x", id[i]) < 0)
			k->err = EIO;
	if (!k->err && fprintf(k->f, "\t%s\n", b64) < 0)
		k->err = EIO;
	if (!k->err)
		k->written++;
free_buffers:
	if (der)
		OPENSSL_clear_free(der, (size_t)len);
	free(b64);
}

static void remove_cb(SSL_CTX *ctx, SSL_SESSION *sess)
{
	(void)ctx;
	if (export_sink && !export_sink->err)
		write_session(export_sink, sess);
}

int kg_tls_carry_export(SSL_CTX *ctx, const char *listener, FILE *f)
{
	struct sink k = {.f = f, .listener = listener};
	export_sink = &k;
	/* Time 0 removes every session, each through remove_cb, under the
	 * SSL_CTX's own lock: no other public way walks the cache safely
	 * while workers use it. */
	SSL_CTX_flush_sessions(ctx, 0);
	export_sink = NULL;
	return k.err ? -k.err : k.written;
}

/* ---- lookup ---------------------------------------------------------------- */

static SSL_SESSION *lookup_cb(SSL *ssl, const unsigned char *id, int len, int *copy)
{
	*copy = 0; /* the session returned is OpenSSL's to keep */
	struct carried *c = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), carried_idx);
	if (!c || len <= 0 || len > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return NULL;
	struct carried_session key = {.idlen = (unsigned)len};
	memcpy(key.id, id, (size_t)len);
	unsigned char *der = NULL;
	size_t der_len = 0;
	pthread_mutex_lock(&c->lock);
	struct carried_session *s = bsearch(&key, c->s, c->n, sizeof(c->s[0]), cmp_session);
	if (s && s->der) {
		/* Once: OpenSSL keeps a resumed session in its own cache (and a
		 * TLS 1.3 ticket is single use anyway). */
		der = s->der;
		der_len = s->len;
		s->der = NULL;
	}
	pthread_mutex_unlock(&c->lock);
	if (!der)
		return NULL;
	const unsigned char *p = der;
	SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &p, (long)der_len);
	OPENSSL_clear_free(der, der_len);
	return sess;
}

int kg_tls_carry_setup(SSL_CTX *ctx)
{
	if (pthread_once(&idx_once, idx_init) != 0 || carried_idx < 0)
		return -ENOMEM;
	SSL_CTX_sess_set_remove_cb(ctx, remove_cb);
	SSL_CTX_sess_set_get_cb(ctx, lookup_cb);
	return 0;
}

/* ---- import ---------------------------------------------------------------- */

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* line = "id-hex\tbase64" (the listener already matched) into s. */
static bool parse_session(char *line, struct carried_session *s)
{
	char *tab = strchr(line, '\t');
	if (!tab)
		return false;
	size_t hexlen = (size_t)(tab - line);
	if (hexlen == 0 || hexlen % 2 || hexlen / 2 > SSL_MAX_SSL_SESSION_ID_LENGTH)
		return false;
	for (size_t i = 0; i < hexlen; i += 2) {
		int hi = hex_value(line[i]), lo = hex_value(line[i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		s->id[i / 2] = (unsigned char)(hi << 4 | lo);
	}
	s->idlen = (unsigned)(hexlen / 2);
	const char *b64 = tab + 1;
	size_t blen = strlen(b64);
	if (blen == 0 || blen > (1u << 20))
		return false;
	return kg_b64_decode(b64, blen, &s->der, &s->len) == 0 && s->len > 0;
}

/* The line's listener field equals listener: the rest of the line, or NULL. */
static char *for_listener(char *line, const char *listener)
{
	size_t n = strlen(listener);
	return strncmp(line, listener, n) == 0 && line[n] == '\t' ? line + n + 1 : NULL;
}

int kg_tls_carry_import(SSL_CTX *ctx, const char *listener, const char *text)
{
	if (pthread_once(&idx_once, idx_init) != 0 || carried_idx < 0)
		return -ENOMEM;
	size_t lines = 0;
	for (const char *p = text; *p; p++)
		lines += *p == '\n';
	char *copy = strdup(text);
	struct carried *c = calloc(1, sizeof(*c) + (lines + 1) * sizeof(c->s[0]));
	if (!copy || !c || pthread_mutex_init(&c->lock, NULL) != 0) {
		free(copy);
		free(c);
		return -ENOMEM;
	}
	char *save = NULL;
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *rest = for_listener(line, listener);
		if (rest && c->n <= lines && parse_session(rest, &c->s[c->n]))
			c->n++;
	}
	free(copy);
	qsort(c->s, c->n, sizeof(c->s[0]), cmp_session);
	int taken = (int)c->n;
	/* One import per SSL_CTX; a second one replaces the first. */
	carried_free(NULL, SSL_CTX_get_ex_data(ctx, carried_idx), NULL, 0, 0, NULL);
	if (SSL_CTX_set_ex_data(ctx, carried_idx, c) != 1) {
		carried_free(NULL, c, NULL, 0, 0, NULL);
		return -ENOMEM;
	}
	return taken;
}
