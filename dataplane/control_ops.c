/* Control operations (control_ops.h). Every change follows one path,
 * transact(): copy the document, change the copy, parse it as a
 * configuration (all schema rules apply), validate new certificate files,
 * build snapshots and bind sockets (apply prepare), persist, then publish
 * (apply commit). A failure before persisting changes nothing. */
#include "control_ops.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <kgate/control.h>
#include <kgate/limits.h>
#include <kgate/log.h>

#include "access.h"
#include "routes.h"
#include "cert_expiry.h"
#include "certs.h"
#include "crl.h"
#include "errors.h"
#include "group.h"
#include "health.h"
#include "listener.h"
#include "metrics.h"
#include "staple.h"
#include "worker.h"

#define ERRLEN 1024

static json_object *reply_new(bool ok)
{
	json_object *r = json_object_new_object();
	if (!r)
		return NULL;
	json_object_object_add(r, "version", json_object_new_int(KG_CONTROL_VERSION));
	json_object_object_add(r, "ok", json_object_new_boolean(ok));
	return r;
}

__attribute__((format(printf, 2, 0))) static json_object *verror(const char *code, const char *fmt,
								    va_list ap)
{
	char msg[ERRLEN];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* Messages echo request values (names, addresses): one line always,
	 * for kgatectl's output and for scripts (found by fuzz_control). */
	kg_text_one_line(msg);
	json_object *r = reply_new(false), *e = json_object_new_object();
	if (!r || !e) {
		json_object_put(r);
		json_object_put(e);
		return NULL;
	}
	json_object_object_add(e, "code", json_object_new_string(code));
	json_object_object_add(e, "message", json_object_new_string(msg));
	json_object_object_add(r, "error", e);
	return r;
}

json_object *kg_ops_error(const char *code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	json_object *r = verror(code, fmt, ap);
	va_end(ap);
	return r;
}

static json_object *ok(json_object *result)
{
	json_object *r = reply_new(true);
	if (!r) {
		json_object_put(result);
		return NULL;
	}
	json_object_object_add(r, "result", result ? result : json_object_new_object());
	return r;
}

/* ---- arguments -------------------------------------------------------- */

/* A string member; required ones missing give an invalid_argument reply in
 * *fail. Returns the string or NULL. */
static const char *arg_str(json_object *args, const char *key, bool required,
			   json_object **fail)
{
	json_object *v = NULL;
	if (!json_object_object_get_ex(args, key, &v) || json_object_is_type(v, json_type_null)) {
		if (required && !*fail)
			*fail = kg_ops_error(KG_ERR_INVALID, "args.%s: is required", key);
		return NULL;
	}
	if (!json_object_is_type(v, json_type_string)) {
		if (!*fail)
			*fail = kg_ops_error(KG_ERR_INVALID, "args.%s: expected a string", key);
		return NULL;
	}
	return json_object_get_string(v);
}

/* The object doc[key], made (empty) when absent. */
static json_object *doc_object(json_object *doc, const char *key)
{
	json_object *c = NULL;
	if (!json_object_object_get_ex(doc, key, &c) || !json_object_is_type(c, json_type_object)) {
		c = json_object_new_object();
		json_object_object_add(doc, key, c);
	}
	return c;
}

static json_object *doc_certs(json_object *doc)
{
	return doc_object(doc, "certificates");
}

static json_object *doc_listeners(json_object *doc)
{
	json_object *l = NULL;
	if (!json_object_object_get_ex(doc, "listeners", &l) ||
	    !json_object_is_type(l, json_type_array)) {
		l = json_object_new_array();
		json_object_object_add(doc, "listeners", l);
	}
	return l;
}

static const char *obj_str(json_object *o, const char *key)
{
	json_object *v = NULL;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Index of the listener called name in the document's array, or -1. */
static int find_listener(json_object *doc, const char *name)
{
	json_object *arr = doc_listeners(doc);
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		const char *n = obj_str(json_object_array_get_idx(arr, i), "name");
		if (n && strcmp(n, name) == 0)
			return (int)i;
	}
	return -1;
}

static const struct kg_listener_conf *find_conf(const struct kg_config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->n_listeners; i++)
		if (strcmp(cfg->listeners[i].name, name) == 0)
			return &cfg->listeners[i];
	return NULL;
}

static json_object *doc_copy(json_object *doc)
{
	json_object *copy = NULL;
	if (json_object_deep_copy(doc, &copy, NULL) != 0)
		return NULL;
	return copy;
}

/* ---- the transaction --------------------------------------------------- */

static bool cert_entry_changed(json_object *old_doc, json_object *new_doc, const char *name)
{
	json_object *a = NULL, *b = NULL;
	if (!name)
		return false;
	json_object_object_get_ex(doc_certs(old_doc), name, &a);
	json_object_object_get_ex(doc_certs(new_doc), name, &b);
	return !json_object_equal(a, b);
}

static bool tls_certs_changed(json_object *old_doc, json_object *new_doc,
			      const struct kg_listener_conf *t)
{
	return (t->certificate && cert_entry_changed(old_doc, new_doc, t->certificate->name)) ||
	       (t->ca && cert_entry_changed(old_doc, new_doc, t->ca->name));
}

/* Whether a certificate entry l uses changed: its own certificate and CA,
 * or one of its sni entries'. */
static bool certs_changed(json_object *old_doc, json_object *new_doc,
			  const struct kg_listener_conf *l)
{
	bool changed = tls_certs_changed(old_doc, new_doc, l);
	for (size_t e = 0; e < l->n_sni && !changed; e++)
		changed = tls_certs_changed(old_doc, new_doc, l->sni[e].tls);
	return changed;
}

/* Messages from certs.c name files; for a change made through the socket
 * those are kgated's own copies, so say which upload field instead. */
static void name_fields(char *msg, size_t len, const struct kg_cert_conf *c)
{
	const char *paths[] = {c->cert_path, c->key_path, c->crl_path};
	const char *labels[] = {"the uploaded cert", "the uploaded key", "the uploaded crl"};
	for (size_t i = 0; i < 3; i++) {
		char *at = paths[i] ? strstr(msg, paths[i]) : NULL;
		if (!at)
			continue;
		size_t plen = strlen(paths[i]), llen = strlen(labels[i]);
		size_t tail = strlen(at + plen) + 1;
		if ((size_t)(at - msg) + llen + tail > len)
			continue;
		memmove(at + llen, at + plen, tail);
		memcpy(at, labels[i], llen);
	}
}

/* Validates the certificate entries of cfg that are new or changed. */
static int validate_new_certs(json_object *old_doc, json_object *new_doc,
			      const struct kg_config *cfg, char *err, size_t errlen)
{
	for (size_t i = 0; i < cfg->n_certs; i++) {
		const struct kg_cert_conf *c = &cfg->certs[i];
		char msg[512];
		if (!cert_entry_changed(old_doc, new_doc, c->name))
			continue;
		int r = kg_cert_validate(c, msg, sizeof(msg));
		if (r < 0) {
			name_fields(msg, sizeof(msg), c);
			snprintf(err, errlen, "certificate %s: %s", c->name, msg);
			return r;
		}
	}
	return 0;
}

static const char *apply_code(int ret)
{
	if (ret == -ENOSPC)
		return KG_ERR_LIMIT;
	if (ret == -EADDRINUSE)
		return KG_ERR_ADDRESS_IN_USE;
	return KG_ERR_INVALID; /* a snapshot that cannot be built, an address not here */
}

/* Writes kernel-chosen ports (the document said 0) back into the document
 * so a restart listens on the same port. */
static void patch_ports(json_object *doc, const struct kg_config *cfg)
{
	json_object *arr = doc_listeners(doc);
	for (size_t i = 0; i < cfg->n_listeners && i < json_object_array_length(arr); i++) {
		json_object *l = json_object_array_get_idx(arr, i), *p = NULL;
		const struct sockaddr_storage *a = &cfg->listeners[i].bind;
		unsigned port = a->ss_family == AF_INET ?
					ntohs(((const struct sockaddr_in *)a)->sin_port) :
					ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
		if (json_object_object_get_ex(l, "port", &p) && json_object_get_int(p) == 0 &&
		    port != 0)
			json_object_object_add(l, "port", json_object_new_int((int)port));
	}
}

/* A copy of a listener's entry without the backends' administrative
 * state keys ("drained", "disabled"). */
static json_object *without_admin(json_object *l)
{
	json_object *copy = doc_copy(l), *arr = NULL;
	if (copy && json_object_object_get_ex(copy, "backends", &arr) &&
	    json_object_is_type(arr, json_type_array))
		for (size_t i = 0; i < json_object_array_length(arr); i++) {
			json_object *m = json_object_array_get_idx(arr, i);
			json_object_object_del(m, "drained");
			json_object_object_del(m, "disabled");
		}
	return copy;
}

/* Whether a listener needs a new snapshot: draining or disabling a member
 * does not (it is applied to the running health group, where the member's
 * open connections are counted and the workers look for cuts). */
static bool listener_changed(json_object *old, json_object *new)
{
	if (!old)
		return true;
	json_object *a = without_admin(old), *b = without_admin(new);
	bool changed = !a || !b || !json_object_equal(a, b);
	json_object_put(a);
	json_object_put(b);
	return changed;
}

/* Makes the running inline groups follow the document's drained and
 * disabled flags (apply.c does the named groups). */
static void sync_admin(struct kg_ops *ops, const struct kg_config *cfg)
{
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct kg_listener_conf *lc = &cfg->listeners[i];
		struct kg_listener_slot *slot = kg_runtime_find(ops->rt, lc->name);
		struct kg_listener_rt *snap = slot ? kg_listener_acquire(slot) : NULL;
		struct kg_group_rt *own = snap ? kg_listener_find_group(snap, "") : NULL;
		if (own)
			kg_group_sync_admin(own, &lc->own);
		kg_listener_put(snap);
	}
}

/* Whether the listener called name is enabled in doc (absent: false). */
static bool enabled_in(json_object *doc, const char *name)
{
	int i = find_listener(doc, name);
	json_object *v = NULL;
	if (i < 0)
		return false;
	if (!json_object_object_get_ex(json_object_array_get_idx(doc_listeners(doc), (size_t)i),
				       "enabled", &v))
		return true;
	return json_object_get_boolean(v);
}

/* Document-only mode (ops->rt NULL, kgatectl --store): what
 * kg_apply_prepare would refuse, short of binding sockets, judged for the
 * instances rather than this machine. A changed listener's snapshot
 * (SSL_CTX, balancer, forwarding plan) must build with every kernel
 * feature available (the instances probe their own kernels; this one is
 * not theirs). A listener the change starts (new, stopped before, or
 * must_start) must pass kg_listener_certs_check, as kgated refuses to
 * start one whose certificate has expired since it was stored; one that
 * stays enabled is tolerated as apply.c tolerates a failed one. */
