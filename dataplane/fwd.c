/* The path → forwarder registry (fwd.h). Written before the workers start,
 * read-only afterwards. */
#include "fwd.h"

static const struct kg_fwd_ops *registry[KG_PATH_COUNT];
static const struct kg_fwd_ops *handoff;
/* Tables with worker-wide hooks, each once (one may serve several paths). */
static const struct kg_fwd_ops *worker_ops[KG_PATH_COUNT];
static size_t n_worker_ops;

static bool has_worker_hooks(const struct kg_fwd_ops *ops)
{
	return ops->on_worker_cqe || ops->after_cqe || ops->on_worker_tick || ops->worker_idle ||
	       ops->worker_end;
}

void kg_fwd_register(enum kg_path path, const struct kg_fwd_ops *ops)
{
	if ((unsigned)path >= KG_PATH_COUNT)
		return;
	registry[path] = ops;
	if (!ops || !has_worker_hooks(ops))
		return;
	for (size_t i = 0; i < n_worker_ops; i++)
		if (worker_ops[i] == ops)
			return;
	worker_ops[n_worker_ops++] = ops;
}

const struct kg_fwd_ops *const *kg_fwd_worker_ops(size_t *n)
{
	*n = n_worker_ops;
	return worker_ops;
}

const struct kg_fwd_ops *kg_fwd_for(enum kg_path path)
{
	return (unsigned)path < KG_PATH_COUNT ? registry[path] : NULL;
}

void kg_fwd_register_handoff(const struct kg_fwd_ops *ops)
{
	handoff = ops;
}

const struct kg_fwd_ops *kg_fwd_handoff(void)
{
	return handoff;
}
