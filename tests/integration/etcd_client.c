/* dataplane/etcd.c against a real etcd (test_etcd_client.py starts it):
 *
 *   etcd_client CASE ENDPOINTS [CERT KEY CA]
 *
 * ENDPOINTS: comma-separated, as kg_etcd_opts takes them. Each case uses
 * keys under its own prefix with a random part, so cases do not see each
 * other's keys. Exit 0: the case passed; 1: it failed (why on stderr). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"

static char err[1024];
static const char *etcdctl_endpoint; /* the last endpoint: the live one */

#define CHECK(cond, ...)                                                   \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                      \
			fprintf(stderr, "\n");                             \
			exit(1);                                           \
		}                                                          \
	} while (0)

#define OK(call) CHECK((call) == 0, "%s", err)

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char prefix[64];

/* prefix + name, in one of 8 rotating buffers. */
static const char *key(const char *name)
{
	static char bufs[8][128];
	static int next;
	char *b = bufs[next++ % 8];
	snprintf(b, sizeof(bufs[0]), "%s%s", prefix, name);
	return b;
}

static int64_t put(struct kg_etcd *c, const char *k, const char *v)
{
	int64_t rev = 0;
	OK(kg_etcd_put(c, k, v, strlen(v), 0, &rev, err, sizeof(err)));
	CHECK(rev > 0, "revision %" PRId64, rev);
	return rev;
}

static void case_range(struct kg_etcd *c)
{
	int64_t r1 = put(c, key("a"), "one");
	int64_t r2 = put(c, key("b"), "two");
	static const unsigned char bin[] = {0, 0xff, '"', '\\', 0};
	OK(kg_etcd_put(c, key("c"), bin, sizeof(bin), 0, NULL, err, sizeof(err)));
	/* A neighbour that shares the prefix's bytes but not the prefix. */
	char outside[128];
	snprintf(outside, sizeof(outside), "%.*s0", (int)strlen(prefix) - 1, prefix);
	put(c, outside, "outside");

	struct kg_etcd_range rg;
	OK(kg_etcd_range(c, key("a"), false, &rg, err, sizeof(err)));
	CHECK(rg.n == 1, "%zu keys", rg.n);
	CHECK(strcmp(rg.kvs[0].key, key("a")) == 0, "%s", rg.kvs[0].key);
	CHECK(rg.kvs[0].value_len == 3 && memcmp(rg.kvs[0].value, "one", 3) == 0, "value");
	CHECK(rg.kvs[0].mod_revision == r1 && rg.kvs[0].create_revision == r1, "revisions");
	CHECK(rg.revision >= r2, "header revision %" PRId64, rg.revision);
	kg_etcd_range_free(&rg);

	OK(kg_etcd_range(c, prefix, true, &rg, err, sizeof(err)));
	CHECK(rg.n == 3, "%zu keys under the prefix", rg.n);
	CHECK(strcmp(rg.kvs[1].key, key("b")) == 0, "order: %s", rg.kvs[1].key);
	CHECK(rg.kvs[2].value_len == sizeof(bin) && memcmp(rg.kvs[2].value, bin, sizeof(bin)) == 0,
	      "binary value");
	kg_etcd_range_free(&rg);

	OK(kg_etcd_range(c, key("nope"), false, &rg, err, sizeof(err)));
	CHECK(rg.n == 0 && rg.revision > 0, "missing key: %zu", rg.n);
	kg_etcd_range_free(&rg);

	/* An updated key: mod_revision moves, create_revision stays. */
	int64_t r3 = put(c, key("a"), "uno");
	OK(kg_etcd_range(c, key("a"), false, &rg, err, sizeof(err)));
	CHECK(rg.n == 1 && rg.kvs[0].mod_revision == r3 && rg.kvs[0].create_revision == r1,
	      "after update");
	kg_etcd_range_free(&rg);
}

/* Two writers read the same revision; the second to write loses with
 * -ECANCELED and nothing of its transaction is applied. */