static int check_listener(struct kg_ops *ops, struct kg_config_ref *ref,
			  const struct kg_listener_conf *lc, size_t i, bool changed,
			  struct kg_group_rt *const *named, const struct kg_kernel_caps *caps,
			  char *err, size_t errlen);

static int check_document(struct kg_ops *ops, struct kg_config_ref *ref, const bool *changed,
			  char *err, size_t errlen)
{
	static const struct kg_kernel_caps all = {.ktls = true, .sockmap = true};
	const struct kg_config *cfg = ref->cfg;
	struct kg_group_rt *named[KG_MAX_GROUPS] = {NULL};
	int ret = kg_groups_build(ref, NULL, 0, named, NULL, err, errlen);
	for (size_t i = 0; ret == 0 && i < cfg->n_listeners; i++)
		ret = check_listener(ops, ref, &cfg->listeners[i], i, changed[i], named, &all, err,
				     errlen);
	kg_groups_put(named, cfg->n_groups);
	return ret;
}

/* check_document's judgement of listener i (lc). */
static int check_listener(struct kg_ops *ops, struct kg_config_ref *ref,
			  const struct kg_listener_conf *lc, size_t i, bool changed,
			  struct kg_group_rt *const *named, const struct kg_kernel_caps *caps,
			  char *err, size_t errlen)
{
	{
		bool starts = lc->enabled && (!enabled_in(ops->st->doc, lc->name) ||
					      (ops->retry && strcmp(ops->retry, lc->name) == 0));
		if (starts) {
			char why[KG_FAILED_MAX];
			if (kg_listener_certs_check(lc, why, sizeof(why)) < 0) {
				snprintf(err, errlen, "listener %s cannot start: %s", lc->name, why);
				return -EINVAL;
			}
		}
		if (!changed && !starts)
			return 0;
		char where[32];
		snprintf(where, sizeof(where), "listeners[%zu]", i);
		struct kg_listener_rt *snap = kg_listener_build(NULL, caps, NULL, ref, lc, named, where,
							       err, errlen);
		if (!snap)
			return -EINVAL;
		kg_listener_put(snap);
	}
	return 0;
}

/* Takes ownership of new_doc. Returns NULL on success (the caller builds
 * its own result) or an error reply; either way the state is consistent.
 * Without a runtime (document-only mode) the document is validated and
 * persisted, and nothing is applied. */
static json_object *transact(struct kg_ops *ops, json_object *new_doc)
{
	char err[ERRLEN];
	json_object *fail = NULL;
	bool changed[KG_MAX_LISTENERS + 1];
	struct kg_config_ref *ref = NULL;

	if (!ops->st) {
		fail = kg_ops_error(KG_ERR_INVALID, "kgated runs without --state-dir: "
				    "changes cannot be persisted, so none are accepted");
		goto out;
	}
	struct kg_config *cfg = kg_state_parse(ops->st, new_doc, err, sizeof(err));
	if (!cfg) {
		fail = kg_ops_error(KG_ERR_INVALID, "%s", err);
		goto out;
	}
	ref = kg_config_ref_new(cfg);
	if (!ref) {
		kg_config_free(cfg);
		fail = kg_ops_error(KG_ERR_INTERNAL, "out of memory");
		goto out;
	}
	if (validate_new_certs(ops->st->doc, new_doc, cfg, err, sizeof(err)) < 0) {
		fail = kg_ops_error(KG_ERR_INVALID, "%s", err);
		goto out;
	}
	if (cfg->n_listeners > KG_MAX_LISTENERS) {
		fail = kg_ops_error(KG_ERR_LIMIT, "at most %d listeners", KG_MAX_LISTENERS);
		goto out;
	}
	json_object *new_arr = doc_listeners(new_doc), *old_arr = doc_listeners(ops->st->doc);
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		json_object *nl = json_object_array_get_idx(new_arr, i);
		int oi = find_listener(ops->st->doc, cfg->listeners[i].name);
		json_object *ol = oi >= 0 ? json_object_array_get_idx(old_arr, (size_t)oi) : NULL;
		changed[i] = listener_changed(ol, nl) ||
			     certs_changed(ops->st->doc, new_doc, &cfg->listeners[i]) ||
			     (ops->retry && strcmp(ops->retry, cfg->listeners[i].name) == 0);
	}
	int ret = ops->rt ? kg_apply_prepare(ops->rt, ref, changed, false, ops->retry, &ops->plan,
					     err, sizeof(err))
			  : check_document(ops, ref, changed, err, sizeof(err));
	if (ret < 0) {
		fail = kg_ops_error(apply_code(ret), "%s", err);
		goto out;
	}
	patch_ports(new_doc, cfg);
	if (kg_state_commit(ops->st, new_doc, err, sizeof(err)) < 0) {
		if (ops->rt)
			kg_apply_abort(&ops->plan);
		log_err("state.commit_failed", KV("reason", err));
		fail = kg_ops_error(KG_ERR_PERSIST, "state not saved, nothing changed: %s", err);
		goto out;
	}
	new_doc = NULL; /* owned by the state now */
	if (ops->rt) {
		kg_apply_commit(ops->rt, &ops->plan);
		sync_admin(ops, cfg);
		atomic_store(&ops->rt->drain_timeout_ms, cfg->drain_timeout_ms);
		atomic_store(&ops->rt->withdraw_delay_ms, cfg->withdraw_delay_ms);
	}
	kg_config_ref_put(ops->cur);
	ops->cur = ref;
	ops->generation++;
	ref = NULL;
out:
	kg_config_ref_put(ref);
	json_object_put(new_doc);
	/* Files stored for a refused change, or left by a replaced one. */
	if (ops->st)
		kg_state_gc(ops->st);
	return fail;
}

int kg_ops_apply_initial(struct kg_ops *ops, char *err, size_t errlen)
{
	bool changed[KG_MAX_LISTENERS + 1];
	const struct kg_config *cfg = ops->cur->cfg;
	if (cfg->n_listeners > KG_MAX_LISTENERS)
		return kg_fail(err, errlen, E2BIG, "listeners: at most %d", KG_MAX_LISTENERS);
	for (size_t i = 0; i < cfg->n_listeners; i++)
		changed[i] = true;
	int r = kg_apply_prepare(ops->rt, ops->cur, changed, true, NULL, &ops->plan, err, errlen);
	if (r < 0)
		return r;
	kg_apply_commit(ops->rt, &ops->plan);
	atomic_store(&ops->rt->drain_timeout_ms, cfg->drain_timeout_ms);
	atomic_store(&ops->rt->withdraw_delay_ms, cfg->withdraw_delay_ms);
	if (ops->st)
		patch_ports(ops->st->doc, cfg);
	return 0;
}

/* ---- certificates ------------------------------------------------------- */

static void add_time(json_object *o, const char *key, const ASN1_TIME *t)
{
	struct tm tm;
	char buf[32];
	if (!t || ASN1_TIME_to_tm(t, &tm) != 1) {
		json_object_object_add(o, key, NULL);
		return;
	}
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
	json_object_object_add(o, key, json_object_new_string(buf));
}

/* An RFC 3339 UTC time; null for 0 (unknown) or an earlier time. */
static void add_unix_time(json_object *o, const char *key, time_t t)
{
	char buf[32];
	kg_format_rfc3339(t, buf, sizeof(buf));
	json_object_object_add(o, key, t > 0 ? json_object_new_string(buf) : NULL);
}

/* The running SSL_CTX's OCSP staple (staple.h); null without stapling. */
static json_object *staple_json(SSL_CTX *ctx)
{
	struct kg_staple_info si;
	kg_staple_info(ctx, &si);
	if (!si.on)
		return NULL;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "responder", json_object_new_string(si.url));
	json_object_object_add(o, "stapled", json_object_new_boolean(si.have));
	json_object_object_add(o, "status", si.status ? json_object_new_string(si.status) : NULL);
	add_unix_time(o, "next_update", si.next_update);
	add_unix_time(o, "refresh_at", si.refresh_at);
	json_object_object_add(o, "error", si.error[0] ? json_object_new_string(si.error) : NULL);
	return o;
}

static void add_name(json_object *o, const char *key, const X509_NAME *n)
{
	char buf[512] = "";
	BIO *b = BIO_new(BIO_s_mem());
	if (b && X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253) >= 0) {
		int len = BIO_read(b, buf, sizeof(buf) - 1);
		buf[len > 0 ? len : 0] = '\0';
	}
	BIO_free(b);
	json_object_object_add(o, key, json_object_new_string(buf));
}

static void add_sans(json_object *o, X509 *x)
{
	json_object *arr = json_object_new_array();
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		char buf[300];
		if (g->type == GEN_DNS) {
			snprintf(buf, sizeof(buf), "DNS:%.*s", ASN1_STRING_length(g->d.dNSName),
				 (const char *)ASN1_STRING_get0_data(g->d.dNSName));
		} else if (g->type == GEN_IPADD && g->d.iPAddress->length == 4) {
			const unsigned char *p = g->d.iPAddress->data;
			snprintf(buf, sizeof(buf), "IP:%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
		} else if (g->type == GEN_IPADD && g->d.iPAddress->length == 16) {
			char a[INET6_ADDRSTRLEN];
			inet_ntop(AF_INET6, g->d.iPAddress->data, a, sizeof(a));
			snprintf(buf, sizeof(buf), "IP:%s", a);
		} else {
			continue;
		}
		json_object_array_add(arr, json_object_new_string(buf));
	}
	GENERAL_NAMES_free(gens);
	json_object_object_add(o, "sans", arr);
}

static void add_fingerprint(json_object *o, X509 *x)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;
	char hex[3 * EVP_MAX_MD_SIZE + 1] = "";
	if (X509_digest(x, EVP_sha256(), md, &len) == 1)
		for (unsigned i = 0; i < len; i++)
			snprintf(hex + 3 * i, 4, "%02X%s", md[i], i + 1 < len ? ":" : "");
	json_object_object_add(o, "sha256", json_object_new_string(hex));
}

/* Facts about the first certificate in a PEM file. */
static void describe_file(json_object *o, const char *path)
{
	X509 *x = kg_pem_read_cert(path);
	if (!x) {
		json_object_object_add(o, "error", json_object_new_string("cannot read certificate"));
		return;
	}
	add_name(o, "subject", X509_get_subject_name(x));
	add_name(o, "issuer", X509_get_issuer_name(x));
	add_sans(o, x);
	add_time(o, "not_before", X509_get0_notBefore(x));
	add_time(o, "not_after", X509_get0_notAfter(x));
	add_fingerprint(o, x);
	X509_free(x);
}


