/* The counter table (dataplane/counters.h) against the lists it mirrors
 * by hand: one kgate_h2_abuse_total row per kind of h2_session.h, labelled
 * with the kind's name. */
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "counters.h"
#include "h2_session.h"

Test(counters, h2_abuse_rows_are_the_session_kinds)
{
	size_t rows = 0;
	for (size_t i = 0; i < KG_COUNTER_COUNT; i++)
		rows += strcmp(kg_counter_table[i].family, "h2_abuse_total") == 0;
	cr_expect_eq(rows, (size_t)KG_H2_ABUSE_KINDS);
	for (int k = 0; k < KG_H2_ABUSE_KINDS; k++) {
		char label[64], key[64];
		snprintf(label, sizeof(label), "kind=\"%s\"", kg_h2_abuse_names[k]);
		snprintf(key, sizeof(key), "h2_abuse_%s", kg_h2_abuse_names[k]);
		bool found = false;
		for (size_t i = 0; i < KG_COUNTER_COUNT; i++) {
			const struct kg_counter_info *c = &kg_counter_table[i];
			if (strcmp(c->family, "h2_abuse_total") == 0 && strcmp(c->labels, label) == 0) {
				found = true;
				cr_expect_str_eq(c->log_key, key);
				cr_expect_str_eq(c->json_key, key);
			}
		}
		cr_expect(found, "no counter row for %s", label);
	}
}
