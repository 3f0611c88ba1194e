/* Smooth weighted round robin (the nginx algorithm) shared by all workers.
 *
 * The smooth sequence over the members that are up is computed whenever
 * the up-set changes (rare: health checks) and stored in a flat array; a
 * selection is then one atomic increment of a shared cursor plus one array
 * read, so consecutive connections alternate across workers too. Writers
 * serialise on a mutex and publish through a sequence counter (seqlock):
 * a reader that overlaps a rebuild simply retries. */
#include "balancer.h"

#include <kgate/limits.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define RR_SEQ_MAX (KG_MAX_BACKENDS * KG_MAX_WEIGHT)

struct rr_balancer {
	struct kg_balancer base;
	size_t n;
	unsigned weights[KG_MAX_BACKENDS];
	pthread_mutex_t write_lock;
	_Atomic uint64_t up_mask;
	_Atomic uint64_t cursor;
	_Atomic uint32_t version; /* odd while a rebuild is in progress */
	_Atomic uint32_t seq_len;
	_Atomic uint8_t seq[RR_SEQ_MAX];
};

static struct rr_balancer *rr_of(struct kg_balancer *b)
{
	return (struct rr_balancer *)b;
}

/* Called with write_lock held. */
static void rr_rebuild(struct rr_balancer *rr)
{
	uint64_t up = atomic_load(&rr->up_mask);
	long current[KG_MAX_BACKENDS] = {0};
	long total = 0;

	for (size_t i = 0; i < rr->n; i++)
		if (up & (1ull << i))
			total += rr->weights[i];

	atomic_fetch_add_explicit(&rr->version, 1, memory_order_acq_rel);
	for (long step = 0; step < total; step++) {
		size_t best = 0;
		long best_weight = -1;
		for (size_t i = 0; i < rr->n; i++) {
			if (!(up & (1ull << i)))
				continue;
			current[i] += rr->weights[i];
			if (current[i] > best_weight) {
				best_weight = current[i];
				best = i;
			}
		}
		current[best] -= total;
		atomic_store_explicit(&rr->seq[step], (uint8_t)best,
				      memory_order_relaxed);
	}
	atomic_store_explicit(&rr->seq_len, (uint32_t)total,
			      memory_order_relaxed);
	atomic_store_explicit(&rr->cursor, 0, memory_order_relaxed);
	atomic_fetch_add_explicit(&rr->version, 1, memory_order_acq_rel);
}

static struct kg_balancer *rr_create(const unsigned *weights, size_t n)
{
	if (n == 0 || n > KG_MAX_BACKENDS)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (weights[i] == 0 || weights[i] > KG_MAX_WEIGHT)
			return NULL;

	struct rr_balancer *rr = calloc(1, sizeof(*rr));
	if (!rr)
		return NULL;
	rr->base.ops = &kg_balancer_rr_ops;
	rr->n = n;
	for (size_t i = 0; i < n; i++)
		rr->weights[i] = weights[i];
	if (pthread_mutex_init(&rr->write_lock, NULL) != 0) {
		free(rr);
		return NULL;
	}
	atomic_store(&rr->up_mask, n == 64 ? ~0ull : (1ull << n) - 1);
	rr_rebuild(rr);
	return &rr->base;
}

static int rr_select(struct kg_balancer *b, uint64_t skip)
{
	struct rr_balancer *rr = rr_of(b);

	for (;;) {
		uint32_t v = atomic_load_explicit(&rr->version,
						  memory_order_acquire);
		if (v & 1)
			continue; /* a rebuild is being published */
		uint32_t len = atomic_load_explicit(&rr->seq_len,
						    memory_order_relaxed);
		int chosen = -1;
		for (uint32_t attempt = 0; attempt < len; attempt++) {
			uint64_t pos = atomic_fetch_add_explicit(
				&rr->cursor, 1, memory_order_relaxed);
			uint8_t m = atomic_load_explicit(&rr->seq[pos % len],
							 memory_order_relaxed);
			if (!(skip & (1ull << m))) {
				chosen = m;
				break;
			}
		}
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&rr->version, memory_order_relaxed) == v)
			return chosen;
	}
}

static void rr_set_up(struct kg_balancer *b, size_t member, bool up)
{
	struct rr_balancer *rr = rr_of(b);
	if (member >= rr->n)
		return;
	pthread_mutex_lock(&rr->write_lock);
	uint64_t old = atomic_load(&rr->up_mask);
	uint64_t new = up ? old | (1ull << member) : old & ~(1ull << member);
	if (new != old) {
		atomic_store(&rr->up_mask, new);
		rr_rebuild(rr);
	}
	pthread_mutex_unlock(&rr->write_lock);
}

static bool rr_is_up(const struct kg_balancer *b, size_t member)
{
	const struct rr_balancer *rr = (const struct rr_balancer *)b;
	return member < rr->n &&
	       (atomic_load(&((struct rr_balancer *)rr)->up_mask) &
		(1ull << member));
}

static int rr_set_weights(struct kg_balancer *b, const unsigned *weights)
{
	struct rr_balancer *rr = rr_of(b);
	for (size_t i = 0; i < rr->n; i++)
		if (weights[i] == 0 || weights[i] > KG_MAX_WEIGHT)
			return -EINVAL;
	pthread_mutex_lock(&rr->write_lock);
	bool changed = false;
	for (size_t i = 0; i < rr->n; i++) {
		changed |= rr->weights[i] != weights[i];
		rr->weights[i] = weights[i];
	}
	if (changed)
		rr_rebuild(rr);
	pthread_mutex_unlock(&rr->write_lock);
	return 0;
}

static void rr_destroy(struct kg_balancer *b)
{
	struct rr_balancer *rr = rr_of(b);
	pthread_mutex_destroy(&rr->write_lock);
	free(rr);
}

const struct kg_balancer_ops kg_balancer_rr_ops = {
	.name = "rr",
	.create = rr_create,
	.select = rr_select,
	.set_up = rr_set_up,
	.is_up = rr_is_up,
	.set_weights = rr_set_weights,
	.destroy = rr_destroy,
};