/* The CRL in force (crl.h), or the file's before anything loaded it, and
 * what the reloads did. The same keys either way (null when unknown): a
 * document-only answer (kgatectl --store) has nothing in force. */
static void describe_crl(json_object *o, const struct kg_cert_conf *c)
{
	struct kg_crl_info ci;
	json_object *j = json_object_new_object();
	bool in_force = kg_crl_info(c, &ci);
	X509_CRL *crl = in_force ? NULL : kg_pem_read_crl(c->crl_path);
	if (in_force) {
		add_unix_time(j, "last_update", ci.last_update);
		add_unix_time(j, "next_update", ci.has_next_update ? ci.next_update : 0);
		json_object_object_add(j, "revoked", json_object_new_int64((int64_t)ci.revoked));
	} else if (crl) {
		STACK_OF(X509_REVOKED) *rev = X509_CRL_get_REVOKED(crl);
		add_time(j, "last_update", X509_CRL_get0_lastUpdate(crl));
		add_time(j, "next_update", X509_CRL_get0_nextUpdate(crl));
		json_object_object_add(j, "revoked", json_object_new_int(rev ? sk_X509_REVOKED_num(rev) : 0));
		X509_CRL_free(crl);
	} else {
		json_object_object_add(j, "last_update", NULL);
		json_object_object_add(j, "next_update", NULL);
		json_object_object_add(j, "revoked", NULL);
	}
	json_object_object_add(j, "state", json_object_new_string(
		in_force ? kg_crl_state(&ci, time(NULL)) : "not loaded"));
	json_object_object_add(j, "source", in_force ? json_object_new_string(ci.source) : NULL);
	add_unix_time(j, "applied_at", in_force ? ci.applied_at : 0);
	json_object_object_add(j, "load_ms", in_force ?
			       json_object_new_double((double)ci.load_us / 1000.0) : NULL);
	json_object_object_add(j, "reloads_applied", json_object_new_int64((int64_t)ci.applied));
	json_object_object_add(j, "reloads_refused", json_object_new_int64((int64_t)ci.refused));
	json_object_object_add(j, "last_refusal", ci.last_refusal[0] ?
			       json_object_new_string(ci.last_refusal) : NULL);
	json_object_object_add(o, "crl", j);
}

static bool tls_uses(const struct kg_listener_conf *l, const char *name)
{
	return (l->certificate && strcmp(l->certificate->name, name) == 0) ||
	       (l->ca && strcmp(l->ca->name, name) == 0);
}

/* The listeners whose settings or sni entries name the certificate. */
static json_object *used_by(const struct kg_config *cfg, const char *name)
{
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct kg_listener_conf *l = &cfg->listeners[i];
		bool uses = tls_uses(l, name);
		for (size_t e = 0; e < l->n_sni && !uses; e++)
			uses = tls_uses(l->sni[e].tls, name);
		if (uses)
			json_object_array_add(arr, json_object_new_string(l->name));
	}
	return arr;
}

/* days_left: whole days until the first certificate's notAfter (negative
 * once expired); crl_days_left: until the CRL's nextUpdate, null without a
 * CRL or a nextUpdate. Both null when the files cannot be read. */
static void add_days_left(json_object *o, const struct kg_cert_conf *c)
{
	struct kg_cert_dates d;
	time_t now = time(NULL);
	bool read = kg_cert_dates_read(c, &d) == 0;
	json_object_object_add(o, "days_left", read ? json_object_new_int64(
				       kg_expiry_days_left(d.not_after, now)) : NULL);
	json_object_object_add(o, "crl_days_left", read && d.has_next_update ?
			       json_object_new_int64(kg_expiry_days_left(d.next_update, now)) : NULL);
}

static json_object *cert_json(const struct kg_config *cfg, const struct kg_cert_conf *c,
			      bool detail)
{
	json_object *o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(c->name));
	json_object_object_add(o, "type",
			       json_object_new_string(c->type == KG_CERT_SERVER ? "server" : "ca"));
	describe_file(o, c->cert_path);
	add_days_left(o, c);
	if (c->type == KG_CERT_CA && c->crl_path && detail)
		describe_crl(o, c);
	if (c->type == KG_CERT_CA) {
		struct kg_crl_info ci;
		json_object_object_add(o, "has_crl", json_object_new_boolean(c->crl_path != NULL));
		json_object_object_add(o, "crl_state", !c->crl_path ? NULL : json_object_new_string(
			kg_crl_info(c, &ci) ? kg_crl_state(&ci, time(NULL)) : "not loaded"));
		json_object_object_add(o, "crl_expired", json_object_new_string(
			c->crl_expired == KG_CRL_EXPIRED_WARN ? "warn" : "reject"));
		json_object_object_add(o, "crl_url", c->crl_url ? json_object_new_string(c->crl_url)
								 : NULL);
		json_object_object_add(o, "crl_refresh_s", c->crl_url ?
				       json_object_new_int64(c->crl_refresh_s) : NULL);
	}
	json_object_object_add(o, "used_by", used_by(cfg, c->name));
	return o;
}

static json_object *op_cert_list(struct kg_ops *ops, json_object *args)
{
	(void)args;
	const struct kg_config *cfg = ops->cur->cfg;
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < cfg->n_certs; i++)
		json_object_array_add(arr, cert_json(cfg, &cfg->certs[i], false));
	return ok(arr);
}

static const struct kg_cert_conf *cert_arg(struct kg_ops *ops, json_object *args,
					   json_object **fail)
{
	const char *name = arg_str(args, "name", true, fail);
	if (!name)
		return NULL;
	const struct kg_cert_conf *c = kg_config_find_cert(ops->cur->cfg, name);
	if (!c)
		*fail = kg_ops_error(KG_ERR_NOT_FOUND, "certificate %s: no such certificate", name);
	return c;
}

static json_object *op_cert_show(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL;
	const struct kg_cert_conf *c = cert_arg(ops, args, &fail);
	return c ? ok(cert_json(ops->cur->cfg, c, true)) : fail;
}

/* Stores the PEM members of args (cert, key, crl) as new files in the
 * state folder and sets them in entry. */
static json_object *store_pems(struct kg_ops *ops, const char *name, json_object *args,
			       json_object *entry, const char *const *allowed)
{
	static const char *const keys[] = {"cert", "key", "crl", NULL};
	json_object *fail = NULL;
	char err[ERRLEN];
	for (const char *const *k = keys; *k; k++) {
		const char *pem = arg_str(args, *k, false, &fail);
		if (fail)
			return fail;
		if (!pem)
			continue;
		bool ok_key = false;
		for (const char *const *a = allowed; *a; a++)
			ok_key |= strcmp(*a, *k) == 0;
		if (!ok_key)
			return kg_ops_error(KG_ERR_INVALID, "args.%s: not allowed here", *k);
		char *rel = kg_state_store_file(ops->st, name, *k, pem, strlen(pem),
						strcmp(*k, "key") == 0, err, sizeof(err));
		if (!rel)
			return kg_ops_error(KG_ERR_PERSIST, "state not saved, nothing changed: %s",
					    err);
		json_object_object_add(entry, *k, json_object_new_string(rel));
		free(rel);
	}
	return NULL;
}

/* The CRL settings of args (crl_expired, crl_url, crl_refresh_s), when
 * given, into entry (the parse that follows checks the values and that
 * entry is a ca). */
static json_object *set_crl_options(json_object *args, json_object *entry)
{
	static const char *const keys[] = {"crl_expired", "crl_url", NULL};
	json_object *fail = NULL, *v = NULL;
	for (const char *const *k = keys; *k && !fail; k++) {
		const char *s = arg_str(args, *k, false, &fail);
		if (s)
			json_object_object_add(entry, *k, json_object_new_string(s));
	}
	if (!fail && json_object_object_get_ex(args, "crl_refresh_s", &v)) {
		if (!json_object_is_type(v, json_type_int))
			return kg_ops_error(KG_ERR_INVALID, "args.crl_refresh_s: expected an integer");
		json_object_object_add(entry, "crl_refresh_s",
				       json_object_new_int64(json_object_get_int64(v)));
	}
	return fail;
}

static json_object *need_state(struct kg_ops *ops)
{
	if (ops->st)
		return NULL;
	return kg_ops_error(KG_ERR_INVALID, "kgated runs without --state-dir: changes cannot "
			    "be persisted, so none are accepted");
}

static json_object *op_cert_upload(struct kg_ops *ops, json_object *args)
{
	static const char *const server_keys[] = {"cert", "key", NULL};
	static const char *const ca_keys[] = {"cert", "crl", NULL};
	json_object *fail = need_state(ops);
	const char *name = arg_str(args, "name", true, &fail);
	const char *type = arg_str(args, "type", true, &fail);
	if (fail)
		return fail;
	if (!kg_cert_name_valid(name))
		return kg_ops_error(KG_ERR_INVALID, "name \"%.100s\": use 1-%d letters, digits "
				    "or - / . _ *", name, KG_NAME_MAX);
	bool server = strcmp(type, "server") == 0;
	if (!server && strcmp(type, "ca") != 0)
		return kg_ops_error(KG_ERR_INVALID, "type \"%.40s\": must be server or ca", type);
	if (kg_config_find_cert(ops->cur->cfg, name))
		return kg_ops_error(KG_ERR_EXISTS, "certificate %s: already exists "
				    "(use cert replace)", name);
	if (!arg_str(args, "cert", true, &fail) ||
	    (server && !arg_str(args, "key", true, &fail)))
		return fail;
	json_object *doc = doc_copy(ops->st->doc), *entry = json_object_new_object();
	if (!doc || !entry) {
		json_object_put(doc);
		json_object_put(entry);
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	}
	json_object_object_add(entry, "type", json_object_new_string(type));
	json_object_object_add(doc_certs(doc), name, entry);
	fail = store_pems(ops, name, args, entry, server ? server_keys : ca_keys);
	if (!fail)
		fail = set_crl_options(args, entry);
	if (fail) {
		json_object_put(doc);
		kg_state_gc(ops->st);
		return fail;
	}
	fail = transact(ops, doc);
	if (fail)
		return fail;
	log_notice("cert.uploaded", KV("cert", name), KV("type", type));
	return ok(cert_json(ops->cur->cfg, kg_config_find_cert(ops->cur->cfg, name), false));
}

/* cert.replace (cert, key, crl as the type allows) and cert.set_crl (crl
 * only): new files, one document change, the listeners using the
 * certificate rebuilt for new handshakes. */