static void case_txn(struct kg_etcd *c)
{
	const char *doc = key("doc");
	struct kg_etcd_op create = {KG_ETCD_OP_PUT, doc, "v1", 2, 0};
	int64_t rev = 0;
	OK(kg_etcd_txn(c, doc, 0, &create, 1, &rev, err, sizeof(err)));
	/* Must-not-exist fails once it exists. */
	CHECK(kg_etcd_txn(c, doc, 0, &create, 1, NULL, err, sizeof(err)) == -ECANCELED,
	      "created twice: %s", err);

	struct kg_etcd_range rg;
	OK(kg_etcd_range(c, doc, false, &rg, err, sizeof(err)));
	int64_t seen = rg.kvs[0].mod_revision;
	CHECK(seen == rev, "read %" PRId64 ", wrote %" PRId64, seen, rev);
	kg_etcd_range_free(&rg);

	struct kg_etcd_op a[] = {{KG_ETCD_OP_PUT, doc, "from A", 6, 0},
				 {KG_ETCD_OP_PUT, key("a-side"), "x", 1, 0}};
	struct kg_etcd_op b[] = {{KG_ETCD_OP_PUT, doc, "from B", 6, 0},
				 {KG_ETCD_OP_PUT, key("b-side"), "x", 1, 0}};
	OK(kg_etcd_txn(c, doc, seen, a, 2, NULL, err, sizeof(err)));
	int r = kg_etcd_txn(c, doc, seen, b, 2, NULL, err, sizeof(err));
	CHECK(r == -ECANCELED, "loser got %d: %s", r, err);
	CHECK(strstr(err, "changed since it was read") && strstr(err, "retry"), "%s", err);

	OK(kg_etcd_range(c, prefix, true, &rg, err, sizeof(err)));
	CHECK(rg.n == 2, "%zu keys: the loser's side key must not exist", rg.n);
	CHECK(strcmp(rg.kvs[0].key, key("a-side")) == 0, "%s", rg.kvs[0].key);
	CHECK(memcmp(rg.kvs[1].value, "from A", 6) == 0, "winner's value");
	int64_t now = rg.kvs[1].mod_revision;
	kg_etcd_range_free(&rg);

	/* Delete through a transaction, then the key is absent again. */
	struct kg_etcd_op del = {KG_ETCD_OP_DELETE, doc, NULL, 0, 0};
	OK(kg_etcd_txn(c, doc, now, &del, 1, NULL, err, sizeof(err)));
	OK(kg_etcd_range(c, doc, false, &rg, err, sizeof(err)));
	CHECK(rg.n == 0, "deleted key still there");
	kg_etcd_range_free(&rg);
	OK(kg_etcd_txn(c, doc, 0, &create, 1, NULL, err, sizeof(err)));
}

