/* The path → forwarder registry (fwd.h). Written before the workers start,
 * read-only afterwards. */
#include "fwd.h"

static const struct kg_fwd_ops *registry[KG_PATH_COUNT];
static const struct kg_fwd_ops *handoff;

void kg_fwd_register(enum kg_path path, const struct kg_fwd_ops *ops)
{
	if ((unsigned)path < KG_PATH_COUNT)
		registry[path] = ops;
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