static json_object *change_cert(struct kg_ops *ops, json_object *args, bool crl_only)
{
	static const char *const server_keys[] = {"cert", "key", NULL};
	static const char *const ca_keys[] = {"cert", "crl", NULL};
	static const char *const crl_keys[] = {"crl", NULL};
	json_object *fail = need_state(ops);
	const struct kg_cert_conf *c = fail ? NULL : cert_arg(ops, args, &fail);
	if (!c)
		return fail;
	char name[KG_NAME_MAX + 1];
	snprintf(name, sizeof(name), "%s", c->name);
	bool server = c->type == KG_CERT_SERVER;
	if (crl_only && server)
		return kg_ops_error(KG_ERR_INVALID, "certificate %s: a CRL belongs to a ca "
				    "certificate, this one is a server certificate", name);
	if (crl_only && !arg_str(args, "crl", true, &fail))
		return fail;
	if (!crl_only && server && (!arg_str(args, "cert", true, &fail) ||
				    !arg_str(args, "key", true, &fail)))
		return fail;
	if (!crl_only && !server && !arg_str(args, "cert", true, &fail))
		return fail;
	json_object *doc = doc_copy(ops->st->doc), *entry = NULL;
	if (!doc || !json_object_object_get_ex(doc_certs(doc), name, &entry)) {
		json_object_put(doc);
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	}
	if (!crl_only && !server)
		json_object_object_del(entry, "crl"); /* a new CA without a new CRL has none */
	fail = store_pems(ops, name, args, entry,
			  crl_only ? crl_keys : server ? server_keys : ca_keys);
	if (!fail)
		fail = set_crl_options(args, entry);
	if (fail) {
		json_object_put(doc);
		kg_state_gc(ops->st);
		return fail;
	}
	fail = transact(ops, doc);
	if (fail)
		return fail;
	log_notice(crl_only ? "cert.crl_updated" : "cert.replaced", KV("cert", name),
		   KV("effect", "new handshakes use it"));
	return ok(cert_json(ops->cur->cfg, kg_config_find_cert(ops->cur->cfg, name), false));
}

static json_object *op_cert_replace(struct kg_ops *ops, json_object *args)
{
	return change_cert(ops, args, false);
}

static json_object *op_cert_set_crl(struct kg_ops *ops, json_object *args)
{
	return change_cert(ops, args, true);
}

/* What deleting a certificate or a group shares: refused with in_use
 * while users (consumed: the listeners that use it) is not empty;
 * otherwise the document without doc[key][name] (and without doc[key]
 * when that empties it and drop_empty) is transacted. NULL when done,
 * else the reply. */
static json_object *delete_entry(struct kg_ops *ops, const char *what, const char *name,
				 json_object *users, const char *key, bool drop_empty)
{
	if (json_object_array_length(users) > 0) {
		json_object *r = kg_ops_error(KG_ERR_IN_USE, "%s %s: in use by listener(s) %s", what,
					      name, json_object_to_json_string(users));
		json_object_put(users);
		return r;
	}
	json_object_put(users);
	json_object *doc = doc_copy(ops->st->doc);
	if (!doc)
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	json_object *entries = doc_object(doc, key);
	json_object_object_del(entries, name);
	if (drop_empty && json_object_object_length(entries) == 0)
		json_object_object_del(doc, key);
	return transact(ops, doc);
}

static json_object *deleted(const char *name)
{
	json_object *r = json_object_new_object();
	json_object_object_add(r, "deleted", json_object_new_string(name));
	return ok(r);
}

static json_object *op_cert_delete(struct kg_ops *ops, json_object *args)
{
	json_object *fail = need_state(ops);
	const struct kg_cert_conf *c = fail ? NULL : cert_arg(ops, args, &fail);
	if (!c)
		return fail;
	char name[KG_NAME_MAX + 1];
	snprintf(name, sizeof(name), "%s", c->name);
	fail = delete_entry(ops, "certificate", name, used_by(ops->cur->cfg, name), "certificates",
			    false);
	if (fail)
		return fail;
	log_notice("cert.deleted", KV("cert", name));
	return deleted(name);
}

/* ---- listeners ----------------------------------------------------------- */

/* A member's fields in document-only mode, the same keys as a running
 * kgated's: the administrative state comes from the document, the rest
 * (health, connections, effective weight) is null. */
static void doc_member(json_object *m, enum kg_admin_state admin)
{
	json_object_object_add(m, "state", admin == KG_ADMIN_DISABLED ?
			       json_object_new_string("disabled") : NULL);
	json_object_object_add(m, "health", NULL);
	json_object_object_add(m, "status", NULL);
	json_object_object_add(m, "in_state_s", NULL);
	json_object_object_add(m, "drained", json_object_new_boolean(admin == KG_ADMIN_DRAINED));
	json_object_object_add(m, "disabled", json_object_new_boolean(admin == KG_ADMIN_DISABLED));
	json_object_object_add(m, "active", NULL);
	json_object_object_add(m, "effective_weight", NULL);
	json_object_object_add(m, "last_check", NULL);
}

/* The access rules by name, in order (the document has the rest). */
static json_object *rule_names(const struct kg_access *a)
{
	json_object *rules = a ? json_object_new_array() : NULL;
	for (size_t i = 0; i < kg_access_count(a); i++)
		json_object_array_add(rules, json_object_new_string(kg_access_rule_name(a, i)));
	return rules;
}

/* The sni entries: names, certificate and client policy of each; null
 * without entries. */
static json_object *sni_json(const struct kg_listener_conf *l)
{
	json_object *arr = l->n_sni ? json_object_new_array() : NULL;
	for (size_t i = 0; i < l->n_sni; i++) {
		const struct kg_listener_conf *t = l->sni[i].tls;
		json_object *e = json_object_new_object(), *names = json_object_new_array();
		for (size_t n = 0; n < l->sni[i].n_names; n++)
			json_object_array_add(names, json_object_new_string(l->sni[i].names[n]));
		json_object_object_add(e, "names", names);
		json_object_object_add(e, "certificate", json_object_new_string(t->certificate->name));
		json_object_object_add(e, "ca", t->ca ? json_object_new_string(t->ca->name) : NULL);
		json_object_object_add(e, "mutual_auth", json_object_new_string(
				kg_listener_keys[KG_LK_mutual_auth].names[t->mutual_auth]));
		json_object_object_add(e, "access_rules", rule_names(t->access_rules));
		json_object_object_add(e, "access_default", json_object_new_string(
				kg_listener_keys[KG_LK_access_default].names[t->access_default]));
		json_object_object_add(e, "policy", json_object_new_string(
				l->sni[i].own_policy ? "own" : "listener"));
		json_object_array_add(arr, e);
	}
	return arr;
}

/* The members of gc, one row each, with their running state from g (gc's
 * runtime; NULL when it does not run). live: a running kgated answers
 * (else the document-only fields, doc_member). */
static json_object *members_json(bool live, const struct kg_group_conf *gc, struct kg_group_rt *g)
{
	json_object *members = json_object_new_array();
	struct kg_health_member_info info[KG_MAX_BACKENDS];
	size_t n_info = g ? kg_health_snapshot(g->health, info, KG_MAX_BACKENDS, kg_now_ms()) : 0;
	for (size_t b = 0; b < gc->n_backends; b++) {
		json_object *m = json_object_new_object();
		const struct kg_health_member_info *h = NULL;
		for (size_t i = 0; i < n_info && !h; i++)
			if (strcmp(info[i].address, gc->backends[b].address) == 0)
				h = &info[i];
		json_object_object_add(m, "address", json_object_new_string(gc->backends[b].address));
		json_object_object_add(m, "weight", json_object_new_int((int)gc->backends[b].weight));
		if (!live) {
			doc_member(m, gc->backends[b].admin);
			json_object_array_add(members, m);
			continue;
		}
		json_object_object_add(m, "state", json_object_new_string(
				!h ? "-" : h->admin == KG_ADMIN_DISABLED ? "disabled" :
				h->in_rotation ? "up" : "down"));
		json_object_object_add(m, "health", json_object_new_string(
				!h ? "-" : !h->checked ? "not checked" : kg_member_state_name(h->state)));
		/* The cloud consoles' words: normal / abnormal. */
		json_object_object_add(m, "status", json_object_new_string(
				!h || !h->checked ? "-" :
				h->state == KG_MEMBER_HEALTHY ? "normal" :
				h->state == KG_MEMBER_UNHEALTHY ? "abnormal" : "pending"));
		json_object_object_add(m, "in_state_s", json_object_new_int64(
				h ? (int64_t)(h->ms_in_state / 1000) : 0));
		json_object_object_add(m, "drained", json_object_new_boolean(
				h && h->admin == KG_ADMIN_DRAINED));
		json_object_object_add(m, "disabled", json_object_new_boolean(
				h && h->admin == KG_ADMIN_DISABLED));
		json_object_object_add(m, "active", json_object_new_int64(h ? h->active : 0));
		json_object_object_add(m, "effective_weight",
				       json_object_new_int64(h ? h->effective_weight : 0));
		json_object_object_add(m, "last_check", h && h->has_result
				       ? json_object_new_string(h->last_reason) : NULL);
		json_object_array_add(members, m);
	}
	return members;
}