static void case_lease(struct kg_etcd *c)
{
	int64_t id = 0, ttl = 0;
	OK(kg_etcd_lease_grant(c, 30, &id, err, sizeof(err)));
	CHECK(id != 0, "lease id 0");
	const char *k = key("status");
	OK(kg_etcd_put(c, k, "ready", 5, id, NULL, err, sizeof(err)));
	struct kg_etcd_range rg;
	OK(kg_etcd_range(c, k, false, &rg, err, sizeof(err)));
	CHECK(rg.n == 1 && rg.kvs[0].lease == id, "lease of the key: %" PRId64,
	      rg.n ? rg.kvs[0].lease : 0);
	kg_etcd_range_free(&rg);
	OK(kg_etcd_lease_keepalive(c, id, &ttl, err, sizeof(err)));
	CHECK(ttl > 0 && ttl <= 30, "ttl %" PRId64, ttl);

	/* A txn put under the lease, too. */
	struct kg_etcd_op op = {KG_ETCD_OP_PUT, key("status2"), "ready", 5, id};
	OK(kg_etcd_txn(c, key("status2"), 0, &op, 1, NULL, err, sizeof(err)));

	OK(kg_etcd_lease_revoke(c, id, err, sizeof(err)));
	OK(kg_etcd_range(c, prefix, true, &rg, err, sizeof(err)));
	CHECK(rg.n == 0, "%zu keys outlived their lease", rg.n);
	kg_etcd_range_free(&rg);
	int r = kg_etcd_lease_keepalive(c, id, &ttl, err, sizeof(err));
	CHECK(r == -ENOENT, "keepalive of a revoked lease: %d %s", r, err);
	r = kg_etcd_lease_revoke(c, id, err, sizeof(err));
	CHECK(r == -ENOENT, "revoke of a revoked lease: %d %s", r, err);

	/* A short lease really expires (etcd's minimum TTL is about 2 s). */
	OK(kg_etcd_lease_grant(c, 2, &id, err, sizeof(err)));
	OK(kg_etcd_put(c, k, "ready", 5, id, NULL, err, sizeof(err)));
	double deadline = now_s() + 10;
	for (;;) {
		OK(kg_etcd_range(c, k, false, &rg, err, sizeof(err)));
		size_t n = rg.n;
		kg_etcd_range_free(&rg);
		if (n == 0)
			break;
		CHECK(now_s() < deadline, "leased key still there after 10 s");
		usleep(200 * 1000);
	}
	r = kg_etcd_lease_keepalive(c, id, &ttl, err, sizeof(err));
	CHECK(r == -ENOENT, "keepalive of an expired lease: %d %s", r, err);
}

/* ---- watch ---- */

struct watcher {
	struct kg_etcd *c;
	struct kg_etcd_watch_req req;
	atomic_bool stop;
	atomic_int n_events;
	atomic_bool created;
	char log[8192]; /* "P key=value@rev" lines */
	int result;
	int64_t compact;
	char err[1024];
	pthread_t thread;
	double returned_at;
};

static int on_event(void *arg, const struct kg_etcd_event *ev)
{
	struct watcher *w = arg;
	if (ev->type == KG_ETCD_EV_CREATED) {
		atomic_store(&w->created, true);
		return 0;
	}
	size_t n = strlen(w->log);
	snprintf(w->log + n, sizeof(w->log) - n, "%c %s=%.*s@%" PRId64 "\n",
		 ev->type == KG_ETCD_EV_PUT ? 'P' : 'D', ev->kv.key + strlen(prefix),
		 (int)ev->kv.value_len, (const char *)ev->kv.value, ev->kv.mod_revision);
	atomic_fetch_add(&w->n_events, 1);
	return 0;
}

static void *watch_thread(void *arg)
{
	struct watcher *w = arg;
	w->result = kg_etcd_watch(w->c, &w->req, &w->compact, w->err, sizeof(w->err));
	w->returned_at = now_s();
	return NULL;
}

static void watch_start(struct watcher *w, struct kg_etcd *c, int64_t from)
{
	memset(w, 0, sizeof(*w));
	w->c = c;
	atomic_init(&w->stop, false);
	atomic_init(&w->n_events, 0);
	atomic_init(&w->created, false);
	w->req = (struct kg_etcd_watch_req){.prefix = prefix,
					    .start_revision = from,
					    .fn = on_event,
					    .arg = w,
					    .stop = &w->stop};
	CHECK(pthread_create(&w->thread, NULL, watch_thread, w) == 0, "pthread_create");
}

static void wait_for(struct watcher *w, int n)
{
	double deadline = now_s() + 10;
	while (atomic_load(&w->n_events) < n) {
		CHECK(now_s() < deadline, "%d of %d events after 10 s:\n%s(watch: %d %s)",
		      atomic_load(&w->n_events), n, w->log, w->result, w->err);
		usleep(10 * 1000);
	}
}

/* Stops the watch and returns how long it took to return. */
static double watch_stop(struct watcher *w)
{
	double t0 = now_s();
	atomic_store(&w->stop, true);
	CHECK(pthread_join(w->thread, NULL) == 0, "join");
	return w->returned_at - t0;
}

