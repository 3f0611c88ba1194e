/* Store mode: following PREFIX/state and publishing this instance's
 * status (store.h). */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kgate/log.h>
#include <openssl/crypto.h>

#include "certs.h"
#include "clock.h"
#include "config.h"
#include "etcd.h"
#include "seal.h"
#include "store_doc.h"
#include "store_tickets.h"
#include "store_url.h"
#include "ticket_keys.h"

#define ERRLEN 1024
#define REVISION_FILE "store.json"
#define LEASE_TTL_S 10
#define KEEPALIVE_MS 3000
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 5000
/* Start-up waits at most this long for etcd before serving the cache. */
#define INITIAL_TIMEOUT_MS 3000
#define REQUEST_TIMEOUT_MS 5000

struct kg_store {
	struct kg_store_url url;
	struct kg_kek *kek;
	struct kg_etcd *follow_etcd; /* the follower's range and watch */
	struct kg_etcd *status_etcd; /* the status thread's lease and puts */
	struct kg_etcd *tickets_etcd; /* the ticket thread's range, watch and CAS */
	struct kg_ticket_keys *tickets; /* NULL: no ticket thread */
	unsigned rotation_s;            /* settings.ticket_key_rotation_s at start */
	int64_t tickets_refused;        /* the last refused key set's mod_revision */
	int64_t tickets_applied;        /* the mod_revision of the set in use; 0: none yet */
	char id[256];
	char host[256];
	struct kg_store_status status;
	struct kg_ops *ops;
	struct kg_state *st;
	int64_t refused_revision; /* the last refused document's, not tried again */
	atomic_bool stop;
	pthread_t follower, publisher, ticketer;
	bool follower_started, publisher_started, ticketer_started;
	int64_t lease;
};

static struct kg_etcd *client(const struct kg_store_opts *o, const struct kg_store_url *u,
			      long timeout_ms, char *err, size_t errlen)
{
	struct kg_etcd_opts eo = {.endpoints = (const char *const *)u->endpoints,
				  .n_endpoints = u->n_endpoints, .cert = o->cert, .key = o->key,
				  .ca = o->ca, .timeout_ms = timeout_ms};
	return kg_etcd_create(&eo, err, errlen);
}

struct kg_store *kg_store_create(const struct kg_store_opts *o, char *err, size_t errlen)
{
	char why[ERRLEN];
	struct kg_store *s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	bool tls = o->cert || o->key || o->ca;
	if (kg_store_url_parse(o->url, tls, &s->url, err, errlen) < 0)
		goto destroy;
	if (!o->kek) {
		snprintf(err, errlen, "--store needs --store-kek FILE: private keys in the store "
			 "are sealed under it");
		goto destroy;
	}
	s->kek = kg_kek_load(o->kek, why, sizeof(why));
	if (!s->kek) {
		snprintf(err, errlen, "--store-kek: %s", why);
		goto destroy;
	}
	s->follow_etcd = client(o, &s->url, INITIAL_TIMEOUT_MS, why, sizeof(why));
	s->status_etcd = s->follow_etcd ? client(o, &s->url, REQUEST_TIMEOUT_MS, why, sizeof(why))
					: NULL;
	s->tickets_etcd = s->status_etcd ? client(o, &s->url, REQUEST_TIMEOUT_MS, why, sizeof(why))
					 : NULL;
	if (!s->tickets_etcd) {
		snprintf(err, errlen, "--store %s: %s", o->url, why);
		goto destroy;
	}
	if (o->instance_id)
		snprintf(s->id, sizeof(s->id), "%s", o->instance_id);
	if (gethostname(s->host, sizeof(s->host) - 1) == -1)
		snprintf(s->host, sizeof(s->host), "unknown");
	if (!o->instance_id)
		snprintf(s->id, sizeof(s->id), "%s", s->host);
	for (const char *c = s->id; *c; c++)
		if (*c == '/' || *c < ' ' || *c == 127) {
			snprintf(err, errlen, "--instance-id %s: no '/' or control characters", s->id);
			goto destroy;
		}
	if (!s->id[0]) {
		snprintf(err, errlen, "--instance-id: must not be empty");
		goto destroy;
	}
	s->status.url = s->url.text;
	return s;
destroy:
	kg_store_destroy(s);
	return NULL;
}