static json_object *listener_json(struct kg_ops *ops, const struct kg_listener_conf *l,
				  bool detail)
{
	char addr[80];
	json_object *o = json_object_new_object();
	/* Document-only mode (no runtime): what only a running kgated knows
	 * (listening or failed, health, connections, counters) is null,
	 * printed as "-"; a stopped listener is known from the document. */
	bool live = ops->rt != NULL;
	struct kg_listener_slot *slot = live ? kg_runtime_find(ops->rt, l->name) : NULL;
	kg_sockaddr_format(&l->bind, addr, sizeof(addr));
	json_object_object_add(o, "name", json_object_new_string(l->name));
	json_object_object_add(o, "protocol", json_object_new_string(
			kg_listener_keys[KG_LK_protocol].names[l->protocol]));
	json_object_object_add(o, "address", json_object_new_string(addr));
	bool failed = slot && slot->failed[0];
	json_object_object_add(o, "state", !live && l->enabled ? NULL : json_object_new_string(
			slot && slot->listening ? "running" : failed ? "failed" : "stopped"));
	json_object_object_add(o, "reason", failed ? json_object_new_string(slot->failed) : NULL);
	json_object_object_add(o, "certificate",
			       l->certificate ? json_object_new_string(l->certificate->name) : NULL);
	json_object_object_add(o, "ca", l->ca ? json_object_new_string(l->ca->name) : NULL);
	json_object_object_add(o, "mutual_auth", json_object_new_string(
			kg_listener_keys[KG_LK_mutual_auth].names[l->mutual_auth]));
	json_object_object_add(o, "backends", json_object_new_int(
			l->group ? (int)l->group->n_backends : 0));
	json_object_object_add(o, "group", l->group && l->group != &l->own ?
			       json_object_new_string(l->group->name) : NULL);
	json_object_object_add(o, "active", !live ? NULL : json_object_new_int64(
			slot ? (int64_t)atomic_load(&slot->active) : 0));
	if (!detail)
		return o;
	/* Every setting the table stores in kg_listener_conf, as the document
	 * writes it. */
	for (size_t i = 0; i < KG_LK_COUNT; i++) {
		const struct kg_listener_key *k = &kg_listener_keys[i];
		if (!k->field)
			continue;
		unsigned v = kg_listener_key_value(l, (enum kg_listener_key_id)i);
		json_object *j = k->type == KG_KEY_ENUM   ? json_object_new_string(k->names[v])
				 : k->type == KG_KEY_BOOL ? json_object_new_boolean(v)
							  : json_object_new_int64(v);
		json_object_object_add(o, k->key, j);
	}
	json_object_object_add(o, "access_rules", rule_names(l->access_rules));
	json_object_object_add(o, "sni", sni_json(l));
	json_object_object_add(o, "ocsp_url",
			       l->ocsp_url ? json_object_new_string(l->ocsp_url) : NULL);
	/* Member state comes from the running snapshot's groups, so it
	 * shows what new connections will see. */
	struct kg_listener_rt *snap = slot ? kg_listener_acquire(slot) : NULL;
	json_object_object_add(o, "ocsp_staple", staple_json(snap ? snap->ssl_ctx : NULL));
	json_object *members = l->group ? members_json(live, l->group, snap ? snap->group : NULL)
					: json_object_new_array();
	json_object_object_add(o, "backend_group", l->backend_group ?
			       json_object_new_string(l->backend_group->name) : NULL);
	json_object_object_add(o, "default_group", l->default_group ?
			       json_object_new_string(l->default_group->name) : NULL);
	/* The routes in order, and every named group the listener sends to
	 * with its members' health. */
	json_object *routes = l->routes ? json_object_new_array() : NULL;
	json_object *groups = json_object_new_array();
	for (size_t i = 0; i < kg_routes_count(l->routes); i++) {
		json_object *r = json_object_new_object();
		json_object_object_add(r, "name", json_object_new_string(kg_routes_name(l->routes, i)));
		json_object_object_add(r, "group", json_object_new_string(kg_routes_group(l->routes, i)));
		json_object_array_add(routes, r);
	}
	json_object_object_add(o, "routes", routes);
	for (size_t gi = 0; gi < ops->cur->cfg->n_groups; gi++) {
		const struct kg_group_conf *gc = &ops->cur->cfg->groups[gi];
		char how[32];
		if (!kg_listener_uses_group(l, gc, how, sizeof(how)))
			continue;
		json_object *g = json_object_new_object();
		json_object_object_add(g, "name", json_object_new_string(gc->name));
		json_object_object_add(g, "members", members_json(live, gc, snap ?
						kg_listener_find_group(snap, gc->name) : NULL));
		json_object_array_add(groups, g);
	}
	json_object_object_add(o, "groups", groups);
	kg_listener_put(snap);
	json_object_object_add(o, "members", members);
	if (slot)
		json_object_object_add(o, "counters", kg_listener_counters_json(slot));
	else if (!live)
		json_object_object_add(o, "counters", NULL); /* the same keys as kgated's */
	return o;
}

static json_object *op_listener_list(struct kg_ops *ops, json_object *args)
{
	(void)args;
	const struct kg_config *cfg = ops->cur->cfg;
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < cfg->n_listeners; i++)
		json_object_array_add(arr, listener_json(ops, &cfg->listeners[i], false));
	return ok(arr);
}

static const struct kg_listener_conf *listener_arg(struct kg_ops *ops, json_object *args,
						   const char *key, json_object **fail)
{
	const char *name = arg_str(args, key, true, fail);
	if (!name)
		return NULL;
	const struct kg_listener_conf *l = find_conf(ops->cur->cfg, name);
	if (!l)
		*fail = kg_ops_error(KG_ERR_NOT_FOUND, "listener %s: no such listener", name);
	return l;
}

static json_object *op_listener_show(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL;
	const struct kg_listener_conf *l = listener_arg(ops, args, "name", &fail);
	return l ? ok(listener_json(ops, l, true)) : fail;
}

/* Result of a listener change: the listener as it now runs. */
static json_object *listener_result(struct kg_ops *ops, const char *name)
{
	const struct kg_listener_conf *l = find_conf(ops->cur->cfg, name);
	return ok(l ? listener_json(ops, l, true) : NULL);
}

static json_object *op_listener_create(struct kg_ops *ops, json_object *args)
{
	json_object *fail = need_state(ops), *spec = NULL;
	if (fail)
		return fail;
	if (!json_object_object_get_ex(args, "listener", &spec) ||
	    !json_object_is_type(spec, json_type_object))
		return kg_ops_error(KG_ERR_INVALID, "args.listener: expected an object");
	const char *name = obj_str(spec, "name");
	if (!name)
		return kg_ops_error(KG_ERR_INVALID, "args.listener.name: is required");
	if (!kg_cert_name_valid(name))
		return kg_ops_error(KG_ERR_INVALID, "name \"%.100s\": use 1-%d letters, digits "
				    "or - / . _ *", name, KG_NAME_MAX);
	if (find_listener(ops->st->doc, name) >= 0)
		return kg_ops_error(KG_ERR_EXISTS, "listener %s: already exists", name);
	char keep[KG_NAME_MAX + 1];
	snprintf(keep, sizeof(keep), "%s", name);
	json_object *doc = doc_copy(ops->st->doc), *copy = doc_copy(spec);
	if (!doc || !copy) {
		json_object_put(doc);
		json_object_put(copy);
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	}
	json_object_array_add(doc_listeners(doc), copy);
	fail = transact(ops, doc);
	if (fail)
		return fail;
	log_notice("listener.created", KV("listener", keep));
	return listener_result(ops, keep);
}

/* A kind of document entry that edit_entry changes: how to find one in a
 * document, what to call it, and the result to answer with. */
struct entry_kind {
	const char *what;    /* "listener", "group": messages and the log key */
	const char *missing; /* "no such listener" */
	json_object *(*find)(json_object *doc, const char *name);
	json_object *(*result)(struct kg_ops *ops, const char *name);
};

/* Runs edit on a copy of the entry called name, then transacts; logs
 * event with the entry's name (and backend, when given). */
static json_object *edit_entry(struct kg_ops *ops, const struct entry_kind *kind, const char *name,
			       json_object *(*edit)(json_object *e, void *arg), void *arg,
			       const char *event, const char *backend)
{
	json_object *fail = need_state(ops);
	if (fail)
		return fail;
	char keep[KG_NAME_MAX + 1];
	snprintf(keep, sizeof(keep), "%s", name);
	json_object *doc = doc_copy(ops->st->doc);
	if (!doc)
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	json_object *entry = kind->find(doc, keep);
	if (!entry) {
		json_object_put(doc);
		return kg_ops_error(KG_ERR_NOT_FOUND, "%s %.100s: %s", kind->what, keep,
				    kind->missing);
	}
	fail = edit(entry, arg);
	if (fail) {
		json_object_put(doc);
		return fail;
	}
	fail = transact(ops, doc);
	if (fail)
		return fail;
	if (backend)
		log_notice(event, KV(kind->what, keep), KV("backend", backend));
	else
		log_notice(event, KV(kind->what, keep));
	return kind->result(ops, keep);
}

static json_object *listener_entry(json_object *doc, const char *name)
{
	int idx = find_listener(doc, name);
	return idx < 0 ? NULL : json_object_array_get_idx(doc_listeners(doc), (size_t)idx);
}

static const struct entry_kind listener_kind = {"listener", "no such listener", listener_entry,
						listener_result};

static json_object *edit_listener(struct kg_ops *ops, const char *name,
				  json_object *(*edit)(json_object *l, void *arg), void *arg,
				  const char *event, const char *backend)
{
	return edit_entry(ops, &listener_kind, name, edit, arg, event, backend);
}

/* An update's key: null removes it, anything else is copied in. 0 or
 * -ENOMEM. */
static int set_key(json_object *obj, const char *key, json_object *val)
{
	if (json_object_is_type(val, json_type_null)) {
		json_object_object_del(obj, key);
		return 0;
	}
	json_object *copy = NULL;
	if (json_object_deep_copy(val, &copy, NULL) != 0)
		return -ENOMEM;
	json_object_object_add(obj, key, copy);
	return 0;
}

static json_object *edit_update(json_object *l, void *arg)
{
	json_object *set = arg;
	json_object_object_foreach(set, key, val) {
		/* The table's KG_LKF_UPDATE keys; the rest (name, protocol,
		 * address, backends, enabled) need delete + create or their
		 * own verbs. */
		const struct kg_listener_key *k = kg_listener_key_find(key);
		if (!k || !(k->flags & KG_LKF_UPDATE))
			return kg_ops_error(KG_ERR_INVALID, "%.60s: cannot be changed by update "
					    "(name, protocol, bind and port need delete and create; "
					    "backends have their own verbs; enabled is listener "
					    "stop and start)", key);
		if (set_key(l, key, val) < 0)
			return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
		/* A group replaces the listener's own members (and their
		 * checks): the two exclude each other. */
		if (strcmp(key, "backend_group") == 0 && !json_object_is_type(val, json_type_null)) {
			json_object_object_del(l, "backends");
			json_object_object_del(l, "health_check");
		}
	}
	return NULL;
}

static json_object *op_listener_update(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL, *set = NULL;
	const char *name = arg_str(args, "name", true, &fail);
	if (!name)
		return fail;
	if (!json_object_object_get_ex(args, "set", &set) ||
	    !json_object_is_type(set, json_type_object) || json_object_object_length(set) == 0)
		return kg_ops_error(KG_ERR_INVALID, "args.set: expected an object with at least one key");
	return edit_listener(ops, name, edit_update, set, "listener.updated", NULL);
}

static json_object *edit_enabled(json_object *l, void *arg)
{
	if (arg)
		json_object_object_del(l, "enabled");
	else
		json_object_object_add(l, "enabled", json_object_new_boolean(false));
	return NULL;
}

static json_object *op_listener_stop(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL;
	const char *name = arg_str(args, "name", true, &fail);
	return name ? edit_listener(ops, name, edit_enabled, NULL, "listener.disabled", NULL) : fail;
}

/* A listener that failed to start (its certificate expired since it was
 * stored) is tried again: started, or the reason comes back. */
static json_object *op_listener_start(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL;
	const char *name = arg_str(args, "name", true, &fail);
	if (!name)
		return fail;
	ops->retry = name;
	json_object *r = edit_listener(ops, name, edit_enabled, (void *)1, "listener.enabled", NULL);
	ops->retry = NULL;
	return r;
}

