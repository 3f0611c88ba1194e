/* cert_expiry.c: which warning threshold a date falls in, when one is due
 * again, and whole days left (rounded down, negative once past). */
#include <criterion/criterion.h>

#include "cert_expiry.h"

#define DAY 86400

struct threshold_case {
	const char *name;
	int64_t left;
	int want;
};

static const struct threshold_case thresholds[] = {
	{"100 days", 100 * (int64_t)DAY, KG_EXPIRY_NONE},
	{"30 days and a second", 30 * (int64_t)DAY + 1, KG_EXPIRY_NONE},
	{"exactly 30 days", 30 * (int64_t)DAY, 30},
	{"20 days", 20 * (int64_t)DAY, 30},
	{"7 days and a second", 7 * (int64_t)DAY + 1, 30},
	{"exactly 7 days", 7 * (int64_t)DAY, 7},
	{"5 days", 5 * (int64_t)DAY, 7},
	{"a day and a second", DAY + 1, 7},
	{"one day", DAY, 1},
	{"one second", 1, 1},
	{"now", 0, 0},
	{"a year ago", -365 * (int64_t)DAY, 0},
};

Test(cert_expiry, threshold_is_the_closest_one_reached)
{
	for (size_t i = 0; i < sizeof(thresholds) / sizeof(thresholds[0]); i++)
		cr_expect_eq(kg_expiry_threshold(thresholds[i].left), thresholds[i].want,
			     "%s: %d, want %d", thresholds[i].name,
			     kg_expiry_threshold(thresholds[i].left), thresholds[i].want);
}

struct due_case {
	const char *name;
	int logged;
	int64_t left;
	int want;
};

static const struct due_case dues[] = {
	{"nothing logged, far", KG_EXPIRY_NONE, 100 * (int64_t)DAY, KG_EXPIRY_NONE},
	{"nothing logged, 20 days: only the 30-day one", KG_EXPIRY_NONE, 20 * (int64_t)DAY, 30},
	{"nothing logged, 5 days: only the 7-day one", KG_EXPIRY_NONE, 5 * (int64_t)DAY, 7},
	{"nothing logged, expired", KG_EXPIRY_NONE, -1, 0},
	{"30 logged, still 20 days", 30, 20 * (int64_t)DAY, KG_EXPIRY_NONE},
	{"30 logged, crossed 7", 30, 6 * (int64_t)DAY, 7},
	{"7 logged, crossed 1", 7, DAY / 2, 1},
	{"1 logged, expired", 1, -5, 0},
	{"expired logged, still expired", 0, -10 * (int64_t)DAY, KG_EXPIRY_NONE},
	{"7 logged, clock went back to 20 days", 7, 20 * (int64_t)DAY, KG_EXPIRY_NONE},
};

Test(cert_expiry, due_once_per_threshold)
{
	for (size_t i = 0; i < sizeof(dues) / sizeof(dues[0]); i++)
		cr_expect_eq(kg_expiry_due(dues[i].logged, dues[i].left), dues[i].want,
			     "%s: %d, want %d", dues[i].name,
			     kg_expiry_due(dues[i].logged, dues[i].left), dues[i].want);
}

Test(cert_expiry, days_left_round_down)
{
	const time_t now = 1800000000;
	cr_expect_eq(kg_expiry_days_left(now + 20 * DAY, now), 20);
	cr_expect_eq(kg_expiry_days_left(now + 20 * DAY - 1, now), 19);
	cr_expect_eq(kg_expiry_days_left(now + 1, now), 0);
	cr_expect_eq(kg_expiry_days_left(now, now), 0);
	cr_expect_eq(kg_expiry_days_left(now - 1, now), -1);
	cr_expect_eq(kg_expiry_days_left(now - DAY, now), -1);
	cr_expect_eq(kg_expiry_days_left(now - DAY - 1, now), -2);
}