void kg_store_destroy(struct kg_store *s)
{
	if (!s)
		return;
	kg_etcd_destroy(s->follow_etcd);
	kg_etcd_destroy(s->status_etcd);
	kg_etcd_destroy(s->tickets_etcd);
	kg_kek_destroy(s->kek);
	kg_store_url_free(&s->url);
	free(s);
}

struct kg_store_status *kg_store_status(struct kg_store *s)
{
	return &s->status;
}

/* ---- reachability --------------------------------------------------------- */

static void contact(struct kg_store *s)
{
	atomic_store(&s->status.last_contact_ms, kg_now_ms());
	if (!atomic_exchange(&s->status.reachable, true))
		log_notice("store.reachable", KV("store", s->url.text),
			   KV("endpoint", kg_etcd_endpoint(s->follow_etcd)));
}

/* first: log even though nothing was reachable before (start-up). */
static void no_contact(struct kg_store *s, const char *why, bool first)
{
	if (atomic_exchange(&s->status.reachable, false) || first)
		log_warn("store.unreachable", KV("store", s->url.text), KV("reason", why),
			 KV("effect", "serving the last applied state"));
}

/* ---- the cached revision (STATE_DIR/store.json) ---------------------------- */

static int64_t cached_revision(const struct kg_store *s, const struct kg_state *st)
{
	char path[4096], *text = NULL;
	int64_t rev = 0;
	snprintf(path, sizeof(path), "%s/" REVISION_FILE, st->dir);
	if (kg_read_file(path, &text) < 0)
		return 0;
	json_object *o = json_tokener_parse(text), *url = NULL, *r = NULL;
	free(text);
	/* A revision of another store means nothing here. */
	if (o && json_object_object_get_ex(o, "url", &url) &&
	    strcmp(json_object_get_string(url), s->url.text) == 0 &&
	    json_object_object_get_ex(o, "revision", &r))
		rev = json_object_get_int64(r);
	json_object_put(o);
	return rev;
}

static void save_revision(const struct kg_store *s, const struct kg_state *st, int64_t rev)
{
	char path[4096], err[ERRLEN];
	json_object *o = json_object_new_object();
	if (!o)
		return;
	json_object_object_add(o, "url", json_object_new_string(s->url.text));
	json_object_object_add(o, "revision", json_object_new_int64(rev));
	snprintf(path, sizeof(path), "%s/" REVISION_FILE, st->dir);
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	/* Only costs a needless re-apply at the next start if lost. */
	if (!text || kg_state_write_atomic(path, text, err, sizeof(err)) < 0)
		log_warn("store.revision_not_saved", KV("path", path),
			 KV("reason", text ? err : "out of memory"));
	json_object_put(o);
}

static void refused(struct kg_store *s, int64_t rev, const char *why)
{
	s->refused_revision = rev;
	atomic_fetch_add(&s->status.documents_refused, 1);
	log_err("store.document_refused", KV("store", s->url.text), KV("revision", (long long)rev),
		KV("reason", why), KV("effect", "the last good state keeps serving"));
}

/* ---- start-up -------------------------------------------------------------- */

/* Converts and validates the store's document at start-up; NULL with err
 * (r: -EKEYREJECTED for another KEK). */
static json_object *initial_doc(struct kg_store *s, struct kg_state *st,
				const struct kg_etcd_kv *kv, int *r, char *err, size_t errlen)
{
	json_object *doc = NULL;
	*r = kg_store_doc_to_state(st, s->kek, s->url.state_key, (const char *)kv->value,
				   kv->value_len, &doc, err, errlen);
	if (*r < 0)
		return NULL;
	*r = -EINVAL;
	struct kg_config *cfg = kg_state_parse(st, doc, err, errlen);
	if (!cfg || kg_config_validate_files(cfg, false, err, errlen) < 0) {
		kg_config_free(cfg);
		json_object_put(doc);
		return NULL;
	}
	kg_config_free(cfg);
	*r = 0;
	return doc;
}