static json_object *op_listener_delete(struct kg_ops *ops, json_object *args)
{
	json_object *fail = need_state(ops);
	const char *name = fail ? NULL : arg_str(args, "name", true, &fail);
	if (!name)
		return fail;
	char keep[KG_NAME_MAX + 1];
	snprintf(keep, sizeof(keep), "%s", name);
	int idx = find_listener(ops->st->doc, keep);
	if (idx < 0)
		return kg_ops_error(KG_ERR_NOT_FOUND, "listener %s: no such listener", keep);
	json_object *doc = doc_copy(ops->st->doc);
	if (!doc)
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	json_object_array_del_idx(doc_listeners(doc), (size_t)idx, 1);
	fail = transact(ops, doc);
	if (fail)
		return fail;
	return deleted(keep);
}

/* ---- backends ------------------------------------------------------------ */

struct backend_edit {
	enum { BE_ADD, BE_REMOVE, BE_WEIGHT, BE_DRAIN, BE_DISABLE, BE_ENABLE } op;
	struct sockaddr_storage addr;
	const char *address;
	json_object *weight; /* NULL: default */
};

static int find_backend(json_object *arr, const struct sockaddr_storage *addr)
{
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		const char *a = obj_str(json_object_array_get_idx(arr, i), "address");
		struct sockaddr_storage sa;
		socklen_t len;
		if (a && kg_parse_hostport(a, &sa, &len) == 0 && kg_sockaddr_equal(&sa, addr))
			return (int)i;
	}
	return -1;
}

static json_object *edit_backend(json_object *l, void *arg)
{
	struct backend_edit *e = arg;
	json_object *arr = NULL;
	if (!json_object_object_get_ex(l, "backends", &arr) ||
	    !json_object_is_type(arr, json_type_array)) {
		arr = json_object_new_array();
		json_object_object_add(l, "backends", arr);
	}
	int idx = find_backend(arr, &e->addr);
	if (e->op == BE_ADD) {
		if (idx >= 0)
			return kg_ops_error(KG_ERR_EXISTS, "backend %s: already a member", e->address);
		json_object *m = json_object_new_object();
		json_object_object_add(m, "address", json_object_new_string(e->address));
		if (e->weight)
			json_object_object_add(m, "weight", json_object_get(e->weight));
		json_object_array_add(arr, m);
		return NULL;
	}
	if (idx < 0)
		return kg_ops_error(KG_ERR_NOT_FOUND, "backend %s: not a member", e->address);
	if (e->op == BE_REMOVE) {
		if (json_object_array_length(arr) == 1)
			return kg_ops_error(KG_ERR_INVALID, "backend %s: the last member cannot be "
					    "removed (a group needs at least one backend)", e->address);
		json_object_array_del_idx(arr, (size_t)idx, 1);
		return NULL;
	}
	json_object *m = json_object_array_get_idx(arr, (size_t)idx);
	if (e->op == BE_WEIGHT) {
		json_object_object_add(m, "weight", json_object_get(e->weight));
		return NULL;
	}
	/* One administrative state at a time: each verb replaces the other. */
	json_object_object_del(m, "drained");
	json_object_object_del(m, "disabled");
	if (e->op == BE_DRAIN)
		json_object_object_add(m, "drained", json_object_new_boolean(true));
	else if (e->op == BE_DISABLE)
		json_object_object_add(m, "disabled", json_object_new_boolean(true));
	return NULL;
}

/* ---- backend groups -------------------------------------------------------- */

static json_object *doc_groups(json_object *doc)
{
	return doc_object(doc, "backend_groups");
}

/* The listeners that send to gc, as ["web (backend_group)", ...]. */
static json_object *group_users(const struct kg_config *cfg, const struct kg_group_conf *gc)
{
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		char how[32], text[KG_NAME_MAX + 40];
		if (!kg_listener_uses_group(&cfg->listeners[i], gc, how, sizeof(how)))
			continue;
		snprintf(text, sizeof(text), "%s (%s)", cfg->listeners[i].name, how);
		json_object_array_add(arr, json_object_new_string(text));
	}
	return arr;
}

static json_object *group_json(struct kg_ops *ops, const struct kg_group_conf *gc, bool detail)
{
	static const char *const checks[] = {"none", "tcp", "http"};
	const struct kg_config *cfg = ops->cur->cfg;
	json_object *o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(gc->name));
	json_object_object_add(o, "scheduler", json_object_new_string(
			kg_listener_keys[KG_LK_scheduler].names[gc->scheduler]));
	json_object_object_add(o, "health_check", json_object_new_string(
			checks[gc->health_check.type]));
	json_object_object_add(o, "backends", json_object_new_int((int)gc->n_backends));
	json_object_object_add(o, "used_by", group_users(cfg, gc));
	if (!detail)
		return o;
	/* The running group (apply.c keeps them parallel to the document's);
	 * a group no listener sends to is not checked. */
	struct kg_group_rt *g = NULL;
	for (size_t i = 0; ops->rt && i < ops->rt->n_groups && !g; i++)
		if (strcmp(ops->rt->groups[i]->conf->name, gc->name) == 0)
			g = ops->rt->groups[i];
	json_object_object_add(o, "members", members_json(ops->rt != NULL, gc, g));
	return o;
}

static json_object *op_group_list(struct kg_ops *ops, json_object *args)
{
	(void)args;
	const struct kg_config *cfg = ops->cur->cfg;
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < cfg->n_groups; i++)
		json_object_array_add(arr, group_json(ops, &cfg->groups[i], false));
	return ok(arr);
}

static const struct kg_group_conf *group_arg(struct kg_ops *ops, json_object *args,
					     json_object **fail)
{
	const char *name = arg_str(args, "name", true, fail);
	if (!name)
		return NULL;
	const struct kg_group_conf *g = kg_config_find_group(ops->cur->cfg, name);
	if (!g)
		*fail = kg_ops_error(KG_ERR_NOT_FOUND, "group %.100s: no such backend group", name);
	return g;
}

static json_object *op_group_show(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL;
	const struct kg_group_conf *g = group_arg(ops, args, &fail);
	return g ? ok(group_json(ops, g, true)) : fail;
}

static json_object *group_result(struct kg_ops *ops, const char *name)
{
	const struct kg_group_conf *g = kg_config_find_group(ops->cur->cfg, name);
	return ok(g ? group_json(ops, g, true) : NULL);
}

static json_object *op_group_create(struct kg_ops *ops, json_object *args)
{
	json_object *fail = need_state(ops), *spec = NULL;
	const char *name = fail ? NULL : arg_str(args, "name", true, &fail);
	if (!name)
		return fail;
	if (!json_object_object_get_ex(args, "group", &spec) ||
	    !json_object_is_type(spec, json_type_object))
		return kg_ops_error(KG_ERR_INVALID, "args.group: expected an object (backends, "
				    "health_check, scheduler)");
	if (!kg_cert_name_valid(name))
		return kg_ops_error(KG_ERR_INVALID, "name \"%.100s\": use 1-%d letters, digits "
				    "or - / . _ *", name, KG_NAME_MAX);
	if (kg_config_find_group(ops->cur->cfg, name))
		return kg_ops_error(KG_ERR_EXISTS, "group %s: already exists", name);
	char keep[KG_NAME_MAX + 1];
	snprintf(keep, sizeof(keep), "%s", name);
	json_object *doc = doc_copy(ops->st->doc), *copy = doc_copy(spec);
	if (!doc || !copy) {
		json_object_put(doc);
		json_object_put(copy);
		return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	}
	json_object_object_add(doc_groups(doc), keep, copy);
	fail = transact(ops, doc);
	if (fail)
		return fail;
	log_notice("group.created", KV("group", keep));
	return group_result(ops, keep);
}

static json_object *group_entry(json_object *doc, const char *name)
{
	json_object *g = NULL;
	if (!json_object_object_get_ex(doc_groups(doc), name, &g) ||
	    !json_object_is_type(g, json_type_object))
		return NULL;
	return g;
}

static const struct entry_kind group_kind = {"group", "no such backend group", group_entry,
					     group_result};

static json_object *edit_group(struct kg_ops *ops, const char *name,
			       json_object *(*edit)(json_object *g, void *arg), void *arg,
			       const char *event, const char *backend)
{
	return edit_entry(ops, &group_kind, name, edit, arg, event, backend);
}

/* The keys of a group that `group update` changes; backends have their
 * own verbs. */
static json_object *edit_group_update(json_object *g, void *arg)
{
	json_object_object_foreach((json_object *)arg, key, val) {
		if (strcmp(key, "health_check") != 0 && strcmp(key, "scheduler") != 0)
			return kg_ops_error(KG_ERR_INVALID, "%.60s: cannot be changed by group update "
					    "(health_check and scheduler can; backends have their "
					    "own verbs)", key);
		if (set_key(g, key, val) < 0)
			return kg_ops_error(KG_ERR_INTERNAL, "out of memory");
	}
	return NULL;
}

static json_object *op_group_update(struct kg_ops *ops, json_object *args)
{
	json_object *fail = NULL, *set = NULL;
	const char *name = arg_str(args, "name", true, &fail);
	if (!name)
		return fail;
	if (!json_object_object_get_ex(args, "set", &set) ||
	    !json_object_is_type(set, json_type_object) || json_object_object_length(set) == 0)
		return kg_ops_error(KG_ERR_INVALID, "args.set: expected an object with at least one key");
	return edit_group(ops, name, edit_group_update, set, "group.updated", NULL);
}

static json_object *op_group_delete(struct kg_ops *ops, json_object *args)
{
	json_object *fail = need_state(ops);
	const struct kg_group_conf *g = fail ? NULL : group_arg(ops, args, &fail);
	if (!g)
		return fail;
	char name[KG_NAME_MAX + 1];
	snprintf(name, sizeof(name), "%s", g->name);
	fail = delete_entry(ops, "group", name, group_users(ops->cur->cfg, g), "backend_groups",
			    true);
	if (fail)
		return fail;
	log_notice("group.deleted", KV("group", name));
	return deleted(name);
}

/* A member verb on a listener's inline backends (args.listener) or on a
 * named group (args.group). */
