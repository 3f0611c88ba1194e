/* Backend selection behind a small ops table, so health checks (member
 * up/down) and schedulers other than round robin plug in without touching
 * the event loop. A balancer is shared by all workers of a listener:
 * select() is safe to call concurrently; set_up() may be called from any
 * thread (it serialises writers internally). */
#ifndef KGATE_BALANCER_H
#define KGATE_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kg_balancer;

struct kg_balancer_ops {
	const char *name;
	struct kg_balancer *(*create)(const unsigned *weights, size_t n);
	/* Returns a member index that is up and not in `skip` (bit i = member
	 * i), or -1 when there is none. */
	int (*select)(struct kg_balancer *b, uint64_t skip);
	void (*set_up)(struct kg_balancer *b, size_t member, bool up);
	bool (*is_up)(const struct kg_balancer *b, size_t member);
	/* Replaces every member's weight (n of them, as at create), e.g. for
	 * slow start. 0, or -EINVAL for a weight of 0 or above KG_MAX_WEIGHT. */
	int (*set_weights)(struct kg_balancer *b, const unsigned *weights);
	void (*destroy)(struct kg_balancer *b);
};

/* Every balancer starts with this header so the generic wrappers can find
 * its ops. */
struct kg_balancer {
	const struct kg_balancer_ops *ops;
};

/* Looks up a scheduler by name ("rr"); NULL if unknown. */
const struct kg_balancer_ops *kg_balancer_find(const char *name);

/* Creates a balancer with all members up. NULL on bad input (no members,
 * more than KG_MAX_BACKENDS, a weight of 0 or above KG_MAX_WEIGHT) or ENOMEM. */
struct kg_balancer *kg_balancer_create(const char *scheduler,
				       const unsigned *weights, size_t n);

static inline int kg_balancer_select(struct kg_balancer *b, uint64_t skip)
{
	return b->ops->select(b, skip);
}

static inline void kg_balancer_set_up(struct kg_balancer *b, size_t member,
				      bool up)
{
	b->ops->set_up(b, member, up);
}

static inline bool kg_balancer_is_up(const struct kg_balancer *b,
				     size_t member)
{
	return b->ops->is_up(b, member);
}

static inline int kg_balancer_set_weights(struct kg_balancer *b,
					  const unsigned *weights)
{
	return b->ops->set_weights(b, weights);
}

void kg_balancer_destroy(struct kg_balancer *b);

extern const struct kg_balancer_ops kg_balancer_rr_ops;

#endif