int kg_store_sync_initial(struct kg_store *s, struct kg_state *st, bool have_cache, char *err,
			  size_t errlen)
{
	char why[ERRLEN];
	struct kg_etcd_range rg = {0};
	int64_t cached = cached_revision(s, st);
	atomic_store(&s->status.applied_revision, cached);
	int r = kg_etcd_range(s->follow_etcd, s->url.state_key, false, &rg, why, sizeof(why));
	if (r < 0) {
		kg_etcd_range_free(&rg);
		no_contact(s, why, true);
		if (have_cache)
			return 0;
		snprintf(err, errlen, "store %s is unreachable (%s) and the state dir holds no "
			 "cached state to serve meanwhile", s->url.text, why);
		return -EHOSTUNREACH;
	}
	contact(s);
	if (rg.n == 0) {
		log_notice("store.empty", KV("store", s->url.text), KV("key", s->url.state_key),
			   KV("effect", "serving the cached state until a document is pushed"));
		goto free_range;
	}
	const struct kg_etcd_kv *kv = &rg.kvs[0];
	if (kv->mod_revision == cached)
		goto free_range; /* the cache is this document */
	json_object *doc = initial_doc(s, st, kv, &r, why, sizeof(why));
	if (!doc) {
		kg_state_gc(st);
		if (r == -EKEYREJECTED) {
			snprintf(err, errlen, "--store-kek does not open %s (revision %lld): %s",
				 s->url.state_key, (long long)kv->mod_revision, why);
			goto free_range;
		}
		refused(s, kv->mod_revision, why);
		r = 0;
		goto free_range;
	}
	r = kg_state_commit(st, doc, why, sizeof(why));
	if (r < 0) {
		json_object_put(doc);
		snprintf(err, errlen, "state dir: %s", why);
		goto free_range;
	}
	kg_state_gc(st);
	save_revision(s, st, kv->mod_revision);
	atomic_store(&s->status.applied_revision, kv->mod_revision);
	log_notice("store.applied", KV("store", s->url.text),
		   KV("revision", (long long)kv->mod_revision), KV("at", "start"));
free_range:
	kg_etcd_range_free(&rg);
	return r;
}

/* ---- the follower ------------------------------------------------------------ */

/* Sleeps ms, or less when asked to stop. */
static void nap(struct kg_store *s, unsigned ms)
{
	for (unsigned t = 0; t < ms && !atomic_load(&s->stop); t += 100) {
		struct timespec ts = {0, 100 * 1000000L};
		nanosleep(&ts, NULL);
	}
}

struct make_arg {
	struct kg_store *s;
	const struct kg_etcd_kv *kv;
};

static json_object *make_doc(void *arg, struct kg_state *st, char *err, size_t errlen)
{
	struct make_arg *m = arg;
	json_object *doc = NULL;
	kg_store_doc_to_state(st, m->s->kek, m->s->url.state_key, (const char *)m->kv->value,
			      m->kv->value_len, &doc, err, errlen);
	return doc;
}

/* Applies one version of PREFIX/state; -EBUSY when an upgrade holds
 * changes (try again later), else 0 (applied or refused). */
static int apply(struct kg_store *s, const struct kg_etcd_kv *kv)
{
	char why[ERRLEN];
	if (kv->mod_revision == atomic_load(&s->status.applied_revision) ||
	    kv->mod_revision == s->refused_revision)
		return 0;
	struct make_arg m = {.s = s, .kv = kv};
	uint64_t t0 = kg_now_ms();
	int r = kg_ops_apply_document(s->ops, make_doc, &m, why, sizeof(why));
	if (r == -EBUSY)
		return r;
	if (r < 0) {
		refused(s, kv->mod_revision, why);
		return 0;
	}
	save_revision(s, s->st, kv->mod_revision);
	atomic_store(&s->status.applied_revision, kv->mod_revision);
	log_notice("store.applied", KV("store", s->url.text),
		   KV("revision", (long long)kv->mod_revision),
		   KV("apply_ms", (unsigned long long)(kg_now_ms() - t0)));
	return 0;
}