static json_object *backend_op(struct kg_ops *ops, json_object *args, int op, const char *event)
{
	json_object *fail = NULL;
	struct backend_edit e = {.op = op};
	const char *name = arg_str(args, "listener", false, &fail);
	const char *group = arg_str(args, "group", false, &fail);
	e.address = arg_str(args, "address", true, &fail);
	if (fail)
		return fail;
	if (!name == !group)
		return kg_ops_error(KG_ERR_INVALID, "args: give either listener (its own backends) "
				    "or group (a backend group)");
	socklen_t len;
	if (kg_parse_hostport(e.address, &e.addr, &len) < 0)
		return kg_ops_error(KG_ERR_INVALID, "backend \"%.80s\": expected IP:PORT "
				    "(\"127.0.0.1:9001\", \"[::1]:9001\")", e.address);
	json_object_object_get_ex(args, "weight", &e.weight);
	if (e.weight && json_object_is_type(e.weight, json_type_null))
		e.weight = NULL;
	if (op == BE_WEIGHT && !e.weight)
		return kg_ops_error(KG_ERR_INVALID, "args.weight: is required");
	if (e.weight && !json_object_is_type(e.weight, json_type_int))
		return kg_ops_error(KG_ERR_INVALID, "args.weight: expected an integer");
	if (group)
		return edit_group(ops, group, edit_backend, &e, event, e.address);
	const struct kg_listener_conf *lc = find_conf(ops->cur->cfg, name);
	if (lc && lc->group != &lc->own)
		return kg_ops_error(KG_ERR_INVALID, "listener %s has no backends of its own%s%s%s: "
				    "change the group's members (kgatectl backend ... --group NAME)",
				    lc->name, lc->group ? " (it sends to group " : "",
				    lc->group ? lc->group->name : "", lc->group ? ")" : "");
	return edit_listener(ops, name, edit_backend, &e, event, e.address);
}

static json_object *op_backend_add(struct kg_ops *ops, json_object *args)
{
	return backend_op(ops, args, BE_ADD, "backend.added");
}

static json_object *op_backend_remove(struct kg_ops *ops, json_object *args)
{
	return backend_op(ops, args, BE_REMOVE, "backend.removed");
}

static json_object *op_backend_set_weight(struct kg_ops *ops, json_object *args)
{
	return backend_op(ops, args, BE_WEIGHT, "backend.weight_changed");
}

static json_object *op_backend_drain(struct kg_ops *ops, json_object *args)
{
	return backend_op(ops, args, BE_DRAIN, "backend.drain_requested");
}

static json_object *op_backend_disable(struct kg_ops *ops, json_object *args)
{
	return backend_op(ops, args, BE_DISABLE, "backend.disable_requested");
}

static json_object *op_backend_enable(struct kg_ops *ops, json_object *args)
{
	return backend_op(ops, args, BE_ENABLE, "backend.enabled");
}

/* ---- status and stats ----------------------------------------------------- */

/* One row per worker: how its ring was set up and what the kernel said
 * it supports (io_uring_params.features). */
static json_object *rings_json(const struct kg_runtime *rt)
{
	json_object *arr = json_object_new_array();
	for (unsigned i = 0; i < rt->n_workers; i++) {
		const struct kg_ring_info *ri = &rt->workers[i]->ring_info;
		char features[512];
		kg_ring_features_format(ri->features, features, sizeof(features));
		json_object *r = json_object_new_object();
		json_object_object_add(r, "worker", json_object_new_int((int)i));
		json_object_object_add(r, "setup", json_object_new_string(
				kg_ring_setup_name(ri->setup_flags)));
		json_object_object_add(r, "fallback", ri->fallback_err ? json_object_new_string(
				strerror(-ri->fallback_err)) : NULL);
		json_object_object_add(r, "features", json_object_new_string(features));
		json_object_object_add(r, "features_mask", json_object_new_int64(ri->features));
		json_object_array_add(arr, r);
	}
	return arr;
}

/* status, stats and upgrade are about a running kgated: refused in
 * document-only mode (NULL when there is a runtime). */
static json_object *need_runtime(struct kg_ops *ops, const char *what)
{
	if (ops->rt)
		return NULL;
	return kg_ops_error(KG_ERR_UNKNOWN_OP, "%s: a document has no running state; ask a "
			    "kgated (its control socket)", what);
}

static json_object *op_status(struct kg_ops *ops, json_object *args)
{
	(void)args;
	json_object *fail = need_runtime(ops, "status");
	if (fail)
		return fail;
	json_object *o = json_object_new_object(), *k = json_object_new_object();
	json_object_object_add(o, "version", json_object_new_string(ops->version));
	json_object_object_add(o, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(o, "uptime_s",
			       json_object_new_int64((int64_t)(time(NULL) - ops->started_wall)));
	json_object_object_add(o, "workers", json_object_new_int((int)ops->rt->n_workers));
	json_object_object_add(o, "state_dir", ops->st ? json_object_new_string(ops->st->dir) : NULL);
	json_object_object_add(o, "control_socket", json_object_new_string(ops->control_path));
	json_object_object_add(o, "metrics",
			       ops->metrics_addr ? json_object_new_string(ops->metrics_addr) : NULL);
	json_object_object_add(o, "listeners", json_object_new_int((int)ops->cur->cfg->n_listeners));
	json_object_object_add(o, "certificates", json_object_new_int((int)ops->cur->cfg->n_certs));
	/* What the kernel offers, and what this build uses of it. */
	json_object_object_add(k, "io_uring", json_object_new_boolean(true));
	json_object_object_add(k, "ktls", json_object_new_boolean(ops->rt->caps.ktls));
	json_object_object_add(k, "ktls_detail", json_object_new_string(ops->rt->caps.ktls_why));
	json_object_object_add(k, "sockmap", json_object_new_boolean(ops->rt->caps.sockmap));
	json_object_object_add(o, "kernel", k);
	json_object *st = json_object_new_object();
	json_object_object_add(st, "mode", json_object_new_string(ops->rt->steer ? "bpf" : "userspace"));
	json_object_object_add(st, "reason", json_object_new_string(ops->rt->steer_why));
	json_object_object_add(o, "accept_steering", st);
	json_object_object_add(o, "io_uring", rings_json(ops->rt));
	json_object *stats = kg_stats_json(ops->rt, NULL), *conns = NULL;
	if (stats && json_object_object_get_ex(stats, "connections", &conns))
		json_object_object_add(o, "connections", json_object_get(conns));
	json_object_put(stats);
	if (ops->store) {
		const struct kg_store_status *ss = ops->store;
		uint64_t contact = atomic_load(&ss->last_contact_ms);
		json_object *so = json_object_new_object();
		json_object_object_add(so, "url", json_object_new_string(ss->url));
		json_object_object_add(so, "reachable",
				       json_object_new_boolean(atomic_load(&ss->reachable)));
		json_object_object_add(so, "applied_revision",
				       json_object_new_int64(atomic_load(&ss->applied_revision)));
		json_object_object_add(so, "seconds_since_contact", contact ?
				       json_object_new_int64((int64_t)((kg_now_ms() - contact) / 1000)) :
				       NULL);
		json_object_object_add(so, "documents_refused", json_object_new_int64(
				(int64_t)atomic_load(&ss->documents_refused)));
		json_object_object_add(o, "store", so);
	}
	return ok(o);
}

static json_object *op_stats(struct kg_ops *ops, json_object *args)
{
	json_object *fail = need_runtime(ops, "stats");
	const char *name = arg_str(args, "listener", false, &fail);
	if (fail)
		return fail;
	if (name && !find_conf(ops->cur->cfg, name))
		return kg_ops_error(KG_ERR_NOT_FOUND, "listener %s: no such listener", name);
	return ok(kg_stats_json(ops->rt, name));
}

/* ---- upgrade ------------------------------------------------------------- */

int kg_ops_init(struct kg_ops *ops)
{
	int r = pthread_mutex_init(&ops->change_lock, NULL);
	if (r != 0)
		return -r;
	r = pthread_mutex_init(&ops->upgrade.lock, NULL);
	if (r != 0)
		goto destroy_change_lock;
	pthread_condattr_t attr;
	r = pthread_condattr_init(&attr);
	if (r != 0)
		goto destroy_upgrade_lock;
	/* Waits are measured on the monotonic clock, like every deadline. */
	r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (r == 0)
		r = pthread_cond_init(&ops->upgrade.done, &attr);
	pthread_condattr_destroy(&attr);
	if (r == 0)
		return 0;
destroy_upgrade_lock:
	pthread_mutex_destroy(&ops->upgrade.lock);
destroy_change_lock:
	pthread_mutex_destroy(&ops->change_lock);
	return -r;
}

void kg_ops_destroy(struct kg_ops *ops)
{
	pthread_cond_destroy(&ops->upgrade.done);
	pthread_mutex_destroy(&ops->upgrade.lock);
	pthread_mutex_destroy(&ops->change_lock);
}

void kg_ops_upgrade_done(struct kg_ops *ops, bool ok, int pid, const char *reason)
{
	pthread_mutex_lock(&ops->upgrade.lock);
	ops->upgrade.ok = ok;
	ops->upgrade.pid = pid;
	snprintf(ops->upgrade.reason, sizeof(ops->upgrade.reason), "%s", reason ? reason : "");
	ops->upgrade.answered = ops->upgrade.asked;
	pthread_cond_broadcast(&ops->upgrade.done);
	pthread_mutex_unlock(&ops->upgrade.lock);
}

/* The same as SIGUSR2, with the outcome as the reply: what systemd's
 * ExecReload= runs, so "systemctl reload" succeeds only once the new
 * process serves, and fails with the reason when it could not. */
static json_object *op_upgrade(struct kg_ops *ops, json_object *args)
{
	(void)args;
	struct timespec until;
	json_object *fail = need_runtime(ops, "upgrade");
	if (fail)
		return fail;
	/* Only kgated's main thread answers (a harness driving these
	 * operations has none). */
	if (ops->upgrade_wait_ms == 0)
		return kg_ops_error(KG_ERR_UNKNOWN_OP, "upgrade: not available in this process");
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ops->upgrade_wait_ms / 1000;
	pthread_mutex_lock(&ops->upgrade.lock);
	unsigned ticket = ++ops->upgrade.asked;
	pthread_mutex_unlock(&ops->upgrade.lock);
	/* The main thread waits for it in sigwait; every other thread blocks it. */
	if (kill(getpid(), SIGUSR2) == -1)
		return kg_ops_error(KG_ERR_INTERNAL, "upgrade: cannot signal kgated: %s",
				    strerror(errno));
	pthread_mutex_lock(&ops->upgrade.lock);
	int r = 0;
	while ((int)(ops->upgrade.answered - ticket) < 0 && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&ops->upgrade.done, &ops->upgrade.lock, &until);
	bool answered = (int)(ops->upgrade.answered - ticket) >= 0;
	bool up = answered && ops->upgrade.ok;
	int pid = ops->upgrade.pid;
	char reason[sizeof(ops->upgrade.reason)];
	snprintf(reason, sizeof(reason), "%s", ops->upgrade.reason);
	pthread_mutex_unlock(&ops->upgrade.lock);
	if (!answered)
		return kg_ops_error(KG_ERR_TIMEOUT, "upgrade: no outcome within %u ms (see kgated's "
				    "log)", ops->upgrade_wait_ms);
	if (!up)
		return kg_ops_error(KG_ERR_UPGRADE_FAILED, "upgrade failed, still serving from pid "
				    "%d: %s", (int)getpid(), reason);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "pid", json_object_new_int(pid));
	json_object_object_add(o, "from_pid", json_object_new_int((int)getpid()));
	return ok(o);
}

