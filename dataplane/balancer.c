#include "balancer.h"

#include <string.h>

static const struct kg_balancer_ops *const schedulers[] = {
	&kg_balancer_rr_ops,
};

const struct kg_balancer_ops *kg_balancer_find(const char *name)
{
	for (size_t i = 0; i < sizeof(schedulers) / sizeof(schedulers[0]); i++)
		if (strcmp(schedulers[i]->name, name) == 0)
			return schedulers[i];
	return NULL;
}

struct kg_balancer *kg_balancer_create(const char *scheduler,
				       const unsigned *weights, size_t n)
{
	const struct kg_balancer_ops *ops = kg_balancer_find(scheduler);
	if (!ops)
		return NULL;
	return ops->create(weights, n);
}

void kg_balancer_destroy(struct kg_balancer *b)
{
	if (!b)
		return;
	b->ops->destroy(b);
}