static void case_watch(struct kg_etcd *c)
{
	int64_t base = put(c, key("before"), "old");
	struct watcher w;
	watch_start(&w, c, base + 1);
	double deadline = now_s() + 10;
	while (!atomic_load(&w.created)) {
		CHECK(now_s() < deadline, "no created message: %d %s", w.result, w.err);
		usleep(10 * 1000);
	}
	/* Writes while the watch runs, on the same client (another thread). */
	char want[8192] = "";
	for (int i = 0; i < 40; i++) {
		char name[16], val[16];
		snprintf(name, sizeof(name), "k%02d", i % 7);
		snprintf(val, sizeof(val), "v%d", i);
		int64_t rev = put(c, key(name), val);
		size_t n = strlen(want);
		snprintf(want + n, sizeof(want) - n, "P %s=%s@%" PRId64 "\n", name, val, rev);
	}
	struct kg_etcd_op del = {KG_ETCD_OP_DELETE, key("k03"), NULL, 0, 0};
	int64_t rev;
	struct kg_etcd_range rg;
	OK(kg_etcd_range(c, key("k03"), false, &rg, err, sizeof(err)));
	OK(kg_etcd_txn(c, key("k03"), rg.kvs[0].mod_revision, &del, 1, &rev, err, sizeof(err)));
	kg_etcd_range_free(&rg);
	size_t n = strlen(want);
	snprintf(want + n, sizeof(want) - n, "D k03=@%" PRId64 "\n", rev);
	wait_for(&w, 41);
	/* An idle stream: stop is seen without any traffic. */
	usleep(300 * 1000);
	double took = watch_stop(&w);
	CHECK(w.result == 0, "watch ended with %d: %s", w.result, w.err);
	CHECK(strcmp(w.log, want) == 0, "events:\n%s\nwanted:\n%s", w.log, want);
	CHECK(took < 1.0, "stop took %.3f s", took);
	fprintf(stderr, "watch: 41 events in order; stop took %.3f s\n", took);

	/* From an old revision: the history arrives first, in order. */
	watch_start(&w, c, base);
	wait_for(&w, 42);
	took = watch_stop(&w);
	CHECK(w.result == 0, "watch ended with %d: %s", w.result, w.err);
	char want2[sizeof(want) + 64];
	snprintf(want2, sizeof(want2), "P before=old@%" PRId64 "\n%s", base, want);
	CHECK(strcmp(w.log, want2) == 0, "replayed events:\n%s\nwanted:\n%s", w.log, want2);
	CHECK(took < 1.0, "stop took %.3f s", took);
}

static void case_compaction(struct kg_etcd *c)
{
	int64_t first = put(c, key("x"), "1");
	put(c, key("x"), "2");
	int64_t last = put(c, key("x"), "3");
	char cmd[512];
	snprintf(cmd, sizeof(cmd),
		 "ETCDCTL_API=3 etcdctl --endpoints=%s compact %" PRId64 " >&2", etcdctl_endpoint,
		 last);
	CHECK(system(cmd) == 0, "%s", cmd);
	struct watcher w;
	watch_start(&w, c, first);
	CHECK(pthread_join(w.thread, NULL) == 0, "join");
	CHECK(w.result == -ERANGE, "watch from a compacted revision: %d %s", w.result, w.err);
	CHECK(w.compact == last, "compact_revision %" PRId64 ", compacted at %" PRId64, w.compact,
	      last);
	CHECK(strstr(w.err, "compacted"), "%s", w.err);
	CHECK(atomic_load(&w.n_events) == 0, "events from a compacted watch:\n%s", w.log);
	/* The fallback: a full read, then a watch from the next revision. */
	struct kg_etcd_range rg;
	OK(kg_etcd_range(c, prefix, true, &rg, err, sizeof(err)));
	CHECK(rg.n == 1 && memcmp(rg.kvs[0].value, "3", 1) == 0, "full read");
	int64_t from = rg.revision + 1;
	kg_etcd_range_free(&rg);
	watch_start(&w, c, from);
	int64_t rev = put(c, key("x"), "4");
	wait_for(&w, 1);
	watch_stop(&w);
	char want[128];
	snprintf(want, sizeof(want), "P x=4@%" PRId64 "\n", rev);
	CHECK(strcmp(w.log, want) == 0, "%s", w.log);
}