/* ---- dispatch -------------------------------------------------------------- */

struct op {
	const char *name;
	json_object *(*run)(struct kg_ops *ops, json_object *args);
	bool changes;   /* changes the state: refused while an upgrade hands over */
};

static const struct op ops_table[] = {
	{"status", op_status, false},
	{"stats", op_stats, false},
	{"cert.list", op_cert_list, false},
	{"cert.show", op_cert_show, false},
	{"cert.upload", op_cert_upload, true},
	{"cert.replace", op_cert_replace, true},
	{"cert.set_crl", op_cert_set_crl, true},
	{"cert.delete", op_cert_delete, true},
	{"listener.list", op_listener_list, false},
	{"listener.show", op_listener_show, false},
	{"listener.create", op_listener_create, true},
	{"listener.update", op_listener_update, true},
	{"listener.stop", op_listener_stop, true},
	{"listener.start", op_listener_start, true},
	{"listener.delete", op_listener_delete, true},
	{"backend.add", op_backend_add, true},
	{"backend.remove", op_backend_remove, true},
	{"backend.set_weight", op_backend_set_weight, true},
	{"backend.drain", op_backend_drain, true},
	{"backend.disable", op_backend_disable, true},
	{"backend.enable", op_backend_enable, true},
	{"group.list", op_group_list, false},
	{"group.show", op_group_show, false},
	{"group.create", op_group_create, true},
	{"group.update", op_group_update, true},
	{"group.delete", op_group_delete, true},
	{"upgrade", op_upgrade, false},
	{NULL, NULL, false},
};

/* A change runs under change_lock, so freezing waits for the one in
 * progress: once kg_ops_freeze returns, the persisted state is final. In
 * store mode the store thread changes the document, so reads take the
 * lock too (but "upgrade", which waits for the main thread's freeze). */
static json_object *run_op(struct kg_ops *ops, const struct op *o, json_object *args)
{
	if (o->changes && ops->store)
		return kg_ops_error(KG_ERR_STORE_MODE, "this kgated follows the store %s: change "
				    "it with kgatectl --store ...; nothing was changed",
				    ops->store->url);
	bool lock = o->changes || (ops->store && o->run != op_upgrade);
	if (!lock)
		return o->run(ops, args);
	pthread_mutex_lock(&ops->change_lock);
	json_object *r = o->changes && ops->frozen
		? kg_ops_error(KG_ERR_BUSY, "upgrade in progress: kgated is handing over to a "
			       "new process; nothing was changed, retry in a moment")
		: o->run(ops, args);
	pthread_mutex_unlock(&ops->change_lock);
	return r;
}

/* The message of an error reply, for a caller that is not a client. */
static void reply_message(json_object *reply, char *err, size_t errlen)
{
	json_object *e = NULL, *m = NULL;
	if (json_object_object_get_ex(reply, "error", &e) &&
	    json_object_object_get_ex(e, "message", &m))
		snprintf(err, errlen, "%s", json_object_get_string(m));
	else
		snprintf(err, errlen, "refused (out of memory)");
}

/* Takes change_lock for a change not made by a client: 0 with the lock
 * held, or -EBUSY (not held) while an upgrade hands over. */
static int lock_changes(struct kg_ops *ops, char *err, size_t errlen)
{
	pthread_mutex_lock(&ops->change_lock);
	if (!ops->frozen)
		return 0;
	pthread_mutex_unlock(&ops->change_lock);
	snprintf(err, errlen, "an upgrade is handing over");
	return -EBUSY;
}

int kg_ops_apply_document(struct kg_ops *ops, kg_ops_doc_fn make, void *arg, char *err,
			  size_t errlen)
{
	int r = lock_changes(ops, err, errlen);
	if (r < 0)
		return r;
	json_object *doc = make(arg, ops->st, err, errlen);
	if (!doc) {
		kg_state_gc(ops->st); /* files written for the refused document */
		r = -EINVAL;
		goto unlock;
	}
	json_object *fail = transact(ops, doc);
	if (fail) {
		reply_message(fail, err, errlen);
		json_object_put(fail);
		r = -EINVAL;
	}
unlock:
	pthread_mutex_unlock(&ops->change_lock);
	return r;
}

struct kg_config_ref *kg_ops_current(struct kg_ops *ops, unsigned long *generation)
{
	pthread_mutex_lock(&ops->change_lock);
	struct kg_config_ref *ref = ops->cur;
	atomic_fetch_add(&ref->refs, 1);
	*generation = ops->generation;
	pthread_mutex_unlock(&ops->change_lock);
	return ref;
}

/* Whether l (a listener's settings or an sni entry's) verifies client
 * certificates against the ca certificate named ca_name. */
static bool verifies_with(const struct kg_listener_conf *l, const char *ca_name)
{
	return l->ca && l->mutual_auth != KG_MTLS_OFF && strcmp(l->ca->name, ca_name) == 0;
}

int kg_ops_crl_changed(struct kg_ops *ops, const char *ca_name, size_t *rebuilt, char *err,
		       size_t errlen)
{
	bool changed[KG_MAX_LISTENERS + 1] = {false};
	*rebuilt = 0;
	int r = lock_changes(ops, err, errlen);
	if (r < 0)
		return r;
	const struct kg_config *cfg = ops->cur->cfg;
	for (size_t i = 0; i < cfg->n_listeners && i < KG_MAX_LISTENERS; i++) {
		const struct kg_listener_conf *l = &cfg->listeners[i];
		changed[i] = verifies_with(l, ca_name);
		for (size_t e = 0; e < l->n_sni && !changed[i]; e++)
			changed[i] = verifies_with(l->sni[e].tls, ca_name);
		*rebuilt += changed[i];
	}
	if (!ops->rt || *rebuilt == 0)
		goto unlock;
	/* The same document: only the listeners of this CA get new
	 * snapshots (SSL_CTXs taking the CRL now in force); connections
	 * keep the ones they were accepted with. */
	r = kg_apply_prepare(ops->rt, ops->cur, changed, false, NULL, &ops->plan, err, errlen);
	if (r == 0)
		kg_apply_commit(ops->rt, &ops->plan);
unlock:
	pthread_mutex_unlock(&ops->change_lock);
	return r;
}

/* Adds g's members to counts by state: healthy, unhealthy, unknown. */
static void count_states(struct kg_group_rt *g, unsigned counts[3],
			 struct kg_health_member_info *info)
{
	size_t n = kg_health_snapshot(g->health, info, KG_MAX_BACKENDS, kg_now_ms());
	for (size_t m = 0; m < n && m < KG_MAX_BACKENDS; m++)
		counts[info[m].state == KG_MEMBER_HEALTHY ? 0 :
		       info[m].state == KG_MEMBER_UNHEALTHY ? 1 : 2]++;
}

json_object *kg_ops_instance_status(struct kg_ops *ops)
{
	json_object *o = json_object_new_object(), *ls = json_object_new_array();
	unsigned counts[3] = {0};
	struct kg_health_member_info info[KG_MAX_BACKENDS];
	if (!o || !ls) {
		json_object_put(o);
		json_object_put(ls);
		return NULL;
	}
	pthread_mutex_lock(&ops->change_lock);
	const struct kg_config *cfg = ops->cur->cfg;
	for (size_t i = 0; i < cfg->n_listeners; i++) {
		const struct kg_listener_conf *lc = &cfg->listeners[i];
		struct kg_listener_slot *slot = kg_runtime_find(ops->rt, lc->name);
		struct kg_listener_rt *snap = slot ? kg_listener_acquire(slot) : NULL;
		const char *state = snap ? "serving" : lc->enabled ? "failed" : "stopped";
		/* Inline members here, named groups' once below. */
		struct kg_group_rt *own = snap ? kg_listener_find_group(snap, "") : NULL;
		if (own)
			count_states(own, counts, info);
		kg_listener_put(snap);
		json_object *l = json_object_new_object();
		json_object_object_add(l, "name", json_object_new_string(lc->name));
		json_object_object_add(l, "state", json_object_new_string(state));
		json_object_array_add(ls, l);
	}
	for (size_t g = 0; g < ops->rt->n_groups; g++)
		count_states(ops->rt->groups[g], counts, info);
	pthread_mutex_unlock(&ops->change_lock);
	json_object *m = json_object_new_object();
	json_object_object_add(m, "healthy", json_object_new_int((int)counts[0]));
	json_object_object_add(m, "unhealthy", json_object_new_int((int)counts[1]));
	json_object_object_add(m, "unknown", json_object_new_int((int)counts[2]));
	json_object_object_add(o, "ready", json_object_new_boolean(true));
	json_object_object_add(o, "listeners", ls);
	json_object_object_add(o, "members", m);
	return o;
}

void kg_ops_freeze(struct kg_ops *ops)
{
	pthread_mutex_lock(&ops->change_lock);
	ops->frozen = true;
	pthread_mutex_unlock(&ops->change_lock);
}

void kg_ops_thaw(struct kg_ops *ops)
{
	pthread_mutex_lock(&ops->change_lock);
	ops->frozen = false;
	pthread_mutex_unlock(&ops->change_lock);
}

json_object *kg_ops_handle(struct kg_ops *ops, json_object *req)
{
	json_object *v = NULL, *args = NULL;
	if (!json_object_is_type(req, json_type_object))
		return kg_ops_error(KG_ERR_BAD_REQUEST, "request: expected a JSON object");
	if (!json_object_object_get_ex(req, "version", &v) || !json_object_is_type(v, json_type_int))
		return kg_ops_error(KG_ERR_BAD_REQUEST, "request.version: expected an integer");
	if (json_object_get_int64(v) != KG_CONTROL_VERSION)
		return kg_ops_error(KG_ERR_VERSION, "request.version %" PRId64 ": this kgated "
				    "speaks version %d", json_object_get_int64(v), KG_CONTROL_VERSION);
	if (!json_object_object_get_ex(req, "op", &v) || !json_object_is_type(v, json_type_string))
		return kg_ops_error(KG_ERR_BAD_REQUEST, "request.op: expected a string");
	const char *name = json_object_get_string(v);
	if (json_object_object_get_ex(req, "args", &args) && !json_object_is_type(args, json_type_object))
		return kg_ops_error(KG_ERR_BAD_REQUEST, "request.args: expected an object");
	json_object *empty = args ? NULL : json_object_new_object();
	for (const struct op *o = ops_table; o->name; o++) {
		if (strcmp(o->name, name) == 0) {
			json_object *r = run_op(ops, o, args ? args : empty);
			json_object_put(empty);
			return r;
		}
	}
	json_object_put(empty);
	return kg_ops_error(KG_ERR_UNKNOWN_OP, "op \"%.60s\": unknown operation", name);
}
