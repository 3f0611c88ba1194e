/* staple.c: when the stapler fetches a server certificate's OCSP response
 * again: half-way through its validity, at least a minute before its
 * nextUpdate and a minute from now, soon after a failure. */
#include <criterion/criterion.h>

#include "ocsp_resp.h"
#include "staple.h"

struct refresh_case {
	const char *name;
	bool ok;
	time_t this_update, next_update, now;
	time_t want;
};

Test(staple, next_refresh)
{
	static const struct refresh_case cases[] = {
		{"half-way through a day", true, 1000, 1000 + 86400, 1000, 1000 + 43200},
		{"a minute ahead of nextUpdate at the latest", true, 2000, 2100, 1000, 2040},
		{"an old response: a minute from now", true, 0, 10100, 10000, 10060},
		{"never sooner than a minute", true, 1000, 1000 + 100, 1000, 1000 + 60},
		{"no nextUpdate: half the default max age", true, 1000, 0, 5000,
		 5000 + KG_OCSP_DEFAULT_MAX_AGE_S / 2},
		{"failure: retry", false, 0, 0, 7000, 7000 + KG_STAPLE_RETRY_S},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct refresh_case *c = &cases[i];
		cr_expect_eq(kg_staple_next_refresh(c->ok, c->this_update, c->next_update, c->now),
			     c->want, "%s", c->name);
	}
}