/* ENDPOINTS starts with a dead one: every call goes on to the live one. */
static void case_failover(struct kg_etcd *c)
{
	int64_t rev = put(c, key("a"), "1");
	struct kg_etcd_range rg;
	OK(kg_etcd_range(c, prefix, true, &rg, err, sizeof(err)));
	CHECK(rg.n == 1, "%zu", rg.n);
	kg_etcd_range_free(&rg);
	CHECK(strcmp(kg_etcd_endpoint(c), etcdctl_endpoint) == 0, "answered: %s",
	      kg_etcd_endpoint(c));
	struct watcher w;
	watch_start(&w, c, rev);
	wait_for(&w, 1);
	watch_stop(&w);
	CHECK(w.result == 0, "%d %s", w.result, w.err);
}

/* Every endpoint dead: a clear error within the timeout, for a read, a
 * write and a watch. */
static void case_unreachable(struct kg_etcd *c)
{
	double t0 = now_s();
	struct kg_etcd_range rg;
	int r = kg_etcd_range(c, prefix, true, &rg, err, sizeof(err));
	kg_etcd_range_free(&rg);
	CHECK(r == -ECONNREFUSED, "%d %s", r, err);
	r = kg_etcd_put(c, key("a"), "1", 1, 0, NULL, err, sizeof(err));
	CHECK(r == -ECONNREFUSED, "%d %s", r, err);
	struct watcher w;
	watch_start(&w, c, 0);
	CHECK(pthread_join(w.thread, NULL) == 0, "join");
	CHECK(w.result == -ECONNREFUSED, "%d %s", w.result, w.err);
	CHECK(now_s() - t0 < 5, "took %.1f s", now_s() - t0);
	fprintf(stderr, "unreachable: %s\n", w.err);
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 6) {
		fprintf(stderr, "usage: %s CASE ENDPOINTS [CERT KEY CA]\n", argv[0]);
		return 2;
	}
	const char *eps[8];
	size_t n = 0;
	char *list = strdup(argv[2]);
	CHECK(list, "strdup");
	for (char *save, *t = strtok_r(list, ",", &save); t && n < 8;
	     t = strtok_r(NULL, ",", &save))
		eps[n++] = t;
	etcdctl_endpoint = eps[n - 1];
	struct kg_etcd_opts o = {.endpoints = eps, .n_endpoints = n, .timeout_ms = 3000};
	if (argc == 6) {
		o.cert = argv[3];
		o.key = argv[4];
		o.ca = argv[5];
	}
	struct kg_etcd *c = kg_etcd_create(&o, err, sizeof(err));
	CHECK(c, "%s", err);
	srand((unsigned)(time(NULL) ^ getpid()));
	snprintf(prefix, sizeof(prefix), "/kgtest/%s-%08x/", argv[1], (unsigned)rand());

	static const struct {
		const char *name;
		void (*fn)(struct kg_etcd *);
	} cases[] = {
		{"range", case_range},	   {"txn", case_txn},
		{"lease", case_lease},	   {"watch", case_watch},
		{"compaction", case_compaction}, {"failover", case_failover},
		{"unreachable", case_unreachable},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (strcmp(argv[1], cases[i].name) == 0) {
			cases[i].fn(c);
			kg_etcd_destroy(c);
			free(list);
			return 0;
		}
	}
	fprintf(stderr, "unknown case %s\n", argv[1]);
	return 2;
}
