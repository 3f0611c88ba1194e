/* See accept_balance.h. */
#include "accept_balance.h"

unsigned kg_accept_owner(const uint32_t *loads, unsigned n, unsigned self)
{
	unsigned best = self;
	for (unsigned i = 0; i < n; i++)
		if (loads[i] < loads[best])
			best = i;
	return best;
}