static int on_event(void *arg, const struct kg_etcd_event *ev)
{
	struct kg_store *s = arg;
	contact(s);
	if (ev->type == KG_ETCD_EV_CREATED || strcmp(ev->kv.key, s->url.state_key) != 0)
		return 0;
	if (ev->type == KG_ETCD_EV_DELETE) {
		refused(s, ev->kv.mod_revision ? ev->kv.mod_revision : ev->revision,
			"the document was deleted from the store");
		return 0;
	}
	return apply(s, &ev->kv);
}

static void *follow(void *arg)
{
	struct kg_store *s = arg;
	char why[ERRLEN];
	unsigned backoff = BACKOFF_MIN_MS;
	while (!atomic_load(&s->stop)) {
		struct kg_etcd_range rg = {0};
		int r = kg_etcd_range(s->follow_etcd, s->url.state_key, false, &rg, why, sizeof(why));
		if (r == 0) {
			contact(s);
			backoff = BACKOFF_MIN_MS;
			if (rg.n > 0)
				r = apply(s, &rg.kvs[0]);
		}
		int64_t from = rg.revision + 1;
		kg_etcd_range_free(&rg);
		if (r == 0) {
			struct kg_etcd_watch_req req = {.prefix = s->url.state_key,
							.start_revision = from, .fn = on_event,
							.arg = s, .stop = &s->stop};
			r = kg_etcd_watch(s->follow_etcd, &req, NULL, why, sizeof(why));
			if (r == 0)
				break;
			if (r == -ERANGE || r == -EPIPE)
				continue; /* read it all again, then watch from there */
		}
		if (r == -EBUSY) {
			nap(s, BACKOFF_MIN_MS);
			continue;
		}
		no_contact(s, why, false);
		nap(s, backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
	return NULL;
}

/* ---- the session-ticket keys (PREFIX/ticket-keys) --------------------------------- */

void kg_store_follow_tickets(struct kg_store *s, struct kg_ticket_keys *tk, unsigned rotation_s)
{
	s->tickets = tk;
	s->rotation_s = rotation_s;
}

static void tickets_refused(struct kg_store *s, int64_t rev, const char *why)
{
	s->tickets_refused = rev;
	atomic_fetch_add(&s->status.documents_refused, 1);
	log_err("store.ticket_keys_refused", KV("store", s->url.text),
		KV("key", s->url.tickets_key), KV("revision", (long long)rev), KV("reason", why),
		KV("effect", "the ticket keys in use stay"));
}

/* Writes keys at PREFIX/ticket-keys if it is still at revision expect
 * (0: absent). 0, -ECANCELED (another instance came first: read its set),
 * or an etcd error with err. The set is installed when read back, like
 * anyone else's. */
static int tickets_write(struct kg_store *s, int64_t expect, const struct kg_ticket_key *keys,
			 size_t n, const char *why, char *err, size_t errlen)
{
	int64_t rev = 0;
	int r = kg_store_tickets_write(s->tickets_etcd, s->kek, s->url.tickets_key, expect, keys, n,
				       &rev, err, errlen);
	if (r == 0)
		log_notice("store.ticket_keys_written", KV("store", s->url.text),
			   KV("key", s->url.tickets_key), KV("revision", (long long)rev),
			   KV("previous_revision", (long long)expect), KV("why", why));
	return r;
}

/* PREFIX/ticket-keys is absent: the keys this instance uses (from its
 * cache, or new) become the fleet's, if no other instance is first. */
static int tickets_create(struct kg_store *s, char *err, size_t errlen)
{
	struct kg_ticket_key keys[2];
	size_t n = kg_ticket_keys_get(s->tickets, &keys[0], &keys[1]) ? 2 : 1;
	int r = tickets_write(s, 0, keys, n, "absent from the store", err, errlen);
	OPENSSL_cleanse(keys, sizeof(keys));
	return r;
}

/* Installs the stored set kv, or refuses it; then rotates it when its
 * current key is rotation_s old. *due_ms: kg_now_ms() time of the next
 * rotation, 0 when none is to be made (the value was refused: a value
 * this instance cannot open is never overwritten, it may be the fleet's
 * under another KEK). 0, -ECANCELED (another instance rotated first),
 * -EAGAIN (rotated: read it back), or an etcd error with err. */
static int tickets_take(struct kg_store *s, const struct kg_etcd_kv *kv, uint64_t *due_ms,
			char *err, size_t errlen)
{
	struct kg_ticket_key keys[2], next[2];
	size_t n = 0;
	char why[ERRLEN];
	*due_ms = 0;
	if (kv->mod_revision == s->tickets_refused)
		return 0; /* refused already: logged and counted once */
	int r = kg_store_tickets_open(s->kek, s->url.tickets_key, kv, keys, &n, why, sizeof(why));
	if (r < 0) {
		tickets_refused(s, kv->mod_revision, why);
		r = 0;
		goto wipe;
	}
	r = kg_ticket_keys_install(s->tickets, keys, n, why, sizeof(why));
	/* Per revision, also when the set is the one in use (this instance
	 * wrote it, or read it before): which revision each instance holds. */
	if (r >= 0 && kv->mod_revision != s->tickets_applied)
		log_notice("store.ticket_keys_applied", KV("store", s->url.text),
			   KV("revision", (long long)kv->mod_revision), KV("keys", n),
			   KV("current_created", (long long)keys[0].created));
	else if (r < 0)
		log_warn("store.ticket_keys_not_cached", KV("reason", why),
			 KV("revision", (long long)kv->mod_revision),
			 KV("effect", "in use, but a start without the store would use older keys"));
	s->tickets_applied = kv->mod_revision;
	int64_t now = (int64_t)time(NULL), due = keys[0].created + (int64_t)s->rotation_s;
	if (now < due) {
		*due_ms = kg_now_ms() + (uint64_t)(due - now) * 1000;
		r = 0;
		goto wipe;
	}
	char age[64];
	snprintf(age, sizeof(age), "the current key is %lld s old", (long long)(now - keys[0].created));
	r = kg_ticket_keys_next(&keys[0], (time_t)now, next, err, errlen);
	if (r == 0)
		r = tickets_write(s, kv->mod_revision, next, 2, age, err, errlen);
	OPENSSL_cleanse(next, sizeof(next));
	if (r == 0)
		r = -EAGAIN;
wipe:
	OPENSSL_cleanse(keys, sizeof(keys));
	return r;
}

/* Any change to PREFIX/ticket-keys ends the watch: the loop reads the key
 * again, so a set from the watch and one from a read take one path. */
static int on_tickets_event(void *arg, const struct kg_etcd_event *ev)
{
	struct kg_store *s = arg;
	contact(s);
	if (ev->type == KG_ETCD_EV_CREATED || strcmp(ev->kv.key, s->url.tickets_key) != 0)
		return 0;
	return -EAGAIN;
}

static void *tickets_loop(void *arg)
{
	struct kg_store *s = arg;
	char why[ERRLEN];
	unsigned backoff = BACKOFF_MIN_MS;
	while (!atomic_load(&s->stop)) {
		struct kg_etcd_range rg = {0};
		uint64_t due_ms = 0;
		int r = kg_etcd_range(s->tickets_etcd, s->url.tickets_key, false, &rg, why,
				      sizeof(why));
		if (r == 0) {
			contact(s);
			backoff = BACKOFF_MIN_MS;
			r = rg.n > 0 ? tickets_take(s, &rg.kvs[0], &due_ms, why, sizeof(why))
				     : tickets_create(s, why, sizeof(why));
		}
		int64_t from = rg.revision + 1;
		kg_etcd_range_free(&rg);
		if (r == -ECANCELED || r == -EAGAIN)
			continue; /* someone (maybe this instance) wrote a set: read it */
		if (r == 0) {
			struct kg_etcd_watch_req req = {.prefix = s->url.tickets_key,
							.start_revision = from,
							.fn = on_tickets_event, .arg = s,
							.stop = &s->stop, .until_ms = due_ms};
			r = kg_etcd_watch(s->tickets_etcd, &req, NULL, why, sizeof(why));
			if (r == 0)
				break;
			if (r == -EAGAIN || r == -ETIME || r == -ERANGE || r == -EPIPE)
				continue;
		}
		no_contact(s, why, false);
		nap(s, backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
	}
	return NULL;
}

/* ---- the status publisher ------------------------------------------------------ */

static char *status_text(struct kg_store *s)
{
	json_object *o = kg_ops_instance_status(s->ops);
	if (!o)
		return NULL;
	json_object_object_add(o, "id", json_object_new_string(s->id));
	json_object_object_add(o, "pid", json_object_new_int((int)getpid()));
	json_object_object_add(o, "host", json_object_new_string(s->host));
	json_object_object_add(o, "applied_revision",
			       json_object_new_int64(atomic_load(&s->status.applied_revision)));
	json_object_object_add(o, "store_reachable",
			       json_object_new_boolean(atomic_load(&s->status.reachable)));
	json_object_object_add(o, "updated", json_object_new_int64((int64_t)time(NULL)));
	const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	char *out = t ? strdup(t) : NULL;
	json_object_put(o);
	return out;
}

/* Puts instances/ID (leased) and members/ID (kept). */
static int publish(struct kg_store *s, char *err, size_t errlen)
{
	char key[1024];
	char *text = status_text(s);
	if (!text) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	snprintf(key, sizeof(key), "%s%s", s->url.instances, s->id);
	int r = kg_etcd_put(s->status_etcd, key, text, strlen(text), s->lease, NULL, err, errlen);
	snprintf(key, sizeof(key), "%s%s", s->url.members, s->id);
	if (r == 0)
		r = kg_etcd_put(s->status_etcd, key, text, strlen(text), 0, NULL, err, errlen);
	free(text);
	return r;
}

static void *publish_loop(void *arg)
{
	struct kg_store *s = arg;
	char why[ERRLEN];
	while (!atomic_load(&s->stop)) {
		int r = 0;
		if (s->lease == 0)
			r = kg_etcd_lease_grant(s->status_etcd, LEASE_TTL_S, &s->lease, why,
						sizeof(why));
		else
			r = kg_etcd_lease_keepalive(s->status_etcd, s->lease, NULL, why, sizeof(why));
		if (r == -ENOENT) {
			s->lease = 0; /* expired while etcd was away: its keys are gone */
			continue;
		}
		if (r == 0)
			r = publish(s, why, sizeof(why));
		if (r < 0) {
			no_contact(s, why, false);
			nap(s, KEEPALIVE_MS);
			continue;
		}
		contact(s);
		/* Republish at once when the applied revision moves, so
		 * `kgatectl fleet status` sees convergence without waiting. */
		int64_t published = atomic_load(&s->status.applied_revision);
		for (unsigned t = 0; t < KEEPALIVE_MS && !atomic_load(&s->stop) &&
				     atomic_load(&s->status.applied_revision) == published; t += 100)
			nap(s, 100);
	}
	return NULL;
}

int kg_store_start(struct kg_store *s, struct kg_ops *ops)
{
	s->ops = ops;
	s->st = ops->st;
	atomic_store(&s->stop, false);
	int r = pthread_create(&s->follower, NULL, follow, s);
	if (r != 0)
		return -r;
	s->follower_started = true;
	r = pthread_create(&s->publisher, NULL, publish_loop, s);
	if (r != 0) {
		kg_store_stop(s, false);
		return -r;
	}
	s->publisher_started = true;
	if (s->tickets) {
		r = pthread_create(&s->ticketer, NULL, tickets_loop, s);
		if (r != 0) {
			kg_store_stop(s, false);
			return -r;
		}
		s->ticketer_started = true;
	}
	return 0;
}

void kg_store_stop(struct kg_store *s, bool revoke)
{
	char why[ERRLEN];
	if (!s)
		return;
	atomic_store(&s->stop, true);
	if (s->follower_started)
		pthread_join(s->follower, NULL);
	if (s->publisher_started)
		pthread_join(s->publisher, NULL);
	if (s->ticketer_started)
		pthread_join(s->ticketer, NULL);
	s->follower_started = s->publisher_started = s->ticketer_started = false;
	if (revoke && s->lease != 0) {
		if (kg_etcd_lease_revoke(s->status_etcd, s->lease, why, sizeof(why)) < 0)
			log_warn("store.lease_not_revoked", KV("reason", why),
				 KV("effect", "the instance shows as alive until its lease expires"));
		s->lease = 0;
	}
}
